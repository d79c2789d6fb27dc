//! The command line an operator (or a script) relies on: `--help` for every command and
//! `help COMMAND` saying the same, suggestions for mistyped commands, options and signals,
//! completion scripts, `check`, and exit codes that never claim success for nothing:
//! `status`/`top` with nothing running, `start` of a running node, `config`'s one header.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

const TWO: &str = r#"
[[node]]
name = "worker-1"
type = "worker"
command = ["sleep", "600"]

[[node]]
name = "worker-2"
type = "worker"
command = ["sleep", "600"]
"#;

/// `broctld ARGS` with this cluster's runtime dir and instance but no `--config`, run in a
/// folder without a `broctld.toml` (so that no config is found unless the system has one).
fn run_without_config(c: &Cluster, args: &[&str]) -> Output {
    let dir = c.root.join("out");
    let mut child = Command::new(broctld_bin())
        .arg("--runtime-dir")
        .arg(&c.runtime)
        .arg("--instance")
        .arg(&c.instance)
        .args(args)
        .current_dir(&dir)
        .env_remove("BROCTLD_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run broctld");
    track(c.id, child.id(), false);
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).ok();
    child.stderr.take().unwrap().read_to_string(&mut err).ok();
    let status = wait_child(&mut child, WAIT).expect("broctld finished");
    Output {
        code: status.code(),
        signal: None,
        stdout: out,
        stderr: err,
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Whether the machine has a system-wide config, which `broctld` would find by itself.
fn system_config_exists() -> bool {
    Path::new("/etc/broctld/broctld.toml").exists()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"))
}

#[test]
fn every_command_has_help_and_help_command_prints_the_same() {
    let c = Cluster::new("cli_help", TWO);
    let commands = broctld::cli::args::commands();
    assert!(commands.len() >= 20, "{commands:?}");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for (name, _, about) in &commands {
        let long = c.run(&[name, "--help"]);
        long.ok();
        assert!(
            long.stdout.contains(&format!("Usage: broctld {name}")),
            "{name} --help:\n{}",
            long.stdout
        );
        assert!(long.stdout.contains("--instance"), "{}", long.stdout);
        let help = c.run(&["help", name]);
        help.ok();
        assert_eq!(
            help.stdout, long.stdout,
            "`help {name}` and `{name} --help` differ"
        );
        let short = c.run(&[name, "-h"]);
        short.ok();
        assert!(short.stdout.contains(about.as_str()), "{}", short.stdout);
        // README's command table lists every command.
        assert!(
            readme.contains(&format!("| `{name}")),
            "README's command table lacks `{name}`"
        );
    }
    // In the shell, `help COMMAND` and `COMMAND --help` show the command as a line takes it.
    let shell = c.run_with_input(&[], Some("help logs\nlogs --help\nexit\n"));
    shell.ok();
    assert_eq!(
        shell.stdout.matches("Usage: logs [OPTIONS] <NODE>").count(),
        2,
        "{}",
        shell.stdout
    );
    assert!(!shell.stdout.contains("--instance"), "{}", shell.stdout);
    // The top-level help lists the commands and the exit statuses.
    let top = c.run(&["--help"]);
    top.ok();
    for (name, _, _) in &commands {
        assert!(top.stdout.contains(name.as_str()), "{}", top.stdout);
    }
    assert!(
        top.stdout.contains("Exit status: 0 success"),
        "{}",
        top.stdout
    );
    assert!(c
        .run(&["help", "frobnicate"])
        .expect_code(2)
        .stderr
        .contains("no such command"));
}

#[test]
fn mistyped_commands_options_and_signals_get_suggestions_and_exit_2() {
    let c = Cluster::new("cli_suggest", TWO);
    let out = c.run(&["stauts"]);
    out.expect_code(2);
    assert!(out.stderr.contains("'status'"), "{}", out.stderr);
    let out = c.run(&["status", "--jsn"]);
    out.expect_code(2);
    assert!(out.stderr.contains("--json"), "{}", out.stderr);
    let out = c.run(&["signal", "FOO", "all"]);
    out.expect_code(2);
    for real in ["HUP", "USR1", "TERM"] {
        assert!(out.stderr.contains(real), "{}", out.stderr);
    }
    let out = c.run(&["signal", "HUPP", "all"]);
    out.expect_code(2);
    assert!(out.stderr.contains("did you mean 'HUP'"), "{}", out.stderr);
    // Nothing was started by any of them.
    assert!(c.lock_pid().is_none());
    assert!(!c.shm_path().exists());
    // The shell says the same and carries on.
    let shell = c.run_with_input(&[], Some("stauts\nping -n 0\nexit\n"));
    shell.ok();
    assert!(shell.stderr.contains("'status'"), "{}", shell.stderr);
    assert!(shell.stderr.contains("--count"), "{}", shell.stderr);
}

#[test]
fn completions_scripts_for_bash_zsh_and_fish() {
    let c = Cluster::new("cli_completions", TWO);
    for shell in ["bash", "zsh", "fish"] {
        let out = c.run(&["completions", shell]);
        out.ok();
        for word in ["upgrade-supervisor", "runtime-dir", "status"] {
            assert!(out.stdout.contains(word), "{shell}: no {word}");
        }
    }
    // The bash script is valid bash.
    let script = c.root.join("broctld.bash");
    std::fs::write(&script, c.run(&["completions", "bash"]).stdout).unwrap();
    let st = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(st.success(), "bash -n rejects the completion script");
    let out = c.run(&["completions", "tcsh"]);
    out.expect_code(2);
    assert!(out.stderr.contains("bash"), "{}", out.stderr);
}

#[test]
fn status_and_top_with_nothing_running_and_no_config_exit_3_with_json() {
    if system_config_exists() {
        eprintln!("skipped: /etc/broctld/broctld.toml exists and would be found");
        return;
    }
    let c = Cluster::new("cli_nothing", TWO);
    let out = run_without_config(&c, &["status", "--json"]);
    out.expect_code(3);
    assert_eq!(json(&out.stdout), Value::Array(vec![]));
    let out = run_without_config(&c, &["status"]);
    out.expect_code(3);
    assert!(
        out.stdout.contains("no Supervisor is running"),
        "{}",
        out.stdout
    );
    let out = run_without_config(&c, &["top", "--json"]);
    out.expect_code(3);
    assert_eq!(json(&out.stdout), Value::Array(vec![]));
    // With a config but nothing running: every node stopped, exit 3; `top` still 3.
    let out = c.run(&["status", "--json"]);
    out.expect_code(3);
    let v = json(&out.stdout);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"] == "stopped"));
    c.run(&["top", "--json"]).expect_code(3);
    c.run(&["top"]).expect_code(3);
    // A config that does not load: a config error (exit 2), and still JSON for a script.
    c.write_config("[[node]]\nname = \"x\"\n");
    let out = c.run(&["status", "--json"]);
    out.expect_code(2);
    assert_eq!(json(&out.stdout), Value::Array(vec![]));
    assert!(
        out.stderr.contains("missing required key 'command'"),
        "{}",
        out.stderr
    );
    assert!(c.lock_pid().is_none(), "status or top started a Supervisor");
}

#[test]
fn status_json_after_the_supervisor_died_shows_its_last_state() {
    if system_config_exists() {
        eprintln!("skipped: /etc/broctld/broctld.toml exists and would be found");
        return;
    }
    let c = Cluster::new("cli_last_state", TWO);
    let before = c.start();
    // No guardian to replace it, and no config to be found: nothing can adopt the nodes.
    kill_guardians(&c.runtime);
    let sup = c.supervisor_pid();
    signal(sup, libc::SIGKILL);
    wait_until(WAIT, "the Supervisor dead", || !pid_alive(sup));
    // The region's last state, unverified (`unknown`, exit 1), pids checked against /proc.
    let out = run_without_config(&c, &["status", "--json"]);
    out.expect_code(1);
    let v = json(&out.stdout);
    let nodes = v.as_array().expect("an array");
    assert_eq!(nodes.len(), 2, "{}", out.stdout);
    for n in nodes {
        let name = n["name"].as_str().unwrap();
        assert_eq!(n["state"], "unknown", "{name}");
        assert_eq!(n["last_state"], "running", "{name}");
        assert_eq!(n["pid"].as_u64(), before[name].pid.map(u64::from), "{name}");
        assert_eq!(n["pid_alive"], true, "{name}");
        assert!(
            pid_alive(before[name].pid.unwrap()),
            "{name} is alive per /proc"
        );
    }
    assert!(
        out.stderr.contains("could not be replaced"),
        "{}",
        out.stderr
    );
    // `stop` and `shutdown` cannot stop them: they say so and fail, nothing is touched.
    for cmd in ["stop", "shutdown"] {
        let out = run_without_config(&c, &[cmd]);
        out.expect_code(1);
        assert!(out.stderr.contains("nothing was done"), "{}", out.stderr);
    }
    for n in before.values() {
        assert!(pid_alive(n.pid.unwrap()), "{} still runs", n.name);
    }
    // One node dies meanwhile: its recorded process is no longer alive, per /proc.
    let victim = before["worker-2"].pid.unwrap();
    signal(victim, libc::SIGKILL);
    wait_until(WAIT, "worker-2 gone", || !pid_alive(victim));
    let out = run_without_config(&c, &["status", "--json"]);
    out.expect_code(1);
    let v = json(&out.stdout);
    let w2 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "worker-2")
        .expect("worker-2 shown");
    assert_eq!(w2["pid_alive"], false, "{v}");
    assert_eq!(w2["state"], "unknown", "{v}");
}

