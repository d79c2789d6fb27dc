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
//! A FIFO is held without an fd of its own: opened, put in flight in a socket pair of the
//! guardian's ([`FdStore`], `SCM_RIGHTS`, up to 32 per message), and closed; the kernel keeps
//! the file open. So the guardian's fds do not grow with the nodes. Where the store refuses
//! (no room in its buffer, or files in flight counted against the fd limit without
//! `CAP_SYS_RESOURCE`), the FIFO is held by an fd, never one that would eat into
//! [`RESERVE_FDS`], so the guardian can always start a Supervisor. Only running nodes have
//! FIFOs (the Supervisor removes a node's when it comes to rest). A FIFO no longer there is
//! let go of by taking the store's messages back and putting the wanted ones in again.

use crate::log;
use crate::sys::fdstore::{FdStore, MAX_PER_MESSAGE};
use crate::sys::inotify::Inotify;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
/// pipe, the store, a Supervisor's readiness pipe or pidfd, and what starting one opens).
const BASE_FDS: u64 = 16;
/// Fds always left free under the guardian's limit: a FIFO that would eat into them is not
/// held by an fd (logged), so the guardian can always start a Supervisor.
pub const RESERVE_FDS: u64 = 32;

/// A FIFO's identity (device, inode): 16 bytes of a store message's tag per fd.
type Id = (u64, u64);
const TAG: usize = 16;

/// One FIFO held: its identity, and its fd if it is held directly rather than in the store.
#[derive(Debug)]
struct Held {
    id: Id,
    direct: Option<File>,
}

/// The FIFOs held, and the inotify watch that finds them.
#[derive(Debug)]
pub struct OutputHold {
    dir: PathBuf,
    notify: Option<Inotify>,
    held: HashMap<PathBuf, Held>,
    /// Where FIFOs are held without an fd each (`None` if it could not be made).
    store: Option<FdStore>,
    /// Messages in flight in the store.
    messages: usize,
    /// Some message holds a FIFO no longer wanted: compact the store.
    stale: bool,
    /// An error opening a FIFO was logged (logged once, not per FIFO).
    warned: bool,
    /// The store refused a FIFO (logged once).
    store_warned: bool,
    /// FIFOs opened in this batch of changes, to put in the store together.
    pending: Vec<(Id, File)>,
    /// FIFOs held by an fd may be moved into the store (cleared when it refused some, set
    /// again when room may have come: a FIFO let go of).
    promote: bool,
    /// A FIFO was left unheld to keep the reserve: look again when one goes.
    short: bool,
}

fn id_of(f: &File) -> io::Result<Id> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn tag_of(ids: &[Id]) -> Vec<u8> {
    ids.iter()
        .flat_map(|(d, i)| d.to_le_bytes().into_iter().chain(i.to_le_bytes()))
        .collect()
}

fn ids_of(tag: &[u8]) -> Vec<Id> {
    tag.chunks_exact(TAG)
        .map(|c| {
            let d = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let i = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            (d, i)
        })
        .collect()
}

impl OutputHold {
    /// Holds nothing yet; [`OutputHold::refresh`] starts.
    pub fn new(instance_dir: &Path) -> OutputHold {
        let store = FdStore::new()
            .map_err(|e| {
                log!(
                    "guardian: no socket pair to hold output FIFOs in ({e}); each is held by an fd"
                )
            })
            .ok();
        OutputHold {
            dir: instance_dir.join("nodes"),
            notify: None,
            held: HashMap::new(),
            store,
            messages: 0,
            stale: false,
            warned: false,
            store_warned: false,
            pending: Vec::new(),
            promote: true,
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
        } else {
            self.settle();
        }
    }

    /// Lets go of every FIFO held (the guardian needs the fds); returns how many.
    pub fn release_all(&mut self) -> usize {
        let n = self.held.len();
        self.held.clear();
        self.pending.clear();
        // Closing the store's sockets lets go of every file in flight.
        self.store = None;
        self.store = FdStore::new().ok();
        self.messages = 0;
        self.stale = false;
        self.short = n > 0;
        n
    }

