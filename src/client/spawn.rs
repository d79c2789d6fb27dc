//! Starting the Supervisor: the same executable in its internal mode, fully detached from the
//! Main that starts it (double fork into its own session, stdio to its log file, no inherited
//! fd but one readiness pipe on which it says `ready PID` or `error: WHY`).

use super::ClientError;
use crate::instance::Instance;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// Starts a Supervisor for `instance` with the config at `config`; returns its pid once it
/// serves commands. If another Main started one at the same moment, that one is used.
pub fn spawn_supervisor(
    instance: &Instance,
    config: &Path,
    timeout: Duration,
) -> Result<u32, ClientError> {
    instance.ensure_dirs()?;
    let config = if config.is_absolute() {
        config.to_owned()
    } else {
        std::env::current_dir()
            .map_err(io("current dir"))?
            .join(config)
    };
    let log_path = instance.log_path();
    let log = crate::sys::checked::open_log(&log_path).map_err(|e| ClientError::Spawn {
        message: format!("cannot open its log: {e}"),
    })?;
    let (mut rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map(|(r, w)| (std::fs::File::from(r), w))
        .map_err(|e| io("pipe2")(e.into()))?;
    let exe = std::env::current_exe().map_err(io("finding the broctld executable"))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--instance")
        .arg(instance.name())
        .arg("--runtime-dir")
        .arg(instance.runtime_dir())
        .arg("--config")
        .arg(&config)
        .arg("__supervisor")
        .arg("--notify-fd")
        .arg("3")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("dup log fd"))?)
        .stderr(log);
    let wfd = wr.as_raw_fd();
    // SAFETY: runs between fork and exec; only async-signal-safe calls (setsid, close_range,
    // dup2, fcntl, fork, _exit) on an fd number prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if wfd == 3 {
                let fl = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
            } else if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Double fork: the Supervisor is not our child, so it is never our zombie and it
            // is reparented away from us at once.
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut child = cmd.spawn().map_err(|e| ClientError::Spawn {
        message: format!("cannot run {}: {e}", exe.display()),
    })?;
    drop(wr);
    let _ = child.wait();

    // Read its one line, with a timeout.
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            return Err(ClientError::Spawn {
                message: format!(
                    "no word from it within {timeout:?}; see {}",
                    log_path.display()
                ),
            });
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io("poll")(e));
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                if buf.contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io("reading the Supervisor's readiness pipe")(e)),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("").trim();
    if let Some(pid) = line.strip_prefix("ready ") {
        return pid.parse().map_err(|_| ClientError::Spawn {
            message: format!("unexpected readiness line '{line}'"),
        });
    }
    if let Some(msg) = line.strip_prefix("error: ") {
        // Two Mains raced to start it: the other one won, which is fine.
        if msg.contains("already has a Supervisor") {
            return Ok(0);
        }
        return Err(ClientError::Spawn {
            message: msg.to_owned(),
        });
    }
    Err(ClientError::Spawn {
        message: format!(
            "it exited during startup without saying why; see {}",
            log_path.display()
        ),
    })
}
