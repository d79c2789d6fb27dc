//! Commands across the hosts of a multi-host cluster (a config with `[[host]]` tables): each
//! host's own broctld runs the command for its own nodes (over ssh, see [`crate::remote`]), all
//! hosts in parallel; `start` and `stop` go stage by stage in the cluster-wide order (loggers,
//! managers, proxies, workers, others; reversed for `stop`), whichever host a node is on.
//!
//! Partial failure is normal: each host that fails is reported on one line (naming the host
//! and what to do), the others' results are shown and applied, and the exit status is
//! [`EXIT_UNREACHABLE`] when some host could not be reached.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::args::Cmd;
use super::output::{duration, pretty, shell_quote};
use super::style::{state_color, table, Cell, Style};
use crate::config::hosts::{Cluster, HostSpec};
use crate::config::Config;
use crate::instance::Instance;
use crate::remote::{self, RemoteError, Reply, Target};

/// Exit status when some hosts could not be reached (the others' results were applied).
pub const EXIT_UNREACHABLE: i32 = 4;

/// Whether `cmd` is one the cluster runs across hosts.
pub fn is_cluster_command(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Status { .. }
            | Cmd::Start { .. }
            | Cmd::Stop { .. }
            | Cmd::Restart { .. }
            | Cmd::Events { .. }
            | Cmd::Deploy
    )
}

/// This machine's name in the cluster's reports: the kernel's hostname (else `local`).
fn local_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// The hosts one command addresses and how to reach them.
struct Plan {
    cluster: Cluster,
    targets: Vec<Target>,
    config: PathBuf,
}

impl Plan {
    fn new(
        config: &Config,
        cluster: Cluster,
        instance: &Instance,
        given_instance: Option<&str>,
        only: Option<&str>,
    ) -> Result<Plan, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot name this broctld's executable: {e}"))?;
        let mut hosts: Vec<(HostSpec, bool)> =
            cluster.hosts.iter().map(|h| (h.clone(), false)).collect();
        // The nodes naming no host run on this machine, reached without ssh (`--host` here
        // picks the host a command addresses, so this machine's name is the kernel's).
        let this = local_name();
        if cluster.nodes.iter().any(|n| n.host.is_none()) {
            hosts.insert(0, (HostSpec::new(this, String::new(), 0), true));
        }
        if let Some(only) = only {
            if !hosts.iter().any(|(h, _)| h.name == only) {
                let names: Vec<&str> = hosts.iter().map(|(h, _)| h.name.as_str()).collect();
                return Err(format!(
                    "no host '{only}' in {} (hosts: {})",
                    config.path.display(),
                    names.join(", ")
                ));
            }
            hosts.retain(|(h, _)| h.name == only);
        }
        instance
            .ensure_dirs()
            .map_err(|e| format!("the runtime folder for the ssh connections: {e}"))?;
        let targets = hosts
            .into_iter()
            .map(|(h, local)| Target {
                broctld: h.broctld.clone().unwrap_or_else(|| exe.clone()),
                config: h.config.clone().unwrap_or_else(|| config.path.clone()),
                instance: given_instance.map(str::to_owned),
                control: remote::control_path(&instance.dir(), &h.name),
                runtime_dir: local.then(|| instance.runtime_dir().to_path_buf()),
                local,
                host: h,
            })
            .collect();
        Ok(Plan {
            cluster,
            targets,
            config: config.path.clone(),
        })
    }

    /// The host of each selected node, grouped: (host index, names) per host.
    fn by_host(&self, names: &[&str]) -> Vec<(usize, Vec<String>)> {
        let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for name in names {
            let Some(node) = self.cluster.nodes.iter().find(|n| n.name == *name) else {
                continue;
            };
            let at = |t: &Target| match &node.host {
                Some(h) => !t.local && t.host.name == *h,
                None => t.local,
            };
            if let Some(i) = self.targets.iter().position(at) {
                out.entry(i).or_default().push(name.to_string());
            }
        }
        out.into_iter().collect()
    }
}

/// What the hosts answered, with failures reported as they come.
#[derive(Default)]
struct Tally {
    unreachable: bool,
    failed: bool,
    /// Hosts given up on (not asked again in later stages).
    gone: Vec<usize>,
}

