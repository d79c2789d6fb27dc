//! A node's environment is defined by its config alone (issue "real daemons"): its `env`
//! (defaults, then the node's), `PATH` (`path`, else a fixed default), `HOME`, `USER`,
//! `LOGNAME` and `SHELL` of the user it runs as, the names listed in `inherit_env`, and
//! `BROCTLD_*`. Nothing leaks from the Main that started the Supervisor. Checked in
//! `/proc/PID/environ`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn environ(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

const CONFIG: &str = r#"
[defaults]
env = { SHARED = "defaults", OVERRIDDEN = "defaults" }
inherit_env = ["TZ"]

[[node]]
name = "n"
env = { OVERRIDDEN = "node" }
command = ["sleep", "600"]
"#;

/// Starts the cluster from a Main whose environment is `extra` (plus what the harness sets),
/// returns the node's environment, and shuts the cluster down again.
fn node_env_from_main(c: &Cluster, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    for (k, v) in extra {
        c.set_env(k, v);
    }
    let s = c.start();
    let pid = s["n"].pid.unwrap();
    let env = environ(pid);
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "the node gone", || !pid_alive(pid));
    env
}

#[test]
fn two_mains_with_different_environments_give_identical_nodes() {
    let c = Cluster::new("env_identical", CONFIG);
    let a = node_env_from_main(
        &c,
        &[
            ("LEAK_ME", "a"),
            ("HOME", "/nowhere-a"),
            ("PATH", "/bin:/usr/bin:/leaky/a"),
            ("TZ", "UTC"),
        ],
    );
    let b = node_env_from_main(
        &c,
        &[
            ("LEAK_ME", "b"),
            ("OTHER_LEAK", "b"),
            ("HOME", "/nowhere-b"),
            ("PATH", "/usr/bin:/bin:/leaky/b"),
            ("TZ", "UTC"),
        ],
    );
    assert_eq!(a, b, "the node's environment depends on the Main's");
    // SAFETY: getuid cannot fail.
    let me = broctld::sys::account::login(unsafe { libc::getuid() }).unwrap();
    let expected: BTreeMap<String, String> = [
        ("SHARED", "defaults"),
        ("OVERRIDDEN", "node"),
        ("TZ", "UTC"),
        ("PATH", broctld::config::DEFAULT_PATH),
        ("HOME", me.home.as_str()),
        ("USER", me.name.as_str()),
        ("LOGNAME", me.name.as_str()),
        ("SHELL", me.shell.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let without_ids: BTreeMap<String, String> = a
        .into_iter()
        .filter(|(k, _)| !k.starts_with("BROCTLD_"))
        .collect();
    assert_eq!(without_ids, expected);
}

#[test]
fn a_bare_program_name_is_looked_up_on_the_nodes_own_path() {
    let c = Cluster::new("env_path", "");
    let bin = c.root.join("tools");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("only-here");
    std::fs::write(&tool, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Found on the node's `path` though the Main's PATH does not have it.
    c.write_config(&format!(
        "[[node]]\nname = \"t\"\npath = \"{}:/usr/bin:/bin\"\ncommand = [\"only-here\"]\n",
        bin.display()
    ));
    let s = c.start();
    let pid = s["t"].pid.unwrap();
    assert_eq!(
        environ(pid).get("PATH").map(String::as_str),
        Some(format!("{}:/usr/bin:/bin", bin.display()).as_str())
    );
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "the node gone", || !pid_alive(pid));
    // Not found on the default PATH, even when the Main's PATH has it.
    c.write_config("[[node]]\nname = \"t\"\ncommand = [\"only-here\"]\n");
    c.set_env(
        "PATH",
        &format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("'only-here' not found"), "{text}");
}

/// An operator's `restart` is not a death: `restarts` counts only deaths, and `last_exit`
/// says how the process ended.
#[test]
fn operator_restart_is_not_counted_in_restarts() {
    let c = Cluster::new(
        "restart_count",
        "[defaults]\nrestart_delay_ms = 50\n[[node]]\nname = \"n\"\ncommand = [\"sleep\", \"600\"]\n",
    );
    let s = c.start();
    let first = s["n"].pid.unwrap();
    c.run(&["restart", "n"]).ok();
    let s = c.status();
    let second = s["n"].pid.unwrap();
    track(c.id, second, true);
    assert_ne!(second, first);
    assert_eq!(s["n"].restarts, 0);
    assert_eq!(s["n"].exit_signal, Some(libc::SIGTERM as i64));
    // A death is counted.
    signal(second, libc::SIGKILL);
    let s = c.wait_status(WAIT, "n back", |s| {
        s["n"].state == "running" && s["n"].pid.is_some_and(|p| p != second)
    });
    track(c.id, s["n"].pid.unwrap(), true);
    assert_eq!(s["n"].restarts, 1);
    c.run(&["shutdown"]).ok();
}

/// The `SigIgn`, `SigBlk` mask (hex) of `/proc/PID/status`.
fn signal_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn a_node_starts_with_no_signal_ignored_or_blocked() {
    // The Main ignores SIGPIPE (a closed pipe is an error to it) and the Supervisor blocks
    // signals around its spawns: none of it reaches a node, which would then not die of
    // SIGPIPE on a closed pipe or never see its SIGTERM.
    let c = Cluster::new("env_signals", CONFIG);
    let s = c.start();
    let pid = s["n"].pid.unwrap();
    track(c.id, pid, false);
    assert_eq!(signal_mask(pid, "SigIgn"), 0, "signals ignored in the node");
    assert_eq!(signal_mask(pid, "SigBlk"), 0, "signals blocked in the node");
    c.run(&["shutdown"]).ok();
    wait_until(WAIT, "the node gone", || !pid_alive(pid));
}