    /// How many FIFOs are held (in the store or by an fd).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn direct(&self) -> u64 {
        self.held.values().filter(|h| h.direct.is_some()).count() as u64
    }

    /// Whether `more` fds may be opened without eating into [`RESERVE_FDS`].
    fn room(&self, more: u64) -> bool {
        let limit = crate::sys::procenv::nofile_soft();
        self.direct() + self.pending.len() as u64 + more + BASE_FDS + RESERVE_FDS <= limit
    }

    /// The end of a batch of changes: what was opened goes in flight, and the store is
    /// compacted if it needs it.
    fn settle(&mut self) {
        self.flush_pending();
        self.compact();
    }

    /// Puts the FIFOs opened meanwhile in the store, [`MAX_PER_MESSAGE`] a message; those it
    /// refuses are held by their fd.
    fn flush_pending(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        while !pending.is_empty() {
            let n = pending.len().min(MAX_PER_MESSAGE);
            let chunk: Vec<(Id, File)> = pending.drain(..n).collect();
            let ids: Vec<Id> = chunk.iter().map(|(id, _)| *id).collect();
            let fds: Vec<RawFd> = chunk.iter().map(|(_, f)| f.as_raw_fd()).collect();
            let r = match &self.store {
                Some(store) => store.put(&tag_of(&ids), &fds),
                None => Err(io::Error::from_raw_os_error(libc::ENOTSOCK)),
            };
            match r {
                Ok(()) => self.messages += 1,
                Err(e) => {
                    self.refused(&e);
                    for (id, f) in chunk {
                        if let Some(h) = self
                            .held
                            .values_mut()
                            .find(|h| h.id == id && h.direct.is_none())
                        {
                            h.direct = Some(f);
                        }
                    }
                }
            }
        }
    }

    /// The store refused FIFOs: logged once; no more moving FIFOs into it until room comes.
    fn refused(&mut self, e: &io::Error) {
        self.promote = false;
        if self.store.is_some() && !std::mem::replace(&mut self.store_warned, true) {
            log!("guardian: cannot put output FIFOs in flight ({e}); holding such FIFOs by an fd each");
        }
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
        self.settle();
    }

    /// Lets go of the held FIFO at `path`, if any.
    fn drop_held(&mut self, path: &Path) {
        if let Some(old) = self.held.remove(path) {
            self.pending.retain(|(id, _)| *id != old.id);
            if old.direct.is_none() {
                self.stale = true;
            }
            self.promote = true;
        }
    }

    /// Holds the FIFO at `path` if one is there (the one held already, if it is the same),
    /// and lets go of a held one that is no longer there.
    fn update(&mut self, path: PathBuf) {
        if !self.held.contains_key(&path) && !self.room(1) {
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
        match open_fifo(&path).and_then(|f| f.map(|f| id_of(&f).map(|id| (f, id))).transpose()) {
            Ok(Some((f, id))) => {
                if self.held.get(&path).is_some_and(|h| h.id == id) {
                    return;
                }
                self.drop_held(&path);
                self.held.insert(path, Held { id, direct: None });
                self.pending.push((id, f));
                if self.pending.len() >= MAX_PER_MESSAGE {
                    self.flush_pending();
                }
            }
            Ok(None) => self.drop_held(&path),
            Err(e) => {
                self.drop_held(&path);
                if !std::mem::replace(&mut self.warned, true) {
                    log!(
                        "guardian: cannot hold output FIFO {} ({e}); a node writing to it while no Supervisor runs may get SIGPIPE",
                        path.display()
                    );
                }
            }
        }
    }

    /// Takes every message in the store back and puts in again only the FIFOs still held,
    /// [`MAX_PER_MESSAGE`] a message: so a FIFO let go of is closed, and the messages stay
    /// few. Done when some message holds an unwanted FIFO, or there are many more messages
    /// than needed; skipped while the fds for two messages would eat into the reserve.
    fn compact(&mut self) {
        let in_store = self.held.values().filter(|h| h.direct.is_none()).count();
        let needed = in_store.div_ceil(MAX_PER_MESSAGE);
        let promote = self.promote && self.store.is_some() && self.direct() > 0;
        if !self.stale && !promote && self.messages <= needed + 8 {
            return;
        }
        if !self.room(2 * MAX_PER_MESSAGE as u64) {
            return;
        }
        let Some(store) = self.store.take() else {
            return;
        };
        let mut want: HashSet<Id> = self
            .held
            .values()
            .filter(|h| h.direct.is_none())
            .map(|h| h.id)
            .collect();
        let mut keep: Vec<(Id, OwnedFd)> = Vec::new();
        let mut left = self.messages;
        let mut put = 0;
        let mut given_back: Vec<(Id, OwnedFd)> = Vec::new();
        let mut flush = |keep: &mut Vec<(Id, OwnedFd)>, put: &mut usize| {
            if keep.is_empty() {
                return;
            }
            let ids: Vec<Id> = keep.iter().map(|(id, _)| *id).collect();
            let fds: Vec<RawFd> = keep.iter().map(|(_, f)| f.as_raw_fd()).collect();
            match store.put(&tag_of(&ids), &fds) {
                Ok(()) => {
                    *put += 1;
                    keep.clear();
                }
                Err(_) => given_back.append(keep),
            }
        };
        while left > 0 {
            match store.take(MAX_PER_MESSAGE * TAG) {
                Ok(Some((tag, fds))) => {
                    left -= 1;
                    for (id, fd) in ids_of(&tag).into_iter().zip(fds) {
                        if want.remove(&id) {
                            keep.push((id, fd));
                            if keep.len() == MAX_PER_MESSAGE {
                                flush(&mut keep, &mut put);
                            }
                        }
                    }
                }
                Ok(None) => {
                    left = 0;
                }
                Err(e) => {
                    left = left.saturating_sub(1);
                    log!("guardian: taking output FIFOs back from flight: {e}");
                }
            }
        }
        // FIFOs held by an fd go in too (the store may have room again).
        if promote {
            for h in self.held.values_mut() {
                if let Some(f) = h.direct.take() {
                    keep.push((h.id, OwnedFd::from(f)));
                    if keep.len() == MAX_PER_MESSAGE {
                        flush(&mut keep, &mut put);
                    }
                }
            }
        }
        flush(&mut keep, &mut put);
        self.promote = given_back.is_empty();
        self.messages = put;
        self.store = Some(store);
        self.stale = false;
        // Refused by the store on the way back in: held by an fd now.
        for (id, fd) in given_back {
            if let Some(h) = self.held.values_mut().find(|h| h.id == id) {
                h.direct = Some(File::from(fd));
            }
        }
        // Lost on the way (none, unless an error above): held no more; the next rescan
        // opens them again by path.
        if !want.is_empty() {
            self.held
                .retain(|_, h| h.direct.is_some() || !want.contains(&h.id));
            self.short = true;
        }
    }
}
