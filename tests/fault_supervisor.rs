//! Supervisor faults: `kill -9` of the Supervisor at random moments (during a restart storm,
//! during a `stop`, during its own start), loss of the region with it, and in-place upgrades.
//! No node is ever restarted or duplicated by a control-plane failure: every node keeps its pid
//! (unless it died on its own or was told to stop), no node ever runs twice, nothing is left a
//! zombie, and the event ring tells the story (one `supervisor-started` per generation,
//! `adopted` for every survivor).
//!
//! CI runs small counts; `scripts/reliability.sh` sets the full ones
//! (`BROCTLD_FAULT_KILLS=20`, `BROCTLD_FAULT_UPGRADES=10`, `BROCTLD_FAULT_UPGRADE_NODES=200`).

mod common;

use broctld::protocol::event::EventKind;
use broctld::protocol::node::{Exit, Intent, NodeRecord, NodeState};
use common::Rng;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The example cluster plus `extra` workers (`extra-NN`) that never give up, so a storm of
/// kills cannot push one into `failed`.
fn example_plus(extra: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broctld.toml");
    let mut text = std::fs::read_to_string(&path)
        .expect("read examples/broctld.toml")
        .replace("\"broctld-node\"", "\"@NODE@\"");
    for i in 0..extra {
        text.push_str(&format!(
            r#"
[[node]]
name = "extra-{i:02}"
type = "worker"
command = ["@NODE@", "--interval", "30s"]
give_up_after = 0
stop_timeout_ms = 3000
"#
        ));
    }
    text
}

