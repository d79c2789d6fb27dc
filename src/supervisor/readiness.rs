//! The readiness FIFO: how a node with `ready_fd` says it is ready (s6's notification-fd
//! protocol: it writes a newline), in a way that survives the Supervisor.
//!
//! Each spawn makes a fresh named FIFO `RUNTIME/INSTANCE/nodes/NAME.ready` (mode 0600, checked
//! like every runtime file) and opens it twice: `O_RDWR` for the node (its `ready_fd`) and
//! `O_RDWR|O_NONBLOCK` for the Supervisor, which watches it with epoll. Because the node's fd
//! is a reader as well as a writer, its write can never raise SIGPIPE or fail with EPIPE,
//! whether or not a Supervisor is alive; and because the FIFO has a name, a successor (after a
//! `kill -9`, or the new image of an `upgrade-supervisor`) reopens it by path and reads what
//! was written while nobody listened.

use crate::sys::checked::{self, CheckError, Kind};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The FIFO's path for node `name` in the instance dir.
pub fn path(instance_dir: &Path, name: &str) -> PathBuf {
    instance_dir.join("nodes").join(format!("{name}.ready"))
}

/// Makes a fresh FIFO at `path` (a stale one, perhaps still held by a leftover, is unlinked
/// first) and returns (the node's end, the Supervisor's end).
pub fn create(path: &Path) -> Result<(File, File), CheckError> {
    let io_err = |source| CheckError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let c = checked::cpath(path)?;
    // SAFETY: a NUL-terminated path and a mode.
    crate::syscall!(mkfifo(c.as_ptr(), 0o600)).map_err(io_err)?;
    let (node_end, _) = checked::open(path, libc::O_RDWR, 0, Kind::Fifo, 0o077)?;
    let ours = reopen(path)?;
    Ok((node_end, ours))
}

/// Opens an existing FIFO's Supervisor end (`O_RDWR|O_NONBLOCK`: never blocks, never EOF).
pub fn reopen(path: &Path) -> Result<File, CheckError> {
    Ok(checked::open(path, libc::O_RDWR | libc::O_NONBLOCK, 0, Kind::Fifo, 0o077)?.0)
}

/// Drains the FIFO; true if a newline was written.
pub fn read_ready(mut f: &File) -> io::Result<bool> {
    let mut buf = [0u8; 64];
    let mut ready = false;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(ready),
            Ok(n) => ready |= buf[..n].contains(&b'\n'),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ready),
            Err(e) => return Err(e),
        }
    }
}

/// Whether process `pid` still has the FIFO at `path` open (as its `ready_fd`, or any fd).
/// A node that closed it while no Supervisor held it open took what it wrote with it: the
/// pipe's buffer lives only while someone has it open.
pub fn held_by(path: &Path, pid: u32) -> io::Result<bool> {
    let fifo = std::fs::symlink_metadata(path)?;
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for e in dir {
        let e = e?;
        // Follows the magic link to the open file itself.
        match std::fs::metadata(e.path()) {
            Ok(m) if m.ino() == fifo.ino() && m.dev() == fifo.dev() => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Removes node `name`'s FIFO (when its process is gone).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}
