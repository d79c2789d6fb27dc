//! A cgroup per node (issue "real daemons"): a node's processes are its cgroup's whatever they
//! do (`setsid`, dropping the node's identity from their environment, closing the lock fd),
//! `stop` and `shutdown` end them all, a node is down only when its group is empty, a new
//! Supervisor adopts a node by its group, and keys the host cannot enforce are refused.
//!
//! These tests need a writable cgroup v2 hierarchy (this CI has one at
//! `/sys/fs/cgroup/unified`); each checks the kernel's view (`/proc/PID/cgroup`,
//! `cgroup.procs`), not only broctld's.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The cgroup v2 path of `pid` (the `0::` line of `/proc/PID/cgroup`).
fn cgroup_of(pid: u32) -> Option<String> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Kills and removes whatever a failed test left in the instance's cgroup.
struct GroupGuard(PathBuf);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let end = Instant::now() + Duration::from_secs(5);
                let g = broctld::sys::cgroup::Cgroup::at(e.path());
                while g.populated().unwrap_or(false) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Sub-groups a node made in its group first.
                let _ = broctld::sys::cgroup::Cgroup::at(e.path()).remove_tree();
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A node that leaves a child in its own session with an empty environment (no
/// `BROCTLD_NODE`, the lock fd closed): invisible to the `/proc` identity scan.
const ESCAPER: &str = r#"
[defaults]
restart_delay_ms = 50
stop_timeout_ms = 3000

[[node]]
name = "escaper"
command = ["sh", "-c", "(exec 3>&- ; setsid env -i sleep 600 &); exec sleep 600"]
"#;

/// The escaped `sleep` in node `escaper`'s group: not `leader`, not a zombie.
fn escaped_in(group: &Path, leader: u32) -> u32 {
    wait_for(
        WAIT,
        "the escaped child in the node's cgroup",
        || {
            procs_in(group).into_iter().find(|p| {
                // The `sleep` itself, not the subshell or `setsid` on the way to it.
                *p != leader
                    && pid_alive(*p)
                    && std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "sleep")
            })
        },
        || format!("{:?}", procs_in(group)),
    )
}

/// An `escaper` cluster started: the cluster, the instance's group (removed on drop), the
/// node's group, its leader and its escaped child.
struct Escaper {
    c: Cluster,
    cg: PathBuf,
    group: PathBuf,
    leader: u32,
    escaped: u32,
    _guard: GroupGuard,
}

fn start_escaper(name: &str) -> Escaper {
    let c = Cluster::new(name, ESCAPER);
    let s = c.start();
    let cg = instance_cgroup(&c);
    let group = cg.join("node-escaper");
    let leader = s["escaper"].pid.unwrap();
    let escaped = escaped_in(&group, leader);
    track(c.id, escaped, false);
    Escaper {
        _guard: GroupGuard(cg.clone()),
        c,
        cg,
        group,
        leader,
        escaped,
    }
}

#[test]
fn setsid_escape_without_identity_stays_in_the_node_cgroup_and_stop_ends_it() {
    let Escaper {
        c,
        cg,
        group,
        leader,
        escaped,
        _guard,
    } = start_escaper("cg_escape");
    // The kernel's view: both in the node's group, the escapee in another session and with
    // no node identity in its environment.
    assert_eq!(cgroup_of(leader), cgroup_of(escaped));
    let env = std::fs::read(format!("/proc/{escaped}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&env).contains("BROCTLD_NODE"));
    // `stop`: the node is stopped only once its whole group is empty.
    c.run(&["stop", "escaper"]).ok();
    let st = c.status();
    assert_eq!(st["escaper"].state, "stopped", "{}", c.log());
    assert!(
        !pid_alive(escaped),
        "escaped pid {escaped} outlived the stop"
    );
    assert!(!pid_alive(leader));
    assert!(procs_in(&group).is_empty(), "{:?}", procs_in(&group));
    // Started again; `shutdown` leaves nothing, and removes the groups.
    let s = c.start();
    let l2 = s["escaper"].pid.unwrap();
    let e2 = escaped_in(&group, l2);
    track(c.id, e2, false);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "every process of the node gone", || {
        !pid_alive(l2) && !pid_alive(e2)
    });
    wait_until(WAIT, "the instance's cgroup removed", || !cg.exists());
}

#[test]
fn crashed_leader_takes_its_escaped_children_with_it_before_the_restart() {
    let Escaper {
        c,
        group,
        leader,
        escaped,
        _guard,
        ..
    } = start_escaper("cg_crash");
    signal(leader, libc::SIGKILL);
    let s = c.wait_status(WAIT, "a new escaper running", |s| {
        s["escaper"].state == "running" && s["escaper"].pid.is_some_and(|p| p != leader)
    });
    // The old escapee ended before the new copy started: it is gone now, and the group
    // holds only the new copy's processes.
    assert!(
        !pid_alive(escaped),
        "escaped pid {escaped} survived its leader"
    );
    let l2 = s["escaper"].pid.unwrap();
    let e2 = escaped_in(&group, l2);
    track(c.id, e2, false);
    assert!(procs_in(&group).iter().all(|p| *p == l2 || *p == e2));
    assert_eq!(s["escaper"].restarts, 1);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "every process gone", || {
        !pid_alive(l2) && !pid_alive(e2)
    });
}

