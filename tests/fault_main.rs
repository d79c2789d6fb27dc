//! Main faults: a Main (`broctld start|stop|restart|status|ping|shutdown`) `kill -9`ed at any
//! point never wedges the mailbox, no command is applied twice, and a command in flight is
//! applied once or not at all, which the next Main can tell from the `command` events (command
//! seq, opcode and origin pid).
//!
//! CI runs `BROCTLD_FAULT_MAIN_COMMANDS` (default 100) killed-or-not commands; the full run
//! (`scripts/reliability.sh`) 500.

mod common;

use broctld::protocol::event::EventKind;
use broctld::protocol::mailbox::{self, Opcode, ReplyStatus, Request, SlotState};
use common::Rng;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// Five quick nodes, quick stops.
const FIVE: &str = r#"
[defaults]
restart_delay_ms = 100
stop_timeout_ms = 3000

[[node]]
name = "logger-1"
type = "logger"
command = ["@NODE@", "--interval", "5s"]

[[node]]
name = "manager"
type = "manager"
command = ["@NODE@", "--interval", "5s"]

[[node]]
name = "proxy-1"
type = "proxy"
command = ["@NODE@", "--interval", "5s"]

[[node]]
name = "worker-1"
type = "worker"
command = ["@NODE@", "--interval", "5s"]

[[node]]
name = "worker-2"
type = "worker"
command = ["@NODE@", "--interval", "5s"]
"#;

