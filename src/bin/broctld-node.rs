//! `broctld-node`: a stand-in for a Zeek instance in broctld's example
//! configuration and tests.
//!
//! It runs until told otherwise and prints a timestamped heartbeat line to
//! stdout every `--interval`. It reacts to signals the way a supervised
//! daemon would (SIGHUP is logged, SIGTERM/SIGINT stop it after an optional
//! `--stop-delay`, or are ignored with `--ignore-term`), and can misbehave on
//! request: exit by itself (`--exit-after`), fail at start (`--fail-start`),
//! announce readiness late (`--ready-fd`, `--ready-delay`), leave a
//! grandchild process behind (`--spawn-child`), leave one that escapes the
//! node's process group and session (`--setsid-child`, as a daemonizing
//! program does), or close every inherited descriptor at start
//! (`--close-fds`, as many daemons do); `--die-on-sigpipe` makes a write to
//! a pipe without a reader kill it, as it kills a shell's `echo >&3`;
//! `--non-dumpable` makes it non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`), as a
//! program run from a binary with file capabilities is (a non-root Zeek): its
//! `/proc/PID/environ`, `fd` and `fdinfo` are then unreadable to anyone without
//! `CAP_SYS_PTRACE`. `--nest-cgroup` moves a child (`sleep`, its fds 3-9 closed,
//! in a session of its own) into a sub-cgroup `sub` of the node's own cgroup
//! (only when it runs in a cgroup v2 group named `node-NAME`).
//!
//! Signals are blocked with `sigprocmask` and consumed synchronously with
//! `sigtimedwait`, whose timeout is the time left until the next monotonic
//! deadline, so the program never polls. Write errors on stdout and stderr
//! are ignored, so a closed or broken stdout does not stop it.

use std::io::Write;
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Usage text printed by `--help`.
const USAGE: &str = "\
usage: broctld-node [OPTIONS]

A stand-in for a Zeek node: prints heartbeats until stopped by a signal.

options:
  --name NAME            name shown in every line (default: $BROCTLD_NODE, else broctld-node)
  --interval DURATION    time between heartbeat lines (default: 1s)
  --stop-delay DURATION  wait this long after SIGTERM/SIGINT before exiting 0 (default: 0)
  --ignore-term          log SIGTERM and SIGINT but keep running (only SIGKILL ends it)
  --exit-after DURATION  exit by itself after DURATION
  --exit-code N          exit status used by --exit-after, 0-255 (default: 1)
  --fail-start           print 'failing at start' to stderr and exit 1 at once
  --ready-fd N           once started, write \"\\n\" to file descriptor N and close it
  --ready-delay DURATION wait this long before the readiness notification (default: 0)
  --spawn-child          start a second copy of itself in the background and leave it
  --setsid-child         like --spawn-child, but the copy calls setsid() first: it leaves
                         the node's process group and session, as a daemon does
  --close-fds            close every inherited file descriptor of 3 or more at start
                         (but not --ready-fd), as many daemons do
  --die-on-sigpipe       restore the default SIGPIPE action, so a write to a pipe with no
                         reader (the readiness pipe) kills it, as it kills `echo >&3`
  --non-dumpable         prctl(PR_SET_DUMPABLE, 0) at start, as a binary with file
                         capabilities is: /proc/PID/environ and /proc/PID/fd become
                         unreadable without CAP_SYS_PTRACE (a --spawn-child or
                         --setsid-child copy is started non-dumpable too)
  --nest-cgroup          in a cgroup v2 group of its own named node-NAME, start a child
                         (sleep, fds 3-9 closed, setsid) and move it into NODE-GROUP/sub
  --lines RATE           instead of heartbeats, print numbered lines 'NAME line=N' (N from 0)
                         at RATE lines per second, in batches every 10ms; 0 means as fast as
                         stdout takes them
  -h, --help             print this help and exit

DURATION is an integer followed by ms, s, m or h (250ms, 1s, 2m); a bare integer means seconds.
Options accept both '--opt value' and '--opt=value'.
";

/// Hint appended to every duration parse error.
const DURATION_HINT: &str = "expected a duration like 500ms, 2s, 1m";

