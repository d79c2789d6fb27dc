//! In-place upgrade: the Supervisor re-executes its (possibly new) binary, keeping its pid, its
//! children, its lock and its state.
//!
//! Before `execve` it writes a *handoff* file, a layout-independent text copy of every node's
//! identity and history, and clears `FD_CLOEXEC` on the lock fd, whose number it passes in the
//! environment. The new program takes over the region if it understands its layout; if the
//! layout differs (a new binary with another ABI), it never reads the old region: it rebuilds a
//! new one from the handoff. Either way it adopts the nodes, which are still its own children,
//! so their exit statuses are collected as usual.

use super::Supervisor;
use crate::log;
use crate::protocol::event::{Event, EventKind, NO_NODE};
use crate::protocol::node::{Exit, NodeRecord, NodeState};
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Environment variable carrying the inherited lock fd number to the new program.
pub const LOCK_FD_ENV: &str = "BROCTLD_UPGRADE_LOCK_FD";

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
    /// Re-executes our binary in place; returns only if that failed (and then runs on as before).
    pub(super) fn reexec(&mut self) {
        let handoff = self.instance.dir().join("handoff");
        let records: Vec<NodeRecord> = (0..self.nodes.len()).map(|i| self.record(i)).collect();
        let Some(lock_fd) = self.lock.as_ref().map(|l| l.file().as_raw_fd()) else {
            return;
        };
        let guardian_fd = self.guardian.as_ref().and_then(|g| g.pipe_fd());
        let guardian_pid = self.guardian.as_ref().and_then(|g| g.pipe_pid());
        let fail = |sup: &mut Supervisor, what: &str, e: io::Error| {
            log!("upgrade-supervisor failed ({what}: {e}); running on unchanged");
            let _ = crate::sys::fdflags::set_cloexec(lock_fd, true);
            if let Some(fd) = guardian_fd {
                let _ = crate::sys::fdflags::set_cloexec(fd, true);
            }
            let _ = std::fs::remove_file(sup.instance.dir().join("handoff"));
            let mut ev = Event::now(EventKind::UpgradeFailed, NO_NODE, std::process::id());
            ev.a = e.raw_os_error().unwrap_or(0) as u64;
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
        let args = vec![
            "--instance".to_string(),
            self.instance.name().to_string(),
            "--runtime-dir".to_string(),
            self.instance.runtime_dir().display().to_string(),
            "--config".to_string(),
            self.config_path.display().to_string(),
            "__supervisor".to_string(),
        ];
        log!("upgrade-supervisor: re-executing {}", self.exe.display());
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
