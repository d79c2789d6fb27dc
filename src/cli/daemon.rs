//! `broctld daemon`: a foreground Main for a service manager (systemd `Type=notify`).
//!
//! * Attaches to the instance's Supervisor, starting one if none runs (which then autostarts
//!   the nodes), and reports `READY=1` on `$NOTIFY_SOCKET` once the autostart nodes are up
//!   (running, or given up on, or past their ready timeout), with a `STATUS=` line.
//! * One daemon per instance: it holds `daemon.lock` for its life; a second daemon is refused,
//!   naming the first one's pid.
//! * Watches the Supervisor with a pidfd: if it dies (not by `shutdown`), its guardian starts a
//!   new one at once, which adopts the running nodes; the daemon attaches to it (or starts one
//!   itself if no guardian runs). If it exited because another Main ran `shutdown`, the daemon
//!   exits too.
//! * SIGHUP: `reload` (`RELOADING=1`, then `READY=1`). A config that does not load changes
//!   nothing and is logged.
//! * SIGTERM or SIGINT: the ordered OS shutdown: every node in reverse start order, then the
//!   Supervisor, then the daemon itself (`STOPPING=1`).
//! * SIGUSR1: the daemon exits (status 0) and leaves the Supervisor and every node running:
//!   a restart of the Main alone. `contrib/broctld.service` sets `RestartKillSignal=SIGUSR1`,
//!   so `systemctl restart broctld` replaces only the Main, and the next daemon attaches.
//! * SIGUSR2: the daemon re-executes its (possibly upgraded) binary in place, same pid, so a
//!   service manager sees nothing; no node and not the Supervisor is touched.
//!
//! Signals are blocked and read from a signalfd; the signalfd and the pidfd sit in one `mio`
//! poll, so the daemon sleeps in the kernel until something happens (it polls every 100 ms only
//! while it waits for the autostart nodes before `READY=1`). Every action goes to stderr (the
//! journal) and to Main's log.

use super::events;
use super::mainlog;
use super::session::find_config;
use crate::client::{Client, NodeStatus};
use crate::config::Config;
use crate::instance::Instance;
use crate::protocol::layout::SupervisorState;
use crate::protocol::mailbox::Opcode;
use crate::protocol::node::NodeState;
use crate::sys::lockfile::{LockError, LockFile};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(0);
const SUPERVISOR: Token = Token(1);

/// How long the daemon waits for the autostart nodes before it reports ready anyway.
pub const READY_WAIT_MAX: Duration = Duration::from_secs(120);

/// The systemd notification socket (`$NOTIFY_SOCKET`), if any.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    raw: Option<OsString>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). The variable is
    /// removed from the environment, so that the Supervisor and the nodes do not inherit it.
    pub fn from_env() -> Notifier {
        let raw = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty());
        // Edition 2021: a plain call. No other thread exists yet.
        std::env::remove_var("NOTIFY_SOCKET");
        let target = raw.as_ref().and_then(|v| {
            let bytes = v.as_encoded_bytes();
            let addr = if let Some(name) = bytes.strip_prefix(b"@") {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).ok()?
            } else {
                SocketAddr::from_pathname(Path::new(v)).ok()?
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target, raw }
    }

    /// Sends one notification (`READY=1`, `STATUS=...`); errors are ignored.
    pub fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(msg.as_bytes(), addr);
        }
    }

    fn status(&self, text: &str) {
        self.send(&format!("STATUS={text}"));
    }
}

fn say(instance: &Instance, msg: &str) {
    crate::log!("broctld daemon: {msg}");
    mainlog::append(instance, "daemon", msg);
}

fn monotonic_usec() -> u64 {
    crate::sys::clock::monotonic_ns() / 1000
}

/// Whether every autostart node has settled (running, failed, stopped, or starting for longer
/// than its ready timeout), and a one-line summary.
fn autostart_settled(client: &Client, config: &Config) -> (bool, String) {
    let status: Vec<NodeStatus> = client.status();
    let mut pending = Vec::new();
    for spec in config.nodes.iter().filter(|n| n.policy.autostart) {
        let Some(n) = status.iter().find(|n| n.name == spec.name) else {
            continue;
        };
        let settled = match n.state {
            NodeState::Running | NodeState::Failed | NodeState::Stopped => true,
            NodeState::Starting => {
                n.pid.is_some() && n.uptime.unwrap_or_default() > spec.policy.ready_timeout
            }
            NodeState::Backoff | NodeState::Stopping => false,
        };
        if !settled {
            pending.push(n.name.clone());
        }
    }
    (pending.is_empty(), summary(client, &pending))
}

