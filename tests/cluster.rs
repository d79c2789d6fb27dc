//! The core issue on real processes: a control plane (Mains, shells) that comes and goes without
//! any node restarting, crashes handled by exactly one restart, commands applied exactly once
//! even when their Main is killed, give-up and stop timeouts, and a shutdown that leaves nothing.

mod common;

use broctld::protocol::event::{Event, EventKind};
use broctld::protocol::mailbox::{Opcode, SlotState};
use common::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Every event still in the ring, oldest first, as (seq, event).
fn events(client: &broctld::client::Client) -> Vec<(u64, Event)> {
    let mut cursor = client.oldest_event();
    let mut out = Vec::new();
    while let Some((seq, ev, _missed)) = client.next_event(&mut cursor) {
        out.push((seq, ev));
    }
    out
}

fn node_events(evs: &[(u64, Event)], kind: EventKind, node: usize) -> Vec<Event> {
    evs.iter()
        .filter(|(_, e)| e.kind == kind && e.node as usize == node)
        .map(|(_, e)| *e)
        .collect()
}

const TWO_NODES: &str = r#"
[defaults]
restart_delay_ms = 100

[[node]]
name = "alpha"
type = "worker"
command = ["@NODE@", "--interval", "1s", "--name", "alpha"]

[[node]]
name = "beta"
type = "worker"
command = ["@NODE@", "--interval", "1s", "--name", "beta"]
"#;

#[test]
fn example_cluster_status_from_20_mains_keeps_pids_and_uptimes_grow() {
    let c = Cluster::example("example_20_mains");
    let first = c.start();
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        ["logger-1", "manager", "proxy-1", "worker-1", "worker-2"],
        "the example's nodes"
    );
    let sup = c.supervisor_pid();
    for n in first.values() {
        assert_eq!(n.state, "running", "{n:?}");
        assert!(n.pid.is_some(), "{n:?}");
    }
    let mut prev = first.clone();
    for round in 1..=20 {
        // Successive Mains are separate processes a little apart, so uptimes must grow.
        std::thread::sleep(Duration::from_millis(15));
        let out = c.run(&["status", "--json"]);
        out.ok();
        let now = parse_status(&out.stdout);
        assert_eq!(
            pids(&now),
            pids(&first),
            "Main #{round} sees other pids than the first"
        );
        for (name, n) in &now {
            let p = &prev[name];
            assert_eq!(n.state, "running", "Main #{round}: {n:?}");
            assert_eq!(n.restarts, 0, "Main #{round}: {name} was restarted: {n:?}");
            assert!(
                n.uptime_ms > p.uptime_ms,
                "Main #{round}: uptime of {name} did not grow: {:?} then {:?}",
                p.uptime_ms,
                n.uptime_ms
            );
        }
        prev = now;
    }
    assert_eq!(c.lock_pid(), Some(sup), "the Supervisor changed");
    assert!(pid_alive(sup), "the Supervisor {sup} is gone");
    for n in first.values() {
        assert!(pid_alive(n.pid.unwrap()), "{} died: {n:?}", n.name);
    }
}

#[test]
fn shell_exit_leaves_every_node_and_the_supervisor_running() {
    let c = Cluster::new("shell_exit", TWO_NODES);
    // A shell that starts everything, looks, and leaves.
    let out = c.run_with_input(&[], Some("start\nstatus\nexit\n"));
    out.ok();
    assert!(
        out.stdout.contains("alpha") && out.stdout.contains("beta"),
        "the shell's status lists the nodes:\n{}",
        out.stdout
    );
    let sup = c.supervisor_pid();
    let before = c.status();
    for n in before.values() {
        assert_eq!(n.state, "running", "{n:?}");
    }
    // A second shell that attaches to the running Supervisor, looks, and leaves.
    let out = c.run_with_input(&[], Some("status\nexit\n"));
    out.ok();
    for n in before.values() {
        let pid = n.pid.unwrap().to_string();
        assert!(
            out.stdout.contains(&pid),
            "the second shell's status shows {} pid {pid}:\n{}",
            n.name,
            out.stdout
        );
    }
    let after = c.status();
    assert_eq!(pids(&after), pids(&before), "a node changed pid");
    for n in after.values() {
        assert_eq!(n.state, "running", "{n:?}");
        assert_eq!(n.restarts, 0, "{n:?}");
        assert!(pid_alive(n.pid.unwrap()), "{n:?}");
    }
    assert!(
        pid_alive(sup),
        "the Supervisor {sup} did not survive the shells"
    );
    assert_eq!(c.lock_pid(), Some(sup));
    c.run(&["ping"]).ok();
}

