//! The instance lock: a file in the runtime dir that the Supervisor holds with `flock` for as
//! long as it lives. The kernel drops the lock when the process dies, however it dies, so
//! "lock held" means "a Supervisor is alive" without any pid guessing (s6's lock-fd idea).

use super::checked::{self, CheckError, Kind};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held exclusive lock on the instance's lock file.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// Result of probing a lock file without taking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No lock file, or nobody holds it: no Supervisor runs.
    Free,
    /// A live process holds it; the pid and start time it wrote (0 if it has not yet).
    Held {
        /// The holder's pid as written in the file.
        pid: u32,
        /// The holder's start time as written in the file.
        start: u64,
        /// The second line of the file (the Supervisor writes its config path there).
        info: String,
    },
}

/// Errors from taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file failed a safety check or could not be opened.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// Another process holds it.
    #[error("{path} is locked by pid {pid}")]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid (0 if unknown).
        pid: u32,
    },
    /// Only shared holders (probes: [`LockFile::probe`] takes a shared lock for a few
    /// microseconds) kept it from us, for longer than [`BUSY_WAIT`]: nobody holds it
    /// exclusively, but it could not be taken yet. Try again.
    #[error("{path} was kept busy by shared holders (probes) for {waited:?}; nobody holds it exclusively, try again")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// How long it was tried.
        waited: std::time::Duration,
    },
    /// flock or the pid write failed.
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn flock(file: &File, op: i32) -> io::Result<bool> {
    loop {
        // SAFETY: a live fd and a LOCK_* operation.
        match crate::syscall!(flock(file.as_raw_fd(), op)) {
            Ok(_) => return Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// How long [`LockFile::acquire_quiet`] keeps trying while only shared holders (probes) stand
/// in its way. A probe holds its shared lock for microseconds; a Supervisor that starts while a
/// Main probes must not fail for it (it did: the replacement exited "already running" and the
/// guardian gave up).
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

/// The most of a lock file [`read_holder`] reads: its two lines are far shorter. The file is
/// writable by its holder (a node holds its lock as an inherited fd), so its size proves
/// nothing and is never trusted.
const HOLDER_MAX: u64 = 4096;

fn read_holder(file: &mut File) -> (u32, u64, String) {
    let mut bytes = Vec::new();
    if file.rewind().is_err() || (&*file).take(HOLDER_MAX).read_to_end(&mut bytes).is_err() {
        return (0, 0, String::new());
    }
    let s = String::from_utf8_lossy(&bytes);
    let mut lines = s.lines();
    let first = lines.next().unwrap_or("");
    let mut it = first.split_ascii_whitespace();
    let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let start = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (pid, start, lines.next().unwrap_or("").to_owned())
}

/// Takes the exclusive lock on `file` without blocking on a real holder: `Ok(false)` if another
/// open file holds it exclusively. While only shared holders (probes) are in the way, tries
/// again (every 1 ms or so, up to [`BUSY_WAIT`]), then fails with [`LockError::Busy`].
fn take_exclusive(file: &File, path: &Path) -> Result<bool, LockError> {
    let io_err = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    let started = std::time::Instant::now();
    let mut logged = false;
    // Spread two contenders (each of which briefly holds a shared lock below) apart.
    let jitter = u64::from(std::process::id() % 7) * 100;
    loop {
        if flock(file, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err)? {
            if logged {
                crate::log!(
                    "{}: taken after {:?} (a probe held it shared)",
                    path.display(),
                    started.elapsed()
                );
            }
            return Ok(true);
        }
        // Is it held exclusively, or only shared? A shared lock of ours succeeds only in the
        // second case; it is dropped at once (LOCK_UN), before trying again.
        if !flock(file, libc::LOCK_SH | libc::LOCK_NB).map_err(io_err)? {
            return Ok(false);
        }
        flock(file, libc::LOCK_UN).map_err(io_err)?;
        if started.elapsed() >= BUSY_WAIT {
            return Err(LockError::Busy {
                path: path.to_owned(),
                waited: started.elapsed(),
            });
        }
        if !logged {
            logged = true;
            crate::log!(
                "{}: held shared (a Main's probe); trying again for up to {BUSY_WAIT:?}",
                path.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_micros(500 + jitter));
    }
}

impl LockFile {
    /// Creates (mode 0600) or opens the lock file, takes the exclusive lock without blocking and
    /// writes `pid start_time` and then `info` on a second line into it. Fails with
    /// [`LockError::Held`] if a live process has it.
    pub fn acquire(path: &Path, info: &str) -> Result<LockFile, LockError> {
        let mut l = Self::acquire_quiet(path)?;
        l.write_self(info)?;
        Ok(l)
    }

    /// Replaces the file's content with this process's `pid start_time` and `info`.
    fn write_self(&mut self, info: &str) -> Result<(), LockError> {
        let line = format!(
            "{} {}\n{}\n",
            std::process::id(),
            super::procstat::own_start_time(),
            info.replace('\n', " ")
        );
        let io_err = |source| LockError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(io_err)?;
        self.file.rewind().map_err(io_err)?;
        self.file.write_all(line.as_bytes()).map_err(io_err)
    }

    /// Replaces the second line (`info`) while keeping the holder line as it is, byte for
    /// byte: the new text is written over the old one and the file cut to its end, so a
    /// reader never finds the holder line missing (one that reads mid-write may find a mixed
    /// `info`: it is a hint, never evidence).
    pub fn set_info(&mut self, info: &str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!("{}\n", info.replace('\n', " "));
        let mut old = Vec::new();
        self.file.rewind()?;
        (&self.file).take(HOLDER_MAX).read_to_end(&mut old)?;
        // The holder line as the file has it (fixed width or not): only what follows changes.
        let Some(at) = old.iter().position(|&b| b == b'\n').map(|i| i + 1) else {
            return Err(io::Error::other("the lock file has no holder line yet"));
        };
        self.file.write_all_at(text.as_bytes(), at as u64)?;
        self.file.set_len((at + text.len()) as u64)
    }

    /// Like [`LockFile::acquire`] but writes nothing (the caller writes the holder later, e.g.
    /// with [`LockFile::write_holder`]).
    pub fn acquire_quiet(path: &Path) -> Result<LockFile, LockError> {
        loop {
            let (mut file, st) =
                checked::open(path, libc::O_RDWR | libc::O_CREAT, 0o600, Kind::File, 0o077)?;
            if !take_exclusive(&file, path)? {
                let (pid, _, _) = read_holder(&mut file);
                return Err(LockError::Held {
                    path: path.to_owned(),
                    pid,
                });
            }
            // The previous holder may have unlinked the path between our open and our flock;
            // then we hold a lock on an orphaned inode. Retry on the current file.
            match std::fs::symlink_metadata(path) {
                Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) == st.ino => {}
                _ => continue,
            }
            return Ok(LockFile {
                file,
                path: path.to_owned(),
            });
        }
    }

    /// Takes over a lock this process already holds through `fd`, inherited across `execve`
    /// (an in-place upgrade). Checks that `fd` is the file at `path` and that the lock is ours.
    pub fn inherit(fd: std::os::fd::RawFd, path: &Path, info: &str) -> Result<LockFile, LockError> {
        use std::os::fd::FromRawFd;
        // SAFETY: the previous program image handed this fd to us by number (it cleared
        // CLOEXEC on it just before exec); nothing else in this image owns it.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let st = checked::verify(path, &file, Kind::File, 0o077)?;
        let io_err = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) == st.ino => {}
            _ => {
                return Err(io_err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the inherited lock fd is not the instance's lock file",
                )))
            }
        }
        // Same open file description: succeeds at once if (and only if) we hold it.
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(io_err)? {
            let (pid, _, _) = read_holder(&mut file);
            return Err(LockError::Held {
                path: path.to_owned(),
                pid,
            });
        }
        crate::sys::fdflags::set_cloexec(fd, true).map_err(io_err)?;
        let mut l = LockFile {
            file,
            path: path.to_owned(),
        };
        l.write_self(info)?;
        Ok(l)
    }

    /// Tells whether a live process holds the lock at `path`, without taking it for long.
    pub fn probe(path: &Path) -> Result<Probe, CheckError> {
        let (mut file, _) = match checked::open(path, libc::O_RDONLY, 0, Kind::File, 0o077) {
            Ok(x) => x,
            Err(e) if e.os_error() == Some(libc::ENOENT) => return Ok(Probe::Free),
            Err(e) => return Err(e),
        };
        let io_err = |source| CheckError::Io {
            path: path.to_owned(),
            source,
        };
        if flock(&file, libc::LOCK_SH | libc::LOCK_NB).map_err(io_err)? {
            // We got it, so nobody holds it; closing the file releases ours.
            return Ok(Probe::Free);
        }
        let (pid, start, info) = read_holder(&mut file);
        Ok(Probe::Held { pid, start, info })
    }

    /// The pid and start time the lock file at `path` names (its last holder, whether or not
    /// it still holds the lock; `(0, 0)` if the line is unreadable), without taking the lock.
    /// `None` if there is no file.
    pub fn named(path: &Path) -> Result<Option<(u32, u64)>, CheckError> {
        let (mut file, _) = match checked::open(path, libc::O_RDONLY, 0, Kind::File, 0o077) {
            Ok(x) => x,
            Err(e) if e.os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (pid, start, _) = read_holder(&mut file);
        Ok(Some((pid, start)))
    }

    /// Names `pid` with this start time as the holder of the lock file at `path`, which
    /// another process holds (a forking daemon's main process, which replaced the starter the
    /// file named): the same fixed-width line as [`LockFile::write_holder`].
    pub fn rename_holder(path: &Path, pid: u32, start: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let (file, _) = checked::open(path, libc::O_WRONLY, 0, Kind::File, 0o077)
            .map_err(|e| io::Error::other(e.to_string()))?;
        file.write_all_at(format!("{pid:>10} {start:>20}\n").as_bytes(), 0)
    }

    /// Replaces the holder line with another process's pid and start time (a node that holds
    /// the lock through an inherited fd).
    pub fn write_holder(&mut self, pid: u32, start: u64) -> io::Result<()> {
        // Fixed width, so one pwrite replaces the previous holder without a truncate.
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(format!("{pid:>10} {start:>20}\n").as_bytes(), 0)
    }

    /// The pid and start time the file names (its last holder; `(0, 0)` if none or
    /// unreadable): a process that closed its lock fd is still named here.
    pub fn holder(&mut self) -> (u32, u64) {
        let (pid, start, _) = read_holder(&mut self.file);
        (pid, start)
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open, locked file (children that must keep the lock alive inherit a dup of it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Removes the file while still holding the lock, then releases it.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_info_replaces_the_second_line_and_keeps_the_holder_line() {
        let dir = std::env::temp_dir().join(format!("broctld-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let mut l = LockFile::acquire(&path, "guardian").unwrap();
        let holder = std::fs::read_to_string(&path).unwrap();
        let holder = holder.lines().next().unwrap().to_owned();
        l.set_info("guardian retry-at-ms=123 a much longer reason than before")
            .unwrap();
        l.set_info("guardian\nshort").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{holder}\nguardian short\n"));
        let Probe::Held { pid, info, .. } = LockFile::probe(&path).unwrap() else {
            panic!("held")
        };
        assert_eq!((pid, info.as_str()), (std::process::id(), "guardian short"));
        l.remove();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