/// Everything the command line can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    /// Name shown in every output line.
    name: String,
    /// Time between two heartbeat lines; never zero.
    interval: Duration,
    /// Delay between SIGTERM/SIGINT and the exit.
    stop_delay: Duration,
    /// Log SIGTERM/SIGINT and keep running.
    ignore_term: bool,
    /// Exit by itself after this long, if set.
    exit_after: Option<Duration>,
    /// Status used when `exit_after` fires.
    exit_code: i32,
    /// Fail immediately with status 1.
    fail_start: bool,
    /// File descriptor to notify of readiness, if any.
    ready_fd: Option<i32>,
    /// Delay before the readiness notification.
    ready_delay: Duration,
    /// Start one background copy of this program.
    spawn_child: bool,
    /// Start one background copy of this program in a new session (it escapes the group).
    setsid_child: bool,
    /// Close every inherited descriptor >= 3 (except `ready_fd`) at start.
    close_fds: bool,
    /// Restore SIGPIPE's default action (the Rust runtime ignores it).
    die_on_sigpipe: bool,
    /// Make the process non-dumpable at start.
    non_dumpable: bool,
    /// Move a child into a sub-cgroup of the node's own cgroup at start.
    nest_cgroup: bool,
    /// Print numbered lines at this rate per second (0: flat out) instead of heartbeats.
    lines: Option<u64>,
}

/// What the command line asks the program to do.
#[derive(Debug)]
enum Parsed {
    /// Print the usage text and exit 0.
    Help,
    /// Run with these options.
    Run(Options),
}

/// Parses a DURATION: an integer followed by `ms`, `s`, `m` or `h`, or a bare
/// integer meaning seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
}

/// Formats the "bad value" error for `option`.
fn bad_value(value: &str, option: &str, expected: &str) -> String {
    format!("bad value '{value}' for {option}: {expected}")
}

/// Parses the DURATION `value` given to `option`.
fn duration_arg(value: &str, option: &str) -> Result<Duration, String> {
    parse_duration(value).ok_or_else(|| bad_value(value, option, DURATION_HINT))
}

/// Parses the integer `value` given to `option`, which must lie in `range`.
fn int_arg(
    value: &str,
    option: &str,
    range: RangeInclusive<i32>,
    expected: &str,
) -> Result<i32, String> {
    let n = value.parse::<i32>().ok().filter(|n| range.contains(n));
    n.ok_or_else(|| bad_value(value, option, expected))
}

/// Parses the arguments after the program name.
fn parse(args: &[String]) -> Result<Parsed, String> {
    let env_name = std::env::var("BROCTLD_NODE").ok().filter(|n| !n.is_empty());
    let mut opts = Options {
        name: env_name.unwrap_or_else(|| "broctld-node".to_string()),
        interval: Duration::from_secs(1),
        stop_delay: Duration::ZERO,
        ignore_term: false,
        exit_after: None,
        exit_code: 1,
        fail_start: false,
        ready_fd: None,
        ready_delay: Duration::ZERO,
        spawn_child: false,
        setsid_child: false,
        close_fds: false,
        die_on_sigpipe: false,
        non_dumpable: false,
        nest_cgroup: false,
        lines: None,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (option, inline) = match arg.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let is_flag = matches!(
            option,
            "-h" | "--help"
                | "--ignore-term"
                | "--fail-start"
                | "--spawn-child"
                | "--setsid-child"
                | "--close-fds"
                | "--die-on-sigpipe"
                | "--non-dumpable"
                | "--nest-cgroup"
        );
        if is_flag && inline.is_some() {
            return Err(format!("option {option} takes no value"));
        }
        // The value is `--opt=value`'s inline part, else the next argument.
        let mut value = || {
            (inline.clone().or_else(|| iter.next().cloned()))
                .ok_or_else(|| format!("missing value for {option}"))
        };
        match option {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--ignore-term" => opts.ignore_term = true,
            "--fail-start" => opts.fail_start = true,
            "--spawn-child" => opts.spawn_child = true,
            "--setsid-child" => opts.setsid_child = true,
            "--close-fds" => opts.close_fds = true,
            "--die-on-sigpipe" => opts.die_on_sigpipe = true,
            "--non-dumpable" => opts.non_dumpable = true,
            "--nest-cgroup" => opts.nest_cgroup = true,
            "--name" => {
                opts.name = value()?;
                if opts.name.is_empty() {
                    return Err(bad_value("", option, "expected a non-empty name"));
                }
            }
            "--interval" => {
                let v = value()?;
                opts.interval = duration_arg(&v, option)?;
                if opts.interval.is_zero() {
                    return Err(bad_value(&v, option, "must be greater than zero"));
                }
            }
            "--stop-delay" => opts.stop_delay = duration_arg(&value()?, option)?,
            "--exit-after" => opts.exit_after = Some(duration_arg(&value()?, option)?),
            "--ready-delay" => opts.ready_delay = duration_arg(&value()?, option)?,
            "--lines" => {
                let v = value()?;
                let rate = v
                    .parse::<u64>()
                    .map_err(|_| bad_value(&v, option, "expected lines per second"))?;
                opts.lines = Some(rate);
                opts.interval = Duration::from_millis(10);
            }
            "--exit-code" => {
                let expected = "expected an integer from 0 to 255";
                opts.exit_code = int_arg(&value()?, option, 0..=255, expected)?;
            }
            "--ready-fd" => {
                // 0, 1 and 2 are stdio, which the notification would close.
                let expected = "expected a file descriptor number of 3 or more";
                opts.ready_fd = Some(int_arg(&value()?, option, 3..=i32::MAX, expected)?);
            }
            _ => return Err(format!("unknown option '{arg}' (see --help)")),
        }
    }
    Ok(Parsed::Run(opts))
}