#[test]
fn kill_9_node_is_restarted_once_with_new_pid_and_signal_9() {
    let c = Cluster::new("kill9_node", TWO_NODES);
    let before = c.start();
    let old = before["alpha"].pid.unwrap();
    signal(old, libc::SIGKILL);
    let after = c.wait_status(WAIT, "alpha running under a new pid", |s| {
        let a = &s["alpha"];
        a.state == "running" && a.pid.is_some() && a.pid != Some(old)
    });
    let a = &after["alpha"];
    assert_eq!(a.restarts, 1, "restarts went up by exactly one: {a:?}");
    assert_eq!(a.exit_signal, Some(9), "last_exit.signal: {a:?}");
    assert_eq!(a.exit_code, None, "{a:?}");
    assert_eq!(after["beta"], {
        let mut b = before["beta"].clone();
        b.uptime_ms = after["beta"].uptime_ms;
        b
    });
    // It stays that way: one restart, one new process.
    let client = c.client();
    let idx = client.node_index("alpha").unwrap();
    let evs = events(&client);
    let exits = node_events(&evs, EventKind::Exited, idx);
    assert_eq!(exits.len(), 1, "one exit of alpha: {exits:?}");
    assert_eq!(exits[0].pid, old);
    let spawns = node_events(&evs, EventKind::Spawned, idx);
    assert_eq!(spawns.len(), 2, "alpha spawned twice in all: {spawns:?}");
    assert_eq!(Some(spawns[1].pid), a.pid);
    std::thread::sleep(Duration::from_millis(300));
    let later = c.status();
    assert_eq!(later["alpha"].pid, a.pid, "alpha changed pid again");
    assert_eq!(later["alpha"].restarts, 1);
    assert!(
        is_zombie(old) || !pid_exists(old),
        "old pid {old} still runs"
    );
}

