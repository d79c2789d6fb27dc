//! The guardian (`broctld __guardian`): a tiny process above the Supervisor that closes the gap
//! in supervision when the Supervisor dies.
//!
//! ```text
//!  Main ──double fork──▶ broctld __guardian ──fork+exec──▶ broctld __supervisor ──▶ nodes
//!                        (never upgraded,                   (replaced at once when it dies)
//!                         child subreaper)
//! ```
//!
//! * The first Main that needs a Supervisor starts the guardian (detached: own session, init's
//!   child); the guardian starts the Supervisor as its own child and relays its readiness line
//!   (`ready PID` or `error: WHY`) to that Main.
//! * It is a child subreaper, so when the Supervisor dies its nodes are reparented to the
//!   guardian. The guardian reaps them when they end and reports each one's real exit status
//!   (pid, start time, wait status) to the current Supervisor over a pipe ([`report`]). The
//!   guardian holds the pipe's read end too, so reports written while no Supervisor lives wait
//!   in the pipe for the next one.
//! * When the Supervisor dies (a signal, a crash, any exit but a clean one) a new one is started
//!   at once. It takes over from the region, with the running config, and applies the reports
//!   of nodes that died in the gap (restart by policy, exit status recorded, `exited` event).
//!   A Supervisor that dies before it served (it could not start) is retried after 100 ms,
//!   doubling up to 30 s, each retry logged.
//! * When the Supervisor exits cleanly (`shutdown`, exit status 0), the guardian exits too.
//! * Event-driven: it sleeps in `poll` on a signalfd (SIGCHLD), the readiness pipe of a
//!   starting Supervisor and, only while reports are waiting for room, the report pipe. It never
//!   maps the region.
//! * One guardian per instance: it holds `guardian.lock` for its whole life. If it is killed,
//!   nothing else notices but the Supervisor (its report pipe reaches end of file), which starts
//!   a new guardian in *watch* mode (`--watch PID`) beside itself ([`launch_beside`]:
//!   `CLONE_PARENT`, since a double fork from a child subreaper leaves the grandchild its
//!   child), with both ends of a new report pipe of which the Supervisor keeps only a read end:
//!   that guardian's death is end of file again, every time. It watches the living Supervisor
//!   through a pidfd and, when it dies, starts the next one as its own child, restoring the
//!   chain.
//! * A Supervisor that exits "already running" is no reason to give up: a live holder of the
//!   instance is watched, and replaced when it dies; otherwise the start is tried again.
//! * Its environment is defined, not the first Main's: umask 022, nice 0, pid 1's resource
//!   limits (`sys::procenv`), which every Supervisor and node inherits.

pub mod outputs;
pub mod report;

use crate::instance::Instance;
use crate::log;
use crate::sys::lockfile::{self, LockFile};
use crate::sys::{pidfd, procstat};
use report::Report;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `PATH` a Supervisor (and so its nodes) gets when it was started with none, so that what
/// it runs never depends on the environment of whichever Main happened to start it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status of a Supervisor that could not start (bad config, runtime dir, region...).
pub const EXIT_START_FAILED: i32 = 2;
/// Exit status of a Supervisor (or guardian) that found another one holding the instance.
pub const EXIT_ALREADY_RUNNING: i32 = 3;

/// The longest wait between two attempts to start a Supervisor that keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a Supervisor may take to say `ready`: after it was started, and after it said
/// `upgrading` (before an `execve` of a new image). One that does not is killed and the image
/// that last served is started in its place. `BROCTLD_SERVE_DEADLINE_MS` overrides it.
pub const SERVE_DEADLINE: Duration = Duration::from_secs(60);
/// The variable that overrides [`SERVE_DEADLINE`] (milliseconds, read at the guardian's start).
pub const SERVE_DEADLINE_ENV: &str = "BROCTLD_SERVE_DEADLINE_MS";
/// The second line of the guardian's lock file: this word, then (while it waits to try
/// again) [`RETRY_AT`] with the time of its next attempt (CLOCK_MONOTONIC, ms) and the reason.
const INFO: &str = "guardian";
const RETRY_AT: &str = "retry-at-ms=";
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Reports kept while no Supervisor reads them and the pipe is full; older ones are dropped.
const PENDING_MAX: usize = 65_536;

