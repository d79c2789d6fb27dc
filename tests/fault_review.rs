//! Defects found by an adversarial review of the fault-tolerance work (issue 8), each pinned by
//! a test named after it. Real Supervisor, real nodes, real signals; the kernel's truth
//! (`/proc`) is what is checked.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

const ONE: &str = r#"
[[node]]
name = "solo"
command = ["@NODE@", "--interval", "10s"]
"#;

/// A field of `/proc/PID/status` in kB (`VmHWM`, `VmRSS`...).
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Grows `path` to `len` bytes without writing them: no disk used, but that many zeros to
/// whoever reads it whole.
fn grow_sparse(path: &std::path::Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("grow {}: {e}", path.display()));
}

/// A node lock file is writable by its node (it holds it as an inherited fd) and by anyone of
/// the instance's user. The Supervisor reads its holder line at every start of the node; it
/// must read only that line, not the whole file into memory.
#[test]
fn a_grown_node_lock_file_is_not_read_whole_by_the_supervisor() {
    let c = Cluster::new("grown_node_lock", ONE);
    let first = c.start()["solo"].pid.expect("solo runs");
    let sup = c.supervisor_pid();
    let lock = c.instance_dir().join("nodes").join("solo.lock");
    grow_sparse(&lock, 2 << 30);
    c.run(&["restart", "solo"]).ok();
    c.wait_status(WAIT, "solo restarted", |s| {
        s["solo"].state == "running" && s["solo"].pid.is_some_and(|p| p != first)
    });
    let peak_mb = status_kb(sup, "VmHWM") / 1024;
    figure(
        "a_grown_node_lock_file_is_not_read_whole_by_the_supervisor",
        "supervisor_peak_rss_mb",
        peak_mb,
    );
    assert!(
        peak_mb < 256,
        "the Supervisor's peak RSS reached {peak_mb} MB: it read the 2 GiB lock file whole"
    );
    c.run(&["shutdown"]).ok();
}

/// Same for the Supervisor's own lock file, which every Main reads to name its holder.
#[test]
fn a_grown_supervisor_lock_file_is_not_read_whole_by_a_main() {
    let c = Cluster::new("grown_sup_lock", ONE);
    c.start();
    let lock = c.instance_dir().join("supervisor.lock");
    grow_sparse(&lock, 2 << 30);
    let out = c.run(&["status", "--json"]);
    assert!(
        matches!(out.code, Some(0) | Some(3)),
        "status failed: {out:?}"
    );
    assert_eq!(
        parse_status(&out.stdout)["solo"].state,
        "running",
        "{out:?}"
    );
    // The largest peak RSS of any child this test binary has waited for (Mains only: the
    // Supervisors are detached).
    // SAFETY: a zeroed rusage is a valid out-buffer for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) },
        0
    );
    let peak_mb = ru.ru_maxrss as u64 / 1024;
    figure(
        "a_grown_supervisor_lock_file_is_not_read_whole_by_a_main",
        "main_peak_rss_mb",
        peak_mb,
    );
    assert!(
        peak_mb < 256,
        "a Main's peak RSS reached {peak_mb} MB: it read the 2 GiB lock file whole"
    );
    c.run(&["shutdown"]).ok();
}

/// Starts node `other` (the bystander of the wedge tests) and returns its pid.
fn start_other(c: &Cluster) -> u32 {
    let main = c.spawn_main(&["start", "other"]);
    assert!(c.wait_main(main, WAIT).success(), "start other");
    c.status()["other"].pid.expect("other runs")
}

/// Waits until the node has put a FIFO at `path`.
fn wait_fifo(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    wait_until(WAIT, &format!("a FIFO at {}", path.display()), || {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    });
}

/// The Supervisor still serves commands: `stop other` ends the process `other`; then shuts
/// the instance down and waits for the background Main `main`.
fn still_served(c: &Cluster, other: u32, main: u32) {
    c.run(&["stop", "other"]).ok();
    wait_until(WAIT, "other stopped", || !pid_alive(other));
    c.run(&["shutdown"]).ok();
    c.wait_main(main, WAIT);
}

