//! The operator's one-shot commands on real processes: status exit codes, ordered start and
//! stop, events (what happened while away, following, overrun), logs, diag (crash reports),
//! signal, top, nodes, config, reload (only the difference), and Main's own log.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A small Zeek-like cluster of shell processes: the manager says it is ready on fd 3, worker-1
/// writes a line to stdout and stderr every 100 ms and reports SIGUSR1.
const CLUSTER: &str = r#"
[defaults]
stop_timeout_ms = 5000
restart_delay_ms = 100

[[node]]
name = "logger-1"
type = "logger"
command = ["sh", "-c", "echo logger up; exec sleep 600"]

[[node]]
name = "manager"
type = "manager"
command = ["sh", "-c", "sleep 0.2; echo >&3; echo manager ready; exec sleep 600"]
ready_fd = 3

[[node]]
name = "proxy-1"
type = "proxy"
command = ["sleep", "600"]

[[node]]
name = "worker-1"
type = "worker"
command = ["sh", "-c", "trap 'echo got USR1' USR1; i=0; while :; do i=$((i+1)); echo out $i; echo err $i >&2; sleep 0.1; done"]

[[node]]
name = "worker-2"
type = "worker"
command = ["sleep", "600"]
"#;

fn pid_of(s: &BTreeMap<String, NodeView>, name: &str) -> u32 {
    s[name]
        .pid
        .unwrap_or_else(|| panic!("{name} has no pid: {s:#?}"))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"))
}

/// Every event as `events --since 0 --json` prints it.
fn all_events(c: &Cluster) -> Vec<Value> {
    let out = c.run(&["events", "--since", "0", "--json"]);
    out.ok();
    out.stdout.lines().map(json).collect()
}

fn position(evs: &[Value], node: &str, kind: &str) -> usize {
    evs.iter()
        .position(|e| e["node"] == node && e["kind"] == kind)
        .unwrap_or_else(|| panic!("no '{kind}' event for {node} in {evs:#?}"))
}

fn kill9(pid: u32) {
    signal(pid, libc::SIGKILL);
}

