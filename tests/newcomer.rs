//! A newcomer's first hour (issue 19), as real invocations: README's samples against what the
//! program prints, `--help` and README saying the same thing, and a command line that never
//! panics or misleads (arguments that are not UTF-8, a closed stdout, a runtime dir that is not
//! one, node names that are selectors, a config too big to start, `events -f` at a shutdown,
//! events across a reload, a full disk under the running config).

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

/// The lines of README's sample that follows the line `$ COMMAND`, up to the next `$ ` line
/// or the end of its code block.
fn sample_after(readme: &str, command: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != command);
    assert!(lines.next().is_some(), "README shows no `{command}` sample");
    lines
        .take_while(|l| !l.starts_with("$ ") && !l.starts_with("```"))
        .map(str::to_owned)
        .collect()
}

/// `text` with every run of digits replaced by `N` (pids, times).
fn digits_masked(text: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// A `broctld` run with no config around and a runtime dir of its own.
fn bare(dir: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(broctld_bin())
        .args(args)
        .current_dir(dir)
        .env("BROCTLD_RUNTIME_DIR", dir.join("run"))
        .stdin(Stdio::null())
        .output()
        .expect("run broctld")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("broctld-newcomer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn readme_samples_are_what_the_program_prints() {
    let readme = readme();
    // The first sentence is --help's first line.
    let first = readme
        .lines()
        .skip_while(|l| !l.starts_with("A process supervisor"))
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace("**", "");
    let first = first.split(". ").next().unwrap().trim_end_matches('.');
    let dir = scratch("readme");
    for flag in ["--help", "-h"] {
        let help = bare(&dir, &[flag.as_ref()]);
        assert_eq!(help.status.code(), Some(0));
        let help = text(&help.stdout);
        assert_eq!(
            help.lines().next().unwrap().trim_end_matches('.'),
            first,
            "{flag}"
        );
    }

    // The typo's tip, word for word.
    let tip = readme
        .lines()
        .find(|l| l.contains("tip: some similar"))
        .expect("README shows the typo's tip")
        .trim()
        .to_owned();
    let typo = bare(&dir, &["stauts".as_ref()]);
    assert_eq!(typo.status.code(), Some(2));
    let err = text(&typo.stderr);
    assert!(err.contains("unrecognized subcommand 'stauts'"), "{err}");
    assert!(
        err.lines().any(|l| l.trim() == tip),
        "README: {tip}\nreal: {err}"
    );

    // Every command of README's table is one the program has, and the other way round.
    let table: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(['`', ' ']).next())
        .map(str::to_owned)
        .collect();
    let help = text(&bare(&dir, &["--help".as_ref()]).stdout);
    let listed: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut a = table.clone();
    let mut b = listed.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "README's command table against --help");

    // The quick start's session: `start` lists the example's nodes as README does (loggers
    // first), `exit` says what README says, and `status --json` has README's fields.
    let c = Cluster::example("readme_quick");
    let out = c.run_with_input(&[], Some("start\nexit\n"));
    out.ok();
    let shown: Vec<String> = sample_after(&readme, "broctld[default|no supervisor]> start")
        .into_iter()
        .take_while(|l| !l.starts_with("broctld["))
        .collect();
    let real: Vec<String> = out
        .stdout
        .lines()
        .map(|l| l.rsplit("]> ").next().unwrap().to_owned())
        .filter(|l| shown.iter().any(|s| digits_masked(s) == digits_masked(l)))
        .collect();
    let shown: Vec<String> = shown
        .iter()
        .map(|l| l.replace("'default'", &format!("'{}'", c.instance)))
        .collect();
    let real_masked: Vec<String> = out
        .stdout
        .lines()
        .map(|l| digits_masked(l.rsplit("]> ").next().unwrap()))
        .collect();
    for s in &shown {
        assert!(
            real_masked.contains(&digits_masked(s)),
            "README's `{s}` is not printed:\n{}",
            out.stdout
        );
    }
    let order = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split_once(": running").map(|(n, _)| n.to_owned()))
            .collect()
    };
    assert_eq!(order(&shown), order(&real), "start order:\n{}", out.stdout);
    let detached = sample_after(&readme, "broctld[default|attached]> exit");
    assert!(
        out.stdout.contains(detached[0].as_str()),
        "README: {}\nreal:\n{}",
        detached[0],
        out.stdout
    );
    let json_sample = sample_after(&readme, "$ ./target/release/broctld status worker-1 --json");
    let sample: serde_json::Value = serde_json::from_str(&json_sample.join("\n")).unwrap();
    let real = c.run(&["status", "worker-1", "--json"]);
    real.ok();
    let real: serde_json::Value = serde_json::from_str(&real.stdout).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v[0].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(keys(&sample), keys(&real), "status --json fields");
    for k in ["name", "type", "state", "restarts", "last_exit", "verified"] {
        assert_eq!(sample[0][k], real[0][k], "{k}");
    }
    c.run(&["shutdown"]).ok();

    // The Zeek example's `start`, in the order README shows.
    let zeek = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zeek/zeek.conf");
    let z = Cluster::new("readme_zeek", "");
    let out = Command::new(broctld_bin())
        .arg("--runtime-dir")
        .arg(&z.runtime)
        .args(["--instance", &z.instance, "--config"])
        .arg(&zeek)
        .arg("start")
        .env_remove("BROCTLD_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let shutdown = Command::new(broctld_bin())
        .arg("--runtime-dir")
        .arg(&z.runtime)
        .args(["--instance", &z.instance, "--config"])
        .arg(&zeek)
        .arg("shutdown")
        .env_remove("BROCTLD_RUNTIME_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert_eq!(shutdown.status.code(), Some(0));
    let shown = sample_after(
        &readme,
        "$ ./target/debug/broctld --config examples/zeek/zeek.conf start",
    );
    let shown: Vec<String> = shown
        .into_iter()
        .filter(|l| l.contains(": running"))
        .collect();
    let real: Vec<String> = stdout
        .lines()
        .filter(|l| l.contains(": running"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        order(&shown),
        order(&real),
        "Zeek example start order:\n{stdout}"
    );
    // And the order is the one the nodes really started in: their pids rise.
    let pids: Vec<u32> = real
        .iter()
        .filter_map(|l| l.rsplit("(pid ").next()?.trim_end_matches(')').parse().ok())
        .collect();
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_offer_no_internal_mode() {
    let dir = scratch("completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = bare(&dir, &["completions".as_ref(), shell.as_ref()]);
        assert_eq!(out.status.code(), Some(0));
        let script = text(&out.stdout);
        assert!(script.contains("upgrade-supervisor"), "{shell}");
        for word in ["__supervisor", "__guardian"] {
            // `upgrade__subcmd__supervisor` is bash's name for upgrade-supervisor.
            let offered = script
                .match_indices(word)
                .any(|(i, _)| !script[..i].ends_with("subcmd"));
            assert!(!offered, "{shell} completion offers {word}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_no_config_check_and_logs_name_where_one_can_be() {
    let dir = scratch("noconfig");
    for args in [&["check"][..], &["logs", "worker-1"]] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let out = bare(&dir, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("no config file"), "{err}");
        assert!(err.contains("--config examples/broctld.toml"), "{err}");
    }
    assert!(
        !dir.join("run").exists(),
        "a read-only command created the runtime dir"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn arguments_that_are_not_utf8_are_refused_without_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = scratch("utf8");
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let bad_path = std::ffi::OsStr::from_bytes(b"/nonexistent-\xff/x");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec!["status".as_ref(), bad],
            "argument 2 (\\xff\\xfe) is not valid UTF-8",
        ),
        (
            vec!["--instance".as_ref(), bad, "status".as_ref()],
            "the value of --instance",
        ),
        (vec!["start".as_ref(), bad], "is not valid UTF-8"),
        (
            vec!["--config".as_ref(), bad_path, "check".as_ref()],
            "cannot read config file",
        ),
        (
            vec!["--runtime-dir".as_ref(), bad_path, "status".as_ref()],
            "does not exist",
        ),
    ];
    for (args, says) in cases {
        let out = bare(&dir, &args);
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `broctld CMD` with its stdout a pipe whose reading end is already closed.
fn closed_stdout(c: &Cluster, args: &[&str]) -> (std::process::ExitStatus, String) {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    let out = c
        .command(args)
        .stdout(w)
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status, text(&out.stderr))
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let c = Cluster::example("closed_stdout");
    c.start();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["events", "--since", "0"],
        &["nodes"],
        &["config"],
        &["config", "--json"],
        &["events", "-f", "--since", "0"],
    ] {
        let (status, err) = closed_stdout(&c, args);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(
            status.signal() == Some(libc::SIGPIPE) || status.code() == Some(0),
            "{args:?}: {status:?}"
        );
    }
    // Through `head`, as a person would.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --runtime-dir '{}' --instance '{}' events --since 0 -f | head -1",
            broctld_bin().display(),
            c.runtime.display(),
            c.instance
        ))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
    c.run(&["shutdown"]).ok();
}

#[test]
fn the_plain_shell_skips_a_line_that_is_not_utf8_and_reads_on() {
    let c = Cluster::example("shell_utf8");
    let (o, e) = (c.root.join("o"), c.root.join("e"));
    let mut child = c
        .command(&[])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    track(c.id, child.id(), false);
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"nodes\n\xff\xfe status\nstatus\nexit\n")
        .unwrap();
    drop(stdin);
    let st = wait_child(&mut child, WAIT).expect("the shell exits");
    let (out, err) = (
        std::fs::read_to_string(&o).unwrap(),
        std::fs::read_to_string(&e).unwrap(),
    );
    assert_eq!(st.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("input line 2 is not valid UTF-8, skipped: \\xff\\xfe status"),
        "{err}"
    );
    // The lines after it ran: `status` (all stopped) and `exit`.
    assert!(out.contains("worker-2  worker   stopped"), "{out}");
    assert!(
        out.contains(&format!(
            "left the shell: no Supervisor runs for instance '{}'",
            c.instance
        )),
        "{out}"
    );
}

#[test]
fn node_names_that_are_selectors_are_refused_with_their_line() {
    for name in [
        "all",
        "workers",
        "proxies",
        "loggers",
        "managers",
        "standalones",
        "others",
    ] {
        let c = Cluster::new(
            "selector_names",
            &format!(
                "[[node]]\nname = \"worker-1\"\ntype = \"worker\"\ncommand = [\"sleep\", \"60\"]\n\n\
                 [[node]]\nname = \"{name}\"\ncommand = [\"sleep\", \"60\"]\n"
            ),
        );
        for cmd in ["check", "start", "nodes"] {
            let out = c.run(&[cmd]);
            out.expect_code(2);
            assert!(
                out.stderr.contains(":7:") || out.stdout.contains(":7:"),
                "{cmd} {name}: {}{}",
                out.stdout,
                out.stderr
            );
            assert!(
                format!("{}{}", out.stdout, out.stderr)
                    .contains(&format!("node name '{name}' is a selector")),
                "{cmd} {name}: {}{}",
                out.stdout,
                out.stderr
            );
        }
        assert!(c.lock_pid().is_none(), "nothing started");
    }
    // A Zeek node.cfg too.
    let c = Cluster::new("selector_nodecfg", "");
    let cfg = c.root.join("node.cfg");
    std::fs::write(&cfg, "[all]\ntype=standalone\nhost=localhost\n").unwrap();
    let out = Command::new(broctld_bin())
        .arg("--runtime-dir")
        .arg(&c.runtime)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("node name 'all' is a selector"), "{said}");
}

