//! Process identity from `/proc`: a pid alone can be recycled, a pid plus its start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot) cannot.

use std::io;

/// The start time of `pid` in clock ticks since boot, or `None` if no such process exists.
pub fn start_time(pid: u32) -> io::Result<Option<u64>> {
    Ok(stat(pid)?.map(|st| st.start))
}

/// The start time (as [`start_time`] reads it) of a process created between two readings of
/// `CLOCK_BOOTTIME` ([`crate::sys::clock::boottime_ns`]), `before` and `after`, without
/// reading `/proc`: the kernel stamps a new process with that clock and `/proc` shows the stamp
/// in clock ticks (`USER_HZ`, 100 a second), so when both readings fall in the same tick the
/// process's start is that tick. `None` when they do not (read `/proc` then).
pub fn start_between(before: u64, after: u64) -> Option<u64> {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tick = *TICK_NS.get_or_init(|| {
        // SAFETY: sysconf takes a constant and reads no memory.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        match u64::try_from(hz) {
            // The kernel divides by NSEC_PER_SEC / USER_HZ only when that is exact.
            Ok(hz) if hz > 0 && 1_000_000_000 % hz == 0 => 1_000_000_000 / hz,
            _ => 0,
        }
    });
    (tick != 0 && before <= after && before / tick == after / tick).then_some(before / tick)
}

/// What one read of `/proc/PID/stat` tells about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (field 3: `R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent pid (field 4).
    pub parent: u32,
    /// The process group (field 5).
    pub pgid: u32,
    /// The session (field 6).
    pub session: u32,
    /// The start time in clock ticks since boot (field 22).
    pub start: u64,
    /// Threads in the process (field 20).
    pub threads: u32,
    /// Field 35 (`wchan`): since Linux 5.16, 1 for a process that is not running *if the
    /// reader may inspect it* (`ptrace` read access), 0 otherwise; so for a zombie, 1 says
    /// that [`Stat::exit_code`] is the real one.
    pub wchan: u64,
    /// Field 52 (`exit_code`, since Linux 3.5): a zombie's wait status in `waitpid` form, as
    /// its parent will collect it. The kernel shows 0 to a reader without `ptrace` read access.
    pub exit_code: Option<i32>,
}

/// The state, parent and start time of `pid`, from one read.
pub fn stat(pid: u32) -> io::Result<Option<Stat>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_stat(&text))
}

/// The parent pid (field 4) of `pid`, `Ok(None)` if it does not exist.
pub fn parent(pid: u32) -> io::Result<Option<u32>> {
    Ok(stat(pid)?.map(|st| st.parent))
}

/// Parses the text of a `/proc/PID/stat` file. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    // After ")" come field 3 (state) onwards: field N is at index N - 3.
    let f: Vec<&str> = stat[stat.rfind(')')? + 1..]
        .split_ascii_whitespace()
        .collect();
    let field = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        state: field(3)?.chars().next()?,
        parent: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start: field(22)?.parse().ok()?,
        threads: field(20).and_then(|v| v.parse().ok()).unwrap_or(0),
        wchan: field(35).and_then(|v| v.parse().ok()).unwrap_or(0),
        exit_code: field(52).and_then(|v| v.parse().ok()),
    })
}

/// What `/proc` shows of the process `pid` that started at `start`, once it may have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It still runs.
    Running,
    /// It has ended and waits for `parent` to collect it. `status` is its wait status (as
    /// `waitpid` gives it to that parent) when `/proc` shows it to us: see [`zombie_status`].
    Zombie {
        /// Its parent, the one process that will collect (and may report) it.
        parent: u32,
        /// Its wait status, if it can be read.
        status: Option<i32>,
    },
    /// No such process: it was collected (or the pid is another process's now). A dying
    /// process (`X`, being collected this instant) counts as gone too.
    Gone,
}

/// [`Seen`] for `pid` with this start time, from one read of `/proc/PID/stat`.
pub fn seen(pid: u32, start: u64) -> io::Result<Seen> {
    Ok(match stat(pid)? {
        Some(st) if st.start == start => match st.state {
            'Z' => Seen::Zombie {
                parent: st.parent,
                status: zombie_status(&st),
            },
            'X' => Seen::Gone,
            _ => Seen::Running,
        },
        _ => Seen::Gone,
    })
}

