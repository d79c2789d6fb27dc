//! Command-line words: the global options and the commands, shared by one-shot use and the
//! shell (which parses each line with the same code).

use std::path::PathBuf;

/// Options that apply to every command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globals {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--instance NAME`.
    pub instance: Option<String>,
    /// `--runtime-dir DIR`.
    pub runtime_dir: Option<PathBuf>,
    /// `--host NAME`: this machine's host in a multi-host Zeek cluster folder.
    pub host: Option<String>,
    /// `--help`.
    pub help: bool,
    /// `--version`.
    pub version: bool,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `start [NODE...]`.
    Start(Vec<String>),
    /// `stop [NODE...]`.
    Stop(Vec<String>),
    /// `restart [NODE...]`.
    Restart(Vec<String>),
    /// `status [NODE...] [--json]`.
    Status {
        /// Selection.
        nodes: Vec<String>,
        /// JSON output.
        json: bool,
    },
    /// `ping [-n COUNT]`.
    Ping(u32),
    /// `detach` (also `exit`, `quit` in the shell).
    Detach,
    /// `shutdown`.
    Shutdown,
    /// `reload`.
    Reload,
    /// `signal SIG NODE...`.
    Signal {
        /// Signal number.
        signal: i32,
        /// Selection (required).
        nodes: Vec<String>,
    },
    /// `upgrade-supervisor`.
    Upgrade,
    /// `events [-f] [--since SEQ] [-n N] [--json]`.
    Events {
        /// Follow: keep printing new events until interrupted.
        follow: bool,
        /// Start at this event number (default: where a Main last stopped looking).
        since: Option<u64>,
        /// Only the last N events.
        last: Option<usize>,
        /// JSON lines.
        json: bool,
    },
    /// `logs NODE [-n N] [-f] [--stderr] [--json]`.
    Logs {
        /// The node (a name or a pattern that selects exactly one).
        node: String,
        /// Lines of the tail.
        lines: usize,
        /// Follow the file.
        follow: bool,
        /// The stderr file instead of stdout.
        stderr: bool,
        /// JSON output.
        json: bool,
    },
    /// `diag [NODE...] [--json]`.
    Diag {
        /// Selection.
        nodes: Vec<String>,
        /// JSON output.
        json: bool,
    },
    /// `top [NODE...] [--json]`.
    Top {
        /// Selection.
        nodes: Vec<String>,
        /// JSON output.
        json: bool,
    },
    /// `nodes [NODE...] [--json]`.
    Nodes {
        /// Selection.
        nodes: Vec<String>,
        /// JSON output.
        json: bool,
    },
    /// `config [--json]`.
    ShowConfig {
        /// JSON output.
        json: bool,
    },
    /// `layout`: print the Zeek cluster layout of the config.
    Layout,
    /// `daemon`: a foreground Main for a service manager.
    Daemon,
    /// `help [COMMAND]`.
    Help(Option<String>),
    /// The internal Supervisor mode.
    Supervisor {
        /// `--notify-fd N`.
        notify_fd: Option<i32>,
    },
    /// The internal guardian mode (the process above the Supervisor).
    Guardian {
        /// `--notify-fd N`.
        notify_fd: Option<i32>,
        /// `--watch PID`: watch this living Supervisor instead of starting one.
        watch: Option<u32>,
    },
}

