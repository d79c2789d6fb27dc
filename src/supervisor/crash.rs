//! Crash reports, written by the Supervisor at the moment it reaps a node that ended abnormally
//! (not later, when the evidence may be gone): into the node's folder, one file per crash,
//! `broctld-crash-YYYYMMDDTHHMMSS.mmmZ-pidPID.txt`, the newest [`KEEP`] kept.

use crate::config::NodeSpec;
use crate::protocol::node::Exit;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Reports kept per node.
pub const KEEP: usize = 10;
/// Lines of each output file in a report.
pub const TAIL_LINES: usize = 100;
/// File name prefix.
pub const PREFIX: &str = "broctld-crash-";

/// The last `n` lines of a regular file (reading at most its last 256 KiB). The file is in
/// the node's folder, so it is opened without blocking (a FIFO put there must not hang the
/// Supervisor) and anything but a regular file (a FIFO, `/dev/zero` behind a symlink) is
/// refused.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let len = meta.len();
    let start = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably a partial line
    }
    let from = lines.len().saturating_sub(n);
    Ok(lines[from..].iter().map(|s| s.to_string()).collect())
}

fn compact_time(ms: u64) -> String {
    // 2026-11-24T17:12:36.123Z -> 20261124T171236.123Z
    crate::sys::clock::format_wall_ms(ms).replace(['-', ':'], "")
}

fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// What is known about the crash.
pub struct Crash<'a> {
    /// The node.
    pub spec: &'a NodeSpec,
    /// The instance name.
    pub instance: &'a str,
    /// The dead process.
    pub pid: u32,
    /// How it ended.
    pub exit: Exit,
    /// How long it ran, ms.
    pub uptime_ms: u64,
    /// The environment it was given beyond its own (`BROCTLD_*`).
    pub extra_env: &'a [(&'a str, &'a str)],
}

/// Writes the report; returns its path. Old reports beyond [`KEEP`] are removed.
pub fn write(c: &Crash<'_>) -> std::io::Result<PathBuf> {
    let now = crate::sys::clock::wall_ms();
    let path = c
        .spec
        .cwd
        .join(format!("{PREFIX}{}-pid{}.txt", compact_time(now), c.pid));
    let core = matches!(c.exit, Exit::Signal { core: true, .. });
    let mut r = String::new();
    let _ = writeln!(r, "broctld crash report");
    let _ = writeln!(r, "node: {}", c.spec.name);
    let _ = writeln!(r, "instance: {}", c.instance);
    let _ = writeln!(r, "time: {}", crate::sys::clock::format_wall_ms(now));
    let _ = writeln!(r, "pid: {}", c.pid);
    let _ = writeln!(r, "exit: {}", c.exit.describe());
    let _ = writeln!(r, "core dumped: {}", if core { "yes" } else { "no" });
    let _ = writeln!(r, "uptime_ms: {}", c.uptime_ms);
    let _ = writeln!(
        r,
        "command: {}",
        c.spec
            .command
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(r, "cwd: {}", c.spec.cwd.display());
    let _ = writeln!(r, "\n== environment ==");
    let mut env: Vec<(String, String)> = Vec::new();
    let given = super::spawn::node_env(c.spec).into_iter().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    for (k, v) in given {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    for (k, v) in c.extra_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env.sort();
    for (k, v) in env {
        let _ = writeln!(r, "{k}={v}");
    }
    let _ = writeln!(r, "\n== limits ==");
    // The node's own /proc entry is gone once reaped; it inherited these (see docs).
    r.push_str(&std::fs::read_to_string("/proc/self/limits").unwrap_or_default());
    for (what, p) in [("stderr", &c.spec.stderr), ("stdout", &c.spec.stdout)] {
        let _ = writeln!(
            r,
            "\n== last {TAIL_LINES} lines of {what} ({}) ==",
            p.display()
        );
        match tail(p, TAIL_LINES) {
            Ok(lines) => {
                for l in lines {
                    let _ = writeln!(r, "{l}");
                }
            }
            Err(e) => {
                let _ = writeln!(r, "(cannot read: {e})");
            }
        }
    }
    // The report holds the node's whole environment (secrets, often): owner-only, and never
    // through a symlink someone planted in the node's cwd.
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        f.write_all(r.as_bytes())?;
    }
    prune(&c.spec.cwd);
    Ok(path)
}

/// The crash reports in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".txt"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn prune(dir: &Path) {
    let all = list(dir);
    if all.len() > KEEP {
        for p in &all[..all.len() - KEEP] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("--interval"), "--interval");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn names_sort_by_time() {
        assert_eq!(compact_time(0), "19700101T000000.000Z");
    }
}