fn summary(client: &Client, pending: &[String]) -> String {
    let status = client.status();
    let running = status
        .iter()
        .filter(|n| n.state == NodeState::Running)
        .count();
    let failed: Vec<&str> = status
        .iter()
        .filter(|n| n.state == NodeState::Failed)
        .map(|n| n.name.as_str())
        .collect();
    let mut s = format!(
        "{running} of {} node(s) running; Supervisor pid {}",
        status.len(),
        client.supervisor_pid()
    );
    if !failed.is_empty() {
        s.push_str(&format!("; failed: {}", failed.join(",")));
    }
    if !pending.is_empty() {
        s.push_str(&format!("; not yet up: {}", pending.join(",")));
    }
    s
}

fn watch(poll: &Poll, client: &Client) -> Option<OwnedFd> {
    let fd = crate::sys::pidfd::open(client.supervisor_pid()).ok()?;
    poll.registry()
        .register(
            &mut SourceFd(&fd.as_raw_fd()),
            SUPERVISOR,
            Interest::READABLE,
        )
        .ok()?;
    Some(fd)
}

fn blocked_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// `daemon.lock`, held for the daemon's life and removed (still held) when it returns. A
/// re-execution (SIGUSR2) does not return: the fd is close-on-exec and the new image takes the
/// lock again.
struct DaemonLock(Option<LockFile>);

impl Drop for DaemonLock {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.remove();
        }
    }
}

/// Takes `daemon.lock` for this daemon's life: one daemon Main per instance. Refused (with
/// the first one's pid) if another daemon holds it.
fn take_daemon_lock(instance: &Instance) -> Result<DaemonLock, String> {
    instance.ensure_dirs().map_err(|e| e.to_string())?;
    let path = instance.dir().join("daemon.lock");
    let lock = LockFile::acquire(&path, "daemon").map_err(|e| match e {
        LockError::Held { pid, .. } => format!(
            "instance '{}' already has a daemon Main (pid {pid}); a second one is refused (talk to the instance with `broctld --instance {} status`)",
            instance.name(),
            instance.name()
        ),
        other => format!("daemon lock: {other}"),
    })?;
    Ok(DaemonLock(Some(lock)))
}

