//! Defects of the node lifecycle found by a hostile review (issue 16), each pinned by a test
//! named after it, fixed by making the lifecycle one pure machine (`supervisor/machine/`).
//! Real Supervisors, real nodes, real signals; the kernel's truth (`/proc`) and the event
//! ring are what is checked.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Holds the guardian (SIGSTOP) and kills the Supervisor: no successor starts until the
/// guardian is thawed. Returns the guardian.
fn kill_supervisor_held(c: &Cluster) -> u32 {
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    guardian
}

/// The events of the ring, oldest first, as `(node, kind, pid)` (from `events --json`: one
/// object a line).
fn events(c: &Cluster) -> Vec<(String, String, String)> {
    let out = c.run(&["events", "--since", "0", "--json"]);
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let e: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|err| panic!("events --json: {err}: {l}"));
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("node"), s("kind"), e["pid"].to_string())
        })
        .collect()
}

fn state(s: &BTreeMap<String, NodeView>, name: &str) -> String {
    s.get(name).map(|n| n.state.clone()).unwrap_or_default()
}

/// Defect 2: `restart a b` (staged) with a `start a` while it ran left `b` stopped and the
/// restart exited 1; a later, unrelated `stop a` then started `b`. A node a later command
/// takes over leaves its batch, and the batch goes on with the others.
#[test]
fn staged_restart_keeps_a_member_when_a_later_start_takes_another_over() {
    let c = Cluster::new(
        "batch_takeover",
        r#"
[[node]]
name = "mgr"
type = "manager"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "wrk"
type = "worker"
command = ["@NODE@", "--interval", "10s", "--stop-delay", "2s"]
"#,
    );
    let before = c.start();
    let (mgr, wrk) = (before["mgr"].pid.unwrap(), before["wrk"].pid.unwrap());
    let restart = c.spawn_main(&["restart", "mgr", "wrk"]);
    // The worker stops first (reverse order) and takes 2 s; the manager waits for it.
    c.wait_status(WAIT, "wrk stopping", |s| state(s, "wrk") == "stopping");
    c.run(&["start", "wrk"]).ok();
    let s = c.wait_status(WAIT, "both running with new pids", |s| {
        state(s, "mgr") == "running"
            && state(s, "wrk") == "running"
            && s["mgr"].pid.is_some_and(|p| p != mgr)
            && s["wrk"].pid.is_some_and(|p| p != wrk)
    });
    assert!(s["mgr"].pid.is_some_and(pid_alive), "{s:?}");
    let code = c.wait_main(restart, WAIT);
    assert_eq!(
        code.code(),
        Some(0),
        "the staged restart failed:\n{}",
        c.log()
    );
    let leaders = node_leaders(&c.instance);
    assert_eq!(leaders.get("mgr").map(Vec::len), Some(1), "{leaders:?}");
    assert_eq!(leaders.get("wrk").map(Vec::len), Some(1), "{leaders:?}");
}

/// Defect 6: a `shutdown` finished by a successor first restarted the nodes that died in the
/// gap (their restart policy ran before the successor knew it was shutting down).
#[test]
fn successor_finishing_a_shutdown_restarts_no_node_that_died_in_the_gap() {
    let c = Cluster::new(
        "shutdown_gap",
        r#"
[[node]]
name = "lg"
type = "logger"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "wk"
type = "worker"
stop_timeout_ms = 10000
command = ["@NODE@", "--interval", "10s", "--ignore-term"]
"#,
    );
    let before = c.start();
    let lg = before["lg"].pid.unwrap();
    let shutdown = c.spawn_main(&["shutdown"]);
    // The worker ignores SIGTERM: the logger waits behind it, its stop queued.
    c.wait_status(WAIT, "wk stopping", |s| state(s, "wk") == "stopping");
    let guardian = kill_supervisor_held(&c);
    // The logger dies while no Supervisor runs.
    signal(lg, libc::SIGKILL);
    wait_until(WAIT, "lg gone", || !pid_alive(lg) || is_zombie(lg));
    thaw(guardian);
    // The successor finishes the shutdown (wk's SIGKILL deadline stands, so it takes a while):
    // read the ring meanwhile. lg, dead in the gap, is never spawned again.
    let successor = wait_for(
        WAIT,
        "a successor",
        || c.lock_pid().filter(|p| pid_alive(*p)),
        || c.log(),
    );
    let mut seen = Vec::new();
    wait_until(WAIT, "the successor's takeover in the ring", || {
        seen = events(&c);
        seen.iter().filter(|e| e.1 == "supervisor-started").count() >= 2
    });
    let taken = seen
        .iter()
        .rposition(|e| e.1 == "supervisor-started")
        .unwrap();
    let respawned: Vec<_> = seen[taken..]
        .iter()
        .filter(|e| e.0 == "lg" && e.1 == "spawned")
        .collect();
    assert!(respawned.is_empty(), "lg was started again: {seen:?}");
    let _ = c.wait_main(shutdown, Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "the successor gone", || {
        !pid_alive(successor)
    });
    // The kernel's word: no process of lg's runs.
    assert!(node_leaders(&c.instance)
        .get("lg")
        .is_none_or(|v| v.is_empty()));
}

