//! `top`: what each node's processes use, from `/proc`. A node is its own process group (the
//! Supervisor starts each in a new session), so its figures add up every process of that group:
//! the node and any helpers it forked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Figures of one process from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStat {
    /// Process group.
    pub pgrp: u32,
    /// User + system time, clock ticks.
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pgrp: num(5)? as u32,
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        rss_pages: num(24)?,
    })
}

/// Every process's figures, by pid.
pub fn snapshot() -> HashMap<u32, ProcStat> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat(&t))
        {
            out.insert(pid, st);
        }
    }
    out
}

/// What a node's process group uses.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Processes in the group.
    pub procs: u32,
    /// Threads, all processes.
    pub threads: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU use over the sampling interval, percent of one CPU.
    pub cpu_percent: f64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes a constant and returns a number.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn group_totals(
    snap: &HashMap<u32, ProcStat>,
    leader: u32,
    members: Option<&Vec<u32>>,
) -> (u32, u64, u64, u64) {
    let mut procs = 0;
    let mut ticks = 0;
    let mut threads = 0;
    let mut rss = 0;
    for (pid, s) in snap {
        let member = match members {
            Some(m) => m.contains(pid),
            None => s.pgrp == leader || *pid == leader,
        };
        if member {
            procs += 1;
            ticks += s.cpu_ticks;
            threads += s.threads;
            rss += s.rss_pages;
        }
    }
    (procs, ticks, threads, rss)
}

/// Measures the nodes led by `leaders` over `interval` (shorter if Ctrl-C is pressed
/// meanwhile: the pause is taken in slices of at most 100 ms): each one's cgroup members if
/// `members` has them (every process of the node, wherever it went), else its process group.
pub fn measure(
    leaders: &[u32],
    members: &HashMap<u32, Vec<u32>>,
    interval: Duration,
) -> HashMap<u32, Usage> {
    let first = snapshot();
    let t0 = Instant::now();
    while !super::output::follow_should_end() {
        let left = interval.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    let second = snapshot();
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let hz = ticks_per_second();
    let page = page_size();
    let mut out = HashMap::new();
    for &l in leaders {
        let (_, t1, _, _) = group_totals(&first, l, members.get(&l));
        let (procs, t2, threads, rss) = group_totals(&second, l, members.get(&l));
        if procs == 0 {
            continue;
        }
        out.insert(
            l,
            Usage {
                procs,
                threads,
                rss_bytes: rss * page,
                cpu_percent: (t2.saturating_sub(t1) as f64 / hz) / secs * 100.0,
            },
        );
    }
    out
}

/// `12.3 MiB`, `512 KiB`, `1.1 GiB`.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.1} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else {
        format!("{} KiB", n / 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 123456 1000000 250 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.threads, 5);
        assert_eq!(s.rss_pages, 250);
    }

    #[test]
    fn own_process_is_measured() {
        let me = std::process::id();
        let snap = snapshot();
        assert!(snap.contains_key(&me));
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(2048), "2 KiB");
    }
}