#[test]
fn status_exit_codes_follow_zeekctl_and_piped_output_is_plain() {
    let c = Cluster::new("ops_status", CLUSTER);
    c.start();
    let out = c.run(&["status"]);
    out.ok();
    assert!(
        !out.stdout.contains('\x1b'),
        "escape codes when piped:\n{}",
        out.stdout
    );
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    c.run(&["stop", "worker-2"]).ok();
    c.run(&["status"]).expect_code(3);
    c.run(&["status", "worker-2"]).expect_code(3);
    c.run(&["status", "logger-1", "manager"]).ok();
    c.run(&["status", "workers"]).expect_code(3);
    let bad = c.run(&["status", "nope"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("no node matches 'nope'"),
        "{}",
        bad.stderr
    );
    c.run(&["frobnicate"]).expect_code(2);
    // Colors are never used when stdout is not a terminal, NO_COLOR or not.
    let mut cmd = c.command(&["status"]);
    cmd.env("NO_COLOR", "1");
    let o = cmd.output().expect("run");
    assert!(!String::from_utf8_lossy(&o.stdout).contains('\x1b'));
}

#[test]
fn start_waits_stage_by_stage_and_stop_goes_in_reverse_role_order() {
    let c = Cluster::new("ops_order", CLUSTER);
    let out = c.run(&["start"]);
    out.ok();
    // `start` returns once every node is running: the manager only after it said it is ready.
    let s = c.status();
    for (name, n) in &s {
        assert_eq!(n.state, "running", "{name}: {n:?}");
    }
    for name in s.keys() {
        assert!(
            out.stdout.contains(&format!("{name}: running (pid")),
            "{}",
            out.stdout
        );
    }
    let evs = all_events(&c);
    // Loggers, then managers (which must be ready first), then proxies, then workers.
    assert!(position(&evs, "logger-1", "ready") < position(&evs, "manager", "spawned"));
    assert!(position(&evs, "manager", "ready") < position(&evs, "proxy-1", "spawned"));
    assert!(position(&evs, "proxy-1", "ready") < position(&evs, "worker-1", "spawned"));
    assert!(position(&evs, "proxy-1", "ready") < position(&evs, "worker-2", "spawned"));

    let out = c.run(&["stop"]);
    out.ok();
    for name in s.keys() {
        assert!(
            out.stdout.contains(&format!("{name}: stopped")),
            "{}",
            out.stdout
        );
    }
    let evs = all_events(&c);
    let stopped = |n: &str| position(&evs, n, "stopped");
    assert!(stopped("worker-1") < stopped("proxy-1"));
    assert!(stopped("worker-2") < stopped("proxy-1"));
    assert!(stopped("proxy-1") < stopped("manager"));
    assert!(stopped("manager") < stopped("logger-1"));
    c.run(&["status"]).expect_code(3);
}

/// `restart` of several nodes goes in stages as `stop` and `start` do: every selected node is
/// stopped in reverse role order, then they start in order, each stage once the one before is
/// ready; an operator's restart is not counted in `restarts`.
#[test]
fn restart_of_several_nodes_stops_in_reverse_then_starts_in_stages() {
    let c = Cluster::new("ops_restart_stages", CLUSTER);
    let before = c.start();
    let seen = all_events(&c).len();
    c.run(&["restart", "worker-2", "manager", "logger-1"]).ok();
    let s = c.status();
    let evs: Vec<Value> = all_events(&c).split_off(seen);
    let at = |n: &str, k: &str| position(&evs, n, k);
    // Stopped in reverse role order, all before any starts.
    assert!(at("worker-2", "stopped") < at("manager", "stopped"));
    assert!(at("manager", "stopped") < at("logger-1", "stopped"));
    assert!(at("logger-1", "stopped") < at("logger-1", "spawned"));
    // Started in order, the manager's stage gated by the logger, the worker's by the
    // manager's readiness (its ready_fd).
    assert!(at("logger-1", "ready") < at("manager", "spawned"));
    assert!(at("manager", "ready") < at("worker-2", "spawned"));
    for n in ["worker-2", "manager", "logger-1"] {
        assert_eq!(s[n].state, "running", "{n}");
        assert_ne!(s[n].pid, before[n].pid, "{n} got a new process");
        assert_eq!(
            s[n].restarts, 0,
            "{n}: an operator's restart is not counted"
        );
    }
    assert_eq!(
        s["proxy-1"].pid, before["proxy-1"].pid,
        "not selected: untouched"
    );
}

#[test]
fn events_show_what_happened_while_away_and_follow_live() {
    let c = Cluster::new("ops_events", CLUSTER);
    let s = c.start();
    // The first look shows everything the ring holds.
    let first = c.run(&["events"]);
    first.ok();
    assert!(
        first.stdout.contains("supervisor-started"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("worker-2"), "{}", first.stdout);
    // Nothing happened since.
    let again = c.run(&["events"]);
    again.ok();
    assert_eq!(again.stdout, "", "nothing new, yet:\n{}", again.stdout);
    assert!(again.stderr.contains("no new events"), "{}", again.stderr);
    // While no Main looks, a node dies and is restarted.
    let old = pid_of(&s, "worker-2");
    kill9(old);
    c.wait_status(WAIT, "worker-2 restarted", |s| {
        s["worker-2"].pid.is_some_and(|p| p != old) && s["worker-2"].state == "running"
    });
    let away = c.run(&["events"]);
    away.ok();
    let lines: Vec<&str> = away.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains("worker-2")
            && l.contains("exited")
            && l.contains(&format!("pid {old}, signal 9 (KILL)"))),
        "{}",
        away.stdout
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("worker-2") && l.contains("spawned")));
    assert!(
        !away.stdout.contains("supervisor-started"),
        "only what is new:\n{}",
        away.stdout
    );
    // --since 0 --json: every event, parseable, numbered in order.
    let evs = all_events(&c);
    let seqs: Vec<u64> = evs.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(evs
        .iter()
        .any(|e| e["kind"] == "exited" && e["exit"]["signal"] == 9));
    // -n: the last N.
    let last = c.run(&["events", "-n", "2"]);
    last.ok();
    assert_eq!(last.stdout.lines().count(), 2, "{}", last.stdout);

    // Following: a background Main prints what happens as it happens.
    let follower = c.spawn_main(&["events", "-f", "--since", "0"]);
    let out_file = c
        .root
        .join("out")
        .join(format!("{}.stdout", count_runs(&c) - 1));
    let now = c.status();
    let victim = pid_of(&now, "worker-2");
    kill9(victim);
    wait_until(WAIT, "the follower to print the new death", || {
        std::fs::read_to_string(&out_file)
            .is_ok_and(|t| t.contains(&format!("pid {victim}, signal 9 (KILL)")))
    });
    signal(follower, libc::SIGINT);
    let st = c.wait_main(follower, WAIT);
    assert_eq!(st.code(), Some(0), "events -f ends cleanly on Ctrl-C");
}