#[test]
fn start_of_a_running_node_says_already_running_with_its_pid() {
    let c = Cluster::new("cli_already", TWO);
    let s = c.start();
    let pid = s["worker-1"].pid.unwrap();
    let head = c.client().event_head();
    let out = c.run(&["start", "worker-1"]);
    out.ok();
    assert_eq!(
        out.stdout.trim(),
        format!("worker-1: already running, pid {pid}")
    );
    // Nothing was sent: no command reached the Supervisor.
    assert_eq!(c.client().event_head(), head, "an event was recorded");
    assert_eq!(c.status()["worker-1"].pid, Some(pid));
    // A node that is stopped is started as before, next to one that runs.
    c.run(&["stop", "worker-2"]).ok();
    let out = c.run(&["start", "workers"]);
    out.ok();
    assert!(out
        .stdout
        .contains(&format!("worker-1: already running, pid {pid}")));
    assert!(
        out.stdout.contains("worker-2: running (pid"),
        "{}",
        out.stdout
    );
}

#[test]
fn config_prints_one_header_comment() {
    let c = Cluster::new("cli_config_header", TWO);
    let out = c.run(&["config"]);
    out.ok();
    // The comments before the first table: one line that says which file, defaults applied.
    let comments: Vec<&str> = out
        .stdout
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter(|l| l.starts_with('#'))
        .collect();
    assert_eq!(comments.len(), 1, "{}", out.stdout);
    assert!(comments[0].contains(&c.config.display().to_string()));
}