fn sigkill(pid: u32) {
    // SAFETY: kill takes a pid and a signal; a pid that already exited (a zombie of ours, not
    // yet waited for) cannot have been recycled.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The slot index a Main `pid` holds in `state`, if any.
fn slot_of(c: &Cluster, pid: u32, state: SlotState) -> Option<usize> {
    let s = broctld::protocol::Shared::open(&c.instance().shm_name()).ok()?;
    s.slots()
        .iter()
        .position(|sl| SlotState::split(sl.state.load(Ordering::Acquire)) == (pid, Some(state)))
}

/// A Main killed right after it raised the doorbell flag (`bell.swap(1)` returned 0) and before
/// it wrote the FIFO byte leaves `bell == 1` with nothing in the FIFO. The next Main must still
/// get its command through.
#[test]
fn a_main_killed_between_raising_the_bell_and_writing_the_fifo_does_not_wedge_the_mailbox() {
    let c = Cluster::new("bell_wedge", FIVE);
    c.start();
    let sup = c.supervisor_pid();
    let client = c.client();
    // What such a Main leaves behind.
    client.shared().header().bell.store(1, Ordering::SeqCst);
    let t = Instant::now();
    let out = c.run(&["ping"]);
    assert_eq!(
        out.code,
        Some(0),
        "ping after a Main died holding the bell flag (took {:?}): {out:?}",
        t.elapsed()
    );
    assert!(pid_alive(sup));
}

/// A Main that times out before the Supervisor took its command withdraws it, and it is never
/// applied, even once the Supervisor runs again.
#[test]
fn a_main_that_times_out_withdraws_its_command_and_it_is_never_applied() {
    let c = Cluster::new("withdraw", FIVE);
    let before = c.start();
    let sup = c.supervisor_pid();
    let client = c.client();
    let idx = client.node_index("worker-1").unwrap();
    let mut log = EventLog::new(&c);
    log.poll();
    signal(sup, libc::SIGSTOP);
    let err = client
        .command(Opcode::Restart, &[idx], 0, Duration::from_millis(300))
        .expect_err("no reply from a stopped Supervisor");
    let text = err.to_string();
    signal(sup, libc::SIGCONT);
    assert!(
        text.contains("withdrawn, not applied"),
        "the Main says it was not applied: {text}"
    );
    let seq: u64 = text
        .split("command seq ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {text}"));
    // The Supervisor wakes (the doorbell byte is still in the FIFO) and finds nothing.
    c.run(&["ping"]).ok();
    log.poll();
    let applied: Vec<_> = log
        .of(EventKind::CommandApplied)
        .into_iter()
        .filter(|e| e.a == seq)
        .collect();
    assert!(
        applied.is_empty(),
        "a withdrawn command was applied: {applied:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let after = c.status();
    assert_eq!(after["worker-1"].pid, before["worker-1"].pid);
    assert_eq!(after["worker-1"].restarts, 0);
}

/// The Supervisor dies with a command `taken` (being applied): the next Supervisor answers it
/// as rejected, saying so, so the waiting Main (or the next one) can tell.
#[test]
fn a_command_taken_by_a_supervisor_that_died_is_answered_by_the_next_one() {
    let c = Cluster::new("taken_dead", FIVE);
    let before = c.start();
    let sup = c.supervisor_pid();
    let client = c.client();
    let me = std::process::id();
    let start = broctld::sys::procstat::own_start_time();
    signal(sup, libc::SIGSTOP);
    // As if the Supervisor had taken our command and died while applying it.
    let slots = client.shared().slots();
    let i = mailbox::claim(slots, me, start).expect("a free slot");
    mailbox::submit(&slots[i], me, 777_777, &Request::new(Opcode::Ping, [], 0)).expect("submit");
    let (pid, seq, _) = mailbox::take(&slots[i]).expect("take it");
    assert_eq!((pid, seq), (me, 777_777));
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    // The next Main starts a new Supervisor, which answers the orphaned command.
    c.run(&["status"]);
    c.supervisor_pid();
    mailbox::wait_done(&slots[i], me, WAIT)
        .unwrap_or_else(|e| panic!("the taken command was never answered: {e:?}\n{}", c.log()));
    let reply = mailbox::take_reply(&slots[i], me).expect("our reply");
    assert_eq!(reply.status, ReplyStatus::Rejected);
    assert!(
        reply.message.contains("died while applying"),
        "{}",
        reply.message
    );
    let after = c.status();
    for (name, n) in &before {
        assert_eq!(after[name].pid, n.pid, "{name} changed pid");
    }
}

/// What one Main of the random run was and how it ended.
#[derive(Debug, Clone)]
struct Run {
    pid: u32,
    words: Vec<String>,
    /// The opcode it sends (None for `status`).
    op: Option<Opcode>,
    /// How it was treated: "natural", "killed", "killed-in-flight".
    how: &'static str,
}

#[test]
fn kill_9_main_at_random_points_never_wedges_or_applies_a_command_twice() {
    let total = env_count("BROCTLD_FAULT_MAIN_COMMANDS", 100);
    let mut rng = Rng::from_env("fault_main");
    let c = Cluster::new("main_kills", FIVE);
    c.start();
    let mut log = EventLog::new(&c);
    log.poll();
    let names = ["logger-1", "manager", "proxy-1", "worker-1", "worker-2"];
    let mut runs: Vec<Run> = Vec::new();
    let started = Instant::now();
    let mut slow = 0u64;
    for k in 0..total {
        let (words, op): (Vec<String>, Option<Opcode>) = match rng.below(20) {
            0..=3 => (vec!["status".into()], None),
            4..=5 => (vec!["ping".into()], Some(Opcode::Ping)),
            6..=8 => (
                vec!["start".into(), rng.pick(&names).to_string()],
                Some(Opcode::Start),
            ),
            9..=11 => (
                vec!["stop".into(), rng.pick(&names).to_string()],
                Some(Opcode::Stop),
            ),
            12..=15 => (
                vec!["restart".into(), rng.pick(&names).to_string()],
                Some(Opcode::Restart),
            ),
            16..=18 => (vec!["start".into()], Some(Opcode::Start)),
            _ => (vec!["shutdown".into()], Some(Opcode::Shutdown)),
        };
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        let round = Instant::now();
        // A Supervisor that serves (not one shutting down or exiting: pausing one that has
        // unlinked its region would only make the next Main wait for it).
        let serving = broctld::protocol::Shared::open(&c.instance().shm_name())
            .is_ok_and(|s| s.state() == Some(broctld::protocol::layout::SupervisorState::Ready));
        let sup = c.lock_pid().filter(|p| pid_alive(*p) && serving);
        // One in four commands is caught in flight: the Supervisor is paused, the Main submits,
        // is killed while waiting, and the Supervisor resumes. It must be applied exactly once.
        let in_flight = op.is_some() && sup.is_some() && rng.chance(1, 4);
        let how;
        let main;
        if in_flight {
            let sup = sup.unwrap();
            signal(sup, libc::SIGSTOP);
            main = c.spawn_main(&args);
            let submitted = eventually(WAIT, Duration::from_millis(2), || {
                slot_of(&c, main, SlotState::Submitted).is_some() || !pid_alive(main)
            });
            sigkill(main);
            signal(sup, libc::SIGCONT);
            assert!(submitted, "`broctld {}` never submitted", words.join(" "));
            how = "killed-in-flight";
        } else {
            main = c.spawn_main(&args);
            if rng.chance(3, 4) {
                // A Main lives some 5-20 ms: most kills land inside that, some later.
                let us = if rng.chance(3, 4) {
                    rng.below(12_000)
                } else {
                    rng.below(300_000)
                };
                std::thread::sleep(Duration::from_micros(us));
                sigkill(main);
                how = "killed";
            } else {
                how = "natural";
            }
        }
        let st = c.wait_main(main, Duration::from_secs(60));
        let killed = st.signal() == Some(libc::SIGKILL);
        runs.push(Run {
            pid: main,
            words: words.clone(),
            op,
            how: if killed { how } else { "natural" },
        });
        log.poll();
        if round.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "slow: `broctld {}` ({how}) took {:?}",
                words.join(" "),
                round.elapsed()
            );
            slow += 1;
        }
        if k % 10 == 9 {
            // Never wedged: a fresh Main gets a command through (starting a Supervisor if the
            // last shutdown went through).
            let out = c.run(&["start"]);
            assert!(
                matches!(out.code, Some(0) | Some(1)),
                "start after {} commands: {out:?}\n{}",
                k + 1,
                c.log()
            );
            c.run(&["ping"]).ok();
            assert!(
                duplicates(&c.instance).is_empty(),
                "duplicates: {:?}",
                duplicates(&c.instance)
            );
            log.poll();
        }
    }
    // The end: the mailbox works and every slot comes back.
    c.run(&["start"]);
    c.run(&["ping", "-n", "3"]).ok();
    let client = c.client();
    let free = eventually(WAIT, Duration::from_millis(20), || {
        let _ = client.command(Opcode::Ping, &[], 0, Duration::from_secs(5));
        client
            .shared()
            .slots()
            .iter()
            .all(|s| s.state.load(Ordering::Acquire) == SlotState::Free as u32)
    });
    assert!(free, "some mailbox slots never came back\n{}", c.log());
    log.poll();
    assert!(duplicates(&c.instance).is_empty());

    // Exactly once, per submission: a command seq is applied at most once (seqs are per region).
    let mut by_seq: BTreeMap<(u32, u64), usize> = BTreeMap::new();
    let mut by_pid: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (region, _, e) in &log.events {
        if e.kind == EventKind::CommandApplied {
            *by_seq.entry((*region, e.a)).or_default() += 1;
            by_pid
                .entry((e.b >> 32) as u32)
                .or_default()
                .push(e.b & 0xffff_ffff);
        }
    }
    let twice: Vec<_> = by_seq.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "commands applied twice: {twice:?}");
    assert_eq!(log.missed, 0, "the event log lost events; poll more often");
    let mut outcome: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let main_pids: BTreeSet<u32> = runs.iter().map(|r| r.pid).collect();
    for r in &runs {
        let applied = by_pid.get(&r.pid).cloned().unwrap_or_default();
        // Each Main sends at most one command; the ring says whether it was applied.
        assert!(
            applied.len() <= 1,
            "`broctld {}` (pid {}, {}) had {} commands applied: {applied:?}",
            r.words.join(" "),
            r.pid,
            r.how,
            applied.len()
        );
        if let Some(&op) = applied.first() {
            assert_eq!(Some(op as u32), r.op.map(|o| o as u32), "{r:?}");
        }
        // (A ping leaves no event, so only other commands can be checked this way.)
        if r.how == "killed-in-flight" && r.op != Some(Opcode::Ping) {
            assert_eq!(
                applied.len(),
                1,
                "a submitted command of a killed Main was not applied: {r:?}"
            );
        }
        // (A Main that succeeded may have had nothing to send: `stop` of a stopped node,
        // `shutdown` with no Supervisor.)
        let e = outcome.entry(r.how).or_default();
        if applied.is_empty() {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    // No command was applied for a pid that is not one of our Mains (or this test process).
    let foreign: Vec<_> = by_pid
        .keys()
        .filter(|p| !main_pids.contains(p) && **p != std::process::id())
        .filter(|p| {
            // Mains the harness ran itself (`start`, `ping`) are ours too.
            tracked(c.id).iter().all(|t| t.pid != **p)
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "commands from unknown pids: {foreign:?}"
    );

    // The CLI tells the same story. (A `start` that started the Supervisor sends no command:
    // the new Supervisor starts its nodes itself; so one command is sent here.)
    c.run(&["stop", "worker-2"]).ok();
    let out = c.run(&["events", "--since", "0", "--json"]);
    out.ok();
    assert!(out.stdout.contains("\"command\""), "{}", out.stdout);

    let t = "fault_main";
    figure(t, "commands", runs.len());
    figure(
        t,
        "killed",
        runs.iter().filter(|r| r.how != "natural").count(),
    );
    for (how, (a, n)) in &outcome {
        figure(t, &format!("{how}_applied"), a);
        figure(t, &format!("{how}_not_applied"), n);
    }
    figure(t, "applied_twice", twice.len());
    figure(t, "commands_applied_total", by_seq.len());
    figure(t, "mains_slower_than_2s", slow);
    figure(t, "seconds", started.elapsed().as_secs());
}
