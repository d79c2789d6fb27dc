//! The guardian's hold on the nodes' output FIFOs (`nodes/NAME.out`, `nodes/NAME.err`, see
//! `supervisor/output.rs`). It keeps each one open for reading and never reads it, so a FIFO
//! always has a reader while no Supervisor lives (killed, or between an `upgrade-supervisor`'s
//! images):
//!
//! * a node that holds its FIFO write-only (it opened `/dev/stdout` again by path and closed
//!   the fd it inherited, which it held read-write) gets no SIGPIPE on its next write;
//! * what a node wrote before it exited stays in the pipe for the next Supervisor to move
//!   (a pipe's buffer goes with its last open end).
//!
//! Event-driven: inotify on the `nodes` folder reports FIFOs made and removed (a node started
//! or retired, a shutdown); a queue overflow rescans the folder. Each file is checked as the
//! Supervisor checks its runtime files: not followed if it is a symlink, a FIFO, ours.
//!
//! Only running nodes have FIFOs (the Supervisor removes a node's when it comes to rest), so
//! only they cost the guardian fds; and it never holds one that would eat into
//! [`RESERVE_FDS`], so it can always start a Supervisor.

use crate::log;
use crate::sys::inotify::Inotify;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Whether `path` names an output FIFO (`NAME.out` or `NAME.err`).
fn is_output(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("out" | "err")
    )
}

/// Opens the FIFO at `path` for reading without blocking and without following a symlink;
/// `None` if nothing is there, or it is not a FIFO of this user.
fn open_fifo(path: &Path) -> io::Result<Option<File>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let ours = m.uid() == unsafe { libc::geteuid() };
    let fifo = m.mode() & libc::S_IFMT == libc::S_IFIFO;
    Ok((ours && fifo).then_some(f))
}

/// Fds the guardian needs besides the FIFOs (stdio, log, lock, signalfd, inotify, the report
/// pipe, a Supervisor's readiness pipe or pidfd, and what starting one opens).
const BASE_FDS: u64 = 16;
/// Fds always left free under the guardian's limit: a FIFO that would eat into them is not
/// held (logged), so the guardian can always start a Supervisor.
pub const RESERVE_FDS: u64 = 32;

/// The FIFOs held, and the inotify watch that finds them.
#[derive(Debug)]
pub struct OutputHold {
    dir: PathBuf,
    notify: Option<Inotify>,
    held: HashMap<PathBuf, File>,
    /// An error opening a FIFO was logged (logged once, not per FIFO).
    warned: bool,
    /// A FIFO was left unheld to keep the reserve: look again when one goes.
    short: bool,
}

impl OutputHold {
    /// Holds nothing yet; [`OutputHold::refresh`] starts.
    pub fn new(instance_dir: &Path) -> OutputHold {
        OutputHold {
            dir: instance_dir.join("nodes"),
            notify: None,
            held: HashMap::new(),
            warned: false,
            short: false,
        }
    }

    /// The inotify fd to poll, once watching.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.notify.as_ref().map(|n| n.raw_fd())
    }

    /// Starts watching the `nodes` folder (if it exists now and is not watched yet) and looks
    /// at every FIFO in it. Called when the guardian starts and when a Supervisor serves.
    pub fn refresh(&mut self) {
        if self.notify.is_none() && self.dir.is_dir() {
            let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM;
            match Inotify::new().and_then(|mut n| n.watch_dir(&self.dir, mask).map(|()| n)) {
                Ok(n) => self.notify = Some(n),
                Err(e) => log!(
                    "guardian: cannot watch {} ({e}); nodes' output FIFOs are not held while no Supervisor runs",
                    self.dir.display()
                ),
            }
        }
        self.rescan();
    }

    /// Applies what inotify reported (call when its fd is readable).
    pub fn changed(&mut self) {
        let Some(n) = self.notify.as_mut() else {
            return;
        };
        let (paths, overflow) = n.changed();
        if overflow {
            self.rescan();
            return;
        }
        let short = self.short;
        for p in paths.into_iter().filter(|p| is_output(p)) {
            self.update(p);
        }
        if short {
            // Some were left unheld for the reserve: one may fit now.
            self.rescan();
        }
    }

    /// Lets go of every FIFO held (the guardian needs the fds); returns how many.
    pub fn release_all(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        self.short = n > 0;
        n
    }

    /// How many FIFOs are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether one more FIFO may be held without eating into [`RESERVE_FDS`].
    fn room(&self) -> bool {
        let limit = crate::sys::procenv::nofile_soft();
        self.held.len() as u64 + BASE_FDS + RESERVE_FDS < limit
    }

    /// Every output FIFO in the folder, and every held one that is gone.
    fn rescan(&mut self) {
        self.short = false;
        let mut paths: Vec<PathBuf> = self.held.keys().cloned().collect();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            paths.extend(entries.flatten().map(|e| e.path()).filter(|p| is_output(p)));
        }
        paths.sort();
        paths.dedup();
        for p in paths {
            self.update(p);
        }
    }

    /// Holds the FIFO at `path` if one is there (the one held already, if it is the same),
    /// and lets go of a held one that is no longer there.
    fn update(&mut self, path: PathBuf) {
        if !self.held.contains_key(&path) && !self.room() {
            if !std::mem::replace(&mut self.short, true) {
                log!(
                    "guardian: not holding output FIFO {} (and others): {} fds are kept in reserve under the fd limit of {}; a node writing to one while no Supervisor runs may get SIGPIPE",
                    path.display(),
                    RESERVE_FDS,
                    crate::sys::procenv::nofile_soft()
                );
            }
            return;
        }
        match open_fifo(&path) {
            Ok(Some(f)) => {
                let same = |a: &File, b: &File| matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if x.dev() == y.dev() && x.ino() == y.ino());
                if !self.held.get(&path).is_some_and(|h| same(h, &f)) {
                    self.held.insert(path, f);
                }
            }
            Ok(None) => {
                self.held.remove(&path);
            }
            Err(e) => {
                self.held.remove(&path);
                if !std::mem::replace(&mut self.warned, true) {
                    log!(
                        "guardian: cannot hold output FIFO {} ({e}); a node writing to it while no Supervisor runs may get SIGPIPE",
                        path.display()
                    );
                }
            }
        }
    }
}
