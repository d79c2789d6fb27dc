//! In-place upgrade: the Supervisor re-executes its (possibly new) binary, keeping its pid, its
//! children, its lock and its state.
//!
//! Nothing is re-executed unchecked. The binary at the path is first run as a child in probe
//! mode (`broctld __upgrade-probe`, in its own process group, killed if we die): it must print
//! its version, ABI and handoff format on a pipe and exit 0 within [`PROBE_DEADLINE`]. The
//! loop goes on meanwhile (nodes are restarted, commands answered); the `upgrade-supervisor`
//! command is answered when the probe ends. A binary that hangs, crashes, exits non-zero, is
//! truncated, or answers with a handoff format we do not write is refused with a reply saying
//! so and an `upgrade-failed` event, and this image runs on: only then is it `execve`d.
//!
//! Should the new image stall anyway (it passed the probe but never serves), nothing shows it
//! as serving: before `execve` the region's state goes back to `starting` (a Main then
//! verifies nothing and says the Supervisor does not serve), and the guardian is told on its
//! readiness pipe (`upgrading`); it kills a Supervisor that does not say `ready` again within
//! its deadline and starts the last image that served in its place (see `guardian`).
//!
//! Before `execve` it writes a *handoff* file, a layout-independent text copy of every node's
//! identity and history, and clears `FD_CLOEXEC` on the lock fd, whose number it passes in the
//! environment. The new program takes over the region if it understands its layout; if the
//! layout differs (a new binary with another ABI), it never reads the old region: it rebuilds a
//! new one from the handoff. Either way it adopts the nodes, which are still its own children,
//! so their exit statuses are collected as usual.

use super::Supervisor;
use crate::log;
use crate::protocol::event::{upgrade_failure, Event, EventKind, NO_NODE};
use crate::protocol::layout::{SupervisorState, ABI_VERSION, LAYOUT_HASH};
use crate::protocol::mailbox::ReplyStatus;
use crate::protocol::node::{Exit, NodeRecord, NodeState};
use crate::sys::clock;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Environment variable carrying the inherited lock fd number to the new program.
pub const LOCK_FD_ENV: &str = "BROCTLD_UPGRADE_LOCK_FD";

/// The only argument of probe mode: `broctld __upgrade-probe` prints [`probe_answer`] and
/// exits 0, touching nothing (no runtime dir, no region, no lock).
pub const PROBE_ARG: &str = "__upgrade-probe";

/// The handoff file format this build writes (and reads): `# broctld handoff v1`.
pub const HANDOFF_VERSION: u32 = 1;

/// How long a new binary has to answer its probe.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The line a binary in probe mode prints: who it is and what it can take over from.
pub fn probe_answer() -> String {
    format!(
        "broctld-upgrade-probe 1 version={} abi={ABI_VERSION} layout={LAYOUT_HASH:#018x} handoff={HANDOFF_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// What a probe's answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// The new build's version.
    pub version: String,
    /// Its region ABI (another one is fine: it then rebuilds the region from the handoff).
    pub abi: u32,
    /// The handoff format it reads.
    pub handoff: u32,
}

/// Parses the first line of a probe's output; `None` if it is not a probe answer.
pub fn parse_probe_answer(text: &str) -> Option<ProbeAnswer> {
    let line = text.lines().next()?;
    let rest = line.strip_prefix("broctld-upgrade-probe 1 ")?;
    let mut version = None;
    let mut abi = None;
    let mut handoff = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("version", v)) => version = Some(v.to_owned()),
            Some(("abi", v)) => abi = v.parse().ok(),
            Some(("handoff", v)) => handoff = v.parse().ok(),
            _ => {}
        }
    }
    Some(ProbeAnswer {
        version: version?,
        abi: abi?,
        handoff: handoff?,
    })
}

/// A running probe of the binary an `upgrade-supervisor` would execute.
#[derive(Debug)]
pub(super) struct Probe {
    pid: u32,
    out: File,
    /// When it is killed if it has not ended (mono ns).
    deadline: u64,
    timed_out: bool,
}