impl Tally {
    fn note(&mut self, index: usize, r: Result<Reply, RemoteError>) -> Option<Reply> {
        match r {
            Ok(reply) => Some(reply),
            Err(e) => {
                eprintln!("broctld: {e}");
                if e.unreachable() {
                    self.unreachable = true;
                } else {
                    self.failed = true;
                }
                self.gone.push(index);
                None
            }
        }
    }

    fn code(&self, ok: i32) -> i32 {
        if self.unreachable {
            EXIT_UNREACHABLE
        } else if self.failed {
            1
        } else {
            ok
        }
    }
}

/// Runs `cmd` across the cluster if the config describes several hosts; `None` when it does
/// not (the command then runs here as usual).
pub fn run(
    cmd: &Cmd,
    config_path: Option<&Path>,
    instance: &Instance,
    given_instance: Option<&str>,
    only_host: Option<&str>,
) -> Option<i32> {
    let path = super::session::find_config(config_path).ok()?;
    let config = Config::load(&path).ok()?;
    let cluster = config.cluster.clone()?;
    let plan = match Plan::new(&config, cluster, instance, given_instance, only_host) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("broctld: {e}");
            return Some(2);
        }
    };
    Some(match cmd {
        Cmd::Status { nodes, json } => status(&plan, nodes, *json),
        Cmd::Start { nodes } => staged(&plan, nodes, &[("start", false)]),
        Cmd::Stop { nodes } => staged(&plan, nodes, &[("stop", true)]),
        Cmd::Restart { nodes } => staged(&plan, nodes, &[("stop", true), ("start", false)]),
        Cmd::Events {
            follow,
            since,
            last,
            json,
        } => events(&plan, *follow, *since, *last, *json),
        Cmd::Deploy => deploy(&plan),
        _ => return None,
    })
}

/// The selected nodes' names, in config order, or the error printed.
fn select<'p>(plan: &'p Plan, words: &[String]) -> Result<Vec<&'p str>, i32> {
    match super::select::select(&plan.cluster.nodes, words) {
        Ok(ix) => {
            let names: Vec<&str> = ix
                .into_iter()
                .map(|i| plan.cluster.nodes[i].name.as_str())
                .collect();
            // Only the nodes of the hosts addressed (`--host`).
            let here: Vec<String> = plan
                .by_host(&names)
                .into_iter()
                .flat_map(|(_, n)| n)
                .collect();
            Ok(names
                .into_iter()
                .filter(|n| here.iter().any(|h| h == n))
                .collect())
        }
        Err(e) => {
            eprintln!("broctld: {e}");
            Err(2)
        }
    }
}

fn status(plan: &Plan, words: &[String], json: bool) -> i32 {
    let names = match select(plan, words) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let groups = plan.by_host(&names);
    let jobs: Vec<(&Target, Vec<String>)> = groups
        .iter()
        .map(|(i, names)| {
            let mut args = vec!["status".to_string(), "--json".into()];
            args.extend(names.iter().cloned());
            (&plan.targets[*i], args)
        })
        .collect();
    let mut tally = Tally::default();
    let mut rows: Vec<Value> = Vec::new();
    for ((i, _), r) in groups.iter().zip(remote::run_all(&jobs)) {
        let host = &plan.targets[*i].host.name;
        let Some(reply) = tally.note(*i, r) else {
            continue;
        };
        match serde_json::from_str::<Value>(&reply.stdout) {
            Ok(Value::Array(items)) => {
                for mut item in items {
                    if let Value::Object(m) = &mut item {
                        m.insert("host".into(), Value::String(host.clone()));
                    }
                    rows.push(item);
                }
            }
            _ => {
                eprintln!(
                    "broctld: host '{host}': status failed (exit {}): {}",
                    reply.code,
                    reply.stderr.trim()
                );
                tally.failed = true;
            }
        }
    }
    let order = |v: &Value| {
        let name = v["name"].as_str().unwrap_or("");
        names.iter().position(|n| *n == name).unwrap_or(usize::MAX)
    };
    rows.sort_by_key(order);
    let all_running = rows.len() == names.len() && rows.iter().all(|r| r["state"] == "running");
    if json {
        println!("{}", pretty(&Value::Array(rows)));
    } else {
        print!("{}", status_table(&rows, Style::stdout()));
    }
    tally.code(if all_running { 0 } else { 3 })
}