/// Formats the current UTC wall-clock time as `2026-11-24T17:12:36.123Z`.
fn timestamp() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Writes one timestamped line to stdout and flushes it; errors are ignored.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{} {line}", timestamp());
    let _ = stdout.flush();
}

/// Writes lines `NAME line=N` for `count` numbers from `first` in one write; returns the next
/// number. Errors are ignored.
fn print_numbered(name: &str, first: u64, count: u64) -> u64 {
    let mut text = String::new();
    for n in first..first + count {
        text.push_str(&format!("{name} line={n}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    first + count
}

/// Writes one timestamped line to stderr; errors are ignored.
fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{} {line}", timestamp());
}

/// The set of signals the program handles synchronously.
fn handled_signals() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` fully initialises the set it is given, and the
    // pointer refers to writable storage of the right type; `sigaddset` is
    // then called on that initialised set with valid signal numbers, which
    // cannot fail.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks the handled signals so that they stay pending until taken by
/// [`wait_signal`]. Called while the process is still single-threaded.
fn block_signals(set: &libc::sigset_t) {
    // SAFETY: `set` is an initialised signal set and a null old-set pointer
    // is allowed; the process has a single thread at this point, so
    // `sigprocmask` is well defined.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc != 0 {
        err(&format!("sigprocmask: {}", std::io::Error::last_os_error()));
    }
}

/// Waits for one of the blocked signals for at most `timeout` (forever if
/// `None`). Returns the signal number, or `None` on timeout or interruption.
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
    // SAFETY: `set` is an initialised signal set, a null `siginfo_t` pointer
    // is allowed, and `ts_ptr` is either null (wait forever) or points to a
    // valid normalised `timespec` that outlives the call.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), ts_ptr) };
    if sig > 0 {
        return Some(sig);
    }
    match std::io::Error::last_os_error() {
        // EAGAIN is a timeout, EINTR an interruption by another signal (e.g.
        // SIGCONT): both simply make the caller re-check its deadlines.
        e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {}
        // Not expected (the timeout is always valid); pause so as not to spin.
        e => {
            err(&format!("sigtimedwait: {e}"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    None
}

/// Writes the readiness newline to `fd` and closes it, or warns if it fails.
fn notify_ready(fd: i32, name: &str) {
    // SAFETY: F_GETFD only queries descriptor flags; it is harmless on any
    // integer and reports EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        let e = std::io::Error::last_os_error();
        err(&format!(
            "{name} warning: --ready-fd {fd} is not open ({e}), continuing"
        ));
        return;
    }
    // SAFETY: `fd` is open (checked above) and was handed to us by the
    // command line for this purpose; the buffer is a valid 1-byte slice.
    let written = unsafe { libc::write(fd, b"\n".as_ptr().cast(), 1) };
    if written != 1 {
        let e = std::io::Error::last_os_error();
        err(&format!(
            "{name} warning: write to --ready-fd {fd} failed ({e})"
        ));
    }
    // SAFETY: the descriptor is owned by this program per --ready-fd and no
    // Rust object wraps it, so closing it cannot invalidate anything else.
    unsafe { libc::close(fd) };
}

/// Starts a second copy of this program in the background, not waited for;
/// with `escape`, the copy first calls `setsid()` and so leaves the node's
/// process group and session.
fn spawn_child(opts: &Options, escape: bool) {
    let suffix = if escape { "escaped" } else { "child" };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("broctld-node")
        .arg("--name")
        .arg(format!("{}-{suffix}", opts.name))
        .arg("--interval")
        .arg(format!("{}ms", opts.interval.as_millis()))
        .stdin(Stdio::null());
    if opts.non_dumpable {
        // An exec makes a process dumpable again: the copy asks for it itself.
        cmd.arg("--non-dumpable");
    }
    if escape {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid(), which is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(child) => out(&format!(
            "{} spawned {suffix} pid={}",
            opts.name,
            child.id()
        )),
        Err(e) => err(&format!(
            "{} warning: cannot spawn {suffix}: {e}",
            opts.name
        )),
    }
}

/// `--nest-cgroup`: where the node runs in a cgroup v2 group named `node-NAME`, starts a
/// child (`sleep 600` that closed fds 3-9, the node lock among them, and left the session
/// with `setsid`) and moves it into the sub-group `sub` of the node's group, as a program
/// that manages cgroups of its own does. Elsewhere it does nothing (and says so).
fn nest_cgroup(name: &str) {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        out(&format!("{name} nest-cgroup: no cgroup v2 group"));
        return;
    };
    if !path.ends_with(&format!("/node-{name}")) {
        out(&format!(
            "{name} nest-cgroup: not in a group of its own ({path})"
        ));
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(mnt) = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2").then(|| left.split(' ').nth(4))?
    }) else {
        out(&format!("{name} nest-cgroup: no cgroup2 mount"));
        return;
    };
    let sub = format!("{mnt}{path}/sub");
    if let Err(e) = std::fs::create_dir_all(&sub) {
        err(&format!("{name} warning: nest-cgroup: mkdir {sub}: {e}"));
        return;
    }
    let child = Command::new("sh")
        .args([
            "-c",
            "exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; exec setsid sleep 600",
        ])
        .stdin(Stdio::null())
        .spawn();
    match child {
        Ok(c) => {
            let pid = c.id();
            match std::fs::write(format!("{sub}/cgroup.procs"), pid.to_string()) {
                Ok(()) => out(&format!("{name} nested child pid={pid} in {sub}")),
                Err(e) => err(&format!(
                    "{name} warning: nest-cgroup: moving pid {pid} to {sub}: {e}"
                )),
            }
        }
        Err(e) => err(&format!("{name} warning: nest-cgroup: cannot spawn: {e}")),
    }
}

/// Closes every open descriptor of 3 or more except `keep`, as a daemon
/// that starts with `exec 3>&-` (or closes everything it inherited) does.
fn close_inherited_fds(keep: Option<i32>) {
    // Collect first: the directory listing holds a descriptor of its own.
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => {
            err(&format!("warning: cannot list /proc/self/fd: {e}"));
            return;
        }
    };
    for fd in fds.into_iter().filter(|fd| *fd >= 3 && Some(*fd) != keep) {
        // SAFETY: no Rust object in this program owns a descriptor of 3 or
        // more at this point (the listing's own one is closed already, and
        // closing it again only fails with EBADF).
        unsafe { libc::close(fd) };
    }
}

/// Runs the node until a signal or `--exit-after` ends it; returns the exit status.
fn run(opts: &Options, args: &[String]) -> i32 {
    let (name, pid) = (&opts.name, std::process::id());
    if opts.fail_start {
        err(&format!("{name} failing at start"));
        return 1;
    }
    if opts.non_dumpable {
        // SAFETY: PR_SET_DUMPABLE takes an integer and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            err(&format!(
                "{name} warning: prctl(PR_SET_DUMPABLE, 0): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if opts.close_fds {
        close_inherited_fds(opts.ready_fd);
    }
    if opts.nest_cgroup {
        nest_cgroup(name);
    }
    if opts.die_on_sigpipe {
        // SAFETY: setting a signal's disposition to SIG_DFL installs no handler and touches
        // no memory; the process is single-threaded here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let signals = handled_signals();
    block_signals(&signals);
    if let Some(fd) = opts.ready_fd {
        // SAFETY: F_SETFD on a descriptor number only changes its
        // close-on-exec flag (EBADF if closed, reported later); it keeps the
        // readiness pipe out of a spawned child.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    out(&format!("{name} pid={pid} started args={}", args.join(" ")));
    err(&format!("{name} pid={pid} stderr ready"));
    if opts.spawn_child {
        spawn_child(opts, false);
    }
    if opts.setsid_child {
        spawn_child(opts, true);
    }

    let start = Instant::now();
    // A deadline of `None` is never reached (too far away to represent).
    let mut next_heartbeat = start.checked_add(opts.interval);
    let mut ready_at = opts
        .ready_fd
        .and_then(|_| start.checked_add(opts.ready_delay));
    let exit_at = opts.exit_after.and_then(|d| start.checked_add(d));
    // Set on SIGTERM/SIGINT; `stop_at` is `None` if the delay is unrepresentable.
    let mut stopping = false;
    let mut stop_at: Option<Instant> = None;
    let mut beats: u64 = 0;
    let mut numbered: u64 = 0;
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|t| now >= t) {
            return 0;
        }
        if exit_at.is_some_and(|t| now >= t) {
            out(&format!("{name} exiting with code {}", opts.exit_code));
            return opts.exit_code;
        }
        if let (Some(fd), Some(t)) = (opts.ready_fd, ready_at) {
            if now >= t {
                notify_ready(fd, name);
                ready_at = None;
            }
        }
        if let (Some(rate), Some(t)) = (opts.lines, next_heartbeat) {
            if now >= t || rate == 0 {
                let batch = if rate == 0 { 1000 } else { (rate / 100).max(1) };
                numbered = print_numbered(name, numbered, batch);
                next_heartbeat = t.checked_add(opts.interval).filter(|n| *n > now);
                next_heartbeat = next_heartbeat.or_else(|| now.checked_add(opts.interval));
                if rate == 0 {
                    next_heartbeat = Some(now);
                }
            }
        } else if let Some(t) = next_heartbeat.filter(|t| now >= *t) {
            beats += 1;
            out(&format!("{name} pid={pid} heartbeat={beats}"));
            // Skip missed beats (e.g. after SIGSTOP) instead of bursting.
            let next = t.checked_add(opts.interval).filter(|n| *n > now);
            next_heartbeat = next.or_else(|| now.checked_add(opts.interval));
        }
        let next_deadline = [next_heartbeat, ready_at, exit_at, stop_at]
            .into_iter()
            .flatten()
            .min();
        let timeout = next_deadline.map(|t| t.saturating_duration_since(Instant::now()));
        let Some(sig) = wait_signal(&signals, timeout) else {
            continue;
        };
        if sig == libc::SIGHUP {
            out(&format!("{name} got SIGHUP, continuing"));
            continue;
        }
        let sig_name = if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if opts.ignore_term {
            out(&format!("{name} got {sig_name}, ignoring"));
            continue;
        }
        out(&format!("{name} got {sig_name}, exiting"));
        if !stopping {
            // Heartbeats go on during the stop delay, like a draining node.
            stopping = true;
            stop_at = Instant::now().checked_add(opts.stop_delay);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(Parsed::Help) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
        }
        Ok(Parsed::Run(opts)) => std::process::exit(run(&opts, &args)),
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "broctld-node: {message}");
            std::process::exit(2);
        }
    }
}
