//! `broctld daemon` as a service manager runs it: readiness on a (fake) `NOTIFY_SOCKET`,
//! SIGHUP reloads, SIGTERM is the ordered shutdown, a killed Supervisor is replaced at once
//! with every node keeping its pid, and a Main killed alone (what `KillMode=process` does when
//! only the Main restarts) leaves everything running for the next daemon to attach to.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

const CLUSTER: &str = r#"
[defaults]
stop_timeout_ms = 5000

[[node]]
name = "logger-1"
type = "logger"
command = ["sleep", "600"]

[[node]]
name = "manager"
type = "manager"
command = ["sh", "-c", "sleep 0.2; echo >&3; exec sleep 600"]
ready_fd = 3

[[node]]
name = "worker-1"
type = "worker"
command = ["sleep", "600"]
"#;

/// The receiving end of a fake `NOTIFY_SOCKET`.
struct Notify {
    sock: UnixDatagram,
    /// What to put in `NOTIFY_SOCKET`.
    env: String,
    got: Vec<String>,
}

impl Notify {
    fn path(c: &Cluster) -> Notify {
        let p = c.root.join("notify.sock");
        let sock = UnixDatagram::bind(&p).expect("bind the notify socket");
        Notify {
            sock,
            env: p.to_string_lossy().into_owned(),
            got: Vec::new(),
        }
    }

    fn abstract_name(c: &Cluster) -> Notify {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("broctld-test-{}", c.instance);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Notify {
            sock,
            env: format!("@{name}"),
            got: Vec::new(),
        }
    }

    /// Waits (bounded) for a message containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification with '{needle}' within {WAIT:?}; got {:?}",
                self.got
            );
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 4096];
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.got.push(msg.clone());
                    if msg.contains(needle) {
                        return msg;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

fn spawn_daemon(c: &Cluster, notify: &Notify) -> Child {
    let n = std::fs::read_dir(c.root.join("out")).map_or(0, |d| d.count());
    let err = std::fs::File::create(c.root.join("out").join(format!("daemon-{n}.stderr"))).unwrap();
    let child = c
        .command(&["daemon"])
        .env("NOTIFY_SOCKET", &notify.env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("run broctld daemon");
    track(c.id, child.id(), false);
    child
}

fn main_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.instance_dir().join("main.log")).unwrap_or_default()
}