/// The cluster `status` table: the local table's columns, with the host.
fn status_table(rows: &[Value], style: Style) -> String {
    let mut header = super::output::STATUS_HEADER.to_vec();
    header.insert(1, "HOST");
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<Cell>> = rows
        .iter()
        .map(|r| {
            let state = text(&r["state"]);
            let last = &r["last_exit"];
            let last_exit = if let Some(c) = last["code"].as_i64() {
                format!("code {c}")
            } else if let Some(s) = last["signal"].as_i64() {
                format!("signal {s} ({})", crate::config::signal_name(s as i32))
            } else {
                "-".into()
            };
            vec![
                Cell::new(text(&r["name"])),
                Cell::new(text(&r["host"])),
                Cell::new(text(&r["type"])),
                Cell::colored(state.clone(), state_color(&state)),
                Cell::new(text(&r["pid"])),
                Cell::new(r["uptime_ms"].as_u64().map_or("-".into(), |ms| {
                    duration(std::time::Duration::from_millis(ms))
                })),
                Cell::new(text(&r["restarts"])),
                Cell::new(last_exit),
            ]
        })
        .collect();
    table(&header, &cells, style)
}

/// `start`/`stop`/`restart`: each `(verb, reversed)` step goes stage by stage over the node
/// roles; in a stage every host with nodes in it runs `verb NODES` at once.
fn staged(plan: &Plan, words: &[String], steps: &[(&str, bool)]) -> i32 {
    let names = match select(plan, words) {
        Ok(n) => n,
        Err(code) => return code,
    };
    let mut tally = Tally::default();
    let mut worst = 0;
    for (verb, reversed) in steps {
        let mut ranks: Vec<u8> = names
            .iter()
            .filter_map(|n| plan.cluster.nodes.iter().find(|c| c.name == *n))
            .map(|n| n.node_type.start_rank())
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        if *reversed {
            ranks.reverse();
        }
        for rank in ranks {
            let stage: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| {
                    plan.cluster
                        .nodes
                        .iter()
                        .any(|c| c.name == *n && c.node_type.start_rank() == rank)
                })
                .collect();
            let groups: Vec<(usize, Vec<String>)> = plan
                .by_host(&stage)
                .into_iter()
                .filter(|(i, _)| !tally.gone.contains(i))
                .collect();
            let jobs: Vec<(&Target, Vec<String>)> = groups
                .iter()
                .map(|(i, names)| {
                    let mut args = vec![verb.to_string()];
                    args.extend(names.iter().cloned());
                    (&plan.targets[*i], args)
                })
                .collect();
            for ((i, _), r) in groups.iter().zip(remote::run_all(&jobs)) {
                let host = &plan.targets[*i].host.name;
                let Some(reply) = tally.note(*i, r) else {
                    continue;
                };
                for line in reply.stdout.lines() {
                    println!("{host}: {line}");
                }
                for line in reply.stderr.lines() {
                    eprintln!("{host}: {line}");
                }
                if reply.code != 0 {
                    worst = worst.max(reply.code);
                }
            }
        }
    }
    tally.code(worst)
}

