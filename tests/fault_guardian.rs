//! Control-plane continuity: the guardian above the Supervisor replaces a `kill -9`ed
//! Supervisor at once with no Main running, collects the exit status of nodes that die while
//! no Supervisor lives, survives being killed itself, and a replacement or an upgrade never
//! depends on the config file on disk or on the starting Main's environment.

mod common;

use broctld::protocol::event::EventKind;
use broctld::protocol::layout::SupervisorState;
use broctld::protocol::node::Exit;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// `a` exits with status 7 on SIGTERM; `b` is a plain sleeper.
const TWO: &str = r#"
[[node]]
name = "a"
command = ["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"]

[[node]]
name = "b"
command = ["sleep", "600"]
"#;

/// Every node still the same process, alive (kernel's view, not broctld's).
fn assert_same_live_nodes(before: &BTreeMap<String, NodeView>, what: &str) {
    for (name, n) in before {
        let pid = n.pid.expect("a node pid");
        assert!(pid_alive(pid), "{what}: node {name} (pid {pid}) died");
    }
}

fn median(v: &mut [u128]) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The gap in supervision: from a Supervisor's `kill -9` until a new one has published its
/// generation in the region, and until it is `ready` (it adopted every node and serves
/// commands). No Main runs during the kills. Figures printed, never asserted (noisy VM).
#[test]
fn supervisor_kill_is_replaced_at_once_without_any_main() {
    let kills = env_count("BROCTLD_GAP_KILLS", 20);
    let c = Cluster::new("gap", TWO);
    let before = c.start();
    let shared = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("region");
    let guardian = the_guardian(&c.runtime);
    let (mut to_gen, mut to_ready) = (Vec::new(), Vec::new());
    for k in 0..kills {
        let h = shared.header();
        let gen = h.generation.load(Ordering::Acquire);
        let sup = h.owner_pid.load(Ordering::Acquire);
        track(c.id, sup, false);
        signal(sup, libc::SIGKILL);
        let t0 = Instant::now();
        let mut published = None;
        loop {
            let now_gen = h.generation.load(Ordering::Acquire);
            if now_gen > gen && published.is_none() {
                published = Some(t0.elapsed());
            }
            if now_gen > gen
                && h.owner_pid.load(Ordering::Acquire) != sup
                && shared.state() == Some(SupervisorState::Ready)
            {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "kill {k}: no new Supervisor within {WAIT:?}\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        to_ready.push(t0.elapsed().as_micros());
        to_gen.push(published.expect("published").as_micros());
        track(c.id, h.owner_pid.load(Ordering::Acquire), false);
        assert_same_live_nodes(&before, &format!("kill {k}"));
    }
    // Still the one guardian, and every node kept its process.
    assert_eq!(guardians_of(&c.runtime), vec![guardian]);
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    assert!(duplicates(&c.instance).is_empty());
    let t = "fault_guardian_gap";
    figure(t, "kills", kills);
    figure(t, "gap_to_generation_median_us", median(&mut to_gen));
    figure(t, "gap_to_generation_max_us", to_gen.iter().max().unwrap());
    figure(t, "gap_to_ready_median_us", median(&mut to_ready));
    figure(t, "gap_to_ready_max_us", to_ready.iter().max().unwrap());
}

/// A node that dies while no Supervisor lives (the guardian is held, so the gap lasts until
/// the test lets it go) falls to the guardian, which reaps it; the next Supervisor records
/// its real exit status as its last exit, with an `exited` event, and restarts it by policy.
#[test]
fn node_dying_while_supervisor_is_dead_is_restarted_with_its_exit_status() {
    let c = Cluster::new("gap_death", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let a = before["a"].pid.unwrap();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    // The orphan is the guardian's now (child subreaper); it ends with status 7 and stays a
    // zombie of the (stopped) guardian.
    wait_until(WAIT, "a to be the guardian's child", || {
        parent_pid(a) == Some(guardian)
    });
    signal(a, libc::SIGTERM);
    wait_until(WAIT, "a to end", || proc_state(a) == Some('Z'));
    thaw(guardian);
    c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "a restarted", |s| {
        s["a"].state == "running" && s["a"].pid.is_some_and(|p| p != a)
    });
    assert_eq!(
        after["a"].exit_code,
        Some(7),
        "{:?}\n{}",
        after["a"],
        c.log()
    );
    assert_eq!(after["a"].restarts, before["a"].restarts + 1);
    assert_eq!(after["b"].pid, before["b"].pid, "b kept its process");
    // supervisor.log says how it ended in words, not as a Rust debug structure.
    let log = c.log();
    assert!(
        log.contains(&format!(
            "pid {a} ended while no Supervisor ran (exit 7, reported by the guardian)"
        )),
        "{log}"
    );
    assert!(!log.contains("Code(") && !log.contains("Signal {"), "{log}");
    // The guardian reaped it: no zombie left.
    wait_until(WAIT, "a reaped", || !pid_exists(a));
    let mut ev = EventLog::new(&c);
    ev.poll();
    assert!(
        ev.events.iter().any(|(_, _, e)| e.kind == EventKind::Exited
            && e.pid == a
            && e.exit == Some(Exit::Code(7))),
        "no `exited` event with status 7 for pid {a}: {:?}",
        ev.events
    );
}

/// With no pause at all: a node killed right after the Supervisor's `kill -9`, before or
/// after the replacement took over, keeps its real exit status. Every order of its death, the
/// guardian's report and reap, and the replacement's read of the pipe can happen here, and
/// each gives the real status (it used to be `unknown` now and then: a node reaped after the
/// replacement's first read of the pipe); tests/exit_status_truth.rs holds each order open on
/// purpose.
#[test]
fn node_dying_right_after_a_supervisor_kill_keeps_its_exit_status() {
    let c = Cluster::new("gap_race", TWO);
    c.start();
    for round in 0..5u64 {
        let s = c.status();
        let a = s["a"].pid.unwrap();
        let sup = c.supervisor_pid();
        signal(sup, libc::SIGKILL);
        signal(a, libc::SIGTERM);
        c.next_supervisor(sup);
        let after = c.wait_status(WAIT, "a restarted", |s| {
            s["a"].state == "running" && s["a"].pid.is_some_and(|p| p != a)
        });
        assert_eq!(
            after["a"].exit_code,
            Some(7),
            "round {round}: {:?}\n{}",
            after["a"],
            c.log()
        );
        assert_eq!(after["a"].restarts, round + 1);
    }
}

/// After a replacement the adopted nodes are the guardian's children, not the Supervisor's:
/// when one dies, its status still comes through (from the guardian), not "unknown".
#[test]
fn adopted_node_exit_status_comes_from_the_guardian() {
    let c = Cluster::new("adopted_exit", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    c.next_supervisor(sup);
    let guardian = the_guardian(&c.runtime);
    let a = before["a"].pid.unwrap();
    let b = before["b"].pid.unwrap();
    assert_eq!(
        parent_pid(a),
        Some(guardian),
        "adopted a is the guardian's child"
    );
    signal(a, libc::SIGTERM);
    signal(b, libc::SIGKILL);
    let after = c.wait_status(WAIT, "both restarted", |s| {
        all_running(s) && s["a"].pid != Some(a) && s["b"].pid != Some(b)
    });
    assert_eq!(after["a"].exit_code, Some(7), "{:?}", after["a"]);
    assert_eq!(after["b"].exit_signal, Some(9), "{:?}", after["b"]);
}

/// `kill -9` of the guardian touches nothing: the Supervisor and every node run on, the
/// Supervisor starts a new guardian (watch mode), and the chain is whole again: the next
/// Supervisor `kill -9` is repaired with no Main, every node keeping its process.
#[test]
fn guardian_kill_leaves_nodes_running() {
    let c = Cluster::new("guardian_kill", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let guardian = the_guardian(&c.runtime);
    signal(guardian, libc::SIGKILL);
    let next = wait_for(
        WAIT,
        "a new guardian",
        || {
            let g = guardians_of(&c.runtime);
            (g.len() == 1 && g[0] != guardian).then(|| g[0])
        },
        || c.log(),
    );
    track(c.id, next, false);
    assert!(pid_alive(sup), "the Supervisor died with its guardian");
    assert_same_live_nodes(&before, "after the guardian's kill");
    let s = c.status();
    assert_eq!(pids(&s), pids(&before));
    assert!(all_running(&s), "{s:#?}");
    // The chain is whole again.
    signal(sup, libc::SIGKILL);
    let new = c.next_supervisor(sup);
    assert_eq!(parent_pid(new), Some(next), "the new guardian started it");
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    assert!(duplicates(&c.instance).is_empty());
}

/// `upgrade-supervisor` with the config file edited into an error: the new image runs the
/// running config it was handed, the control plane stays, nothing restarts.
#[test]
fn upgrade_survives_config_edited_into_error() {
    let c = Cluster::new("upgrade_bad_config", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let gen = c.client().generation();
    c.write_config("this is [ not a config\n");
    c.run(&["upgrade-supervisor"]).ok();
    wait_until(WAIT, "the next generation", || {
        broctld::client::Client::attach(&c.instance()).is_ok_and(|cl| cl.generation() > gen)
    });
    assert!(
        pid_alive(sup),
        "the Supervisor died in the upgrade\n{}",
        c.log()
    );
    assert_eq!(c.lock_pid(), Some(sup), "same pid across the upgrade");
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before));
    assert!(c.log().contains("does not load"), "{}", c.log());
    // It still works: a node it is told to restart comes back.
    c.run(&["restart", "b"]).ok();
    let s = c.wait_status(WAIT, "b restarted", |s| {
        s["b"].state == "running" && s["b"].pid != before["b"].pid
    });
    assert!(all_running(&s));
}

/// A Supervisor killed after the config file was edited into an error is replaced anyway: the
/// replacement runs the running config (and logs that the file does not load); a `reload` of
/// the broken file changes nothing and the Supervisor stays.
#[test]
fn replacement_supervisor_uses_running_config_when_file_is_broken() {
    let c = Cluster::new("replace_bad_config", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    c.write_config("[[node]]\nname = 3\n");
    signal(sup, libc::SIGKILL);
    let new = c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    assert!(
        c.log().contains("the config file does not load"),
        "{}",
        c.log()
    );
    let r = c
        .client()
        .command(
            broctld::protocol::mailbox::Opcode::Reload,
            &[],
            0,
            Duration::from_secs(10),
        )
        .expect_err("a reload of a broken file is refused");
    assert!(r.to_string().contains("nothing changed"), "{r}");
    assert!(pid_alive(new));
    // A fixed file is taken with `reload`.
    c.write_config(
        &(TWO.to_owned() + "\n[[node]]\nname = \"c\"\ncommand = [\"sleep\", \"601\"]\n"),
    );
    c.run(&["reload"]).ok();
    let s = c.wait_status(WAIT, "c running", |s| {
        s.get("c").is_some_and(|n| n.state == "running")
    });
    assert_eq!(s["a"].pid, before["a"].pid);
    // With no guardian left, a Main replaces a dead Supervisor the same way: the file is
    // broken again, and the replacement runs the running config (now with `c`).
    kill_guardians(&c.runtime);
    c.write_config("[[node]]\nname = 3\n");
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    c.run(&["status"]);
    c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&s), "{}", c.log());
}

/// A Supervisor (and its guardian) started by a Main whose environment has no `PATH` still
/// resolves bare program names (a fixed default `PATH`), also when it takes over from a
/// killed predecessor.
#[test]
fn replacement_without_path_in_env() {
    let c = Cluster::new("no_path", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    // Leave no guardian, so that the next Main starts the whole chain itself.
    kill_guardians(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    let mut cmd = c.command(&["start"]);
    cmd.env_clear();
    let out = cmd.output().expect("run broctld start");
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log()
    );
    let new = c.next_supervisor(sup);
    let env = std::fs::read(format!("/proc/{new}/environ")).unwrap();
    assert!(
        env.split(|b| *b == 0)
            .any(|v| v == format!("PATH={}", broctld::guardian::DEFAULT_PATH).as_bytes()),
        "the Supervisor has no default PATH"
    );
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    // A bare `sleep` is found for a fresh start too.
    let mut cmd = c.command(&["restart", "b"]);
    cmd.env_clear();
    assert!(cmd.output().unwrap().status.success());
    let s = c.wait_status(WAIT, "b restarted", |s| {
        s["b"].state == "running" && s["b"].pid != before["b"].pid
    });
    assert!(all_running(&s), "{s:#?}\n{}", c.log());
}

/// The config file replaced by a FIFO (no writer: an open would block) or by a symlink to
/// `/dev/zero` (an endless read): a `reload` is refused at once and the Supervisor neither
/// blocks nor grows.
#[test]
fn fifo_config_does_not_block_supervisor() {
    let c = Cluster::new("fifo_config", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let reload = || {
        c.client().command(
            broctld::protocol::mailbox::Opcode::Reload,
            &[],
            0,
            Duration::from_secs(10),
        )
    };
    std::fs::remove_file(&c.config).unwrap();
    nix::unistd::mkfifo(&c.config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // (A reply holds 96 bytes: the reason itself is in the Main's message, checked below.)
    let e = reload().expect_err("a FIFO config is refused");
    assert!(e.to_string().contains("cannot read config file"), "{e}");
    std::fs::remove_file(&c.config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &c.config).unwrap();
    let e = reload().expect_err("a device config is refused");
    assert!(e.to_string().contains("cannot read config file"), "{e}");
    // A regular file past 16 MiB (sparse: no disk used) is refused too.
    std::fs::remove_file(&c.config).unwrap();
    std::fs::File::create(&c.config)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    reload().expect_err("a huge config is refused");
    let out = c.run(&["reload"]);
    assert!(out.stderr.contains("larger than 16 MiB"), "{out:?}");
    // Still serving, and small (kernel's view of its memory).
    let s = c.status();
    assert_eq!(pids(&s), pids(&before));
    let status = std::fs::read_to_string(format!("/proc/{sup}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(rss_kb < 64 * 1024, "the Supervisor grew to {rss_kb} kB");
    // A Main reading it is refused the same way, at once.
    std::fs::remove_file(&c.config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &c.config).unwrap();
    let out = c.run(&["reload"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("device"), "{out:?}");
}

/// `supervisor.log` is rotated like Main's log: past 1 MiB it becomes `supervisor.log.1` and
/// the Supervisor (and the guardian) go on writing into a new file.
#[test]
fn supervisor_log_is_rotated() {
    let c = Cluster::new("sup_log_rotation", TWO);
    let before = c.start();
    let log = c.instance_dir().join("supervisor.log");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let pad = "x".repeat(1023) + "\n";
        for _ in 0..1025 {
            f.write_all(pad.as_bytes()).unwrap();
        }
    }
    // Something the Supervisor logs: a node's death.
    signal(before["b"].pid.unwrap(), libc::SIGKILL);
    c.wait_status(WAIT, "b restarted", |s| {
        s["b"].state == "running" && s["b"].pid != before["b"].pid
    });
    let old = c.instance_dir().join("supervisor.log.1");
    wait_until(WAIT, "supervisor.log.1", || old.exists());
    assert!(std::fs::metadata(&old).unwrap().len() >= 1024 * 1024);
    wait_until(WAIT, "the new log to get the line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("node b"))
    });
    assert!(std::fs::metadata(&log).unwrap().len() < 64 * 1024);
    // The guardian follows the rotation too: its next line lands in the new file.
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    c.next_supervisor(sup);
    wait_until(WAIT, "the guardian's line in the new log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("guardian: Supervisor pid"))
    });
}

/// A new Supervisor that cannot start (here: its doorbell was replaced by a plain file) is
/// retried with a growing, logged delay; meanwhile every node runs on; once the cause is gone
/// the next attempt takes over with every node keeping its process.
#[test]
fn guardian_backs_off_while_a_supervisor_cannot_start_then_recovers() {
    let c = Cluster::new("guardian_backoff", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    let bell = c.instance_dir().join("doorbell");
    std::fs::remove_file(&bell).unwrap();
    std::fs::write(&bell, "x").unwrap();
    thaw(guardian);
    wait_until(WAIT, "two logged retries", || {
        let log = c.log();
        log.contains("trying again in 0.1 s") && log.contains("trying again in 0.2 s")
    });
    assert!(c.log().contains("expected a FIFO"), "{}", c.log());
    assert!(pid_alive(guardian), "the guardian gave up");
    assert_same_live_nodes(&before, "while no Supervisor can start");
    std::fs::remove_file(&bell).unwrap();
    c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    assert_eq!(guardians_of(&c.runtime), vec![guardian]);
}

/// A node being stopped when the Supervisor died, which ends while no Supervisor lives, ends
/// `stopped` (its exit recorded), not restarted.
#[test]
fn a_node_stopping_when_the_supervisor_died_ends_stopped_not_restarted() {
    let c = Cluster::new(
        "gap_stop",
        r#"
[[node]]
name = "a"
command = ["sh", "-c", "trap 'sleep 0.3; exit 7' TERM; while true; do sleep 0.05; done"]
stop_timeout_ms = 20000
"#,
    );
    let before = c.start();
    let a = before["a"].pid.unwrap();
    let client = c.client();
    let i = client.node_index("a").expect("a");
    client
        .command(
            broctld::protocol::mailbox::Opcode::Stop,
            &[i],
            0,
            Duration::from_secs(10),
        )
        .expect("stop a");
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "a to end", || proc_state(a) == Some('Z'));
    assert_eq!(parent_pid(a), Some(guardian));
    thaw(guardian);
    c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "a stopped", |s| s["a"].state == "stopped");
    assert_eq!(after["a"].exit_code, Some(7), "{:?}", after["a"]);
    assert_eq!(after["a"].pid, None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.status()["a"].state, "stopped", "a was restarted");
}

/// Found by the long fault campaign (seed 13): a Supervisor `kill -9`ed while it carried out
/// an acknowledged `shutdown` was replaced by its guardian, and the replacement, knowing
/// nothing of the shutdown, started nodes again. The replacement now finishes the shutdown it
/// finds recorded (stops every node, then exits), and the Main's `shutdown` returns once the
/// guardian is gone: nothing of the instance is left, and no node started anew.
#[test]
fn supervisor_killed_during_shutdown_is_replaced_and_the_shutdown_finished() {
    let c = Cluster::new(
        "shutdown_kill",
        r#"
[[node]]
name = "slow"
stop_timeout_ms = 2000
command = ["@NODE@", "--ignore-term", "--interval", "10s"]

[[node]]
name = "plain"
type = "worker"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    let before = c.start();
    let old: Vec<u32> = before.values().filter_map(|n| n.pid).collect();
    let sup = c.supervisor_pid();
    let main = c.spawn_main(&["shutdown"]);
    // `slow` ignores TERM: the shutdown lasts its 2 s stop timeout.
    wait_until(WAIT, "the shutdown under way", || {
        c.client().shared().header().state.load(Ordering::Acquire)
            == SupervisorState::ShuttingDown as u32
    });
    signal(sup, libc::SIGKILL);
    let st = c.wait_main(main, WAIT);
    assert!(st.success(), "shutdown: {st:?}\n{}", c.log());
    let left = node_procs(&c.instance);
    assert!(
        left.values().all(|v| v.is_empty()),
        "node processes left: {left:?}\n{}",
        c.log()
    );
    assert!(supervisors_of(&c.runtime).is_empty(), "{}", c.log());
    assert!(guardians_of(&c.runtime).is_empty(), "{}", c.log());
    for p in old {
        assert!(!pid_alive(p), "node pid {p} still runs");
    }
    let finishing = c
        .log()
        .lines()
        .filter(|l| l.contains("finishing that shutdown"))
        .count();
    assert_eq!(finishing, 1, "{}", c.log());
}
