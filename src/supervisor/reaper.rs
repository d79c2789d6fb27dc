//! Reaping: the one place that calls `waitpid`. Signals coalesce, so every wake reaps in a loop
//! until nothing is left, including pids we never spawned (as a child subreaper, orphaned
//! grandchildren of our nodes are reparented to us).

use crate::protocol::node::Exit;

/// Reaps every child that has ended; returns (pid, how it ended).
pub fn reap_all() -> Vec<(u32, Exit)> {
    let mut out = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            break;
        }
        if pid < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => break, // ECHILD: no children left
            }
        }
        let Some(exit) = Exit::from_wait_status(status) else {
            continue; // stopped/continued: not an exit
        };
        out.push((pid as u32, exit));
    }
    out
}
