//! Issue 8, the shared-memory protocol and the Main side of the promise: one instance has one
//! region whatever the spelling of its runtime dir; a region truncated, removed or overwritten
//! by another process kills nobody and is rebuilt by the Supervisor; `status` never shows a
//! node it cannot vouch for as `stopped`; a command that did nothing never exits 0; commands
//! name their nodes so a reload never redirects them; a withdrawn command is never applied;
//! pings leave no events. Real Supervisor, real nodes, real signals; truth from `/proc`.

mod common;

use broctld::client::{Client, ClientError};
use broctld::protocol::event::EventKind;
use broctld::protocol::mailbox::{Opcode, ReplyStatus, Request, SlotState};
use common::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

const TWO: &str = r#"
[[node]]
name = "worker-1"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "worker-2"
command = ["@NODE@", "--interval", "10s"]
"#;

const TWO_SWAPPED: &str = r#"
[[node]]
name = "worker-2"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "worker-1"
command = ["@NODE@", "--interval", "10s"]
"#;

/// `broctld --runtime-dir DIR ARGS` for `c`'s instance with a config-less working dir.
fn run_with_dir(c: &Cluster, dir: &str, args: &[&str], config: bool) -> Output {
    let out_dir = c.root.join("out");
    let mut cmd = std::process::Command::new(broctld_bin());
    cmd.arg("--runtime-dir")
        .arg(dir)
        .arg("--instance")
        .arg(&c.instance);
    if config {
        cmd.arg("--config").arg(&c.config);
    }
    cmd.args(args)
        .current_dir(&out_dir)
        .env_remove("BROCTLD_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("run broctld");
    track(c.id, child.id(), false);
    let out = child.wait_with_output().expect("wait for broctld");
    use std::os::unix::process::ExitStatusExt;
    Output {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn json_nodes(out: &Output) -> Vec<Value> {
    serde_json::from_str::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
        .as_array()
        .expect("an array")
        .clone()
}

/// Defect 6: `--runtime-dir DIR/`, `DIR//`, `DIR/./` and `X/../DIR` named other regions, so
/// a Main said "no Supervisor ... every node is stopped" while the nodes ran.
#[test]
fn runtime_dir_spellings_share_one_region() {
    let c = Cluster::new("dir_spellings", TWO);
    let before = c.start();
    let pid = before["worker-1"].pid.expect("worker-1 runs");
    let r = c.runtime.to_string_lossy().into_owned();
    let parent = c.runtime.parent().unwrap().to_string_lossy().into_owned();
    for spelling in [
        format!("{r}/"),
        format!("{r}//"),
        format!("{r}/."),
        r.replace("/run", "//run"),
        r.replace("/run", "/./run"),
        format!("{parent}/out/../run"),
    ] {
        let out = run_with_dir(&c, &spelling, &["status", "--json"], true);
        out.ok();
        let nodes = json_nodes(&out);
        let w1 = nodes
            .iter()
            .find(|n| n["name"] == "worker-1")
            .unwrap_or_else(|| panic!("{spelling}: {out:?}"));
        assert_eq!(w1["state"], "running", "{spelling}: {out:?}");
        assert_eq!(w1["pid"].as_u64(), Some(pid as u64), "{spelling}: {out:?}");
    }
    assert_eq!(supervisors_of(&c.runtime).len(), 1, "one Supervisor only");
}

/// Defect 6: a region at our name made for another runtime dir or instance (a hash
/// collision, or a planted file) is refused, naming whose it is, and left alone.
#[test]
fn region_of_another_instance_is_refused_never_shared() {
    let c = Cluster::new("other_identity", TWO);
    let name = c.instance().shm_name();
    let other =
        broctld::instance::Instance::new(&c.instance, &c.root.join("elsewhere")).expect("instance");
    drop(
        broctld::protocol::Shared::create_owned(
            &name,
            broctld::protocol::Geometry::default(),
            &other.identity(),
        )
        .expect("plant a region"),
    );
    let out = c.run(&["start"]);
    let _ = broctld::shm::Region::unlink(&name);
    assert_ne!(
        out.code,
        Some(0),
        "start over another instance's region: {out:?}"
    );
    assert!(out.stderr.contains("belongs to"), "{out:?}");
    assert!(out.stderr.contains("elsewhere"), "{out:?}");
}

/// Defect 6/9: a region removed under a live Supervisor (systemd's `RemoveIPC` does that)
/// made every Main report "no Supervisor ... every node is stopped". The Main now asks the
/// Supervisor to rebuild it and reports the truth.
#[test]
fn region_removed_under_a_live_supervisor_is_rebuilt_not_reported_stopped() {
    let c = Cluster::new("region_removed", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    broctld::shm::Region::unlink(&c.instance().shm_name()).expect("remove the region");
    let out = c.run(&["status", "--json"]);
    out.ok();
    let nodes = parse_status(&out.stdout);
    assert_eq!(nodes["worker-1"].pid, before["worker-1"].pid, "{out:?}");
    assert_eq!(nodes["worker-1"].state, "running");
    assert!(pid_alive(sup) && c.shm_path().exists());
    assert!(c.log().contains("rebuilt"), "{}", c.log());
}

/// Defect 6: while the Supervisor holds the lock but cannot answer (stopped here) and its
/// region is gone, `status` is an error that says what to do, never "not running".
#[test]
fn lock_held_region_missing_is_an_error_not_not_running() {
    let c = Cluster::new("region_missing", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGSTOP);
    broctld::shm::Region::unlink(&c.instance().shm_name()).expect("remove the region");
    let out = c.run(&["status"]);
    signal(sup, libc::SIGCONT);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_ne!(out.code, Some(3), "{out:?}");
    assert!(!out.stdout.contains("stopped"), "{out:?}");
    assert!(out.stderr.contains("does not exist"), "{out:?}");
    assert!(out.stderr.contains(&format!("pid {sup}")), "{out:?}");
    assert!(pid_alive(before["worker-1"].pid.unwrap()));
    // Once it runs again, the next Main gets it rebuilt.
    let again = c.run(&["status", "--json"]);
    again.ok();
}

/// Defect 9: truncating the region (any process with our uid can) killed the Supervisor with
/// SIGBUS, silently. Now neither the Supervisor, nor a Main following events, nor any node
/// dies; the Supervisor rebuilds the region and `status` is true again.
#[test]
fn truncated_region_kills_neither_supervisor_nor_main_and_is_rebuilt() {
    let c = Cluster::new("region_truncated", TWO);
    let before = c.start();
    let sup = c.supervisor_pid();
    let follower = c.spawn_main(&["events", "--follow"]);
    let client = c.client();
    wait_until(WAIT, "the follower to attach", || {
        std::fs::read_to_string(format!("/proc/{follower}/maps"))
            .is_ok_and(|m| m.contains(c.instance().shm_name().trim_start_matches('/')))
    });
    for size in [4096u64, 0] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.shm_path())
            .expect("open the region");
        f.set_len(size).expect("truncate it");
        drop(f);
        // Touch it the way Mains do: each command wakes the Supervisor.
        let out = c.run(&["status", "--json"]);
        out.ok();
        let nodes = parse_status(&out.stdout);
        for n in ["worker-1", "worker-2"] {
            assert_eq!(
                nodes[n].pid,
                before[n].pid,
                "size {size}: {out:?}\n{}",
                c.log()
            );
            assert!(pid_alive(before[n].pid.unwrap()));
        }
        assert!(
            pid_alive(sup),
            "the Supervisor died (size {size}):\n{}",
            c.log()
        );
        assert!(pid_alive(follower), "the following Main died (size {size})");
    }
    // This process had the region mapped too: its reads faulted, and were caught.
    let _ = client.status();
    assert!(
        client.shared().damaged(),
        "the old mapping is marked damaged"
    );
    assert!(matches!(
        client.check_damage(),
        Err(ClientError::Damaged { .. })
    ));
    assert!(c.log().contains("SIGBUS"), "{}", c.log());
    // The follower carries on against the rebuilt region.
    c.run(&["restart", "worker-2"]).ok();
    let out_dir = c.root.join("out");
    let printed = |needle: &str| {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
    };
    wait_until(WAIT, "the follower to report the restart", || {
        printed("waiting for the Supervisor to rebuild it") && printed("spawned")
    });
}

/// Defect 9: a header overwritten under a live Supervisor (zeroed magic, a wrong owner pid)
/// made Mains report every node stopped. The Supervisor now repairs it when a Main asks.
#[test]
fn damaged_header_under_a_live_supervisor_is_repaired_never_reported_stopped() {
    use broctld::protocol::layout::Header;
    use std::mem::offset_of;
    let c = Cluster::new("header_damaged", TWO);
    let before = c.start();
    for (at, bytes) in [
        (offset_of!(Header, magic), vec![0u8; 8]),
        (offset_of!(Header, owner_pid), 1u32.to_le_bytes().to_vec()),
    ] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.shm_path())
            .unwrap();
        f.write_all_at(&bytes, at as u64).unwrap();
        drop(f);
        let out = c.run(&["status", "--json"]);
        out.ok();
        let nodes = parse_status(&out.stdout);
        assert_eq!(nodes["worker-1"].pid, before["worker-1"].pid, "{out:?}");
        assert_eq!(nodes["worker-1"].state, "running", "{out:?}");
    }
}