/// The commands and their one-line summaries, for `help` and completion.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("start", "[NODE...]", "start nodes (all if none named); starts the Supervisor first if none runs"),
    ("stop", "[NODE...]", "stop nodes with their stop signal, SIGKILL after their stop_timeout_ms"),
    ("restart", "[NODE...]", "stop then start nodes"),
    ("status", "[NODE...] [--json]", "show nodes: state, pid, uptime, restarts, last exit (exit 3 if a selected node is not running)"),
    ("ping", "[-n COUNT]", "round trip a no-op command through the mailbox and print the latency"),
    ("detach", "", "leave: this Main exits, the Supervisor and every node keep running (also: exit, quit)"),
    ("shutdown", "", "stop every node, then the Supervisor, then exit; leaves nothing behind"),
    ("reload", "", "re-read the config; start added nodes, stop removed ones, restart changed ones; others keep their pid"),
    ("signal", "SIG NODE...", "send a signal (name like HUP or a number) to nodes"),
    ("upgrade-supervisor", "", "re-execute the Supervisor's (possibly new) binary in place; no node restarts"),
    ("events", "[-f] [--since SEQ] [-n N] [--json]", "what happened (node started, died, restarted; commands), since this instance's Mains last looked; -f follows"),
    ("logs", "NODE [-n N] [-f] [--stderr] [--json]", "the last N (default 20) lines of a node's stdout (or stderr) file; -f follows"),
    ("diag", "[NODE...] [--json]", "crash reports written when a node died: the latest in full for one node, a list for several"),
    ("top", "[NODE...] [--json]", "pid, cpu %, memory, threads and uptime of each node's processes"),
    ("nodes", "[NODE...] [--json]", "the configured nodes and their settings"),
    ("config", "[--json]", "the effective config: every key explicit, defaults applied, paths absolute"),
    ("layout", "", "print the cluster-layout.zeek of a Zeek config (zeek.conf, cluster folder, node.cfg) as upstream writes it"),
    ("daemon", "", "run in the foreground for a service manager (systemd Type=notify): SIGHUP reloads, SIGTERM shuts down"),
    ("help", "[COMMAND]", "this list, or one command's help"),
];

/// The command list as `help` prints it: `name args` then the summary, aligned; a long
/// `name args` puts its summary on the next line.
pub fn command_list() -> String {
    let mut s = String::new();
    for (name, args, what) in COMMANDS {
        let head = if args.is_empty() {
            name.to_string()
        } else {
            format!("{name} {args}")
        };
        if head.len() <= 28 {
            s.push_str(&format!("  {head:<28} {what}\n"));
        } else {
            s.push_str(&format!("  {head}\n  {:<28} {what}\n", ""));
        }
    }
    s
}

/// More about a command, for `help COMMAND`.
pub fn command_details(cmd: &str) -> &'static str {
    match cmd {
        "status" => "  Exit status 3 when a selected node is not running (as zeekctl's status).",
        "events" => "  Without --since: what happened since a Main of this instance last looked (kept in\n  RUNTIME/INSTANCE/main.seen), or everything the ring holds on a first look. -n N: the last\n  N only. Says how many events the ring overwrote before they could be read. Ctrl-C ends -f.",
        "logs" => "  The node's stdout file (its `stdout` setting), or its stderr file with --stderr.\n  -f follows appended lines until Ctrl-C, across truncation and rotation.",
        "diag" => "  Reports are written by the Supervisor into the node's cwd when the node ends abnormally\n  (non-zero exit or a signal, not during a stop): time, exit or signal, core dumped, the\n  command line, environment, limits, and the last 100 lines of stderr and stdout.",
        "top" => "  CPU % is measured over 0.3 s; figures add up the node's whole process group.",
        "reload" => "  A config that does not load changes nothing and says why (exit status 2).",
        "daemon" => "  For systemd Type=notify (see contrib/broctld.service and docs/operations.md): READY=1 once\n  the autostart nodes are up; SIGHUP reloads; SIGTERM stops every node in reverse order,\n  then the Supervisor, then itself; SIGUSR1 exits leaving everything running (a restart of\n  the Main); SIGUSR2 re-executes the daemon in place. A Supervisor that dies is replaced at\n  once and adopts the running nodes.",
        "detach" => "  In the shell, Ctrl-D does the same.",
        _ => "",
    }
}

/// The options each command takes (for completion and `help`).
pub fn command_options(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "status" | "diag" | "top" | "nodes" | "config" => &["--json"],
        "ping" => &["-n"],
        "events" => &["-f", "--follow", "--since", "-n", "--json"],
        "logs" => &["-n", "-f", "--follow", "--stderr", "--json"],
        _ => &[],
    }
}

/// Whether the command's arguments are node selections (for completion).
pub fn takes_nodes(cmd: &str) -> bool {
    matches!(
        cmd,
        "start" | "stop" | "restart" | "status" | "signal" | "logs" | "diag" | "top" | "nodes"
    )
}