/// Sets `PATH` to [`DEFAULT_PATH`] if it is unset or empty. Call while single-threaded.
pub fn ensure_path() {
    if std::env::var_os("PATH").is_none_or(|p| p.is_empty()) {
        log!("no PATH in the environment; using {DEFAULT_PATH}");
        // Edition 2021: a plain call. No other thread exists yet.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
}

/// The path of the installed executable: our own, even if the file was replaced by an upgrade
/// (then `/proc/self/exe` names the old, deleted file).
pub fn installed_exe() -> io::Result<PathBuf> {
    let p = std::env::current_exe()?;
    let s = p.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(live) => PathBuf::from(live),
        None => p,
    })
}

/// The guardian's lock file.
pub fn lock_path(instance: &Instance) -> PathBuf {
    instance.dir().join("guardian.lock")
}

/// Starts a guardian for `instance`, fully detached (double fork into its own session, stdio
/// to the Supervisor's log, working directory `/`). `notify`, if given, becomes its fd 3, on
/// which it relays its Supervisor's readiness line. `watch` starts it in watch mode over a
/// living Supervisor instead. Returns once the intermediate child has exited.
pub fn launch(
    instance: &Instance,
    config: &Path,
    notify: Option<&OwnedFd>,
    watch: Option<u32>,
) -> io::Result<()> {
    let log = crate::sys::checked::open_log(&instance.log_path())
        .map_err(|e| io::Error::other(format!("cannot open its log: {e}")))?;
    let exe = installed_exe()?;
    let mut cmd = Command::new(&exe);
    base_args(&mut cmd, instance, config);
    cmd.arg("__guardian");
    if notify.is_some() {
        cmd.args(["--notify-fd", "3"]);
    }
    if let Some(pid) = watch {
        cmd.arg("--watch").arg(pid.to_string());
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let keep = notify.map(|fd| fd.as_raw_fd());
    // SAFETY: runs between fork and exec; only async-signal-safe calls (setsid, syscall,
    // dup2, fcntl, fork, _exit) on fd numbers prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = keep {
                place_fd(fd, 3)?;
            }
            // Double fork: the guardian is not our child, so it is never our zombie and it is
            // reparented away from us at once.
            match libc::fork() {
                -1 => Err(io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut child = cmd.spawn()?;
    child.wait()?;
    Ok(())
}

/// Starts a watch-mode guardian over this Supervisor (pid `watch`, ours), from the Supervisor
/// itself: as a sibling (`CLONE_PARENT`), since a double fork from a child subreaper leaves
/// the grandchild its child. It gets both ends of a new report pipe, `reports_r` and
/// `reports_w`, as fds 3 and 4; the Supervisor keeps only a read end, so the pipe's end of
/// file tells it when this guardian dies. Returns the guardian's pid.
pub fn launch_beside(
    instance: &Instance,
    config: &Path,
    reports_r: &File,
    reports_w: &File,
    watch: u32,
) -> io::Result<u32> {
    let log = crate::sys::checked::open_log(&instance.log_path())
        .map_err(|e| io::Error::other(format!("cannot open its log: {e}")))?;
    let null = File::open("/dev/null")?;
    let exe = installed_exe()?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "--instance".into(),
        instance.name().into(),
        "--runtime-dir".into(),
        instance.runtime_dir().into(),
        "--config".into(),
        config.into(),
        "__guardian".into(),
        "--watch".into(),
        watch.to_string().into(),
    ];
    args.extend(["--reports-read-fd", "3", "--reports-write-fd", "4"].map(Into::into));
    crate::sys::detach::spawn_beside(
        &exe,
        &args,
        &[
            (null.as_raw_fd(), 0),
            (log.as_raw_fd(), 1),
            (log.as_raw_fd(), 2),
            (reports_r.as_raw_fd(), 3),
            (reports_w.as_raw_fd(), 4),
        ],
    )
}

/// Between fork and exec: puts `fd` at `target` without `FD_CLOEXEC`.
///
/// # Safety
/// Call only between fork and exec (async-signal-safe calls only).
unsafe fn place_fd(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    } else if libc::dup2(fd, target) < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn base_args(cmd: &mut Command, instance: &Instance, config: &Path) {
    cmd.arg("--instance")
        .arg(instance.name())
        .arg("--runtime-dir")
        .arg(instance.runtime_dir())
        .arg("--config")
        .arg(config);
}

/// Duplicates `fd` to a number of at least 10, close-on-exec: out of the way of the numbers
/// (3 and 4) a child gets it at.
fn dup_high(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a live fd returns a new fd that nobody else owns.
    let n = crate::syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10))?;
    // SAFETY: `n` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((File::from(r), File::from(w)))
}

pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on a live fd with integer flags.
    let fl = crate::syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    // SAFETY: as above.
    crate::syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK))?;
    Ok(())
}

/// How a Supervisor's wait status reads in the log.
fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!(
            "was killed by signal {}",
            crate::config::signal_name(libc::WTERMSIG(status))
        )
    } else {
        format!("ended (wait status {status:#x})")
    }
}

/// The Supervisor the guardian keeps alive.
enum Current {
    /// Our child: its pid, when it was started, whether it serves (said `ready`, and not
    /// `upgrading` since), and the read end of its readiness pipe while it is open (it says
    /// `ready PID` when it serves, `upgrading` before an upgrade's `execve`, and the new image
    /// `ready PID` again). `deadline`: when it is killed if it does not serve by then.
    /// `fallback`: it was started from the image that last served, not from the path.
    Child {
        pid: u32,
        since: Instant,
        served: bool,
        ready: Option<File>,
        line: Vec<u8>,
        deadline: Option<Instant>,
        fallback: bool,
    },
    /// A Supervisor we did not start (watch mode), followed through a pidfd.
    Watched { pid: u32, fd: OwnedFd },
    /// None: the next one starts at `at`.
    Waiting { at: Instant },
}

struct Guardian {
    instance: Instance,
    config: PathBuf,
    signals: nix::sys::signalfd::SignalFd,
    /// Both ends of the report pipe: we keep the read end so reports outlive a Supervisor.
    reports_r: File,
    reports_w: File,
    pending: VecDeque<String>,
    current: Current,
    /// The Main waiting for the first Supervisor's readiness line, until it has it.
    notify: Option<File>,
    /// Started by a Main and no Supervisor has served yet: if this one fails, give up.
    unproven: bool,
    retry: Duration,
    lock: Option<LockFile>,
    /// The nodes' output FIFOs, held open so they never lack a reader.
    outputs: outputs::OutputHold,
    /// The `RLIMIT_NOFILE` each Supervisor we start gets: the soft limit we were started
    /// with (the operator's, which it gives its nodes) under the hard limit we raised.
    nofile: Option<libc::rlimit>,
    /// The executable of the last Supervisor that served (opened from `/proc/PID/exe`, so it
    /// stays runnable whatever is installed at the path since): started in place of the path's
    /// binary when that one fails or stalls before it serves.
    good_exe: Option<File>,
    /// The next Supervisor is started from [`Guardian::good_exe`].
    use_good: bool,
    /// See [`SERVE_DEADLINE`].
    serve_deadline: Duration,
}

