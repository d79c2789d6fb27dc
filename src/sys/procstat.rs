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
    let mut f = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    // After ")" come field 3 (state) onwards; field 22 is the 20th of those.
    let state = f.next()?.chars().next()?;
    let parent = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    let start = f.nth(15)?.parse().ok()?;
    Some(Stat {
        state,
        parent,
        pgid,
        session,
        start,
    })
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
                start: 987654
            })
        );
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