#[test]
fn check_reports_every_problem_with_its_line_and_starts_nothing() {
    let c = Cluster::new("cli_check", TWO);
    let out = c.run(&["check"]);
    out.ok();
    assert!(out.stdout.contains("2 node(s)"), "{}", out.stdout);
    // A file where a folder should be, a program that does not exist, one that is not
    // executable: each reported with its node's line.
    let blocker = c.root.join("blocker");
    std::fs::write(&blocker, "a file").unwrap();
    let script = c.root.join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let config = format!(
        "[[node]]\nname = \"zeek\"\ncommand = [\"/nonexistent/zeek\"]\n\n[[node]]\nname = \"blocked\"\ncommand = [\"sleep\", \"1\"]\ncwd = \"{}/sub\"\n\n[[node]]\nname = \"script\"\ncommand = [\"{}\"]\n\n[[node]]\nname = \"fine\"\ncommand = [\"sleep\", \"1\"]\n",
        blocker.display(),
        script.display()
    );
    c.write_config(&config);
    let out = c.run(&["check"]);
    out.expect_code(2);
    let file = c.config.display().to_string();
    for (line, needle) in [
        (1, "node 'zeek'"),
        (5, "node 'blocked': working folder"),
        (10, "node 'script': program"),
    ] {
        assert!(
            out.stdout.contains(&format!("{file}:{line}: {needle}")),
            "no {file}:{line}: {needle}\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("not executable"), "{}", out.stdout);
    assert!(!out.stdout.contains("'fine'"), "{}", out.stdout);
    assert!(out.stderr.contains("3 problem(s)"), "{}", out.stderr);
    // Mistakes in the file: every one, each with its line.
    c.write_config(
        "[[node]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\nrestart = \"sometimes\"\n\n[[node]]\nname = \"b\"\ncomand = [\"x\"]\nstop_timeout_ms = -1\n",
    );
    let out = c.run(&["check"]);
    out.expect_code(2);
    for at in [
        ":4: node 'a': key 'restart'",
        ":8: unknown key 'comand'",
        ":9: node 'b': key 'stop_timeout_ms'",
    ] {
        assert!(out.stdout.contains(at), "no {at}\n{}", out.stdout);
    }
    // `start` reports the same mistakes, all of them.
    let start = c.run(&["start"]);
    start.expect_code(2);
    assert_eq!(start.stderr.lines().count(), 3, "{}", start.stderr);
    // Nothing ever ran.
    assert!(c.lock_pid().is_none(), "a Supervisor was started");
    assert!(!c.shm_path().exists(), "a region was created");
    assert!(supervisors_of(&c.runtime).is_empty());
    assert!(!c.root.join("spool").exists(), "a node folder was created");
}

#[test]
fn top_with_a_delay_refreshes_until_ctrl_c() {
    let c = Cluster::new("cli_top_delay", TWO);
    c.start();
    let out_file = c.root.join("top.out");
    let mut child = c
        .command(&["top", "-d", "0.2"])
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("run top");
    track(c.id, child.id(), false);
    let frames = || {
        std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .matches("every 200ms, Ctrl-C ends")
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while frames() < 3 {
        assert!(Instant::now() < deadline, "fewer than 3 frames");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child.id(), libc::SIGINT);
    let st = wait_child(&mut child, WAIT).expect("top ended after SIGINT");
    assert_eq!(st.code(), Some(0));
    let text = std::fs::read_to_string(&out_file).unwrap();
    // Not a terminal: frames one after another, each a full table; no escape sequences.
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.matches("worker-1").count() >= 3, "{text}");
    // --json and -d do not go together.
    c.run(&["top", "-d", "1", "--json"]).expect_code(2);
}

/// `ping -n 200` pushed 200 `command` events into the 4096-event history; a ping series now
/// leaves none (a ping changes nothing; `ping` prints its own figures).
#[test]
fn ping_series_leaves_no_event_in_the_history() {
    let c = Cluster::new("cli_ping_events", TWO);
    c.start();
    let head = c.client().event_head();
    c.run(&["ping", "-n", "200"]).ok();
    let out = c.run(&["events", "--since", &head.to_string(), "--json"]);
    out.ok();
    let pings = out
        .stdout
        .lines()
        .map(json)
        .filter(|e| {
            e["kind"] == "command" && e["detail"].as_str().is_some_and(|d| d.starts_with("ping"))
        })
        .count();
    assert_eq!(pings, 0, "{}", out.stdout);
}