/// A node that closed its lock fd and dropped its identity is adopted by its cgroup by a
/// Supervisor that has no record of it (region lost): never started twice.
#[test]
fn successor_adopts_a_node_by_its_cgroup_after_it_closed_its_lock_fd() {
    let c = Cluster::new(
        "cg_adopt",
        "[[node]]\nname = \"quiet\"\ncommand = [\"sh\", \"-c\", \"exec 3>&- ; exec env -i sleep 600\"]\n",
    );
    let s = c.start();
    let cg = instance_cgroup(&c);
    let _guard = GroupGuard(cg.clone());
    let pid = s["quiet"].pid.unwrap();
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor gone", || !pid_alive(sup));
    // The guardian starts a successor at once; remove the region too, so the successor has
    // nothing recorded and must find the node by itself.
    wait_until(WAIT, "a successor", || {
        c.lock_pid().is_some_and(|p| p != sup && pid_alive(p))
    });
    c.supervisor_pid();
    let s = c.start();
    assert_eq!(s["quiet"].pid, Some(pid), "{}", c.log());
    assert_eq!(procs_in(&cg.join("node-quiet")), vec![pid]);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "the node gone", || !pid_alive(pid));
}

/// `memory_max`: enforced as the group's `memory.max` where the memory controller works,
/// otherwise refused at start naming the key and why (never silently ignored).
#[test]
fn memory_max_is_the_node_groups_limit_or_refused_naming_the_key() {
    let c = Cluster::new(
        "cg_memory",
        "[[node]]\nname = \"capped\"\nmemory_max = \"64M\"\ncommand = [\"sleep\", \"600\"]\n",
    );
    // The Supervisor's group is the one this test runs in (Main, guardian and Supervisor
    // inherit it): the memory controller must be available there.
    let own = broctld::sys::cgroup::own_dir()
        .unwrap()
        .expect("a cgroup v2 hierarchy");
    let controllers = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap();
    let out = c.run(&["start"]);
    if controllers.split_whitespace().any(|c| c == "memory") {
        out.ok();
        let cg = instance_cgroup(&c);
        let _guard = GroupGuard(cg.clone());
        let limit = std::fs::read_to_string(cg.join("node-capped/memory.max")).unwrap();
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
        c.run(&["shutdown"]).ok();
    } else {
        assert_ne!(out.code, Some(0), "{out:?}");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("memory_max") && text.contains("memory controller"),
            "{text}"
        );
        assert!(
            text.contains("broctld.toml:"),
            "names the file and line: {text}"
        );
        // A refused start leaves no group behind.
        assert!(!c.instance_dir().join("cgroup").exists());
    }
}

/// Without a writable cgroup hierarchy (here: turned off), nodes still run on the lock fd and
/// identity scan, and `status` says that escapes cannot be tracked.
#[test]
fn without_cgroups_status_says_escapes_cannot_be_tracked() {
    let c = Cluster::new(
        "cg_off",
        "[[node]]\nname = \"plain\"\ncommand = [\"sleep\", \"600\"]\n",
    );
    c.set_env("BROCTLD_CGROUP", "off");
    let s = c.start();
    let pid = s["plain"].pid.unwrap();
    assert_eq!(cgroup_of(pid), cgroup_of(std::process::id()));
    let table = c.run(&["status"]);
    assert!(
        table.stdout.contains("escapes cannot be tracked"),
        "{}",
        table.stdout
    );
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "the node gone", || !pid_alive(pid));
}

