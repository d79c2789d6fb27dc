//! When run as root: per-node `user`, `group`, `umask` and rlimits (`rlimit_nofile`,
//! `rlimit_core`, `rlimit_memlock`) from the config are applied to the node only; the
//! Supervisor stays root with its own limits, and its region and runtime files stay 0600/0700
//! and out of the node's reach. Every test here is skipped (passes with a note) when not root.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("not root: skipped");
    }
    r
}

/// The value of `Key:` in /proc/PID/status.
fn status_field(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Soft and hard limit of the /proc/PID/limits line starting with `name`.
fn limit(pid: u32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/limits"));
    let f: Vec<&str> = line[name.len()..].split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

fn ids(name: &str, group: bool) -> u32 {
    let db = std::fs::read_to_string(if group { "/etc/group" } else { "/etc/passwd" }).unwrap();
    db.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn user_group_umask_and_rlimits_apply_to_the_node_only_and_the_region_stays_private() {
    if !root() {
        return;
    }
    // Raising a hard limit needs CAP_SYS_RESOURCE, which a container may not grant: ask for
    // "unlimited" only where our own hard limit already is.
    let hard = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a resource and a valid out-pointer.
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_max
    };
    let pick = |r, small: &str| {
        if hard(r) == libc::RLIM_INFINITY {
            ("\"unlimited\"".to_string(), "unlimited".to_string())
        } else {
            (small.to_string(), small.to_string())
        }
    };
    let (core_cfg, core_want) = pick(libc::RLIMIT_CORE, "0");
    let (mem_cfg, mem_want) = pick(libc::RLIMIT_MEMLOCK, "65536");
    let c = Cluster::new(
        "root_creds",
        &format!(
            r#"
[[node]]
name = "confined"
command = ["sh", "-c", "umask; id; exec sleep 600"]
user = "nobody"
group = "nogroup"
umask = "027"
rlimit_nofile = 1234
rlimit_core = {core_cfg}
rlimit_memlock = {mem_cfg}

[[node]]
name = "plain"
command = ["sleep", "600"]
"#
        ),
    );
    let s = c.start();
    let sup = c.supervisor_pid();
    let pid = s["confined"].pid.unwrap();
    let (uid, gid) = (ids("nobody", false), ids("nogroup", true));
    assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    let groups = status_field(pid, "Groups");
    assert!(
        groups
            .split(' ')
            .all(|g| g.is_empty() || g == gid.to_string()),
        "no root groups: {groups:?}"
    );
    assert_eq!(status_field(pid, "Umask"), "0027");
    assert_eq!(limit(pid, "Max open files"), ("1234".into(), "1234".into()));
    assert_eq!(
        limit(pid, "Max core file size"),
        (core_want.clone(), core_want)
    );
    assert_eq!(
        limit(pid, "Max locked memory"),
        (mem_want.clone(), mem_want)
    );
    // The shell said the same from inside.
    let out = c.root.join("spool/confined/stdout.log");
    wait_until(WAIT, "the node's output", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("uid="))
    });
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("0027\n"), "{text}");
    assert!(text.contains(&format!("uid={uid}(nobody)")), "{text}");

    // The other node and the Supervisor keep root and their own limits.
    let other = s["plain"].pid.unwrap();
    for p in [sup, other] {
        assert_eq!(status_field(p, "Uid"), "0 0 0 0", "pid {p}");
        assert_ne!(limit(p, "Max open files").0, "1234", "pid {p}");
    }
    assert_eq!(status_field(other, "Umask"), status_field(sup, "Umask"));

    // The region and the runtime files are root's alone.
    let m = std::fs::metadata(c.shm_path()).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "region");
    for (p, mode) in [
        (c.runtime.clone(), 0o700),
        (c.instance_dir(), 0o700),
        (c.instance_dir().join("supervisor.lock"), 0o600),
        (c.instance_dir().join("doorbell"), 0o600),
        (c.instance_dir().join("nodes/confined.lock"), 0o600),
    ] {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, mode), "{}", p.display());
    }
    // The node cannot open the region (it only holds its own lock fd).
    let probe = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "cat",
        ])
        .arg(c.shm_path())
        .output();
    if let Ok(o) = probe {
        assert!(!o.status.success(), "nobody read the region");
    }

    // The Supervisor dropped nothing it needs: it restarts the confined node (setuid again)
    // and stops it (signals a process of another user).
    signal(pid, libc::SIGKILL);
    let s = c.wait_status(WAIT, "confined restarted", |s| {
        s["confined"].state == "running" && s["confined"].pid.is_some_and(|p| p != pid)
    });
    let p2 = s["confined"].pid.unwrap();
    assert_eq!(status_field(p2, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    c.run(&["stop", "confined"]).ok();
    assert!(!pid_exists(p2));
    c.run(&["start", "confined"]).ok();
}

/// A node confined to `nobody` still owns the folder it must write in: when the Supervisor
/// creates a node's `cwd`, the node's user can write there (Zeek writes its logs in its cwd).
#[test]
fn a_confined_node_can_write_the_cwd_the_supervisor_created_for_it() {
    if !root() {
        return;
    }
    let c = Cluster::new(
        "root_cwd",
        r#"
[[node]]
name = "confined"
command = ["sh", "-c", "touch mine && echo WROTE || echo DENIED; exec sleep 600"]
user = "nobody"
group = "nogroup"
"#,
    );
    c.start();
    let out = c.root.join("spool/confined/stdout.log");
    wait_until(WAIT, "the node's output", || {
        std::fs::read_to_string(&out).is_ok_and(|t| !t.is_empty())
    });
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("WROTE"), "{text}");
}

/// A node holds its lock through an fd it inherited read-write. One running as `nobody` must
/// not be able to make the root Supervisor adopt (and later signal) another user's process by
/// writing that process's pid and start time into its lock file.
#[test]
fn a_node_cannot_make_the_supervisor_adopt_a_foreign_process_through_its_lock_file() {
    if !root() {
        return;
    }
    // The victim: a root process in its own process group.
    use std::os::unix::process::CommandExt;
    let mut victim = std::process::Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .expect("spawn the victim");
    let vpid = victim.id();
    let vstart = start_time(vpid).unwrap();
    let c = Cluster::new("root_lock_forge", "");
    track(c.id, vpid, true);
    c.write_config(&format!(
        r#"
[defaults]
restart_delay_ms = 50

[[node]]
name = "forger"
user = "nobody"
group = "nogroup"
command = ["sh", "-c", "setsid /usr/bin/perl -e 'open(my $f, \"+<&=\", 3) or die; sysseek($f, 0, 0); truncate($f, 0); syswrite($f, \"{vpid} {vstart}\\n\"); sleep 600' & sleep 0.3; exit 1"]
"#
    ));
    c.run(&["start"]).ok();
    // The leader exits after writing; the restart finds the lock held and reads the file.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut adopted = false;
    while Instant::now() < deadline {
        if c.status()["forger"].pid == Some(vpid) {
            adopted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if adopted {
        c.run(&["stop", "forger"]);
    }
    let alive = pid_alive(vpid);
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        alive,
        "`stop forger` killed root's pid {vpid}, which the Supervisor had adopted as the node\n{}",
        c.log()
    );
    assert!(
        !adopted,
        "the Supervisor adopted root's pid {vpid} as node 'forger'\n{}",
        c.log()
    );
}
