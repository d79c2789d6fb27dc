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
/// The guardian holds every output FIFO open for reading, so it never lacks a reader.
#[test]
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
    // The successor moves what was written meanwhile: every line once, in order.
    wait_until(WAIT, "the lines written with no Supervisor on disk", || {
        numbered(&String::from_utf8_lossy(&concatenated(&path))).len() > 200
    });
    let seen = numbered(&String::from_utf8_lossy(&concatenated(&path)));
    let want: Vec<u64> = (0..seen.len() as u64).collect();
    assert_eq!(seen, want, "lines lost, repeated or out of order");
    assert_eq!(start_time(pid), Some(start), "the node was restarted");
    c.run(&["shutdown"]).ok();
}

/// Node `w`, which writes `w line=0` to `w line={count - 1}` at once and then sleeps, with the
/// rotation limits given.
fn counting_node(count: u32, log_max_bytes: u64, log_keep: u32) -> String {
    format!(
        "[[node]]\nname = \"w\"\ncommand = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt {count} ]; do echo \\\"w line=$i\\\"; i=$((i+1)); done; exec sleep 600\"]\nlog_max_bytes = {log_max_bytes}\nlog_keep = {log_keep}\n"
    )
}

/// The files' bytes, oldest first: what the node wrote, if nothing was lost or repeated.
fn concatenated(path: &std::path::Path) -> Vec<u8> {
    // Every numbered file there is (a killed rotation may leave a hole in the numbering).
    let mut all = Vec::new();
    for k in rotated_numbers(path).iter().rev() {
        all.extend(std::fs::read(format!("{}.{k}", path.display())).unwrap_or_default());
    }
    all.extend(std::fs::read(path).unwrap_or_default());
    all
}

/// The numbers `N` of the `w line=N` lines in `text`, in order.
fn numbered(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("w line=")?.parse().ok())
        .collect()
}

/// Deterministic bytes: lines of every length from empty to 200 KB (longer than the pipe
/// peek of 64 KiB), binary runs without a newline, and short numbered lines.
fn hostile_bytes(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for n in 0..40u64 {
        match rng.below(4) {
            0 => out.extend(format!("line {n}\n").bytes()),
            1 => {
                let len = rng.below(200_000) as usize;
                out.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, len));
                out.push(b'\n');
            }
            2 => {
                let len = rng.below(100_000) as usize;
                // Binary without a newline (a newline in it would be a line end).
                out.extend((0..len).map(|_| ((rng.next_u64() & 0xff) as u8).max(b'\n' + 1)));
            }
            _ => out.push(b'\n'),
        }
    }
    out
}

/// Tiny `log_max_bytes` (smaller than a line), lines far longer than 64 KiB and binary
/// output: the rotated files, oldest first, are exactly what the node wrote.
#[test]
fn tiny_rotation_limit_with_long_lines_and_binary_keeps_every_byte_once() {
    let c = Cluster::new(
        "oa_tiny",
        r#"
[[node]]
name = "w"
command = ["/bin/sh", "-c", "cat src.bin; exec sleep 600"]
log_max_bytes = 100
log_keep = 1000
"#,
    );
    let src = hostile_bytes(7);
    std::fs::create_dir_all(c.root.join("spool/w")).unwrap();
    std::fs::write(c.root.join("spool/w/src.bin"), &src).unwrap();
    c.start();
    let path = c.root.join("spool/w/stdout.log");
    wait_until(Duration::from_secs(60), "all bytes on disk", || {
        concatenated(&path).len() >= src.len()
    });
    let got = concatenated(&path);
    let first_diff = got.iter().zip(&src).position(|(a, b)| a != b);
    assert!(
        got.len() == src.len() && first_diff.is_none(),
        "{} bytes on disk, {} written; first difference at {first_diff:?}",
        got.len(),
        src.len()
    );
    // No file is more than a line's slack past the limit.
    for f in output_files(&path) {
        let len = std::fs::metadata(&f).unwrap().len();
        assert!(len <= 100 + (64 << 10), "{} has {len} bytes", f.display());
    }
}