/// Entry point of `broctld __guardian`. Returns the exit status.
pub fn main(
    instance: Instance,
    config: PathBuf,
    notify_fd: Option<RawFd>,
    watch: Option<u32>,
    reports_fds: Option<(RawFd, RawFd)>,
) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    // SAFETY: the fd was handed to us by the Main that launched us, open and otherwise unused.
    let mut notify = notify_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
    let mut fail = |msg: String| {
        log!("guardian not started: {msg}");
        if let Some(n) = notify.as_mut() {
            let _ = writeln!(n, "error: {msg}");
        }
        EXIT_START_FAILED
    };
    crate::log::rotate_with(instance.log_path());
    ensure_path();
    // What every Supervisor and node inherits from us is defined here, not by whichever Main
    // started us (see sys::procenv).
    for why in crate::sys::procenv::define_own() {
        log!("guardian: cannot take the defined environment for {why}");
    }
    let nofile = crate::sys::procenv::raise_own_nofile().map(|was| libc::rlimit {
        rlim_cur: was.rlim_cur,
        rlim_max: own_nofile().rlim_max,
    });
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    if let Err(e) = set.thread_block() {
        return fail(format!("cannot block SIGCHLD: {e}"));
    }
    let signals = match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => return fail(format!("signalfd: {e}")),
    };
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    if let Err(e) = crate::syscall!(prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) {
        return fail(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}"));
    }
    if let Err(e) = instance.ensure_dirs() {
        return fail(e.to_string());
    }
    let lock = match LockFile::acquire(&lock_path(&instance), INFO) {
        Ok(l) => l,
        Err(lockfile::LockError::Held { pid, .. }) => {
            let msg = format!(
                "instance '{}' already has a Supervisor guardian (pid {pid}), which starts its Supervisor",
                instance.name()
            );
            if let Some(n) = notify.as_mut() {
                let _ = writeln!(n, "error: {msg}");
            }
            return EXIT_ALREADY_RUNNING;
        }
        Err(e) => return fail(format!("guardian lock: {e}")),
    };
    let pipe = match reports_fds {
        // SAFETY: the Supervisor that started us passed both ends of the report pipe by
        // number, open and otherwise unused (it keeps only a read end of its own).
        Some((r, w)) => checked_pipe(r)
            .and_then(|()| checked_pipe(w))
            .map(|()| unsafe { (File::from_raw_fd(r), File::from_raw_fd(w)) }),
        None => pipe(),
    };
    let (reports_r, reports_w) = match pipe {
        Ok(p) => p,
        Err(e) => return fail(format!("report pipe: {e}")),
    };
    for f in [&reports_r, &reports_w] {
        if let Err(e) = crate::sys::fdflags::set_cloexec(f.as_raw_fd(), true) {
            return fail(format!("report pipe: {e}"));
        }
    }
    if let Err(e) = set_nonblocking(&reports_w) {
        return fail(format!("pipe: {e}"));
    }
    let outputs = outputs::OutputHold::new(&instance.dir());
    let mut g = Guardian {
        outputs,
        nofile,
        instance,
        config,
        signals,
        reports_r,
        reports_w,
        pending: VecDeque::new(),
        current: Current::Waiting { at: Instant::now() },
        unproven: notify.is_some(),
        notify: notify.take(),
        retry: Duration::ZERO,
        lock: Some(lock),
        good_exe: None,
        use_good: false,
        serve_deadline: std::env::var(SERVE_DEADLINE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(SERVE_DEADLINE, Duration::from_millis),
    };
    match watch {
        Some(pid) => {
            if let Err(e) = g.watch(pid) {
                log!("guardian: cannot watch Supervisor pid {pid}: {e}; exiting");
                return 1;
            }
            log!("guardian (watch mode) started over Supervisor pid {pid}");
        }
        None => {
            if let Err(e) = g.spawn() {
                let msg = format!("cannot start the Supervisor: {e}");
                g.relay(&format!("error: {msg}"));
                log!("guardian: {msg}");
                return 1;
            }
        }
    }
    g.outputs.refresh();
    let code = g.run();
    // Removed while still held, as the Supervisor does with its own: nothing is left behind.
    if let Some(l) = g.lock.take() {
        l.remove();
    }
    code
}

