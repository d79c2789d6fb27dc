//! Whole Zeek clusters under broctld with the Zeek stand-in (`zeek-standin`, which refuses to
//! run unless the layout on its ZEEKPATH names its CLUSTER_NODE, and reports its life in its
//! `-U` status file): a zeek.conf cluster and a zeekctl node.cfg cluster, in order, ready from
//! the status file, stopped, surviving a Supervisor kill -9, and reloaded with a new worker.
//! Checked against /proc (working folder, environment, liveness), not only broctld's word.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn standin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zeek-standin"))
}

/// A Zeek installation prefix under `root` whose `bin/zeek` is the stand-in.
fn zeek_prefix(root: &Path, name: &str) -> PathBuf {
    let base = root.join(name);
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::os::unix::fs::symlink(standin(), base.join("bin/zeek")).unwrap();
    base
}

/// A zeek.conf for a cluster of one manager, logger and proxy and `workers` workers on `lo`,
/// on ports unique to this test process.
fn zeek_conf(base: &Path, workers: u32) -> String {
    let port = 30000 + (std::process::id() % 2000) * 10;
    format!(
        "[zeek]\nmanager = 1\nloggers = 1\nproxies = 1\nbase_dir = {}\nuser =\ngroup =\narchiver = 0\n\
         port = {port}\nmetrics_port = {}\n\n[interface lo]\ninterface = lo\nworkers = {workers}\n",
        base.display(),
        port + 5
    )
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A zeek.conf cluster: the Cluster's --config is the zeek.conf itself (not as root: a TOML
/// file including it without the workers' CAP_NET_RAW, which only root can grant).
fn zeek_cluster(name: &str, workers: u32) -> (Cluster, PathBuf, PathBuf) {
    let mut c = Cluster::new(name, "");
    let base = zeek_prefix(&c.root, "zeek");
    let conf = c.root.join("zeek.conf");
    std::fs::write(&conf, zeek_conf(&base, workers)).unwrap();
    if root() {
        c.config = conf.clone();
    } else {
        c.write_config("[zeek]\nconf = \"zeek.conf\"\n[defaults]\ncapabilities = []\n");
    }
    (c, base, conf)
}

/// `events --json`: (node, kind) in order.
fn events(c: &Cluster) -> Vec<(String, String)> {
    let out = c.run(&["events", "-n", "1000", "--json"]);
    out.ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["node"].as_str().unwrap_or("").to_string(),
                v["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn position(ev: &[(String, String)], node: &str, kind: &str) -> usize {
    ev.iter()
        .position(|(n, k)| n == node && k == kind)
        .unwrap_or_else(|| panic!("no event {kind} for {node} in {ev:#?}"))
}

/// What the kernel says about a node's process: its working folder and CLUSTER_NODE.
fn proc_view(pid: u32) -> (PathBuf, Option<String>) {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let node = env
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("CLUSTER_NODE="))
        .map(String::from);
    (cwd, node)
}

fn all_running(s: &BTreeMap<String, NodeView>, names: &[&str]) -> bool {
    names.iter().all(|n| {
        s.get(*n)
            .is_some_and(|v| v.state == "running" && v.pid.is_some())
    })
}

const NODES: [&str; 5] = [
    "logger-1",
    "manager",
    "proxy-1",
    "worker-lo-1",
    "worker-lo-2",
];

#[test]
fn zeek_conf_cluster_starts_in_order_ready_from_status_files_and_stops() {
    let (c, base, _) = zeek_cluster("zeek_conf_cluster", 2);
    let spool = base.join("var/spool/zeek");
    let status = c.start();
    assert!(all_running(&status, &NODES), "{status:#?}\n{}", c.log());

    // The layout is where ZEEKPATH finds it, and is what `layout` prints.
    let layout_file = spool.join("generated-scripts/cluster-layout.zeek");
    let written = std::fs::read_to_string(&layout_file).unwrap();
    let printed = c.run(&["layout"]);
    printed.ok();
    assert_eq!(written, printed.stdout);

    // Each process runs in its own folder with its own CLUSTER_NODE, and says RUNNING.
    for name in NODES {
        let pid = status[name].pid.unwrap();
        let (cwd, node) = proc_view(pid);
        assert_eq!(cwd, spool.join(name), "{name}");
        assert_eq!(node.as_deref(), Some(name));
        let said = std::fs::read_to_string(spool.join(name).join(".status")).unwrap();
        assert_eq!(said.trim(), "RUNNING", "{name}");
    }

    // `nodes --json` is what each process runs: its argv and its whole environment (broctld's
    // own BROCTLD_* variables aside), as the kernel shows them.
    let listed = c.run(&["nodes", "--json"]);
    listed.ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    for n in listed.as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        let pid = status[name].pid.unwrap();
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let command: Vec<String> = serde_json::from_value(n["command"].clone()).unwrap();
        assert_eq!(argv, command, "{name}");
        let environ: BTreeMap<String, String> = std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
            .filter(|(k, _)| !k.starts_with("BROCTLD_"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut env: BTreeMap<String, String> = serde_json::from_value(n["env"].clone()).unwrap();
        // Besides its env: the login variables of the user it runs as (ours).
        // SAFETY: getuid cannot fail.
        let me = broctld::sys::account::login(unsafe { libc::getuid() }).unwrap();
        env.insert("HOME".into(), me.home);
        env.insert("USER".into(), me.name.clone());
        env.insert("LOGNAME".into(), me.name);
        env.insert("SHELL".into(), me.shell);
        assert_eq!(environ, env, "{name}");
    }

    // Ordered start: each stage spawned only once the one before said RUNNING.
    let ev = events(&c);
    assert!(position(&ev, "logger-1", "ready") < position(&ev, "manager", "spawned"));
    assert!(position(&ev, "manager", "ready") < position(&ev, "proxy-1", "spawned"));
    for w in ["worker-lo-1", "worker-lo-2"] {
        assert!(position(&ev, "proxy-1", "ready") < position(&ev, w, "spawned"));
    }

    c.run(&["stop"]).ok();
    for name in NODES {
        let pid = status[name].pid.unwrap();
        wait_until(LIMIT, &format!("{name} gone"), || !pid_alive(pid));
        let said = std::fs::read_to_string(spool.join(name).join(".status")).unwrap();
        assert_eq!(said.trim(), "TERMINATED", "{name}");
    }
    let after = c.status();
    assert!(after.values().all(|v| v.state == "stopped"), "{after:#?}");
}

#[test]
fn zeek_cluster_nodes_survive_a_supervisor_kill_9() {
    let (c, _, _) = zeek_cluster("zeek_kill9", 2);
    let before = c.start();
    assert!(all_running(&before, &NODES));
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(LIMIT, "the Supervisor gone", || !pid_alive(sup));
    for name in NODES {
        assert!(
            pid_alive(before[name].pid.unwrap()),
            "{name} died with the Supervisor"
        );
    }
    // The next command starts a new Supervisor, which adopts every node (same pids).
    let after = c.wait_status(LIMIT, "all adopted", |s| all_running(s, &NODES));
    for name in NODES {
        assert_eq!(after[name].pid, before[name].pid, "{name} was restarted");
    }
    // A new Supervisor holds the instance (the lock file may be rewritten meanwhile).
    wait_until(LIMIT, "a new Supervisor in the lock file", || {
        c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
    });
    c.supervisor_pid();
}

#[test]
fn zeek_reload_writes_the_new_layout_before_the_added_worker_starts() {
    let (c, base, conf) = zeek_cluster("zeek_reload", 2);
    let before = c.start();
    assert!(all_running(&before, &NODES));
    std::fs::write(&conf, zeek_conf(&base, 3)).unwrap();
    c.run(&["reload"]).ok();
    let mut names = NODES.to_vec();
    names.push("worker-lo-3");
    // The stand-in exits at once unless the layout names it: running means the new layout
    // was in place first.
    let after = c.wait_status(LIMIT, "worker-lo-3 running", |s| all_running(s, &names));
    for name in NODES {
        assert_eq!(
            after[name].pid, before[name].pid,
            "{name} was restarted by the reload"
        );
    }
    assert_eq!(after["worker-lo-3"].restarts, 0);
    let layout =
        std::fs::read_to_string(base.join("var/spool/zeek/generated-scripts/cluster-layout.zeek"))
            .unwrap();
    assert!(layout.contains("[\"worker-lo-3\"]"), "{layout}");
    let pid = after["worker-lo-3"].pid.unwrap();
    assert_eq!(proc_view(pid).1.as_deref(), Some("worker-lo-3"));
}

#[test]
fn node_cfg_cluster_runs_with_zeekctls_layout() {
    let mut c = Cluster::new("node_cfg_cluster", "");
    let base = zeek_prefix(&c.root, "zeekctl");
    let etc = base.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let port = 40000 + (std::process::id() % 2000) * 10;
    std::fs::write(
        etc.join("node.cfg"),
        "[logger]\ntype=logger\nhost=localhost\n\n[manager]\ntype=manager\nhost=localhost\n\n\
         [proxy-1]\ntype=proxy\nhost=localhost\n\n\
         [worker-1]\ntype=worker\nhost=localhost\ninterface=lo\nlb_method=af_packet\nlb_procs=2\npin_cpus=0\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("zeekctl.cfg"),
        format!("ZeekPort = {port}\nMetricsPort = {}\n", port + 6),
    )
    .unwrap();
    c.config = etc.join("node.cfg");
    let names = ["logger", "manager", "proxy-1", "worker-1-1", "worker-1-2"];
    let status = c.start();
    assert!(all_running(&status, &names), "{status:#?}\n{}", c.log());
    let layout = std::fs::read_to_string(
        base.join("spool/installed-scripts-do-not-touch/auto/cluster-layout.zeek"),
    )
    .unwrap();
    assert_eq!(layout, c.run(&["layout"]).stdout);
    for name in names {
        let pid = status[name].pid.unwrap();
        let (cwd, node) = proc_view(pid);
        assert_eq!(cwd, base.join("spool").join(name));
        assert_eq!(node.as_deref(), Some(name));
        assert!(
            layout.contains(&format!("[\"{name}\"]")),
            "{name} not in\n{layout}"
        );
    }
    // pin_cpus: the kernel's affinity of the workers.
    for w in ["worker-1-1", "worker-1-2"] {
        let pid = status[w].pid.unwrap();
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let allowed = st
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(allowed, "0", "{w}");
    }
    c.run(&["stop"]).ok();
    for name in names {
        let pid = status[name].pid.unwrap();
        wait_until(LIMIT, &format!("{name} gone"), || !pid_alive(pid));
    }
}

#[test]
fn ready_file_counts_only_the_line_written_by_this_run() {
    let c = Cluster::new(
        "ready_file_line",
        "[[node]]\nname = \"waiter\"\ncommand = [\"/bin/sh\", \"-c\", \"echo INITIALIZING > .status; while [ ! -e go ]; do sleep 0.02; done; echo RUNNING > .status; exec sleep 1000\"]\n\
         ready_file = { path = \".status\", line = \"RUNNING\" }\nready_timeout_ms = 60000\n",
    );
    // A previous run's file says RUNNING: it must not count.
    let cwd = c.root.join("spool/waiter");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join(".status"), "RUNNING\n").unwrap();
    let main = c.spawn_main(&["start"]);
    wait_until(LIMIT, "INITIALIZING written", || {
        std::fs::read_to_string(cwd.join(".status")).is_ok_and(|s| s.trim() == "INITIALIZING")
    });
    let s = c.status();
    assert_eq!(s["waiter"].state, "starting", "{s:#?}");
    std::fs::write(cwd.join("go"), "").unwrap();
    c.wait_status(LIMIT, "waiter ready", |s| s["waiter"].state == "running");
    assert!(c.wait_main(main, LIMIT).success());
}

#[test]
fn standin_refuses_a_cluster_node_its_layout_does_not_name() {
    let dir = std::env::temp_dir().join(format!("broctld-standin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cluster-layout.zeek"),
        "redef Cluster::nodes += {\n    [\"manager\"] = [$node_type=Cluster::MANAGER, $ip=127.0.0.1, $p=1/tcp],\n};\n",
    )
    .unwrap();
    let run = |node: &str| {
        std::process::Command::new(standin())
            .args(["-U", ".status"])
            .env("CLUSTER_NODE", node)
            .env("ZEEKPATH", format!("/nonexistent:{}", dir.display()))
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = run("worker-9");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker-9"));
    let v = std::process::Command::new(standin())
        .arg("-v")
        .output()
        .unwrap();
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).starts_with("zeek version"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn example_zeek_conf_cluster_runs_from_the_repository() {
    let mut c = Cluster::new("zeek_example", "");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zeek");
    // Not as root, the TOML file beside it (no CAP_NET_RAW for the workers).
    c.config = example.join(if root() { "zeek.conf" } else { "broctld.toml" });
    let spool = example.join("var/spool/zeek");
    let _ = std::fs::remove_dir_all(example.join("var"));
    let status = c.start();
    assert!(all_running(&status, &NODES), "{status:#?}\n{}", c.log());
    for name in NODES {
        let said = std::fs::read_to_string(spool.join(name).join(".status")).unwrap();
        assert_eq!(said.trim(), "RUNNING", "{name}");
        assert_eq!(proc_view(status[name].pid.unwrap()).0, spool.join(name));
    }
    c.run(&["shutdown"]).ok();
    for name in NODES {
        let pid = status[name].pid.unwrap();
        wait_until(LIMIT, &format!("{name} gone"), || !pid_alive(pid));
    }
    let _ = std::fs::remove_dir_all(example.join("var"));
}

/// The `CapAmb` mask and the nice level of `pid`, from /proc.
fn cap_amb_and_nice(pid: u32) -> (u64, i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let amb = status
        .lines()
        .find_map(|l| l.strip_prefix("CapAmb:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; nice is field 19 (index 16 here).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let nice = after.split(' ').nth(16).unwrap().parse().unwrap();
    (amb, nice)
}

#[test]
fn nice_and_ambient_capabilities_reach_a_worker_running_as_another_user() {
    if !root() {
        eprintln!("not root: switching users and raising capabilities cannot be tested");
        return;
    }
    let c = Cluster::new(
        "nice_caps",
        "[[node]]\nname = \"sniffer\"\ntype = \"worker\"\ncommand = [\"/bin/sleep\", \"1000\"]\n\
         user = \"nobody\"\nnice = 7\ncapabilities = [\"CAP_NET_RAW\", \"CAP_NET_ADMIN\"]\n\n\
         [[node]]\nname = \"plain\"\ncommand = [\"/bin/sleep\", \"1000\"]\nuser = \"nobody\"\n",
    );
    let s = c.start();
    let (amb, nice) = cap_amb_and_nice(s["sniffer"].pid.unwrap());
    assert_eq!(amb, (1 << 13) | (1 << 12), "CapAmb of the worker");
    assert_eq!(nice, 7);
    let (amb, nice) = cap_amb_and_nice(s["plain"].pid.unwrap());
    assert_eq!(
        (amb, nice),
        (0, 0),
        "a node without capabilities or nice keeps none"
    );
}

#[test]
fn ready_file_is_watched_again_when_a_restart_finds_the_nodes_folder_gone() {
    let c = Cluster::new(
        "ready_file_gone",
        "[[node]]\nname = \"waiter\"\ncommand = [\"/bin/sh\", \"-c\", \"echo INITIALIZING > .status; while [ ! -e ../go ]; do sleep 0.02; done; echo RUNNING > .status; exec sleep 1000\"]\n\
         ready_file = { path = \".status\", line = \"RUNNING\" }\nready_timeout_ms = 60000\n",
    );
    let spool = c.root.join("spool");
    let cwd = spool.join("waiter");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("go"), "").unwrap();
    let first = c.start();
    assert_eq!(first["waiter"].state, "running");
    // Its folder goes away, then it dies: the restart must still wait for RUNNING.
    std::fs::remove_file(spool.join("go")).unwrap();
    std::fs::remove_dir_all(&cwd).unwrap();
    let pid = first["waiter"].pid.unwrap();
    signal(pid, libc::SIGKILL);
    wait_until(LIMIT, "INITIALIZING written by the restarted node", || {
        std::fs::read_to_string(cwd.join(".status")).is_ok_and(|s| s.trim() == "INITIALIZING")
    });
    let s = c.status();
    assert_ne!(s["waiter"].pid, Some(pid));
    assert_eq!(s["waiter"].state, "starting", "{s:#?}\n{}", c.log());
    std::fs::write(spool.join("go"), "").unwrap();
    c.wait_status(LIMIT, "waiter ready again", |s| {
        s["waiter"].state == "running"
    });
}

/// The first file named `name` below `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// The folder of the generated layout belongs to the nodes' user (`user =` in zeek.conf), and
/// the Supervisor (root) wrote the layout through a fixed temporary name in it, following a
/// symlink: the nodes' user could make root overwrite any file (here a root-only "victim")
/// with the layout at the next start or `reload`.
#[test]
fn the_layout_is_not_written_through_a_symlink_the_nodes_user_planted() {
    if !root() {
        eprintln!("not root: a folder of another user cannot be tested");
        return;
    }
    let (c, base, conf) = zeek_cluster("layout_symlink", 1);
    // The nodes run as nobody, who must reach the stand-in: a checkout under /root (mode
    // 0700, as on a fresh machine that clones there) is out of its reach, so the prefix gets
    // a copy of the binary instead of a link into target/.
    let zeek = base.join("bin/zeek");
    std::fs::remove_file(&zeek).unwrap();
    std::fs::copy(standin(), &zeek).unwrap();
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("user =\ngroup =\n", "user = nobody\ngroup = nogroup\n");
    std::fs::write(&conf, text).unwrap();
    let out = c.run(&["start"]);
    let layout = find_file(&base, "cluster-layout.zeek")
        .unwrap_or_else(|| panic!("no layout written: {out:?}\n{}", c.log()));
    use std::os::unix::fs::MetadataExt;
    let folder = layout.parent().unwrap();
    let owner = std::fs::metadata(folder).unwrap().uid();
    assert_eq!(
        owner,
        65534,
        "{} belongs to the nodes' user",
        folder.display()
    );
    let victim = c.root.join("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    let tmp = layout.with_extension("zeek.broctld-tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    c.run(&["reload"]);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "secret\n",
        "the layout was written through the planted symlink"
    );
    c.run(&["shutdown"]).ok();
}

/// `check` asks Zeek itself about every Zeek node's scripts (`zeek --parse-only`, as zeekctl's
/// `check` does), with the node's own environment and this config's layout first on its
/// ZEEKPATH; a parse error is a problem of that node (exit status 2), and nothing starts.
#[test]
fn check_runs_zeek_parse_only_for_every_zeek_node_with_the_layout_on_zeekpath() {
    let (c, base, _) = zeek_cluster("zeek_check", 2);
    let out = c.run(&["check"]);
    out.ok();
    for node in NODES {
        assert!(
            out.stdout.contains(&format!(
                "node '{node}': {}",
                base.join("bin/zeek").display()
            )) && out.stdout.contains(&format!("node '{node}'")),
            "{node}: {}",
            out.stdout
        );
    }
    assert_eq!(out.stdout.matches("--parse-only: ok").count(), NODES.len());
    // A Zeek whose scripts do not parse.
    let zeek = base.join("bin/zeek");
    std::fs::remove_file(&zeek).unwrap();
    std::fs::write(
        &zeek,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --parse-only \"*)\n  echo \"error in ./local.zeek, line 3: unknown identifier Clusterr::node\" >&2; exit 1;;\nesac\nexec {} \"$@\"\n",
            standin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&zeek, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c.run(&["check"]);
    out.expect_code(2);
    assert_eq!(
        out.stdout.matches("--parse-only failed").count(),
        NODES.len(),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("unknown identifier Clusterr::node"),
        "{}",
        out.stdout
    );
    assert!(c.lock_pid().is_none(), "check started a Supervisor");
}