#[test]
fn check_refuses_a_config_that_start_refuses_for_its_size() {
    let mut toml = String::with_capacity(70_000 * 64);
    for i in 0..70_000 {
        toml +=
            &format!("[[node]]\nname = \"n{i}\"\ncommand = [\"/bin/true\"]\nautostart = false\n");
    }
    let c = Cluster::new("too_many", &toml);
    let check = c.run(&["check"]);
    check.expect_code(2);
    let line = 65_536 * 4 + 1;
    assert!(
        check.stdout.contains(&format!(
            ":{line}: config has 70000 nodes; broctld supervises at most 65536"
        )),
        "{}",
        check.stdout.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    let start = c.run(&["start"]);
    assert_ne!(start.code, Some(0));
    assert!(start.stderr.contains("at most 65536"), "{}", start.stderr);
    c.run(&["shutdown"]);
}

#[test]
fn a_runtime_dir_that_is_not_one_is_an_error_and_reading_creates_nothing() {
    let c = Cluster::example("runtime_dir");
    c.start();
    let file = c.root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let missing = c.root.join("missing/x/y");
    for cmd in ["status", "events", "start", "stop", "nodes"] {
        let out = Command::new(broctld_bin())
            .arg("--runtime-dir")
            .arg(&file)
            .args(["--instance", &c.instance, "--config"])
            .arg(&c.config)
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert!(
            text(&out.stderr).contains(&format!(
                "runtime dir {} is not a directory",
                file.display()
            )),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    for cmd in [
        &["status"][..],
        &["status", "--json"],
        &["events"],
        &["top"],
        &["ping"],
    ] {
        let out = Command::new(broctld_bin())
            .arg("--runtime-dir")
            .arg(&missing)
            .args(["--instance", &c.instance, "--config"])
            .arg(&c.config)
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "runtime dir {} (from --runtime-dir) does not exist",
                missing.display()
            )),
            "{cmd:?}: {err}"
        );
        assert_ne!(out.status.code(), Some(0), "{cmd:?}: nothing runs there");
        assert!(
            !c.root.join("missing").exists(),
            "{cmd:?} created {}",
            missing.display()
        );
    }
    // The real instance was never touched: its nodes run on.
    assert!(c.status().values().all(|n| n.state == "running"));
    c.run(&["shutdown"]).ok();
}

