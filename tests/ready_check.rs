//! `ready_check` (a command run until it exits 0) and `ready_timeout_action` (issue "real
//! daemons"), on real processes: redis answered by `redis-cli ping`, a gate file, and nodes
//! that never become ready.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A node `gated` that is ready once the file `open` exists in its cwd (checked every 50 ms),
/// with `start` running in the background: returns the cluster, that Main and the node's
/// pid once it is `starting`.
fn gated(test: &str) -> (Cluster, u32, u32) {
    let c = Cluster::new(
        test,
        r#"
[[node]]
name = "gated"
ready_check = ["test", "-e", "open"]
ready_check_interval_ms = 50
ready_timeout_ms = 60000
command = ["sleep", "600"]
"#,
    );
    let main = c.spawn_main(&["start"]);
    let s = c.wait_status(WAIT, "gated starting", |s| {
        s["gated"].state == "starting" && s["gated"].pid.is_some()
    });
    let pid = s["gated"].pid.unwrap();
    track(c.id, pid, true);
    (c, main, pid)
}

#[test]
fn ready_check_keeps_a_node_starting_until_the_command_exits_0() {
    let (c, main, pid) = gated("check_gate");
    // Several checks fail meanwhile; it stays starting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.status()["gated"].state, "starting");
    std::fs::write(c.root.join("spool/gated/open"), "").unwrap();
    assert!(c.wait_main(main, WAIT).success());
    assert_eq!(c.status()["gated"].state, "running");
    assert!(c.log().contains("ready_check passed"), "{}", c.log());
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "gated gone", || !pid_alive(pid));
}

#[test]
fn redis_is_running_once_redis_cli_ping_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let c = Cluster::new(
        "check_redis",
        &format!(
            r#"
[[node]]
name = "redis"
ready_check = ["redis-cli", "-p", "{port}", "ping"]
ready_check_interval_ms = 50
command = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
"#
        ),
    );
    let s = c.start();
    let pid = s["redis"].pid.unwrap();
    track(c.id, pid, true);
    assert_eq!(s["redis"].state, "running");
    let pong = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&pong.stdout).trim(), "PONG");
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "redis gone", || !pid_alive(pid));
}

/// A node `name` whose ready check never passes, with this `ready_timeout_action`.
fn never_ready(test: &str, name: &str, timeout_ms: u32, action: &str) -> Cluster {
    Cluster::new(
        test,
        &format!(
            "[[node]]\nname = \"{name}\"\nready_check = [\"false\"]\nready_check_interval_ms = 50\nready_timeout_ms = {timeout_ms}\nready_timeout_action = \"{action}\"\ncommand = [\"sleep\", \"600\"]\n"
        ),
    )
}

#[test]
fn ready_timeout_action_fail_stops_the_node_and_leaves_it_failed() {
    let c = never_ready("check_fail", "never", 400, "fail");
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("never"), "{out:?}");
    let s = c.wait_status(WAIT, "never failed", |s| s["never"].state == "failed");
    assert_eq!(s["never"].pid, None);
    assert!(c.log().contains("not ready after 400 ms"), "{}", c.log());
    c.run(&["shutdown"]).ok();
}

#[test]
fn ready_timeout_action_restart_starts_it_again() {
    let c = never_ready("check_restart", "slow", 300, "restart");
    // In the background: this `start` never sees the node ready (it ends at the shutdown).
    c.spawn_main(&["start"]);
    let s = c.wait_status(WAIT, "slow spawned", |s| s["slow"].pid.is_some());
    let first = s["slow"].pid.unwrap();
    track(c.id, first, true);
    let s = c.wait_status(WAIT, "slow restarted", |s| {
        s["slow"].pid.is_some_and(|p| p != first)
    });
    // Not a death: not counted in `restarts`.
    assert_eq!(s["slow"].restarts, 0);
    track(c.id, s["slow"].pid.unwrap(), true);
    assert!(!pid_alive(first));
    c.run(&["shutdown"]).ok();
}

/// The check's timer is the machine's: a Supervisor killed while a node is `starting` behind
/// its check leaves a successor that adopts the node still `starting`, runs checks of its own
/// (the log says each one that fails is tried again), and marks it running once the gate
/// opens, the same process all along.
#[test]
fn a_node_adopted_starting_is_checked_by_the_successor_until_ready() {
    let (c, main, pid) = gated("check_takeover");
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    let _ = c.wait_main(main, WAIT);
    wait_until(WAIT, "a successor Supervisor", || {
        c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
    });
    let s = c.wait_status(WAIT, "gated adopted, still starting", |s| {
        s["gated"].state == "starting" && s["gated"].pid == Some(pid)
    });
    assert_eq!(s["gated"].pid, Some(pid));
    std::fs::write(c.root.join("spool/gated/open"), "").unwrap();
    c.wait_status(WAIT, "gated running", |s| {
        s["gated"].state == "running" && s["gated"].pid == Some(pid)
    });
    assert!(c.log().contains("ready_check passed"), "{}", c.log());
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "gated gone", || !pid_alive(pid));
}
