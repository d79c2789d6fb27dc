//! Node output: appended across restarts (never truncated), never lost when the Supervisor is
//! killed and replaced, and with `log_direct` (the node writes straight to its files) rotated
//! by size at a (re)spawn with a bounded number of files (`log_max_bytes`, `log_keep`). Live
//! rotation through the Supervisor is pinned by `tests/log_rotation.rs`.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The pids in the "pid=N started" lines of a broctld-node output file, in order.
fn started_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter(|l| l.contains(" started args="))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Restarts `node` and returns its new pid.
fn restart(c: &Cluster, node: &str) -> u32 {
    let old = c.status()[node].pid;
    c.run(&["restart", node]).ok();
    let s = c.wait_status(WAIT, "the node under a new pid", |s| {
        s[node].state == "running" && s[node].pid.is_some() && s[node].pid != old
    });
    s[node].pid.unwrap()
}

#[test]
fn output_is_appended_across_restarts_and_never_truncated() {
    let c = Cluster::new(
        "out_append",
        r#"
[[node]]
name = "n"
command = ["@NODE@", "--interval", "1h"]
log_max_bytes = 0
"#,
    );
    let first = c.start()["n"].pid.unwrap();
    let out = c.root.join("spool/n/stdout.log");
    let err = c.root.join("spool/n/stderr.log");
    wait_until(WAIT, "the first start line", || {
        started_pids(&read(&out)) == [first]
    });
    let ino = std::fs::metadata(&out).unwrap().ino();
    let mut pids = vec![first];
    for _ in 0..3 {
        let p = restart(&c, "n");
        pids.push(p);
        wait_until(WAIT, "the start line", || {
            started_pids(&read(&out)).len() == pids.len()
        });
    }
    assert_eq!(
        started_pids(&read(&out)),
        pids,
        "every run's first line, in order"
    );
    let errs = read(&err);
    assert_eq!(
        errs.lines().filter(|l| l.contains("stderr ready")).count(),
        pids.len(),
        "{errs}"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().ino(), ino, "the same file");
    let rotated: Vec<PathBuf> = (1..=5)
        .map(|k| c.root.join(format!("spool/n/stdout.log.{k}")))
        .filter(|p| p.exists())
        .collect();
    assert!(
        rotated.is_empty(),
        "log_max_bytes = 0 never rotates: {rotated:?}"
    );
}

#[test]
fn direct_output_is_rotated_at_respawn_with_a_bounded_number_of_files() {
    let keep: usize = 3;
    let c = Cluster::new(
        "out_rotate",
        &format!(
            r#"
[[node]]
name = "n"
command = ["@NODE@", "--interval", "10ms"]
log_max_bytes = 400
log_keep = {keep}
log_direct = true
"#
        ),
    );
    let mut pids = vec![c.start()["n"].pid.unwrap()];
    let dir = c.root.join("spool/n");
    let out = dir.join("stdout.log");
    let restarts = 7;
    for _ in 0..restarts {
        // Past the limit, so the next spawn rotates.
        wait_until(WAIT, "stdout.log to reach log_max_bytes", || {
            std::fs::metadata(&out).is_ok_and(|m| m.len() >= 400)
        });
        pids.push(restart(&c, "n"));
    }
    wait_until(WAIT, "the last start line", || {
        started_pids(&read(&out)) == [*pids.last().unwrap()]
    });
    // Exactly stdout.log, .1 .. .keep: the oldest runs are gone.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stdout.log"))
        .collect();
    names.sort();
    let want: Vec<String> = std::iter::once("stdout.log".to_string())
        .chain((1..=keep).map(|k| format!("stdout.log.{k}")))
        .collect();
    assert_eq!(names, want);
    // Each file holds one whole run, newest first: .1 the run before the current one, ...
    let n = pids.len();
    for k in 1..=keep {
        let text = read(&dir.join(format!("stdout.log.{k}")));
        assert_eq!(
            started_pids(&text),
            [pids[n - 1 - k]],
            "stdout.log.{k} holds run {} of {n}",
            n - k
        );
        // Whole: its heartbeats run from 1 without a gap.
        let beats: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split("heartbeat=").nth(1)?.trim().parse().ok())
            .collect();
        assert!(
            beats.iter().enumerate().all(|(i, b)| *b == i as u64 + 1),
            "stdout.log.{k}: heartbeats {beats:?}"
        );
    }
    // stderr is rotated on its own size, with the same bound.
    let errs = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stderr.log"))
        .count();
    assert!(errs <= keep + 1, "{errs} stderr files");
    figure("hygiene_output_rotation", "restarts", restarts);
    figure("hygiene_output_rotation", "files_kept", names.len());
}

#[test]
fn output_is_never_lost_when_the_supervisor_is_killed_and_replaced() {
    let kills = env_count("BROCTLD_HYGIENE_OUTPUT_KILLS", 3);
    let c = Cluster::new(
        "out_sup_kill",
        r#"
[[node]]
name = "n"
command = ["@NODE@", "--interval", "5ms"]
stop_timeout_ms = 3000
"#,
    );
    let pid = c.start()["n"].pid.unwrap();
    let out = c.root.join("spool/n/stdout.log");
    for k in 0..kills {
        let sup = c.supervisor_pid();
        std::thread::sleep(Duration::from_millis(50));
        signal(sup, libc::SIGKILL);
        wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
        // Writes go on (into the node's pipe with no Supervisor at all; the successor the
        // guardian starts moves them to the file).
        let len = std::fs::metadata(&out).unwrap().len();
        wait_until(WAIT, "output while no Supervisor runs", || {
            std::fs::metadata(&out).is_ok_and(|m| m.len() > len)
        });
        c.run(&["status"]);
        let s = c.status();
        assert_eq!(s["n"].pid, Some(pid), "kill {k}: the node changed pid");
    }
    c.run(&["stop", "n"]).ok();
    let text = read(&out);
    assert_eq!(started_pids(&text), [pid], "one run");
    let beats: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("heartbeat=").nth(1)?.trim().parse().ok())
        .collect();
    assert!(beats.len() > 20, "{} heartbeats", beats.len());
    let gaps: Vec<(usize, u64)> = beats
        .iter()
        .enumerate()
        .filter(|(i, b)| **b != *i as u64 + 1)
        .map(|(i, b)| (i, *b))
        .take(5)
        .collect();
    assert!(gaps.is_empty(), "lines lost or out of order: {gaps:?}");
    figure("hygiene_output_sup_kills", "supervisor_kills", kills);
    figure("hygiene_output_sup_kills", "lines_lost", 0);
    figure("hygiene_output_sup_kills", "heartbeats", beats.len());
}
