//! Attacks on the output path (node stdout/stderr through a FIFO the Supervisor drains):
//! a node must never die, block for good or lose its output because of it. Every check reads
//! the kernel's truth (/proc) and the files on disk.

mod common;

use common::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The node's pid (alive in /proc) and its start time.
fn identity(c: &Cluster, name: &str) -> (u32, u64) {
    let s = c.wait_status(WAIT, "the node running", |s| {
        s[name].state == "running" && s[name].pid.is_some_and(pid_alive)
    });
    let pid = s[name].pid.unwrap();
    (pid, start_time(pid).expect("the node's start time"))
}

/// A node that reopens its stdout by path (`exec >/dev/stdout`, as a program configured to
/// log to `/dev/stdout` does) holds the FIFO write-only: once the Supervisor is gone it has no
/// reader left, and its next write raises SIGPIPE. A control-plane failure kills the node.
#[test]
#[ignore = "defect: a node that reopens /dev/stdout holds its FIFO O_WRONLY; with the Supervisor killed (guardian frozen) the FIFO has no reader and the node dies of SIGPIPE"]
fn a_node_that_reopens_dev_stdout_survives_a_supervisor_kill() {
    let c = Cluster::new(
        "oa_devstdout",
        r#"
[[node]]
name = "w"
command = ["/bin/sh", "-c", "exec >/dev/stdout; i=0; while :; do echo \"w line=$i\"; i=$((i+1)); sleep 0.01; done"]
"#,
    );
    c.start();
    let (pid, start) = identity(&c, "w");
    let path = c.root.join("spool/w/stdout.log");
    wait_until(WAIT, "output on disk", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("w line=5"))
    });
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    // The node writes every 10 ms: a second is a hundred writes with no Supervisor.
    std::thread::sleep(Duration::from_secs(1));
    let alive = start_time(pid) == Some(start) && pid_alive(pid);
    thaw(guardian);
    assert!(alive, "the node died while no Supervisor ran");
}
