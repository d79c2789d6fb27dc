//! Open files kept alive without an fd each: sent (`SCM_RIGHTS`) over a socket pair of our
//! own and left in flight in its receive queue. A file in flight is referenced by the kernel,
//! so it stays open (a FIFO keeps its reader) although no fd of ours names it; it costs the
//! socket's buffer, not the fd limit. The guardian holds the nodes' output FIFOs this way.
//!
//! Both ends are ours: a message is written on one and read back, one at a time, from the
//! other (`SOCK_SEQPACKET`: one message per read). The kernel counts files in flight against
//! the sender's `RLIMIT_NOFILE` unless it has `CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN`
//! (`ETOOMANYREFS`); a full buffer refuses with `EAGAIN`. Either way the caller keeps the fd.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most fds in one message (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_PER_MESSAGE: usize = 32;

/// The socket pair.
#[derive(Debug)]
pub struct FdStore {
    tx: OwnedFd,
    rx: OwnedFd,
}

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((MAX_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) as usize }
}

impl FdStore {
    /// A new, empty store (nonblocking, close-on-exec).
    pub fn new() -> io::Result<FdStore> {
        let mut sv = [0 as RawFd; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        crate::syscall!(socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr()
        ))?;
        // SAFETY: both were just returned by socketpair and are owned by nobody else.
        Ok(unsafe {
            FdStore {
                tx: OwnedFd::from_raw_fd(sv[0]),
                rx: OwnedFd::from_raw_fd(sv[1]),
            }
        })
    }

    /// Puts `fds` (at most [`MAX_PER_MESSAGE`]) in flight as one message with `tag` (at least
    /// one byte). The caller may close its fds afterwards. Never blocks.
    pub fn put(&self, tag: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.is_empty() || fds.len() > MAX_PER_MESSAGE || tag.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut control = vec![0u8; cmsg_space()];
        let mut iov = libc::iovec {
            iov_base: tag.as_ptr() as *mut libc::c_void,
            iov_len: tag.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes as u32) } as _;
        // SAFETY: `control` holds at least CMSG_SPACE(bytes) bytes, so the first header and
        // its data fit; CMSG_FIRSTHDR and CMSG_DATA point inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
        }
        // SAFETY: a valid msghdr whose buffers outlive the call.
        let n = crate::syscall!(sendmsg(
            self.tx.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        ))?;
        if n as usize != tag.len() {
            // A SEQPACKET message is sent whole or not at all.
            return Err(io::Error::other("a short send on a SEQPACKET socket"));
        }
        Ok(())
    }

    /// Takes the oldest message back: its tag (at most `tag_max` bytes) and its fds (now ours,
    /// close-on-exec). `None` if none is in flight. `EMFILE` (and the files in that message
    /// lost) if this process lacks the fds: the caller keeps room for [`MAX_PER_MESSAGE`].
    pub fn take(&self, tag_max: usize) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut tag = vec![0u8; tag_max.max(1)];
        let mut control = vec![0u8; cmsg_space()];
        let mut iov = libc::iovec {
            iov_base: tag.as_mut_ptr().cast(),
            iov_len: tag.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: a valid msghdr whose buffers outlive the call.
        let n = match crate::syscall!(recvmsg(
            self.rx.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC
        )) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled in `msg`'s control buffer; CMSG_FIRSTHDR/NXTHDR walk it
        // within msg_controllen, and each SCM_RIGHTS payload is an array of fds now ours.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c);
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for k in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(k));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        tag.truncate(n);
        Ok(Some((tag, fds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A pipe whose only reader is in flight still has a reader: a write succeeds, and the
    /// bytes are there when the reader comes back.
    #[test]
    fn a_file_in_flight_stays_open() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let store = FdStore::new().unwrap();
        store.put(b"x", &[r.as_raw_fd()]).unwrap();
        drop(r);
        let mut w = std::fs::File::from(w);
        w.write_all(b"hello").unwrap(); // no EPIPE: the reader lives in flight
        let (tag, mut fds) = store.take(16).unwrap().unwrap();
        assert_eq!(tag, b"x");
        let mut r = std::fs::File::from(fds.remove(0));
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(store.take(16).unwrap().is_none());
    }
}
