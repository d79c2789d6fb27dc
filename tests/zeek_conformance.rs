//! Conformance with Zeek's own test suites: every case of `../shared/zeek-conformance`
//! (upstream's inputs and baselines, see its README) is run through broctld's config loading,
//! and what broctld would run is compared with what upstream's units run, and broctld's
//! layout with upstream's, line for line. Each test prints its counts; a case passes when
//! every applicable comparison in it agrees; cases with nothing applicable are listed (and
//! explained in docs/zeek.md). Without the corpus folder these tests say so and pass; the
//! project's own fixtures (tests/zeek_fixtures.rs) still run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use broctld::config::layout::{self, GeneratorMode};
use broctld::config::zeek_cluster;
use broctld::config::zeek_conf;
use broctld::config::{NodeSpec, NodeType, Policy, ZeekSetup};
use regex::Regex;

fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/zeek-conformance");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("no corpus at {}: conformance cases skipped", p.display());
        None
    }
}

/// A fresh scratch folder for one case.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("broctld-zeek-conf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_tree(from: &Path, to: &Path) {
    if !from.is_dir() {
        return;
    }
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A baseline without btest's first line.
fn baseline(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("### BTest baseline") => rest.to_string(),
        _ => text,
    })
}

/// What `btest-diff-remove-abspath` does to a line: every absolute path becomes `<...>/` and
/// its last component.
fn redact(s: &str) -> String {
    let slashes = Regex::new("/+").unwrap();
    let abs = Regex::new(r"/([^\t :/]+/)+([^\t :/]+)").unwrap();
    let s = slashes.replace_all(s, "/");
    abs.replace_all(&s, "<...>/$2").into_owned()
}

