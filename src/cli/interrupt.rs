//! Ctrl-C while a command runs: in the shell (and in one-shot commands that follow something)
//! SIGINT only sets a flag, so that a long command stops waiting or following and the shell
//! stays. While the shell reads a line, the terminal is in raw mode and Ctrl-C is a key.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT handler (once). Without `SA_RESTART`, so a blocking call returns early.
pub fn install() {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
    // stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// Whether the handler is installed (Ctrl-C then does not end the process).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::SeqCst)
}

/// Whether Ctrl-C was pressed since the last [`clear`].
pub fn pending() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Forgets an earlier Ctrl-C (before a command starts).
pub fn clear() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}
