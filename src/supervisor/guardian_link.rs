//! The Supervisor's link to the guardian: its report pipe (read here; the reports are applied
//! in `adopted_exits.rs`) and, whenever the guardian is gone, starting a new one in watch
//! mode so the chain is whole again. That one is started beside us (`CLONE_PARENT`: a double fork from a child subreaper
//! would leave it our child) with a report pipe of its own, whose end of file tells us when it
//! dies in turn: every guardian death is noticed, not only the first.

use super::source::Source;
use super::*;
use crate::guardian::report::{self, Report};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

/// Token of the guardian's fd in the loop's poll (its report pipe, its pidfd, or a retry
/// timer, whichever [`GuardianLink`] holds).
const REPORTS: Source = Source::Reports;

/// A guardian we started that is gone within this time died by itself: the next one waits.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// The read end of a guardian's report pipe.
struct Reports {
    file: File,
    /// The guardian's pid (our parent when it spawned us; 0 if unknown).
    pid: u32,
    buf: Vec<u8>,
    open: bool,
}

enum State {
    /// Linked: the report pipe of our guardian (the one that started us, or one we started).
    Pipe(Reports),
    /// A guardian we have no pipe to (it holds the instance, e.g. it started and found a
    /// Supervisor already there): its pidfd, readable when it dies.
    Watch { pid: u32, fd: OwnedFd },
    /// No guardian could be started: a timer says when to try again.
    Retry { timer: TimerFd },
}

/// Our link to the guardian, always one of the three [`State`]s while the Supervisor runs.
pub(super) struct GuardianLink {
    state: State,
    /// The delay before the next start of a guardian if the last one died at once.
    delay: Duration,
    /// When we last started one.
    launched: Option<Instant>,
}

impl GuardianLink {
    /// The link our guardian passed us (fd number in [`report::FD_ENV`]), checked to be a pipe;
    /// `None` if we were started without one. Removes the variables, so nodes do not see them.
    pub(super) fn from_env() -> Option<GuardianLink> {
        let fd = std::env::var(report::FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok());
        let named = std::env::var(report::PID_ENV)
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        // Single-threaded still: nothing reads the environment concurrently.
        std::env::remove_var(report::FD_ENV);
        std::env::remove_var(report::PID_ENV);
        let fd = fd.filter(|&fd| fd > 2)?;
        // SAFETY: fstat on an fd number only fills in the buffer (EBADF if it is not open).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above; a valid out-pointer.
        if crate::syscall!(fstat(fd, &mut st)).is_err()
            || st.st_mode & libc::S_IFMT != libc::S_IFIFO
        {
            log!(
                "{}={fd} is not a pipe; running without a guardian",
                report::FD_ENV
            );
            return None;
        }
        if crate::sys::fdflags::set_cloexec(fd, true).is_err() {
            return None;
        }
        // SAFETY: the guardian handed this fd to us by number (or our previous program image
        // did, across an upgrade's exec); nothing else in this image owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: fcntl on a live fd with integer flags.
        let fl = crate::syscall!(fcntl(fd, libc::F_GETFL)).ok()?;
        // SAFETY: as above.
        crate::syscall!(fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)).ok()?;
        let parent = nix::unistd::getppid().as_raw() as u32;
        let pid = named.unwrap_or(if parent > 1 { parent } else { 0 });
        Some(GuardianLink::linked(Reports {
            file,
            pid,
            buf: Vec::new(),
            open: true,
        }))
    }

    fn linked(r: Reports) -> GuardianLink {
        GuardianLink {
            state: State::Pipe(r),
            delay: Duration::ZERO,
            launched: None,
        }
    }

    /// The fd registered in the loop under [`REPORTS`].
    fn raw_fd(&self) -> RawFd {
        match &self.state {
            State::Pipe(r) => r.file.as_raw_fd(),
            State::Watch { fd, .. } => fd.as_raw_fd(),
            State::Retry { timer } => timer.as_fd().as_raw_fd(),
        }
    }

    /// The report pipe's fd, if linked (kept across an upgrade's exec).
    pub(super) fn pipe_fd(&self) -> Option<RawFd> {
        match &self.state {
            State::Pipe(r) => Some(r.file.as_raw_fd()),
            _ => None,
        }
    }

    /// The pid of the guardian at the report pipe's other end, if linked and known.
    pub(super) fn pipe_pid(&self) -> Option<u32> {
        match &self.state {
            State::Pipe(r) if r.pid != 0 => Some(r.pid),
            _ => None,
        }
    }

    /// The linked report pipe, if it is still open.
    fn reports(&mut self) -> Option<&mut Reports> {
        match &mut self.state {
            State::Pipe(r) if r.open => Some(r),
            _ => None,
        }
    }
}