/// NODE may be a name, a glob (`worker-*`), a type in the plural (`workers`, `proxies`,
/// `loggers`, `managers`, `standalones`, `others`) or `all`.
pub const NODE_HELP: &str = "NODE is a name, a glob such as 'worker-*', a role in the plural (loggers, managers, proxies, workers, standalones, others) or 'all'; no NODE means all.";

/// A usage error, with the message to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn take_value(args: &[String], i: &mut usize, name: &str) -> Result<String, UsageError> {
    let a = &args[*i];
    if let Some((_, v)) = a.split_once('=') {
        return Ok(v.to_owned());
    }
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| UsageError(format!("option {name} needs a value")))
}

/// Splits argv (without the program name) into global options and the command words.
pub fn split_globals(args: &[String]) -> Result<(Globals, Vec<String>), UsageError> {
    let mut g = Globals::default();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let key = a.split_once('=').map_or(a, |(k, _)| k);
        match key {
            "-c" | "--config" => g.config = Some(take_value(args, &mut i, "--config")?.into()),
            "-i" | "--instance" => g.instance = Some(take_value(args, &mut i, "--instance")?),
            "--runtime-dir" => {
                g.runtime_dir = Some(take_value(args, &mut i, "--runtime-dir")?.into())
            }
            "--host" => g.host = Some(take_value(args, &mut i, "--host")?),
            "-h" | "--help" if rest.is_empty() => g.help = true,
            "-V" | "--version" if rest.is_empty() => g.version = true,
            "--" => {
                rest.extend(args[i + 1..].iter().cloned());
                break;
            }
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    Ok((g, rest))
}

/// Parses command words (`["status", "--json"]`).
pub fn parse_command(words: &[String]) -> Result<Cmd, UsageError> {
    let Some(first) = words.first() else {
        return Err(UsageError("no command given".into()));
    };
    let rest = &words[1..];
    let nodes = |rest: &[String]| -> Result<Vec<String>, UsageError> {
        if let Some(bad) = rest.iter().find(|w| w.starts_with('-')) {
            return Err(UsageError(format!(
                "{first}: unknown option '{bad}' (see `broctld help {first}`)"
            )));
        }
        Ok(rest.to_vec())
    };
    let none = |rest: &[String]| -> Result<(), UsageError> {
        match rest.first() {
            Some(w) => Err(UsageError(format!("{first} takes no arguments, got '{w}'"))),
            None => Ok(()),
        }
    };
    Ok(match first.as_str() {
        "start" => Cmd::Start(nodes(rest)?),
        "stop" => Cmd::Stop(nodes(rest)?),
        "restart" => Cmd::Restart(nodes(rest)?),
        "status" => {
            let json = rest.iter().any(|w| w == "--json");
            let others: Vec<String> = rest.iter().filter(|w| *w != "--json").cloned().collect();
            Cmd::Status {
                nodes: nodes(&others)?,
                json,
            }
        }
        "ping" => {
            let mut n = 1u32;
            let mut i = 0;
            while i < rest.len() {
                match rest[i].as_str() {
                    "-n" | "--count" => {
                        let v = take_value(rest, &mut i, "-n")?;
                        n = v
                            .parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| UsageError(format!("ping: bad count '{v}'")))?;
                    }
                    w => return Err(UsageError(format!("ping: unexpected '{w}'"))),
                }
                i += 1;
            }
            Cmd::Ping(n)
        }
        "detach" | "exit" | "quit" => {
            none(rest)?;
            Cmd::Detach
        }
        "shutdown" => {
            none(rest)?;
            Cmd::Shutdown
        }
        "reload" => {
            none(rest)?;
            Cmd::Reload
        }
        "layout" => {
            none(rest)?;
            Cmd::Layout
        }
        "upgrade-supervisor" => {
            none(rest)?;
            Cmd::Upgrade
        }
        "signal" => {
            let Some(sig) = rest.first() else {
                return Err(UsageError(
                    "signal needs a signal and at least one NODE".into(),
                ));
            };
            let signal = crate::config::signal_from_name(sig)
                .ok_or_else(|| UsageError(format!("signal: unknown signal '{sig}'")))?;
            if rest.len() < 2 {
                return Err(UsageError(
                    "signal needs at least one NODE (or 'all')".into(),
                ));
            }
            Cmd::Signal {
                signal,
                nodes: nodes(&rest[1..])?,
            }
        }
        "events" => {
            let mut o = Opts::parse(
                first,
                rest,
                &["-f", "--follow", "--json"],
                &["--since", "-n"],
            )?;
            o.no_positionals()?;
            Cmd::Events {
                follow: o.flag("-f") || o.flag("--follow"),
                since: o.number("--since")?,
                last: o.number::<usize>("-n")?,
                json: o.flag("--json"),
            }
        }
        "logs" => {
            let mut o = Opts::parse(
                first,
                rest,
                &["-f", "--follow", "--stderr", "--json"],
                &["-n"],
            )?;
            let node = match o.positionals.as_slice() {
                [one] => one.clone(),
                [] => return Err(UsageError("logs needs a NODE".into())),
                more => {
                    return Err(UsageError(format!(
                        "logs takes one NODE, got {}",
                        more.join(" ")
                    )))
                }
            };
            o.positionals.clear();
            Cmd::Logs {
                node,
                lines: o.number("-n")?.unwrap_or(20),
                follow: o.flag("-f") || o.flag("--follow"),
                stderr: o.flag("--stderr"),
                json: o.flag("--json"),
            }
        }
        "diag" | "top" | "nodes" => {
            let o = Opts::parse(first, rest, &["--json"], &[])?;
            let json = o.flag("--json");
            let nodes = o.positionals;
            match first.as_str() {
                "diag" => Cmd::Diag { nodes, json },
                "top" => Cmd::Top { nodes, json },
                _ => Cmd::Nodes { nodes, json },
            }
        }
        "config" => {
            let mut o = Opts::parse(first, rest, &["--json"], &[])?;
            o.no_positionals()?;
            Cmd::ShowConfig {
                json: o.flag("--json"),
            }
        }
        "daemon" => {
            none(rest)?;
            Cmd::Daemon
        }
        "help" => Cmd::Help(rest.first().cloned()),
        "__supervisor" => {
            let mut notify_fd = None;
            let mut i = 0;
            while i < rest.len() {
                match rest[i].split_once('=').map_or(rest[i].as_str(), |(k, _)| k) {
                    "--notify-fd" => {
                        let v = take_value(rest, &mut i, "--notify-fd")?;
                        notify_fd = Some(
                            v.parse()
                                .map_err(|_| UsageError(format!("bad --notify-fd '{v}'")))?,
                        );
                    }
                    w => return Err(UsageError(format!("__supervisor: unexpected '{w}'"))),
                }
                i += 1;
            }
            Cmd::Supervisor { notify_fd }
        }
        "__guardian" => {
            let (mut notify_fd, mut watch) = (None, None);
            let mut i = 0;
            while i < rest.len() {
                let key = rest[i].split_once('=').map_or(rest[i].as_str(), |(k, _)| k);
                match key {
                    "--notify-fd" | "--watch" => {
                        let v = take_value(rest, &mut i, key)?;
                        let bad = || UsageError(format!("bad {key} '{v}'"));
                        if key == "--watch" {
                            watch = Some(v.parse().map_err(|_| bad())?);
                        } else {
                            notify_fd = Some(v.parse().map_err(|_| bad())?);
                        }
                    }
                    w => return Err(UsageError(format!("__guardian: unexpected '{w}'"))),
                }
                i += 1;
            }
            Cmd::Guardian { notify_fd, watch }
        }
        other => {
            return Err(UsageError(format!(
                "unknown command '{other}'; commands: {}",
                COMMANDS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            )))
        }
    })
}