/// A node's `ready_file` is the node's to write, and what it puts there is untrusted: a FIFO
/// renamed into place made the Supervisor block for ever in `open` (the whole control plane
/// hung), a symlink to `/dev/zero` made it read without end.
#[test]
fn a_fifo_renamed_onto_a_ready_file_does_not_wedge_the_supervisor() {
    let c = Cluster::new(
        "ready_file_fifo",
        "[[node]]\nname = \"trap\"\ncommand = [\"/bin/sh\", \"-c\", \"mkfifo f && mv f .status && exec sleep 1000\"]\n\
         ready_file = { path = \".status\", line = \"RUNNING\" }\nready_timeout_ms = 600000\nautostart = false\n\
         [[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n",
    );
    let other = start_other(&c);
    let main = c.spawn_main(&["start", "trap"]);
    let status = c.root.join("spool/trap/.status");
    wait_fifo(&status);
    // Give the Supervisor the inotify event.
    std::thread::sleep(Duration::from_millis(300));
    let s = c.status();
    assert_eq!(s["trap"].state, "starting", "{s:#?}");
    still_served(&c, other, main);
}

/// A node that floods its readiness FIFO without ever writing a newline (here `cat /dev/zero`)
/// kept the Supervisor's loop draining it for ever: no command was served again.
#[test]
fn a_node_flooding_its_ready_fd_does_not_wedge_the_supervisor() {
    let c = Cluster::new(
        "ready_fd_flood",
        "[[node]]\nname = \"flood\"\ncommand = [\"/bin/sh\", \"-c\", \"for k in 1 2 3; do cat /dev/zero >&3 & done; exec cat /dev/zero >&3\"]\n\
         ready_fd = 3\nready_timeout_ms = 600000\nautostart = false\n\
         [[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n",
    );
    let other = start_other(&c);
    let main = c.spawn_main(&["start", "flood"]);
    let flood = c.wait_status(WAIT, "flood started", |s| s["flood"].pid.is_some())["flood"]
        .pid
        .expect("flood runs");
    // Let it flood for a while.
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(flood), "flood runs");
    assert_eq!(c.status()["flood"].state, "starting");
    still_served(&c, other, main);
}

/// `shutdown` sent its command, then loaded the config through `client()`, which drops the
/// client once the Supervisor has exited; the next line expected it still attached and the
/// Main panicked (exit 101) after a shutdown that worked. Made deterministic by freezing the
/// Main until the Supervisor is gone.
#[test]
fn shutdown_does_not_panic_when_the_supervisor_exits_before_the_main_looks_again() {
    let c = Cluster::new("shutdown_race", ONE);
    let solo = c.start()["solo"].pid.expect("solo runs");
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGSTOP);
    let main = c.spawn_main(&["shutdown"]);
    // The Main has sent its command and waits for the (frozen) Supervisor's reply.
    std::thread::sleep(Duration::from_millis(500));
    signal(main, libc::SIGSTOP);
    signal(sup, libc::SIGCONT);
    wait_until(WAIT, "the Supervisor exits", || !pid_exists(sup));
    assert!(!pid_alive(solo), "solo was stopped by the shutdown");
    signal(main, libc::SIGCONT);
    let st = c.wait_main(main, WAIT);
    assert!(st.success(), "shutdown exited with {st:?}");
}

/// `redis-server`, installed from Debian (`apt-get install redis-server`).
const REDIS: &str = "/usr/bin/redis-server";

/// A config with one `redis-server` node named `name` on a port of its own; `daemonize` as
/// redis understands it.
fn redis_config(c: &Cluster, name: &str, daemonize: bool) -> String {
    assert!(
        std::path::Path::new(REDIS).exists(),
        "{REDIS} is missing: apt-get install redis-server"
    );
    let port = 20_000 + (std::process::id() * 8 + c.id as u32) % 40_000;
    format!(
        "[[node]]\nname = \"{name}\"\ncommand = [\"{REDIS}\", \"--port\", \"{port}\", \"--daemonize\", \"{}\", \
         \"--save\", \"\", \"--appendonly\", \"no\", \"--pidfile\", \"{}\"]\nstop_timeout_ms = 5000\n",
        if daemonize { "yes" } else { "no" },
        c.root.join("redis.pid").display()
    )
}

