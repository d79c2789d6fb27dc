//! Command-line words: the global options and the commands, declared once with clap and
//! parsed by the same code for one-shot use ([`Cli`]) and for each line of the shell
//! ([`ShellLine`]), so that `broctld COMMAND --help`, `help COMMAND` in the shell and what
//! the commands accept cannot drift apart.
//!
//! Start-up cost, measured: building clap's command tree and parsing one command line takes
//! about 0.1 ms in a warm loop and 0.15 to 0.2 ms as the first parse of a fresh process, and
//! the larger binary adds page faults at start: `broctld status` as a whole process went
//! from a median of 1.24-1.26 ms to 1.44-1.58 ms (`/bin/true`: 0.78-0.85 ms; same hyperfine
//! runs on a loaded 2-vCPU VM; docs/operations.md, "Start-up cost of the command line").
//! That is the price of `--help`, suggestions and completions for every command from one
//! declaration; a command-specific fast path would bring back a second parser, so there is
//! none.

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// NODE may be a name, a glob (`worker-*`), a type in the plural (`workers`, `proxies`,
/// `loggers`, `managers`, `standalones`, `others`) or `all`.
pub const NODE_HELP: &str = "NODE is a name, a glob such as 'worker-*', a role in the plural (loggers, managers, proxies, workers, standalones, others) or 'all'; no NODE means all.";

const EXIT_HELP: &str =
    "Exit status: 0 success; 1 the command failed; 2 bad usage or a bad config; \
3 nothing to report on: `status` when a selected node is not running, `status --json` and \
`top` when no Supervisor runs; 4 some hosts of a multi-host cluster could not be reached (the \
others' results were shown and applied).\n\n\
Environment: NO_COLOR (no colors), XDG_STATE_HOME (the shell's history), BROCTLD_RUNTIME_DIR, \
NOTIFY_SOCKET (set by systemd for `daemon`).";

/// What the program is: the first line of `--help`, and README's first sentence (a test
/// holds the two together).
pub const ABOUT: &str = "A process supervisor for Zeek clusters and small hosts whose control plane can exit, crash or be upgraded without any node restarting.";

/// `--help`'s account of what the program does (`-h` shows [`ABOUT`] only).
const LONG_ABOUT: &str = "A process supervisor for Zeek clusters and small hosts whose control plane can exit, crash or be upgraded without any node restarting.\n\n\
broctld is two processes. The Supervisor (started once, detached, by the first `start`) starts the nodes (a Zeek instance each, or any program), restarts them by policy and stops them when told. Main (this command: the control shell, or one command and exit) reads their status from shared memory and sends commands through a mailbox in the same region. Main can exit or be killed, and the Supervisor can be killed or upgraded: the nodes keep running under the same pids, and a new Supervisor adopts them.\n\n\
Quick start: `broctld --config examples/broctld.toml` opens the shell on the bundled example; `start`, `status`, then `exit` (the cluster keeps running) or `shutdown` (it stops).";

/// `broctld [OPTIONS] [COMMAND]`: the whole command line of one-shot use. Without a
/// command, `broctld` opens the control shell.
#[derive(Debug, Parser)]
#[command(
    name = "broctld",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    disable_help_subcommand = true,
    after_help = format!("Without a COMMAND, broctld opens the control shell.\n\n{NODE_HELP}\n\n{EXIT_HELP}"),
)]
pub struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub globals: Globals,
    /// The command; none opens the shell.
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

/// Options that apply to every command (accepted before or after it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Globals {
    /// Config file (default ./broctld.toml, then /etc/broctld/broctld.toml)
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instance name (default 'default'); instances are independent
    #[arg(short, long, global = true, value_name = "NAME")]
    pub instance: Option<String>,
    /// Runtime files (default $BROCTLD_RUNTIME_DIR, else $XDG_RUNTIME_DIR/broctld, else
    /// /run/broctld for root, else /tmp/broctld-$UID)
    #[arg(long, global = true, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// This machine's host in a multi-host Zeek cluster folder (default: the hostname)
    #[arg(long, global = true, value_name = "NAME")]
    pub host: Option<String>,
    /// Only this machine, even when the config describes several hosts
    #[arg(long, global = true)]
    pub local: bool,
}