#[test]
fn kill_9_main_waiting_for_reply_command_applied_exactly_once() {
    let c = Cluster::new("kill9_main", TWO_NODES);
    let before = c.start();
    let old = before["alpha"].pid.unwrap();
    let sup = c.supervisor_pid();
    let client = c.client();
    let idx = client.node_index("alpha").unwrap();
    let cursor0 = client.event_head();

    signal(sup, libc::SIGSTOP);
    let main = c.spawn_main(&["restart", "alpha"]);
    // The Main is blocked once its command sits in a slot, submitted, with no one to take it.
    let slot = wait_for(
        WAIT,
        "the restart Main to submit its command",
        || {
            client.shared().slots().iter().position(|s| {
                SlotState::split(s.state.load(Ordering::Acquire))
                    == (main, Some(SlotState::Submitted))
            })
        },
        || "no slot is Submitted by the Main".into(),
    );
    assert_eq!(
        client.shared().slots()[slot].opcode.load(Ordering::Relaxed),
        Opcode::Restart as u32
    );
    signal(main, libc::SIGKILL);
    let st = c.wait_main(main, WAIT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "the Main died of SIGKILL");
    signal(sup, libc::SIGCONT);

    // The command was applied: alpha runs again under one new pid.
    let after = c.wait_status(WAIT, "alpha restarted", |s| {
        let a = &s["alpha"];
        a.state == "running" && a.pid.is_some() && a.pid != Some(old)
    });
    let new = after["alpha"].pid;
    // An operator's restart is not a death: not counted (the spawns are, below).
    assert_eq!(after["alpha"].restarts, 0, "{:?}", after["alpha"]);
    assert_eq!(after["beta"].pid, before["beta"].pid, "beta untouched");
    assert_eq!(after["beta"].restarts, 0);

    // The next Mains work, and the dead Main's slot comes back.
    c.run(&["status"]).ok();
    wait_until(WAIT, "the dead Main's slot to be reclaimed", || {
        c.run(&["ping"]).ok();
        let v = client.shared().slots()[slot].state.load(Ordering::Acquire);
        SlotState::split(v).0 != main
    });
    c.run(&["ping", "-n", "3"]).ok();
    assert!(pid_alive(sup));

    // Exactly once: one CommandApplied for that Main's restart, one new spawn of alpha.
    let evs: Vec<(u64, Event)> = events(&client)
        .into_iter()
        .filter(|(s, _)| *s >= cursor0)
        .collect();
    let applied: Vec<&Event> = evs
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.kind == EventKind::CommandApplied && (e.b >> 32) as u32 == main)
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "commands applied for the dead Main: {applied:?}"
    );
    assert_eq!(applied[0].b & 0xffff_ffff, Opcode::Restart as u64);
    let spawns = node_events(&evs, EventKind::Spawned, idx);
    assert_eq!(spawns.len(), 1, "alpha spawned once since: {spawns:?}");
    assert!(
        evs.iter()
            .any(|(_, e)| e.kind == EventKind::SlotReclaimed && e.pid == main),
        "a SlotReclaimed event for pid {main}: {evs:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let last = c.status();
    assert_eq!(last["alpha"].pid, new, "alpha is stable");
    assert_eq!(last["alpha"].restarts, 0, "alpha is stable");
}

#[test]
fn fail_start_node_ends_failed_after_give_up_after_with_growing_backoff() {
    let c = Cluster::new(
        "fail_start",
        r#"
[defaults]
restart_delay_ms = 100
restart_delay_factor = 2.0
restart_delay_max_ms = 10000
quick_death_ms = 5000
give_up_after = 4
give_up_window_ms = 60000

[[node]]
name = "good"
command = ["@NODE@", "--interval", "1s"]

[[node]]
name = "bad"
command = ["@NODE@", "--fail-start"]
# Started by the `start` command alone, not also by the Supervisor's autostart (see
# start_during_backoff_does_not_bypass_the_restart_delay).
autostart = false
"#,
    );
    // With ready_after_ms = 0 a node counts as running the moment it is spawned, so `start`
    // may report 'bad' as started: what it ends up as is what the status says.
    let out = c.run(&["start"]);
    assert!(matches!(out.code, Some(0) | Some(1)), "{out:?}");
    c.supervisor_pid();
    let s = c.wait_status(WAIT, "bad to be failed", |s| s["bad"].state == "failed");
    assert_eq!(s["good"].state, "running");
    let bad = &s["bad"];
    assert_eq!(bad.state, "failed", "{bad:?}");
    assert_eq!(bad.pid, None);
    assert_eq!(bad.restarts, 3, "4 attempts = 3 restarts: {bad:?}");
    assert_eq!(bad.exit_code, Some(1), "{bad:?}");

    let client = c.client();
    let idx = client.node_index("bad").unwrap();
    let evs = events(&client);
    let spawns = node_events(&evs, EventKind::Spawned, idx);
    assert_eq!(spawns.len(), 4, "4 attempts: {spawns:?}");
    let gaps: Vec<u64> = spawns
        .windows(2)
        .map(|w| (w[1].mono_ns - w[0].mono_ns) / 1_000_000)
        .collect();
    // Spawned events are stamped after the fork, the delay runs from before it: allow 10%.
    for (k, g) in gaps.iter().enumerate() {
        let min = 100u64 << k;
        assert!(
            *g * 10 >= min * 9,
            "gap {k} between starts is {g} ms, the backoff says {min} ms: {gaps:?}"
        );
    }
    assert!(
        gaps.windows(2).all(|w| w[1] > w[0]),
        "gaps between starts grow: {gaps:?}"
    );
    let fails = node_events(&evs, EventKind::Failed, idx);
    assert_eq!(fails.len(), 1, "{fails:?}");
    assert_eq!(fails[0].a, 4, "given up after 4 quick deaths");
    assert_eq!(node_events(&evs, EventKind::Exited, idx).len(), 4);
    // Given up means given up.
    std::thread::sleep(Duration::from_millis(500));
    let later = c.status();
    assert_eq!(later["bad"].state, "failed");
    assert_eq!(later["bad"].restarts, 3);
}