fn sigkill(pid: u32) {
    // SAFETY: kill takes a pid and a signal.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The current Supervisor, once one is alive and has published itself.
fn live_supervisor(c: &Cluster) -> u32 {
    wait_for(
        WAIT,
        "a live Supervisor",
        || c.lock_pid().filter(|p| pid_alive(*p)),
        || c.log(),
    )
}

/// Waits until every process in `pids` is gone or a zombie that nobody but pid 1 holds (pid 1
/// reaps orphans lazily here); returns the ones still zombies of anyone else.
fn lingering_zombies(pids: &BTreeSet<u32>, limit: Duration) -> Vec<(u32, Option<u32>)> {
    let stuck = || -> Vec<(u32, Option<u32>)> {
        pids.iter()
            .filter(|p| is_zombie(**p) && parent_pid(**p) != Some(1))
            .map(|p| (*p, parent_pid(*p)))
            .collect()
    };
    eventually(limit, Duration::from_millis(20), || stuck().is_empty());
    stuck()
}

/// Waits until every node runs; on a timeout, says what each other node is doing: its
/// record, its processes, its lock file and what the log says about it.
fn settle(c: &Cluster) -> BTreeMap<String, NodeView> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = c.status();
        if all_running(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            let procs = node_procs(&c.instance);
            let log = c.log();
            let mut msg = String::new();
            for (name, n) in s
                .iter()
                .filter(|(_, n)| n.state != "running" || !n.pid.is_some_and(pid_alive))
            {
                let lock =
                    std::fs::read_to_string(c.instance_dir().join(format!("nodes/{name}.lock")))
                        .unwrap_or_default();
                msg.push_str(&format!(
                    "\n{name}: {n:?}\n  processes: {:?}\n  lock file: {lock:?}\n  log:\n",
                    procs.get(name)
                ));
                for l in log.lines().filter(|l| l.contains(&format!("node {name}:"))) {
                    msg.push_str(&format!("    {l}\n"));
                }
            }
            panic!("not every node runs after the kills:{msg}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn supervisor_killed_at_random_moments_never_restarts_or_duplicates_a_node() {
    let kills = env_count("BROCTLD_FAULT_KILLS", 8);
    let extra = env_count("BROCTLD_FAULT_EXTRA_NODES", 50) as usize;
    let mut rng = Rng::from_env("fault_supervisor_kills");
    let c = Cluster::new("sup_kills", &example_plus(extra));
    let t0 = Instant::now();
    c.run(&["start"]).ok();
    let first = c.wait_status(WAIT, "every node running", all_running);
    let total_nodes = first.len();
    let extras: Vec<String> = first
        .keys()
        .filter(|k| k.starts_with("extra-"))
        .cloned()
        .collect();
    let mut log = EventLog::new(&c);
    log.poll();
    let gen0 = c.client().generation();
    // Nodes we killed or stopped ourselves: those may (must) change pid; no other may.
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let mut seen_node_pids: BTreeSet<u32> = first.values().filter_map(|n| n.pid).collect();
    let mut sups: Vec<u32> = vec![c.supervisor_pid()];
    let (mut storms, mut stops, mut storm_kills, mut max_dups) = (0u64, 0u64, 0u64, 0usize);
    let mut takeover_kills = 0u64;
    // A `daemon` Main watches too: it notices the death and races the `status` Main below to
    // start the next Supervisor (one wins the lock; the other attaches).
    let daemon = c.spawn_main(&["daemon"]);
    for k in 0..kills {
        let sup = live_supervisor(&c);
        track(c.id, sup, false);
        let mut stop_main = None;
        match rng.below(5) {
            0 => {
                // A restart storm: kill -9 several nodes, then the Supervisor while it restarts
                // them.
                storms += 1;
                let n = 3 + rng.below(6) as usize;
                let status = c.status();
                for _ in 0..n {
                    let name = rng.pick(&extras).clone();
                    if let Some(pid) = status[&name].pid {
                        sigkill(pid);
                        storm_kills += 1;
                        touched.insert(name);
                    }
                }
            }
            1 => {
                // A `stop` of a few nodes in flight.
                stops += 1;
                let mut args = vec!["stop".to_string()];
                for _ in 0..1 + rng.below(3) {
                    let name = rng.pick(&extras).clone();
                    touched.insert(name.clone());
                    args.push(name);
                }
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                stop_main = Some((c.spawn_main(&a), args[1..].to_vec()));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        sigkill(sup);
        wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
        if rng.chance(1, 4) {
            // Kill the next Supervisor too, while it takes the region over and adopts.
            let main = c.spawn_main(&["status"]);
            if let Some(next) = wait_for(
                WAIT,
                "a Supervisor to start taking over",
                || {
                    let p = c.lock_pid().filter(|p| *p != sup && pid_alive(*p));
                    p.map(Some).or_else(|| (!pid_alive(main)).then_some(None))
                },
                || c.log(),
            ) {
                std::thread::sleep(Duration::from_micros(rng.below(20_000)));
                sigkill(next);
                wait_until(WAIT, "that Supervisor to die", || !pid_alive(next));
                takeover_kills += 1;
            }
            c.wait_main(main, Duration::from_secs(60));
        }
        // The next Main starts a new Supervisor that adopts the nodes.
        let out = c.run(&["status", "--json"]);
        assert!(
            matches!(out.code, Some(0) | Some(3)),
            "kill {k}: status after the kill: {out:?}\n{}",
            c.log()
        );
        let new = live_supervisor(&c);
        assert_ne!(new, sup, "kill {k}: the same Supervisor");
        sups.push(new);
        track(c.id, new, false);
        if let Some((main, nodes)) = stop_main {
            let st = c.wait_main(main, Duration::from_secs(60));
            let _ = st; // it may fail (its Supervisor died under it); what counts is the state
                        // Whatever the stop Main said, the nodes are stopped or coming back; start them
                        // again so the next round has a full cluster.
            let mut a = vec!["start"];
            a.extend(nodes.iter().map(String::as_str));
            let out = c.run(&a);
            assert!(
                matches!(out.code, Some(0) | Some(1)),
                "kill {k}: {out:?}\n{}",
                c.log()
            );
            settle(&c);
        }
        let d = duplicates(&c.instance);
        max_dups = max_dups.max(d.len());
        assert!(d.is_empty(), "kill {k}: nodes running twice: {d:?}");
        for n in c.status().values() {
            if let Some(p) = n.pid {
                seen_node_pids.insert(p);
            }
        }
        log.poll();
    }
    // Settle: every node runs, exactly once.
    let last = settle(&c);
    let d = duplicates(&c.instance);
    assert!(d.is_empty(), "nodes running twice: {d:?}");
    let leaders = node_leaders(&c.instance);
    for name in last.keys() {
        assert_eq!(
            leaders.get(name).map(Vec::len),
            Some(1),
            "{name}: leaders {:?}",
            leaders.get(name)
        );
    }
    // Untouched nodes kept their pid and were never restarted.
    let mut kept = 0;
    for (name, n) in &last {
        if touched.contains(name) {
            continue;
        }
        kept += 1;
        assert_eq!(
            n.pid,
            first[name].pid,
            "{name} changed pid without being killed or stopped\n{}",
            c.log()
        );
        assert_eq!(n.restarts, 0, "{name} was restarted: {n:?}");
    }
    // No zombies: of the current Supervisor, or of any node process we ever saw (pid 1 reaps
    // orphans lazily here: a zombie of pid 1 is not ours to reap).
    let sup = live_supervisor(&c);
    let z = lingering_zombies(&seen_node_pids, Duration::from_secs(5));
    assert!(z.is_empty(), "zombies (pid, parent): {z:?}");
    assert!(
        eventually(Duration::from_secs(5), Duration::from_millis(20), || {
            zombie_children(sup).is_empty()
        }),
        "zombies of the Supervisor: {:?}",
        zombie_children(sup)
    );

    // The event ring tells the story: one supervisor-started per kill, generations in a row,
    // each by the Supervisor that then ran, and an `adopted` for every survivor.
    log.poll();
    assert_eq!(log.missed, 0, "events were lost before we read them");
    let started: Vec<_> = log
        .of(EventKind::SupervisorStarted)
        .into_iter()
        .filter(|e| e.a > gen0)
        .collect();
    let gens: Vec<u64> = started.iter().map(|e| e.a).collect();
    assert!(
        gens.windows(2).all(|w| w[1] > w[0]),
        "generations only go up: {gens:?}"
    );
    // A Supervisor killed while taking over may die before it announces itself; every one
    // that went on to serve did announce itself.
    assert!(
        gens.len() as u64 >= kills,
        "generations {gens:?} for {kills} kills"
    );
    let by: BTreeSet<u32> = started.iter().map(|e| e.pid).collect();
    for p in &sups[1..] {
        assert!(
            by.contains(p),
            "Supervisor {p} served without a supervisor-started event"
        );
    }
    let adopted = log.of(EventKind::Adopted);
    assert!(
        adopted.len() as u64 >= kills * (total_nodes - touched.len()) as u64,
        "adopted events: {} for {kills} kills of {total_nodes} nodes ({} touched)",
        adopted.len(),
        touched.len()
    );
    let restarts_observed = log.of(EventKind::Spawned).len();
    let unknown_exits = log
        .of(EventKind::Exited)
        .iter()
        .filter(|e| e.exit == Some(Exit::Unknown))
        .count();
    // The daemon is still there and the cluster still takes commands.
    assert!(pid_alive(daemon), "the daemon Main gave up");
    c.run(&["ping"]).ok();

    let t = "fault_supervisor_kills";
    figure(t, "nodes", total_nodes);
    figure(t, "supervisor_kills", kills);
    figure(t, "restart_storms", storms);
    figure(t, "nodes_killed_in_storms", storm_kills);
    figure(t, "stops_in_flight", stops);
    figure(t, "kills_during_takeover", takeover_kills);
    figure(t, "nodes_never_touched_kept_pid", kept);
    figure(t, "node_spawns_observed", restarts_observed);
    figure(t, "adopted_events", adopted.len());
    figure(t, "exits_status_unknown", unknown_exits);
    figure(t, "duplicates", max_dups);
    figure(t, "zombies", z.len());
    figure(t, "ms", t0.elapsed().as_millis());
}

/// Holds the guardian (SIGSTOP) and kills the Supervisor `sup`: no successor starts until the
/// guardian is thawed, so a test can arrange what the next one finds. Returns the guardian.
fn kill_supervisor_held(c: &Cluster, sup: u32) -> u32 {
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    guardian
}

/// Node `name`'s record in the region, as a successor would read it.
fn region_record(c: &Cluster, name: &str) -> NodeRecord {
    let s = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("open region");
    (0..s.node_count())
        .filter_map(|i| s.read_record(i).ok().and_then(|w| NodeRecord::decode(&w)))
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no record of {name} in the region"))
}

/// Rewrites node `name`'s record in the region (no Supervisor may be alive).
fn edit_region_record(c: &Cluster, name: &str, edit: impl FnOnce(&mut NodeRecord)) {
    let s = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("open region");
    let i = (0..s.node_count())
        .find(|&i| {
            s.read_record(i)
                .ok()
                .and_then(|w| NodeRecord::decode(&w))
                .is_some_and(|r| r.name == name)
        })
        .unwrap_or_else(|| panic!("no record of {name} in the region"));
    let mut r = NodeRecord::decode(&s.read_record(i).unwrap()).unwrap();
    edit(&mut r);
    s.write_record(i, &r.encode());
}

/// Regression (seen as nodes left `stopped` with no process after a storm of Supervisor kills
/// in the test above): a Supervisor taking over a node that died while no Supervisor ran kept
/// it, until its restart policy ran, in the state every node has before its fate is decided:
/// `stopped`. It published that state (with the whole table, and again right before spawning
/// the replacement); killed in that window, it left its successor a record saying `stopped`,
/// which the successor honours as the operator's word: the node was never started again.
/// The same held for the starts a takeover queues (here c, whose `restart` was in flight: its
/// record says `stopping`, restart pending, and its process is gone): they were published
/// `stopped` with the table and queued only after the dead nodes were restarted.
/// The window is sampled here: the new Supervisor is stopped (SIGSTOP) the moment it holds
/// the lock, and then let run in slices of a fraction of a millisecond, stopped after each, until
/// its takeover is done; at every stop neither record may say `stopped`. (A FIFO in place of
/// b's stdout used to hold the window open; output files are opened without blocking now.)
#[test]
fn node_dead_at_takeover_is_never_recorded_stopped_while_its_restart_is_pending() {
    let c = Cluster::new("dead_at_takeover", THREE_NODES);
    c.start();
    // Past its restart delay, so the next Supervisor restarts it at once (during its takeover).
    let before = c.wait_status(WAIT, "b up longer than its restart delay", |s| {
        s["b"].uptime_ms.is_some_and(|u| u >= 500)
    });
    let b = before["b"].pid.unwrap();
    // No guardian: nobody reports b's exit, so the next Supervisor finds b just gone.
    kill_guardians(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    signal(b, libc::SIGKILL);
    wait_until(WAIT, "b to die", || !pid_alive(b));
    // c: a `restart` in flight when the Supervisor died, its process gone since.
    let old_c = before["c"].pid.unwrap();
    signal(old_c, libc::SIGKILL);
    wait_until(WAIT, "c to die", || !pid_alive(old_c));
    edit_region_record(&c, "c", |r| {
        r.state = NodeState::Stopping;
        r.intent.set(Intent::RESTART_PENDING, true);
    });
    let main = c.spawn_main(&["status"]);
    let next = wait_for(
        WAIT,
        "a new Supervisor",
        || c.lock_pid().filter(|p| *p != sup && pid_alive(*p)),
        || c.log(),
    );
    track(c.id, next, false);
    let stop = |pid: u32| {
        signal(pid, libc::SIGSTOP);
        wait_until(WAIT, "the new Supervisor stopped", || {
            proc_state(pid) == Some('T') || !pid_alive(pid)
        });
    };
    stop(next);
    let mut samples = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        // Stopped somewhere in its start or takeover: neither record may say `stopped`.
        for name in ["b", "c"] {
            let rec = region_record(&c, name);
            assert_ne!(
                rec.state,
                NodeState::Stopped,
                "{name} is recorded stopped while its start is pending (sample {samples}): {rec:?}\n{}",
                c.log()
            );
        }
        samples += 1;
        let b_back = region_record(&c, "b").pid.is_some_and(|p| p != b);
        let c_back = region_record(&c, "c").pid.is_some_and(|p| p != old_c);
        if (b_back && c_back) || Instant::now() > deadline {
            break;
        }
        signal(next, libc::SIGCONT);
        std::thread::sleep(Duration::from_micros(300));
        stop(next);
    }
    figure("dead_at_takeover", "samples", samples);
    // That Supervisor dies there; a Main starts the next one, which must find b and c
    // running (adopted) or restart them, each exactly once.
    signal(next, libc::SIGCONT);
    signal(next, libc::SIGKILL);
    wait_until(WAIT, "that Supervisor to die", || !pid_alive(next));
    c.wait_main(main, Duration::from_secs(60));
    c.run(&["status"]);
    let last = live_supervisor(&c);
    assert_ne!(last, next, "a new Supervisor");
    let after = c.wait_status(WAIT, "b and c running again", |s| {
        [("b", b), ("c", old_c)].iter().all(|(n, old)| {
            s[*n].state == "running" && s[*n].pid.is_some_and(|p| p != *old && pid_alive(p))
        })
    });
    let leaders = node_leaders(&c.instance);
    for n in ["b", "c"] {
        assert_eq!(
            leaders.get(n),
            Some(&vec![after[n].pid.unwrap()]),
            "{n} runs once"
        );
    }
    assert_eq!(after["a"].pid, before["a"].pid, "a kept its process");
}

/// Regression: a `restart` in flight (record `stopping`, restart pending) whose node ended
/// while no Supervisor ran, the guardian reporting how: the successor handled the reported exit
/// as the end of a plain stop (the pending restart was not carried over on that path) and left
/// the node `stopped`.
#[test]
fn reported_exit_of_a_node_with_a_restart_pending_starts_it_again() {
    let c = Cluster::new("reported_restart", THREE_NODES);
    let before = c.start();
    let sup = c.supervisor_pid();
    // Hold the guardian: the dead Supervisor is not replaced, and c's exit waits to be reported.
    let guardian = kill_supervisor_held(&c, sup);
    edit_region_record(&c, "c", |r| {
        r.state = NodeState::Stopping;
        r.intent.set(Intent::RESTART_PENDING, true);
    });
    let old_c = before["c"].pid.unwrap();
    signal(old_c, libc::SIGKILL);
    wait_until(WAIT, "c to end", || !pid_alive(old_c));
    thaw(guardian);
    live_supervisor(&c);
    let after = c.wait_status(WAIT, "c running again", |s| {
        s["c"].state == "running" && s["c"].pid.is_some_and(|p| p != old_c && pid_alive(p))
    });
    assert!(
        c.log()
            .contains(&format!("pid {old_c} ended while no Supervisor ran")),
        "c's exit was not taken from the guardian's report:\n{}",
        c.log()
    );
    assert_eq!(
        node_leaders(&c.instance).get("c"),
        Some(&vec![after["c"].pid.unwrap()]),
        "c runs once"
    );
    for n in ["a", "b"] {
        assert_eq!(after[n].pid, before[n].pid, "{n} kept its process");
    }
}

/// `stop` is the operator's word: a Supervisor killed afterwards must not bring the node back
/// (its successor knows only the region, where the node is recorded `stopped`).
#[test]
fn a_stopped_node_stays_stopped_when_the_supervisor_is_replaced() {
    let c = Cluster::new("stopped_stays", THREE_NODES);
    let before = c.start();
    c.run(&["stop", "b"]).ok();
    let s = c.status();
    assert_eq!(s["b"].state, "stopped");
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    c.run(&["status"]);
    live_supervisor(&c);
    std::thread::sleep(Duration::from_millis(300));
    let after = c.status();
    assert_eq!(after["a"].pid, before["a"].pid);
    assert_eq!(after["c"].pid, before["c"].pid);
    assert_eq!(
        after["b"].state, "stopped",
        "the stopped node was started by the new Supervisor: {:?}",
        after["b"]
    );
}

/// The region lost its record of a node (a Supervisor that died between the fork and the
/// publish leaves the same): the next Supervisor finds the node through its lock (pid and start
/// time in RUNTIME/INSTANCE/nodes/NAME.lock) and adopts it rather than start a second copy.
#[test]
fn a_node_missing_from_the_region_is_adopted_through_its_lock_not_started_twice() {
    let c = Cluster::new("lock_adopt", THREE_NODES);
    let before = c.start();
    let sup = c.supervisor_pid();
    let b = before["b"].pid.unwrap();
    let lock = std::fs::read_to_string(c.instance_dir().join("nodes/b.lock")).expect("b.lock");
    assert_eq!(
        lock.split_whitespace().collect::<Vec<_>>().join(" "),
        format!("{b} {}", start_time(b).unwrap()),
        "the lock file says PID STARTTIME"
    );
    // The guardian replaces a dead Supervisor at once: hold it while the region is edited.
    let guardian = kill_supervisor_held(&c, sup);
    // Forget b's pid in the region.
    edit_region_record(&c, "b", |r| {
        r.pid = None;
        r.pid_start = 0;
    });
    thaw(guardian);
    c.run(&["status"]);
    live_supervisor(&c);
    // (Until the successor has decided, the record it took over, `running` with no pid, is
    // what it publishes.)
    let after = c.wait_status(WAIT, "b running with a pid", |s| {
        s["b"].state == "running" && s["b"].pid.is_some()
    });
    assert_eq!(
        after["b"].pid,
        Some(b),
        "b was not adopted through its lock"
    );
    assert_eq!(node_leaders(&c.instance)["b"], vec![b], "b runs once");
    assert_eq!(pids(&after), pids(&before));
    assert!(
        c.log().contains("already holds its lock; adopting it"),
        "{}",
        c.log()
    );
}

/// The Supervisor dies right after it spawned a node and before it wrote the child's pid into
/// the node's lock file (the file still names the Supervisor itself, and the region has not
/// recorded the child yet). The next Supervisor must still find the running copy, not leave it
/// unsupervised while it waits forever for the lock (`backoff`, no pid).
#[test]
fn a_node_spawned_just_before_the_supervisor_died_is_found_through_its_lock() {
    let c = Cluster::new("lock_window", THREE_NODES);
    let before = c.start();
    let sup = c.supervisor_pid();
    let b = before["b"].pid.unwrap();
    let guardian = kill_supervisor_held(&c, sup);
    // The state that window leaves: the lock names the (dead) Supervisor, and the region the
    // node's previous (dead) process.
    let lock = c.instance_dir().join("nodes/b.lock");
    std::fs::write(&lock, format!("{sup} {}\n\n", 12345)).unwrap();
    {
        let s = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("open region");
        let i = (0..s.node_count())
            .find(|&i| {
                s.read_record(i)
                    .ok()
                    .and_then(|w| NodeRecord::decode(&w))
                    .is_some_and(|r| r.name == "b")
            })
            .expect("b's record");
        let mut r = NodeRecord::decode(&s.read_record(i).unwrap()).unwrap();
        r.pid = Some(sup);
        s.write_record(i, &r.encode());
    }
    thaw(guardian);
    c.run(&["status"]);
    live_supervisor(&c);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = c.status();
    while Instant::now() < deadline && last["b"].pid != Some(b) {
        std::thread::sleep(Duration::from_millis(50));
        last = c.status();
    }
    assert_eq!(
        last["b"].pid,
        Some(b),
        "b runs (pid {b}) but its Supervisor does not know it: {:?}",
        last["b"]
    );
}

/// The Supervisor dies and its region is removed too: the next one makes a new region, and
/// every node is still found through its lock: same pids, no second copies.
#[test]
fn nodes_keep_their_pids_when_the_region_is_lost_with_the_supervisor() {
    let c = Cluster::new("region_lost", THREE_NODES);
    let before = c.start();
    let sup = c.supervisor_pid();
    let guardian = kill_supervisor_held(&c, sup);
    std::fs::remove_file(c.shm_path()).expect("remove the region");
    // No region: the guardian's next Supervisor makes a new one.
    thaw(guardian);
    c.run(&["start"]).ok();
    live_supervisor(&c);
    let after = c.wait_status(WAIT, "all running", all_running);
    assert_eq!(pids(&after), pids(&before), "{}", c.log());
    let d = duplicates(&c.instance);
    assert!(d.is_empty(), "{d:?}");
}

/// A leftover that escaped the node's process group, dropped the node's identity from its
/// environment (so nothing can tell it is the node's) but kept its lock fd: the node is not
/// started again while it holds the lock, and starts as soon as it is gone. (A leftover that
/// still carries the identity is ended with the node: see `fault_lifecycle`.)
#[test]
fn a_leftover_holding_the_node_lock_blocks_a_second_copy_until_it_exits() {
    let c = Cluster::new(
        "lock_leftover",
        r#"
[defaults]
restart_delay_ms = 50

[[node]]
name = "escaper"
command = ["sh", "-c", "setsid env -u BROCTLD_NODE sleep 600 & exec sleep 600"]

[[node]]
name = "other"
command = ["@NODE@", "--interval", "10s"]
"#,
    );
    // The fallback without cgroups: with a cgroup per node the leftover is the node's and is
    // killed with its leader (tests/cgroups.rs).
    c.set_env("BROCTLD_CGROUP", "off");
    let before = c.start();
    let leader = before["escaper"].pid.unwrap();
    // The escaped sleep: its own session, no BROCTLD_NODE, the lock fd inherited.
    let escaped = lock_escapee(&c, leader);
    signal(leader, libc::SIGKILL);
    // For a while (bounded), no second copy: the Supervisor waits for the lock.
    let mut second = None;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        let s = c.status();
        if let Some(p) = s["escaper"].pid.filter(|p| *p != leader) {
            second = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        second, None,
        "a second copy started while the leftover held the lock"
    );
    let waiting = c.status();
    assert_eq!(waiting["escaper"].pid, None, "{:?}", waiting["escaper"]);
    assert_eq!(
        waiting["escaper"].state, "backoff",
        "{:?}",
        waiting["escaper"]
    );
    signal(escaped, libc::SIGKILL);
    let after = c.wait_status(WAIT, "escaper running again", |s| {
        s["escaper"].state == "running" && s["escaper"].pid.is_some_and(|p| p != leader)
    });
    assert_eq!(after["other"].pid, before["other"].pid);
    assert_eq!(node_leaders(&c.instance)["escaper"].len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

fn many(n: usize) -> String {
    let mut s = String::from("[defaults]\nrestart_delay_ms = 100\nstop_timeout_ms = 3000\n");
    for i in 0..n {
        s.push_str(&format!(
            "\n[[node]]\nname = \"n{i:03}\"\ntype = \"worker\"\ncommand = [\"@NODE@\", \"--interval\", \"1h\"]\n"
        ));
    }
    s
}

#[test]
fn upgrade_supervisor_repeatedly_with_many_nodes_restarts_nothing_and_commands_work() {
    let upgrades = env_count("BROCTLD_FAULT_UPGRADES", 3);
    let n = env_count("BROCTLD_FAULT_UPGRADE_NODES", 200) as usize;
    let c = Cluster::new("upgrades", &many(n));
    let t0 = Instant::now();
    c.run(&["start"]).ok();
    let before = c.wait_status(Duration::from_secs(60), "every node running", all_running);
    let sup = c.supervisor_pid();
    let gen0 = c.client().generation();
    let probe = format!("n{:03}", n - 1);
    let mut log = EventLog::new(&c);
    log.poll();
    let base = log.events.len();
    let mut commands = 0u64;
    for u in 0..upgrades {
        let out = c.run(&["upgrade-supervisor"]);
        assert_eq!(out.code, Some(0), "upgrade {u}: {out:?}\n{}", c.log());
        assert_eq!(c.lock_pid(), Some(sup), "upgrade {u}: the pid changed");
        assert!(pid_alive(sup));
        let client = c.client();
        assert_eq!(client.generation(), gen0 + u + 1, "upgrade {u}");
        // Commands keep working: ping, a signal, a restart (of the probe node alone), status.
        c.run(&["ping"]).ok();
        c.run(&["signal", "HUP", "n000"]).ok();
        let old = c.status()[&probe].pid;
        c.run(&["restart", &probe]).ok();
        let s = c.status();
        assert!(
            s[&probe].pid.is_some() && s[&probe].pid != old,
            "{:?}",
            s[&probe]
        );
        let others = |m: &BTreeMap<String, NodeView>| {
            let mut p = pids(m);
            p.remove(&probe);
            p
        };
        assert_eq!(
            others(&s),
            others(&before),
            "upgrade {u}: a node changed pid"
        );
        commands += 4;
        log.poll();
    }
    // A real restart after the upgrades is still collected as the Supervisor's own child.
    let victim = before["n001"].pid.unwrap();
    signal(victim, libc::SIGKILL);
    let s = c.wait_status(WAIT, "n001 restarted", |s| {
        s["n001"].state == "running" && s["n001"].pid.is_some_and(|p| p != victim)
    });
    assert_eq!(
        s["n001"].exit_signal,
        Some(9),
        "the real exit status: {:?}",
        s["n001"]
    );
    assert!(
        eventually(Duration::from_secs(5), Duration::from_millis(20), || {
            !pid_exists(victim)
        }),
        "the killed node stays a zombie: {}",
        describe_pids(&[victim])
    );
    for (name, node) in &s {
        if name != "n001" && *name != probe {
            assert_eq!(node.pid, before[name].pid, "{name}");
            assert_eq!(node.restarts, 0, "{name}");
        }
    }
    log.poll();
    let probe_index = c.client().node_index(&probe).unwrap() as u16;
    let respawns = log.events[base..]
        .iter()
        .filter(|(_, _, e)| {
            e.kind == EventKind::Spawned && e.pid != s["n001"].pid.unwrap() && e.node != probe_index
        })
        .count();
    assert_eq!(respawns, 0, "nodes spawned during the upgrades");
    assert!(duplicates(&c.instance).is_empty());
    let t = "fault_upgrades";
    figure(t, "nodes", n);
    figure(t, "upgrades", upgrades);
    figure(t, "node_restarts", respawns);
    figure(t, "commands_between_upgrades", commands);
    figure(t, "ms", t0.elapsed().as_millis());
}

/// The Supervisor's binary cannot be executed: `upgrade-supervisor` is refused up front and
/// nothing changes. It can be executed but the exec fails: the old program runs on and records
/// `upgrade-failed`. Then a good binary upgrades as usual.
#[test]
fn upgrade_refused_up_front_or_failing_in_exec_leaves_the_old_supervisor_running() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new("upgrade_fail", THREE_NODES);
    let exe = c.root.join("bin/broctld");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(broctld_bin(), &exe).expect("copy broctld");
    // Run every Main from the copy, so the Supervisor's own binary is the copy.
    let with_copy = |args: &[&str]| -> Output {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--runtime-dir")
            .arg(&c.runtime)
            .arg("--instance")
            .arg(&c.instance)
            .arg("--config")
            .arg(&c.config)
            .args(args)
            .current_dir(&c.root)
            .env_remove("BROCTLD_RUNTIME_DIR");
        let o = cmd.output().expect("run the copy");
        Output {
            code: o.status.code(),
            signal: None,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    };
    with_copy(&["start"]).ok();
    let sup = c.supervisor_pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{sup}/exe")).unwrap(),
        exe,
        "the Supervisor runs the copy"
    );
    let before = c.status();
    let gen = c.client().generation();

    // 1. Not executable: refused, nothing changes.
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.run(&["upgrade-supervisor"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(&exe.display().to_string()),
        "names the binary: {out:?}"
    );
    assert_eq!(c.client().generation(), gen);
    assert_eq!(c.lock_pid(), Some(sup));
    assert_eq!(pids(&c.status()), pids(&before));

    // 2. Executable, but exec fails (not a valid executable: ENOEXEC).
    let tmp = c.root.join("bin/broctld.new");
    std::fs::write(&tmp, b"\x7fELF garbage, not a program").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    let mut log = EventLog::new(&c);
    log.poll();
    // (The asking Main is not waited for: see
    // `a_failed_upgrade_exec_is_reported_by_the_main_that_asked`.)
    let asking = c.spawn_main(&["upgrade-supervisor"]);
    assert!(
        eventually(WAIT, Duration::from_millis(20), || {
            log.poll();
            !log.of(EventKind::UpgradeFailed).is_empty()
        }),
        "an upgrade-failed event\n{}",
        c.log()
    );
    assert!(pid_alive(sup), "the Supervisor died of a failed exec");
    assert_eq!(c.lock_pid(), Some(sup));
    c.run(&["ping"]).ok();
    assert_eq!(pids(&c.status()), pids(&before));
    assert_eq!(c.client().generation(), gen, "no new generation");
    signal(asking, libc::SIGKILL);
    c.wait_main(asking, WAIT);

    // 3. A good binary again: the upgrade goes through.
    std::fs::copy(broctld_bin(), &tmp).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    c.run(&["upgrade-supervisor"]).ok();
    assert_eq!(c.lock_pid(), Some(sup));
    assert_eq!(c.client().generation(), gen + 1);
    let after = c.status();
    assert_eq!(pids(&after), pids(&before));
    for n in after.values() {
        assert_eq!(n.restarts, 0);
    }
}

/// The Main that asked for an upgrade whose exec failed says so (with the reason from the
/// `upgrade-failed` event), instead of waiting for a generation that never comes.
#[test]
fn a_failed_upgrade_exec_is_reported_by_the_main_that_asked() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new("upgrade_fail_msg", THREE_NODES);
    let exe = c.root.join("bin/broctld");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(broctld_bin(), &exe).expect("copy broctld");
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--runtime-dir")
        .arg(&c.runtime)
        .arg("--instance")
        .arg(&c.instance)
        .arg("--config")
        .arg(&c.config)
        .arg("start")
        .current_dir(&c.root);
    let out = cmd.output().expect("start");
    assert!(out.status.success(), "{out:?}");
    let sup = c.supervisor_pid();
    let tmp = c.root.join("bin/broctld.new");
    std::fs::write(&tmp, b"\x7fELF garbage, not a program").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &exe).unwrap();
    let main = c.spawn_main(&["upgrade-supervisor"]);
    let st = c.wait_main(main, Duration::from_secs(25));
    assert_eq!(st.code(), Some(1), "the upgrade failed");
    let err = std::fs::read_dir(c.root.join("out"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        err.contains("Exec format error"),
        "the reason is given: {err}"
    );
    assert!(pid_alive(sup));
}

/// Found by the campaign (seed 59): a Supervisor `kill -9`ed after a `shutdown` had stopped
/// every node, while it removed its runtime files, had already removed its region, so the
/// guardian's replacement found none and started every autostart node again. The region now
/// goes last, and a successor that finds it saying `exited` finishes the shutdown: nothing of
/// the instance runs afterwards.
#[test]
fn a_supervisor_killed_in_its_clean_up_after_shutdown_starts_nothing_again() {
    // Many nodes, each with a cgroup and output FIFOs: the clean-up takes a moment.
    let config: String = (0..24)
        .map(|i| {
            format!(
                "[[node]]\nname = \"n{i}\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n\n"
            )
        })
        .collect();
    let c = Cluster::new("killed_in_cleanup", &config);
    let before = c.start();
    let sup = c.supervisor_pid();
    let shm = broctld::protocol::Shared::open(&c.instance().shm_name()).expect("the region");
    let shutdown = c.spawn_main(&["shutdown"]);
    // Spin (no sleep: the window is short) until the region says `exited`, then kill it.
    let deadline = Instant::now() + WAIT;
    while shm.state() != Some(broctld::protocol::layout::SupervisorState::Exited) {
        assert!(
            Instant::now() < deadline,
            "the region never said exited:\n{}",
            c.log()
        );
        std::hint::spin_loop();
    }
    signal(sup, libc::SIGKILL);
    let _ = c.wait_main(shutdown, WAIT);
    wait_until(
        WAIT,
        "no Supervisor and no guardian of the instance",
        || supervisors_of(&c.runtime).is_empty() && guardians_of(&c.runtime).is_empty(),
    );
    let left = node_procs(&c.instance);
    assert!(
        left.is_empty(),
        "nodes run again after a shutdown: {left:?}\n{}",
        c.log()
    );
    for (name, n) in &before {
        let pid = n.pid.expect("started");
        assert!(!pid_alive(pid), "{name} (pid {pid}) still runs");
    }
    wait_until(WAIT, "the region removed", || !c.shm_path().exists());
}
