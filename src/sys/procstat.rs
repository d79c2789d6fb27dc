//! Process identity from `/proc`: a pid alone can be recycled, a pid plus its start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot) cannot.

use std::io;

/// The start time of `pid` in clock ticks since boot, or `None` if no such process exists.
pub fn start_time(pid: u32) -> io::Result<Option<u64>> {
    Ok(stat(pid)?.map(|st| st.start))
}

/// What one read of `/proc/PID/stat` tells about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (field 3: `R`, `S`, `Z`, ...).
    pub state: char,
    /// The parent pid (field 4).
    pub parent: u32,
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

/// The parent pid (field 4) of `pid`, if it exists.
pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).ok().flatten().map(|st| st.parent)
}

/// Parses the text of a `/proc/PID/stat` file. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let mut f = stat[stat.rfind(')')? + 1..].split_ascii_whitespace();
    // After ")" come field 3 (state) onwards; field 22 is the 20th of those.
    let state = f.next()?.chars().next()?;
    let parent = f.next()?.parse().ok()?;
    let start = f.nth(17)?.parse().ok()?;
    Some(Stat {
        state,
        parent,
        start,
    })
}

/// Whether a process with this pid and start time still runs. A zombie (`Z`) or dying (`X`)
/// process has exited: it only waits for its parent to collect it.
pub fn is_alive(pid: u32, start: u64) -> bool {
    if pid == 0 {
        return false;
    }
    matches!(stat(pid), Ok(Some(st)) if st.start == start && st.state != 'Z' && st.state != 'X')
}

/// The calling process's own start time.
pub fn own_start_time() -> u64 {
    start_time(std::process::id()).ok().flatten().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parens() {
        let line =
            "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                parent: 1,
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