/// Tallies for one test's report.
#[derive(Default)]
struct Tally {
    cases: usize,
    passed: usize,
    not_applicable: Vec<(String, &'static str)>,
    comparisons: usize,
    failures: Vec<String>,
}

impl Tally {
    fn finish(self, what: &str) {
        eprintln!(
            "{what}: {} cases, {} passed, {} not applicable, {} comparisons, {} failed",
            self.cases,
            self.passed,
            self.not_applicable.len(),
            self.comparisons,
            self.failures.len()
        );
        for (case, why) in &self.not_applicable {
            eprintln!("  not applicable: {case}: {why}");
        }
        assert!(
            self.failures.is_empty(),
            "{} failures:\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Units.

/// A unit (or a template unit with one instance's drop-in applied), reduced to what it says
/// about the process it runs.
#[derive(Debug, Default)]
struct Unit {
    exec: Option<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    user: Option<String>,
    group: Option<String>,
    cpus: Option<String>,
    nice: Option<i32>,
    memory_max: Option<String>,
    caps: Option<String>,
    restart_sec: Option<u64>,
    after: Vec<String>,
}

impl Unit {
    fn apply(&mut self, text: &str) {
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.to_string();
            match k {
                "ExecStart" => self.exec = Some(v),
                "Environment" => {
                    if let Some((name, val)) = v.split_once('=') {
                        self.env.insert(name.into(), val.into());
                    }
                }
                "WorkingDirectory" => self.cwd = Some(v),
                "User" => self.user = Some(v),
                "Group" => self.group = Some(v),
                "CPUAffinity" => self.cpus = Some(v),
                "Nice" => self.nice = v.parse().ok(),
                "MemoryMax" => self.memory_max = Some(v),
                "AmbientCapabilities" => self.caps = Some(v),
                "RestartSec" => self.restart_sec = v.parse().ok(),
                "After" if v != "zeek-setup.service" => self.after.push(v),
                _ => {}
            }
        }
    }

    fn instance(&self, i: &str) -> Unit {
        let sub = |s: &String| s.replace("%i", i);
        Unit {
            exec: self.exec.as_ref().map(sub),
            env: self.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
            cwd: self.cwd.as_ref().map(sub),
            user: self.user.clone(),
            group: self.group.clone(),
            cpus: self.cpus.clone(),
            nice: self.nice,
            memory_max: self.memory_max.clone(),
            caps: self.caps.clone(),
            restart_sec: self.restart_sec,
            after: self.after.clone(),
        }
    }
}

/// The node names a unit named in `After=` stands for.
fn after_nodes(unit: &str, nodes: &[NodeSpec]) -> BTreeSet<String> {
    let kind = unit
        .trim_start_matches("zeek-")
        .trim_end_matches(".service")
        .trim_end_matches('@');
    nodes
        .iter()
        .filter(|n| n.node_type.as_str() == kind)
        .map(|n| n.name.clone())
        .collect()
}

fn cpu_list(s: &str) -> Vec<usize> {
    s.split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Compares one unit with the node broctld runs for it; the differences.
fn compare_unit(unit: &Unit, node: &NodeSpec, nodes: &[NodeSpec]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |what: &str, want: String, got: String| {
        if want != got {
            diffs.push(format!("{what}: unit has {want:?}, broctld {got:?}"));
        }
    };
    // A template whose drop-in is not a baseline: INTERFACE (set by the drop-in) is taken
    // from broctld's node and left out of the comparison.
    let dropin_unknown = unit
        .exec
        .as_deref()
        .is_some_and(|e| e.contains("${INTERFACE}"))
        && !unit.env.contains_key("INTERFACE");
    let mut unit_env = unit.env.clone();
    if dropin_unknown {
        if let Some((_, v)) = node.env.iter().find(|(k, _)| k == "INTERFACE") {
            unit_env.insert("INTERFACE".into(), v.clone());
        }
    }
    if let Some(exec) = &unit.exec {
        let iface = unit_env.get("INTERFACE").cloned().unwrap_or_default();
        let want: Vec<String> = exec
            .replace("${INTERFACE}", &iface)
            .split_whitespace()
            .map(String::from)
            .collect();
        // The one allowed difference: broctld adds Zeek's `-U .status` to learn readiness.
        let mut got: Vec<String> = node.command.iter().map(|a| redact(a)).collect();
        if let Some(at) = got.windows(2).position(|w| w == ["-U", ".status"]) {
            got.drain(at..at + 2);
        }
        check("ExecStart", want.join(" "), got.join(" "));
    }
    let got_env: BTreeMap<String, String> = node
        .env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                redact(&format!("{k}={v}"))[k.len() + 1..].to_string(),
            )
        })
        .collect();
    let unit_env: BTreeMap<String, String> = unit_env
        .iter()
        .map(|(k, v)| (k.clone(), redact(v)))
        .collect();
    check(
        "Environment",
        format!("{unit_env:?}"),
        format!("{got_env:?}"),
    );
    if let Some(cwd) = &unit.cwd {
        check(
            "WorkingDirectory",
            cwd.clone(),
            redact(&node.cwd.display().to_string()),
        );
    }
    let p = &node.policy;
    if let Some(u) = &unit.user {
        check("User", u.clone(), p.user.clone().unwrap_or_default());
    }
    if let Some(g) = &unit.group {
        check("Group", g.clone(), p.group.clone().unwrap_or_default());
    }
    check(
        "CPUAffinity",
        format!(
            "{:?}",
            unit.cpus.as_deref().map(cpu_list).unwrap_or_default()
        ),
        format!("{:?}", node.cpu_affinity),
    );
    check("Nice", format!("{:?}", unit.nice), format!("{:?}", p.nice));
    check(
        "MemoryMax",
        format!(
            "{:?}",
            unit.memory_max.as_deref().and_then(zeek_conf::parse_memory)
        ),
        format!("{:?}", p.memory_max),
    );
    check(
        "AmbientCapabilities",
        unit.caps.clone().unwrap_or_default(),
        p.capabilities.join(" "),
    );
    if let Some(sec) = unit.restart_sec {
        check(
            "RestartSec",
            (sec * 1000).to_string(),
            p.restart_delay.as_millis().to_string(),
        );
    }
    let want_after: BTreeSet<String> = unit
        .after
        .iter()
        .flat_map(|u| after_nodes(u, nodes))
        .collect();
    let got_after: BTreeSet<String> = node.start_after.iter().cloned().collect();
    check("After", format!("{want_after:?}"), format!("{got_after:?}"));
    diffs
}

/// The `zeek-setup.service` folders against broctld's setup.
fn compare_setup(text: &str, setup: &ZeekSetup) -> Vec<String> {
    let mut want: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart=mkdir -p "))
        .map(String::from)
        .collect();
    let mut got: Vec<String> = setup
        .dirs
        .iter()
        .map(|d| redact(&d.display().to_string()))
        .collect();
    want.sort();
    got.sort();
    if want == got {
        Vec::new()
    } else {
        vec![format!("setup folders: unit has {want:?}, broctld {got:?}")]
    }
}

/// Compares every expected unit under `..DIR.` with broctld's nodes for the same config.
fn compare_units(
    expected: &Path,
    dir: &str,
    nodes: &[NodeSpec],
    setup: &ZeekSetup,
) -> (usize, Vec<String>) {
    let prefix = format!("..{dir}.");
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for e in std::fs::read_dir(expected).into_iter().flatten() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(unit) = name.strip_prefix(&prefix) {
            files.insert(unit.to_string(), baseline(&expected.join(&name)).unwrap());
        }
    }
    // Instances of templates: from the listing of generated files, else from drop-ins.
    let listing = baseline(&expected.join("out")).unwrap_or_default();
    let mut comparisons = 0;
    let mut diffs = Vec::new();
    let mut instances: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let inst = Regex::new(r"(zeek-[-a-z0-9]+)@([0-9]+)\.service").unwrap();
    for text in listing.lines().chain(files.keys().map(String::as_str)) {
        if !text.contains(&format!("{dir}/")) && listing.contains(text) {
            continue;
        }
        for c in inst.captures_iter(text) {
            instances
                .entry(format!("{}@.service", &c[1]))
                .or_default()
                .insert(c[2].to_string());
        }
    }
    // Baselines of files the generator no longer writes (btest keeps stale ones) are not
    // compared: when upstream's listing exists, only the files it lists are.
    if !listing.is_empty() {
        files.retain(|name, _| {
            let path = format!("{dir}/{}", name.replace(".service.d.", ".service.d/"));
            listing.lines().any(|l| l == path)
        });
    }
    for (name, text) in &files {
        if name.contains(".service.d.") {
            // A drop-in: compared with its template below; alone when the template is not
            // a baseline.
            let template = inst.replace(name.split(".service.d.").next().unwrap(), "$1@.service");
            if files.contains_key(template.as_ref()) {
                continue;
            }
        }
        if name == "zeek-setup.service" {
            comparisons += 1;
            diffs.extend(compare_setup(text, setup));
            continue;
        }
        let (template_name, ids): (String, Vec<String>) = if name.ends_with("@.service") {
            // Without a listing or drop-ins, the template's first instance.
            let ids = instances
                .get(name)
                .cloned()
                .unwrap_or_else(|| BTreeSet::from(["1".to_string()]));
            (name.clone(), ids.into_iter().collect())
        } else if let Some(c) = inst.captures(name) {
            (format!("{}@.service", &c[1]), vec![c[2].to_string()])
        } else {
            (name.clone(), Vec::new())
        };
        let mut base = Unit::default();
        if let Some(t) = files.get(&template_name) {
            base.apply(t);
        }
        let units: Vec<(String, Unit)> = if ids.is_empty() {
            vec![(name.clone(), base.instance(""))]
        } else {
            ids.iter()
                .map(|i| {
                    let mut u = base.instance(i);
                    let drop = format!(
                        "{}.d.10-zeek-systemd-generator.conf",
                        template_name.replace("@.service", &format!("@{i}.service"))
                    );
                    if let Some(d) = files.get(&drop) {
                        u.apply(d);
                    }
                    (format!("{template_name} instance {i}"), u)
                })
                .collect()
        };
        for (label, unit) in units {
            comparisons += 1;
            let node = match unit.env.get("CLUSTER_NODE") {
                Some(n) => nodes.iter().find(|x| &x.name == n),
                None if label.starts_with("zeek-archiver") => {
                    nodes.iter().find(|x| x.name.ends_with("archiver"))
                }
                None => {
                    // A drop-in without its template: find the worker by its instance.
                    let i = label.rsplit(' ').next().unwrap_or("");
                    let stem = template_name
                        .trim_start_matches("zeek-")
                        .trim_end_matches("@.service");
                    nodes
                        .iter()
                        .find(|x| x.name.ends_with(&format!("{stem}-{i}")))
                }
            };
            let Some(node) = node else {
                diffs.push(format!("{label}: broctld runs no such node"));
                continue;
            };
            let partial = !files.contains_key(&template_name);
            let mut d = compare_unit(&unit, node, nodes);
            if partial {
                // Only a drop-in: compare what it says (CPUAffinity, INTERFACE, env).
                d.retain(|x| {
                    x.starts_with("CPUAffinity")
                        || x.starts_with("Nice")
                        || x.starts_with("MemoryMax")
                });
                let missing: Vec<String> = unit
                    .env
                    .iter()
                    .filter(|(k, v)| {
                        node.env
                            .iter()
                            .find(|(nk, _)| nk == *k)
                            .map(|(_, nv)| redact(nv))
                            .as_ref()
                            != Some(*v)
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !missing.is_empty() {
                    d.push(format!("Environment: broctld lacks {missing:?}"));
                }
            }
            diffs.extend(d.into_iter().map(|x| format!("{label}: {x}")));
        }
    }
    (comparisons, diffs)
}

// ---------------------------------------------------------------------------
// broctld itself.

/// Runs `broctld --config CONFIG ARGS` in an instance of its own under `work`: stdout, or the
/// error it printed.
fn broctld(config: &Path, work: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_broctld"))
        .arg("--runtime-dir")
        .arg(work.join("run"))
        .args(["--instance", "conformance", "--config"])
        .arg(config)
        .args(args)
        .env_remove("BROCTLD_HOST")
        .output()
        .expect("run broctld");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `config` under a name broctld reads as a zeek.conf (a copy when it is not one already).
fn as_zeek_conf(config: &Path, work: &Path) -> PathBuf {
    let name = config.file_name().unwrap().to_string_lossy();
    if name == "zeek.conf" || name.ends_with(".zeek.conf") {
        return config.to_path_buf();
    }
    let dir = work.join(format!("{name}.as-zeek-conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("zeek.conf");
    std::fs::copy(config, &copy).unwrap();
    copy
}

/// The nodes `broctld nodes --json` shows, as specs.
fn broctld_nodes(config: &Path, work: &Path) -> Result<Vec<NodeSpec>, String> {
    let text = broctld(config, work, &["nodes", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let opt_str = |v: &serde_json::Value| v.as_str().map(String::from);
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let policy = Policy {
                user: opt_str(&n["user"]),
                group: opt_str(&n["group"]),
                nice: n["nice"].as_i64().map(|x| x as i32),
                memory_max: n["memory_max"].as_u64(),
                capabilities: strings(&n["capabilities"]),
                restart_delay: Duration::from_millis(n["restart_delay_ms"].as_u64().unwrap()),
                ..Policy::default()
            };
            NodeSpec {
                name: n["name"].as_str().unwrap().into(),
                node_type: NodeType::parse(n["type"].as_str().unwrap()).unwrap(),
                command: strings(&n["command"]),
                env: n["env"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                cwd: PathBuf::from(n["cwd"].as_str().unwrap()),
                stdout: PathBuf::from(n["stdout"].as_str().unwrap()),
                stderr: PathBuf::from(n["stderr"].as_str().unwrap()),
                cpu_affinity: n["cpu_affinity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap() as usize)
                    .collect(),
                start_after: strings(&n["start_after"]),
                policy: policy.into(),
                line: 0,
            }
        })
        .collect())
}

/// `broctld layout` for a zeek.conf or a cluster folder (any of its hosts: the layout is the
/// whole cluster's).
fn broctld_layout(config: &Path, work: &Path) -> Result<String, String> {
    let mut args = vec!["layout".to_string()];
    if config.is_dir() {
        let host = std::fs::read_dir(config)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.strip_suffix(".zeek.conf").map(String::from)
            })
            .min()
            .unwrap_or_default();
        args = vec!["--host".into(), host, "layout".into()];
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    broctld(config, work, &args)
}

// ---------------------------------------------------------------------------
// The generator's cases.

/// The `%INPUT` texts: the test file itself, then each `@TEST-START-NEXT` variant.
fn variants(script: &str) -> Vec<String> {
    script
        .split("# @TEST-START-NEXT\n")
        .map(String::from)
        .collect()
}

/// The layout generator's flags as the zeek.conf that asks for the same cluster.
fn flags_as_conf(args: &[&str]) -> (String, Option<String>) {
    let mut conf = vec![];
    let mut out = None;
    let (mut manager, mut loggers, mut proxies, mut workers) = ("1", "1", "1", "1".to_string());
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).copied().unwrap_or("");
        match args[i] {
            "-L" => loggers = v,
            "-P" => proxies = v,
            "-M" => manager = v,
            "-W" => workers = v.trim_matches('\'').to_string(),
            "-p" => conf.push(format!("port = {v}")),
            "-a" => conf.push(format!("address = {v}")),
            "-m" => conf.push(format!("metrics_port = {v}")),
            "-x" => conf.push(format!("cluster_node_prefix = {v}")),
            "-o" => out = Some(v.to_string()),
            _ => {}
        }
        i += 2;
    }
    let mut text = format!(
        "[zeek]\nmanager = {manager}\nloggers = {loggers}\nproxies = {proxies}\n{}\n",
        conf.join("\n")
    );
    if workers.bytes().all(|b| b.is_ascii_digit()) {
        text = text.replacen("[zeek]\n", "", 1);
        text.push_str(&format!("interface = lo\nworkers = {workers}\n"));
    } else {
        for part in workers.split([',', ' ']).filter(|p| !p.is_empty()) {
            let (name, n) = part.split_once(':').unwrap();
            text.push_str(&format!(
                "[interface {name}]\ninterface = {name}\nworkers = {n}\n"
            ));
        }
    }
    (text, out)
}

/// One generator case: (comparisons, failures), or why nothing in it applies.
fn generator_case(dir: &Path) -> Result<(usize, Vec<String>), &'static str> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    // The btest file: `<case>.sh` or `<case>.zeek`.
    let script_path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file() && p.file_stem().is_some_and(|s| s.to_string_lossy() == name))
        .unwrap_or_else(|| panic!("{name}: no btest file"));
    let script = std::fs::read_to_string(&script_path).unwrap();
    let expected = dir.join("expected");
    let exec = Regex::new(r"# @TEST-EXEC(-FAIL)?: (.*)").unwrap();
    let mut comparisons = 0;
    let mut failures = Vec::new();
    let mut applicable = false;
    for (k, input) in variants(&script).iter().enumerate() {
        let suffix = if k == 0 {
            String::new()
        } else {
            format!("-{}", k + 1)
        };
        let work = scratch(&format!("{name}{suffix}"));
        copy_tree(&dir.join("files"), &work);
        let input_path = work.join("input.conf");
        std::fs::write(&input_path, input).unwrap();
        for c in exec.captures_iter(&script) {
            let must_fail = c.get(1).is_some();
            let cmd = c[2].replace("${BUILD}/tools/systemd-generator/", "");
            let cmd = cmd.replace("$(pwd)/", "");
            let words: Vec<&str> = cmd.split_whitespace().collect();
            match words.first().copied() {
                Some("zeek-systemd-generator") => {
                    applicable = true;
                    let config = words[2];
                    let shipped = "${TEST_BASE}/../../tools/systemd-generator/etc/zeek/zeek.conf";
                    let config = if config == "%INPUT" {
                        input_path.clone()
                    } else if config == shipped {
                        // Upstream's shipped zeek.conf: the corpus keeps it as zeek.conf.example.
                        dir.parent().unwrap().join("zeek.conf.example")
                    } else {
                        work.join(config)
                    };
                    let out_dir = words[3];
                    // What `broctld nodes --json` says for this config (under a name broctld
                    // reads as a zeek.conf), and the library's setup for the folders.
                    let cli_config = as_zeek_conf(&config, &work);
                    let loaded = broctld_nodes(&cli_config, &work).and_then(|nodes| {
                        zeek_cluster::load(&config, None, &work)
                            .map(|(_, setup)| (nodes, setup))
                            .map_err(|e| e.to_string())
                    });
                    let stderr = baseline(&expected.join(format!(".stderr{suffix}")));
                    match (loaded, must_fail) {
                        (Err(msg), true) => {
                            comparisons += 1;
                            let upstream: Vec<String> = stderr
                                .unwrap_or_default()
                                .lines()
                                .filter(|l| !l.ends_with(" is invalid"))
                                .filter_map(|l| l.split_once(": ").map(|(_, m)| m.to_string()))
                                .collect();
                            if !upstream.is_empty() && !upstream.iter().any(|m| msg.contains(m)) {
                                failures.push(format!(
                                    "{name}{suffix}: broctld says {msg:?}, upstream {upstream:?}"
                                ));
                            }
                            let at = format!("{}:", cli_config.display());
                            if !msg.contains(&at) {
                                failures.push(format!(
                                    "{name}{suffix}: {msg:?} names no file and line"
                                ));
                            }
                        }
                        (Ok(_), true) => {
                            comparisons += 1;
                            failures
                                .push(format!("{name}{suffix}: upstream rejects, broctld accepts"));
                        }
                        (Err(e), false) => {
                            comparisons += 1;
                            failures.push(format!("{name}{suffix}: broctld rejects: {e}"));
                        }
                        (Ok((nodes, setup)), false) => {
                            if k == 0 {
                                let (n, f) = compare_units(&expected, out_dir, &nodes, &setup);
                                comparisons += n;
                                failures.extend(f.into_iter().map(|x| format!("{name}: {x}")));
                            }
                        }
                    }
                }
                Some("zeek-cluster-layout-generator") => {
                    let (got, out) = if let Some(i) = words.iter().position(|w| *w == "-C") {
                        let target = work.join(words[i + 1]);
                        let out = words
                            .iter()
                            .position(|w| *w == "-o")
                            .map(|o| words[o + 1].to_string());
                        let got = if target.is_dir() {
                            broctld_layout(&target, &work)
                        } else {
                            zeek_cluster::read_conf(&target, Path::new("/dev/null"))
                                .map_err(|e| e.to_string())
                                .and_then(|c| layout::generator(&[c], GeneratorMode::Config))
                        };
                        (got, out)
                    } else {
                        let (text, out) = flags_as_conf(&words[1..]);
                        let flags_dir = work.join(format!("flags-{}", comparisons));
                        std::fs::create_dir_all(&flags_dir).unwrap();
                        std::fs::write(flags_dir.join("zeek.conf"), &text).unwrap();
                        (broctld_layout(&flags_dir.join("zeek.conf"), &work), out)
                    };
                    let Some(out) = out.filter(|o| !o.contains('/') && o != "out") else {
                        continue; // writing into a folder named `out`: the open-error case
                    };
                    let printed =
                        baseline(&expected.join("out")).filter(|o| o.starts_with("== nodes"));
                    if let (Some(printed), false, Ok(text)) =
                        (printed, expected.join(&out).exists(), &got)
                    {
                        // Only Zeek's print of Cluster::nodes is a baseline: compare the table.
                        applicable = true;
                        comparisons += 1;
                        let (want, have) = (printed_nodes(&printed), layout_nodes(text));
                        if want != have {
                            failures.push(format!(
                                "{name}: nodes differ:\n--- Zeek printed\n{want:#?}\n--- broctld's layout\n{have:#?}"
                            ));
                        }
                        continue;
                    }
                    let want_stderr = baseline(&expected.join(format!(".stderr{suffix}")));
                    let Some(want) = baseline(&expected.join(format!("{out}{suffix}"))) else {
                        if let (Err(e), Some(w)) = (&got, want_stderr) {
                            applicable = true;
                            comparisons += 1;
                            let w = redact(w.trim()).replace("<...>/", "");
                            if !e.contains(w.split(" from ").next().unwrap()) {
                                failures
                                    .push(format!("{name}: broctld says {e:?}, upstream {w:?}"));
                            }
                        }
                        continue;
                    };
                    applicable = true;
                    comparisons += 1;
                    match got {
                        Ok(text) if text == want => {}
                        Ok(text) => failures.push(format!(
                            "{name}: layout {out} differs:\n--- upstream\n{want}\n--- broctld\n{text}"
                        )),
                        Err(e) => failures.push(format!("{name}: layout {out}: broctld fails: {e}")),
                    }
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    if applicable {
        Ok((comparisons, failures))
    } else {
        Err("writes the layout into a path it cannot open; broctld prints the layout on stdout and writes it where the nodes' ZEEKPATH finds it")
    }
}

/// One node of a layout: type, ip, port, manager, metrics port.
type LayoutNode = (String, String, String, String, String);

/// The nodes as Zeek prints `Cluster::nodes`.
fn printed_nodes(text: &str) -> BTreeMap<String, LayoutNode> {
    let re = Regex::new(
        r"\[([^\]]+)\] = \[node_type=Cluster::(\w+), ip=([^,]+), zone_id=[^,]*, p=([^,]+), manager=([^,]+), id=[^,]*, metrics_port=([^\]]+)\]",
    )
    .unwrap();
    re.captures_iter(text)
        .map(|c| {
            let manager = if &c[5] == "<uninitialized>" {
                ""
            } else {
                &c[5]
            };
            (
                c[1].to_string(),
                (
                    c[2].into(),
                    c[3].into(),
                    c[4].into(),
                    manager.into(),
                    c[6].into(),
                ),
            )
        })
        .collect()
}

/// The nodes of a rendered layout, host addresses resolved through its `Cluster::hosts`.
fn layout_nodes(text: &str) -> BTreeMap<String, LayoutNode> {
    let hosts: BTreeMap<String, String> = Regex::new(r#"\["([^"]+)"\] = \[\$ip=([^\]]+)\],"#)
        .unwrap()
        .captures_iter(text)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    let node = Regex::new(r#"\["([^"]+)"\] = \[\$node_type=Cluster::(\w+), \$ip=([^,]+)(?:, \$p=([^,]+))?(?:, \$manager="([^"]+)")?, \$metrics_port=([^\]]+)\]"#).unwrap();
    let host_ip = Regex::new(r#"^hosts\["([^"]+)"\]\$ip$"#).unwrap();
    node.captures_iter(text)
        .map(|c| {
            let ip = host_ip
                .captures(&c[3])
                .and_then(|h| hosts.get(&h[1]).cloned())
                .unwrap_or_else(|| c[3].to_string());
            let port = c.get(4).map_or("0/unknown", |m| m.as_str());
            let manager = c.get(5).map_or("", |m| m.as_str());
            (
                c[1].to_string(),
                (c[2].into(), ip, port.into(), manager.into(), c[6].into()),
            )
        })
        .collect()
}

#[test]
fn generator_corpus_units_layouts_and_errors_match_upstream() {
    let Some(root) = corpus() else { return };
    let mut tally = Tally::default();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("generator"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        tally.cases += 1;
        match generator_case(&dir) {
            Ok((n, f)) => {
                tally.comparisons += n;
                if f.is_empty() {
                    tally.passed += 1;
                }
                tally.failures.extend(f);
            }
            Err(why) => tally.not_applicable.push((name, why)),
        }
    }
    tally.finish("zeek-systemd-generator corpus");
}

// ---------------------------------------------------------------------------
// zeekctl's cases.

/// (test, node.cfg, zeekctl.cfg lines, baseline); the tests' bash steps as data.
const ZEEKCTL_CASES: &[(&str, &str, &[&str], &str)] = &[
    (
        "install-layout-files",
        "node.cfg.example",
        &[],
        "standalone",
    ),
    (
        "install-layout-files",
        "node.cfg__cluster",
        &[],
        "no-logger",
    ),
    ("install-layout-files", "node.cfg__logger", &[], "logger"),
    (
        "install-layout-files",
        "node.cfg__two_loggers",
        &[],
        "two-loggers",
    ),
    (
        "install-zeekport",
        "node.cfg__cluster",
        &["zeekport=41234"],
        "no-logger",
    ),
    (
        "install-zeekport",
        "node.cfg__two_loggers",
        &["zeekport=41234"],
        "two-loggers",
    ),
    (
        "install-zeekport",
        "node.cfg__two_proxies",
        &["zeekport=41234"],
        "two-proxies",
    ),
    (
        "install-usewebsocket",
        "node.cfg__cluster",
        &[],
        "cluster-layout-base",
    ),
    (
        "install-usewebsocket",
        "node.cfg__cluster",
        &["UseWebSocket = 1"],
        "cluster-layout-use-websocket",
    ),
    (
        "install-usewebsocket",
        "node.cfg__cluster",
        &[
            "UseWebSocket = 1",
            "WebSocketHost = [::1]",
            "WebSocketPort = 1234",
        ],
        "cluster-layout-use-websocket-custom",
    ),
    (
        "install-usewebsocket",
        "node.cfg__cluster",
        &[
            "UseWebSocket = 0",
            "WebSocketHost = [::1]",
            "WebSocketPort = 1234",
        ],
        "cluster-layout-use-websocket-off",
    ),
    (
        "install-standalone-0-metricsport",
        "node.cfg.example",
        &["MetricsPort = 0"],
        "standalone-layout.zeek",
    ),
];

/// zeekctl tests whose baselines are not layouts.
const ZEEKCTL_NOT_APPLICABLE: &[(&str, &str)] = &[
    ("install", "baselines are zeekctl install's console output"),
    (
        "install-state",
        "baselines are zeekctl install's console output and state database",
    ),
    (
        "install-metrics-address",
        "baselines are lines of zeekctl-config.zeek (MetricsAddress), not the layout",
    ),
];

#[test]
fn zeekctl_corpus_layouts_match_zeekctl_install() {
    let Some(root) = corpus() else { return };
    let zk = root.join("zeekctl");
    let canon = |s: &str| s.replace("$ip=[::1]", "$ip=127.0.0.1");
    let mut tally = Tally::default();
    let mut per_test: BTreeMap<&str, bool> = BTreeMap::new();
    for &(test, node_cfg, lines, base) in ZEEKCTL_CASES {
        let work = scratch(&format!("zeekctl-{test}-{base}"));
        let etc = work.join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::copy(zk.join("etc").join(node_cfg), etc.join("node.cfg")).unwrap();
        std::fs::write(etc.join("zeekctl.cfg"), lines.join("\n")).unwrap();
        tally.comparisons += 1;
        let want = baseline(&zk.join("baselines").join(test).join(base)).unwrap();
        let ok = match broctld(&etc.join("node.cfg"), &work, &["layout"]) {
            Ok(layout) if canon(&layout) == canon(&want) => true,
            Ok(layout) => {
                tally.failures.push(format!(
                    "{test}/{base}: layout differs:\n--- zeekctl\n{want}\n--- broctld\n{layout}"
                ));
                false
            }
            Err(e) => {
                tally
                    .failures
                    .push(format!("{test}/{base}: broctld fails: {e}"));
                false
            }
        };
        *per_test.entry(test).or_insert(true) &= ok;
        let _ = std::fs::remove_dir_all(&work);
    }
    tally.cases = per_test.len() + ZEEKCTL_NOT_APPLICABLE.len();
    tally.passed = per_test.values().filter(|ok| **ok).count();
    tally.not_applicable = ZEEKCTL_NOT_APPLICABLE
        .iter()
        .map(|&(t, why)| (t.to_string(), why))
        .collect();
    // Every zeekctl test in the corpus is either run or listed as not applicable.
    for e in std::fs::read_dir(zk.join("tests")).unwrap() {
        let n = e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .replace(".test", "");
        assert!(
            per_test.contains_key(n.as_str())
                || ZEEKCTL_NOT_APPLICABLE.iter().any(|(t, _)| *t == n),
            "zeekctl test {n} is neither run nor listed as not applicable"
        );
    }
    tally.finish("zeekctl corpus");
}
