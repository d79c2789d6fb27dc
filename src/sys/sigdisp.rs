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

/// `rt_sigaction(sig, new, old)`, raw. Async-signal-safe (one system call). Returns the raw
/// result (0, or -1 with errno set).
///
/// # Safety
///
/// With a `new` action, the disposition changes process-wide: call it so only in a process
/// (or a `CLONE_VM` child with every signal blocked) whose handlers may be dropped.
unsafe fn rt_sigaction(
    sig: i32,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> libc::c_long {
    let new = new.map_or(std::ptr::null(), |n| n as *const KernelSigaction);
    let old = old.map_or(std::ptr::null_mut(), |o| o as *mut KernelSigaction);
    // SAFETY: `new` and `old` are null or point to live actions of the kernel's layout; the
    // last argument is the kernel's sigset size; the caller vouches for a changed disposition.
    unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, new, old, 8usize) }
}

/// An action with handler `handler` (`SIG_DFL`, `SIG_IGN`), no flags, an empty mask.
fn action(handler: usize) -> KernelSigaction {
    KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    }
}

/// Whether signal `sig` is ignored in this process (`false` if it cannot be read).
pub fn is_ignored(sig: i32) -> bool {
    let mut old = action(0);
    // SAFETY: no new action: this only reads the current one.
    let r = unsafe { rt_sigaction(sig, None, Some(&mut old)) };
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
    // SAFETY: the caller vouches that the process may lose its handler for `sig`.
    unsafe { rt_sigaction(sig, Some(&action(libc::SIG_DFL)), None) }
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
            // SAFETY: this forked child's dispositions are its own.
            let r = unsafe { rt_sigaction(33, Some(&action(libc::SIG_IGN)), None) };
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
