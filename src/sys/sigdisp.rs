//! Signal dispositions through the raw `rt_sigaction` system call. glibc's `sigaction` refuses
//! signals 32 and 33 (its own, for thread cancellation and `setxid`), yet a process can
//! inherit them ignored (`SIG_IGN` survives `execve`) from whoever started it; a node must not.

/// The kernel's `struct sigaction` on x86_64 and aarch64 (`sa_handler`, `sa_flags`,
/// `sa_restorer`, a 64-bit mask), which is not glibc's.
#[repr(C)]
#[derive(Clone, Copy)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The highest signal number the kernel has (`_NSIG`).
pub const NSIG: i32 = 64;

/// Whether signal `sig` is ignored in this process (`false` if it cannot be read).
pub fn is_ignored(sig: i32) -> bool {
    let mut old = KernelSigaction {
        handler: 0,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: a null new action only reads the current one into `old`, a valid out-buffer of
    // the kernel's layout; the last argument is the kernel's sigset size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KernelSigaction>(),
            &mut old as *mut KernelSigaction,
            8usize,
        )
    };
    r == 0 && old.handler == libc::SIG_IGN
}

/// Sets signal `sig` to its default action. Async-signal-safe (one system call): for a
/// child between `clone` and `execve`. Returns the raw result (0, or -1 with errno set).
///
/// # Safety
///
/// Changes the disposition process-wide: call it only in a process (or a `CLONE_VM` child
/// with every signal blocked) whose handlers may be dropped.
pub unsafe fn set_default(sig: i32) -> libc::c_long {
    let new = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: a valid action of the kernel's layout, no old action asked for; the caller
    // vouches that the process may lose its handler for `sig`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &new as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_33_ignored_by_the_raw_call_is_seen_and_reset() {
        // In a child process, so the test harness's own dispositions are untouched.
        // SAFETY: fork in a test; the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ign = KernelSigaction {
                handler: libc::SIG_IGN,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            // SAFETY: a valid action for the raw call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    33,
                    &ign as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                )
            };
            let seen = r == 0 && is_ignored(33);
            // SAFETY: this child's dispositions are its own.
            let reset = unsafe { set_default(33) } == 0 && !is_ignored(33);
            // SAFETY: leave the forked child at once.
            unsafe { libc::_exit(if seen && reset { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