/// `log_keep = 1`: one old file, never a second.
#[test]
fn log_keep_one_keeps_one_old_file() {
    let c = Cluster::new("oa_keep1", &counting_node(2000, 300, 1));
    c.start();
    let path = c.root.join("spool/w/stdout.log");
    wait_until(WAIT, "the last line", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("w line=1999\n"))
    });
    assert!(std::path::Path::new(&format!("{}.1", path.display())).exists());
    assert!(!std::path::Path::new(&format!("{}.2", path.display())).exists());
    // The newest lines, consecutive, end with the last.
    let nums = numbered(&String::from_utf8(concatenated(&path)).unwrap());
    let first = nums[0];
    assert_eq!(nums, (first..2000).collect::<Vec<_>>());
}

/// What a node writes as it stops (a burst far larger than its pipe) is in its file when
/// `shutdown` returns.
#[test]
fn shutdown_writes_a_stopping_nodes_last_output() {
    let c = Cluster::new(
        "oa_shutdown",
        r#"
[[node]]
name = "w"
command = ["/bin/sh", "-c", "trap 'head -c 5000000 /dev/zero | tr \"\\000\" x; echo; echo LAST; exit 0' TERM; while :; do sleep 0.05; done"]
log_max_bytes = 1000000
log_keep = 100
"#,
    );
    c.start();
    identity(&c, "w");
    c.run(&["shutdown"]).ok();
    let path = c.root.join("spool/w/stdout.log");
    let got = concatenated(&path);
    assert_eq!(got.len(), 5_000_000 + 6, "bytes on disk after shutdown");
    assert!(got.ends_with(b"\nLAST\n"));
}

/// A Supervisor whose fd limit is 256 (soft and hard) runs 150 idle nodes: before output went
/// through the Supervisor it ran 239 of 300 such nodes; each running node now keeps a pidfd,
/// two FIFOs and two log files open (five fds), and only 47 start.
#[test]
#[ignore = "defect: five Supervisor fds per running node (pidfd, 2 FIFOs, 2 log files): with RLIMIT_NOFILE 256 only 47 nodes start (239 before the output change)"]
fn a_supervisor_limited_to_256_fds_runs_150_nodes() {
    use std::os::unix::process::CommandExt;
    let mut config = String::new();
    for i in 0..150 {
        config.push_str(&format!(
            "[[node]]\nname = \"n{i}\"\ncommand = [\"/bin/sleep\", \"600\"]\n"
        ));
    }
    let c = Cluster::new("oa_nofile", &config);
    let mut cmd = c.command(&["start"]);
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run broctld start");
    c.track_from_proc();
    let deadline = Instant::now() + WAIT;
    let running = loop {
        let s = c.status();
        let n = s.values().filter(|v| v.state == "running").count();
        if n == 150 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The kernel's count: processes of this instance's nodes.
    let procs = node_leaders(&c.instance).len();
    c.run(&["shutdown"]);
    assert_eq!(
        (running, procs),
        (150, 150),
        "nodes running (status, /proc)"
    );
}

/// A node writing faster than its tiny files can be rotated (each rotation renames up to
/// `log_keep` files): one pump rotated until its pipe was empty or 8 MiB had moved, which at
/// 140 KB/s never came, so the Supervisor answered no command (`stop` of another node got no
/// reply in 10 s). A pump now returns to the event loop after each rotation.
#[test]
fn rotating_tiny_files_does_not_starve_commands() {
    let c = Cluster::new(
        "oa_starve",
        r#"
[[node]]
name = "w"
command = ["@NODE@", "--lines", "10000"]
log_max_bytes = 100
log_keep = 1000

[[node]]
name = "idle"
command = ["/bin/sleep", "600"]
"#,
    );
    c.start();
    identity(&c, "w");
    let (idle, _) = identity(&c, "idle");
    let dir = c.root.join("spool/w");
    let count = || {
        std::fs::read_dir(&dir)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    wait_until(WAIT, "600 rotated files", || count() > 600);
    // Rotations now cost 600 renames and more each; the node writes on.
    std::thread::sleep(Duration::from_secs(1));
    let out = c.run(&["stop", "idle"]);
    let ok = out.code == Some(0);
    let stopped = !pid_alive(idle);
    let stderr = out.stderr.clone();
    assert!(
        ok && stopped,
        "stop idle: {stderr}; its process gone: {stopped}"
    );
}

/// The numbers `k` of the files `FILE.k` beside `path` (rotated from it), ascending.
fn rotated_numbers(path: &std::path::Path) -> Vec<usize> {
    let prefix = format!("{}.", path.file_name().unwrap().to_string_lossy());
    let mut ks: Vec<usize> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix(&prefix)?
                .parse()
                .ok()
        })
        .collect();
    ks.sort_unstable();
    ks
}