/// The number of Mains this cluster has run (each gets the next `out/N.*` files).
fn count_runs(c: &Cluster) -> usize {
    std::fs::read_dir(c.root.join("out"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".stdout"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn events_say_how_many_were_overwritten_and_notice_a_new_region() {
    let c = Cluster::new("ops_overrun", CLUSTER);
    c.start();
    c.run(&["events"]).ok();
    // 2100 signals leave 4200 events (`command` and `signaled`): more than the ring holds.
    // (Pings leave none.)
    let client = c.client();
    for _ in 0..2100 {
        client
            .signal(&["worker-1"], broctld::client::Signal::SIGCONT)
            .expect("signal worker-1");
    }
    let out = c.run(&["events"]);
    out.ok();
    assert!(
        out.stderr
            .contains("were overwritten before they could be read"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout.lines().count(), 4096, "the ring's last 4096");
    // A saved position from another region (or past the head) is not trusted.
    std::fs::write(c.instance_dir().join("main.seen"), "1 999999999\n").unwrap();
    let out = c.run(&["events"]);
    out.ok();
    assert!(out.stderr.contains("created anew"), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 4096);
}

#[test]
fn logs_print_the_tail_and_follow_the_file() {
    let c = Cluster::new("ops_logs", CLUSTER);
    c.start();
    wait_until(WAIT, "worker-1 to write a few lines", || {
        c.run(&["logs", "worker-1", "-n", "5", "--stderr"])
            .stdout
            .lines()
            .count()
            == 5
    });
    let out = c.run(&["logs", "worker-1", "-n", "3"]);
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines.iter().all(|l| l.starts_with("out ")), "{lines:?}");
    let err = c.run(&["logs", "worker-1", "-n5", "--stderr"]);
    err.ok();
    assert_eq!(err.stdout.lines().count(), 5);
    assert!(
        err.stdout.lines().all(|l| l.starts_with("err ")),
        "{}",
        err.stdout
    );
    let j = json(&c.run(&["logs", "logger-1", "--json"]).stdout);
    assert_eq!(j["node"], "logger-1");
    assert_eq!(j["lines"][0], "logger up");
    assert!(j["file"].as_str().unwrap().ends_with("stdout.log"));
    c.run(&["logs", "nope"]).expect_code(2);
    c.run(&["logs", "worker-*"]).expect_code(2);
    c.run(&["logs"]).expect_code(2);

    // -f prints what is appended afterwards.
    let follower = c.spawn_main(&["logs", "worker-1", "-f", "-n", "0"]);
    let out_file = c
        .root
        .join("out")
        .join(format!("{}.stdout", count_runs(&c) - 1));
    let seen_before = std::fs::read_to_string(&out_file).unwrap_or_default();
    assert!(seen_before.lines().count() <= 1, "{seen_before}");
    wait_until(WAIT, "logs -f to print new lines", || {
        std::fs::read_to_string(&out_file).is_ok_and(|t| t.lines().count() >= 3)
    });
    signal(follower, libc::SIGINT);
    assert_eq!(c.wait_main(follower, WAIT).code(), Some(0));
}

const CRASHER: &str = r#"
[[node]]
name = "crasher"
type = "worker"
command = ["sh", "-c", "echo \"about to fail $$\" >&2; echo stdout-before-crash; exit 3"]
restart = "never"

[[node]]
name = "sleeper"
type = "worker"
command = ["sleep", "600"]
restart = "never"
"#;

#[test]
fn diag_prints_the_crash_report_written_when_the_node_died() {
    let c = Cluster::new("ops_diag", CRASHER);
    // The crasher may be seen running for a moment, or already dead: either exit status.
    let out = c.run(&["start"]);
    assert!(matches!(out.code, Some(0) | Some(1)), "{out:?}");
    let s = c.wait_status(WAIT, "crasher to end", |s| {
        s["crasher"].pid.is_none() && s["crasher"].exit_code == Some(3)
    });
    // The report is in the node's folder before anyone asked for it.
    let spool = c.root.join("spool").join("crasher");
    wait_until(WAIT, "a crash report in the node's folder", || {
        std::fs::read_dir(&spool).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("broctld-crash-")
            })
        })
    });
    let out = c.run(&["diag", "crasher"]);
    out.ok();
    for needle in [
        "node: crasher",
        "exit: exit 3",
        "core dumped: no",
        "command: sh -c",
        "== environment ==",
        "BROCTLD_NODE=crasher",
        "== limits ==",
        "Max open files",
        "about to fail",
        "stdout-before-crash",
    ] {
        assert!(
            out.stdout.contains(needle),
            "diag lacks '{needle}':\n{}",
            out.stdout
        );
    }
    // Another death: the latest in full, the older ones listed.
    let reports = |spool: &std::path::Path| {
        std::fs::read_dir(spool)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("broctld-crash-")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let before = reports(&spool);
    let out = c.run(&["start", "crasher"]);
    assert!(matches!(out.code, Some(0) | Some(1)), "{out:?}");
    wait_until(WAIT, "one more crash report", || reports(&spool) > before);
    let n = reports(&spool);
    assert!(n >= 2);
    let out = c.run(&["diag", "crasher"]);
    out.ok();
    assert!(
        out.stdout.contains(&format!("latest of {n}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("older reports of crasher"),
        "{}",
        out.stdout
    );
    // A signal, listed with the others.
    let sleeper = pid_of(&s, "sleeper");
    signal(sleeper, libc::SIGSEGV);
    c.wait_status(WAIT, "sleeper to die", |s| {
        s["sleeper"].exit_signal == Some(11)
    });
    wait_until(WAIT, "the sleeper's report", || {
        c.run(&["diag", "sleeper"])
            .stdout
            .contains("signal 11 (SEGV)")
    });
    let all = c.run(&["diag"]);
    all.ok();
    assert!(
        all.stdout.contains("crasher") && all.stdout.contains("sleeper"),
        "{}",
        all.stdout
    );
    let j = json(&c.run(&["diag", "--json"]).stdout);
    let arr = j.as_array().unwrap();
    let crasher = arr.iter().find(|n| n["node"] == "crasher").unwrap();
    assert_eq!(crasher["reports"].as_array().unwrap().len(), n);
    assert_eq!(crasher["reports"][0]["exit"], "exit 3");
    assert!(crasher["latest"]
        .as_str()
        .unwrap()
        .contains("node: crasher"));
    c.run(&["diag", "nope"]).expect_code(2);
}

#[test]
fn signal_top_nodes_and_config() {
    let c = Cluster::new("ops_misc", CLUSTER);
    let s = c.start();
    // signal: by name, to a selection; a stopped node is an error.
    let out = c.run(&["signal", "USR1", "worker-1"]);
    out.ok();
    assert!(
        out.stdout.contains("sent SIGUSR1 to 1 node(s): worker-1"),
        "{}",
        out.stdout
    );
    wait_until(WAIT, "worker-1 to report SIGUSR1", || {
        c.run(&["logs", "worker-1", "-n", "50"])
            .stdout
            .contains("got USR1")
    });
    c.run(&["stop", "proxy-1"]).ok();
    let out = c.run(&["signal", "HUP", "proxy-1"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("not running: proxy-1"),
        "{}",
        out.stderr
    );
    c.run(&["signal", "NOSUCH", "worker-1"]).expect_code(2);

    // top: the pids status shows, with memory and threads from /proc.
    let t = json(&c.run(&["top", "--json"]).stdout);
    let arr = t.as_array().unwrap();
    assert_eq!(arr.len(), 5);
    for n in arr {
        let name = n["name"].as_str().unwrap();
        if name == "proxy-1" {
            assert!(n["pid"].is_null(), "{n}");
            continue;
        }
        assert_eq!(n["pid"].as_u64().unwrap() as u32, pid_of(&s, name), "{n}");
        assert!(n["rss_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(n["threads"].as_u64().unwrap() >= 1, "{n}");
        assert!(n["procs"].as_u64().unwrap() >= 1, "{n}");
        assert!(n["cpu_percent"].as_f64().unwrap() >= 0.0, "{n}");
    }
    let table = c.run(&["top", "workers"]);
    table.ok();
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);

    // nodes: the configured settings, defaults applied.
    let n = json(&c.run(&["nodes", "--json"]).stdout);
    let manager = n
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "manager")
        .unwrap();
    assert_eq!(manager["ready_fd"], 3);
    assert_eq!(manager["stop_timeout_ms"], 5000);
    assert_eq!(manager["type"], "manager");
    assert_eq!(manager["restart"], "always");
    let table = c.run(&["nodes", "managers"]);
    table.ok();
    assert!(table.stdout.contains("fd 3"), "{}", table.stdout);

    // config: the effective config, which loads back to the same nodes.
    let out = c.run(&["config"]);
    out.ok();
    assert!(
        out.stdout.contains("stop_timeout_ms = 5000"),
        "{}",
        out.stdout
    );
    let again = broctld::config::Config::parse(&out.stdout, &c.config).expect("config reloads");
    let orig = broctld::config::Config::load(&c.config).unwrap();
    let strip = |cfg: &broctld::config::Config| {
        cfg.nodes
            .iter()
            .map(|n| {
                let mut n = n.clone();
                n.line = 0;
                n
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&again), strip(&orig));
    let j = json(&c.run(&["config", "--json"]).stdout);
    assert_eq!(j["nodes"].as_array().unwrap().len(), 5);
    assert!(j["path"].as_str().unwrap().ends_with("broctld.toml"));
}

#[test]
fn reload_applies_only_the_difference_and_a_bad_config_changes_nothing() {
    let c = Cluster::new("ops_reload", CLUSTER);
    let before = c.start();
    // Add worker-3, change worker-2, remove proxy-1.
    let text = CLUSTER
        .replace(
            "name = \"worker-2\"\ntype = \"worker\"\ncommand = [\"sleep\", \"600\"]",
            "name = \"worker-2\"\ntype = \"worker\"\ncommand = [\"sleep\", \"601\"]",
        )
        .replace(
            "[[node]]\nname = \"proxy-1\"\ntype = \"proxy\"\ncommand = [\"sleep\", \"600\"]\n",
            "",
        )
        + "\n[[node]]\nname = \"worker-3\"\ntype = \"worker\"\ncommand = [\"sleep\", \"602\"]\n";
    assert!(text.contains("601") && !text.contains("proxy-1"));
    c.write_config(&text);
    let out = c.run(&["reload"]);
    out.ok();
    assert!(out.stdout.contains("added worker-3"), "{}", out.stdout);
    assert!(out.stdout.contains("changed worker-2"), "{}", out.stdout);
    assert!(out.stdout.contains("removed proxy-1"), "{}", out.stdout);
    let after = c.wait_status(WAIT, "the reload to settle", |s| {
        !s.contains_key("proxy-1")
            && s.get("worker-3").is_some_and(|n| n.state == "running")
            && s["worker-2"].state == "running"
    });
    for name in ["logger-1", "manager", "worker-1"] {
        assert_eq!(after[name].pid, before[name].pid, "{name} kept its process");
        assert_eq!(after[name].restarts, 0, "{name}");
    }
    assert_ne!(
        after["worker-2"].pid, before["worker-2"].pid,
        "worker-2 was restarted"
    );
    assert!(
        !pid_alive(pid_of(&before, "proxy-1")),
        "proxy-1 was stopped"
    );

    // A config that does not parse: nothing changes, and the error says where.
    c.write_config(&(text.clone() + "\n[[node]]\nname = \"broken\"\ncomand = [\"x\"]\n"));
    let out = c.run(&["reload"]);
    out.expect_code(2);
    assert!(out.stderr.contains("nothing changed"), "{}", out.stderr);
    assert!(out.stderr.contains("comand"), "{}", out.stderr);
    let same = c.status();
    assert_eq!(
        same.iter()
            .map(|(k, v)| (k.clone(), v.pid))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|(k, v)| (k.clone(), v.pid))
            .collect::<Vec<_>>()
    );
}

#[test]
fn main_log_records_each_command_and_its_result() {
    let c = Cluster::new("ops_mainlog", CLUSTER);
    c.start();
    c.run(&["stop", "worker-2"]).ok();
    c.run(&["status"]).expect_code(3);
    c.run(&["status", "nope"]).expect_code(2);
    c.run_with_input(&[], Some("ping\nexit\n")).ok();
    let log = std::fs::read_to_string(c.instance_dir().join("main.log")).expect("main.log");
    let has = |needle: &str| log.lines().any(|l| l.contains(needle));
    assert!(has("] start: ok: started: logger-1 (pid"), "{log}");
    assert!(has("] stop worker-2: ok: stopped: worker-2"), "{log}");
    assert!(has("] status: exit 3: not running: worker-2"), "{log}");
    assert!(
        has("] status nope: failed (exit 2): no node matches 'nope'"),
        "{log}"
    );
    assert!(has("] shell: ping: ok"), "{log}");
    // Each line starts with a timestamp and the Main's pid.
    for l in log.lines() {
        assert!(
            l.len() > 26 && l.as_bytes()[4] == b'-' && l.contains("Z ["),
            "{l}"
        );
    }
}

#[test]
fn long_operations_print_plain_progress_lines_on_stderr_when_not_on_a_terminal() {
    let c = Cluster::new(
        "ops_progress",
        r#"
[[node]]
name = "slow"
command = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
stop_timeout_ms = 2500
"#,
    );
    c.start();
    let out = c.run(&["stop", "slow"]);
    out.ok();
    assert_eq!(out.stdout, "slow: stopped\n", "results only on stdout");
    assert!(
        out.stderr.contains("stopping slow: SIGTERM sent, ")
            && out.stderr.contains(" of 2.5 s (0/1 stopped)"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\r') && !out.stderr.contains('\x1b'),
        "plain lines: {:?}",
        out.stderr
    );
}
