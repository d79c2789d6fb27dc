//! Issue 12 (scale and footprint): one instance holds ten thousand nodes, and each node added
//! costs the Supervisor less than 1 KiB. Real Supervisors, memory read from the kernel
//! (`/proc/PID/smaps_rollup`), no timing.

mod common;

use common::*;

/// A config of `n` nodes that do not start by themselves, written as the benchmark's
/// (docs/benchmarks.md): output to `/dev/null`, the config's folder as working directory. (Each
/// node's own strings, such as distinct log paths, add their length to what it costs.)
fn config(n: usize) -> String {
    let mut config = String::from("[defaults]\nautostart = false\n");
    for i in 0..n {
        config.push_str(&format!(
            "\n[[node]]\nname = \"n-{i}\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n\
             cwd = \".\"\nstdout = \"/dev/null\"\nstderr = \"/dev/null\"\n"
        ));
    }
    config
}

/// The Supervisor's memory that grows with its nodes, in KiB: its private (anonymous) memory
/// plus its share of the region (shared memory). File-backed pages (the binary and libc) are
/// left out: they do not depend on the node count, but which of them are mapped varies with
/// the code paths a run happens to take.
fn node_memory_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/smaps_rollup: {e}"));
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup:\n{text}"))
    };
    field("Anonymous:") + field("Pss_Shmem:")
}

/// Ten thousand nodes (the old mailbox mask held 1024; the region's table is sized for 65,536)
/// load, every one is listed by `status`, and the last one starts by name: the kernel shows its
/// process running.
#[test]
fn ten_thousand_nodes_load_and_status_lists_every_one() {
    let c = Cluster::new("ten_thousand", &config(10_000));
    c.run(&["start", "n-9999", "n-0"]).ok();
    c.supervisor_pid();
    let st = c.status();
    assert_eq!(st.len(), 10_000);
    for name in ["n-0", "n-9999"] {
        let n = &st[name];
        assert_eq!(n.state, "running", "{name}: {n:?}");
        assert!(pid_alive(n.pid.expect("a pid")), "{name}: {n:?}");
    }
    assert_eq!(st.values().filter(|n| n.pid.is_some()).count(), 2);
    assert!(st["n-5000"].pid.is_none() && st["n-5000"].state == "stopped");
    c.run(&["stop", "n-9999", "n-0"]).ok();
}

/// What each node adds to the Supervisor's memory stays under 1 KiB: a Supervisor of 10,000
/// nodes against one of 1,000, the same config otherwise. (It was some 3.6 KiB: the config's
/// parse tree stayed in the heap, and each node carried its own 500-byte policy.)
#[test]
fn supervisor_memory_per_added_node_is_under_one_kib() {
    let small = Cluster::new("mem_small", &config(1_000));
    small.run(&["start", "n-0"]).ok();
    let large = Cluster::new("mem_large", &config(10_000));
    large.run(&["start", "n-0"]).ok();
    let (a, b) = (
        node_memory_kib(small.supervisor_pid()),
        node_memory_kib(large.supervisor_pid()),
    );
    let per_node_bytes = b.saturating_sub(a) * 1024 / 9_000;
    assert!(
        per_node_bytes < 1024,
        "{per_node_bytes} bytes per added node (1,000 nodes: {a} KiB, 10,000 nodes: {b} KiB)\n{}",
        std::fs::read_to_string(format!("/proc/{}/smaps", large.supervisor_pid()))
            .unwrap_or_default()
    );
    small.run(&["stop", "n-0"]).ok();
    large.run(&["stop", "n-0"]).ok();
}