/// A Supervisor killed while it shifts rotated files (`.k` to `.k+1`, the oldest first)
/// leaves a hole in the numbering, which later rotations carry along; `logs` stopped at the
/// hole and showed none of the output in the files past it.
#[test]
fn logs_reads_past_a_hole_a_killed_rotation_left() {
    let c = Cluster::new("oa_hole", &counting_node(8000, 100, 1000));
    c.start();
    let path = c.root.join("spool/w/stdout.log");
    let has_hole = || {
        let ks = rotated_numbers(&path);
        ks.iter().enumerate().any(|(j, k)| *k != j + 1)
    };
    // Kill the Supervisor while it rotates until a kill lands in a shift (looked at while
    // no Supervisor runs: a live shift has a passing hole too).
    let mut holed = false;
    for _ in 0..60 {
        let sup = c.supervisor_pid();
        let guardian = freeze_guardian(&c.runtime);
        signal(sup, libc::SIGKILL);
        wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
        holed = has_hole();
        thaw(guardian);
        wait_until(WAIT, "a new Supervisor", || {
            c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
        });
        if holed {
            break;
        }
    }
    if !holed {
        eprintln!("no kill landed in a shift: nothing to check");
        return;
    }
    wait_until(Duration::from_secs(60), "the last line on disk", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("w line=7999\n"))
    });
    // What the files hold, oldest first.
    let mut on_disk = Vec::new();
    for k in rotated_numbers(&path).iter().rev() {
        on_disk.extend(std::fs::read(format!("{}.{k}", path.display())).unwrap());
    }
    on_disk.extend(std::fs::read(&path).unwrap());
    let on_disk = String::from_utf8(on_disk).unwrap();
    let want: Vec<&str> = on_disk.lines().collect();
    let out = c.run(&["logs", "w", "-n", "1000000"]);
    out.ok();
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        (got.len(), got.first()),
        (want.len(), want.first()),
        "`logs` shows {} lines, the files hold {} (holes at {:?})",
        got.len(),
        want.len(),
        rotated_numbers(&path)
            .iter()
            .enumerate()
            .find(|(j, k)| **k != j + 1)
    );
    assert_eq!(got, want);
}

/// A node that fills its pipe with tiny rotations' worth of output and exits: its exit drains
/// the pipe in one turn of the event loop (thousands of rotations of up to `log_keep` renames
/// each), and no command is answered meanwhile.
#[test]
#[ignore = "defect: the drain at a node's exit (and when its streams close) moves the whole pipe in one turn of the loop; with log_max_bytes = 100 and log_keep = 1000 that is minutes, and `stop` of another node gets no reply in 10 s"]
fn a_node_exiting_with_a_pipe_of_tiny_rotations_does_not_hold_commands() {
    let c = Cluster::new(
        "oa_exitdrain",
        r#"
[[node]]
name = "w"
command = ["/bin/sh", "-c", "sleep 1; i=0; while [ $i -lt 60000 ]; do echo \"w line=$i\"; i=$((i+1)); done"]
restart = "never"
log_max_bytes = 100
log_keep = 1000

[[node]]
name = "idle"
command = ["/bin/sleep", "600"]
"#,
    );
    c.start();
    let (w, _) = identity(&c, "w");
    let (idle, _) = identity(&c, "idle");
    wait_until(WAIT, "the writer to exit", || !pid_alive(w));
    let out = c.run(&["stop", "idle"]);
    assert!(
        out.code == Some(0) && !pid_alive(idle),
        "stop idle: {}",
        out.stderr
    );
}

