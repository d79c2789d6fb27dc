//! `broctld`: the Main Process (control shell and one-shot commands), and, in its internal
//! mode, the Supervisor Process.
//!
//! The C `main` is ours (`no_main`): std's runtime set-up before a Rust `main` reads
//! `/proc/self/maps` and the CPU affinity to place a stack guard, and maps an alternate signal
//! stack with SIGSEGV/SIGBUS handlers that only turn a stack overflow's crash into a message:
//! a dozen syscalls and page faults in every one-shot `broctld status`. What of it matters is
//! done here: fds 0 to 2 are made valid (a closed one is opened on `/dev/null`, so no file we
//! open later becomes our stdout) and SIGPIPE is ignored (a closed pipe is an `EPIPE` error).
//! Arguments come from std as before (glibc hands them to std's init array), and the exit goes
//! through `std::process::exit`, which flushes stdout. The release build aborts on a panic
//! (`panic = "abort"`, for size); a panic still exits with status 101 after its message, as
//! with unwinding, rather than dying of SIGABRT (and leaving a core dump).
//!
//! Arguments are taken as `OsString`s: a path need not be UTF-8, and a word that must be
//! (a node or instance name) is refused by the parser with a message, not a panic.
//!
//! Built as a test target (`cargo test --bin broctld`, though Cargo.toml sets `test = false`),
//! the file has no C `main`: the harness's own runs, with no tests, instead of the program.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use std::ffi::{c_char, c_int};

/// The process's entry point, called by the C runtime.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    sanitize_stdio();
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // SAFETY: _exit ends the process at once; nothing after it runs.
        unsafe { libc::_exit(101) }
    }));
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(broctld::cli::main(args));
}

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed (as std does before `main`).
#[cfg(not(test))]
fn sanitize_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any number only reports whether it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: a NUL-terminated path; the lowest free fd is the closed one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}