fn events(plan: &Plan, follow: bool, since: Option<u64>, last: Option<usize>, json: bool) -> i32 {
    if follow {
        eprintln!("broctld: events -f does not follow other hosts: run it on that host (ssh HOST broctld events -f), or with --local for this machine; without -f, events merges every host's");
        return 2;
    }
    let mut args = vec!["events".to_string(), "--json".into()];
    if let Some(s) = since {
        args.extend(["--since".into(), s.to_string()]);
    }
    if let Some(n) = last {
        args.extend(["-n".into(), n.to_string()]);
    }
    let jobs: Vec<(&Target, Vec<String>)> =
        plan.targets.iter().map(|t| (t, args.clone())).collect();
    let mut tally = Tally::default();
    let mut all: Vec<Value> = Vec::new();
    for (i, r) in remote::run_all(&jobs).into_iter().enumerate() {
        let host = &plan.targets[i].host.name;
        let Some(reply) = tally.note(i, r) else {
            continue;
        };
        for line in reply.stdout.lines() {
            if let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(line) {
                m.insert("host".into(), Value::String(host.clone()));
                all.push(Value::Object(m));
            }
        }
        if reply.code != 0 && reply.code != 3 {
            eprintln!(
                "broctld: host '{host}': events failed (exit {}): {}",
                reply.code,
                reply.stderr.trim()
            );
            tally.failed = true;
        }
    }
    // Each host's times come from its own clock: merged by time, then by host and number.
    all.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v["time"].to_string(),
                v["host"].to_string(),
                v["seq"].as_u64(),
            )
        };
        key(a).cmp(&key(b))
    });
    if let Some(n) = last {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    for e in &all {
        if json {
            println!("{e}");
        } else {
            let t = |k: &str| match &e[k] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            };
            println!(
                "{} {} {} {} {}",
                t("time"),
                t("host"),
                t("node"),
                t("kind"),
                t("detail")
            );
        }
    }
    tally.code(0)
}

/// `deploy`: the config (checked by loading it) copied to every host over its connection
/// (rsync when present here, else scp), then `reload` on each host.
fn deploy(plan: &Plan) -> i32 {
    let mut tally = Tally::default();
    let copies: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .targets
            .iter()
            .map(|t| s.spawn(move || copy_config(t, &plan.config)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("the copy panicked".into())))
            .collect()
    });
    let mut jobs = Vec::new();
    for (t, c) in plan.targets.iter().zip(copies) {
        match c {
            Ok(()) => jobs.push((t, vec!["reload".to_string()])),
            Err(e) => {
                eprintln!(
                    "broctld: host '{}': copying the config failed: {e}; it keeps its old config",
                    t.host.name
                );
                tally.unreachable = true;
            }
        }
    }
    for ((t, _), r) in jobs.iter().zip(remote::run_all(&jobs)) {
        let host = &t.host.name;
        let i = plan
            .targets
            .iter()
            .position(|x| x.host.name == *host)
            .unwrap_or(0);
        let Some(reply) = tally.note(i, r) else {
            continue;
        };
        if reply.code == 0 {
            println!("{host}: deployed {} and reloaded", t.config.display());
            for line in reply.stdout.lines() {
                println!("{host}: {line}");
            }
        } else {
            eprintln!(
                "broctld: host '{host}': reload failed, it keeps running its old config: {}",
                reply.stderr.trim()
            );
            tally.failed = true;
        }
    }
    tally.code(0)
}

fn copy_config(t: &Target, from: &Path) -> Result<(), String> {
    if t.local {
        if t.config == from {
            return Ok(());
        }
        return std::fs::copy(from, &t.config)
            .map(drop)
            .map_err(|e| format!("{} to {}: {e}", from.display(), t.config.display()));
    }
    t.connect().map_err(|e| e.to_string())?;
    let dest = format!("{}:{}", t.host.ssh, t.config.display());
    let rsync = std::process::Command::new("rsync")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = if rsync {
        let ssh: Vec<String> = std::iter::once("ssh".to_string())
            .chain(t.ssh_args())
            .map(|w| shell_quote(&w))
            .collect();
        let mut c = std::process::Command::new("rsync");
        c.args(["-a", "--checksum", "-e", &ssh.join(" ")]);
        c
    } else {
        let mut c = std::process::Command::new("scp");
        c.args(["-q", "-p"]).args(t.scp_args());
        c
    };
    if from.is_dir() {
        // A cluster folder: its files into the host's folder.
        if !rsync {
            cmd.arg("-r");
        }
        let src = if rsync {
            format!("{}/", from.display())
        } else {
            format!("{}/.", from.display())
        };
        cmd.arg(src).arg(format!("{dest}/"));
    } else {
        cmd.arg(from).arg(&dest);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", if rsync { "rsync" } else { "scp" }))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
