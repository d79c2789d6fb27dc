//! Timestamped log lines. The Supervisor's stderr is its log file, so a line written here lands
//! there in one `write` (lines are short, and `O_APPEND` keeps concurrent writers whole).
//!
//! A process that writes a log file through its stderr (the Supervisor and the guardian write
//! `supervisor.log`) names it with [`rotate_with`]: before each line the file is rotated like
//! Main's log once it reaches [`ROTATE_AT`] (`NAME.1` .. `NAME.3` kept), and a process whose
//! file was rotated by another writer reopens the current one onto its stdout and stderr.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Size at which a log file is rotated.
pub const ROTATE_AT: u64 = 1024 * 1024;
/// Rotated files kept.
pub const KEEP: usize = 3;

static ROTATED_FILE: OnceLock<PathBuf> = OnceLock::new();

/// `p` with `.n` appended.
pub fn rotated(p: &Path, n: usize) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Rotates `p` if it is at least `limit` bytes long.
pub fn rotate_if_needed(p: &Path, limit: u64, keep: usize) {
    let Ok(meta) = std::fs::metadata(p) else {
        return;
    };
    if meta.len() < limit {
        return;
    }
    // Another writer may rotate at the same moment: every rename failing is harmless.
    for n in (1..keep).rev() {
        let _ = std::fs::rename(rotated(p, n), rotated(p, n + 1));
    }
    let _ = std::fs::rename(p, rotated(p, 1));
}

/// Declares that this process's stdout and stderr are the log file `path`, to be rotated. Does
/// nothing if stderr is not that file (e.g. a Supervisor run by hand from a terminal).
pub fn rotate_with(path: PathBuf) {
    let is_ours = match (stderr_id(), std::fs::symlink_metadata(&path)) {
        (Some(ours), Ok(m)) => ours == (m.dev(), m.ino()),
        _ => false,
    };
    if is_ours {
        let _ = ROTATED_FILE.set(path);
    }
}

/// Device and inode of the file on fd 2.
fn stderr_id() -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid out-buffer; fstat of fd 2 only fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 and a valid out-pointer.
    crate::syscall!(fstat(2, &mut st)).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Rotates our log file if it is due, and makes sure stdout and stderr point at the current one.
fn keep_current() {
    let Some(p) = ROTATED_FILE.get() else {
        return;
    };
    let Some(ours) = stderr_id() else {
        return;
    };
    let current = std::fs::symlink_metadata(p).ok();
    match current {
        Some(m) if (m.dev(), m.ino()) == ours => {
            if m.len() < ROTATE_AT {
                return;
            }
            rotate_if_needed(p, ROTATE_AT, KEEP);
        }
        // Rotated by another writer (or removed): follow it to the current file.
        _ => {}
    }
    if let Ok(f) = crate::sys::checked::open_log(p) {
        for target in [1, 2] {
            // SAFETY: dup2 of a live fd onto stdout or stderr.
            unsafe { libc::dup2(f.as_raw_fd(), target) };
        }
    }
}

/// Writes `TIMESTAMP [pid] message` to stderr as a single write.
pub fn line(args: std::fmt::Arguments<'_>) {
    keep_current();
    let s = format!(
        "{} [{}] {}\n",
        crate::sys::clock::format_wall_ms(crate::sys::clock::wall_ms()),
        std::process::id(),
        args
    );
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `log!("...", args)`: a timestamped line on stderr.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::log::line(format_args!($($t)*)) };
}