/// `upgrade-supervisor`s and `kill -9`s while small files rotate many times a second: every
/// numbered line is on disk exactly once, stdout and stderr sharing one file.
#[test]
fn upgrades_and_kills_amid_small_rotations_lose_and_repeat_no_line() {
    let c = Cluster::new(
        "oa_upgrot",
        r#"
[[node]]
name = "w"
command = ["@NODE@", "--lines", "2000"]
stderr = "stdout.log"
log_max_bytes = 300
log_keep = 1000
stop_timeout_ms = 5000
"#,
    );
    c.start();
    let (pid, start) = identity(&c, "w");
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        let sup = c.supervisor_pid();
        if round % 2 == 0 {
            c.run(&["upgrade-supervisor"]).ok();
        } else {
            signal(sup, libc::SIGKILL);
            wait_until(WAIT, "a new Supervisor", || {
                c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
            });
        }
    }
    assert_eq!(start_time(pid), Some(start), "the writer was restarted");
    c.run(&["stop", "w"]).ok();
    let path = c.root.join("spool/w/stdout.log");
    wait_until(WAIT, "the writer's last line", || {
        String::from_utf8_lossy(&concatenated(&path)).contains("got SIGTERM, exiting")
    });
    let nums = numbered(&String::from_utf8(concatenated(&path)).unwrap());
    assert!(nums.len() > 500, "only {} lines", nums.len());
    let first_bad = nums.iter().enumerate().find(|(j, n)| **n != *j as u64);
    assert!(
        first_bad.is_none(),
        "lines not 0, 1, 2...: at {first_bad:?} of {}",
        nums.len()
    );
    assert!(rotated_numbers(&path).len() > 20, "few rotations");
}

/// `logs -f` while small files rotate many times between two of its polls: the lines it
/// prints are consecutive.
#[test]
#[ignore = "open defect: under load `logs -f` can skip one rotated file when many rotate between two polls (a 26-line gap in 2 of the last 3 CI rehearsals); run with --ignored"]
fn logs_follow_keeps_up_with_many_rotations_per_poll() {
    let c = Cluster::new(
        "oa_follow",
        r#"
[[node]]
name = "w"
command = ["@NODE@", "--lines", "2000"]
log_max_bytes = 300
log_keep = 1000
"#,
    );
    c.start();
    let path = c.root.join("spool/w/stdout.log");
    wait_until(WAIT, "some rotations", || rotated_numbers(&path).len() > 5);
    let outs = || -> std::collections::BTreeSet<std::path::PathBuf> {
        std::fs::read_dir(c.root.join("out"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "stdout"))
            .collect()
    };
    let before = outs();
    let follower = c.spawn_main(&["logs", "w", "-f", "-n", "0"]);
    let out_file = outs().difference(&before).next().cloned().unwrap();
    let followed = || numbered(&std::fs::read_to_string(&out_file).unwrap_or_default());
    wait_until(WAIT, "the follower to see 3000 lines", || {
        followed().len() > 3000
    });
    signal(follower, libc::SIGINT);
    assert_eq!(c.wait_main(follower, WAIT).code(), Some(0));
    let seen = followed();
    let gap = seen
        .windows(2)
        .find(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]));
    assert!(gap.is_none(), "the follower's lines jump at {gap:?}");
}

/// What a node writes just before it exits, while no Supervisor lives, is not lost: the
/// guardian's hold keeps the pipe (and its buffer) after the node's own end closes, and the
/// successor moves it.
#[test]
fn lines_written_by_a_node_that_exits_while_no_supervisor_runs_are_kept() {
    let c = Cluster::new(
        "oa_lastwords",
        r#"
[[node]]
name = "w"
restart = "never"
command = ["/bin/sh", "-c", "i=0; while [ $i -lt 100 ]; do echo \"w line=$i\"; i=$((i+1)); done; while [ ! -e go ]; do sleep 0.01; done; while [ $i -lt 150 ]; do echo \"w line=$i\"; i=$((i+1)); done; exit 0"]
"#,
    );
    c.start();
    let (pid, _) = identity(&c, "w");
    let path = c.root.join("spool/w/stdout.log");
    wait_until(WAIT, "the first 100 lines on disk", || {
        numbered(&String::from_utf8_lossy(&concatenated(&path))).len() == 100
    });
    let sup = c.supervisor_pid();
    let guardian = freeze_guardian(&c.runtime);
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor to die", || !pid_alive(sup));
    std::fs::write(c.root.join("spool/w/go"), "").unwrap();
    wait_until(WAIT, "the node to exit", || !pid_alive(pid));
    thaw(guardian);
    wait_until(WAIT, "its last lines on disk", || {
        numbered(&String::from_utf8_lossy(&concatenated(&path))).len() >= 150
    });
    let seen = numbered(&String::from_utf8_lossy(&concatenated(&path)));
    assert_eq!(
        seen,
        (0..150).collect::<Vec<u64>>(),
        "lines lost or repeated"
    );
    c.run(&["shutdown"]).ok();
}