#[test]
fn ignore_term_node_is_killed_after_stop_timeout_while_crashed_node_restarts() {
    let c = Cluster::new(
        "ignore_term",
        r#"
[defaults]
restart_delay_ms = 100

[[node]]
name = "hung"
command = ["@NODE@", "--interval", "1s", "--ignore-term"]
stop_timeout_ms = 1500

[[node]]
name = "other"
command = ["@NODE@", "--interval", "1s"]
"#,
    );
    let before = c.start();
    let hung = before["hung"].pid.unwrap();
    let other = before["other"].pid.unwrap();
    let stop = c.spawn_main(&["stop", "hung"]);
    c.wait_status(WAIT, "hung to be stopping", |s| {
        s["hung"].state == "stopping"
    });
    signal(other, libc::SIGKILL);
    let snap = c.wait_status(WAIT, "other running under a new pid", |s| {
        let o = &s["other"];
        o.state == "running" && o.pid.is_some() && o.pid != Some(other)
    });
    assert_eq!(
        snap["hung"].state, "stopping",
        "the crashed node was restarted only after the hung one was dealt with: {snap:#?}"
    );
    assert_eq!(snap["hung"].pid, Some(hung));
    assert_eq!(snap["other"].restarts, 1);
    assert_eq!(snap["other"].exit_signal, Some(9));

    let st = c.wait_main(stop, WAIT);
    assert_eq!(st.code(), Some(0), "`stop hung` succeeded");
    let s = c.status();
    let h = &s["hung"];
    assert_eq!(h.state, "stopped", "{h:?}");
    assert_eq!(h.pid, None);
    assert_eq!(h.exit_signal, Some(9), "hung was SIGKILLed: {h:?}");
    assert_eq!(h.restarts, 0);
    wait_until(WAIT, "the hung node's process to vanish", || {
        !pid_exists(hung)
    });

    let client = c.client();
    let hi = client.node_index("hung").unwrap();
    let oi = client.node_index("other").unwrap();
    let evs = events(&client);
    let stopping = node_events(&evs, EventKind::Stopping, hi);
    let killed = node_events(&evs, EventKind::Killed, hi);
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert_eq!(killed.len(), 1, "{killed:?}");
    let waited = (killed[0].mono_ns - stopping[0].mono_ns) / 1_000_000;
    assert!(
        waited >= 1500,
        "SIGKILL came {waited} ms after the stop signal, before stop_timeout_ms = 1500"
    );
    let respawn = node_events(&evs, EventKind::Spawned, oi)
        .into_iter()
        .find(|e| e.pid != other)
        .expect("other's new spawn");
    assert!(
        respawn.mono_ns < killed[0].mono_ns,
        "other was respawned before hung was killed"
    );
}