/// A command's words sorted into flags, options with a value, and the rest.
struct Opts {
    cmd: String,
    flags: Vec<String>,
    values: Vec<(String, String)>,
    positionals: Vec<String>,
}

impl Opts {
    fn parse(
        cmd: &str,
        words: &[String],
        flags: &[&str],
        valued: &[&str],
    ) -> Result<Opts, UsageError> {
        let mut o = Opts {
            cmd: cmd.to_owned(),
            flags: Vec::new(),
            values: Vec::new(),
            positionals: Vec::new(),
        };
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_str();
            let key = w.split_once('=').map_or(w, |(k, _)| k);
            if flags.contains(&w) {
                o.flags.push(w.to_owned());
            } else if valued.contains(&key) {
                let v = take_value(words, &mut i, key)?;
                o.values.push((key.to_owned(), v));
            } else if let Some(v) = w.strip_prefix("-n").filter(|v| {
                valued.contains(&"-n") && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
            }) {
                o.values.push(("-n".to_owned(), v.to_owned())); // -n20, as tail takes it
            } else if w.starts_with('-') && w.len() > 1 {
                return Err(UsageError(format!(
                    "{cmd}: unknown option '{w}' (see `broctld help {cmd}`)"
                )));
            } else {
                o.positionals.push(w.to_owned());
            }
            i += 1;
        }
        Ok(o)
    }

    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, UsageError> {
        match self.values.iter().rev().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| UsageError(format!("{}: {key} takes a number, got '{v}'", self.cmd))),
        }
    }

    fn no_positionals(&mut self) -> Result<(), UsageError> {
        match self.positionals.first() {
            Some(w) => Err(UsageError(format!(
                "{}: unexpected '{w}' (see `broctld help {}`)",
                self.cmd, self.cmd
            ))),
            None => Ok(()),
        }
    }
}

