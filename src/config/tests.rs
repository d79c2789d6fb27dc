use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const PATH: &str = "/etc/broctld/broctld.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(cfg) => cfg,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:#?}"),
        Err(e) => e,
    }
}

/// Asserts the error's line, key, and that its message contains `needle`.
#[track_caller]
fn assert_err(text: &str, line: usize, key: Option<&str>, needle: &str) -> ConfigError {
    let e = err(text);
    let shown = e.to_string();
    assert_eq!(e.line(), Some(line), "line of: {shown}");
    assert_eq!(e.key(), key, "key of: {shown}");
    assert!(
        shown.contains(needle),
        "{shown:?} does not contain {needle:?}"
    );
    assert!(
        shown.starts_with(&format!("{PATH}:{line}: ")),
        "{shown:?} does not start with path and line"
    );
    assert!(!shown.contains('\n'), "{shown:?} is not one line");
    e
}

/// A node with the minimal keys, as the body of a `[[node]]` table.
fn node(name: &str) -> String {
    format!("[[node]]\nname = \"{name}\"\ncommand = [\"run\"]\n")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const FULL: &str = r#"# a full configuration
[defaults]
restart = "on-failure"
stop_signal = "SIGINT"
stop_timeout_ms = 5000
autostart = false
restart_delay_ms = 200
restart_delay_max_ms = 60000
restart_delay_factor = 1.5
restart_reset_ms = 40000
give_up_after = 7
give_up_window_ms = 20000
quick_death_ms = 2000
ready_after_ms = 300
ready_fd = 4
env = { A = "from-defaults", B = "b" }

[[node]]
name = "logger-1"
type = "logger"
command = ["broctld-node", "--interval", "1s"]

[[node]]
name = "worker-1"
type = "worker"
command = ["broctld-node", "--interval", "2s"]
env = { A = "mine", CLUSTER_NODE = "worker-1" }
cwd = "/var/spool/w1"
stdout = "out.txt"
stderr = "/var/log/w1.err"
cpu_affinity = [3, 1]
start_after = ["logger-1"]
restart = "never"
stop_signal = 1
stop_timeout_ms = 1
autostart = true
restart_delay_ms = 0
restart_delay_max_ms = 0
restart_delay_factor = 3
restart_reset_ms = 0
give_up_after = 0
give_up_window_ms = 0
quick_death_ms = 0
ready_after_ms = 0
ready_fd = 1023
"#;

#[test]
fn full_config() {
    let cfg = ok(FULL);
    assert_eq!(cfg.path, PathBuf::from(PATH));
    assert_eq!(cfg.dir, PathBuf::from("/etc/broctld"));
    assert_eq!(cfg.nodes.len(), 2);

    let logger = cfg.node("logger-1").expect("logger-1");
    assert_eq!(logger.line, 18);
    assert_eq!(logger.node_type, NodeType::Logger);
    assert_eq!(logger.command, ["broctld-node", "--interval", "1s"]);
    assert_eq!(
        logger.env,
        vec![
            ("A".to_string(), "from-defaults".to_string()),
            ("B".to_string(), "b".to_string())
        ]
    );
    assert_eq!(logger.cwd, PathBuf::from("/etc/broctld/spool/logger-1"));
    assert_eq!(
        logger.stdout,
        PathBuf::from("/etc/broctld/spool/logger-1/stdout.log")
    );
    assert_eq!(
        logger.stderr,
        PathBuf::from("/etc/broctld/spool/logger-1/stderr.log")
    );
    assert!(logger.cpu_affinity.is_empty());
    assert!(logger.start_after.is_empty());
    assert_eq!(
        *logger.policy,
        Policy {
            restart: RestartPolicy::OnFailure,
            stop_signal: libc::SIGINT,
            stop_timeout: ms(5000),
            autostart: false,
            restart_delay: ms(200),
            restart_delay_max: ms(60000),
            restart_delay_factor: 1.5,
            restart_reset: ms(40000),
            give_up_after: 7,
            give_up_window: ms(20000),
            quick_death: ms(2000),
            ready_after: ms(300),
            ready_fd: Some(4),
            ready_timeout: ms(10000),
            ..Policy::default()
        }
    );

    let worker = cfg.node("worker-1").expect("worker-1");
    assert_eq!(worker.line, 23);
    assert_eq!(worker.node_type, NodeType::Worker);
    assert_eq!(
        worker.env,
        vec![
            ("A".to_string(), "mine".to_string()),
            ("B".to_string(), "b".to_string()),
            ("CLUSTER_NODE".to_string(), "worker-1".to_string()),
        ]
    );
    assert_eq!(worker.cwd, PathBuf::from("/var/spool/w1"));
    assert_eq!(worker.stdout, PathBuf::from("/var/spool/w1/out.txt"));
    assert_eq!(worker.stderr, PathBuf::from("/var/log/w1.err"));
    assert_eq!(worker.cpu_affinity, [3, 1]);
    assert_eq!(worker.start_after, ["logger-1"]);
    assert_eq!(
        *worker.policy,
        Policy {
            restart: RestartPolicy::Never,
            stop_signal: libc::SIGHUP,
            stop_timeout: ms(1),
            autostart: true,
            restart_delay: ms(0),
            restart_delay_max: ms(0),
            restart_delay_factor: 3.0,
            restart_reset: ms(0),
            give_up_after: 0,
            give_up_window: ms(0),
            quick_death: ms(0),
            ready_after: ms(0),
            ready_fd: Some(1023),
            ready_timeout: ms(10000),
            ..Policy::default()
        }
    );
    assert!(cfg.node("nope").is_none());
}

#[test]
fn builtin_defaults() {
    let cfg = ok(&node("n"));
    let n = &cfg.nodes[0];
    assert_eq!(n.node_type, NodeType::Other);
    assert_eq!(*n.policy, Policy::default());
    assert!(n.env.is_empty());
    assert_eq!(n.line, 1);
    let p = Policy::default();
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.stop_signal, libc::SIGTERM);
    assert_eq!(p.stop_timeout, ms(10_000));
    assert!(p.autostart);
    assert_eq!(p.restart_delay, ms(100));
    assert_eq!(p.restart_delay_max, ms(30_000));
    assert_eq!(p.restart_delay_factor, 2.0);
    assert_eq!(p.restart_reset, ms(30_000));
    assert_eq!(p.give_up_after, 5);
    assert_eq!(p.give_up_window, ms(10_000));
    assert_eq!(p.quick_death, ms(1_000));
    assert_eq!(p.ready_after, Duration::ZERO);
    assert_eq!(p.ready_fd, None);
}