#[test]
fn daemon_reports_ready_reloads_on_sighup_and_shuts_everything_down_on_sigterm() {
    let c = Cluster::new("daemon_lifecycle", CLUSTER);
    let mut notify = Notify::path(&c);
    let mut d = spawn_daemon(&c, &notify);
    let ready = notify.expect("READY=1");
    assert!(ready.contains("STATUS=3 of 3 node(s) running"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", d.id())), "{ready}");
    // READY=1 comes once the autostart nodes are up.
    let s = c.status();
    assert!(all_running(&s), "{s:#?}");
    let sup = c.supervisor_pid();
    // The daemon does not pass NOTIFY_SOCKET on to the Supervisor or the nodes.
    let env = std::fs::read(format!("/proc/{sup}/environ")).unwrap();
    assert!(
        !env.split(|b| *b == 0)
            .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "the Supervisor inherited NOTIFY_SOCKET"
    );

    // SIGHUP: reload, with RELOADING=1 then READY=1.
    c.write_config(
        &(CLUSTER.to_owned()
            + "\n[[node]]\nname = \"worker-2\"\ntype = \"worker\"\ncommand = [\"sleep\", \"601\"]\n"),
    );
    signal(d.id(), libc::SIGHUP);
    notify.expect("RELOADING=1");
    let msg = notify.expect("READY=1");
    assert!(msg.contains("added worker-2"), "{msg}");
    let after = c.wait_status(WAIT, "worker-2 to run", |s| {
        s.get("worker-2").is_some_and(|n| n.state == "running")
    });
    for name in ["logger-1", "manager", "worker-1"] {
        assert_eq!(after[name].pid, s[name].pid, "{name} kept its pid");
    }
    // A broken config: nothing changes, the daemon says why and stays.
    c.write_config(&(CLUSTER.to_owned() + "\n[[node]]\nnme = \"x\"\n"));
    signal(d.id(), libc::SIGHUP);
    let msg = notify.expect("READY=1");
    assert!(msg.contains("reload refused: nothing changed"), "{msg}");
    assert_eq!(pids(&c.status()), pids(&after));

    // SIGTERM: every node, then the Supervisor, then the daemon.
    signal(d.id(), libc::SIGTERM);
    notify.expect("STOPPING=1");
    let st = wait_child(&mut d, WAIT).expect("the daemon exits after SIGTERM");
    assert_eq!(st.code(), Some(0), "{st:?}");
    for n in after.values() {
        let pid = n.pid.unwrap();
        wait_until(WAIT, "every node to be gone", || !pid_alive(pid));
    }
    wait_until(WAIT, "the Supervisor to be gone", || !pid_alive(sup));
    assert!(!c.shm_path().exists(), "the region is left");
    let log = main_log(&c);
    assert!(
        log.contains("daemon: SIGHUP: reloaded: added worker-2"),
        "{log}"
    );
    assert!(log.contains("daemon: SIGTERM: stopping 4 node(s)"), "{log}");
    assert!(log.contains("daemon: shutdown complete"), "{log}");
}

#[test]
fn daemon_replaces_a_killed_supervisor_and_every_node_keeps_its_pid() {
    let c = Cluster::new("daemon_respawn", CLUSTER);
    let mut notify = Notify::abstract_name(&c);
    let mut d = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    let before = c.status();
    assert!(all_running(&before));
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    let new = wait_for(
        WAIT,
        "a new Supervisor",
        || c.lock_pid().filter(|p| *p != sup && pid_alive(*p)),
        || main_log(&c),
    );
    track(c.id, new, false);
    notify.expect(&format!("Supervisor pid {new}"));
    let after = c.status();
    assert_eq!(pids(&after), pids(&before), "a node changed pid");
    assert!(all_running(&after), "{after:#?}");
    let log = main_log(&c);
    assert!(
        log.contains(&format!("the Supervisor (pid {sup}) died")),
        "{log}"
    );
    assert!(log.contains(&format!("new Supervisor pid {new}")), "{log}");
    assert!(pid_alive(d.id()), "the daemon stays");

    // Another Main shuts the cluster down: the daemon follows.
    c.run(&["shutdown"]).ok();
    let st = wait_child(&mut d, WAIT).expect("the daemon exits after a shutdown");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn a_main_killed_alone_leaves_every_node_running_and_the_next_daemon_attaches() {
    let c = Cluster::new("daemon_restart", CLUSTER);
    let mut notify = Notify::path(&c);
    let mut d = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    let before = c.status();
    let sup = c.supervisor_pid();
    // `systemctl restart broctld`: the unit's RestartKillSignal (SIGUSR1) goes to the Main
    // alone (KillMode=process); it exits and leaves everything running.
    signal(d.id(), libc::SIGUSR1);
    let st = wait_child(&mut d, WAIT).expect("the daemon exits on SIGUSR1");
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(pid_alive(sup), "the Supervisor went with its Main");
    let still = c.status();
    assert_eq!(pids(&still), pids(&before), "a node changed pid");
    assert!(all_running(&still));
    // The next daemon attaches to the same Supervisor and reports ready at once.
    let mut d = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    assert_eq!(c.lock_pid(), Some(sup), "a new Supervisor was started");
    assert_eq!(pids(&c.status()), pids(&before));
    assert!(main_log(&c).contains(&format!("attached to Supervisor pid {sup}")));

    // A Main that crashes, or that systemd SIGKILLs after its stop timeout: the same.
    signal(d.id(), libc::SIGKILL);
    let _ = wait_child(&mut d, WAIT).expect("the daemon dies");
    assert!(pid_alive(sup), "the Supervisor died with its Main");
    let mut d2 = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    assert_eq!(c.lock_pid(), Some(sup));
    assert_eq!(pids(&c.status()), pids(&before));

    // SIGUSR2: the daemon re-executes itself in place (an upgrade of the Main): same pid,
    // READY=1 again, nothing else restarts.
    let pid = d2.id();
    signal(pid, libc::SIGUSR2);
    notify.expect("RELOADING=1");
    let msg = notify.expect("READY=1");
    assert!(msg.contains(&format!("MAINPID={pid}")), "{msg}");
    assert!(pid_alive(pid));
    assert_eq!(c.lock_pid(), Some(sup));
    assert_eq!(pids(&c.status()), pids(&before));
    assert!(main_log(&c).contains("SIGUSR2: re-executing"));

    signal(pid, libc::SIGTERM);
    let st = wait_child(&mut d2, WAIT).expect("the daemon exits");
    assert_eq!(st.code(), Some(0));
    wait_until(WAIT, "the Supervisor to be gone", || !pid_alive(sup));
}

#[test]
fn the_service_unit_signals_only_the_main_and_stops_through_it() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/broctld.service"),
    )
    .expect("contrib/broctld.service");
    let key = |k: &str| -> Vec<String> {
        unit.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(String::from)
            .collect()
    };
    assert_eq!(key("Type"), ["notify"]);
    assert_eq!(key("KillMode"), ["process"], "only the Main is signalled");
    assert!(key("ExecStart")[0].ends_with(" daemon"), "{unit}");
    assert!(key("ExecReload")[0].contains("-HUP $MAINPID"), "{unit}");
    assert!(
        key("ExecStop").is_empty(),
        "SIGTERM to the Main is the ordered stop"
    );
    assert_eq!(
        key("RestartKillSignal"),
        ["SIGUSR1"],
        "a restart replaces only the Main"
    );
    assert_eq!(key("Restart"), ["on-failure"]);
    assert_eq!(key("NotifyAccess"), ["main"]);
    assert!(!key("TimeoutStopSec").is_empty());
    assert_eq!(key("RuntimeDirectoryPreserve"), ["yes"]);
}

/// One daemon Main per instance: a second `broctld daemon` on the same instance is refused at
/// once, naming the first one's pid, and touches nothing.
#[test]
fn second_daemon_main_is_refused() {
    let c = Cluster::new("daemon_twice", CLUSTER);
    let mut notify = Notify::path(&c);
    let mut d = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    let before = c.status();
    let sup = c.supervisor_pid();
    let second = c.run(&["daemon"]);
    assert_eq!(second.code, Some(1), "{second:?}");
    assert!(
        second
            .stderr
            .contains(&format!("already has a daemon Main (pid {})", d.id())),
        "{second:?}"
    );
    assert!(pid_alive(d.id()), "the first daemon stays");
    assert_eq!(c.lock_pid(), Some(sup));
    assert_eq!(pids(&c.status()), pids(&before));
    assert!(main_log(&c).contains("daemon: refused: instance"));
    signal(d.id(), libc::SIGTERM);
    let st = wait_child(&mut d, WAIT).expect("the daemon exits");
    assert_eq!(st.code(), Some(0));
    assert!(
        !c.instance_dir().join("daemon.lock").exists(),
        "the daemon left its lock file"
    );
    // Once it is gone, a daemon may run again.
    let mut d2 = spawn_daemon(&c, &notify);
    notify.expect("READY=1");
    signal(d2.id(), libc::SIGTERM);
    let st = wait_child(&mut d2, WAIT).expect("the second daemon exits");
    assert_eq!(st.code(), Some(0));
}