#[test]
fn events_follow_ends_when_the_instance_is_shut_down() {
    let c = Cluster::example("follow_shutdown");
    c.start();
    let (o, e) = (c.root.join("f.out"), c.root.join("f.err"));
    let mut follower = c
        .command(&["events", "-f", "--since", "0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .spawn()
        .unwrap();
    track(c.id, follower.id(), false);
    wait_until(WAIT, "the follower to print", || {
        std::fs::read_to_string(&o).is_ok_and(|s| s.contains("ready"))
    });
    c.run(&["shutdown"]).ok();
    let st = wait_child(&mut follower, WAIT).expect("events -f exits after the shutdown");
    let (out, err) = (
        std::fs::read_to_string(&o).unwrap(),
        std::fs::read_to_string(&e).unwrap(),
    );
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(out.contains("supervisor-exiting"), "{out}");
    assert!(
        err.contains(&format!("instance '{}' was shut down", c.instance)),
        "{err}"
    );
    assert!(!err.contains("truncated or replaced"), "{err}");
}

#[test]
fn events_name_their_nodes_across_reloads_and_align() {
    let c = Cluster::example("reload_names");
    c.start();
    let before = c.run(&["events", "--since", "0"]);
    before.ok();
    // A reload that changes nothing, then one that changes a node in place: the numbering
    // stays, so every earlier event keeps its node's name.
    c.run(&["reload"]).ok();
    let text = std::fs::read_to_string(&c.config).unwrap();
    c.write_config(&text.replacen("\"1s\"", "\"2s\"", 1));
    c.run(&["reload"]).ok();
    let after = c.run(&["events", "--since", "0"]);
    after.ok();
    assert!(!after.stdout.contains("renumbered"), "{}", after.stdout);
    for line in before.stdout.lines() {
        assert!(
            after.stdout.contains(line),
            "lost `{line}`:\n{}",
            after.stdout
        );
    }
    // Every line's kind starts in one column.
    let cols: std::collections::BTreeSet<usize> = after
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.get(26..)?;
            let kind_at = rest.split_whitespace().nth(2)?;
            Some(l.find(&format!(" {kind_at}"))? + 1)
        })
        .collect();
    assert_eq!(cols.len(), 1, "{}", after.stdout);
    // The command results say what happened, never `?`.
    assert!(!after.stdout.contains(": ?"), "{}", after.stdout);
    c.run(&["shutdown"]).ok();
}