/// A zombie's wait status, from field 52 of its `/proc/PID/stat`, when that field is to be
/// believed: the process is a zombie whose every thread has ended (a thread-group leader that
/// ended before its other threads is shown `Z` while they run), the kernel has the field
/// (3.5), and we may read it. The kernel shows the real value only to a reader with `ptrace`
/// read access to the process (root, or its own user) and 0 to anyone else, which would read
/// as a clean `exit 0`; since 5.16 field 35 (`wchan`) is 1 for a process that is not running
/// exactly when that access is granted (0 otherwise), which is the test used here. On an
/// older kernel `wchan` is 0 for every zombie: the status is then never read from `/proc`
/// (the guardian's report is waited for instead).
///
/// One case reads differently from `waitpid`: a process whose main thread ended first
/// (`pthread_exit`) and whose last thread then called `exit(N)` shows the main thread's
/// status (0) here, while its parent collects N.
pub fn zombie_status(st: &Stat) -> Option<i32> {
    (st.state == 'Z' && st.threads == 1 && st.wchan == 1)
        .then_some(st.exit_code)
        .flatten()
}

/// Whether a process with this pid and start time still runs. A zombie (`Z`) or dying (`X`)
/// process has exited: it only waits for its parent to collect it.
pub fn alive(pid: u32, start: u64) -> io::Result<bool> {
    if pid == 0 {
        return Ok(false);
    }
    Ok(matches!(stat(pid)?, Some(st) if st.start == start && st.state != 'Z' && st.state != 'X'))
}

/// [`alive`], failing safe: a process whose state cannot be read (an OS error such as EMFILE)
/// counts as alive, since an error is never evidence that it is gone.
pub fn is_alive(pid: u32, start: u64) -> bool {
    alive(pid, start).unwrap_or(true)
}

/// How long the process `pid` with this start time has run, in ns (from the kernel's record
/// of its start, so an adopted node keeps its real uptime). `Ok(None)` if it is gone.
pub fn age_ns(pid: u32, start: u64) -> io::Result<Option<u64>> {
    match stat(pid)? {
        Some(st) if st.start == start => {}
        _ => return Ok(None),
    }
    // SAFETY: sysconf takes a name constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec; the start time counts from boot (CLOCK_BOOTTIME).
    crate::syscall!(clock_gettime(libc::CLOCK_BOOTTIME, &mut ts))?;
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let started = start.saturating_mul(1_000_000_000 / hz);
    Ok(Some(now.saturating_sub(started)))
}

/// Sets this process's name (`/proc/self/comm`, what `ps` and `top` show) to the first 15
/// bytes of `name`: a program started through `/proc/self/fd/N` is otherwise named `N`.
pub fn set_own_name(name: &str) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let b = name.as_bytes();
    let n = b.len().min(15);
    buf[..n].copy_from_slice(&b[..n]);
    if buf[..n].contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"));
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `buf`, which
    // outlives the call.
    crate::syscall!(prctl(
        libc::PR_SET_NAME,
        buf.as_ptr() as libc::c_ulong,
        0,
        0,
        0
    ))
    .map(|_| ())
}

/// A start time (clock ticks since boot, as [`start_time`] reads it) as `CLOCK_MONOTONIC` ns:
/// the boot clock counts time suspended, the monotonic one does not.
pub fn start_monotonic_ns(start: u64) -> u64 {
    // SAFETY: sysconf takes a name constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let suspended =
        crate::sys::clock::boottime_ns().saturating_sub(crate::sys::clock::monotonic_ns());
    start
        .saturating_mul(1_000_000_000 / hz)
        .saturating_sub(suspended)
}