#[test]
fn defaults_applied_and_overridden() {
    let text = format!(
        "[defaults]\nstop_timeout_ms = 777\nautostart = false\nenv = {{ X = \"1\", Y = \"2\" }}\n\n{}{}stop_timeout_ms = 5\nenv = {{ Y = \"3\", Z = \"4\" }}\n",
        node("a"),
        node("b")
    );
    let cfg = ok(&text);
    let a = cfg.node("a").unwrap();
    let b = cfg.node("b").unwrap();
    assert_eq!(a.policy.stop_timeout, ms(777));
    assert!(!a.policy.autostart);
    assert_eq!(b.policy.stop_timeout, ms(5));
    assert!(!b.policy.autostart);
    // Untouched keys keep the built-in defaults.
    assert_eq!(a.policy.restart_delay, ms(100));
    let env =
        |n: &NodeSpec| -> Vec<String> { n.env.iter().map(|(k, v)| format!("{k}={v}")).collect() };
    assert_eq!(env(a), ["X=1", "Y=2"]);
    assert_eq!(env(b), ["X=1", "Y=3", "Z=4"]);
}

#[test]
fn empty_config_has_no_nodes() {
    assert!(ok("").nodes.is_empty());
    assert!(ok("# nothing\n[defaults]\nrestart = \"never\"\n")
        .nodes
        .is_empty());
    assert!(ok("node = []").nodes.is_empty());
}