/// The running config on a full disk: the instance's runtime dir is a small tmpfs, filled
/// up; a `reload` whose config cannot be saved says the previous running config is kept
/// (it is, intact), and no temporary copy is left, then or after `shutdown`.
#[test]
fn a_full_disk_keeps_the_previous_running_config_and_leaves_no_temporary_copy() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let c = Cluster::example("full_disk");
    std::fs::create_dir_all(&c.runtime).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&c.runtime)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(c.runtime.clone());
    c.start();
    let dir = c.instance_dir();
    let saved = std::fs::read(dir.join("running-config")).expect("a running config");
    // Fill the tmpfs, leaving a few pages for the log; the new config is bigger than that.
    let mut filler = std::fs::File::create(c.runtime.join("filler")).unwrap();
    use std::io::Write;
    let page = [0u8; 4096];
    while filler.write_all(&page).is_ok() {}
    drop(filler);
    let len = std::fs::metadata(c.runtime.join("filler")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(c.runtime.join("filler"))
        .unwrap()
        .set_len(len - 16 * 4096)
        .unwrap();
    let text = std::fs::read_to_string(&c.config).unwrap();
    let padding = format!("# {}\n", "x".repeat(200)).repeat(2000);
    c.write_config(&format!("{text}\n{padding}"));
    c.run(&["reload"]).ok();
    wait_until(WAIT, "the log line", || {
        c.log().contains("cannot save the running config")
    });
    let log = c.log();
    assert!(log.contains("the previous running config is kept"), "{log}");
    assert_eq!(std::fs::read(dir.join("running-config")).unwrap(), saved);
    assert!(!dir.join("running-config.tmp").exists());
    c.run(&["shutdown"]).ok();
    assert!(!dir.join("running-config.tmp").exists());
    assert!(!dir.join("running-config").exists());
}
