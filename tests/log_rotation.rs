//! Node output through the Supervisor, rotated by size while the node runs: no line lost or
//! repeated across rotations, Supervisor `kill -9`s and `upgrade-supervisor`s, with the node
//! writing fast; `logs` reads across the rotated files and `logs -f` follows a rotation.
//! Every check reads the files on disk, not what broctld reports.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// One node `w` printing numbered lines (`w line=N`) at `rate` per second, its output
/// rotated at `max` bytes with `keep` old files, in `spool/w` under the config's folder.
fn writer(rate: u64, max: u64, keep: u32) -> String {
    format!(
        r#"
[[node]]
name = "w"
command = ["@NODE@", "--lines", "{rate}"]
log_max_bytes = {max}
log_keep = {keep}
stop_timeout_ms = 5000
"#
    )
}

fn stdout_of(c: &Cluster) -> PathBuf {
    c.root.join("spool/w/stdout.log")
}

/// How often each number `N` of a `w line=N` line appears in `path` and its rotated files.
fn numbers_on_disk(path: &Path) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for f in output_files(path) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for l in text.lines() {
            if let Some(n) = l
                .strip_prefix("w line=")
                .and_then(|n| n.parse::<u64>().ok())
            {
                *seen.entry(n).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Every number from 0 to the highest appears exactly once; returns the highest.
fn assert_each_number_once(path: &Path) -> u64 {
    let seen = numbers_on_disk(path);
    let last = *seen.keys().next_back().expect("no numbered line on disk");
    let missing: Vec<u64> = (0..=last).filter(|n| !seen.contains_key(n)).collect();
    let repeated: Vec<(u64, usize)> = seen
        .iter()
        .filter(|(_, c)| **c != 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "lines 0..={last}: {} missing (first {:?}), {} repeated (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
    last
}

/// Every rotated file is at least `max` bytes and ends with a whole line.
fn assert_rotated_at_line_ends(path: &Path, max: u64) {
    for f in output_files(path).iter().skip(1) {
        // The node still writes: the oldest file can be pruned (`log_keep`) between the
        // listing and the read.
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        assert!(
            bytes.len() as u64 >= max && bytes.last() == Some(&b'\n'),
            "{} has {} bytes (max {max}) and ends with {:?}",
            f.display(),
            bytes.len(),
            bytes.last().map(|b| *b as char)
        );
    }
}

/// Stops `w` and waits for its last line (`got SIGTERM, exiting`) to reach the file.
fn stop_writer(c: &Cluster) {
    c.run(&["stop", "w"]).ok();
    let path = stdout_of(c);
    wait_until(WAIT, "the writer's last line in its files", || {
        output_files(&path)
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("got SIGTERM, exiting")))
    });
}

/// The writer's pid (checked alive in /proc) and its start time.
fn writer_identity(c: &Cluster) -> (u32, u64) {
    let s = c.wait_status(WAIT, "w running", |s| {
        s["w"].state == "running" && s["w"].pid.is_some_and(pid_alive)
    });
    let pid = s["w"].pid.unwrap();
    (pid, start_time(pid).expect("writer's start time"))
}

/// Whether process `pid` sleeps in a write to a full pipe (`/proc/PID/wchan`:
/// `anon_pipe_write` on recent kernels, `pipe_write` before).
fn in_pipe_write(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.ends_with("pipe_write"))
}

/// A live Supervisor other than `old`.
fn new_supervisor(c: &Cluster, old: u32) -> u32 {
    wait_for(
        WAIT,
        "a new Supervisor",
        || c.lock_pid().filter(|p| *p != old && pid_alive(*p)),
        || c.log(),
    )
}

