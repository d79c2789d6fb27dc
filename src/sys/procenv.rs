//! The defined process environment every node starts from, as a service of init's would,
//! whoever started the first Main: umask 022, nice 0, and every resource limit but
//! `RLIMIT_NOFILE` as pid 1 has it (`/proc/1/limits`, soft and hard). A node's own `umask`,
//! `nice` and `rlimit_*` keys are applied over it. The guardian takes it for itself when it
//! starts (so every Supervisor it starts has it), and every node's child sets it again
//! before `exec` (so a Supervisor under an older guardian gives it too).
//!
//! `RLIMIT_NOFILE` is the exception: nodes get the soft limit of the Main that started the
//! instance, as before (see `supervisor/spawn.rs`), while the guardian and the Supervisor
//! raise their own (they hold fds for every node).

use std::io;
use std::sync::OnceLock;

/// The umask nodes get unless their `umask` key says otherwise.
pub const DEFAULT_UMASK: u32 = 0o022;

/// `/proc/PID/limits` row names and the resource each one is.
const NAMES: [(&str, libc::__rlimit_resource_t); 15] = [
    ("Max cpu time", libc::RLIMIT_CPU),
    ("Max file size", libc::RLIMIT_FSIZE),
    ("Max data size", libc::RLIMIT_DATA),
    ("Max stack size", libc::RLIMIT_STACK),
    ("Max core file size", libc::RLIMIT_CORE),
    ("Max resident set", libc::RLIMIT_RSS),
    ("Max processes", libc::RLIMIT_NPROC),
    ("Max locked memory", libc::RLIMIT_MEMLOCK),
    ("Max address space", libc::RLIMIT_AS),
    ("Max file locks", libc::RLIMIT_LOCKS),
    ("Max pending signals", libc::RLIMIT_SIGPENDING),
    ("Max msgqueue size", libc::RLIMIT_MSGQUEUE),
    ("Max nice priority", libc::RLIMIT_NICE),
    ("Max realtime priority", libc::RLIMIT_RTPRIO),
    ("Max realtime timeout", libc::RLIMIT_RTTIME),
];

fn value(s: &str) -> Option<libc::rlim_t> {
    if s == "unlimited" {
        Some(libc::RLIM_INFINITY)
    } else {
        s.parse().ok()
    }
}

/// Parses the text of a `/proc/PID/limits` into (resource, limit), `NOFILE` left out.
pub fn parse_limits(text: &str) -> Vec<(libc::__rlimit_resource_t, libc::rlimit)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, res)) = NAMES.iter().find(|(n, _)| {
            line.strip_prefix(n)
                .is_some_and(|rest| rest.starts_with("  "))
        }) else {
            continue;
        };
        let mut f = line[name.len()..].split_whitespace();
        if let (Some(soft), Some(hard)) = (f.next().and_then(value), f.next().and_then(value)) {
            out.push((
                *res,
                libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                },
            ));
        }
    }
    out
}

fn own_limit(res: libc::__rlimit_resource_t) -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    crate::syscall!(getrlimit(res, &mut lim))?;
    Ok(lim)
}

/// Whether this process may raise hard limits (`CAP_SYS_RESOURCE`).
fn may_raise_hard() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The defined limits (pid 1's, every resource but `NOFILE`), read once. Where this process
/// cannot raise a hard limit (no `CAP_SYS_RESOURCE`), a value above its own hard limit is cut
/// to it. Empty if `/proc/1/limits` cannot be read (then limits are left as inherited; the
/// caller logs it).
pub fn defined_limits() -> &'static [(libc::__rlimit_resource_t, libc::rlimit)] {
    static LIMITS: OnceLock<Vec<(libc::__rlimit_resource_t, libc::rlimit)>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let Ok(text) = std::fs::read_to_string("/proc/1/limits") else {
            return Vec::new();
        };
        let raise = may_raise_hard();
        parse_limits(&text)
            .into_iter()
            .map(|(res, mut lim)| {
                if !raise {
                    if let Ok(own) = own_limit(res) {
                        lim.rlim_max = lim.rlim_max.min(own.rlim_max);
                        lim.rlim_cur = lim.rlim_cur.min(lim.rlim_max);
                    }
                }
                (res, lim)
            })
            .collect()
    })
}

