//! The Supervisor's side of the guardian: the exit reports of nodes the guardian reaped (nodes
//! reparented to it when a previous Supervisor died), applied as real exits; and, when the
//! guardian is gone, starting a new one in watch mode so the chain is whole again.

use super::*;
use crate::guardian::report::{self, Report};
use std::io::Read;

/// Token of the report pipe in the loop's poll.
pub(super) const REPORTS: Token = Token(2);

/// How long a takeover waits for the report of a node it finds a zombie of the guardian.
const ZOMBIE_REPORT_WAIT: Duration = Duration::from_secs(2);

/// The read end of the guardian's report pipe.
pub(super) struct GuardianLink {
    file: File,
    /// The guardian's pid (our parent when it spawned us).
    pid: u32,
    buf: Vec<u8>,
    open: bool,
}

impl GuardianLink {
    /// The link our guardian passed us (fd number in [`report::FD_ENV`]), checked to be a pipe;
    /// `None` if we were started without one. Removes the variable, so nodes do not see it.
    pub(super) fn from_env() -> Option<GuardianLink> {
        let fd = std::env::var(report::FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok());
        // Single-threaded still: nothing reads the environment concurrently.
        std::env::remove_var(report::FD_ENV);
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
        Some(GuardianLink {
            file,
            pid: nix::unistd::getppid().as_raw() as u32,
            buf: Vec::new(),
            open: true,
        })
    }

    /// The fd (kept across an upgrade's exec).
    pub(super) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

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

    /// Waits (at most `limit`) until a report arrives or the guardian is gone.
    fn wait(&self, limit: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, limit.as_millis().min(i32::MAX as u128) as i32) };
    }
}

