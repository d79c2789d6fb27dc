//! Readiness from a status file (`ready_file = { path = ".status", line = "RUNNING" }`, Zeek's
//! `-U` file): one inotify instance in the Supervisor's poll loop watches the folder of every
//! such file; a change to a watched file whose first line now reads the expected line makes
//! the starting node ready. No polling: the kernel reports each write and close.
//!
//! The file is removed before each start, so a previous run's `RUNNING` never counts.

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::*;

/// The inotify instance that watches the folders of ready files and PID files.
pub(super) struct ReadyFiles(crate::sys::inotify::Inotify);

impl ReadyFiles {
    /// A new, non-blocking inotify instance.
    pub(super) fn new() -> io::Result<ReadyFiles> {
        crate::sys::inotify::Inotify::new().map(ReadyFiles)
    }

    /// The fd to register in the poll loop.
    pub(super) fn raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }

    /// Watches the folder of `file` for files written, closed or moved in.
    pub(super) fn watch(&mut self, file: &Path) -> io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("/"));
        self.0.watch_dir(
            dir,
            libc::IN_CLOSE_WRITE | libc::IN_MODIFY | libc::IN_MOVED_TO,
        )
    }

    /// Drains the pending events: the paths of the files that changed, and whether the
    /// kernel's queue overflowed (events were lost: every file must be looked at).
    fn changed(&mut self) -> (Vec<PathBuf>, bool) {
        self.0.changed()
    }
}

/// The most of a ready file [`says`] reads: its first line is all that counts.
const READ_MAX: u64 = 4096;

/// Whether `file`'s first line is `line`. The file is the node's to write, so it is untrusted:
/// it is opened without blocking (a FIFO put there must not hang the loop), only a regular file
/// counts (not `/dev/zero` behind a symlink), and at most [`READ_MAX`] bytes are read.
fn says(file: &Path, line: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
    else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = Vec::new();
    if f.take(READ_MAX).read_to_end(&mut head).is_err() {
        return false;
    }
    String::from_utf8_lossy(&head).lines().next() == Some(line)
}

impl Supervisor {
    /// The absolute path of node `i`'s ready file, if it has one.
    fn ready_file_path(&self, i: usize) -> Option<PathBuf> {
        let spec = &self.nodes[i].spec;
        spec.policy
            .ready_file
            .as_ref()
            .map(|r| spec.cwd.join(&r.path))
    }

    /// Before node `i` starts: removes its old ready file and watches its folder. Returns
    /// whether the node's readiness comes from the file (false when it has none, or the file
    /// cannot be watched: logged, and the node then counts as ready as without one).
    pub(super) fn arm_ready_file(&mut self, i: usize) -> bool {
        let Some(path) = self.ready_file_path(i) else {
            return false;
        };
        let name = &self.nodes[i].spec.name;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log!(
                "node {name}: cannot remove its old ready_file {}: {e}",
                path.display()
            ),
        }
        let Some(files) = self.ready_files.as_mut() else {
            log!("node {name}: ready_file is not watched (no inotify); it counts as ready at once");
            return false;
        };
        // The folder is the node's (its cwd, or below): made now if a restart finds it gone.
        let mut watched = files.watch(&path);
        if matches!(&watched, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let spec = &self.nodes[i].spec;
            if spawn::preflight(spec, &self.config_dir).is_ok() {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
            if let Some(files) = self.ready_files.as_mut() {
                watched = files.watch(&path);
            }
        }
        let name = &self.nodes[i].spec.name;
        match watched {
            Ok(()) => true,
            Err(e) => {
                log!(
                    "node {name}: cannot watch its ready_file {}: {e}; it counts as ready at once",
                    path.display()
                );
                false
            }
        }
    }

    /// After a takeover: node `i` was `starting` and waits for its ready file. Watches the file
    /// again (without removing it: the node may have written it while no Supervisor ran) and
    /// returns whether it must go on waiting (false: it already reads its line, or the file
    /// cannot be watched, so it counts as ready).
    pub(super) fn resume_ready_file(&mut self, i: usize) -> bool {
        let (Some(path), Some(line)) = (
            self.ready_file_path(i),
            self.nodes[i]
                .spec
                .policy
                .ready_file
                .as_ref()
                .map(|r| r.line.clone()),
        ) else {
            return false;
        };
        let Some(files) = self.ready_files.as_mut() else {
            return false;
        };
        if let Err(e) = files.watch(&path) {
            log!(
                "node {}: cannot watch its ready_file {} again: {e}; it counts as ready",
                self.nodes[i].spec.name,
                path.display()
            );
            return false;
        }
        !says(&path, &line)
    }

    /// The inotify fd was readable: every starting node whose ready file changed and now reads
    /// its line becomes ready.
    pub(super) fn ready_files_changed(&mut self) {
        let Some(files) = self.ready_files.as_mut() else {
            return;
        };
        let (changed, overflow) = files.changed();
        for i in 0..self.nodes.len() {
            if matches!(
                self.machine.core(i).phase,
                machine::Phase::AwaitingMain { .. }
            ) && (overflow || self.pid_file_path(i).is_some_and(|p| changed.contains(&p)))
            {
                if let Some(input) = self.take_pid_file(i) {
                    self.feed(input);
                }
            }
        }
        for i in 0..self.nodes.len() {
            if !self.awaits_ready(i) {
                continue;
            }
            let Some(path) = self.ready_file_path(i) else {
                continue;
            };
            let line = self.nodes[i]
                .spec
                .policy
                .ready_file
                .as_ref()
                .map(|r| r.line.clone());
            if (overflow || changed.contains(&path)) && line.is_some_and(|l| says(&path, &l)) {
                self.mark_ready(i);
            }
        }
    }
}
