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

/// Whether every write to a pipe wakes an edge-triggered epoll waiter, even when the pipe
/// already held unread bytes. Linux does so since 5.14 (for pipes that are polled: "pipe: make
/// pipe writes always wake up readers"); 5.5 to 5.13 woke only on the empty-to-non-empty
/// change, and a reader that left bytes in the pipe then never woke again. Probed on a
/// private pipe: two writes with no read between them must give two events. Any failure of
/// the probe answers `false` (the reader then empties the pipe on every wake).
pub fn every_write_wakes() -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut ends = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return false;
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: epoll_create1 takes a flag.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return false;
    }
    // SAFETY: a new fd owned by nothing else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: valid fds and a valid event.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, rd.as_raw_fd(), &mut ev) } < 0
    {
        return false;
    }
    let woke = || {
        // SAFETY: one byte from a valid buffer to a valid fd.
        let wrote = unsafe { libc::write(wr.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: room for one event; a zero timeout never blocks.
        wrote == 1 && unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 1, 0) } == 1
    };
    woke() && woke()
}

#[cfg(test)]
mod tests {
    /// The lazy doorbell relies on this kernel behaviour; the machines we run on (Linux 6.x)
    /// have it. A kernel without it makes the Supervisor read the FIFO on every ring.
    #[test]
    fn every_write_to_a_polled_pipe_wakes_edge_triggered_epoll() {
        assert!(super::every_write_wakes());
    }
}
