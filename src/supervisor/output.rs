//! A node's stdout and stderr, carried through the Supervisor into its log files and rotated
//! by size while the node runs, without losing or repeating a byte.
//!
//! * **The pipe.** Each output stream is a named FIFO, `RUNTIME/INSTANCE/nodes/NAME.out` (and
//!   `NAME.err` when stderr goes to another file), mode 0600, checked like every runtime file.
//!   The node's fd 1 (and 2) is the FIFO opened `O_RDWR`: it is a reader as well as a writer,
//!   so its writes never raise SIGPIPE or fail with EPIPE, whether a Supervisor is alive or
//!   not; with nobody draining it a writer blocks once the buffer (raised to
//!   [`PIPE_BYTES`] where the system allows) is full, and goes on when a Supervisor reads again.
//!   The FIFO outlives the node's processes (one per node, reused by every spawn), so leftovers
//!   that kept the fd still have a reader. A successor (after a `kill -9`) or the new image of
//!   an `upgrade-supervisor` reopens it by path: the pipe's buffer lives as long as any end
//!   is open, and the node's end is.
//! * **No byte lost or repeated.** Bytes move from the FIFO into the log file with `splice`,
//!   which consumes from the pipe exactly what it wrote to the file within one system call: a
//!   Supervisor killed at any instant has either moved a byte (it is in the file and gone
//!   from the pipe) or not (it is still in the pipe). The file itself is the record of
//!   progress; nothing else needs to be kept. (Where the file system cannot splice, bytes are
//!   read and then written: a `kill -9` between the two loses what was read; logged once.)
//! * **Rotation at line boundaries.** While the file is below `log_max_bytes`, at most the
//!   bytes that fill it to the limit are moved; at the limit, the FIFO's head is peeked (`tee`
//!   into a private pipe, which consumes nothing) and bytes up to the first newline are moved;
//!   then the file is renamed to `.1` (older ones shifted, the oldest beyond `log_keep`
//!   dropped) and a new one started. A line longer than [`LINE_SLACK`] is cut. Renames are
//!   atomic one by one, and no byte is in flight during a rotation, so a Supervisor killed in
//!   the middle leaves every byte in exactly one file.