/// Runs the daemon until SIGTERM/SIGINT (or a `shutdown` from another Main); returns the exit
/// status.
pub fn run(instance: Instance, config_arg: Option<PathBuf>) -> i32 {
    let notify = Notifier::from_env();
    // Block before any thread exists, so no thread takes these signals the default way.
    let set = blocked_signals();
    if let Err(e) = set.thread_block() {
        eprintln!("broctld: daemon: cannot block signals: {e}");
        return 1;
    }
    let signals = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("broctld: daemon: signalfd: {e}");
            return 1;
        }
    };
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("broctld: daemon: epoll: {e}");
            return 1;
        }
    };
    if let Err(e) = poll.registry().register(
        &mut SourceFd(&signals.as_raw_fd()),
        SIGNALS,
        Interest::READABLE,
    ) {
        eprintln!("broctld: daemon: epoll_ctl: {e}");
        return 1;
    }
    // Held until we exit (or re-execute: the fd is close-on-exec, the new image takes it again).
    let _daemon_lock = match take_daemon_lock(&instance) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("broctld: daemon: {e}");
            notify.status(&e);
            mainlog::append(&instance, "daemon", &format!("refused: {e}"));
            return 1;
        }
    };
    // A running Supervisor's recorded config wins; else --config or the default places.
    let had_supervisor = Client::attach(&instance).ok();
    let spawned = had_supervisor.is_none();
    let recorded = had_supervisor
        .as_ref()
        .and_then(|c| c.config_path().map(Path::to_owned));
    let mut config_path = match recorded.map_or_else(|| find_config(config_arg.as_deref()), Ok) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("broctld: {e}");
            notify.status(&format!("no config: {e}"));
            return 2;
        }
    };
    let mut config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broctld: {e}");
            notify.status(&format!("bad config: {e}"));
            if had_supervisor.is_none() {
                return 2;
            }
            // The running Supervisor loaded an earlier version; carry on with its table.
            Config {
                path: config_path.clone(),
                dir: PathBuf::from("/"),
                nodes: Vec::new(),
                zeek: None,
                cluster: None,
            }
        }
    };
    let mut client = match had_supervisor {
        Some(c) => c,
        None => match Client::attach_or_spawn(&instance, &config_path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("broctld: {e}");
                notify.status(&format!("the Supervisor did not start: {e}"));
                mainlog::append(&instance, "daemon", &format!("failed: {e}"));
                return 1;
            }
        },
    };
    say(
        &instance,
        &format!(
            "pid {}: {} Supervisor pid {} of instance '{}' (config {})",
            std::process::id(),
            if spawned { "started" } else { "attached to" },
            client.supervisor_pid(),
            instance.name(),
            config_path.display()
        ),
    );
    let mut pidfd = watch(&poll, &client);
    let mut ready_sent = false;
    let ready_by = Instant::now()
        + config
            .nodes
            .iter()
            .map(|n| n.policy.ready_timeout)
            .max()
            .unwrap_or_default()
            .saturating_mul(6)
            .clamp(Duration::from_secs(10), READY_WAIT_MAX);
    let mut respawn_at: Option<Instant> = None;
    let mut respawn_delay = Duration::from_millis(500);
    let mut events = Events::with_capacity(16);
    loop {
        // Report readiness once the autostart nodes are up.
        if !ready_sent && respawn_at.is_none() {
            let (settled, text) = autostart_settled(&client, &config);
            if settled || Instant::now() >= ready_by {
                notify.send(&format!(
                    "READY=1\nSTATUS={text}\nMAINPID={}",
                    std::process::id()
                ));
                say(&instance, &format!("ready: {text}"));
                ready_sent = true;
            }
        }
        let timeout = match (ready_sent, respawn_at) {
            (_, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            // Waiting for the autostart nodes, or no pidfd (it could not be opened): look
            // every 100 ms.
            (false, None) => Some(Duration::from_millis(100)),
            (true, None) if pidfd.is_none() => Some(Duration::from_millis(100)),
            (true, None) => None,
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            say(&instance, &format!("epoll_wait failed: {e}; exiting"));
            return 1;
        }
        let mut supervisor_ended = pidfd.is_none() && respawn_at.is_none();
        let mut got = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => loop {
                    match signals.read_signal() {
                        Ok(Some(info)) => got.push(info.ssi_signo as i32),
                        Ok(None) => break,
                        Err(nix::Error::EINTR) => continue,
                        Err(_) => break,
                    }
                },
                SUPERVISOR => supervisor_ended = true,
                _ => {}
            }
        }
        if respawn_at.is_some_and(|at| Instant::now() >= at) {
            respawn_at = None;
            supervisor_ended = true;
        }
        for sig in got {
            match sig {
                libc::SIGTERM | libc::SIGINT => {
                    return shutdown(&instance, &notify, &client, sig);
                }
                libc::SIGHUP => {
                    if let Some(c) = reload(&instance, &notify, &client) {
                        config = c;
                    }
                }
                libc::SIGUSR1 => {
                    say(
                        &instance,
                        &format!(
                            "SIGUSR1: exiting; the Supervisor (pid {}) and every node keep running for the next Main",
                            client.supervisor_pid()
                        ),
                    );
                    notify.send("STOPPING=1\nSTATUS=Main restarting; the nodes keep running");
                    return 0;
                }
                libc::SIGUSR2 => reexec(&instance, &notify),
                _ => {}
            }
        }
        if supervisor_ended && !client.supervisor_alive() {
            if let Some(fd) = pidfd.take() {
                let _ = poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
            }
            if client.supervisor_state() == Some(SupervisorState::Exited) {
                say(
                    &instance,
                    &format!(
                        "the Supervisor (pid {}) exited after a shutdown by another Main; the daemon exits too",
                        client.supervisor_pid()
                    ),
                );
                notify.send("STOPPING=1\nSTATUS=shut down by another Main");
                events::forget_seen(&instance);
                return 0;
            }
            let old = client.supervisor_pid();
            say(
                &instance,
                &format!("the Supervisor (pid {old}) died; attaching to its replacement (started by its guardian, or by us if none runs)"),
            );
            match Client::attach_or_spawn(&instance, &config_path) {
                Ok(c) => {
                    client = c;
                    if let Some(p) = client.config_path() {
                        config_path = p.to_owned();
                    }
                    pidfd = watch(&poll, &client);
                    respawn_delay = Duration::from_millis(500);
                    let running = client.status().iter().filter(|n| n.pid.is_some()).count();
                    say(
                        &instance,
                        &format!(
                            "new Supervisor pid {} (generation {}) holds {running} running node(s)",
                            client.supervisor_pid(),
                            client.generation()
                        ),
                    );
                    notify.status(&summary(&client, &[]));
                }
                Err(e) => {
                    say(
                        &instance,
                        &format!(
                            "could not start a new Supervisor: {e}; trying again in {:?}",
                            respawn_delay
                        ),
                    );
                    notify.status(&format!("no Supervisor: {e}"));
                    respawn_at = Some(Instant::now() + respawn_delay);
                    respawn_delay = (respawn_delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

fn reload(instance: &Instance, notify: &Notifier, client: &Client) -> Option<Config> {
    notify.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    let path = client.config_path().map(Path::to_owned);
    let checked = path.as_deref().map(Config::load);
    let result = match checked {
        Some(Err(e)) => Err(format!("nothing changed: {e}")),
        _ => client
            .command(Opcode::Reload, &[], 0, super::session::REPLY_TIMEOUT)
            .map(|r| r.message)
            .map_err(|e| e.to_string()),
    };
    let config = match &result {
        Ok(msg) => {
            say(instance, &format!("SIGHUP: reloaded: {msg}"));
            path.and_then(|p| Config::load(&p).ok())
        }
        Err(e) => {
            say(instance, &format!("SIGHUP: reload refused: {e}"));
            None
        }
    };
    let status = match &result {
        Ok(msg) => format!("reloaded: {msg}"),
        Err(e) => format!("reload refused: {e}"),
    };
    notify.send(&format!("READY=1\nSTATUS={status}"));
    config
}

fn shutdown(instance: &Instance, notify: &Notifier, client: &Client, sig: i32) -> i32 {
    notify.send("STOPPING=1\nSTATUS=stopping every node, then the Supervisor");
    let name = crate::config::signal_name(sig);
    if !client.supervisor_alive() {
        say(instance, &format!("SIG{name}: no Supervisor runs; exiting"));
        return 0;
    }
    let pid = client.supervisor_pid();
    let running = client.status().iter().filter(|n| n.pid.is_some()).count();
    say(
        instance,
        &format!(
            "SIG{name}: stopping {running} node(s) in reverse start order, then the Supervisor (pid {pid})"
        ),
    );
    if let Err(e) = client.command(Opcode::Shutdown, &[], 0, super::session::REPLY_TIMEOUT) {
        say(instance, &format!("shutdown refused: {e}"));
    }
    let start = Instant::now();
    loop {
        let longest = client
            .status()
            .iter()
            .filter_map(|n| n.deadline_in)
            .max()
            .unwrap_or_default();
        match client.wait_supervisor_exit(Duration::from_millis(500)) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                say(instance, &format!("waiting for the Supervisor: {e}"));
                return 1;
            }
        }
        if start.elapsed() > longest + Duration::from_secs(30) {
            say(
                instance,
                &format!(
                    "the Supervisor (pid {pid}) has not exited {:?} after shutdown; exiting anyway",
                    start.elapsed()
                ),
            );
            return 1;
        }
    }
    events::forget_seen(instance);
    say(
        instance,
        &format!("shutdown complete: {running} node(s) stopped, Supervisor (pid {pid}) exited"),
    );
    0
}

fn reexec(instance: &Instance, notify: &Notifier) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = crate::guardian::installed_exe() else {
        say(
            instance,
            "SIGUSR2: cannot find my executable; not re-executing",
        );
        return;
    };
    say(
        instance,
        &format!(
            "SIGUSR2: re-executing {} in place (pid {}); the Supervisor and every node run on",
            exe.display(),
            std::process::id()
        ),
    );
    notify.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1));
    if let Some(raw) = &notify.raw {
        cmd.env("NOTIFY_SOCKET", raw);
    }
    // `exec` only returns on failure. std resets the signal mask for the new image, which
    // blocks its signals again before it does anything else.
    let e = cmd.exec();
    say(
        instance,
        &format!("SIGUSR2: re-executing failed: {e}; carrying on"),
    );
    notify.send("READY=1");
}