#[test]
fn numbered_lines_survive_rotation_and_supervisor_kills_exactly_once() {
    let max = 20_000;
    let c = Cluster::new("lr_kills", &writer(10_000, max, 1000));
    c.start();
    let identity = writer_identity(&c);
    let mut rng = Rng::from_env("numbered_lines_survive_rotation_and_supervisor_kills");
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(100 + rng.below(300)));
        let sup = c.supervisor_pid();
        if round == 2 {
            // No Supervisor at all for a while: the node's writes wait in its pipe.
            let guardian = freeze_guardian(&c.runtime);
            signal(sup, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(400));
            thaw(guardian);
        } else {
            signal(sup, libc::SIGKILL);
        }
        new_supervisor(&c, sup);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The same process wrote every line: it was never restarted.
    let (pid, start) = identity;
    assert_eq!(start_time(pid), Some(start), "the writer was restarted");
    stop_writer(&c);
    let last = assert_each_number_once(&stdout_of(&c));
    assert!(last > 1000, "only {last} lines written");
    let files = output_files(&stdout_of(&c)).len();
    assert!(
        files > 3,
        "only {files} output files: no rotation to speak of"
    );
    assert_rotated_at_line_ends(&stdout_of(&c), max);
    figure("log_rotation", "lines_through_kills", last + 1);
}

#[test]
fn upgrade_loses_no_output_line() {
    let max = 20_000;
    let c = Cluster::new("lr_upgrade", &writer(10_000, max, 1000));
    c.start();
    let (pid, start) = writer_identity(&c);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        c.run(&["upgrade-supervisor"]).ok();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(start_time(pid), Some(start), "the writer was restarted");
    stop_writer(&c);
    let last = assert_each_number_once(&stdout_of(&c));
    assert!(last > 1000, "only {last} lines written");
    assert_rotated_at_line_ends(&stdout_of(&c), max);
}

#[test]
fn rotation_keeps_log_keep_files() {
    let max = 2_000;
    let c = Cluster::new("lr_keep", &writer(10_000, max, 3));
    c.start();
    let path = stdout_of(&c);
    // Many more rotations than files kept: 100 KB at 2 KB a file.
    wait_until(WAIT, "100 KB of output", || {
        numbers_on_disk(&path)
            .keys()
            .next_back()
            .is_some_and(|n| *n > 8_000)
    });
    // (A listing taken in the middle of a rotation's renames may miss a file for a moment.)
    wait_until(WAIT, "the log and log_keep = 3 rotated files", || {
        output_files(&path).len() == 4
    });
    assert!(!PathBuf::from(format!("{}.4", path.display())).exists());
    assert_rotated_at_line_ends(&path, max);
    // What is kept is the newest output, contiguous from the oldest kept file on.
    stop_writer(&c);
    let seen = numbers_on_disk(&path);
    let (first, last) = (
        *seen.keys().next().unwrap(),
        *seen.keys().next_back().unwrap(),
    );
    assert!(first > 0, "the oldest output was not dropped");
    assert!(
        (first..=last).all(|n| seen.get(&n) == Some(&1)),
        "kept lines {first}..={last} are not each there once"
    );
}

#[test]
fn logs_reads_across_rotated_files() {
    let c = Cluster::new(
        "lr_logs",
        r#"
[[node]]
name = "w"
command = ["/bin/sh", "-c", "i=0; while [ $i -lt 300 ]; do echo \"w line=$i\"; i=$((i+1)); done; exec sleep 60"]
log_max_bytes = 500
log_keep = 100
"#,
    );
    c.start();
    let path = stdout_of(&c);
    wait_until(WAIT, "all 300 lines on disk", || {
        numbers_on_disk(&path).len() == 300
    });
    assert!(output_files(&path).len() > 5, "no rotation happened");
    let want: Vec<String> = (0..300).map(|n| format!("w line={n}")).collect();
    let all = c.run(&["logs", "w", "-n", "300"]);
    all.ok();
    assert_eq!(all.stdout.lines().collect::<Vec<_>>(), want);
    let ten = c.run(&["logs", "w", "-n", "10"]);
    assert_eq!(ten.stdout.lines().collect::<Vec<_>>(), want[290..]);
}

