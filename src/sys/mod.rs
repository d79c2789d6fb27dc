//! The OS layer: thin, audited wrappers over the syscalls broctld needs that nix does not
//! cover (or covers awkwardly). Every raw call goes through [`syscall!`](crate::syscall), which turns the C
//! convention (`-1` and `errno`) into `std::io::Result`.

/// Calls a libc function and maps a `-1` return to `std::io::Error::last_os_error()`.
///
/// Taken from mio's `syscall!`: the expression is evaluated in an `unsafe` block, so each use
/// site must carry its own `// SAFETY:` comment about the arguments it passes.
#[macro_export]
#[doc(hidden)]
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub mod account;
pub mod caps;
pub mod cgroup;
pub mod checked;
pub mod clock;
pub mod detach;
pub mod exec;
pub mod fdflags;
pub mod fdstore;
pub mod fifo;
pub mod futex;
pub mod inotify;
pub mod lockfile;
pub mod pidfd;

pub mod procenv;
pub mod procscan;
pub mod procstat;
pub mod sigdisp;
pub mod stdio;
pub mod vfork;