#[test]
fn shutdown_leaves_no_node_supervisor_zombie_region_or_runtime_file() {
    let c = Cluster::new(
        "shutdown_clean",
        r#"
[[node]]
name = "plain"
command = ["@NODE@", "--interval", "1s"]

[[node]]
name = "parent"
command = ["@NODE@", "--interval", "1s", "--spawn-child"]
stop_timeout_ms = 2000
"#,
    );
    let s = c.start();
    let sup = c.supervisor_pid();
    let nodes: Vec<u32> = s.values().map(|n| n.pid.unwrap()).collect();
    // The grandchild shows up with the node's environment.
    let family = wait_for(
        WAIT,
        "the grandchild of 'parent' to appear",
        || {
            let p: Vec<u32> = c
                .track_from_proc()
                .into_iter()
                .filter(|p| *p != sup && pid_alive(*p))
                .collect();
            (p.len() > nodes.len()).then_some(p)
        },
        || describe_pids(&c.track_from_proc()),
    );
    let shm = c.shm_path();
    assert!(shm.exists(), "{} exists while running", shm.display());

    let out = c.run(&["shutdown"]);
    out.ok();
    // The Supervisor reaps its nodes before it exits, and removes its files before it exits.
    for &p in &nodes {
        assert!(
            !pid_exists(p),
            "node pid {p} still exists after shutdown returned: {}",
            describe_pids(&[p])
        );
    }
    assert!(!shm.exists(), "{} is left", shm.display());
    let uid = unsafe { libc::geteuid() };
    let prefix = format!("broctld.{uid}.{}.", c.instance);
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "regions left in /dev/shm: {left:?}");
    let files: Vec<String> = std::fs::read_dir(c.instance_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Logs stay for post-mortems (and rotated copies of them); nothing else may.
        .filter(|n| !n.starts_with("supervisor.log") && !n.starts_with("main.log"))
        .collect();
    assert!(files.is_empty(), "runtime files left: {files:?}");
    let dirs: Vec<String> = std::fs::read_dir(&c.runtime)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| *n != c.instance)
        .collect();
    assert!(dirs.is_empty(), "other files in the runtime dir: {dirs:?}");

    // The Supervisor and the grandchild are gone too (pid 1 may take a moment to reap them).
    let mut all = family.clone();
    all.push(sup);
    wait_until(WAIT, "every process of the cluster to vanish", || {
        all.iter().all(|p| !pid_exists(*p))
    });
    let stray: Vec<u32> = c
        .track_from_proc()
        .into_iter()
        .filter(|p| pid_exists(*p))
        .collect();
    assert!(
        stray.is_empty(),
        "processes left: {}",
        describe_pids(&stray)
    );
    assert!(
        supervisors_of(&c.runtime).is_empty(),
        "a Supervisor still runs"
    );
    let st = c.run(&["status"]);
    st.expect_code(3);
    assert!(
        st.stdout.contains("no Supervisor is running"),
        "{}",
        st.stdout
    );
}

/// `broctld start` on a fresh instance spawns the Supervisor, which autostarts every node, and
/// then sends Start for every node. A node that already died and waits in `backoff` must not be
/// spawned again at once by that Start (bypassing its restart delay, and not counted as a
/// restart).
#[test]
fn start_during_backoff_does_not_bypass_the_restart_delay() {
    let c = Cluster::new(
        "start_backoff",
        r#"
[defaults]
restart_delay_ms = 300
quick_death_ms = 5000
give_up_after = 3
give_up_window_ms = 60000

[[node]]
name = "bad"
command = ["@NODE@", "--fail-start"]
"#,
    );
    let out = c.run(&["start"]);
    assert!(matches!(out.code, Some(0) | Some(1)), "{out:?}");
    c.supervisor_pid();
    let s = c.wait_status(WAIT, "bad to be failed", |s| s["bad"].state == "failed");
    let client = c.client();
    let evs = events(&client);
    let spawns = node_events(&evs, EventKind::Spawned, 0);
    let gaps: Vec<u64> = spawns
        .windows(2)
        .map(|w| (w[1].mono_ns - w[0].mono_ns) / 1_000_000)
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= 270),
        "every start after a quick death waits restart_delay_ms = 300 at least: gaps {gaps:?} ms"
    );
    assert_eq!(
        s["bad"].restarts as usize,
        spawns.len() - 1,
        "every spawn after the first is a restart: {:?}, {} spawns",
        s["bad"],
        spawns.len()
    );
}