/// The calling process's own start time.
pub fn own_start_time() -> u64 {
    start_time(std::process::id()).ok().flatten().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start time computed from the clock around a spawn is the one `/proc` shows, for
    /// every spawn whose window stays inside one tick (most of them).
    #[test]
    fn start_between_matches_proc_for_processes_made_in_the_window() {
        let mut hits = 0;
        for _ in 0..100 {
            let before = crate::sys::clock::boottime_ns();
            let mut child = std::process::Command::new("sleep")
                .arg("5")
                .spawn()
                .expect("spawn sleep");
            let after = crate::sys::clock::boottime_ns();
            let computed = start_between(before, after);
            let proc = start_time(child.id()).unwrap();
            let _ = child.kill();
            let _ = child.wait();
            if let Some(t) = computed {
                assert_eq!(Some(t), proc, "window {before}..{after}");
                hits += 1;
            }
        }
        assert!(hits > 0, "no spawn stayed within one tick");
        assert_eq!(start_between(10, 5), None);
    }

    #[test]
    fn parses_a_name_with_spaces_and_parens() {
        let line =
            "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                parent: 1,
                pgid: 1234,
                session: 1234,
                start: 987654,
                threads: 1,
                wchan: 0,
                exit_code: None,
            })
        );
    }

    /// A zombie's line as the kernel shows it to a reader that may inspect it (`wchan` 1, the
    /// real status in field 52) and to one that may not (`wchan` 0, field 52 zeroed).
    fn zombie_line(threads: u32, wchan: u32, code: i32) -> String {
        let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        let mut set = |n: usize, v: String| f[n - 3] = v;
        set(3, "Z".into());
        set(4, "77".into());
        set(5, "100".into());
        set(20, threads.to_string());
        set(22, "4242".into());
        set(35, wchan.to_string());
        set(52, code.to_string());
        format!("100 (sh) {}", f.join(" "))
    }

    #[test]
    fn a_zombie_status_is_read_only_when_the_kernel_shows_it() {
        let readable = parse_stat(&zombie_line(1, 1, 7 << 8)).unwrap();
        assert_eq!((readable.parent, readable.start), (77, 4242));
        assert_eq!(zombie_status(&readable), Some(7 << 8));
        // Not ours to inspect: the kernel shows 0, which must not read as `exit 0`.
        assert_eq!(
            zombie_status(&parse_stat(&zombie_line(1, 0, 0)).unwrap()),
            None
        );
        // A main thread that ended while other threads run: the process has not ended.
        assert_eq!(
            zombie_status(&parse_stat(&zombie_line(3, 1, 0)).unwrap()),
            None
        );
        // A kernel without field 52.
        let short = "100 (sh) Z 77 100 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 4242";
        assert_eq!(zombie_status(&parse_stat(short).unwrap()), None);
    }

    /// On this kernel: a zombie that is not our child (a grandchild, its parent stopped so it
    /// stays a zombie) shows us its real wait status, and one we may not inspect does not.
    #[test]
    fn a_zombie_that_is_not_our_child_shows_its_status() {
        // The intermediate shell forks a child that exits 7, then execs a sleep that never
        // collects it.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "(exit 7) & exec sleep 30"])
            .spawn()
            .expect("spawn sh");
        let pid = parent.id();
        let mut child = None;
        for _ in 0..500 {
            child = stat(child_pid(pid))
                .ok()
                .flatten()
                .filter(|st| st.state == 'Z');
            if child.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let child = child.expect("a zombie grandchild");
        // Read as another user (when we are root and can become one): the kernel hides it.
        let as_nobody = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "cat",
            ])
            .arg(format!("/proc/{}/stat", child_pid(pid)))
            .output();
        let _ = parent.kill();
        let _ = parent.wait();
        assert_eq!(child.parent, pid);
        if !kernel_at_least(5, 16) {
            // `wchan` does not say whether we may read field 52: it is never trusted.
            assert_eq!(zombie_status(&child), None, "{child:?}");
            return;
        }
        assert_eq!(zombie_status(&child), Some(7 << 8), "{child:?}");
        // SAFETY: geteuid reads no memory.
        if unsafe { libc::geteuid() } == 0 {
            if let Some(st) = as_nobody
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| parse_stat(&String::from_utf8_lossy(&o.stdout)))
            {
                assert_eq!((st.wchan, st.exit_code), (0, Some(0)), "{st:?}");
                assert_eq!(zombie_status(&st), None, "{st:?}");
            }
        }
    }

    fn child_pid(parent: u32) -> u32 {
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .ok()
            .and_then(|k| k.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = r
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let st = own_start_time();
        assert!(st > 0);
        assert!(is_alive(me, st));
        assert!(!is_alive(me, st + 1));
    }
}