/// One line of the shell: a command and its own options (no global options; the shell's
/// instance is fixed when it opens).
#[derive(Debug, Parser)]
#[command(multicall = true, disable_help_subcommand = true)]
pub struct ShellLine {
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

impl CompletionShell {
    /// clap_complete's name for the shell.
    pub fn generator(self) -> clap_complete::Shell {
        match self {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// A parsed command. Each command's arguments are declared lazily (`defer`): a command line
/// builds only its own command's, while `--help`, `help` and completions build them all.
#[derive(Debug, Clone, PartialEq, Subcommand)]
#[command(defer = true)]
pub enum Cmd {
    /// Start nodes (all if none named); starts the Supervisor first if none runs
    #[command(after_help = NODE_HELP)]
    Start {
        /// Nodes to start
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Stop nodes with their stop signal, SIGKILL after their stop_timeout_ms
    #[command(after_help = NODE_HELP)]
    Stop {
        /// Nodes to stop
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Stop then start nodes; waits until each runs under a new pid
    #[command(after_help = NODE_HELP)]
    Restart {
        /// Nodes to restart
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
    },
    /// Show nodes: state, pid, uptime, restarts, last exit
    #[command(
        long_about = "Show nodes: state, pid, uptime, restarts, last exit.\n\nExit status 3 when a selected node is not running (as zeekctl's status). With no Supervisor, the last state the Supervisor left in shared memory if there is one, else the configured nodes as stopped; with neither, `--json` prints [] (exit status 3).",
        after_help = NODE_HELP
    )]
    Status {
        /// Nodes to show
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Round trip a no-op command through the mailbox and print the latency
    Ping {
        /// Round trips
        #[arg(short = 'n', long = "count", value_name = "COUNT", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// Leave: this Main exits, the Supervisor and every node keep running
    #[command(
        visible_aliases = ["exit", "quit"],
        long_about = "Leave: this Main exits, the Supervisor and every node keep running.\n\nIn the shell, Ctrl-D does the same."
    )]
    Detach,
    /// Stop every node, then the Supervisor, then exit; leaves nothing behind
    Shutdown,
    /// Re-read the config; start added nodes, stop removed ones, restart changed ones
    #[command(
        long_about = "Re-read the config; start added nodes, stop removed ones, restart changed ones; every other node keeps its pid.\n\nA config that does not load changes nothing and says why (exit status 2)."
    )]
    Reload,
    /// Send a signal to nodes
    #[command(after_help = NODE_HELP)]
    Signal {
        /// A signal name (HUP, SIGUSR1, term) or number (1 to 64)
        #[arg(value_name = "SIG", value_parser = parse_signal, allow_hyphen_values = false)]
        signal: i32,
        /// Nodes to signal (at least one; 'all' for every node)
        #[arg(value_name = "NODE", required = true)]
        nodes: Vec<String>,
    },
    /// Re-execute the Supervisor's (possibly new) binary in place; no node restarts
    #[command(name = "upgrade-supervisor")]
    Upgrade,
    /// What happened (node started, died, restarted; commands) since this instance's Mains last looked
    #[command(
        long_about = "What happened (node started, died, restarted; commands).\n\nWithout --since: what happened since a Main of this instance last looked (kept in RUNTIME/INSTANCE/main.seen), or everything the ring holds on a first look. Says how many events the ring overwrote before they could be read. Ctrl-C ends -f."
    )]
    Events {
        /// Keep printing new events until interrupted
        #[arg(short, long)]
        follow: bool,
        /// Start at this event number
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// Only the last N events
        #[arg(short = 'n', value_name = "N")]
        last: Option<usize>,
        /// Print JSON lines
        #[arg(long)]
        json: bool,
    },
    /// The last N lines of a node's stdout (or stderr) file; -f follows
    #[command(
        long_about = "The last N lines of a node's stdout file (its `stdout` setting), or its stderr file with --stderr.\n\n-f follows appended lines until Ctrl-C, across truncation and rotation."
    )]
    Logs {
        /// The node (a name, or a pattern that selects exactly one)
        #[arg(value_name = "NODE")]
        node: String,
        /// Lines of the tail
        #[arg(short = 'n', value_name = "N", default_value_t = 20)]
        lines: usize,
        /// Follow the file
        #[arg(short, long, conflicts_with = "json")]
        follow: bool,
        /// The stderr file instead of stdout
        #[arg(long)]
        stderr: bool,
        /// Print JSON (the tail once)
        #[arg(long)]
        json: bool,
    },
    /// Crash reports written when a node died: the latest in full for one node, a list for several
    #[command(
        long_about = "Crash reports written when a node died: the latest in full for one node, a list for several.\n\nReports are written by the Supervisor into the node's cwd when the node ends abnormally (non-zero exit or a signal, not during a stop): time, exit or signal, core dumped, the command line, environment, limits, and the last 100 lines of stderr and stdout.",
        after_help = NODE_HELP
    )]
    Diag {
        /// Nodes to report on
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Pid, cpu %, memory, threads and uptime of each node's processes
    #[command(
        long_about = "Pid, cpu %, memory, threads and uptime of each node's processes.\n\nCPU % is measured over 0.3 s (or over each -d interval); figures add up the node's whole process group. Exit status 3 when no Supervisor runs.",
        after_help = NODE_HELP
    )]
    Top {
        /// Nodes to show
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Print JSON (once)
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS until Ctrl-C (in place on a terminal)
        #[arg(short = 'd', long = "delay", value_name = "SECONDS", conflicts_with = "json",
              value_parser = parse_seconds)]
        delay: Option<f64>,
    },
    /// The configured nodes and their settings
    #[command(after_help = NODE_HELP)]
    Nodes {
        /// Nodes to show
        #[arg(value_name = "NODE")]
        nodes: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// The effective config: every key explicit, defaults applied, paths absolute
    #[command(name = "config")]
    ShowConfig {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Copy the config to every host of a multi-host cluster, then reload each
    #[command(
        long_about = "Copy the config to every host of a multi-host cluster (a config with [[host]] tables), over the same ssh connections (rsync when present, else scp), then reload each host. A host that fails to load the new config keeps running its old one; each host is reported on its own line. Exit status 4 when some hosts could not be reached."
    )]
    Deploy,
    /// Check the config without starting anything: every program, user, group and folder
    #[command(
        long_about = "Check the config without starting anything: loads it, reports every mistake in the file (each with its line), then resolves every node's program (on PATH or as a path), user, group, working folder and log folders, and, for a Zeek config, runs each Zeek node's `zeek --parse-only` (as zeekctl's check) with the config's cluster layout; reports every problem with its line. Exit status 0 if all is well, 2 if anything is wrong."
    )]
    Check,
    /// Print the cluster-layout.zeek of a Zeek config as upstream writes it
    #[command(
        long_about = "Print the cluster-layout.zeek of a Zeek config (zeek.conf, a folder of HOST.zeek.conf files, or zeekctl's node.cfg) line for line as zeek-cluster-layout-generator or zeekctl write it. The Supervisor writes the same file where the nodes' ZEEKPATH finds it before any node starts, and again at every reload."
    )]
    Layout,
    /// Run in the foreground for a service manager (systemd Type=notify)
    #[command(
        long_about = "Run in the foreground for a service manager (systemd Type=notify; see contrib/broctld.service and docs/operations.md).\n\nREADY=1 once the autostart nodes are up; SIGHUP reloads; SIGTERM stops every node in reverse order, then the Supervisor, then itself; SIGUSR1 exits leaving everything running (a restart of the Main); SIGUSR2 re-executes the daemon in place. A Supervisor that dies is replaced at once and adopts the running nodes."
    )]
    Daemon,
    /// Print a completion script for bash, zsh or fish
    #[command(
        long_about = "Print a completion script for bash, zsh or fish on stdout, e.g.\n  broctld completions bash > /etc/bash_completion.d/broctld\n  broctld completions zsh > \"${fpath[1]}/_broctld\"\n  broctld completions fish > ~/.config/fish/completions/broctld.fish"
    )]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The list of commands, or one command's help
    Help {
        /// The command
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
    /// The internal Supervisor mode.
    #[command(name = "__supervisor", hide = true)]
    Supervisor {
        /// Where to write a byte when serving.
        #[arg(long, value_name = "FD")]
        notify_fd: Option<i32>,
    },
    /// The internal guardian mode (the process above the Supervisor).
    #[command(name = "__guardian", hide = true)]
    Guardian {
        /// Where to pass the Supervisor's readiness line.
        #[arg(long, value_name = "FD")]
        notify_fd: Option<i32>,
        /// Watch this living Supervisor instead of starting one.
        #[arg(long, value_name = "PID")]
        watch: Option<u32>,
        /// The read end of the report pipe its Supervisor passed (with `--watch`).
        #[arg(long, value_name = "FD", requires = "reports_write_fd")]
        reports_read_fd: Option<i32>,
        /// The write end of that pipe.
        #[arg(long, value_name = "FD", requires = "reports_read_fd")]
        reports_write_fd: Option<i32>,
    },
}

