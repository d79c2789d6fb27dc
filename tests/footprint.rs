//! Issue 12 (scale): one instance holds ten thousand nodes. Real Supervisors, no timing. What
//! each added node costs in memory is a benchmark figure (`benches/peers/peers.py`,
//! docs/benchmarks.md), not asserted here: it depends on the machine and the paths.

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
