//! The node lifecycle under Supervisor faults: readiness across a Supervisor `kill -9`, what a
//! takeover resumes (stops in progress, starts, backoffs, restarts), reloads near the table's
//! capacity, nodes that close their lock fd or escape their group, resource limits, and the
//! small promises of the spawn path (fd hygiene, file modes, uptime). Every check is against
//! the kernel's truth (`/proc`), not only broctld's report.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn many(prefix: &str, n: usize, autostart: bool) -> String {
    let mut s = String::from("[defaults]\nrestart_delay_ms = 100\nstop_timeout_ms = 3000\n");
    for i in 0..n {
        s.push_str(&format!(
            "\n[[node]]\nname = \"{prefix}{i:03}\"\ntype = \"worker\"\nautostart = {autostart}\ncommand = [\"@NODE@\", \"--interval\", \"1h\"]\n"
        ));
    }
    s
}

/// Kills the live Supervisor with SIGKILL and waits until it is gone. The guardians go first:
/// these tests arrange what the *next* Supervisor finds, and a Main starts it (the guardian's
/// own replacement is tested in tests/fault_guardian.rs).
fn kill_supervisor(c: &Cluster) -> u32 {
    kill_guardians(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    sup
}

/// A Main command that brings a new Supervisor up (any command does), then waits until it
/// holds the lock.
fn replace_supervisor(c: &Cluster, old: u32) -> u32 {
    c.run(&["status"]);
    wait_for(
        WAIT,
        "a new live Supervisor",
        || c.lock_pid().filter(|p| *p != old && pid_alive(*p)),
        || c.log(),
    )
}

fn state_of(s: &BTreeMap<String, NodeView>, name: &str) -> String {
    s.get(name).map(|n| n.state.clone()).unwrap_or_default()
}

/// Defect 5: a reload that renames every node of a table more than half full used to panic
/// the Supervisor (index out of bounds in `publish_all`): the capacity check ignored the nodes
/// the reload retires. Stopped retired nodes leave the table at once, so it fits.
#[test]
fn reload_renaming_more_than_half_the_table_does_not_panic_the_supervisor() {
    let c = Cluster::new("reload_capacity", &many("a", 520, false));
    c.run(&["start", "a000"]).ok();
    let sup = c.supervisor_pid();
    // a000 runs: it is retired while running and stays in the table until it stops.
    c.wait_status(WAIT, "a000 running", |s| state_of(s, "a000") == "running");
    c.write_config(&many("b", 520, false));
    let out = c.run(&["reload"]);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", c.log());
    assert!(
        pid_alive(sup),
        "the Supervisor died in reload:\n{}",
        c.log()
    );
    assert!(!c.log().contains("panicked"), "{}", c.log());
    let s = c.wait_status(WAIT, "a000 gone", |s| !s.contains_key("a000"));
    assert_eq!(s.len(), 520, "{:?}", s.keys().take(5).collect::<Vec<_>>());
    assert!(s.contains_key("b519"));
}

/// The command line of `pid` as one string (spaces between arguments), "" if it is gone.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// A node that says it is ready (writes a newline to fd 3) only once `gate` exists, then
/// becomes `sleep 600` (so the kernel tells whether it got past its `echo >&3`).
fn gated(name: &str, node_type: &str, gate: &std::path::Path) -> String {
    format!(
        r#"
[[node]]
name = "{name}"
type = "{node_type}"
autostart = false
ready_fd = 3
ready_timeout_ms = 600000
command = ["sh", "-c", "while [ ! -e {} ]; do sleep 0.02; done; echo >&3; exec sleep 600"]
"#,
        gate.display()
    )
}

/// Defect 1: the readiness pipe's read end was the Supervisor's alone, so a node that said it
/// was ready while no Supervisor ran died of SIGPIPE. With the named FIFO the node survives,
/// and the next Supervisor reads what it wrote meanwhile.
#[test]
fn node_becoming_ready_survives_supervisor_kill() {
    let root = std::env::temp_dir().join(format!("broctld-gate-{}-a", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let gate = root.join("go");
    let _ = std::fs::remove_file(&gate);
    let c = Cluster::new("ready_kill", &gated("slow", "worker", &gate));
    c.run(&["status"]); // a Supervisor, no node started
    c.spawn_main(&["start", "slow"]);
    let s = c.wait_status(WAIT, "slow starting", |s| {
        state_of(s, "slow") == "starting" && s["slow"].pid.is_some()
    });
    let pid = s["slow"].pid.unwrap();
    assert!(cmdline(pid).starts_with("sh"), "{}", cmdline(pid));
    let old = kill_supervisor(&c);
    // The node says it is ready while no Supervisor runs.
    std::fs::write(&gate, "").unwrap();
    wait_until(WAIT, "the node past its readiness write, or dead", || {
        !pid_alive(pid) || cmdline(pid).starts_with("sleep")
    });
    assert!(
        pid_alive(pid),
        "the node died writing its readiness line with no Supervisor (SIGPIPE)"
    );
    replace_supervisor(&c, old);
    let s = c.wait_status(WAIT, "slow running", |s| state_of(s, "slow") == "running");
    assert_eq!(s["slow"].pid, Some(pid), "{}", c.log());
    assert_eq!(node_leaders(&c.instance)["slow"], vec![pid]);
    let _ = std::fs::remove_dir_all(&root);
}

/// Defects 1 and 2: a Supervisor that replaces a dead one (or an upgraded image) reports a
/// node that has not said it is ready as `starting`, not `running`, keeps a start queued
/// behind it, and sees it become ready through the FIFO it reopens by path.
#[test]
fn replacement_reports_a_node_not_yet_ready_as_starting_and_keeps_queued_starts() {
    let root = std::env::temp_dir().join(format!("broctld-gate-{}-b", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let gate = root.join("go");
    let _ = std::fs::remove_file(&gate);
    let config = format!(
        "{}\n[[node]]\nname = \"after\"\ntype = \"worker\"\nautostart = false\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n",
        gated("slow", "logger", &gate)
    );
    let c = Cluster::new("ready_replace", &config);
    c.run(&["status"]);
    c.spawn_main(&["start", "slow", "after"]);
    let s = c.wait_status(WAIT, "slow starting, after queued", |s| {
        state_of(s, "slow") == "starting"
            && s["slow"].pid.is_some()
            && state_of(s, "after") == "starting"
    });
    let pid = s["slow"].pid.unwrap();
    assert_eq!(s["after"].pid, None, "after must wait for slow: {s:?}");
    let old = kill_supervisor(&c);
    let new = replace_supervisor(&c, old);
    let s = c.status();
    // Read the kernel after the status: if the node has still not written, the status
    // cannot have seen it ready.
    assert!(cmdline(pid).starts_with("sh"), "{}", cmdline(pid));
    assert_eq!(s["slow"].pid, Some(pid));
    assert_eq!(
        state_of(&s, "slow"),
        "starting",
        "a node that never said it is ready is reported {:?}",
        s["slow"]
    );
    assert_eq!(
        state_of(&s, "after"),
        "starting",
        "the queued start was lost: {s:?}"
    );
    assert_eq!(s["after"].pid, None);
    // The same across an in-place upgrade.
    c.run(&["upgrade-supervisor"]).ok();
    let s = c.status();
    assert!(cmdline(pid).starts_with("sh"));
    assert_eq!(state_of(&s, "slow"), "starting", "{:?}\n{}", s, c.log());
    assert!(pid_alive(new));
    std::fs::write(&gate, "").unwrap();
    let s = c.wait_status(WAIT, "both running", |s| {
        state_of(s, "slow") == "running" && state_of(s, "after") == "running"
    });
    assert_eq!(s["slow"].pid, Some(pid));
    assert!(s["after"].pid.is_some_and(pid_alive));
    let _ = std::fs::remove_dir_all(&root);
}

/// Defect 2: a stop in progress keeps its SIGKILL deadline across a Supervisor `kill -9`
/// (a TERM-ignoring node used to be adopted `running` and run forever), and a restart in
/// progress still starts the node again.
#[test]
fn stop_in_progress_keeps_its_sigkill_deadline_across_supervisor_kill() {
    let c = Cluster::new(
        "stop_resume",
        r#"
[defaults]
stop_timeout_ms = 1500

[[node]]
name = "stubborn"
command = ["@NODE@", "--ignore-term", "--interval", "10s"]

[[node]]
name = "again"
command = ["@NODE@", "--ignore-term", "--interval", "10s"]
"#,
    );
    let before = c.start();
    let (p1, p2) = (
        before["stubborn"].pid.unwrap(),
        before["again"].pid.unwrap(),
    );
    c.spawn_main(&["stop", "stubborn"]);
    c.spawn_main(&["restart", "again"]);
    c.wait_status(WAIT, "both stopping", |s| {
        state_of(s, "stubborn") == "stopping" && state_of(s, "again") == "stopping"
    });
    let old = kill_supervisor(&c);
    replace_supervisor(&c, old);
    let s = c.status();
    assert!(
        matches!(state_of(&s, "stubborn").as_str(), "stopping" | "stopped"),
        "a stop in progress was forgotten: {:?}",
        s["stubborn"]
    );
    wait_until(WAIT, "the TERM-ignoring node killed", || !pid_alive(p1));
    let s = c.wait_status(WAIT, "stubborn stopped, again restarted", |s| {
        state_of(s, "stubborn") == "stopped"
            && state_of(s, "again") == "running"
            && s["again"].pid.is_some_and(|p| p != p2)
    });
    assert!(!pid_alive(p2));
    assert_eq!(s["stubborn"].pid, None);
}

/// Defect 2: a restart delay (`backoff`) survives a Supervisor `kill -9`: the successor does
/// not start the node early.
#[test]
fn backoff_keeps_its_restart_delay_across_supervisor_kill() {
    let c = Cluster::new(
        "backoff_resume",
        r#"
[[node]]
name = "flaky"
restart_delay_ms = 20000
command = ["@NODE@", "--exit-after", "200ms", "--interval", "10s"]
"#,
    );
    c.run(&["start"]);
    c.supervisor_pid();
    c.wait_status(WAIT, "flaky in backoff", |s| {
        state_of(s, "flaky") == "backoff"
    });
    let old = kill_supervisor(&c);
    replace_supervisor(&c, old);
    for _ in 0..2 {
        let s = c.status();
        assert_eq!(
            state_of(&s, "flaky"),
            "backoff",
            "the restart delay was lost: {:?}\n{}",
            s["flaky"],
            c.log()
        );
        assert_eq!(s["flaky"].pid, None);
        assert!(node_leaders(&c.instance)
            .get("flaky")
            .is_none_or(|v| v.is_empty()));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Defect 7: a node that closes its inherited fds (`exec 3>&-`) drops its lock; after a
/// Supervisor `kill -9` and a lost region, a second copy used to start. The lock file still
/// names it, so it is adopted, with its real uptime (defect 12).
#[test]
fn node_that_closes_its_lock_fd_does_not_run_twice_after_supervisor_kill_and_lost_region() {
    let c = Cluster::new(
        "closer",
        r#"
[[node]]
name = "closer"
command = ["sh", "-c", "exec 3>&-; exec sleep 600"]
"#,
    );
    let before = c.start();
    let seen = Instant::now();
    let pid = before["closer"].pid.unwrap();
    wait_until(WAIT, "the node to close its lock fd", || {
        cmdline(pid).starts_with("sleep")
    });
    kill_supervisor(&c);
    std::fs::remove_file(c.shm_path()).expect("remove the region");
    c.run(&["start"]).ok();
    let s = c.wait_status(WAIT, "closer running", |s| {
        state_of(s, "closer") == "running"
    });
    assert_eq!(s["closer"].pid, Some(pid), "{}", c.log());
    assert_eq!(
        node_leaders(&c.instance)["closer"],
        vec![pid],
        "a second copy runs"
    );
    // Adopted through its lock file: the uptime is the process's, not the adoption's.
    let up = Duration::from_millis(s["closer"].uptime_ms.unwrap());
    assert!(
        up >= seen.elapsed().saturating_sub(Duration::from_millis(100)),
        "uptime {up:?} reset by the adoption (running for at least {:?})",
        seen.elapsed()
    );
}

/// A node whose command leaves a copy of itself in its own session (`setsid`), with the
/// node's identity in its environment and its lock fd closed.
const ESCAPER: &str = r#"
[[node]]
name = "escaper"
command = ["sh", "-c", "(setsid sleep 600 3>&- &); exec sleep 600"]
"#;

/// The live process of node `escaper` outside the group of `leader`, tracked for cleanup.
fn find_escaped(c: &Cluster, leader: u32) -> u32 {
    let pid = wait_for(
        WAIT,
        "the escaped child",
        || {
            node_procs(&c.instance)
                .get("escaper")?
                .iter()
                .find(|p| p.pid != leader && pgid(p.pid) != Some(leader) && p.state != 'Z')
                .map(|p| p.pid)
        },
        || format!("{:?}", node_procs(&c.instance)),
    );
    track(c.id, pid, true);
    pid
}

fn status_json(c: &Cluster) -> serde_json::Value {
    let out = c.run(&["status", "--json"]);
    serde_json::from_str(&out.stdout).expect("status --json")
}

fn blocked_by(c: &Cluster, name: &str) -> Option<u64> {
    status_json(c)
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)?["blocked_by"]
        .as_u64()
}

/// Defect 7: a process that escaped its node's group (its own session, its lock fd closed)
/// but carries the node's identity blocks a new copy after its leader died unseen; status and
/// events say why (no "died, next start in 0.0 s"), the Supervisor does not poll /proc every
/// 50 ms meanwhile, and `stop` and `shutdown` end such processes.
#[test]
fn escaped_process_blocks_a_second_copy_and_stop_and_shutdown_end_it() {
    let c = Cluster::new(
        "escaped",
        &format!("{ESCAPER}\n[[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n"),
    );
    // The fallback without cgroups (with them, the escaped copy is the node's group's and
    // is killed, not waited for: tests/cgroups.rs).
    c.set_env("BROCTLD_CGROUP", "off");
    let before = c.start();
    let leader = before["escaper"].pid.unwrap();
    let escaped = find_escaped(&c, leader);
    // The leader dies while no Supervisor watches, and the region is lost (no guardian is
    // left to replace the Supervisor: see `kill_supervisor`).
    kill_supervisor(&c);
    signal(leader, libc::SIGKILL);
    wait_until(WAIT, "the leader gone", || !pid_alive(leader));
    std::fs::remove_file(c.shm_path()).expect("remove the region");
    // `start` says why the node did not start, and fails.
    let out = c.run(&["start"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("escaper: not started: blocked by pid {escaped}")),
        "{out:?}"
    );
    let sup = wait_for(
        WAIT,
        "a live Supervisor",
        || c.lock_pid().filter(|p| pid_alive(*p)),
        || c.log(),
    );
    track(c.id, sup, false);
    wait_until(WAIT, "escaper blocked", || {
        blocked_by(&c, "escaper") == Some(escaped as u64)
    });
    let s = c.status();
    assert_eq!(state_of(&s, "escaper"), "backoff");
    assert_eq!(s["escaper"].pid, None);
    assert!(pid_alive(escaped));
    assert!(
        duplicates(&c.instance).is_empty(),
        "{:?}",
        duplicates(&c.instance)
    );
    let table = c.run(&["status"]);
    assert!(
        table.stdout.contains(&format!("blocked by pid {escaped}")),
        "{}",
        table.stdout
    );
    let events = c.run(&["events"]);
    assert!(
        events.stdout.contains(&format!("blocked by pid {escaped}")),
        "{}",
        events.stdout
    );
    // No /proc poll every 50 ms logging or rescanning forever: one line for the block.
    let lines = |c: &Cluster| {
        c.log()
            .lines()
            .filter(|l| l.contains("not started"))
            .count()
    };
    let n0 = lines(&c);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&c), n0, "{}", c.log());
    assert_eq!(n0, 1, "{}", c.log());
    // `stop` ends the escaped copy.
    c.run(&["stop", "escaper"]).ok();
    wait_until(WAIT, "the escaped copy gone", || !pid_alive(escaped));
    let s = c.wait_status(WAIT, "escaper stopped", |s| {
        state_of(s, "escaper") == "stopped"
    });
    assert_eq!(blocked_by(&c, "escaper"), None);
    assert_eq!(s["other"].pid, before["other"].pid);
    // Started again, it escapes again; `shutdown` ends both.
    c.run(&["start", "escaper"]).ok();
    let s = c.wait_status(WAIT, "escaper running", |s| {
        state_of(s, "escaper") == "running"
    });
    let l2 = s["escaper"].pid.unwrap();
    let e2 = find_escaped(&c, l2);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "every process of the node gone", || {
        !pid_alive(l2) && !pid_alive(e2)
    });
}

/// Defect 7: when a node's leader dies on its own, a process of it that escaped its group is
/// ended with it (it would be a second copy), and the node restarts once it is gone.
#[test]
fn escaped_process_ends_with_its_crashed_leader_and_the_node_restarts_once() {
    let c = Cluster::new(
        "escaped_crash",
        &format!("[defaults]\nrestart_delay_ms = 50\n{ESCAPER}"),
    );
    let before = c.start();
    let leader = before["escaper"].pid.unwrap();
    let escaped = find_escaped(&c, leader);
    signal(leader, libc::SIGKILL);
    let s = c.wait_status(WAIT, "escaper restarted", |s| {
        state_of(s, "escaper") == "running" && s["escaper"].pid.is_some_and(|p| p != leader)
    });
    // The new copy escapes again (its command does), but the old escaped copy is gone: it
    // never ran next to the new leader.
    assert!(!pid_alive(escaped), "the escaped copy outlived its leader");
    assert!(s["escaper"].pid.is_some_and(pid_alive));
}

/// Defect 8: a successor started under a low soft fd limit (`ulimit -n 64`) raises it to the
/// hard limit, adopts every node (instead of failing its identity checks with EMFILE and
/// treating running nodes as leftovers), and gives nodes it starts the operator's limit.
#[test]
fn successor_under_a_low_fd_limit_supervises_every_node() {
    let n = 80;
    let c = Cluster::new("fd_limit", &many("n", n, true));
    c.run(&["start"]).ok();
    let before = c.wait_status(WAIT, "every node running", |s| {
        s.len() == n && s.values().all(|v| v.state == "running")
    });
    let old = kill_supervisor(&c);
    let mut cmd = c.command(&["status"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setrlimit between fork and exec; no allocation.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 64;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("a Main under ulimit -n 64");
    track(c.id, child.id(), false);
    wait_child(&mut child, WAIT).expect("the Main exits");
    let sup = wait_for(
        WAIT,
        "a new live Supervisor",
        || c.lock_pid().filter(|p| *p != old && pid_alive(*p)),
        || c.log(),
    );
    track(c.id, sup, false);
    let after = c.wait_status(WAIT, "every node running", |s| {
        s.len() == n && s.values().all(|v| v.state == "running")
    });
    let pids = |s: &BTreeMap<String, NodeView>| {
        s.iter()
            .map(|(k, v)| (k.clone(), v.pid))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    let soft = |pid: u32| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    };
    assert!(soft(sup).is_some_and(|s| s > 64), "{:?}", soft(sup));
    // A node it starts sees the operator's limit.
    c.run(&["restart", "n000"]).ok();
    let s = c.wait_status(WAIT, "n000 restarted", |s| {
        state_of(s, "n000") == "running" && s["n000"].pid != before["n000"].pid
    });
    assert_eq!(soft(s["n000"].pid.unwrap()), Some(64));
    let log_size = c.log().len();
    std::thread::sleep(Duration::from_millis(300));
    assert!(c.log().len() < log_size + 2000, "the log keeps growing");
    c.run(&["shutdown"]).ok();
    let leaders = node_leaders(&c.instance);
    assert!(leaders.values().all(|v| v.is_empty()), "{leaders:?}");
}

/// Defect 12: crash reports hold the node's whole environment: owner-only (0600).
#[test]
fn crash_reports_are_private() {
    let c = Cluster::new(
        "crash_mode",
        r#"
[[node]]
name = "crasher"
restart = "never"
command = ["@NODE@", "--exit-after", "100ms", "--exit-code", "3"]
env = { SECRET = "hunter2" }
"#,
    );
    c.run(&["start"]).ok();
    c.supervisor_pid();
    let dir = c.root.join("spool/crasher");
    let report: PathBuf = wait_for(
        WAIT,
        "a crash report",
        || broctld::supervisor::crash::list(&dir).into_iter().next(),
        || c.log(),
    );
    let mode = std::fs::metadata(&report).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", report.display());
}

/// Defect 12: a start refused by preflight (here: the last of 200 nodes has no program)
/// creates no node directories and leaves no lock file.
#[test]
fn refused_start_leaves_no_node_directories() {
    let config = format!(
        "{}\n[[node]]\nname = \"broken\"\ncommand = [\"/nonexistent/broctld-test-program\"]\n",
        many("d", 200, false)
    );
    let c = Cluster::new("refused_dirs", &config);
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let spool = c.root.join("spool");
    let made = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "{} node directories left by a refused start", made);
    let lock = c.instance_dir().join("supervisor.lock");
    assert!(!lock.exists(), "{} left by a refused start", lock.display());
}

/// Defect 12: adoption from the region checks the process is the node (its environment), as
/// the lock path does: a record pointing at another live process (with its right start time)
/// does not make the Supervisor adopt, and later signal, that process.
#[test]
fn region_adoption_checks_the_process_is_the_node() {
    let c = Cluster::new(
        "region_identity",
        r#"
[[node]]
name = "a"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    let before = c.start();
    let real = before["a"].pid.unwrap();
    let mut stranger = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep");
    track(c.id, stranger.id(), false);
    let sp = stranger.id();
    // No guardian is left to replace the Supervisor before the record is forged (see
    // `kill_supervisor`).
    kill_supervisor(&c);
    {
        use broctld::protocol::node::NodeRecord;
        let s = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("open region");
        let mut r = NodeRecord::decode(&s.read_record(0).unwrap()).unwrap();
        assert_eq!(r.name, "a");
        r.pid = Some(sp);
        r.pid_start = start_time(sp).unwrap();
        s.write_record(0, &r.encode());
    }
    c.run(&["status"]);
    let s = c.wait_status(WAIT, "a running", |s| state_of(s, "a") == "running");
    assert_eq!(s["a"].pid, Some(real), "{}", c.log());
    c.run(&["stop", "a"]).ok();
    assert!(pid_alive(sp), "a stop of a signalled a stranger");
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// Defect 2: a node a `reload` removed is stopped, then dropped; a Supervisor `kill -9` in
/// the middle of that stop used to leave a TERM-ignoring node running unsupervised forever.
/// The successor finishes the stop (its SIGKILL deadline stands) and drops it.
#[test]
fn retiring_node_stop_survives_supervisor_kill() {
    let two = r#"
[defaults]
stop_timeout_ms = 4000

[[node]]
name = "keep"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "gone"
command = ["@NODE@", "--ignore-term", "--interval", "10s"]
"#;
    let c = Cluster::new("retire_resume", two);
    let before = c.start();
    let gone = before["gone"].pid.unwrap();
    c.write_config(&two[..two.find("[[node]]\nname = \"gone\"").unwrap()]);
    // In the background: `reload` waits for the removed node to stop.
    c.spawn_main(&["reload"]);
    // `status` lists the configured nodes; the node's own output says it got its stop signal.
    let out = c.root.join("spool/gone/stdout.log");
    wait_until(WAIT, "gone told to stop", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("got SIGTERM"))
    });
    let old = kill_supervisor(&c);
    replace_supervisor(&c, old);
    wait_until(WAIT, "the retired TERM-ignoring node killed", || {
        !pid_alive(gone)
    });
    // Dropped from the table once stopped.
    wait_until(WAIT, "gone dropped from the region", || {
        c.client().status().iter().all(|n| n.name != "gone")
    });
    assert_eq!(c.status()["keep"].pid, before["keep"].pid);
}

/// Kills the Supervisor while the guardian is held, removes the region, then lets the
/// guardian start a successor (which finds no record of any node); waits for it.
fn lose_region_with_supervisor(c: &Cluster) {
    let guardian = freeze_guardian(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    std::fs::remove_file(c.shm_path()).expect("remove the region");
    thaw(guardian);
    wait_for(
        WAIT,
        "a new live Supervisor",
        || c.lock_pid().filter(|p| *p != sup && pid_alive(*p)),
        || c.log(),
    );
}

/// Found by the fault campaign (seed 6): a node stopped by a command was started again when
/// the region was lost together with its Supervisor, because its successor had no record of
/// the stop and autostarted every node. The stop now also lives in a down marker
/// (`nodes/NAME.down`, s6's `down` file), which a successor with no record obeys.
#[test]
fn stopped_node_stays_stopped_when_the_region_is_lost_with_the_supervisor() {
    let c = Cluster::new(
        "down_marker",
        r#"
[[node]]
name = "kept"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "halted"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    let before = c.start();
    let kept = before["kept"].pid.unwrap();
    c.run(&["stop", "halted"]).ok();
    c.wait_status(WAIT, "halted stopped", |s| {
        state_of(s, "halted") == "stopped"
    });
    assert!(c.instance_dir().join("nodes/halted.down").exists());
    // The region is lost while no Supervisor lives; the guardian's replacement finds nothing.
    lose_region_with_supervisor(&c);
    let s = c.wait_status(WAIT, "kept adopted", |s| state_of(s, "kept") == "running");
    assert_eq!(
        s["kept"].pid,
        Some(kept),
        "kept was restarted:\n{}",
        c.log()
    );
    // Give a wrong autostart time to happen, then check the kernel's truth.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state_of(&c.status(), "halted"), "stopped", "{}", c.log());
    let leaders = node_leaders(&c.instance);
    assert!(
        leaders.get("halted").is_none_or(|v| v.is_empty()),
        "halted runs again: {leaders:?}\n{}",
        c.log()
    );
    // An explicit start clears the marker.
    c.run(&["start", "halted"]).ok();
    c.wait_status(WAIT, "halted running", |s| {
        state_of(s, "halted") == "running"
    });
    assert!(!c.instance_dir().join("nodes/halted.down").exists());
}

/// Found by the fault campaign (seed 8): a node with `autostart = false`, started by a
/// command, was shown `stopped` while it ran once the region was lost with its Supervisor:
/// the successor had no record of it and only autostart nodes met the running-copy check.
/// A node with no record is now looked for (its lock file, its identity in `/proc`) and
/// adopted.
#[test]
fn manual_node_is_adopted_not_shown_stopped_when_the_region_is_lost() {
    let c = Cluster::new(
        "manual_adopt",
        r#"
[[node]]
name = "manual"
autostart = false
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    c.run(&["start", "manual"]).ok();
    let s = c.wait_status(WAIT, "manual running", |s| {
        state_of(s, "manual") == "running"
    });
    let pid = s["manual"].pid.unwrap();
    lose_region_with_supervisor(&c);
    let s = c.wait_status(WAIT, "manual adopted", |s| {
        state_of(s, "manual") == "running"
    });
    assert_eq!(s["manual"].pid, Some(pid), "{}", c.log());
    assert_eq!(
        node_leaders(&c.instance)["manual"],
        vec![pid],
        "a second copy runs"
    );
    // Adopted means supervised: a stop reaches it.
    c.run(&["stop", "manual"]).ok();
    wait_until(WAIT, "manual stopped by the stop", || !pid_alive(pid));
}