/// The upgrade's state between loop turns.
#[derive(Debug, Default)]
pub(super) struct UpgradeState {
    probe: Option<Probe>,
    /// The guardian's readiness pipe, kept after `ready` so it hears of upgrades: `upgrading`
    /// before an `execve`, and `ready PID` from the new image (or from us if the exec failed).
    notify: Option<File>,
}

/// One line per node: tab-separated fields.
pub fn write_handoff(path: &Path, records: &[NodeRecord]) -> io::Result<()> {
    let mut text = String::from("# broctld handoff v1\n");
    for r in records {
        let (kind, value, core) = Exit::encode(r.last_exit);
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.name,
            r.pid.unwrap_or(0),
            r.pid_start,
            r.started_mono_ns,
            r.started_wall_ms,
            r.restarts,
            kind,
            value,
            core as u8,
            r.state as u8,
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Reads a handoff file; unparsable lines are skipped.
pub fn read_handoff(path: &Path) -> io::Result<HashMap<String, NodeRecord>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 10 {
            continue;
        }
        let num = |i: usize| f[i].parse::<u64>().ok();
        let (Some(pid), Some(start), Some(mono), Some(wall), Some(restarts)) =
            (num(1), num(2), num(3), num(4), num(5))
        else {
            continue;
        };
        let exit = Exit::decode(
            f[6].parse().unwrap_or(0),
            f[7].parse().unwrap_or(0),
            f[8] == "1",
        );
        out.insert(
            f[0].to_owned(),
            NodeRecord {
                name: f[0].to_owned(),
                node_type: 0,
                state: NodeState::from_code(f[9].parse().unwrap_or(0))
                    .unwrap_or(NodeState::Running),
                pid: (pid != 0).then_some(pid as u32),
                pid_start: start,
                started_mono_ns: mono,
                started_wall_ms: wall,
                restarts: restarts as u32,
                last_exit: exit,
                deadline_mono_ns: 0,
                intent: Default::default(),
                blocked_by: None,
            },
        );
    }
    Ok(out)
}

/// Checks that `exe` can be executed, so a doomed upgrade is refused before anything changes.
pub fn check_executable(exe: &Path) -> io::Result<()> {
    let c = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: a NUL-terminated path and a mode.
    crate::syscall!(access(c.as_ptr(), libc::X_OK)).map(|_| ())
}

