//! Exit reports: how the guardian tells the Supervisor how a process it reaped ended.
//!
//! Nodes whose Supervisor died are reparented to the guardian (a child subreaper), so the
//! guardian, not the Supervisor that adopts them, collects their exit status. It sends one
//! line per reaped process, `exit PID START KIND VALUE CORE`, on a pipe whose read end every
//! Supervisor it spawns inherits. `START` is the process's start time (field 22 of
//! `/proc/PID/stat`, read while it was still a zombie), so a report is matched to a node by
//! pid *and* start time and never to a later process that reused the pid. A line is far
//! shorter than `PIPE_BUF`, so each `write` of one is atomic.

use crate::protocol::node::Exit;

/// Environment variable naming the fd on which a Supervisor reads its guardian's reports.
pub const FD_ENV: &str = "BROCTLD_GUARDIAN_FD";
/// Environment variable naming the pid of the guardian at the pipe's other end (kept across
/// an upgrade's exec: the guardian a Supervisor started itself is not its parent).
pub const PID_ENV: &str = "BROCTLD_GUARDIAN_PID";

/// One reaped process: who it was and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot).
    pub start: u64,
    /// How it ended.
    pub exit: Exit,
}

impl Report {
    /// The report as one line, newline included.
    pub fn line(&self) -> String {
        let (kind, value, core) = Exit::encode(Some(self.exit));
        format!(
            "exit {} {} {kind} {value} {}\n",
            self.pid, self.start, core as u8
        )
    }

    /// Parses one line (without its newline); `None` if it is not a report.
    pub fn parse(line: &str) -> Option<Report> {
        let mut f = line.strip_prefix("exit ")?.split(' ');
        let pid = f.next()?.parse().ok()?;
        let start = f.next()?.parse().ok()?;
        let kind = f.next()?.parse().ok()?;
        let value = f.next()?.parse().ok()?;
        let core = f.next()? == "1";
        let exit = Exit::decode(kind, value, core)?;
        f.next().is_none().then_some(Report { pid, start, exit })
    }

    /// A report from a `waitid` result, for a process that started at `start`.
    pub fn from_siginfo(info: &libc::siginfo_t, start: u64) -> Option<Report> {
        // SAFETY: for a SIGCHLD siginfo filled in by waitid, si_pid and si_status are valid.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            libc::CLD_KILLED => Exit::Signal {
                signal: status,
                core: false,
            },
            libc::CLD_DUMPED => Exit::Signal {
                signal: status,
                core: true,
            },
            _ => return None,
        };
        Some(Report {
            pid: pid as u32,
            start,
            exit,
        })
    }
}

/// Splits complete lines off the front of `buf` (keeping a partial last line) and parses them.
pub fn take_reports(buf: &mut Vec<u8>) -> Vec<Report> {
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let out = String::from_utf8_lossy(&buf[..end])
        .lines()
        .filter_map(Report::parse)
        .collect();
    buf.drain(..=end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_partial_lines_wait() {
        let a = Report {
            pid: 42,
            start: 123_456,
            exit: Exit::Code(7),
        };
        let b = Report {
            pid: 43,
            start: 9,
            exit: Exit::Signal {
                signal: 11,
                core: true,
            },
        };
        let mut buf = format!("{}{}exit 44 1", a.line(), b.line()).into_bytes();
        assert_eq!(take_reports(&mut buf), vec![a, b]);
        assert_eq!(buf, b"exit 44 1");
        assert!(Report::parse("exit 1 2 3").is_none());
        assert!(Report::parse("garbage").is_none());
    }
}