#[test]
fn env_forms() {
    // Sub-table and dotted keys work as well as inline tables.
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv.DOT = \"d\"\n[node.env.\"\"]\n";
    // An empty env name is an error, on the line of its header.
    assert_err(
        text,
        5,
        Some("env"),
        "invalid environment variable name \"\"",
    );
    let text =
        "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv.DOT = \"d\"\n\n[node.cpu_affinity]\n";
    assert_err(
        text,
        6,
        Some("cpu_affinity"),
        "expected an array of CPU numbers",
    );
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv.DOT = \"d\"\n";
    assert_eq!(ok(text).nodes[0].env, [("DOT".into(), "d".into())]);
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\n[node.env]\nQ = \"r\"\nS = 5\n";
    let e = assert_err(
        text,
        6,
        Some("env"),
        "node 'a': key 'env': value of 'S' must be a string, got 5",
    );
    assert!(matches!(e, ConfigError::Invalid { .. }));
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv = [\"A=b\"]\n";
    assert_err(text, 4, Some("env"), "expected a table of strings");
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { \"A=B\" = \"c\" }\n";
    assert_err(
        text,
        4,
        Some("env"),
        "invalid environment variable name \"A=B\"",
    );
    let text = "[[node]]\nname = \"a\"\ncommand = [\"x\"]\nenv = { A = \"nul\\u0000\" }\n";
    assert_err(text, 4, Some("env"), "must not contain a NUL byte");
}

#[test]
fn paths() {
    let text = format!(
        "{}cwd = \".\"\nstdout = \"../o.log\"\n{}cwd = \"a/./b\"\nstderr = \"/dev/null\"\n",
        node("x"),
        node("y")
    );
    let cfg = ok(&text);
    let x = cfg.node("x").unwrap();
    assert_eq!(x.cwd, PathBuf::from("/etc/broctld"));
    assert_eq!(x.stdout, PathBuf::from("/etc/broctld/../o.log"));
    let y = cfg.node("y").unwrap();
    assert_eq!(y.cwd, PathBuf::from("/etc/broctld/a/b"));
    assert_eq!(y.stderr, PathBuf::from("/dev/null"));
    assert_err(
        &format!("{}cwd = \"\"\n", node("x")),
        4,
        Some("cwd"),
        "node 'x': key 'cwd': expected a folder path, got \"\"",
    );
    assert_err(
        &format!("{}stdout = 1\n", node("x")),
        4,
        Some("stdout"),
        "expected a file path, got 1",
    );
}

#[test]
fn relative_config_path_is_made_absolute() {
    let cfg = Config::parse(&node("n"), Path::new("conf/./b.toml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(cfg.path, cwd.join("conf/b.toml"));
    assert_eq!(cfg.dir, cwd.join("conf"));
    assert_eq!(cfg.nodes[0].cwd, cwd.join("conf/spool/n"));
    // Messages use the path as given.
    let e = Config::parse("bogus = 1", Path::new("conf/b.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "conf/b.toml:1: unknown key 'bogus' at the top level"
    );
}

#[test]
fn spec_message_examples() {
    // The three examples of the message format.
    let text =
        "[[node]]\nname = \"worker-1\"\ncommand = [\"x\"]\n\n\n\n\n\n\n\n\nstop_timeout_ms = -5\n";
    let e = err(text);
    assert_eq!(
        e.to_string(),
        "/etc/broctld/broctld.toml:12: node 'worker-1': key 'stop_timeout_ms': expected a positive number of milliseconds, got -5"
    );
    assert_eq!(e.line(), Some(12));
    assert_eq!(e.key(), Some("stop_timeout_ms"));

    let text = "[defaults]\n\n[[node]]\nname = \"a\"\n\n\ncomand = [\"x\"]\n";
    let e = Config::parse(text, Path::new("examples/broctld.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "examples/broctld.toml:7: unknown key 'comand' in [[node]] (did you mean 'command'?)"
    );
    assert_eq!(e.line(), Some(7));
    assert_eq!(e.key(), Some("comand"));

    let mut text = "\n".repeat(7);
    text.push_str("[[node]]\nname = \"worker-1\"\ncommand = [\"x\"]\n");
    text.push_str(&"\n".repeat(8));
    text.push_str("[[node]]\nname = \"worker-1\"\ncommand = [\"y\"]\n");
    let e = Config::parse(&text, Path::new("x.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "x.toml:20: duplicate node name 'worker-1' (first defined on line 9)"
    );
    assert_eq!(e.key(), Some("name"));
}

#[test]
fn unknown_keys() {
    assert_err(
        "nodes = 1\n",
        1,
        Some("nodes"),
        "unknown key 'nodes' at the top level (did you mean 'node'?)",
    );
    assert_err(
        "\n[default]\nrestart = \"always\"\n",
        2,
        Some("default"),
        "unknown key 'default' at the top level (did you mean 'defaults'?)",
    );
    assert_err(
        "[defaults]\nrestart = \"always\"\nstop_timout_ms = 3\n",
        3,
        Some("stop_timout_ms"),
        "unknown key 'stop_timout_ms' in [defaults] (did you mean 'stop_timeout_ms'?)",
    );
    let e = assert_err(
        "[defaults]\ncommand = [\"x\"]\n",
        2,
        Some("command"),
        "key 'command' is not allowed in [defaults]; set it in each [[node]]",
    );
    assert!(!e.to_string().contains("did you mean"));
    // No suggestion when nothing is close.
    let e = assert_err(
        &format!("{}\nwhatever = 1\n", node("a")),
        5,
        Some("whatever"),
        "unknown key 'whatever' in [[node]]",
    );
    assert!(!e.to_string().contains("did you mean"), "{e}");
    // A transposition counts as one edit; case is ignored.
    assert_err(
        &format!("{}tpye = \"worker\"\n", node("a")),
        4,
        Some("tpye"),
        "(did you mean 'type'?)",
    );
    assert_err(
        &format!("{}Command = [\"x\"]\n", node("a")),
        4,
        Some("Command"),
        "(did you mean 'command'?)",
    );
    // Unknown keys are found before the name is checked; a missing name is a mistake of its
    // own, reported too.
    let e = err("[[node]]\nbogus = 1\n");
    assert_eq!(e.line(), Some(2));
    assert_eq!(e.key(), Some("bogus"));
    assert_eq!(
        e.to_string(),
        format!("{PATH}:2: unknown key 'bogus' in [[node]]\n{PATH}:1: [[node]]: missing required key 'name'")
    );
    // A misspelled required key is not reported missing as well.
    assert_err(
        "[[node]]\nnmae = \"a\"\ncommand = [\"x\"]\n",
        2,
        Some("nmae"),
        "(did you mean 'name'?)",
    );
}

#[test]
fn every_mistake_of_a_file_is_reported_each_with_its_line() {
    let text = "[defaults]\nrestart = \"sometimes\"\nstop_timeout_ms = -1\n\n[[node]]\nname = \"a\"\ncommand = [\"x\"]\ntype = \"wroker\"\n\n[[node]]\nname = \"b\"\ncomand = [\"y\"]\nstart_after = [\"c\"]\n";
    let e = err(text);
    let lines: Vec<Option<usize>> = e.each().iter().map(|x| x.line()).collect();
    assert_eq!(
        lines,
        [Some(2), Some(3), Some(8), Some(12), Some(13)],
        "{e}"
    );
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 5, "{shown}");
    assert!(shown.contains(":8: node 'a': key 'type'"), "{shown}");
    assert!(shown.contains("did you mean 'worker'"), "{shown}");
    assert!(
        shown.contains(":13: node 'b': key 'start_after': unknown node 'c'"),
        "{shown}"
    );
    assert!(!shown.contains("missing required key 'command'"), "{shown}");
    // At most MAX_ERRORS are kept; the rest are counted.
    let many: String = (0..30).map(|i| format!("bad{i} = 1\n")).collect();
    match err(&many) {
        ConfigError::Several { errors, more } => {
            assert_eq!(errors.len(), MAX_ERRORS);
            assert_eq!(more, 30 - MAX_ERRORS);
        }
        other => panic!("expected several errors, got {other}"),
    }
    assert!(err(&many)
        .to_string()
        .ends_with("(and 10 more mistake(s) not shown)"));
}

#[test]
fn did_you_mean_helper() {
    assert_eq!(edit_distance("comand", "command"), 1);
    assert_eq!(edit_distance("tpye", "type"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(suggest("resart", node_keys()), Some("restart"));
    assert_eq!(suggest("xyz", node_keys()), None);
    assert_eq!(
        suggest("on_failure", ["always", "on-failure", "never"]),
        Some("on-failure")
    );
}

#[test]
fn required_keys_and_names() {
    assert_err(
        "\n[[node]]\ncommand = [\"x\"]\n",
        2,
        Some("name"),
        "[[node]]: missing required key 'name'",
    );
    assert_err(
        "[[node]]\nname = \"a\"\n",
        1,
        Some("command"),
        "node 'a': missing required key 'command'",
    );
    assert_err(
        "[[node]]\nname = \"a b\"\ncommand = [\"x\"]\n",
        2,
        Some("name"),
        "[[node]]: key 'name': expected 1 to 48 of the characters",
    );
    assert_err(
        "[[node]]\nname = 5\ncommand = [\"x\"]\n",
        2,
        Some("name"),
        "got 5",
    );
    assert_err(&node(&"n".repeat(49)), 2, Some("name"), "key 'name'");
    ok(&node(&"n".repeat(48)));
    assert_err(&node(".."), 2, Some("name"), "key 'name'");
    assert_err(&node(""), 2, Some("name"), "got \"\"");
}

#[test]
fn valid_names() {
    for good in [
        "a",
        "worker-1",
        "A_b.c-D",
        "0",
        &"x".repeat(48),
        ".a",
        "...",
    ] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [
        "",
        " ",
        "a b",
        "é",
        "a/b",
        &"x".repeat(49),
        ".",
        "..",
        "a\0",
    ] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn command_errors() {
    let base = "[[node]]\nname = \"a\"\n";
    assert_err(&format!("{base}command = []\n"), 3, Some("command"), "node 'a': key 'command': expected a non-empty array of strings (the program and its arguments), got []");
    assert_err(
        &format!("{base}command = \"run\"\n"),
        3,
        Some("command"),
        "got \"run\"",
    );
    // An element error names the element's line.
    assert_err(
        &format!("{base}command = [\n  \"run\",\n  \"--n\",\n  5,\n]\n"),
        6,
        Some("command"),
        "argument 2 must be a string, got 5",
    );
    assert_err(
        &format!("{base}command = [\"\"]\n"),
        3,
        Some("command"),
        "the program (first element) is empty",
    );
    assert_err(
        &format!("{base}command = [\"a\", \"b\\u0000\"]\n"),
        3,
        Some("command"),
        "argument 1 contains a NUL byte",
    );
    // Empty arguments after the program are fine.
    assert_eq!(
        ok(&format!("{base}command = [\"a\", \"\"]\n")).nodes[0].command,
        ["a", ""]
    );
}

#[test]
fn value_errors() {
    let n = node("w");
    let cases: &[(&str, &str, &str)] = &[
        ("type = \"workr\"", "type", "expected one of 'standalone', 'manager', 'logger', 'proxy', 'worker', 'other', got \"workr\" (did you mean 'worker'?)"),
        ("type = 4", "type", "got 4"),
        ("restart = \"on_failure\"", "restart", "expected one of 'always', 'on-failure', 'never', got \"on_failure\" (did you mean 'on-failure'?)"),
        ("restart = true", "restart", "got true"),
        ("stop_signal = \"TREM\"", "stop_signal", "expected a signal name such as \"TERM\" or a number from 1 to 64, got \"TREM\" (did you mean 'TERM'?)"),
        ("stop_signal = 0", "stop_signal", "got 0"),
        ("stop_signal = 65", "stop_signal", "got 65"),
        ("stop_signal = 1.5", "stop_signal", "got 1.5"),
        ("stop_timeout_ms = 0", "stop_timeout_ms", "expected a positive number of milliseconds, got 0"),
        ("stop_timeout_ms = \"10s\"", "stop_timeout_ms", "expected a positive number of milliseconds, got \"10s\""),
        ("stop_timeout_ms = 1e3", "stop_timeout_ms", "got 1000.0"),
        ("stop_timeout_ms = 31536000001", "stop_timeout_ms", "expected at most 31536000000 milliseconds (365 days), got 31536000001"),
        ("autostart = \"yes\"", "autostart", "expected true or false, got \"yes\""),
        ("restart_delay_ms = -1", "restart_delay_ms", "expected a non-negative number of milliseconds, got -1"),
        ("restart_delay_factor = 0.5", "restart_delay_factor", "expected a finite number >= 1.0, got 0.5"),
        ("restart_delay_factor = inf", "restart_delay_factor", "expected a finite number >= 1.0, got inf"),
        ("restart_delay_factor = nan", "restart_delay_factor", "got NaN"),
        ("restart_delay_factor = \"2\"", "restart_delay_factor", "expected a number >= 1.0, got \"2\""),
        ("restart_reset_ms = -3", "restart_reset_ms", "got -3"),
        ("give_up_after = -1", "give_up_after", "expected a whole number from 0 to 4294967295, got -1"),
        ("give_up_after = 4294967296", "give_up_after", "got 4294967296"),
        ("give_up_window_ms = false", "give_up_window_ms", "got false"),
        ("quick_death_ms = []", "quick_death_ms", "got an array"),
        ("ready_after_ms = {}", "ready_after_ms", "got a table"),
        ("ready_fd = 2", "ready_fd", "expected a file descriptor number from 3 to 1023, got 2"),
        ("ready_fd = 1024", "ready_fd", "got 1024"),
        ("cpu_affinity = [0, 1024]", "cpu_affinity", "expected CPU numbers from 0 to 1023, got 1024"),
        ("cpu_affinity = [-1]", "cpu_affinity", "got -1"),
        ("cpu_affinity = [1, 1]", "cpu_affinity", "CPU 1 is listed twice"),
        ("cpu_affinity = 1", "cpu_affinity", "expected an array of CPU numbers such as [0, 1], got 1"),
        ("start_after = \"x\"", "start_after", "expected an array of node names, got \"x\""),
        ("start_after = [\"w\"]", "start_after", "a node cannot start after itself"),
        ("start_after = [\"a b\"]", "start_after", "invalid node name \"a b\""),
        ("start_after = [1]", "start_after", "expected node names, got 1"),
        ("cwd = 1979-05-27", "cwd", "got a date-time (1979-05-27)"),
    ];
    for (line, key, needle) in cases {
        let text = format!("{n}\n{line}\n");
        let e = assert_err(&text, 5, Some(key), needle);
        assert!(
            e.to_string().contains(&format!("node 'w': key '{key}': ")),
            "{e}"
        );
    }
    // The same checks apply in [defaults], with its own prefix.
    let e = assert_err(
        "[defaults]\n\nstop_timeout_ms = -5\n",
        3,
        Some("stop_timeout_ms"),
        "[defaults]: key 'stop_timeout_ms': expected a positive number of milliseconds, got -5",
    );
    assert_eq!(e.to_string(), "/etc/broctld/broctld.toml:3: [defaults]: key 'stop_timeout_ms': expected a positive number of milliseconds, got -5");
    assert_err(
        "[defaults]\nenv = { A = 1 }\n",
        2,
        Some("env"),
        "[defaults]: key 'env': value of 'A' must be a string, got 1",
    );
}

#[test]
fn accepted_values() {
    let n = node("w");
    let signal = |v: &str| {
        ok(&format!("{n}stop_signal = {v}\n")).nodes[0]
            .policy
            .stop_signal
    };
    assert_eq!(signal("\"TERM\""), libc::SIGTERM);
    assert_eq!(signal("\"SIGKILL\""), libc::SIGKILL);
    assert_eq!(signal("\"usr1\""), libc::SIGUSR1);
    assert_eq!(signal("\"QUIT\""), libc::SIGQUIT);
    assert_eq!(signal("\"9\""), 9);
    assert_eq!(signal("40"), 40);
    let factor = |v: &str| {
        ok(&format!("{n}restart_delay_factor = {v}\n")).nodes[0]
            .policy
            .restart_delay_factor
    };
    assert_eq!(factor("1"), 1.0);
    assert_eq!(factor("1.0"), 1.0);
    assert_eq!(factor("2.5"), 2.5);
    let t = |v: &str| ok(&format!("{n}type = \"{v}\"\n")).nodes[0].node_type;
    for ty in NodeType::ALL {
        assert_eq!(t(ty.as_str()), ty);
    }
    let r = |v: &str| {
        ok(&format!("{n}restart = \"{v}\"\n")).nodes[0]
            .policy
            .restart
    };
    assert_eq!(r("always"), RestartPolicy::Always);
    assert_eq!(r("on-failure"), RestartPolicy::OnFailure);
    assert_eq!(r("never"), RestartPolicy::Never);
}

#[test]
fn delay_cap_must_not_be_below_first_delay() {
    assert_err(
        "[defaults]\nrestart_delay_max_ms = 50\n",
        2,
        Some("restart_delay_max_ms"),
        "[defaults]: key 'restart_delay_max_ms': must not be smaller than restart_delay_ms (100), got 50",
    );
    // A node raising the first delay above the cap of [defaults].
    assert_err(
        &format!("[defaults]\nrestart_delay_max_ms = 500\n{}restart_delay_ms = 501\n", node("a")),
        6,
        Some("restart_delay_ms"),
        "node 'a': key 'restart_delay_ms': must not be larger than restart_delay_max_ms (500), got 501",
    );
    // A node lowering both is fine.
    ok(&format!(
        "{}restart_delay_ms = 5\nrestart_delay_max_ms = 5\n",
        node("a")
    ));
}

#[test]
fn duplicates() {
    let text = format!("{}{}{}", node("a"), node("b"), node("a"));
    assert_err(
        &text,
        8,
        Some("name"),
        "duplicate node name 'a' (first defined on line 2)",
    );
    // A duplicate TOML key is a TOML error, with its key.
    let e = assert_err(
        "[[node]]\nname = \"a\"\nname = \"b\"\n",
        3,
        Some("name"),
        "invalid TOML: duplicate key `name`",
    );
    assert!(matches!(e, ConfigError::Invalid { .. }));
}

#[test]
fn start_after_checks() {
    // Forward references are fine.
    let text = format!("{}start_after = [\"b\"]\n{}", node("a"), node("b"));
    assert_eq!(ok(&text).nodes[0].start_after, ["b"]);

    let text = format!(
        "{}start_after = [\"b\", \"wroker\"]\n{}",
        node("a"),
        node("b")
    );
    assert_err(
        &text,
        4,
        Some("start_after"),
        "node 'a': key 'start_after': unknown node 'wroker'",
    );
    let text = format!(
        "{}{}start_after = [\n  \"worker-1\",\n  \"worker-2\",\n]\n",
        node("worker-1"),
        node("c")
    );
    assert_err(
        &text,
        9,
        Some("start_after"),
        "unknown node 'worker-2' (did you mean 'worker-1'?)",
    );
    let text = format!("{}start_after = [\"a\", \"a\"]\n{}", node("b"), node("a"));
    assert_err(&text, 4, Some("start_after"), "'a' is listed twice");
}

#[test]
fn start_after_cycles() {
    // c -> a -> b -> c; reported at a (the first in the file) on its element naming b.
    let text = format!(
        "{}start_after = [\"b\"]\n{}start_after = [\"c\"]\n{}start_after = [\"z\", \"a\"]\n{}",
        node("a"),
        node("b"),
        node("c"),
        node("z")
    );
    assert_err(
        &text,
        4,
        Some("start_after"),
        "node 'a': key 'start_after': cycle a -> b -> c -> a (each node starts after the next)",
    );
    let text = format!(
        "{}{}start_after = [\"x\"]\n{}start_after = [\"y\"]\n",
        node("z"),
        node("y"),
        node("x")
    );
    assert_err(
        &text,
        7,
        Some("start_after"),
        "node 'y': key 'start_after': cycle y -> x -> y",
    );
    // A diamond is not a cycle.
    let text = format!(
        "{}{}start_after = [\"a\"]\n{}start_after = [\"a\"]\n{}start_after = [\"b\", \"c\"]\n",
        node("a"),
        node("b"),
        node("c"),
        node("d")
    );
    ok(&text);
}

#[test]
fn find_cycle_on_long_chain() {
    // A long chain must not overflow the stack; closing it makes a cycle.
    let n = 100_000;
    let mut edges: Vec<Vec<usize>> = (0..n)
        .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
        .collect();
    assert_eq!(find_cycle(&edges), None);
    edges[n - 1].push(5);
    let cycle = find_cycle(&edges).unwrap();
    assert_eq!(cycle.len(), n - 5);
    assert_eq!(cycle[0], 5);
}

#[test]
fn structure_errors() {
    assert_err("[node]\nname = \"a\"\n", 1, Some("node"), "key 'node': expected an array of tables ([[node]]), got a table (write [[node]], not [node])");
    assert_err("node = 3\n", 1, Some("node"), "got 3");
    assert_err("node = [1]\n", 1, Some("node"), "got an array holding 1");
    assert_err(
        "defaults = 3\n",
        1,
        Some("defaults"),
        "key 'defaults': expected a table ([defaults]), got 3",
    );
    // Inline tables in an array are nodes too.
    let cfg = ok("node = [\n  { name = \"a\", command = [\"x\"] },\n  { name = \"b\", command = [\"y\"] },\n]\n");
    assert_eq!(cfg.nodes[1].line, 3);
    assert_err("node = [\n  { name = \"a\", command = [\"x\"] },\n  { name = \"b\", comand = [\"y\"] },\n]\n", 3, Some("comand"), "did you mean 'command'?");
}

#[test]
fn toml_syntax_errors() {
    let e = assert_err(
        "[[node]]\nname = \"a\ncommand = [\"x\"]\n",
        2,
        None,
        "invalid TOML: ",
    );
    assert!(matches!(e, ConfigError::Invalid { key: None, .. }));
    assert_err(
        "[defaults]\nrestart = \"always\"\n[defaults]\n",
        3,
        Some("defaults"),
        "duplicate key `defaults`",
    );
    assert_err("a b c\n", 1, None, "invalid TOML");
}

#[test]
fn crlf_line_numbers() {
    let text = "[[node]]\r\nname = \"a\"\r\ncommand = [\"x\"]\r\nbogus = 1\r\n";
    assert_err(text, 4, Some("bogus"), "unknown key 'bogus'");
}

#[test]
fn io_errors() {
    let path = Path::new("does-not-exist/broctld.toml");
    let e = Config::load(path).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert_eq!(e.line(), None);
    assert_eq!(e.key(), None);
    assert_eq!(
        e.to_string(),
        "cannot read config file does-not-exist/broctld.toml: No such file or directory (os error 2)"
    );
    fn is_send_sync<T: Send + Sync + 'static + std::error::Error>() {}
    is_send_sync::<ConfigError>();
}

#[test]
fn load_reads_the_file() {
    let dir = std::env::temp_dir().join(format!("broctld-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("b.toml");
    std::fs::write(&path, node("n")).unwrap();
    let cfg = Config::load(&path).unwrap();
    assert_eq!(cfg.nodes[0].cwd, dir.join("spool/n"));
    std::fs::write(&path, "bad = 1").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}:1: unknown key 'bad' at the top level", path.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const EXAMPLE: &str = include_str!("../../examples/broctld.toml");

#[test]
fn example_config_parses() {
    let cfg = Config::parse(EXAMPLE, Path::new("/opt/broctld/broctld.toml")).unwrap();
    let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["logger-1", "manager", "proxy-1", "worker-1", "worker-2"]
    );
    for n in &cfg.nodes {
        assert_eq!(n.command[0], "broctld-node");
        assert_eq!(
            n.cwd,
            PathBuf::from(format!("/opt/broctld/spool/{}", n.name))
        );
        assert!(n
            .env
            .contains(&("CLUSTER_NODE".to_string(), n.name.clone())));
    }
    let types: Vec<NodeType> = cfg.nodes.iter().map(|n| n.node_type).collect();
    assert_eq!(
        types,
        [
            NodeType::Logger,
            NodeType::Manager,
            NodeType::Proxy,
            NodeType::Worker,
            NodeType::Worker
        ]
    );
    assert_eq!(cfg.node("worker-1").unwrap().cpu_affinity, [0]);
    assert_eq!(cfg.node("worker-2").unwrap().cpu_affinity, [1]);
    assert_eq!(
        cfg.node("worker-2").unwrap().policy.stop_signal,
        libc::SIGINT
    );
    assert_eq!(cfg.node("manager").unwrap().policy.stop_timeout, ms(20_000));
}

/// The nodes with their header lines blanked (they differ in a re-rendered file).
fn without_lines(cfg: &Config) -> Vec<NodeSpec> {
    cfg.nodes
        .iter()
        .cloned()
        .map(|mut n| {
            n.line = 0;
            n
        })
        .collect()
}

#[track_caller]
fn assert_round_trip(cfg: &Config) {
    let text = cfg.to_toml();
    let back = match Config::parse(&text, &cfg.path) {
        Ok(back) => back,
        Err(e) => panic!("{e}\n{text}"),
    };
    assert_eq!(back.path, cfg.path);
    assert_eq!(back.dir, cfg.dir);
    assert_eq!(without_lines(&back), without_lines(cfg), "{text}");
    // Rendering is stable.
    assert_eq!(back.to_toml(), text);
}

#[test]
fn to_toml_round_trip() {
    assert_round_trip(&ok(FULL));
    assert_round_trip(&ok(""));
    assert_round_trip(&Config::parse(EXAMPLE, Path::new("/opt/broctld/broctld.toml")).unwrap());
    let odd = r#"
[defaults]
stop_signal = 40
restart_delay_factor = 1.1
env = { "WITH SPACE" = "a \"quoted\" \\ value", "dotted.name" = "ünïcödé", EMPTY = "" }

[[node]]
name = "a.b_c-D"
command = ["sh", "-c", "echo 'hi' \"there\"\n\tdone\u0001\u007f\r", ""]
cwd = "weird dir/it's"
stdout = "o'\"ut.log"
"#;
    let cfg = ok(odd);
    assert_eq!(cfg.nodes[0].policy.stop_signal, 40);
    assert_round_trip(&cfg);
}

#[test]
fn to_toml_writes_every_key() {
    let cfg = ok(&node("n"));
    let text = cfg.to_toml();
    let optional = [
        "ready_fd",
        "user",
        "group",
        "umask",
        "rlimit_nofile",
        "rlimit_core",
        "rlimit_memlock",
        "nice",
        "memory_max",
        "capabilities",
        "ready_file",
        // The rendered config is one host's: its nodes' host is implied.
        "host",
        "pid_file",
        "clear_env",
        "ready",
        "watchdog_ms",
        "ready_check",
    ];
    for key in node_keys() {
        if !optional.contains(&key) {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing in\n{text}"
            );
        }
    }
    assert!(text.contains("stop_signal = \"TERM\"\n"), "{text}");
    assert!(text.contains("restart_delay_factor = 2.0\n"), "{text}");
    let with_fd = ok(&format!("{}ready_fd = 3\n", node("n"))).to_toml();
    assert!(with_fd.contains("\nready_fd = 3\n"), "{with_fd}");
}

#[test]
fn node_type_api() {
    assert_eq!(NodeType::ALL.len(), 6);
    for (i, t) in NodeType::ALL.into_iter().enumerate() {
        assert_eq!(usize::from(t.code()), i);
        assert_eq!(NodeType::from_code(t.code()), Some(t));
        assert_eq!(NodeType::parse(t.as_str()), Some(t));
        assert_eq!(t.to_string(), t.as_str());
    }
    assert_eq!(NodeType::from_code(6), None);
    assert_eq!(NodeType::parse("Worker"), None);
    assert_eq!(NodeType::Worker as u8, 4);
    let plurals: Vec<&str> = NodeType::ALL.iter().map(|t| t.plural()).collect();
    assert_eq!(
        plurals,
        [
            "standalones",
            "managers",
            "loggers",
            "proxies",
            "workers",
            "others"
        ]
    );
    let ranks: Vec<u8> = NodeType::ALL.iter().map(|t| t.start_rank()).collect();
    assert_eq!(ranks, [1, 1, 0, 2, 3, 4]);
}

#[test]
fn restart_policy_api() {
    for p in [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ] {
        assert_eq!(RestartPolicy::parse(p.as_str()), Some(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert_eq!(RestartPolicy::OnFailure.as_str(), "on-failure");
    assert_eq!(RestartPolicy::parse("sometimes"), None);
}

#[test]
fn signals() {
    assert_eq!(signal_from_name("TERM"), Some(libc::SIGTERM));
    assert_eq!(signal_from_name("SIGTERM"), Some(libc::SIGTERM));
    assert_eq!(signal_from_name("sigint"), Some(libc::SIGINT));
    assert_eq!(signal_from_name(" HUP "), Some(libc::SIGHUP));
    for name in ["TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2"] {
        let n = signal_from_name(name).unwrap();
        assert_eq!(signal_name(n), name);
    }
    assert_eq!(signal_from_name("15"), Some(15));
    assert_eq!(signal_from_name("0"), None);
    assert_eq!(signal_from_name("65"), None);
    assert_eq!(signal_from_name("SIG"), None);
    assert_eq!(signal_from_name(""), None);
    assert_eq!(signal_from_name("-1"), None);
    assert_eq!(signal_from_name("BOGUS"), None);
    assert_eq!(signal_name(libc::SIGKILL), "KILL");
    assert_eq!(signal_name(libc::SIGSEGV), "SEGV");
    assert_eq!(signal_name(40), "40");
    assert_eq!(signal_from_name(&signal_name(40)), Some(40));
}

#[test]
fn accounts_umask_and_rlimits_parse_and_round_trip() {
    let cfg = ok(r#"
[defaults]
umask = "027"
rlimit_core = "unlimited"
[[node]]
name = "n"
command = ["x"]
user = "root"
group = "root"
rlimit_nofile = 4096
rlimit_memlock = 0
log_max_bytes = 1024
log_keep = 2
"#);
    let p = &cfg.nodes[0].policy;
    assert_eq!(p.umask, Some(0o027));
    assert_eq!(p.rlimit_core, Some(u64::MAX));
    assert_eq!(p.rlimit_nofile, Some(4096));
    assert_eq!(p.user.as_deref(), Some("root"));
    assert_eq!((p.log_max_bytes, p.log_keep), (1024, 2));
    assert_round_trip(&cfg);
}

#[test]
fn unknown_user_and_bad_umask_name_line_and_key() {
    let e = err("[[node]]\nname = \"n\"\ncommand = [\"x\"]\nuser = \"no-such-user-xyz\"\n");
    assert_eq!((e.line(), e.key()), (Some(4), Some("user")));
    assert!(
        e.to_string().contains("no such user 'no-such-user-xyz'"),
        "{e}"
    );
    let e = err("[[node]]\nname = \"n\"\ncommand = [\"x\"]\numask = \"999\"\n");
    assert_eq!((e.line(), e.key()), (Some(4), Some("umask")));
}

#[test]
fn pid_file_is_read_rendered_and_refused_when_not_a_string() {
    let cfg = ok(&format!("{}pid_file = \"run/d.pid\"\n", node("n")));
    assert_eq!(
        cfg.nodes[0].policy.pid_file.as_deref(),
        Some(Path::new("run/d.pid"))
    );
    assert!(cfg.to_toml().contains("pid_file = \"run/d.pid\""));
    assert_round_trip(&cfg);
    let e = Config::parse(
        &format!("{}pid_file = 3\n", node("n")),
        Path::new("/etc/broctld/broctld.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("pid_file") && e.contains("broctld.toml:"), "{e}");
}

#[test]
fn path_and_inherit_env_are_read_and_clear_env_is_refused_naming_what_replaced_it() {
    let cfg = ok(&format!(
        "{}path = \"/opt/x/bin:/bin\"\ninherit_env = [\"TZ\", \"LANG\"]\n",
        node("n")
    ));
    assert_eq!(cfg.nodes[0].policy.path, "/opt/x/bin:/bin");
    assert_eq!(cfg.nodes[0].policy.inherit_env, ["TZ", "LANG"]);
    assert_round_trip(&cfg);
    assert_eq!(ok(&node("n")).nodes[0].policy.path, DEFAULT_PATH);
    let err = |text: &str| {
        Config::parse(text, Path::new("/etc/broctld/broctld.toml"))
            .unwrap_err()
            .to_string()
    };
    let e = err(&format!("{}clear_env = true\n", node("n")));
    assert!(e.contains("clear_env") && e.contains("inherit_env"), "{e}");
    let e = err(&format!("{}inherit_env = [\"A=B\"]\n", node("n")));
    assert!(
        e.contains("inherit_env") && e.contains("broctld.toml:"),
        "{e}"
    );
}

#[test]
fn ready_notify_and_watchdog_are_read_and_rendered() {
    let cfg = ok(&format!(
        "{}ready = \"notify\"\nwatchdog_ms = 500\n",
        node("n")
    ));
    assert!(cfg.nodes[0].policy.notify);
    assert_eq!(cfg.nodes[0].policy.watchdog, Duration::from_millis(500));
    assert_round_trip(&cfg);
    let e = Config::parse(
        &format!("{}ready = \"fd\"\n", node("n")),
        Path::new("/etc/broctld/broctld.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ready") && e.contains("notify"), "{e}");
}

#[test]
fn ready_check_and_ready_timeout_action_are_read_and_rendered() {
    let cfg = ok(&format!(
        "{}ready_check = [\"redis-cli\", \"ping\"]\nready_check_interval_ms = 100\nready_timeout_action = \"fail\"\n",
        node("n")
    ));
    let p = &cfg.nodes[0].policy;
    assert_eq!(p.ready_check, ["redis-cli", "ping"]);
    assert_eq!(p.ready_check_interval, Duration::from_millis(100));
    assert_eq!(p.ready_timeout_action, ReadyTimeoutAction::Fail);
    assert_round_trip(&cfg);
    let e = Config::parse(
        &format!("{}ready_timeout_action = \"retry\"\n", node("n")),
        Path::new("/etc/broctld/broctld.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("ready_timeout_action") && e.contains("\"fail\""),
        "{e}"
    );
}
