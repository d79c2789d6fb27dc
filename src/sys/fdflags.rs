//! File descriptor flags.

use std::io;
use std::os::fd::RawFd;

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD on an fd number; fails with EBADF if it is not open.
    let flags = crate::syscall!(fcntl(fd, libc::F_GETFD))?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD with flags derived from the current ones.
    crate::syscall!(fcntl(fd, libc::F_SETFD, new))?;
    Ok(())
}
