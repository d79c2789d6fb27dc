//! The doorbell: a FIFO in the runtime dir. A Main writes one byte to wake the Supervisor; the
//! Supervisor holds the FIFO open read-write (`O_RDWR|O_NONBLOCK`) so its open never blocks and
//! it never sees a hang-up storm as writers come and go.

use super::checked::{self, CheckError, Kind};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Creates the FIFO (mode 0600) if missing and opens it for the Supervisor's end.
pub fn create_reader(path: &Path) -> Result<File, CheckError> {
    let c = checked::cpath(path)?;
    // SAFETY: a NUL-terminated path and a mode.
    match crate::syscall!(mkfifo(c.as_ptr(), 0o600)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(CheckError::Io {
                path: path.to_owned(),
                source,
            })
        }
    }
    let (f, _) = checked::open(path, libc::O_RDWR | libc::O_NONBLOCK, 0, Kind::Fifo, 0o077)?;
    Ok(f)
}

/// Opens the FIFO's write end for a Main. Fails with ENXIO if no reader has it open.
pub fn open_writer(path: &Path) -> Result<File, CheckError> {
    let (f, _) = checked::open(
        path,
        libc::O_WRONLY | libc::O_NONBLOCK,
        0,
        Kind::Fifo,
        0o077,
    )?;
    Ok(f)
}

/// Writes one byte. A full pipe (EAGAIN) means the bell is already ringing, which is fine.
pub fn ring(mut writer: &File) -> io::Result<()> {
    loop {
        match writer.write(&[1u8]) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The byte a Main writes to ask the Supervisor to check its region (it found it missing or
/// damaged while the Supervisor holds the lock); any other byte is a plain ring.
pub const REPAIR: u8 = 2;

/// Writes [`REPAIR`] (see there). A full pipe is fine: the Supervisor drains it all.
pub fn ring_repair(mut writer: &File) -> io::Result<()> {
    match writer.write(&[REPAIR]) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`drain`], also telling whether a [`REPAIR`] byte was among the bytes read.
pub fn drain_requests(mut reader: &File) -> io::Result<bool> {
    let mut buf = [0u8; 256];
    let mut repair = false;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(repair),
            Ok(n) => {
                repair |= buf[..n].contains(&REPAIR);
                if n < buf.len() {
                    return Ok(repair);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(repair),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Empties the pipe (edge-triggered epoll needs it drained on every wake). A short read means
/// the pipe was empty at that moment, so the usual case costs one `read`, not two; a byte
/// written after it makes a new edge.
pub fn drain(mut reader: &File) -> io::Result<usize> {
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) if n < buf.len() => return Ok(total + n),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
