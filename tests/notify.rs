//! `ready = "notify"` (issue "real daemons"): systemd's notification protocol, tested with the
//! real `systemd-notify` (Debian package systemd): READY=1, STATUS=, MAINPID=, WATCHDOG=1 with
//! `watchdog_ms`, and readiness that resumes across a Supervisor `kill -9`.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn notify_node(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[[node]]\nname = \"{name}\"\nready = \"notify\"\n{extra}command = [\"sh\", \"-c\", {}]\n",
        serde_json::to_string(script).unwrap()
    )
}

/// A cluster of one notify node `svc` running `script` in `spool/svc`, with `start` running in
/// the background until `svc` is spawned and `starting`: the cluster, that Main, the node's pid.
fn starting(test: &str, script: &str) -> (Cluster, u32, u32) {
    let c = Cluster::new(test, &notify_node("svc", script, ""));
    let main = c.spawn_main(&["start"]);
    let s = c.wait_status(WAIT, "svc starting", |s| {
        s["svc"].state == "starting" && s["svc"].pid.is_some()
    });
    let pid = s["svc"].pid.unwrap();
    track(c.id, pid, true);
    (c, main, pid)
}

#[test]
fn systemd_notify_ready_makes_the_node_running_and_status_shows_its_text() {
    // In the background: `start` waits for READY=1.
    let (c, main, pid) = starting(
        "notify_ready",
        "systemd-notify --status='warming up'; while [ ! -e go ]; do sleep 0.05; done; systemd-notify --ready --status='serving 3 clients'; exec sleep 600",
    );
    wait_until(WAIT, "the first STATUS= shown", || {
        c.run(&["status"]).stdout.contains("svc: warming up")
    });
    // Not ready until it says so.
    assert_eq!(c.status()["svc"].state, "starting");
    std::fs::write(c.root.join("spool/svc/go"), "").unwrap();
    assert!(c.wait_main(main, WAIT).success());
    let s = c.status();
    assert_eq!(s["svc"].state, "running");
    assert_eq!(s["svc"].pid, Some(pid));
    assert!(
        c.run(&["status"]).stdout.contains("svc: serving 3 clients"),
        "{}",
        c.run(&["status"]).stdout
    );
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "svc gone", || !pid_alive(pid));
}

