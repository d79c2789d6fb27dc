//! Starting the Supervisor: the same executable in its internal modes, fully detached from the
//! Main that starts it. The Main starts a guardian (double fork into its own session, stdio to
//! the log file, no inherited fd but one readiness pipe), which starts the Supervisor as its
//! child and relays its one line: `ready PID` or `error: WHY`. If a guardian already holds the
//! instance (its Supervisor just died and is being replaced), no second one is started: the
//! Main waits for that guardian's Supervisor.

use super::ClientError;
use crate::instance::Instance;
use crate::sys::lockfile::{LockFile, Probe};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// Waits (until `deadline`) for the Supervisor that the guardian `guardian` is starting to hold
/// the instance lock. `Ok(true)` once it does, `Ok(false)` if the guardian is gone.
fn wait_for_guardians_supervisor(
    instance: &Instance,
    guardian: u32,
    deadline: Instant,
) -> Result<bool, ClientError> {
    loop {
        if matches!(LockFile::probe(&instance.lock_path())?, Probe::Held { .. }) {
            return Ok(true);
        }
        if crate::guardian::holder(instance).is_none() {
            return Ok(false);
        }
        // A guardian that cannot start one soon: say so now, not after `deadline`.
        if let Some(why) = guardian_stalled(instance, guardian) {
            return Err(ClientError::Spawn {
                message: format!("{why}; see {}", instance.log_path().display()),
            });
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Spawn {
                message: format!(
                    "the guardian (pid {guardian}) has not started a Supervisor; see {}",
                    instance.log_path().display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Longest wait for a guardian's next attempt at starting a Supervisor: one further off than
/// this is reported at once (its last attempt failed; waiting would not make a command's
/// answer any truer, and `status` would hang for up to [`crate::guardian::RETRY_MAX`]).
const NEXT_ATTEMPT_WAIT: Duration = Duration::from_secs(1);

/// Why the guardian `pid` will not start a Supervisor soon, if it will not: it is stopped
/// (`kill -STOP`, a debugger), or its last attempt failed and it waits before the next one.
fn guardian_stalled(instance: &Instance, pid: u32) -> Option<String> {
    if let Ok(Some(st)) = crate::sys::procstat::stat(pid) {
        // `T` only: `t` (a tracing stop) also shows for a moment at every syscall of a
        // guardian under strace, which is not stuck.
        if st.state == 'T' {
            return Some(format!(
                "the guardian (pid {pid}) is stopped (SIGSTOP), so no Supervisor is started; `kill -CONT {pid}` resumes it"
            ));
        }
    }
    let (left, why) = crate::guardian::next_attempt(instance)?;
    (left > NEXT_ATTEMPT_WAIT).then(|| {
        format!(
            "the guardian (pid {pid}) could not start a Supervisor ({why}) and tries again in {:.1} s",
            left.as_secs_f64()
        )
    })
}

/// How far a starting Supervisor has got: the events it has published (each node it spawns
/// adds some). `None` while it has no region (it is still reading its config).
fn start_progress(instance: &Instance) -> Option<u64> {
    let shared =
        crate::protocol::layout::Shared::open_owned(&instance.shm_name(), &instance.identity())
            .ok()?;
    Some(shared.ring().head())
}

/// Starts a Supervisor for `instance` with the config at `config`; returns its pid once it
/// serves commands (0 if another Main or the guardian started it: attach to find it).
/// `timeout` bounds a start that makes no progress: a Supervisor that spawns its nodes (ten
/// thousand take longer than any fixed bound) gets another `timeout` each time the events
/// it publishes have moved on.
pub fn spawn_supervisor(
    instance: &Instance,
    config: &Path,
    timeout: Duration,
) -> Result<u32, ClientError> {
    instance.ensure_dirs()?;
    let mut deadline = Instant::now() + timeout;
    if let Some(g) = crate::guardian::holder(instance) {
        if wait_for_guardians_supervisor(instance, g, deadline)? {
            return Ok(0);
        }
    }
    let config = if config.is_absolute() {
        config.to_owned()
    } else {
        std::env::current_dir()
            .map_err(io("current dir"))?
            .join(config)
    };
    let log_path = instance.log_path();
    let (mut rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map(|(r, w)| (std::fs::File::from(r), w))
        .map_err(|e| io("pipe2")(e.into()))?;
    crate::guardian::launch(instance, &config, Some(&wr), None).map_err(|e| {
        ClientError::Spawn {
            message: format!("cannot start its guardian: {e}"),
        }
    })?;
    drop(wr);

    // Read its one line, with a timeout.
    let mut buf = Vec::new();
    let mut progress = None;
    loop {
        let mut left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let now = start_progress(instance);
            if now.is_none() || now == progress {
                return Err(ClientError::Spawn {
                    message: format!(
                        "no word from it within {timeout:?}; see {}",
                        log_path.display()
                    ),
                });
            }
            progress = now;
            deadline = Instant::now() + timeout;
            left = timeout;
        }
        let mut pfd = libc::pollfd {
            fd: rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            continue;
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
            if let Some(g) = crate::guardian::holder(instance) {
                wait_for_guardians_supervisor(instance, g, deadline)?;
            }
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