impl Reports {
    /// Every complete report available now (never blocks). Notes end of file: the guardian is
    /// gone.
    fn read_available(&mut self) -> Vec<Report> {
        let mut chunk = [0u8; 4096];
        while self.open {
            match self.file.read(&mut chunk) {
                Ok(0) => self.open = false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // EAGAIN: nothing more for now
            }
        }
        report::take_reports(&mut self.buf)
    }
}

impl Supervisor {
    /// Registers the report pipe in the loop.
    pub(super) fn connect_guardian(&mut self) {
        let Some(link) = self.guardian.as_ref() else {
            self.restore_guardian("none was passed to us");
            return;
        };
        let fd = link.raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), REPORTS.token(), Interest::READABLE)
        {
            log!("cannot watch the guardian's report pipe: {e}");
        }
    }

    /// Takeover: reads the reports already waiting (of nodes that died while no Supervisor
    /// lived), for [`Self::take_reported_exit`], and the exits predecessors recorded.
    pub(super) fn read_early_reports(&mut self) {
        // What predecessors recorded, read before the pipe (its reports are applied at once).
        self.recorded_exits = self.exits_in_ring();
        let early = self
            .guardian
            .as_mut()
            .and_then(GuardianLink::reports)
            .map(Reports::read_available)
            .unwrap_or_default();
        self.reported.extend(early.into_iter().map(|r| (r.pid, r)));
    }

    /// Loop: the guardian's fd is readable (or a caller wants the reports now). Linked: reads
    /// and applies every waiting report, and if the guardian is gone, handles what it can no
    /// longer report and starts a new guardian. Watching an unlinked guardian: starts a new one
    /// once it is gone. Waiting to retry: tries again once the time has come.
    pub(super) fn read_reports(&mut self) {
        let Some(link) = self.guardian.as_mut() else {
            return;
        };
        let why = match &mut link.state {
            State::Pipe(r) => {
                let got = r.read_available();
                let open = r.open;
                for rep in got {
                    self.apply_report(rep);
                }
                if open {
                    return;
                }
                format!(
                    "the guardian (pid {}) is gone",
                    self.guardian
                        .as_ref()
                        .and_then(GuardianLink::pipe_pid)
                        .unwrap_or(0)
                )
            }
            State::Watch { pid, fd } => {
                if !pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(true) {
                    return;
                }
                format!("guardian pid {pid} is gone")
            }
            State::Retry { timer } => {
                if matches!(timer.get(), Ok(Some(_))) {
                    return; // not yet
                }
                "trying again".to_owned()
            }
        };
        let link = self.guardian.take();
        if let Some(l) = &link {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.raw_fd()));
        }
        if matches!(link.as_ref().map(|l| &l.state), Some(State::Pipe(_))) {
            // The reports still to come are gone with it: nodes that ended and waited for one
            // are settled from /proc (their status while they are still a zombie), else
            // recorded `unknown`.
            self.taken.clear();
            let ended: Vec<(usize, u32)> = (0..self.nodes.len())
                .filter_map(|i| Some((i, self.main_pid(i)?)))
                .filter(|&(i, pid)| {
                    let n = &self.nodes[i];
                    self.awaiting.contains_key(&pid)
                        || n.adopted
                            && n.pidfd.as_ref().is_some_and(|fd| {
                                pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false)
                            })
                })
                .collect();
            for (i, pid) in ended {
                if self.main_pid(i) == Some(pid) {
                    self.settle_end(i, pid, true);
                }
            }
            self.awaiting.clear();
        }
        let (delay, launched) = link.map_or((Duration::ZERO, None), |l| (l.delay, l.launched));
        self.restore_guardian_after(&why, delay, launched);
    }

    /// No guardian is linked to us: start one in watch mode over this Supervisor.
    fn restore_guardian(&mut self, why: &str) {
        self.restore_guardian_after(why, Duration::ZERO, None);
    }

    /// [`Self::restore_guardian`], knowing when we last started one and the delay then. Leaves
    /// `self.guardian` in one of the three states, registered in the loop: a guardian that
    /// already holds the instance is watched (pidfd); otherwise a new one is started, linked by
    /// a report pipe of its own; if that fails, or the last one we started died at once, a
    /// timer says when to try again (100 ms, doubling up to 30 s).
    fn restore_guardian_after(&mut self, why: &str, delay: Duration, launched: Option<Instant>) {
        // One that lived a while says nothing about the next: no delay.
        let delay = if launched.is_some_and(|t| t.elapsed() >= QUICK_DEATH) {
            Duration::ZERO
        } else {
            delay
        };
        let mut link = match crate::guardian::holder(&self.instance) {
            Some(pid) => match pidfd::open(pid) {
                Ok(fd) => {
                    log!("no guardian of ours ({why}); guardian pid {pid} holds the instance: watching it");
                    Some(GuardianLink {
                        state: State::Watch { pid, fd },
                        delay,
                        launched,
                    })
                }
                Err(e) => {
                    log!("{why}; guardian pid {pid} holds the instance but cannot be watched: {e}");
                    None
                }
            },
            None if launched.is_some_and(|t| t.elapsed() < QUICK_DEATH) => {
                log!("{why}: the guardian we started is gone at once");
                None
            }
            None => match self.launch_guardian() {
                Ok(mut l) => {
                    l.delay = delay;
                    log!(
                        "{why}: started a new guardian (pid {}) to watch this Supervisor",
                        l.pipe_pid().unwrap_or(0)
                    );
                    Some(l)
                }
                Err(e) => {
                    log!("{why}: cannot start a new guardian: {e}");
                    None
                }
            },
        };
        if link.is_none() {
            let next = (delay * 2).clamp(RETRY_FIRST, crate::guardian::RETRY_MAX);
            link = match retry_timer(next) {
                Ok(timer) => {
                    log!("starting a guardian again in {:.1} s", next.as_secs_f64());
                    Some(GuardianLink {
                        state: State::Retry { timer },
                        delay: next,
                        launched: None,
                    })
                }
                Err(e) => {
                    log!("no timer to start a guardian again ({e}): none until the next Main or upgrade");
                    None
                }
            };
        }
        if let Some(l) = &link {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&l.raw_fd()),
                REPORTS.token(),
                Interest::READABLE,
            ) {
                log!("cannot watch the guardian: {e}");
            }
        }
        self.guardian = link;
    }

    /// Starts a watch-mode guardian beside us with a new report pipe; we keep its read end.
    fn launch_guardian(&mut self) -> io::Result<GuardianLink> {
        let (r, w) = crate::guardian::pipe()?;
        let pid = crate::guardian::launch_beside(
            &self.instance,
            &self.config_path,
            &r,
            &w,
            std::process::id(),
        )?;
        // Only the guardian holds the write end now: its death is our end of file.
        drop(w);
        let ours = r.try_clone()?;
        drop(r);
        crate::guardian::set_nonblocking(&ours)?;
        Ok(GuardianLink {
            state: State::Pipe(Reports {
                file: ours,
                pid,
                buf: Vec::new(),
                open: true,
            }),
            delay: Duration::ZERO,
            launched: Some(Instant::now()),
        })
    }
}

/// A one-shot timer (nonblocking, close-on-exec) that fires `after` from now.
fn retry_timer(after: Duration) -> io::Result<TimerFd> {
    let t = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    t.set(
        Expiration::OneShot(TimeSpec::from_duration(after)),
        TimerSetTimeFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(t)
}