#[test]
fn mainpid_moves_the_nodes_main_process() {
    let c = Cluster::new(
        "notify_mainpid",
        &notify_node(
            "svc",
            "sleep 600 & echo $! > child.pid; systemd-notify --ready MAINPID=$!; wait",
            "",
        ),
    );
    let out = c.run(&["start"]);
    assert_eq!(
        out.code,
        Some(0),
        "{out:?}\n{}\n{:?}",
        c.log(),
        std::fs::read_to_string(c.root.join("spool/svc/stderr.log"))
    );
    let s = c.status();
    let main = s["svc"].pid.unwrap();
    track(c.id, main, false);
    // The main pid is the child the script named, not the script. (Its /proc comm may still
    // read `sh` for a moment: the forked child names `sleep` only once it has exec'd.)
    let named: u32 = std::fs::read_to_string(c.root.join("spool/svc/child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        main,
        named,
        "the main pid is the one MAINPID named\n{}",
        c.log()
    );
    wait_until(WAIT, "the named child runs sleep", || {
        std::fs::read_to_string(format!("/proc/{main}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    // Its death is the node's.
    signal(main, libc::SIGKILL);
    let s = c.wait_status(WAIT, "svc restarted", |s| {
        s["svc"].state == "running" && s["svc"].pid.is_some_and(|p| p != main)
    });
    track(c.id, s["svc"].pid.unwrap(), false);
    assert_eq!(s["svc"].restarts, 1);
    c.run(&["shutdown"]).ok();
}

#[test]
fn a_node_that_stops_pinging_its_watchdog_is_killed_and_restarted() {
    let c = Cluster::new(
        "notify_watchdog",
        &format!(
            "[defaults]\nrestart_delay_ms = 50\n{}",
            notify_node(
                "svc",
                // Pings a few times, then hangs without pinging.
                "systemd-notify --ready; for i in 1 2 3; do sleep 0.05; systemd-notify WATCHDOG=1; done; exec sleep 600",
                "watchdog_ms = 400\n",
            )
        ),
    );
    let s = c.start();
    let first = s["svc"].pid.unwrap();
    track(c.id, first, true);
    let s = c.wait_status(WAIT, "svc restarted by its watchdog", |s| {
        s["svc"].restarts >= 1 && s["svc"].pid.is_some_and(|p| p != first)
    });
    track(c.id, s["svc"].pid.unwrap(), true);
    assert!(!pid_alive(first));
    assert_eq!(s["svc"].exit_signal, Some(libc::SIGKILL as i64));
    assert!(
        c.log().contains("no WATCHDOG=1 within 400 ms"),
        "{}",
        c.log()
    );
    c.run(&["shutdown"]).ok();
}

#[test]
fn notify_readiness_resumes_across_a_supervisor_kill_9() {
    let (c, main, pid) = starting(
        "notify_resume",
        "while [ ! -e go ]; do sleep 0.05; done; systemd-notify --ready; exec sleep 600",
    );
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "a successor", || {
        c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
    });
    c.supervisor_pid();
    // The successor adopted it, still starting; READY=1 now reaches it.
    assert_eq!(c.status()["svc"].state, "starting");
    std::fs::write(c.root.join("spool/svc/go"), "").unwrap();
    let s = c.wait_status(WAIT, "svc running", |s| s["svc"].state == "running");
    assert_eq!(s["svc"].pid, Some(pid));
    let _ = c.wait_main(main, WAIT);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "svc gone", || !pid_alive(pid));
}

/// `status --json` of node `name` in `c`, as JSON.
fn status_json_of(c: &Cluster, name: &str) -> serde_json::Value {
    let out = c.run(&["status", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json");
    all.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {}", out.stdout))
}

#[test]
fn reloading_and_stopping_are_states_that_survive_a_supervisor_kill_9() {
    // Says READY=1 with a status text, then RELOADING=1 and READY=1 again on cue, then
    // STOPPING=1, then exits 0 on cue.
    let script = "systemd-notify --ready --status='serving'; \
        while [ ! -e reload ]; do sleep 0.02; done; systemd-notify RELOADING=1; \
        while [ ! -e reloaded ]; do sleep 0.02; done; systemd-notify --ready; \
        while [ ! -e stop ]; do sleep 0.02; done; systemd-notify STOPPING=1; \
        while [ ! -e exit ]; do sleep 0.02; done; exit 0";
    let c = Cluster::new(
        "notify_phases",
        &notify_node("svc", script, "restart = \"never\"\n"),
    );
    let s = c.start();
    let pid = s["svc"].pid.unwrap();
    track(c.id, pid, true);
    let j = status_json_of(&c, "svc");
    assert_eq!(j["state"], "running", "{j}");
    wait_until(WAIT, "STATUS= text in status --json", || {
        status_json_of(&c, "svc")["status_text"] == "serving"
    });
    let kill_and_wait_successor = || {
        let sup = c.supervisor_pid();
        signal(sup, libc::SIGKILL);
        wait_until(WAIT, "a successor", || {
            c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
        });
        c.supervisor_pid();
    };
    let spool = c.root.join("spool/svc");
    std::fs::write(spool.join("reload"), "").unwrap();
    c.wait_status(WAIT, "svc reloading", |s| s["svc"].state == "reloading");
    // A successor shows what the node said, and it is still the same process.
    kill_and_wait_successor();
    let s = c.status();
    assert_eq!(s["svc"].state, "reloading");
    assert_eq!(s["svc"].pid, Some(pid));
    // `reloading` is a running node: `status` exits 0 for it.
    assert_eq!(c.run(&["status", "svc"]).code, Some(0));
    std::fs::write(spool.join("reloaded"), "").unwrap();
    c.wait_status(WAIT, "svc running again", |s| s["svc"].state == "running");
    std::fs::write(spool.join("stop"), "").unwrap();
    c.wait_status(WAIT, "svc stopping on its own", |s| {
        s["svc"].state == "stopping"
    });
    kill_and_wait_successor();
    let s = c.status();
    assert_eq!(s["svc"].state, "stopping");
    assert_eq!(s["svc"].pid, Some(pid));
    assert!(pid_alive(pid), "nothing signalled the node");
    std::fs::write(spool.join("exit"), "").unwrap();
    let s = c.wait_status(WAIT, "svc ended", |s| s["svc"].pid.is_none());
    assert_eq!(s["svc"].state, "stopped");
    assert_eq!(s["svc"].exit_code, Some(0));
    assert!(!pid_alive(pid));
    c.run(&["shutdown"]).ok();
}