/// The cost of cgroups on the restart path: `kill -9` of a node to its replacement running
/// (its new pid in the node table), median over `BROCTLD_RESTART_KILLS` kills (default 60),
/// with a cgroup per node and with the fallback. Prints figures; asserts no time.
#[test]
fn restart_after_kill_with_and_without_cgroups_figures() {
    let kills = env_count("BROCTLD_RESTART_KILLS", 60);
    for mode in ["cgroup", "off"] {
        let c = Cluster::new(
            &format!("cg_cost_{mode}"),
            "[defaults]\nrestart_delay_ms = 0\ngive_up_after = 100000\n[[node]]\nname = \"n\"\ncommand = [\"@NODE@\", \"--interval\", \"1h\"]\n",
        );
        if mode == "off" {
            c.set_env("BROCTLD_CGROUP", "off");
        }
        let s = c.start();
        let _guard = (mode == "cgroup").then(|| GroupGuard(instance_cgroup(&c)));
        let client = c.client();
        let mut pid = s["n"].pid.unwrap();
        let mut took = Vec::new();
        for _ in 0..kills {
            let t0 = Instant::now();
            signal(pid, libc::SIGKILL);
            // Polled every 20 µs (the harness's wait_for sleeps 10 ms between looks).
            let next = loop {
                let now = client
                    .status()
                    .into_iter()
                    .find(|n| n.name == "n")
                    .and_then(|n| n.pid)
                    .filter(|p| *p != pid);
                if let Some(p) = now {
                    break p;
                }
                assert!(t0.elapsed() < WAIT, "no replacement; log:\n{}", c.log());
                std::thread::sleep(Duration::from_micros(20));
            };
            took.push(t0.elapsed());
            track(c.id, next, true);
            pid = next;
        }
        took.sort();
        let median = took[took.len() / 2];
        figure(
            "restart_after_kill",
            &format!("{mode}_median_us"),
            median.as_micros(),
        );
        figure(
            "restart_after_kill",
            &format!("{mode}_max_us"),
            took.last().unwrap().as_micros(),
        );
        c.run(&["shutdown"]).ok();
        wait_until(WAIT, "the node gone", || !pid_alive(pid));
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// `redis-cli -p PORT ping` says PONG.
fn redis_pongs(port: u16) -> bool {
    std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// `pid_file` (systemd's Type=forking): `redis-server --daemonize yes` forks, its starter
/// exits 0, and the daemon its PID file names is the node's main process: it is restarted
/// after a `kill -9`, and `stop` ends it. Needs the Debian package redis-server.
#[test]
fn redis_daemonize_yes_is_the_node_by_its_pid_file_and_stop_ends_it() {
    redis_by_pid_file(true);
}

/// The same without cgroups: the PID file must name a process carrying the node's identity.
#[test]
fn redis_by_its_pid_file_without_cgroups() {
    redis_by_pid_file(false);
}

fn redis_by_pid_file(cgroups: bool) {
    let port = free_port();
    let c = Cluster::new(if cgroups { "cg_redis" } else { "cg_redis_off" }, "");
    if !cgroups {
        c.set_env("BROCTLD_CGROUP", "off");
    }
    let pid_path = c.root.join("redis/redis.pid");
    c.write_config(&format!(
        r#"
[defaults]
restart_delay_ms = 50

[[node]]
name = "redis"
cwd = "redis"
pid_file = "redis.pid"
command = ["redis-server", "--daemonize", "yes", "--port", "{port}", "--bind", "127.0.0.1",
           "--pidfile", "{pid}", "--save", "", "--appendonly", "no", "--logfile", "redis.log"]
"#,
        pid = pid_path.display()
    ));
    let s = c.start();
    let cg = cgroups.then(|| instance_cgroup(&c));
    let _guard = cg.clone().map(GroupGuard);
    let main = s["redis"].pid.expect("a main pid");
    track(c.id, main, false);
    let from_file =
        |p: &Path| -> Option<u32> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    assert_eq!(from_file(&pid_path), Some(main), "{}", c.log());
    if let Some(cg) = &cg {
        assert_eq!(procs_in(&cg.join("node-redis")), vec![main]);
    }
    wait_until(WAIT, "redis answers", || redis_pongs(port));
    // A kill -9 of the daemon: restarted, the new daemon is the node.
    signal(main, libc::SIGKILL);
    let s = c.wait_status(WAIT, "redis restarted", |s| {
        s["redis"].state == "running" && s["redis"].pid.is_some_and(|p| p != main)
    });
    let main2 = s["redis"].pid.unwrap();
    track(c.id, main2, false);
    assert_eq!(from_file(&pid_path), Some(main2));
    assert_eq!(s["redis"].restarts, 1);
    wait_until(WAIT, "redis answers again", || redis_pongs(port));
    // `stop` signals the daemon (not the long-gone starter) and waits for it.
    c.run(&["stop", "redis"]).ok();
    assert_eq!(c.status()["redis"].state, "stopped");
    assert!(!pid_alive(main2), "redis pid {main2} outlived its stop");
    if let Some(cg) = &cg {
        assert!(procs_in(&cg.join("node-redis")).is_empty());
    }
    c.run(&["shutdown"]).ok();
}

/// A `pid_file` that never names a process of the node: past `ready_timeout_ms` the start
/// counts as failed (what is left of the node is killed), never `running`.
#[test]
fn pid_file_naming_no_process_of_the_node_fails_the_start_after_ready_timeout() {
    let c = Cluster::new(
        "cg_pidfile_bad",
        r#"
[[node]]
name = "liar"
restart = "never"
ready_timeout_ms = 300
pid_file = "liar.pid"
command = ["sh", "-c", "(setsid sleep 600 &); echo 1 > liar.pid"]
"#,
    );
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let cg = instance_cgroup(&c);
    let _guard = GroupGuard(cg.clone());
    // A start that never completed: `failed` (as a spawn that failed).
    let s = c.wait_status(WAIT, "liar ended", |s| s["liar"].state == "failed");
    assert_eq!(s["liar"].pid, None);
    // The sleep it left was killed with it.
    wait_until(WAIT, "the node's group empty", || {
        procs_in(&cg.join("node-liar")).is_empty()
    });
    assert!(
        c.log().contains("its pid_file") && c.log().contains("names no pid"),
        "{}",
        c.log()
    );
    c.run(&["shutdown"]).ok();
}