/// Defect 7: the ordered stop ignored nodes already `stopping`: `stop w` (a worker slow to
/// stop) then `shutdown` sent SIGTERM to the logger while `w` still ran.
#[test]
fn shutdown_waits_for_a_worker_already_stopping_before_it_stops_the_logger() {
    let c = Cluster::new(
        "stop_behind_stopping",
        r#"
[[node]]
name = "lg"
type = "logger"
command = ["@NODE@", "--interval", "10s", "--stop-delay", "3s"]

[[node]]
name = "wk"
type = "worker"
command = ["@NODE@", "--interval", "10s", "--stop-delay", "2s"]
"#,
    );
    let before = c.start();
    let wk = before["wk"].pid.unwrap();
    let stop = c.spawn_main(&["stop", "wk"]);
    c.wait_status(WAIT, "wk stopping", |s| state(s, "wk") == "stopping");
    let shutdown = c.spawn_main(&["shutdown"]);
    // Once wk has exited the logger is stopped; read the ring while the logger takes its 3 s.
    wait_until(WAIT, "wk gone", || !pid_alive(wk));
    let mut seen = Vec::new();
    wait_until(WAIT, "lg's stop in the ring", || {
        seen = events(&c);
        seen.iter().any(|e| e.0 == "lg" && e.1 == "stopping")
    });
    let lg_stopping = seen
        .iter()
        .position(|e| e.0 == "lg" && e.1 == "stopping")
        .unwrap();
    let wk_exited = seen
        .iter()
        .rposition(|e| e.0 == "wk" && e.1 == "exited")
        .unwrap_or_else(|| panic!("no exit of wk in {seen:?}"));
    assert!(
        wk_exited < lg_stopping,
        "the logger got its stop signal before the worker had exited: {seen:?}"
    );
    c.wait_main(stop, WAIT);
    c.wait_main(shutdown, WAIT);
}

/// Defect 16: with the running config unreadable and the node removed from the config file,
/// a live node the log called "left running unsupervised" was missing from `status` while its
/// cgroup held it. A live process of this instance is always shown.
#[test]
fn a_live_node_missing_from_every_config_is_still_shown() {
    let two = r#"
[[node]]
name = "a"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "b"
command = ["@NODE@", "--interval", "10s"]
"#;
    let c = Cluster::new("unlisted_survivor", two);
    let before = c.start();
    let b = before["b"].pid.unwrap();
    let guardian = kill_supervisor_held(&c);
    // The running config the successor would take over with is garbage, and the file no
    // longer lists b.
    std::fs::write(
        c.instance_dir().join("running-config"),
        "not a running config",
    )
    .unwrap();
    c.write_config(
        r#"
[[node]]
name = "a"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    thaw(guardian);
    let s = c.wait_status(WAIT, "b shown with its pid", |s| {
        s.get("b").is_some_and(|n| n.pid == Some(b))
    });
    assert_eq!(state(&s, "b"), "running", "{s:?}");
    assert!(pid_alive(b));
    // It can be stopped like any node, and is not restarted once stopped.
    c.run(&["stop", "b"]).ok();
    wait_until(WAIT, "b stopped", || !pid_alive(b) || is_zombie(b));
    let s = c.status();
    assert!(s.get("b").is_none_or(|n| n.pid.is_none()), "{s:?}");
}

/// Defect 15: one `start` on a fresh instance ran a `restart = "never"` node twice (the new
/// Supervisor's autostart, then the Main's own start), and sometimes waited 20 s and exited 1
/// for a node that had ended as its policy says.
#[test]
fn one_start_on_a_fresh_instance_runs_a_restart_never_node_once() {
    let c = Cluster::new(
        "never_once",
        r#"
[[node]]
name = "once"
restart = "never"
command = ["@NODE@", "--interval", "10s", "--exit-after", "300ms", "--exit-code", "0"]

[[node]]
name = "keeps"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    let out = c.run(&["start"]);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", c.log());
    let s = c.wait_status(WAIT, "once ended", |s| {
        state(s, "once") == "stopped" && s["once"].pid.is_none()
    });
    assert_eq!(s["once"].exit_code, Some(0), "{s:?}");
    let spawned = events(&c)
        .iter()
        .filter(|e| e.0 == "once" && e.1 == "spawned")
        .count();
    assert_eq!(spawned, 1, "once ran {spawned} times for one start");
}