impl Guardian {
    /// Starts a Supervisor as our child, with a fresh readiness pipe and the report pipe: from
    /// the installed path, or (after the path's binary failed or stalled before it served)
    /// from the image that last served.
    fn spawn(&mut self) -> io::Result<()> {
        let (ready_r, ready_w) = pipe()?;
        let ready_w = dup_high(&ready_w)?;
        let reports = dup_high(&self.reports_r)?;
        let exe = installed_exe()?;
        let good = self.good_exe.as_ref().filter(|_| self.use_good);
        let fallback = good.is_some();
        // The kept image by its fd: `execve` resolves the path before close-on-exec fds are
        // closed, so an ELF runs (argv[0] still names the installed path).
        let mut cmd = match good {
            Some(f) => {
                let mut c = Command::new(format!("/proc/self/fd/{}", f.as_raw_fd()));
                c.arg0(&exe);
                c
            }
            None => Command::new(&exe),
        };
        base_args(&mut cmd, &self.instance, &self.config);
        cmd.args(["__supervisor", "--notify-fd", "3"])
            .env(report::FD_ENV, "4")
            .env(report::PID_ENV, std::process::id().to_string())
            .current_dir("/")
            .stdin(Stdio::null());
        let (w, r) = (ready_w.as_raw_fd(), reports.as_raw_fd());
        let nofile = self.nofile;
        // SAFETY: runs between fork and exec; only dup2, fcntl and setrlimit on values
        // prepared before the fork (fds at least 10, so neither is overwritten by the other's
        // dup2).
        unsafe {
            cmd.pre_exec(move || {
                place_fd(w, 3)?;
                place_fd(r, 4)?;
                if let Some(lim) = nofile {
                    // The limit we were started with, not the one we raised for ourselves.
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        // The `Child` handle is dropped without waiting: we reap it (and everything else) in
        // one place, `reap`.
        drop(child);
        set_nonblocking(&ready_r)?;
        self.publish_retry(None);
        self.current = Current::Child {
            pid,
            since: Instant::now(),
            served: false,
            ready: Some(ready_r),
            line: Vec::new(),
            deadline: Some(Instant::now() + self.serve_deadline),
            fallback,
        };
        if fallback {
            log!(
                "guardian: started Supervisor pid {pid} from the image that last served (not {}, which did not serve)",
                exe.display()
            );
        } else {
            log!("guardian: started Supervisor pid {pid} ({})", exe.display());
        }
        Ok(())
    }

    /// The Supervisor `pid` serves: its image is the one to fall back on.
    fn keep_good_image(&mut self, pid: u32) {
        match File::open(format!("/proc/{pid}/exe")) {
            Ok(f) => {
                self.good_exe = Some(f);
                self.use_good = false;
            }
            Err(e) => log!("guardian: cannot keep the image of Supervisor pid {pid}: {e}"),
        }
    }

    /// A Supervisor that has not served by its deadline is killed; the image that last served
    /// starts next (see [`SERVE_DEADLINE`]).
    fn check_deadline(&mut self) {
        let Current::Child {
            pid,
            deadline: Some(at),
            since,
            ..
        } = &self.current
        else {
            return;
        };
        if Instant::now() < *at {
            return;
        }
        let pid = *pid;
        log!(
            "guardian: Supervisor pid {pid} has not served within {:.1} s (started {:.1} s ago, or an upgrade's new image that never came back); killing it{}",
            self.serve_deadline.as_secs_f64(),
            since.elapsed().as_secs_f64(),
            if self.good_exe.is_some() {
                " and starting the image that last served"
            } else {
                ""
            }
        );
        if let Current::Child { deadline, .. } = &mut self.current {
            *deadline = None;
        }
        self.use_good = self.good_exe.is_some();
        // Our child, not yet reaped: the pid is still its.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    fn watch(&mut self, pid: u32) -> io::Result<()> {
        let fd = pidfd::open(pid)?;
        self.current = Current::Watched { pid, fd };
        // It serves (it started us): its image is the one to fall back on.
        self.keep_good_image(pid);
        Ok(())
    }

    /// Sends `line` to the Main that started us, once.
    fn relay(&mut self, line: &str) {
        if let Some(mut n) = self.notify.take() {
            let _ = writeln!(n, "{line}");
        }
    }

    fn run(&mut self) -> i32 {
        loop {
            let mut fds = vec![libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut timeout: i32 = -1;
            if let Current::Child {
                deadline: Some(at), ..
            } = &self.current
            {
                let left = at.saturating_duration_since(Instant::now());
                timeout = (left.as_millis() + 1).min(i32::MAX as u128) as i32;
            }
            match &self.current {
                Current::Child { ready: Some(r), .. } => fds.push(libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }),
                Current::Watched { fd, .. } => fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }),
                Current::Waiting { at } => {
                    let left = at.saturating_duration_since(Instant::now());
                    timeout = left.as_millis().min(i32::MAX as u128) as i32;
                }
                Current::Child { ready: None, .. } => {}
            }
            if let Some(fd) = self.outputs.raw_fd() {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if !self.pending.is_empty() {
                fds.push(libc::pollfd {
                    fd: self.reports_w.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
            // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log!("guardian: poll failed: {e}; exiting (the Supervisor and nodes run on)");
                return 1;
            }
            while let Ok(Some(_)) = self.signals.read_signal() {}
            self.outputs.changed();
            self.read_ready();
            self.check_deadline();
            if let Some(code) = self.reap() {
                return code;
            }
            if let Some(code) = self.check_watched() {
                return code;
            }
            if let Current::Waiting { at } = self.current {
                if Instant::now() >= at {
                    if let Err(e) = self.spawn() {
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                            // Starting the Supervisor comes first: let go of the FIFOs (held
                            // again once it serves, within the reserve).
                            let n = self.outputs.release_all();
                            log!("guardian: out of fds ({e}); let go of {n} output FIFO(s) to start a Supervisor");
                        }
                        self.retry_later(&format!("cannot start a Supervisor: {e}"));
                    }
                }
            }
            self.flush();
        }
    }

    /// Reads what our Supervisor says on its readiness pipe: `ready PID` once it serves,
    /// `error: WHY` if it could not start, `upgrading` before an upgrade's `execve` (its new
    /// image says `ready PID` again once it serves, and so does the old one if the exec
    /// failed). The pipe stays open as long as the Supervisor keeps it.
    fn read_ready(&mut self) {
        let Current::Child {
            pid,
            ready: ready @ Some(_),
            line,
            ..
        } = &mut self.current
        else {
            return;
        };
        let pid = *pid;
        let mut chunk = [0u8; 1024];
        let eof = loop {
            match ready.as_mut().map(|r| r.read(&mut chunk)) {
                Some(Ok(0)) => break true,
                Some(Ok(k)) => line.extend_from_slice(&chunk[..k]),
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break false,
            }
        };
        let mut lines = Vec::new();
        while let Some(at) = line.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = line.drain(..=at).collect();
            lines.push(String::from_utf8_lossy(&l).trim_end().to_owned());
        }
        if eof {
            if !line.is_empty() {
                lines.push(String::from_utf8_lossy(line).trim_end().to_owned());
                line.clear();
            }
            *ready = None;
        }
        for text in lines {
            self.said(pid, &text);
        }
    }

    /// One line from our Supervisor `pid` (see [`Guardian::read_ready`]).
    fn said(&mut self, pid: u32, text: &str) {
        let Current::Child {
            served, deadline, ..
        } = &mut self.current
        else {
            return;
        };
        if text.starts_with("ready ") {
            *served = true;
            *deadline = None;
            self.retry = Duration::ZERO;
            self.unproven = false;
            log!("guardian: Supervisor pid {pid} serves");
            self.keep_good_image(pid);
            self.outputs.refresh();
            // To the Main that started us, the first time only.
            self.relay(text);
        } else if text == "upgrading" {
            // Until its new image says `ready`, it does not serve; past the deadline it is
            // replaced (see `check_deadline`).
            *served = false;
            *deadline = Some(Instant::now() + self.serve_deadline);
            log!(
                "guardian: Supervisor pid {pid} is re-executing for an upgrade; it has {:.1} s to serve again",
                self.serve_deadline.as_secs_f64()
            );
        } else if !text.is_empty() {
            self.relay(text);
        }
    }

    /// Reaps every ended child. Returns an exit status if the guardian is done.
    fn reap(&mut self) -> Option<i32> {
        loop {
            // SAFETY: a zeroed siginfo_t is a valid out-buffer for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a valid out-pointer; WNOHANG never blocks; WNOWAIT leaves the child a
            // zombie, so its /proc entry (and start time) can still be read.
            let r = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return None; // ECHILD: no children at all
            }
            // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed: pid 0).
            let pid = unsafe { info.si_pid() } as u32;
            if pid == 0 {
                return None;
            }
            let ours = matches!(self.current, Current::Child { pid: sup, .. } if sup == pid);
            if !ours {
                // Report first, reap second: a Supervisor that finds the process gone from
                // /proc then finds its report already in the pipe.
                let start = procstat::start_time(pid).ok().flatten().unwrap_or(0);
                if let Some(r) = Report::from_siginfo(&info, start) {
                    if self.pending.len() >= PENDING_MAX {
                        self.pending.pop_front();
                    }
                    self.pending.push_back(r.line());
                    self.flush();
                }
            }
            if ours {
                // What it wrote before it ended comes first: its `error: WHY` may still sit in
                // the readiness pipe when its exit is seen (a SIGCHLD can wake us before the
                // pipe does), and the Main must get that line, not "exited with status 2".
                // Read before the reap: while it is a zombie its pid (and /proc/PID/exe, which
                // a `ready` line makes us keep) is still its own.
                self.read_ready();
            }
            let mut status = 0;
            // SAFETY: reaps this one zombie; a valid out-pointer.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if ours {
                if let Some(code) = self.on_supervisor_exit(pid, status) {
                    return Some(code);
                }
            }
        }
    }

    fn on_supervisor_exit(&mut self, pid: u32, status: i32) -> Option<i32> {
        let Current::Child {
            since,
            served,
            fallback,
            ..
        } = self.current
        else {
            return None;
        };
        let how = describe(status);
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        if code == Some(0) {
            log!("guardian: Supervisor pid {pid} exited after a shutdown; the guardian exits");
            return Some(0);
        }
        if !served && code == Some(EXIT_ALREADY_RUNNING) {
            // Another Supervisor holds the instance, or held it a moment ago: never a reason
            // to give up for good (a Main's probe once made a replacement exit so, and the
            // nodes were left under init). A live holder is watched, and replaced when it
            // dies; otherwise we try again.
            if let Some(holder) = self.live_supervisor() {
                match self.watch(holder) {
                    Ok(()) => {
                        // A Main waiting for the first one attaches to that one.
                        self.relay(&format!(
                            "error: instance '{}' already has a Supervisor (pid {holder})",
                            self.instance.name()
                        ));
                        log!("guardian: Supervisor pid {pid} {how}: Supervisor pid {holder} holds the instance; watching it");
                        return None;
                    }
                    Err(e) => log!("guardian: cannot watch Supervisor pid {holder}: {e}"),
                }
            }
            self.retry_later(&format!(
                "Supervisor pid {pid} {how} before it served (no live Supervisor holds the instance)"
            ));
            return None;
        }
        if !served && self.unproven {
            // The first one did not start (the Main that asked has been told why): nothing to
            // keep alive.
            self.relay(&format!(
                "error: the Supervisor {how} during startup; see {}",
                self.instance.log_path().display()
            ));
            log!("guardian: Supervisor pid {pid} {how} before it served; the guardian exits");
            return Some(code.unwrap_or(1));
        }
        // SIGKILL comes from outside (an operator, the OOM killer), never from a Supervisor
        // failing to start by itself: replace it at once even if it had not said `ready` yet.
        let killed = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL;
        if served || killed {
            log!(
                "guardian: Supervisor pid {pid} {how} after {:.3} s; starting a new one now",
                since.elapsed().as_secs_f64()
            );
            self.retry = Duration::ZERO;
            self.current = Current::Waiting { at: Instant::now() };
        } else if !fallback && self.good_exe.is_some() {
            // The installed binary does not start (an upgrade to it, or a replacement from it,
            // failed before it served): the image that last served starts now instead, so the
            // nodes are not left unsupervised while someone fixes the file.
            log!(
                "guardian: Supervisor pid {pid} {how} before it served; starting the image that last served instead of {}",
                installed_exe().map_or_else(|_| "the installed binary".into(), |p| p.display().to_string())
            );
            self.use_good = true;
            self.current = Current::Waiting { at: Instant::now() };
        } else {
            // The next attempt is from the path again (it may have been fixed meanwhile).
            self.use_good = false;
            self.retry_later(&format!("Supervisor pid {pid} {how} before it served"));
        }
        None
    }

    /// The live Supervisor that holds the instance lock, if any (pid and start time it wrote
    /// still match a live process).
    fn live_supervisor(&self) -> Option<u32> {
        match LockFile::probe(&self.instance.lock_path()) {
            Ok(lockfile::Probe::Held { pid, start, .. })
                if pid != 0 && procstat::is_alive(pid, start) =>
            {
                Some(pid)
            }
            _ => None,
        }
    }

    /// Schedules the next attempt with a doubling delay (bounded by [`RETRY_MAX`]).
    fn retry_later(&mut self, why: &str) {
        self.retry = if self.retry.is_zero() {
            RETRY_FIRST
        } else {
            (self.retry * 2).min(RETRY_MAX)
        };
        log!(
            "guardian: {why}; trying again in {:.1} s (see the lines above)",
            self.retry.as_secs_f64()
        );
        self.current = Current::Waiting {
            at: Instant::now() + self.retry,
        };
        self.publish_retry(Some(why));
    }

    /// Says on the lock file's second line whether (and when, and why) a Supervisor is next
    /// tried, so that a Main waiting for this guardian's Supervisor does not wait in vain:
    /// see [`next_attempt`].
    fn publish_retry(&mut self, why: Option<&str>) {
        let info = match why {
            None => INFO.to_owned(),
            Some(why) => {
                // CLOCK_MONOTONIC: the same clock in every process, and not moved by a step of
                // the wall clock.
                let at = crate::sys::clock::monotonic_ns() + self.retry.as_nanos() as u64;
                format!("{INFO} {RETRY_AT}{} {why}", at / 1_000_000)
            }
        };
        if let Some(lock) = self.lock.as_mut() {
            if let Err(e) = lock.set_info(&info) {
                log!("guardian: cannot note its next attempt in its lock file: {e}");
            }
        }
    }

    /// Watch mode: the watched Supervisor is gone; start the next one, unless it shut down.
    fn check_watched(&mut self) -> Option<i32> {
        let Current::Watched { pid, fd } = &self.current else {
            return None;
        };
        if !pidfd::wait_exit(fd, Duration::ZERO).unwrap_or(true) {
            return None;
        }
        let pid = *pid;
        // A clean shutdown removes the lock file while still holding it.
        if !self.instance.lock_path().exists() {
            log!("guardian: Supervisor pid {pid} exited after a shutdown; the guardian exits");
            return Some(0);
        }
        log!("guardian: Supervisor pid {pid} died; starting a new one now");
        self.current = Current::Waiting { at: Instant::now() };
        None
    }

    /// Writes waiting reports, one line per `write` (atomic: shorter than `PIPE_BUF`).
    fn flush(&mut self) {
        while let Some(line) = self.pending.front() {
            match (&self.reports_w).write(line.as_bytes()) {
                Ok(_) => {
                    self.pending.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // EAGAIN: the pipe is full; POLLOUT tells when there is room
            }
        }
    }
}

/// A guardian that is waiting to try again, as its lock file says: how long until its next
/// attempt (zero if that time has come) and why the last one failed. `None` while it is not
/// waiting (it is starting or watching a Supervisor), or when no guardian holds the instance.
pub fn next_attempt(instance: &Instance) -> Option<(Duration, String)> {
    let lockfile::Probe::Held { info, .. } = LockFile::probe(&lock_path(instance)).ok()? else {
        return None;
    };
    let rest = info
        .strip_prefix(INFO)?
        .trim_start()
        .strip_prefix(RETRY_AT)?;
    let (ms, why) = rest.split_once(' ').unwrap_or((rest, ""));
    let at_ms: u64 = ms.parse().ok()?;
    let now_ms = crate::sys::clock::monotonic_ns() / 1_000_000;
    Some((
        Duration::from_millis(at_ms.saturating_sub(now_ms)),
        why.to_owned(),
    ))
}

/// Whether a guardian holds `instance` (and which pid it wrote).
pub fn holder(instance: &Instance) -> Option<u32> {
    match LockFile::probe(&lock_path(instance)) {
        Ok(lockfile::Probe::Held { pid, .. }) => Some(pid),
        _ => None,
    }
}

/// This process's `RLIMIT_NOFILE`.
fn own_nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    let _ = crate::syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim));
    lim
}

/// Checks that fd `fd` is open and a pipe.
fn checked_pipe(fd: RawFd) -> io::Result<()> {
    if !crate::sys::fdflags::is_pipe(fd)? {
        return Err(io::Error::other(format!("fd {fd} is not a pipe")));
    }
    Ok(())
}
