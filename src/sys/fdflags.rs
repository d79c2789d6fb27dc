//! File descriptor flags.

use std::io;
use std::os::fd::RawFd;

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    update(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC, on)
}

/// Sets or clears `O_NONBLOCK` on `fd` (on its open file description).
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    update(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK, on)
}

/// Whether `fd` is open and a pipe (or FIFO).
pub fn is_pipe(fd: RawFd) -> io::Result<bool> {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an fd number only fills in the buffer (EBADF if it is not open).
    crate::syscall!(fstat(fd, &mut st))?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFIFO)
}

/// Sets or clears `bit` in the flags `fcntl(get)` reads and `fcntl(set)` writes.
fn update(fd: RawFd, get: i32, set: i32, bit: i32, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_GETFL on an fd number; fails with EBADF if it is not open.
    let flags = crate::syscall!(fcntl(fd, get))?;
    let new = if on { flags | bit } else { flags & !bit };
    // SAFETY: F_SETFD/F_SETFL with flags derived from the current ones.
    crate::syscall!(fcntl(fd, set, new))?;
    Ok(())
}

/// Marks every fd from `first` up close-on-exec, for a child between fork and exec (only
/// async-signal-safe calls, no allocation). `close_range(CLOSE_RANGE_CLOEXEC)` needs Linux
/// 5.11; on older kernels (ENOSYS, EINVAL) it falls back to the fds listed in `/proc/self/fd`,
/// and without `/proc` to every number below `limit` (the highest fd the process could have
/// opened: its soft `RLIMIT_NOFILE`, which broctld never lowers). Fails only if an fd could
/// not be marked, so no fd of the parent leaks into a node unnoticed.
pub fn cloexec_from(first: RawFd, limit: RawFd) -> io::Result<()> {
    // SAFETY: close_range takes two fd numbers and a flag; it touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    match cloexec_listed(first) {
        Ok(()) => Ok(()),
        Err(_) => {
            for fd in first..limit {
                // SAFETY: F_SETFD on an fd number; EBADF for a number not open is expected.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::EBADF)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}

/// The `/proc/self/fd` half of [`cloexec_from`]: reads the directory with `getdents64` into a
/// stack buffer (no allocation) and marks each listed fd from `first` up.
pub fn cloexec_listed(first: RawFd) -> io::Result<()> {
    // SAFETY: a NUL-terminated path and open flags.
    let dir = crate::syscall!(open(
        c"/proc/self/fd".as_ptr(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC
    ))?;
    let mut buf = [0u8; 4096];
    let result = loop {
        // SAFETY: `buf` is writable for its whole length; getdents64 writes at most that much.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        if n < 0 {
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        let mut off = 0usize;
        let mut failed = None;
        while off + 19 < n as usize {
            // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n as usize {
                break;
            }
            let mut fd: i64 = 0;
            let mut digits = 0;
            for &b in &buf[off + 19..off + reclen] {
                if !b.is_ascii_digit() {
                    break;
                }
                fd = fd * 10 + (b - b'0') as i64;
                digits += 1;
            }
            if digits > 0 && fd >= first as i64 && fd != dir as i64 && fd <= RawFd::MAX as i64 {
                // SAFETY: F_SETFD on an fd number listed as open.
                if unsafe { libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                    failed = Some(io::Error::last_os_error());
                }
            }
            off += reclen;
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    // SAFETY: `dir` is the fd opened above, closed once.
    unsafe { libc::close(dir) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on an fd number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    /// The fallback for kernels without `close_range(CLOSE_RANGE_CLOEXEC)` (before 5.11): every
    /// fd listed in /proc/self/fd from `first` up ends close-on-exec. Run in a forked child, as
    /// spawn does, so the test process's own fds are untouched.
    #[test]
    fn close_range_fallback_marks_every_open_fd_cloexec() {
        let files: Vec<std::fs::File> = (0..40)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        for &fd in &fds {
            set_cloexec(fd, false).unwrap();
        }
        // SAFETY: the child only makes async-signal-safe calls and then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let lowest = *fds.iter().min().unwrap();
            let ok = cloexec_listed(lowest).is_ok() && fds.iter().all(|&fd| cloexec(fd));
            let ok2 = {
                for &fd in &fds {
                    // SAFETY: clearing the flag on our own open fds again.
                    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
                }
                cloexec_from(lowest, 4096).is_ok() && fds.iter().all(|&fd| cloexec(fd))
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok && ok2 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(
            fds.iter().all(|&fd| !cloexec(fd)),
            "the parent's fds are untouched"
        );
    }
}