/// Splits a shell line into words, honouring single and double quotes.
pub fn split_line(line: &str) -> Result<Vec<String>, UsageError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(UsageError("unterminated quote".into()));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn globals_anywhere() {
        let (g, rest) = split_globals(&w("--instance a status --json -c x.toml")).unwrap();
        assert_eq!(g.instance.as_deref(), Some("a"));
        assert_eq!(g.config, Some("x.toml".into()));
        assert_eq!(rest, w("status --json"));
        let (g, _) = split_globals(&w("--runtime-dir=/tmp/r start")).unwrap();
        assert_eq!(g.runtime_dir, Some("/tmp/r".into()));
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command(&w("status worker-1 --json")).unwrap(),
            Cmd::Status {
                nodes: w("worker-1"),
                json: true
            }
        );
        assert_eq!(parse_command(&w("quit")).unwrap(), Cmd::Detach);
        assert!(parse_command(&w("stop --force")).is_err());
        assert!(parse_command(&w("shutdown now")).is_err());
        assert!(parse_command(&w("frobnicate"))
            .unwrap_err()
            .0
            .contains("unknown command"));
        assert_eq!(parse_command(&w("ping -n 5")).unwrap(), Cmd::Ping(5));
    }

    #[test]
    fn operations_parse() {
        assert_eq!(
            parse_command(&w("events -f --since 12 --json")).unwrap(),
            Cmd::Events {
                follow: true,
                since: Some(12),
                last: None,
                json: true
            }
        );
        assert_eq!(
            parse_command(&w("events -n5")).unwrap(),
            Cmd::Events {
                follow: false,
                since: None,
                last: Some(5),
                json: false
            }
        );
        assert!(parse_command(&w("events --since x")).is_err());
        assert!(parse_command(&w("events worker-1")).is_err());
        assert_eq!(
            parse_command(&w("logs worker-1 -n 50 --stderr -f")).unwrap(),
            Cmd::Logs {
                node: "worker-1".into(),
                lines: 50,
                follow: true,
                stderr: true,
                json: false
            }
        );
        assert!(parse_command(&w("logs")).is_err());
        assert!(parse_command(&w("logs a b")).is_err());
        assert_eq!(
            parse_command(&w("top workers --json")).unwrap(),
            Cmd::Top {
                nodes: w("workers"),
                json: true
            }
        );
        assert_eq!(
            parse_command(&w("diag worker-1")).unwrap(),
            Cmd::Diag {
                nodes: w("worker-1"),
                json: false
            }
        );
        assert_eq!(
            parse_command(&w("config --json")).unwrap(),
            Cmd::ShowConfig { json: true }
        );
        assert!(parse_command(&w("config x")).is_err());
        assert!(parse_command(&w("nodes --frob")).is_err());
        assert_eq!(parse_command(&w("daemon")).unwrap(), Cmd::Daemon);
    }

    #[test]
    fn lines_split_with_quotes() {
        assert_eq!(
            split_line(r#"start "a b" c"#).unwrap(),
            vec!["start", "a b", "c"]
        );
        assert!(split_line("start 'x").is_err());
    }
}