use super::source::Source;
use crate::sys::checked::{self, CheckError, Kind};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The pipe buffer asked for (`F_SETPIPE_SZ`); the system may give less (`pipe-max-size`,
/// `pipe-user-pages-soft`), and then the default 64 KiB stands.
pub const PIPE_BYTES: i32 = 1 << 20;
/// How far past `log_max_bytes` a file may grow to end on a line boundary.
pub const LINE_SLACK: u64 = 64 << 10;
/// The most bytes one splice moves.
const CHUNK: usize = 1 << 20;
/// The most bytes moved for one stream in one wake before the loop looks at other work.
pub const BUDGET: u64 = 8 << 20;

/// How long after a failed write to a log file every stream is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The two streams of a node: 0 is stdout, 1 is stderr.
pub const STREAMS: [&str; 2] = ["out", "err"];

/// The FIFO of node `name`'s stream `k` (0 stdout, 1 stderr) in the instance dir.
pub fn fifo_path(instance_dir: &Path, name: &str, k: usize) -> PathBuf {
    instance_dir
        .join("nodes")
        .join(format!("{name}.{}", STREAMS[k & 1]))
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// The FIFO is empty.
    Drained,
    /// [`BUDGET`] bytes were moved, or the file was rotated, and more may be waiting: pump
    /// again soon.
    More,
    /// The file could not be written (logged): the bytes wait in the FIFO; try again later.
    Failed,
}

/// One output stream: the Supervisor's end of the FIFO and the log file it fills.
#[derive(Debug)]
pub struct Stream {
    fifo: File,
    fifo_path: PathBuf,
    log: Option<LogFile>,
    /// Bytes are read then written (the file system cannot splice): logged once.
    copying: bool,
    /// The last error was logged (cleared by the next success).
    failing: bool,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    path: PathBuf,
    /// Bytes in the file: where the next byte goes.
    size: u64,
    /// A regular file (only those are rotated: never rename `/dev/null`).
    regular: bool,
}

impl Stream {
    /// Opens the Supervisor's end of the FIFO at `path` (`O_RDWR|O_NONBLOCK`: never blocks,
    /// never sees end-of-file), making the FIFO (mode 0600) if it does not exist.
    pub fn open(path: &Path) -> Result<Stream, CheckError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let c = checked::cpath(path)?;
                // SAFETY: a NUL-terminated path and a mode.
                match crate::syscall!(mkfifo(c.as_ptr(), 0o600)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(CheckError::Io {
                            path: path.to_owned(),
                            source,
                        })
                    }
                }
            }
            Err(source) => {
                return Err(CheckError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let (fifo, _) = checked::open(path, libc::O_RDWR | libc::O_NONBLOCK, 0, Kind::Fifo, 0o077)?;
        // SAFETY: fcntl on a live fd with an integer argument. A refusal (over the user's
        // pipe quota) leaves the default size: smaller, still correct.
        let _ = unsafe { libc::fcntl(fifo.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
        Ok(Stream {
            fifo,
            fifo_path: path.to_owned(),
            log: None,
            copying: false,
            failing: false,
        })
    }

    /// Opens the FIFO at `path` if it exists (a predecessor's node may still write to it).
    pub fn reopen_existing(path: &Path) -> Option<Result<Stream, CheckError>> {
        std::fs::symlink_metadata(path).ok()?;
        Some(Stream::open(path))
    }

    /// The fd to register with the event loop.
    pub fn raw_fd(&self) -> RawFd {
        self.fifo.as_raw_fd()
    }

    /// A new `O_RDWR`, blocking fd on the FIFO for a node to write to (its fd 1 or 2).
    pub fn node_end(&self) -> Result<File, CheckError> {
        Ok(checked::open(&self.fifo_path, libc::O_RDWR, 0, Kind::Fifo, 0o077)?.0)
    }

    /// Opens (or keeps) the log file `target`. A stream whose target changed (a reload)
    /// switches to the new file.
    fn open_log(&mut self, target: &Path) -> io::Result<()> {
        if self.log.as_ref().is_some_and(|l| l.path == target) {
            return Ok(());
        }
        self.log = Some(LogFile::open(target)?);
        Ok(())
    }

    /// Opens the log file `target` afresh, for a spawn: it fails at once, naming the file, if
    /// the file cannot be written, and a file the node replaced (with a symlink it planted, or
    /// nothing) is opened by its name again, checked, rather than written through the old fd.
    pub fn reopen_log(&mut self, target: &Path) -> io::Result<()> {
        self.log = None;
        self.open_log(target)
    }

    /// Moves what the FIFO holds into the log file `target`, rotating it when it reaches
    /// `max` bytes (0: never) and keeping `keep` old files. Errors are logged once per run of
    /// failures (naming `node` and the file) and leave the bytes in the FIFO for the next try.
    pub fn pump(&mut self, node: &str, target: &Path, max: u64, keep: u32) -> Pumped {
        match self.pump_inner(target, max, keep) {
            Ok(p) => {
                self.failing = false;
                p
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    crate::log!(
                        "node {node}: cannot write its output to {}: {e}; the output waits in its pipe (the node blocks once it is full) until the file can be written",
                        target.display()
                    );
                }
                // The log is reopened on the next try (it may have been the problem).
                self.log = None;
                Pumped::Failed
            }
        }
    }

    fn pump_inner(&mut self, target: &Path, max: u64, keep: u32) -> io::Result<Pumped> {
        self.open_log(target)?;
        if let Some(log) = self.log.as_mut() {
            if !log.refresh()? {
                self.reopen_log(target)?;
            }
        }
        let Some(log) = self.log.as_mut() else {
            return Ok(Pumped::Drained);
        };
        let rotates = max > 0 && keep > 0 && log.regular;
        let mut moved = 0u64;
        loop {
            if moved >= BUDGET {
                return Ok(Pumped::More);
            }
            let want = if rotates && log.size >= max {
                if log.size >= max.saturating_add(LINE_SLACK) || log.ends_line()? {
                    // Only when there is something to put in the new file.
                    if pending_bytes(&self.fifo)? == 0 {
                        return Ok(Pumped::Drained);
                    }
                    log.rotate(max, keep)?;
                    // A rotation renames up to `keep` files: one per turn of the event loop,
                    // or a node writing faster than that would hold the loop (every command)
                    // until its pipe empties, which may be never.
                    return Ok(Pumped::More);
                }
                // Never past the slack, though part of the line was moved before (the node
                // wrote it in pieces): the peek counts from here, the slack from `max`.
                let room = max.saturating_add(LINE_SLACK) - log.size;
                match peek_line(&self.fifo)? {
                    Some(n) => n.min(room as usize),
                    None => return Ok(Pumped::Drained),
                }
            } else if rotates {
                (max - log.size).min(CHUNK as u64) as usize
            } else {
                CHUNK
            };
            let n = match move_bytes(&self.fifo, log, want, &mut self.copying) {
                Ok(0) => return Ok(Pumped::Drained),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pumped::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            moved += n as u64;
        }
    }

    /// Closes the stream once what it holds is moved to the log, and with `remove` removes
    /// the FIFO (the node is gone from the config, or the Supervisor shuts down); without, a
    /// later spawn (or a successor) reopens it by path.
    pub fn close(mut self, node: &str, target: &Path, max: u64, keep: u32, remove: bool) {
        while self.pump(node, target, max, keep) == Pumped::More {}
        // (A stream that cannot be written loses what its FIFO holds only if nobody else
        // holds the FIFO: the node's processes are gone.)
        if remove {
            let _ = std::fs::remove_file(&self.fifo_path);
        }
    }
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        // Not O_APPEND: splice refuses an append-only file. Every write names its offset (the
        // file's size), so the file's size always says what was written.
        let file = crate::supervisor::spawn::open_in_folder(path, libc::O_RDWR | libc::O_CREAT)?;
        crate::sys::fdflags::set_nonblocking(file.as_raw_fd(), false)?;
        let meta = file.metadata()?;
        Ok(LogFile {
            file,
            path: path.to_owned(),
            size: meta.len(),
            regular: meta.is_file(),
        })
    }

    /// Takes the size from the file (someone may have truncated it). Returns false if the
    /// path no longer names this file (removed, renamed by someone else, replaced, or rotated
    /// by another stream writing the same file): it is to be opened again by its name.
    fn refresh(&mut self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        if !self.regular {
            return Ok(true);
        }
        let ours = self.file.metadata()?;
        self.size = ours.len();
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Ok(m.ino() == ours.ino() && m.dev() == ours.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the file is empty or its last byte is a newline.
    fn ends_line(&self) -> io::Result<bool> {
        if self.size == 0 {
            return Ok(true);
        }
        let mut b = [0u8; 1];
        let n = self.file.read_at(&mut b, self.size - 1)?;
        Ok(n == 1 && b[0] == b'\n')
    }

    /// Renames the file to `.1` (shifting older ones) and starts a new one.
    fn rotate(&mut self, max: u64, keep: u32) -> io::Result<()> {
        super::spawn::rotate(&self.path, max, keep)?;
        *self = LogFile::open(&self.path)?;
        Ok(())
    }
}

/// Moves up to `want` bytes from the FIFO into the log at its end; returns how many moved.
fn move_bytes(
    fifo: &File,
    log: &mut LogFile,
    want: usize,
    copying: &mut bool,
) -> io::Result<usize> {
    if !*copying {
        let mut off = log.size as libc::loff_t;
        let off_ptr: *mut libc::loff_t = if log.regular {
            &mut off
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: two live fds, a valid (or null) offset pointer, a length and flags. The
        // kernel consumes from the pipe exactly the bytes it wrote to the file.
        let r = unsafe {
            libc::splice(
                fifo.as_raw_fd(),
                std::ptr::null_mut(),
                log.file.as_raw_fd(),
                off_ptr,
                want,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if r >= 0 {
            log.size += r as u64;
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        crate::log!(
            "{}: the file system cannot splice; output is read and then written (a Supervisor killed between the two loses what it read)",
            log.path.display()
        );
        *copying = true;
    }
    let mut buf = vec![0u8; want.min(64 << 10)];
    // SAFETY: a live fd and a buffer of the given length.
    let r = crate::syscall!(read(fifo.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()))?;
    let n = r as usize;
    if log.regular {
        log.file.write_all_at(&buf[..n], log.size)?;
    } else {
        io::Write::write_all(&mut &log.file, &buf[..n])?;
    }
    log.size += n as u64;
    Ok(n)
}

/// How many bytes the FIFO holds.
fn pending_bytes(fifo: &File) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on a live pipe fd writes one int.
    crate::syscall!(ioctl(fifo.as_raw_fd(), libc::FIONREAD, &mut n))?;
    Ok(n.max(0) as usize)
}

/// Looks at the FIFO's head without consuming it: the length up to and including its first
/// newline, else all that is there (up to 64 KiB); `None` if it is empty.
fn peek_line(fifo: &File) -> io::Result<Option<usize>> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    crate::syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK))?;
    // SAFETY: both fds were just returned by pipe2 and are owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: two live pipe fds, a length and flags; tee copies without consuming.
    let r = unsafe {
        libc::tee(
            fifo.as_raw_fd(),
            wr.as_raw_fd(),
            LINE_SLACK as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if r == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; r as usize];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: a live fd and the unfilled part of the buffer.
        let n = crate::syscall!(read(
            rd.as_raw_fd(),
            buf[got..].as_mut_ptr().cast(),
            buf.len() - got
        ))?;
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    Ok(Some(
        buf[..got]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(got, |k| k + 1),
    ))
}

impl super::Supervisor {
    /// The log file node `i`'s stream `k` fills.
    fn output_target(&self, i: usize, k: usize) -> &Path {
        let spec = &self.nodes[i].spec;
        if k == 0 {
            &spec.stdout
        } else {
            &spec.stderr
        }
    }

    /// Stream `k` of node `i` is used: stdout always, stderr when it goes to another file.
    fn output_used(&self, i: usize, k: usize) -> bool {
        k == 0 || self.nodes[i].spec.stderr != self.nodes[i].spec.stdout
    }

    /// Opens (or keeps) node `i`'s output FIFOs and log files and returns the node's ends
    /// (stdout, stderr) for a spawn.
    pub(super) fn output_ends(
        &mut self,
        i: usize,
    ) -> Result<(File, File), super::spawn::SpawnError> {
        let name = self.nodes[i].spec.name.clone();
        // First the working folder (given to the node's `user` if it makes it), which may hold
        // the files.
        super::spawn::prepare_cwd(&self.nodes[i].spec)?;
        let mut ends = Vec::new();
        for k in 0..2 {
            if !self.output_used(i, k) {
                // stderr now goes to stdout's file (a reload): its own stream ends here.
                if self.nodes[i].output[k].is_some() {
                    self.end_stream(i, k, true);
                }
                continue;
            }
            let target = self.output_target(i, k).to_owned();
            let fifo = fifo_path(&self.instance.dir(), &name, k);
            let fail = |what, path: &Path, source| super::spawn::SpawnError::Prepare {
                node: name.clone(),
                what,
                path: path.to_owned(),
                source,
            };
            if self.nodes[i].output[k].is_none() {
                let s = Stream::open(&fifo).map_err(|e| {
                    // An OS error keeps its errno (the node's last exit says "Too many open
                    // files", not "Input/output error"); a refused file says why.
                    let source = match &e {
                        crate::sys::checked::CheckError::Io { source, .. } => {
                            source.raw_os_error().map(io::Error::from_raw_os_error)
                        }
                        _ => None,
                    };
                    fail(
                        "make its output FIFO",
                        &fifo,
                        source.unwrap_or_else(|| io::Error::other(e.to_string())),
                    )
                })?;
                self.watch_output(i, k, s)
                    .map_err(|e| fail("watch its output FIFO", &fifo, e))?;
            }
            // What the previous process left in this stream goes to the file it was writing.
            self.drain_output(i, k);
            let Some(s) = self.nodes[i].output[k].as_mut() else {
                continue;
            };
            s.reopen_log(&target)
                .map_err(|e| fail("open output file", &target, e))?;
            ends.push(s.node_end().map_err(|e| {
                fail(
                    "open its output FIFO",
                    &fifo,
                    io::Error::other(e.to_string()),
                )
            })?);
        }
        let out = ends.remove(0);
        let err = match ends.pop() {
            Some(e) => e,
            None => out
                .try_clone()
                .map_err(|e| super::spawn::SpawnError::Prepare {
                    node: name.clone(),
                    what: "duplicate its output FIFO",
                    path: fifo_path(&self.instance.dir(), &name, 0),
                    source: e,
                })?,
        };
        Ok((out, err))
    }

    /// Registers stream `k` of node `i` with the event loop and keeps it.
    fn watch_output(&mut self, i: usize, k: usize, s: Stream) -> io::Result<()> {
        self.poll.registry().register(
            &mut mio::unix::SourceFd(&s.raw_fd()),
            Source::Output(i, k).token(),
            mio::Interest::READABLE,
        )?;
        self.nodes[i].output[k] = Some(s);
        Ok(())
    }

    /// A successor (or an upgrade's new image): reopens the output FIFO that exists of every
    /// node from index `from` on and moves what its node wrote meanwhile.
    pub(super) fn resume_outputs(&mut self, from: usize) {
        for i in from..self.nodes.len() {
            self.resume_node_outputs(i);
        }
    }

    /// [`Self::resume_outputs`] for node `i` alone (one whose end a takeover applies: its
    /// last lines reach its file, and its crash report, first).
    pub(super) fn resume_node_outputs(&mut self, i: usize) {
        {
            for k in 0..2 {
                if self.nodes[i].output[k].is_some() {
                    continue;
                }
                let fifo = fifo_path(&self.instance.dir(), &self.nodes[i].spec.name, k);
                match Stream::reopen_existing(&fifo) {
                    None => {}
                    Some(Ok(s)) => {
                        if let Err(e) = self.watch_output(i, k, s) {
                            crate::log!("{}: cannot watch it: {e}", fifo.display());
                        }
                    }
                    Some(Err(e)) => crate::log!(
                        "node {}: cannot reopen its output FIFO: {e}; its output waits there",
                        self.nodes[i].spec.name
                    ),
                }
                self.pump_output(i, k);
            }
        }
    }

    /// Moves what node `i`'s stream `k` holds into its log file.
    pub(super) fn pump_output(&mut self, i: usize, k: usize) {
        let (target, max, keep) = {
            let p = &self.nodes[i].spec.policy;
            (
                self.output_target(i, k).to_owned(),
                p.log_max_bytes,
                p.log_keep,
            )
        };
        let name = self.nodes[i].spec.name.clone();
        if let Some(s) = self.nodes[i].output[k].as_mut() {
            match s.pump(&name, &target, max, keep) {
                Pumped::Drained => {}
                Pumped::More => self.output_pending.push((i, k)),
                Pumped::Failed => {
                    // Nothing may wake us for it again (a node blocked on its full pipe
                    // writes nothing more): a timer does.
                    let at = crate::sys::clock::monotonic_ns() + RETRY.as_nanos() as u64;
                    self.output_retry = Some(self.output_retry.map_or(at, |r| r.min(at)));
                }
            }
        }
    }

    /// Once the retry time has come, pumps every open stream (some could not be written).
    pub(super) fn retry_outputs(&mut self) {
        match self.output_retry {
            Some(at) if at <= crate::sys::clock::monotonic_ns() => self.output_retry = None,
            _ => return,
        }
        for i in 0..self.nodes.len() {
            for k in 0..2 {
                self.pump_output(i, k);
            }
        }
    }

    /// Moves what both of node `i`'s streams hold into its files.
    pub(super) fn pump_outputs(&mut self, i: usize) {
        for k in 0..2 {
            self.drain_output(i, k);
        }
    }

    /// Moves everything node `i`'s stream `k` holds into its file (past the per-wake budget).
    fn drain_output(&mut self, i: usize, k: usize) {
        while self.nodes[i].output[k].is_some() {
            self.pump_output(i, k);
            if self.output_pending.last() != Some(&(i, k)) {
                break;
            }
            self.output_pending.pop();
        }
    }

    /// A writer for a helper of node `i` (its `ready_check`) whose output goes where the
    /// node's stderr goes: the stderr FIFO's node end, or `None` with `log_direct` (or
    /// without a stream).
    pub(super) fn stderr_end(&self, i: usize) -> Option<File> {
        if self.nodes[i].spec.policy.log_direct {
            return None;
        }
        let k = usize::from(self.output_used(i, 1));
        self.nodes[i].output[k].as_ref()?.node_end().ok()
    }

    /// Pumps the streams that stopped at their budget in the previous round.
    pub(super) fn pump_pending_outputs(&mut self) {
        for (i, k) in std::mem::take(&mut self.output_pending) {
            if i < self.nodes.len() {
                self.pump_output(i, k);
            }
        }
    }

    /// Moves every stream's token to its node's new index (after a reload renumbered them).
    pub(super) fn reindex_outputs(&mut self) {
        self.output_pending.clear();
        for i in 0..self.nodes.len() {
            for k in 0..2 {
                if let Some(s) = &self.nodes[i].output[k] {
                    let _ = self.poll.registry().reregister(
                        &mut mio::unix::SourceFd(&s.raw_fd()),
                        Source::Output(i, k).token(),
                        mio::Interest::READABLE,
                    );
                }
                // An edge may have been spent under the old token.
                self.pump_output(i, k);
            }
        }
    }

    /// Node `i` is down (no process, nothing queued): its streams are drained and closed, and
    /// its FIFOs removed (made again at its next spawn), so a node at rest costs no fd, here
    /// or in the guardian (which holds the FIFOs that exist).
    pub(super) fn rest_outputs(&mut self, i: usize) {
        if i < self.nodes.len() && self.machine.is_down(i) {
            self.output_pending.retain(|p| p.0 != i);
            self.shut_outputs(i, true);
        }
    }

    /// Moves what node `i`'s streams hold to its files, then removes its FIFOs (the node
    /// leaves the config, or the Supervisor shuts down).
    pub(super) fn close_outputs(&mut self, i: usize) {
        self.shut_outputs(i, true);
    }

    fn shut_outputs(&mut self, i: usize, remove: bool) {
        for k in 0..2 {
            self.end_stream(i, k, remove);
        }
    }

    /// Drains and closes node `i`'s stream `k`; with `remove` its FIFO goes too (also one
    /// that was closed while the node rested).
    fn end_stream(&mut self, i: usize, k: usize, remove: bool) {
        let target = self.output_target(i, k).to_owned();
        let (max, keep) = {
            let p = &self.nodes[i].spec.policy;
            (p.log_max_bytes, p.log_keep)
        };
        let name = self.nodes[i].spec.name.clone();
        if let Some(s) = self.nodes[i].output[k].take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut mio::unix::SourceFd(&s.raw_fd()));
            s.close(&name, &target, max, keep, remove);
        }
        if remove {
            let _ = std::fs::remove_file(fifo_path(&self.instance.dir(), &name, k));
        }
    }
}