#[test]
fn logs_follow_continues_across_a_rotation() {
    // About 12 bytes a line at 500 lines/s: a rotation every 0.3 s.
    let c = Cluster::new("lr_follow", &writer(500, 2_000, 100));
    c.start();
    let path = stdout_of(&c);
    wait_until(WAIT, "some output", || !numbers_on_disk(&path).is_empty());
    let n = std::fs::read_dir(c.root.join("out"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stdout"))
        .count();
    let follower = c.spawn_main(&["logs", "w", "-f", "-n", "0"]);
    let out_file = c.root.join("out").join(format!("{n}.stdout"));
    let followed = || -> Vec<u64> {
        std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("w line=")?.parse().ok())
            .collect()
    };
    let files_at_start = output_files(&path).len();
    wait_until(WAIT, "the follower to see 5 rotations", || {
        output_files(&path).len() >= files_at_start + 5 && followed().len() > 800
    });
    signal(follower, libc::SIGINT);
    assert_eq!(c.wait_main(follower, WAIT).code(), Some(0));
    let seen = followed();
    let first = seen[0];
    let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
    assert!(
        seen == expected,
        "the follower's lines are not consecutive from {first}: {:?}",
        seen.windows(2)
            .find(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
    );
}

#[test]
fn a_node_writing_while_no_supervisor_runs_waits_on_its_full_pipe_and_loses_nothing() {
    // 100,000 lines/s fill the 1 MiB pipe in well under a second.
    let c = Cluster::new("lr_full", &writer(100_000, 1 << 20, 1000));
    c.start();
    let (pid, start) = writer_identity(&c);
    let path = stdout_of(&c);
    wait_until(WAIT, "some output", || !numbers_on_disk(&path).is_empty());
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    // With nobody draining it the node blocks in its write: alive, never SIGPIPE.
    wait_until(WAIT, "the node to wait on its full pipe", || {
        in_pipe_write(pid)
    });
    assert_eq!(
        start_time(pid),
        Some(start),
        "the node died without a reader"
    );
    thaw(guardian);
    new_supervisor(&c, sup);
    // It goes on once the successor drains the pipe.
    let before = numbers_on_disk(&path).len();
    wait_until(WAIT, "the node to write again", || {
        numbers_on_disk(&path).len() > before + 100_000
    });
    assert_eq!(start_time(pid), Some(start), "the writer was restarted");
    stop_writer(&c);
    assert_each_number_once(&path);
    c.run(&["shutdown"]).ok();
    let left: Vec<String> = std::fs::read_dir(c.instance_dir().join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in nodes/ after shutdown: {left:?}");
}

/// `chattr` on `dir` (`+i`: nobody, root included, may create, rename or remove its entries);
/// false where that is not possible (not root, no `chattr`, a file system without it).
fn chattr(flag: &str, dir: &Path) -> bool {
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn output_that_cannot_be_rotated_waits_and_is_written_once_the_folder_allows_it() {
    // 100,000 lines/s fill the 1 MiB pipe in well under a second.
    let c = Cluster::new("lr_retry", &writer(100_000, 200_000, 1000));
    c.start();
    let (pid, start) = writer_identity(&c);
    let path = stdout_of(&c);
    let dir = path.parent().unwrap().to_owned();
    wait_until(WAIT, "a rotation", || output_files(&path).len() > 1);
    if !chattr("+i", &dir) {
        eprintln!(
            "chattr +i is not possible here: a folder that refuses the rotation cannot be tested"
        );
        return;
    }
    /// Makes the folder writable again, also when the test fails (or it could not be removed).
    struct Thaw(PathBuf);
    impl Drop for Thaw {
        fn drop(&mut self) {
            chattr("-i", &self.0);
        }
    }
    let thaw = Thaw(dir.clone());
    // The rotation is refused (and logged); the output waits in the node's pipe.
    wait_until(WAIT, "the refused rotation in the log", || {
        c.log().contains("cannot write its output to")
    });
    wait_until(WAIT, "the node to wait on its full pipe", || {
        in_pipe_write(pid)
    });
    let files = output_files(&path).len();
    drop(thaw);
    // Nothing wakes the Supervisor for it but its retry timer: the node is blocked.
    wait_until(WAIT, "rotations again", || {
        output_files(&path).len() > files + 2
    });
    assert_eq!(start_time(pid), Some(start), "the writer was restarted");
    stop_writer(&c);
    assert_each_number_once(&path);
}