impl Cmd {
    /// Whether the command only reports on the instance's runtime state (and so creates
    /// nothing in the runtime dir).
    pub fn reports_on_instance(&self) -> bool {
        matches!(
            self,
            Cmd::Status { .. } | Cmd::Events { .. } | Cmd::Top { .. } | Cmd::Ping { .. }
        )
    }
}

fn parse_signal(s: &str) -> Result<i32, String> {
    crate::config::signal_from_name(s)
        .ok_or_else(|| format!("unknown signal '{s}'{}", crate::config::signal_hint(s)))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.1..=86_400.0).contains(&x) => Ok(x),
        _ => Err(format!(
            "expected a number of seconds from 0.1 to 86400, got '{s}'"
        )),
    }
}

/// The commands as the shell and `help` list them: name, aliases and one-line summary,
/// taken from the parser (hidden ones left out).
pub fn commands() -> Vec<(String, Vec<String>, String)> {
    ShellLine::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| {
            (
                c.get_name().to_owned(),
                c.get_visible_aliases().map(str::to_owned).collect(),
                c.get_about().map(|a| a.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The command list as the shell's `help` prints it.
pub fn command_list() -> String {
    let mut s = String::new();
    for (name, aliases, about) in commands() {
        let head = if aliases.is_empty() {
            name
        } else {
            format!("{name} ({})", aliases.join(", "))
        };
        s.push_str(&format!("  {head:<24} {about}\n"));
    }
    s
}

/// The help of one command, as `COMMAND --help` prints it (in the shell: without the
/// global options and the program name); `None` if there is no such command (aliases such
/// as `quit` count).
pub fn command_help(name: &str, in_shell: bool) -> Option<String> {
    let mut root = if in_shell {
        ShellLine::command()
    } else {
        Cli::command()
    };
    root.build();
    let sub = root.get_subcommands_mut().find(|c| {
        !c.is_hide_set() && (c.get_name() == name || c.get_all_aliases().any(|a| a == name))
    })?;
    // As `COMMAND --help` does: the long form only where there is more to say.
    let help = if sub.get_long_about().is_some() {
        sub.render_long_help()
    } else {
        sub.render_help()
    }
    .to_string();
    // A shell line has no program name: clap leaves an empty one before the command.
    Some(help.replace("Usage:  ", "Usage: "))
}

/// `cmd` with every command's arguments declared (they are deferred until built: see [`Cmd`]).
fn built(mut cmd: clap::Command) -> clap::Command {
    cmd.build();
    cmd
}

/// The long options and short flags `cmd` takes (for the shell's completion).
pub fn command_options(cmd: &str) -> Vec<String> {
    let root = built(ShellLine::command());
    let Some(sub) = root.find_subcommand(cmd) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in sub.get_arguments() {
        if let Some(l) = a.get_long() {
            out.push(format!("--{l}"));
        }
        if let Some(c) = a.get_short() {
            out.push(format!("-{c}"));
        }
    }
    out
}

/// Whether the command's positional arguments are node selections (for completion).
pub fn takes_nodes(cmd: &str) -> bool {
    let root = built(ShellLine::command());
    root.find_subcommand(cmd).is_some_and(|sub| {
        sub.get_positionals().any(|a| {
            a.get_value_names()
                .is_some_and(|v| v.iter().any(|n| n == "NODE"))
        })
    })
}

/// The completion script for `shell` (generated into memory: clap_complete panics on a
/// write error, and stdout may be a closed pipe). The internal modes (`__supervisor`,
/// `__guardian`) are left out: clap_complete offers hidden subcommands too, so the script is
/// generated from a copy of the command line without them.
pub fn completions(shell: CompletionShell) -> Vec<u8> {
    let full = Cli::command();
    let mut cmd = clap::Command::new("broctld")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_subcommand(true)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut buf = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, "broctld", &mut buf);
    buf
}

/// A usage error, with the message to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses one shell line's words (`["status", "--json"]`) with the same parser as the
/// command line. `Err` carries clap's error: a usage error, or the help asked for.
pub fn parse_shell_words(words: &[String]) -> Result<Cmd, clap::Error> {
    ShellLine::try_parse_from(words).map(|l| l.command)
}

/// clap's message for a shell line, worded for the shell: a line has no program name, and
/// `--help` alone is not a command there.
pub fn shell_error_text(e: &clap::Error) -> String {
    e.render()
        .to_string()
        .replace("Usage: <COMMAND>", "(`help` lists the commands)")
        .replace("Usage:  ", "Usage: ")
        .replace(
            "For more information, try '--help'.",
            "For more information, try `COMMAND --help` or `help COMMAND`.",
        )
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

    fn cli(s: &str) -> Cli {
        Cli::try_parse_from(std::iter::once("broctld".to_owned()).chain(w(s))).unwrap()
    }

    fn line(s: &str) -> Result<Cmd, clap::Error> {
        parse_shell_words(&w(s))
    }

    #[test]
    fn parser_is_consistent() {
        Cli::command().debug_assert();
        ShellLine::command().debug_assert();
    }

    #[test]
    fn globals_anywhere() {
        let c = cli("--instance a status --json -c x.toml");
        assert_eq!(c.globals.instance.as_deref(), Some("a"));
        assert_eq!(c.globals.config, Some("x.toml".into()));
        assert_eq!(
            c.command,
            Some(Cmd::Status {
                nodes: vec![],
                json: true
            })
        );
        let c = cli("--runtime-dir=/tmp/r start");
        assert_eq!(c.globals.runtime_dir, Some("/tmp/r".into()));
        assert_eq!(cli("").command, None);
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            line("status worker-1 --json").unwrap(),
            Cmd::Status {
                nodes: w("worker-1"),
                json: true
            }
        );
        assert_eq!(line("quit").unwrap(), Cmd::Detach);
        assert!(line("stop --force").is_err());
        assert!(line("shutdown now").is_err());
        let e = line("stauts").unwrap_err().to_string();
        assert!(e.contains("status"), "{e}");
        assert_eq!(line("ping -n 5").unwrap(), Cmd::Ping { count: 5 });
        assert!(line("ping -n 0").is_err());
        assert!(line("status -i other").is_err(), "no globals in the shell");
    }

    #[test]
    fn operations_parse() {
        assert_eq!(
            line("events -f --since 12 --json").unwrap(),
            Cmd::Events {
                follow: true,
                since: Some(12),
                last: None,
                json: true
            }
        );
        assert_eq!(
            line("events -n5").unwrap(),
            Cmd::Events {
                follow: false,
                since: None,
                last: Some(5),
                json: false
            }
        );
        assert!(line("events --since x").is_err());
        assert!(line("events worker-1").is_err());
        assert_eq!(
            line("logs worker-1 -n 50 --stderr -f").unwrap(),
            Cmd::Logs {
                node: "worker-1".into(),
                lines: 50,
                follow: true,
                stderr: true,
                json: false
            }
        );
        assert!(line("logs").is_err());
        assert!(line("logs a b").is_err());
        assert!(line("logs a -f --json").is_err());
        assert_eq!(
            line("top workers --json").unwrap(),
            Cmd::Top {
                nodes: w("workers"),
                json: true,
                delay: None
            }
        );
        assert_eq!(
            line("top -d 2").unwrap(),
            Cmd::Top {
                nodes: vec![],
                json: false,
                delay: Some(2.0)
            }
        );
        assert!(line("top -d 0").is_err());
        assert_eq!(
            line("signal hup worker-1").unwrap(),
            Cmd::Signal {
                signal: libc::SIGHUP,
                nodes: w("worker-1")
            }
        );
        assert!(line("signal HUP").is_err());
        let e = line("signal HUPP all").unwrap_err().to_string();
        assert!(e.contains("did you mean 'HUP'"), "{e}");
        assert_eq!(
            line("config --json").unwrap(),
            Cmd::ShowConfig { json: true }
        );
        assert!(line("config x").is_err());
        assert!(line("nodes --frob").is_err());
        assert_eq!(line("daemon").unwrap(), Cmd::Daemon);
        assert_eq!(line("check").unwrap(), Cmd::Check);
    }

    #[test]
    fn completion_words_come_from_the_parser() {
        assert!(command_options("logs").contains(&"--stderr".to_owned()));
        assert!(command_options("top").contains(&"-d".to_owned()));
        assert!(takes_nodes("stop"));
        assert!(!takes_nodes("ping"));
        assert!(commands().iter().any(|c| c.0 == "upgrade-supervisor"));
        assert!(!commands().iter().any(|c| c.0 == "__supervisor"));
        assert!(command_help("quit", true).is_some_and(|h| h.contains("Ctrl-D")));
        let one_shot = command_help("logs", false).unwrap();
        assert!(one_shot.contains("Usage: broctld logs"), "{one_shot}");
        assert!(one_shot.contains("--instance"), "{one_shot}");
        let shell = command_help("logs", true).unwrap();
        assert!(shell.contains("Usage: logs"), "{shell}");
        assert!(!shell.contains("--instance"), "{shell}");
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