/// Replaces this program with `exe` running `args`, with our environment plus `extra_env`;
/// returns only if `execve` failed. The signal mask (our loop's signals stay blocked) and every
/// fd without `FD_CLOEXEC` survive.
pub fn exec(exe: &Path, args: &[String], extra_env: &[(&str, String)]) -> io::Error {
    let Ok(path) = CString::new(exe.as_os_str().as_bytes()) else {
        return io::Error::new(io::ErrorKind::InvalidInput, "NUL in path");
    };
    let mut argv: Vec<CString> = vec![path.clone()];
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(c) => argv.push(c),
            Err(_) => return io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"),
        }
    }
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !extra_env.iter().any(|(e, _)| k == e))
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    for (k, v) in extra_env {
        match CString::new(format!("{k}={v}")) {
            Ok(c) => envp.push(c),
            Err(_) => return io::Error::new(io::ErrorKind::InvalidInput, "NUL in environment"),
        }
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: NUL-terminated strings in null-terminated arrays, all alive across the call.
    // libc's execve, unlike std's Command::exec, leaves the signal mask alone, so the loop's
    // signals stay blocked (and pending ones pending) into the new image.
    unsafe { libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

impl Supervisor {
    /// Keeps the guardian's readiness pipe (after `ready` was written on it): close-on-exec
    /// (nodes never get it), cleared only for an upgrade's `execve`.
    pub(super) fn keep_guardian_notify(&mut self, f: File) {
        let _ = crate::sys::fdflags::set_cloexec(f.as_raw_fd(), true);
        // A guardian that stopped reading never blocks us (a line it misses is dropped).
        let _ = crate::sys::fdflags::set_nonblocking(f.as_raw_fd(), true);
        self.upgrade.notify = Some(f);
    }

    /// Tells the guardian `line` on its readiness pipe, if it listens (a guardian that only
    /// watches us, or an older one, does not: the write then fails, which is fine).
    fn tell_guardian(&mut self, line: &str) {
        if let Some(f) = self.upgrade.notify.as_mut() {
            if writeln!(f, "{line}").is_err() {
                self.upgrade.notify = None;
            }
        }
    }

    /// `upgrade-supervisor`: starts the probe of the binary at our path (the answer says so);
    /// the exec follows only once it has answered (see [`Self::probe_ended`]), and a refusal
    /// is an `upgrade-failed` event saying why, which the asking Main reports.
    pub(super) fn request_upgrade(&mut self) -> (ReplyStatus, String) {
        if let Some(p) = &self.upgrade.probe {
            return (
                ReplyStatus::Rejected,
                format!("an upgrade is being checked already (probe pid {})", p.pid),
            );
        }
        if let Err(e) = check_executable(&self.exe) {
            return (
                ReplyStatus::Rejected,
                format!("cannot re-execute {}: {e}", self.exe.display()),
            );
        }
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg(PROBE_ARG)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            // What it says goes to our log (stderr).
            .stderr(std::process::Stdio::inherit())
            .current_dir("/")
            // Its own group: whatever it starts is killed with it.
            .process_group(0);
        // `execve` itself (a file that is no program fails with its real error, never run as
        // a shell script), and a hung probe never outlives us.
        if let Err(e) = crate::sys::exec::exactly(&mut cmd, &self.exe, &[PROBE_ARG]) {
            return (
                ReplyStatus::Rejected,
                format!("cannot re-execute {}: {e}", self.exe.display()),
            );
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // Its exec failed (a truncated or foreign file), or we could not fork.
                log!(
                    "upgrade-supervisor refused: cannot run {} for its version probe: {e}; not re-executed, this Supervisor runs on",
                    self.exe.display()
                );
                let mut ev = Event::now(EventKind::UpgradeFailed, NO_NODE, std::process::id());
                ev.a = PROBE_DEADLINE.as_millis() as u64;
                ev.b = upgrade_failure::PROBE_FAILED;
                ev.exit = Some(Exit::SpawnFailed(e.raw_os_error().unwrap_or(0)));
                self.event(ev);
                return (
                    ReplyStatus::Rejected,
                    format!("its version probe failed (cannot run it: {e})"),
                );
            }
        };
        let pid = child.id();
        // Reaped with every other child (SIGCHLD): see `probe_ended`.
        let out = File::from(std::os::fd::OwnedFd::from(
            child.stdout.take().expect("stdout was piped"),
        ));
        drop(child);
        let _ = crate::sys::fdflags::set_nonblocking(out.as_raw_fd(), true);
        log!(
            "upgrade-supervisor: checking {} first (`{PROBE_ARG}`, pid {pid}, {} s to answer)",
            self.exe.display(),
            PROBE_DEADLINE.as_secs()
        );
        self.upgrade.probe = Some(Probe {
            pid,
            out,
            deadline: clock::monotonic_ns() + PROBE_DEADLINE.as_nanos() as u64,
            timed_out: false,
        });
        (
            ReplyStatus::Ok,
            format!("checking {}, then re-executing it", self.exe.display()),
        )
    }

    /// When the running probe is due to be killed, if one runs.
    pub(super) fn upgrade_probe_deadline(&self) -> Option<u64> {
        self.upgrade
            .probe
            .as_ref()
            .filter(|p| !p.timed_out)
            .map(|p| p.deadline)
    }

    /// End of every loop turn (everything reaped this turn handled): a probe past its
    /// deadline is killed with its group (once reaped, the upgrade is refused); a probe left
    /// by a shutdown is killed; an upgrade whose probe passed is executed.
    pub(super) fn upgrade_turn(&mut self) {
        let now = clock::monotonic_ns();
        let shutting_down = self.machine.shutting_down();
        if let Some(p) = self.upgrade.probe.as_mut() {
            if !p.timed_out && (now >= p.deadline || shutting_down) {
                p.timed_out = true;
                if shutting_down {
                    log!("upgrade-supervisor: shutting down; the probe (pid {}) is killed and nothing re-executed", p.pid);
                } else {
                    log!(
                        "upgrade-supervisor: {} has not answered its probe in {} s; killing it (pid {})",
                        self.exe.display(),
                        PROBE_DEADLINE.as_secs(),
                        p.pid
                    );
                }
                let _ = super::spawn::signal_group(p.pid, libc::SIGKILL);
            }
        }
        if std::mem::take(&mut self.upgrade_requested) && !self.machine.shutting_down() {
            self.reexec();
        }
    }

    /// A reaped child: if it was the probe, its verdict decides (an exec at the end of this
    /// loop turn, or an `upgrade-failed` event saying why not). Returns whether it was.
    pub(super) fn probe_ended(&mut self, pid: u32, exit: Exit) -> bool {
        if self.upgrade.probe.as_ref().map(|p| p.pid) != Some(pid) {
            return false;
        }
        let mut p = self.upgrade.probe.take().expect("checked above");
        // Anything it left behind in its group goes too.
        let _ = super::spawn::signal_group_only(pid, libc::SIGKILL);
        let mut text = Vec::new();
        let mut chunk = [0u8; 1024];
        while text.len() < 4096 {
            match p.out.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => text.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&text);
        let exe = self.exe.display().to_string();
        let verdict = if p.timed_out {
            Err((
                upgrade_failure::PROBE_TIMED_OUT,
                format!(
                    "it did not answer its version probe within {} s",
                    PROBE_DEADLINE.as_secs()
                ),
            ))
        } else if exit != Exit::Code(0) {
            Err((
                upgrade_failure::PROBE_FAILED,
                format!("its version probe failed ({})", exit.describe()),
            ))
        } else {
            match parse_probe_answer(&text) {
                None => Err((
                    upgrade_failure::PROBE_ANSWER,
                    "it exited 0 without answering its version probe".to_owned(),
                )),
                Some(a) if a.handoff != HANDOFF_VERSION => Err((
                    upgrade_failure::PROBE_ANSWER,
                    format!(
                        "it reads handoff v{}, this Supervisor writes v{HANDOFF_VERSION}",
                        a.handoff
                    ),
                )),
                Some(a) => Ok(a),
            }
        };
        match verdict {
            Ok(a) if !self.machine.shutting_down() => {
                log!(
                    "upgrade-supervisor: {exe} answered its probe (broctld {}, ABI {}); re-executing it",
                    a.version,
                    a.abi
                );
                self.upgrade_requested = true;
            }
            Ok(_) => {}
            Err((why, msg)) => {
                log!("upgrade-supervisor refused: {exe}: {msg}; not re-executed, this Supervisor runs on");
                let mut ev = Event::now(EventKind::UpgradeFailed, NO_NODE, std::process::id());
                ev.a = PROBE_DEADLINE.as_millis() as u64;
                ev.b = why;
                ev.exit = Some(exit);
                self.event(ev);
            }
        }
        true
    }

    /// Re-executes our binary in place; returns only if that failed (and then runs on as before).
    pub(super) fn reexec(&mut self) {
        let handoff = self.instance.dir().join("handoff");
        let records: Vec<NodeRecord> = (0..self.nodes.len()).map(|i| self.record(i)).collect();
        let Some(lock_fd) = self.lock.as_ref().map(|l| l.file().as_raw_fd()) else {
            return;
        };
        let guardian_fd = self.guardian.as_ref().and_then(|g| g.pipe_fd());
        let guardian_pid = self.guardian.as_ref().and_then(|g| g.pipe_pid());
        let notify_fd = self.upgrade.notify.as_ref().map(|f| f.as_raw_fd());
        let fail = |sup: &mut Supervisor, what: &str, e: io::Error| {
            log!("upgrade-supervisor failed ({what}: {e}); running on unchanged");
            let _ = crate::sys::fdflags::set_cloexec(lock_fd, true);
            for fd in [guardian_fd, notify_fd].into_iter().flatten() {
                let _ = crate::sys::fdflags::set_cloexec(fd, true);
            }
            let _ = std::fs::remove_file(sup.instance.dir().join("handoff"));
            // We serve again.
            let h = sup.shared.header();
            h.state
                .store(SupervisorState::Ready as u32, Ordering::Release);
            crate::sys::futex::wake(&h.state, i32::MAX);
            sup.tell_guardian(&format!("ready {}", std::process::id()));
            let mut ev = Event::now(EventKind::UpgradeFailed, NO_NODE, std::process::id());
            ev.a = e.raw_os_error().unwrap_or(0) as u64;
            ev.b = upgrade_failure::EXEC;
            sup.event(ev);
        };
        if let Err(e) = write_handoff(&handoff, &records) {
            return fail(self, "writing the handoff", e);
        }
        if let Err(e) = crate::sys::fdflags::set_cloexec(lock_fd, false) {
            return fail(self, "keeping the lock across exec", e);
        }
        let mut env = vec![(LOCK_FD_ENV, lock_fd.to_string())];
        if let Some(fd) = guardian_fd {
            if let Err(e) = crate::sys::fdflags::set_cloexec(fd, false) {
                return fail(self, "keeping the guardian's report pipe across exec", e);
            }
            env.push((crate::guardian::report::FD_ENV, fd.to_string()));
            if let Some(pid) = guardian_pid {
                env.push((crate::guardian::report::PID_ENV, pid.to_string()));
            }
        }
        let mut args = vec![
            "--instance".to_string(),
            self.instance.name().to_string(),
            "--runtime-dir".to_string(),
            self.instance.runtime_dir().display().to_string(),
            "--config".to_string(),
            self.config_path.display().to_string(),
            "__supervisor".to_string(),
        ];
        // The guardian's readiness pipe: the new image says `ready` on it once it serves.
        if let Some(fd) = notify_fd {
            if crate::sys::fdflags::set_cloexec(fd, false).is_ok() {
                args.extend(["--notify-fd".to_string(), fd.to_string()]);
            }
        }
        log!("upgrade-supervisor: re-executing {}", self.exe.display());
        // Until the new image has taken over, nothing here is served: a Main verifies nothing
        // meanwhile (and says so if it never comes back), and the guardian's deadline runs.
        let h = self.shared.header();
        h.state
            .store(SupervisorState::Starting as u32, Ordering::Release);
        crate::sys::futex::wake(&h.state, i32::MAX);
        self.tell_guardian("upgrading");
        // The new image runs the running config saved in the runtime dir (the exact bytes this
        // one loaded), never the file on disk, which may have been edited into an error.
        let e = exec(&self.exe, &args, &env);
        fail(self, "execve", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answer_parses_and_junk_does_not() {
        let a = parse_probe_answer(&probe_answer()).expect("our own answer");
        assert_eq!(a.abi, ABI_VERSION);
        assert_eq!(a.handoff, HANDOFF_VERSION);
        assert_eq!(a.version, env!("CARGO_PKG_VERSION"));
        for junk in [
            "",
            "hello\n",
            "broctld-upgrade-probe 2 version=1 abi=3 handoff=1\n",
            "broctld-upgrade-probe 1 version=1 abi=x handoff=1\n",
            "broctld-upgrade-probe 1 version=1 abi=3\n",
        ] {
            assert_eq!(parse_probe_answer(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn handoff_round_trips() {
        let dir = std::env::temp_dir().join(format!("broctld-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("handoff");
        let r = NodeRecord {
            name: "worker-1".into(),
            node_type: 0,
            state: NodeState::Running,
            pid: Some(1234),
            pid_start: 99,
            started_mono_ns: 5,
            started_wall_ms: 6,
            restarts: 7,
            last_exit: Some(Exit::Signal {
                signal: 9,
                core: false,
            }),
            deadline_mono_ns: 0,
            intent: Default::default(),
            blocked_by: None,
        };
        write_handoff(&p, std::slice::from_ref(&r)).unwrap();
        let back = read_handoff(&p).unwrap();
        assert_eq!(back.get("worker-1"), Some(&r));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