impl Supervisor {
    /// Registers the report pipe in the loop and reads what is already waiting in it (reports
    /// of nodes that died while no Supervisor lived), for [`Self::take_reported_exit`].
    pub(super) fn connect_guardian(&mut self) {
        let Some(link) = self.guardian.as_mut() else {
            self.restore_guardian("none was passed to us");
            return;
        };
        let early = link.read_available();
        let fd = link.raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), REPORTS, Interest::READABLE)
        {
            log!("cannot watch the guardian's report pipe: {e}");
        }
        self.reported.extend(early.into_iter().map(|r| (r.pid, r)));
    }

    /// Takeover hook: if the node recorded in `rec` died while no Supervisor lived and the
    /// guardian reported how, handles that exit now (recorded as its last exit, an `exited`
    /// event, the restart policy), and returns true. A node found a zombie of the guardian is
    /// waited for (bounded) until its report comes.
    pub(super) fn take_reported_exit(&mut self, i: usize, rec: &NodeRecord) -> bool {
        let Some(pid) = rec.pid else { return false };
        if !self.reported.contains_key(&pid) {
            let zombie_of_guardian = self.guardian.as_ref().is_some_and(|g| {
                matches!(procstat::stat(pid), Ok(Some(st))
                    if st.start == rec.pid_start && st.state == 'Z' && st.parent == g.pid)
            });
            if !zombie_of_guardian {
                return false;
            }
            let deadline = std::time::Instant::now() + ZOMBIE_REPORT_WAIT;
            while !self.reported.contains_key(&pid) {
                let Some(link) = self.guardian.as_mut().filter(|g| g.open) else {
                    return false;
                };
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                link.wait(left);
                let got = link.read_available();
                self.reported.extend(got.into_iter().map(|r| (r.pid, r)));
            }
        }
        let Some(r) = self
            .reported
            .remove(&pid)
            .filter(|r| r.start == rec.pid_start)
        else {
            return false;
        };
        let n = &mut self.nodes[i];
        n.pid = Some(pid);
        n.pid_start = rec.pid_start;
        n.started_mono_ns = rec.started_mono_ns;
        n.started_wall_ms = rec.started_wall_ms;
        n.restarts = rec.restarts;
        n.last_exit = rec.last_exit;
        // A node that was being stopped ends stopped, or starts again if a restart was pending
        // (the record's intent); any other is handled by its policy.
        n.state = match rec.state {
            NodeState::Stopping => NodeState::Stopping,
            _ => NodeState::Running,
        };
        n.start_after_exit =
            rec.state == NodeState::Stopping && rec.intent.has(Intent::RESTART_PENDING);
        self.by_pid.insert(pid, i);
        log!(
            "node {}: pid {pid} ended while no Supervisor ran ({}, reported by the guardian)",
            rec.name,
            r.exit.describe()
        );
        self.on_exit(pid, r.exit);
        true
    }

    /// After the takeover: reports that matched no node are processes the guardian reaped
    /// that were not nodes (their leftovers); they are recorded as such.
    pub(super) fn drop_unmatched_reports(&mut self) {
        for (_, r) in std::mem::take(&mut self.reported) {
            self.apply_report(r);
        }
    }

    /// Applies one report: the exit of a node we adopted, or an orphan's.
    fn apply_report(&mut self, r: Report) {
        let node = self.by_pid.get(&r.pid).copied();
        match node {
            Some(i) if self.nodes[i].pid_start == r.start => self.on_exit(r.pid, r.exit),
            _ => {
                let mut ev = Event::now(EventKind::OrphanReaped, NO_NODE, r.pid);
                ev.exit = Some(r.exit);
                self.event(ev);
            }
        }
    }

    /// Loop: reads and applies every waiting report; if the guardian is gone, handles what it
    /// can no longer report and starts a new guardian.
    pub(super) fn read_reports(&mut self) {
        let Some(link) = self.guardian.as_mut() else {
            return;
        };
        let got = link.read_available();
        let open = link.open;
        for r in got {
            self.apply_report(r);
        }
        if !open {
            let fd = self.guardian.take().map(|g| g.raw_fd());
            if let Some(fd) = fd {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            // Adopted nodes that ended and waited for a report will get none.
            let ended: Vec<u32> = self
                .nodes
                .iter()
                .filter(|n| n.adopted)
                .filter(|n| {
                    n.pidfd
                        .as_ref()
                        .is_some_and(|fd| pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(false))
                })
                .filter_map(|n| n.pid)
                .collect();
            for pid in ended {
                self.on_exit(pid, Exit::Unknown);
            }
            self.restore_guardian("the guardian is gone");
        }
    }

    /// Loop: an adopted node's pidfd says it ended. Its real status comes from the guardian if
    /// the node is the guardian's child; otherwise it cannot be known.
    pub(super) fn adopted_node_ended(&mut self, pid: u32) {
        // Look before reading the pipe: the guardian writes a report before it reaps, so a
        // node gone from /proc now has its report in the pipe already.
        let st = procstat::stat(pid).ok().flatten();
        self.read_reports();
        let i = self.by_pid.get(&pid).copied();
        let Some(i) = i else { return };
        if self.nodes[i].pid != Some(pid) {
            return;
        }
        let guardian_reaps = self.guardian.as_ref().is_some_and(|g| {
            st.is_some_and(|st| st.parent == g.pid && st.start == self.nodes[i].pid_start)
        });
        if !guardian_reaps {
            self.on_exit(pid, Exit::Unknown);
        }
    }

    /// Starts a guardian in watch mode over this Supervisor.
    fn restore_guardian(&mut self, why: &str) {
        if let Some(pid) = crate::guardian::holder(&self.instance) {
            log!("no guardian of ours ({why}); guardian pid {pid} holds the instance");
            return;
        }
        match crate::guardian::launch(
            &self.instance,
            &self.config_path,
            None,
            Some(std::process::id()),
        ) {
            Ok(()) => log!("{why}: started a new guardian to watch this Supervisor"),
            Err(e) => log!("{why}: cannot start a new guardian: {e}"),
        }
    }
}