/// Defect 3: with the Supervisor dead and not replaceable (its config edited into an error),
/// `status` showed every live node `stopped`, and `stop` exited 0 with `stop: ok` in main.log
/// while the node ran. Now the last recorded state is shown as unknown, checked against
/// /proc, and both exit non-zero; `stop` logs a failure.
#[test]
fn status_never_says_stopped_when_the_supervisor_cannot_be_replaced() {
    let c = Cluster::new("unreplaceable", TWO);
    let before = c.start();
    let pid = before["worker-1"].pid.unwrap();
    // Unreplaceable: no guardian to restart it, and no running config to fall back on (the
    // file on disk is edited into an error below).
    kill_guardians(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    let _ = std::fs::remove_file(c.instance_dir().join("running-config"));
    c.write_config("this is = = not toml");
    let out = c.run(&["status", "--json"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_ne!(out.code, Some(3), "{out:?}");
    let nodes = json_nodes(&out);
    let w1 = nodes
        .iter()
        .find(|n| n["name"] == "worker-1")
        .expect("worker-1 shown");
    assert_eq!(w1["state"], "unknown", "{out:?}");
    assert_eq!(w1["last_state"], "running", "{out:?}");
    assert_eq!(w1["pid"].as_u64(), Some(pid as u64));
    assert_eq!(w1["pid_alive"], true, "{out:?}");
    assert!(pid_alive(pid));
    let table = c.run(&["status"]);
    assert!(!table.stdout.contains("stopped"), "{table:?}");
    assert!(table.stdout.contains("unknown"), "{table:?}");
    // Without any config at all: the region is still read.
    let bare = run_with_dir(
        &c,
        &c.runtime.to_string_lossy(),
        &["status", "--json"],
        false,
    );
    assert_ne!(bare.code, Some(0), "{bare:?}");
    assert!(json_nodes(&bare)
        .iter()
        .any(|n| n["name"] == "worker-1" && n["state"] == "unknown"));
    // A stop that cannot reach a Supervisor did nothing: it fails, says so, and logs it.
    let stop = c.run(&["stop", "worker-1"]);
    assert_ne!(stop.code, Some(0), "{stop:?}");
    assert!(stop.stderr.contains("nothing was done"), "{stop:?}");
    assert!(pid_alive(pid), "the node runs on");
    let mainlog = std::fs::read_to_string(c.instance_dir().join("main.log")).unwrap_or_default();
    let last_stop = mainlog
        .lines()
        .rev()
        .find(|l| l.contains("stop worker-1"))
        .unwrap_or("");
    assert!(last_stop.contains("failed"), "main.log: {mainlog}");
    // Let cleanup work: a valid config again.
    c.write_config(TWO);
}

/// Defect 10: commands named nodes by table index with no epoch, so a reload between a
/// Main's lookup and the apply made `stop worker-1` stop another node. A command built
/// against an older numbering is now refused unapplied, and the calls by name resend it;
/// events name their nodes by the numbering they were written under.
#[test]
fn stop_by_name_is_never_redirected_by_a_reload() {
    let c = Cluster::new("reload_redirect", TWO);
    let before = c.start();
    let (p1, p2) = (
        before["worker-1"].pid.unwrap(),
        before["worker-2"].pid.unwrap(),
    );
    let client = c.client();
    let epoch = client.config_epoch();
    let idx1 = client.node("worker-1").unwrap().index;
    assert_eq!(idx1, 0);
    c.write_config(TWO_SWAPPED);
    c.run(&["reload"]).ok();
    assert_ne!(
        client.config_epoch(),
        epoch,
        "a reload renumbers: new epoch"
    );
    assert_eq!(client.node("worker-2").unwrap().index, 0);
    // The Main's lookup was before the reload: index 0 then meant worker-1.
    let stale = Request::new(Opcode::Stop, [idx1], 0).at_epoch(epoch);
    let reply = client.send(&stale, WAIT).expect("a reply");
    assert_eq!(reply.status, ReplyStatus::Stale, "{reply:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(p1) && pid_alive(p2),
        "a stale command stopped something"
    );
    // By name, across the renumbering: exactly worker-1 stops.
    let mut log = EventLog::new(&c);
    log.poll();
    client.stop(&["worker-1"]).expect("stop worker-1");
    wait_until(WAIT, "worker-1 to stop", || !pid_alive(p1));
    assert!(pid_alive(p2), "worker-2 was stopped instead");
    log.poll();
    let stopping = log.of(EventKind::Stopping);
    let ev = stopping.last().expect("a stopping event");
    assert_eq!(client.event_node_name(ev).as_deref(), Some("worker-1"));
    // An event from before the reload is never given a name from the new numbering.
    let mut old = *ev;
    old.epoch = epoch;
    assert_eq!(client.event_node_name(&old), None);
    let events = c.run(&["events", "--since", "0"]);
    let stop_line = events
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains("stopping"))
        .unwrap_or("");
    assert!(stop_line.contains("worker-1"), "{}", events.stdout);
}

/// Defect 11: a Main whose bell could not be rung (its Supervisor had just died) gave up and
/// reported failure, but its command stayed submitted and the next Supervisor applied it.
/// Withdrawal is now a CAS that either wins (never applied) or loses (reported as "may have
/// been applied").
#[test]
fn abandoned_command_is_never_applied_by_a_later_supervisor() {
    let c = Cluster::new("abandoned_cmd", TWO);
    let before = c.start();
    let p1 = before["worker-1"].pid.unwrap();
    let client = c.client();
    // The guardian would replace the Supervisor at once; hold it while the Main gives up.
    let guardian = freeze_guardian(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    let err = client
        .stop(&["worker-1"])
        .expect_err("no Supervisor to answer");
    thaw(guardian);
    assert!(err.not_applied(), "{err}");
    let slots = client.shared().slots();
    assert!(
        slots
            .iter()
            .all(|s| SlotState::split(s.state.load(Ordering::SeqCst)).0 != std::process::id()),
        "our slot was left behind"
    );
    // A new Supervisor adopts the nodes and scans the mailbox.
    c.run(&["status"]);
    c.supervisor_pid();
    c.run(&["ping"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pid_alive(p1),
        "the withdrawn stop was applied by the next Supervisor"
    );
    let st = c.status();
    assert_eq!(st["worker-1"].state, "running");
    // The submit path itself: a command withdrawn before it is taken is not applied.
    let sup = c.supervisor_pid();
    let client = c.client();
    signal(sup, libc::SIGSTOP);
    let err = client
        .command_by_name(Opcode::Stop, &["worker-1"], 0, Duration::from_millis(200))
        .expect_err("the Supervisor is stopped");
    signal(sup, libc::SIGCONT);
    assert!(err.to_string().contains("withdrawn, not applied"), "{err}");
    c.run(&["ping"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(pid_alive(p1), "a withdrawn command was applied");
    assert_eq!(slots_of(&client, std::process::id()), 0);
}

fn slots_of(client: &Client, pid: u32) -> usize {
    client
        .shared()
        .slots()
        .iter()
        .filter(|s| SlotState::split(s.state.load(Ordering::SeqCst)).0 == pid)
        .count()
}

/// `ping -n 1000` pushed 1000 `command` events into the 4,096-event history; pings now
/// leave none.
#[test]
fn ping_leaves_no_events() {
    let c = Cluster::new("ping_events", TWO);
    c.start();
    let client = c.client();
    let head = client.event_head();
    c.run(&["ping", "-n", "200"]).ok();
    assert_eq!(client.event_head(), head, "pings pushed events");
    // Other commands still leave theirs.
    c.run(&["restart", "worker-1"]).ok();
    assert!(client.event_head() > head);
}

/// Defect 10 / issue 12: the mailbox's 1024-bit node mask capped an instance at 1024 nodes.
/// A table of 1,100 nodes starts, and the last one is addressed by name.
#[test]
fn more_than_1024_nodes_are_addressed_by_name() {
    let mut config = String::from("[defaults]\nautostart = false\n");
    for i in 0..1100 {
        config.push_str(&format!(
            "\n[[node]]\nname = \"n-{i}\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n"
        ));
    }
    let c = Cluster::new("over_1024", &config);
    c.run(&["start", "n-1099"]).ok();
    c.supervisor_pid();
    let st = c.status();
    assert_eq!(st.len(), 1100);
    let last = &st["n-1099"];
    assert_eq!(last.state, "running", "{last:?}");
    assert!(pid_alive(last.pid.unwrap()));
    assert!(st.values().filter(|n| n.pid.is_some()).count() == 1);
    c.run(&["stop", "n-1099"]).ok();
    assert!(!pid_alive(last.pid.unwrap()) || is_zombie(last.pid.unwrap()));
}

/// Issue 13 (library): an embedder follows events by node name across a reload that
/// renumbers the table; every event is about the node it names (checked against the pids
/// /proc saw), none is relabelled.
#[test]
fn embedder_events_name_their_nodes_across_a_reload() {
    let c = Cluster::new("embed_events", TWO);
    let before = c.start();
    let client = c.client();
    let mut events = client.events();
    let mut spawned = Vec::new();
    // The next `spawned` event, named as the embedder sees it.
    let mut next_spawn = |spawned: &Vec<(String, u32)>| loop {
        let ev = events
            .next_timeout(WAIT)
            .unwrap_or_else(|| panic!("no spawn events: {spawned:?}\n{}", c.log()));
        if ev.kind == EventKind::Spawned {
            return (ev.node.clone().expect("named"), ev.pid.expect("a pid"));
        }
    };
    let first = client.restart(&["worker-2"]).expect("restart worker-2");
    assert_eq!(first.nodes, vec!["worker-2".to_string()]);
    // The restart's spawn comes once worker-2 has stopped: wait for it before the reload
    // renumbers the table, so the two spawns cannot race each other.
    let ev = next_spawn(&spawned);
    spawned.push(ev);
    c.write_config(TWO_SWAPPED);
    let summary = client.reload(WAIT).expect("reload");
    assert!(summary.contains("unchanged"), "{summary}");
    client.restart(&["worker-1"]).expect("restart worker-1");
    let ev = next_spawn(&spawned);
    spawned.push(ev);
    assert_eq!(spawned[0].0, "worker-2");
    assert_eq!(spawned[1].0, "worker-1");
    let now = c.status();
    for (name, pid) in &spawned {
        assert_eq!(now[name].pid, Some(*pid), "{name}: {now:?}");
        assert_ne!(before[name].pid, Some(*pid));
        assert!(pid_alive(*pid));
    }
    client.ping(WAIT).expect("ping");
}

/// Found by the campaign (seeds 23, 37, 57): with the Supervisor dead, its region gone with it
/// and the guardian unable to start another for a while (here: stopped), `status` read the
/// config alone and said every live node was `stopped`, verified, exit 3. It now asks the
/// kernel (each node's lock file and cgroup): a node with a live process is `unknown` with
/// that pid, and `status` exits non-zero saying nothing supervises it. Once a Supervisor runs
/// again, it adopts the same processes.
#[test]
fn status_never_says_stopped_when_the_region_is_lost_with_its_supervisor() {
    let c = Cluster::new("region_lost_unsupervised", TWO);
    let before = c.start();
    let guardian = freeze_guardian(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    c.wait_lock_free();
    std::fs::remove_file(c.shm_path()).expect("remove the region");
    let out = c.run(&["status", "--json"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_ne!(out.code, Some(3), "not 'every node is stopped': {out:?}");
    assert!(out.stderr.contains("nothing supervises"), "{out:?}");
    for n in json_nodes(&out) {
        let name = n["name"].as_str().expect("a name").to_owned();
        let pid = before[&name].pid.expect("started");
        assert_eq!(n["state"], "unknown", "{name}: {out:?}");
        assert_eq!(n["pid"].as_u64(), Some(pid as u64), "{name}: {out:?}");
        assert_eq!(n["pid_alive"], true, "{name}: {out:?}");
        assert!(pid_alive(pid), "{name} (pid {pid}) was touched");
    }
    let table = c.run(&["status"]);
    assert!(!table.stdout.contains("stopped"), "{table:?}");
    thaw(guardian);
    c.next_supervisor(sup);
    let after = c.wait_status(WAIT, "both adopted", |s| {
        s.values().all(|n| n.state == "running") && s.iter().all(|(k, n)| n.pid == before[k].pid)
    });
    assert_eq!(pids(&after), pids(&before));
}
