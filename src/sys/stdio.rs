//! The process's own stdout, as a pipe's writer sees it: whether its reader is gone, and
//! ending the process the way a closed pipe ends `ls` in `ls | head`.

/// Whether fd 1 is a pipe whose reading end is closed, asked without writing (`poll` reports
/// `POLLERR` for such a pipe). A terminal or a file never reads as closed.
pub fn stdout_reader_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: 1,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid, initialised pollfd and its count; a zero timeout.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Ends the process by SIGPIPE (exit status 141 in a shell), printing nothing: SIGPIPE's
/// default action is restored (broctld ignores it from the start, so that a write to a closed
/// pipe is an `EPIPE` error everywhere else) and the signal raised.
pub fn die_of_sigpipe() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it have no preconditions;
    // SIGPIPE's default action ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Reached only if SIGPIPE is blocked.
    std::process::exit(141)
}