/// `redis-server` (like nginx and postgres) rewrites its process title over its argv and
/// environment, so `/proc/PID/environ` no longer carries `BROCTLD_NODE`. A replacement
/// Supervisor took that as "not the node": it reported the healthy node `backoff ... exit
/// status unknown`, blocked by its own pid, and `shutdown` left it running.
#[test]
fn a_node_that_rewrites_its_environment_is_adopted_after_a_supervisor_kill() {
    let c = Cluster::new("rewritten_env", "");
    c.write_config(&redis_config(&c, "redis", false));
    let pid = c.start()["redis"].pid.expect("redis runs");
    wait_until(WAIT, "redis has rewritten its title", || {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|e| !e.windows(12).any(|w| w == b"BROCTLD_NODE"))
    });
    let old = c.supervisor_pid();
    signal(old, libc::SIGKILL);
    wait_until(WAIT, "a new Supervisor", || {
        c.lock_pid().is_some_and(|p| p != old && pid_alive(p))
    });
    let s = c.wait_status(WAIT, "redis adopted", |s| s["redis"].state != "starting");
    assert_eq!(s["redis"].state, "running", "{s:#?}\n{}", c.log());
    assert_eq!(s["redis"].pid, Some(pid), "{s:#?}");
    assert!(pid_alive(pid));
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "redis ended by shutdown", || !pid_alive(pid));
}

/// A node owns its folder, and so its `stdout.log`: one that swapped it for a FIFO and then
/// crashed made the Supervisor block for ever in `open` (reading the log's tail for the crash
/// report, then reopening it for the restart): no command was served again.
#[test]
fn a_fifo_swapped_for_a_nodes_log_does_not_wedge_the_supervisor() {
    let c = Cluster::new(
        "log_fifo",
        "[[node]]\nname = \"swapper\"\ncommand = [\"/bin/sh\", \"-c\", \"rm -f stdout.log && mkfifo stdout.log && exit 1\"]\n\
         autostart = false\n\
         [[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n",
    );
    let other = start_other(&c);
    let main = c.spawn_main(&["start", "swapper"]);
    let log = c.root.join("spool/swapper/stdout.log");
    wait_fifo(&log);
    // Give the Supervisor the node's exit.
    std::thread::sleep(Duration::from_millis(500));
    still_served(&c, other, main);
}

/// A node running as another user owns its working folder, where its `stdout.log` lives; the
/// Supervisor (root) reopens that file for every start and hands it to the node as its stdout.
/// A node that replaced it with a symlink to a root-only file and exited was restarted with
/// that file open for appending: it could write into any file of root's (`/etc/passwd`).
#[test]
fn a_node_of_another_user_cannot_aim_its_log_at_a_root_file() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: a node of another user cannot be tested");
        return;
    }
    let c = Cluster::new("log_symlink", "");
    let victim = c.root.join("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    c.write_config(&format!(
        "[[node]]\nname = \"sneaky\"\nuser = \"nobody\"\nrestart_delay_ms = 50\n\
         command = [\"/bin/sh\", \"-c\", \"if [ -L stdout.log ]; then echo PWNED; exec sleep 1000; fi; \
         rm -f stdout.log && ln -s {} stdout.log; exit 1\"]\n",
        victim.display()
    ));
    c.run(&["start"]);
    wait_until(
        WAIT,
        "the restart refused to follow the node's symlink",
        || {
            let text = std::fs::read_to_string(&victim).unwrap();
            assert_eq!(text, "secret\n", "the node wrote into root's file");
            c.log().contains("open output file")
        },
    );
    c.run(&["shutdown"]).ok();
}