/// Sets resource `res` to `lim` (async-signal-safe: for a child between fork and exec too).
/// Returns the errno on failure.
pub fn set_limit(res: libc::__rlimit_resource_t, lim: &libc::rlimit) -> Result<(), i32> {
    // SAFETY: setrlimit reads one rlimit struct.
    match unsafe { libc::setrlimit(res, lim) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)),
    }
}

/// Sets the nice level to `n` (async-signal-safe). Returns the errno on failure.
pub fn set_nice(n: i32) -> Result<(), i32> {
    // SAFETY: setpriority on this process with an integer value.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)),
    }
}

/// Sets the umask (async-signal-safe).
pub fn set_umask(m: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(m as libc::mode_t) };
}

/// Takes the defined environment for this process (the guardian, at its start): umask 022,
/// nice 0, [`defined_limits`]. Returns what could not be set, one message each (to log).
pub fn define_own() -> Vec<String> {
    let mut failed = Vec::new();
    set_umask(DEFAULT_UMASK);
    if let Err(e) = set_nice(0) {
        failed.push(format!("nice 0: {}", io::Error::from_raw_os_error(e)));
    }
    let limits = defined_limits();
    if limits.is_empty() {
        failed.push("resource limits: /proc/1/limits cannot be read; kept as inherited".into());
    }
    for (res, lim) in limits {
        if let Err(e) = set_limit(*res, lim) {
            failed.push(format!(
                "resource limit {res}: {}",
                io::Error::from_raw_os_error(e)
            ));
        }
    }
    failed
}

/// Raises this process's `RLIMIT_NOFILE` for its own use: the hard limit to pid 1's where it
/// is higher and this process may (`CAP_SYS_RESOURCE`), the soft one to the hard one.
/// Returns the limit as it was (`None` if unreadable).
pub fn raise_own_nofile() -> Option<libc::rlimit> {
    let was = own_limit(libc::RLIMIT_NOFILE).ok()?;
    let mut lim = was;
    if may_raise_hard() {
        let pid1 = std::fs::read_to_string("/proc/1/limits")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Max open files"))
                    .and_then(|rest| rest.split_whitespace().nth(1).and_then(value))
            });
        if let Some(h) = pid1.filter(|&h| h > lim.rlim_max && h != libc::RLIM_INFINITY) {
            lim.rlim_max = h;
        }
    }
    lim.rlim_cur = lim.rlim_max;
    if (lim.rlim_cur, lim.rlim_max) != (was.rlim_cur, was.rlim_max)
        && set_limit(libc::RLIMIT_NOFILE, &lim).is_err()
    {
        // The hard limit could not be raised after all: at least the soft one to it.
        let soft = libc::rlimit {
            rlim_cur: was.rlim_max,
            rlim_max: was.rlim_max,
        };
        let _ = set_limit(libc::RLIMIT_NOFILE, &soft);
    }
    Some(was)
}

/// This process's soft `RLIMIT_NOFILE` (0 if unreadable).
pub fn nofile_soft() -> u64 {
    own_limit(libc::RLIMIT_NOFILE).map_or(0, |l| l.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_limits_parse_without_nofile() {
        let text =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max open files            1024                 524288               files     \n\
Max nice priority         0                    0                    \n";
        let l = parse_limits(text);
        assert_eq!(l.len(), 4);
        assert_eq!(l[1].0, libc::RLIMIT_STACK);
        assert_eq!(l[1].1.rlim_cur, 8388608);
        assert_eq!(l[1].1.rlim_max, libc::RLIM_INFINITY);
        assert!(l.iter().all(|(r, _)| *r != libc::RLIMIT_NOFILE));
        assert_eq!(l[3].0, libc::RLIMIT_NICE);
    }
}
