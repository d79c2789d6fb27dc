//! A Main's session: the instance, where its config is, and (once attached) the client. Runs
//! one parsed command and says how it went. The one-shot CLI and the shell share it.

mod ops;
mod wait;

use super::args::{Cmd, NODE_HELP};
use super::events;
use super::output;
use super::progress::Progress;
use super::select::{self, Named};
use super::style::Style;
use crate::client::{Client, ClientError, NodeStatus};
use crate::config::{Config, ConfigError, NodeSpec, NodeType};
use crate::instance::Instance;
use crate::protocol::layout::SupervisorState;
use crate::protocol::mailbox::Opcode;
use crate::protocol::node::NodeState;
use crate::sys::lockfile::{LockFile, Probe};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wait::{not_ready_in_time, progress_text, report, wait_nodes, Verb};

/// How long a Main waits for a reply from the Supervisor.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad words.
    #[error("{0}")]
    Usage(String),
    /// Talking to the Supervisor failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The config is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No config file could be found.
    #[error("no config file: none given with --config, and neither {} nor {} exists; name one with --config FILE (the bundled example: --config examples/broctld.toml)", .0.display(), .1.display())]
    NoConfig(PathBuf, PathBuf),
    /// The command ran but did not reach its goal.
    #[error("{0}")]
    Failed(String),
    /// `check` found problems in the config (each printed already).
    #[error("{0}")]
    Problems(String),
    /// `reload` of a config that does not load: nothing changed.
    #[error("nothing changed: {0}")]
    Unchanged(ConfigError),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_)
            | CliError::Config(_)
            | CliError::Unchanged(_)
            | CliError::Problems(_)
            | CliError::NoConfig(..) => 2,
            _ => 1,
        }
    }
}

/// What a command asks of the caller afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Carry on (exit status 0 for a one-shot command).
    Done,
    /// Carry on, but a one-shot command exits with this status (e.g. 3 from `status`).
    Status(i32),
    /// Leave the shell: the Main exits, everything else runs on.
    Detach,
    /// The Supervisor is gone after `shutdown`: leave too.
    ShutDown,
}

impl Named for NodeStatus {
    fn name(&self) -> &str {
        &self.name
    }
    fn node_type(&self) -> NodeType {
        self.node_type
    }
}

/// A Main's session with one instance.
pub struct Session {
    instance: Instance,
    config: Option<PathBuf>,
    client: Option<Client>,
    style: Style,
    was_attached: bool,
    note: Option<String>,
    /// Why the last attach failed (so a command reports it without attaching again).
    attach_error: Option<ClientError>,
    in_shell: bool,
}

/// Picks the config file: the one given, else `./broctld.toml`, else `/etc/broctld/broctld.toml`.
pub fn find_config(given: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let local = PathBuf::from("broctld.toml");
    let system = PathBuf::from("/etc/broctld/broctld.toml");
    if local.exists() {
        Ok(local)
    } else if system.exists() {
        Ok(system)
    } else {
        Err(CliError::NoConfig(local, system))
    }
}

impl Session {
    /// A session for `instance`; `config` is the `--config` value, if any.
    pub fn new(instance: Instance, config: Option<PathBuf>) -> Session {
        crate::cli::output::use_supervisor_log(instance.log_path());
        Session {
            instance,
            config,
            client: None,
            style: Style::stdout(),
            was_attached: false,
            note: None,
            attach_error: None,
            in_shell: false,
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The `--config` path given, if any.
    pub fn config_arg(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Marks the session as the shell's (help then shows commands as the shell takes them).
    pub fn set_in_shell(&mut self) {
        self.in_shell = true;
    }

    /// Sets how stdout is rendered (colors or not).
    pub fn set_style(&mut self, style: Style) {
        self.style = style;
    }

    /// A one-line summary of what the last command did, for Main's log (taken once).
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    fn note(&mut self, s: impl Into<String>) {
        self.note = Some(s.into());
    }

    /// The Supervisor's state in one word for the shell's prompt, without starting anything:
    /// `attached`, `shutting down`, `restarting` (a Supervisor holds the lock but does not serve
    /// yet), `gone` (it died and left its nodes; the next command starts a new one to adopt
    /// them) or `no supervisor`.
    pub fn supervisor_word(&mut self) -> &'static str {
        if let Some(c) = &self.client {
            if c.supervisor_alive() {
                return match c.supervisor_state() {
                    Some(SupervisorState::ShuttingDown) => "shutting down",
                    Some(SupervisorState::Exited) => "gone",
                    _ => "attached",
                };
            }
            self.client = None;
        }
        match LockFile::probe(&self.instance.lock_path()) {
            Ok(Probe::Held { .. }) => match Client::attach(&self.instance) {
                Ok(c) => {
                    self.client = Some(c);
                    self.was_attached = true;
                    "attached"
                }
                Err(_) => "restarting",
            },
            _ if self.region_survives() => "gone",
            _ => "no supervisor",
        }
    }

    /// The event ring's head if attached to a live Supervisor (0 otherwise); starts nothing.
    pub fn event_head_if_attached(&self) -> u64 {
        self.client
            .as_ref()
            .filter(|c| c.supervisor_alive())
            .map_or(0, Client::event_head)
    }

    /// The effective config: the running Supervisor's file if one runs, else `--config`,
    /// `./broctld.toml` or `/etc/broctld/broctld.toml`.
    pub fn load_config(&mut self) -> Result<Config, CliError> {
        // An attached client is kept as it is, even if its Supervisor has just exited (after a
        // `shutdown`): the command that attached it goes on using it.
        let recorded = match self.client.as_ref() {
            Some(c) => c.config_path().map(Path::to_owned),
            None => self
                .client()
                .and_then(|c| c.config_path().map(Path::to_owned)),
        };
        let path = match recorded {
            Some(p) => p,
            None => find_config(self.config.as_deref())?,
        };
        Ok(Config::load(&path)?)
    }

    /// Node names for completion: the running table, else the config's.
    pub fn node_names(&mut self) -> Vec<String> {
        if let Some(c) = self.client.as_ref().filter(|c| c.supervisor_alive()) {
            return c.status().into_iter().map(|n| n.name).collect();
        }
        find_config(self.config.as_deref())
            .ok()
            .and_then(|p| Config::load(&p).ok())
            .map(|c| c.nodes.into_iter().map(|n| n.name).collect())
            .unwrap_or_default()
    }

    /// The client, if attached and the Supervisor is still alive.
    pub fn client(&mut self) -> Option<&Client> {
        if let Some(c) = &self.client {
            if !c.supervisor_alive() {
                self.client = None;
            }
        }
        if self.client.is_none() {
            self.try_attach();
        }
        // After a failed attach, one look at the lock decides. Held: a Supervisor took it since
        // attach looked (the guardian's replacement for a killed one), so attach again, which
        // waits (bounded) for a starting Supervisor to serve. Free, with a region left: start
        // one to adopt its nodes. (Two looks would leave the moment between them to a
        // Supervisor taking the lock: neither attached nor recovered, the Main would report
        // none running.)
        if self.client.is_none() {
            match LockFile::probe(&self.instance.lock_path()) {
                Ok(Probe::Held { .. })
                    if matches!(self.attach_error, Some(ClientError::NotRunning { .. })) =>
                {
                    self.try_attach();
                }
                Ok(Probe::Free) if self.region_survives() => self.recover(),
                _ => {}
            }
        }
        if self.client.is_some() {
            self.was_attached = true;
        }
        self.client.as_ref()
    }

    /// Attaches to the instance's Supervisor, keeping the error if there is none to attach to.
    fn try_attach(&mut self) {
        match Client::attach(&self.instance) {
            Ok(c) => {
                self.client = Some(c);
                self.attach_error = None;
            }
            Err(e) => self.attach_error = Some(e),
        }
    }

    /// Whether a region outlived its Supervisor (it was killed): its nodes may still run.
    fn region_survives(&self) -> bool {
        let name = self.instance.shm_name();
        std::path::Path::new("/dev/shm")
            .join(name.trim_start_matches('/'))
            .exists()
    }

    /// Starts a new Supervisor to adopt the nodes of one that died.
    fn recover(&mut self) {
        let cfg = match find_config(self.config.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "broctld: the Supervisor of instance '{}' is gone and its nodes may still run, but it cannot be restarted: {e}",
                    self.instance.name()
                );
                return;
            }
        };
        eprintln!(
            "broctld: the Supervisor of instance '{}' is gone; starting a new one to adopt the nodes still running",
            self.instance.name()
        );
        match Client::attach_or_spawn(&self.instance, &cfg) {
            Ok(c) => self.client = Some(c),
            Err(e) => eprintln!("broctld: {e}"),
        }
    }

    fn require_client(&mut self) -> Result<&Client, CliError> {
        if self.client().is_none() {
            // Attach's precise error (run it again if there is none: the recovery may have
            // failed otherwise).
            let e = self
                .attach_error
                .take()
                .map_or_else(|| Client::attach(&self.instance).err(), Some);
            return Err(match e {
                Some(e) => e.into(),
                None => CliError::Failed("the Supervisor came back; run the command again".into()),
            });
        }
        Ok(self.client.as_ref().expect("attached above"))
    }

    fn spawn_if_needed(&mut self) -> Result<&Client, CliError> {
        if self.client().is_none() {
            let cfg = find_config(self.config.as_deref())?;
            // Parse here too, so a bad config is reported with its line before anything runs.
            Config::load(&cfg)?;
            println!(
                "starting the Supervisor for instance '{}'",
                self.instance.name()
            );
            self.client = Some(Client::attach_or_spawn(&self.instance, &cfg)?);
        }
        Ok(self.client.as_ref().expect("attached above"))
    }

    /// Runs one command.
    pub fn run(&mut self, cmd: &Cmd) -> Result<Outcome, CliError> {
        match cmd {
            Cmd::Help { command } => {
                print!("{}", help_text(command.as_deref(), self.in_shell)?);
                Ok(Outcome::Done)
            }
            Cmd::Detach => Ok(Outcome::Detach),
            Cmd::Status { nodes, json } => self.status(nodes, *json),
            Cmd::Start { nodes } => self.start(nodes),
            Cmd::Stop { nodes } => self.stop(nodes),
            Cmd::Restart { nodes } => self.restart(nodes),
            Cmd::Shutdown => self.shutdown(),
            Cmd::Ping { count } => self.ping(*count),
            Cmd::Reload => self.reload(),
            Cmd::Signal { signal, nodes } => self.signal(*signal, nodes),
            Cmd::Upgrade => self.upgrade(),
            Cmd::Events {
                follow,
                since,
                last,
                json,
            } => self.events(*follow, *since, *last, *json),
            Cmd::Logs {
                node,
                lines,
                follow,
                stderr,
                json,
            } => self.logs(node, *lines, *follow, *stderr, *json),
            Cmd::Diag { nodes, json } => self.diag(nodes, *json),
            Cmd::Top { nodes, json, delay } => self.top(nodes, *json, *delay),
            Cmd::Nodes { nodes, json } => self.nodes(nodes, *json),
            Cmd::Layout => self.layout(),
            Cmd::ShowConfig { json } => self.show_config(*json),
            Cmd::Check => self.check(),
            Cmd::Deploy => Err(CliError::Usage(
                "deploy needs a config with [[host]] tables (a multi-host cluster); for this machine, use reload".into(),
            )),
            Cmd::Completions { shell } => {
                use std::io::Write;
                output::checked_write(
                    std::io::stdout()
                        .lock()
                        .write_all(&super::args::completions(*shell)),
                )
                .map_err(|e| CliError::Failed(format!("writing the completion script: {e}")))?;
                Ok(Outcome::Done)
            }
            Cmd::Daemon => Err(CliError::Usage(
                "daemon runs on its own: `broctld daemon`, not in the shell".into(),
            )),
            Cmd::Supervisor { .. } | Cmd::Guardian { .. } => Err(CliError::Usage(
                "__supervisor and __guardian are internal: broctld starts them by itself".into(),
            )),
        }
    }

    fn status(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let (nodes, unverified) = match self.client() {
            Some(c) => {
                // A takeover, or an upgrade's new image, says `ready` once it is done.
                c.wait_serving(SERVE_WAIT);
                let mut nodes = c.status();
                c.check_damage()?;
                let doubt = attached_doubt(c, &mut nodes);
                (nodes, doubt)
            }
            None => self.unsupervised_status(json)?,
        };
        let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<NodeStatus> = idx.iter().map(|&i| nodes[i].clone()).collect();
        if json {
            let dir = self.instance.dir();
            println!(
                "{}",
                output::status_json(&chosen, |name| crate::supervisor::notify::read_status(
                    &dir, name
                ))
            );
        } else {
            if self.client.is_none() && unverified.is_none() {
                println!(
                    "no Supervisor is running for instance '{}' and none left a region: every node is stopped",
                    self.instance.name()
                );
            }
            print!("{}", output::status_table(&chosen, self.style));
            // What sd_notify nodes said (STATUS=).
            for n in &chosen {
                if let Some(text) =
                    crate::supervisor::notify::read_status(&self.instance.dir(), &n.name)
                {
                    println!("{}: {text}", n.name);
                }
            }
            if let Some(crate::supervisor::cgroups::Tracking::Fallback(why)) =
                crate::supervisor::cgroups::tracking(&self.instance.dir())
            {
                println!("{}", crate::supervisor::cgroups::fallback_note(&why));
            }
        }
        if let Some(why) = unverified {
            return Err(CliError::Failed(why));
        }
        let down: Vec<&str> = chosen
            .iter()
            .filter(|n| n.state != NodeState::Running)
            .map(|n| n.name.as_str())
            .collect();
        if down.is_empty() && !chosen.is_empty() {
            self.note(format!("{} node(s) running", chosen.len()));
            Ok(Outcome::Done)
        } else {
            self.note(format!("not running: {}", down.join(",")));
            Ok(Outcome::Status(3))
        }
    }

    /// What `status` can say with no Supervisor attached: the last states a Supervisor
    /// recorded (unverified, with the reason as the second value) if a region is left or a
    /// Supervisor holds the lock; else every configured node stopped (none if no config).
    fn unsupervised_status(
        &mut self,
        json: bool,
    ) -> Result<(Vec<NodeStatus>, Option<String>), CliError> {
        let held = matches!(
            LockFile::probe(&self.instance.lock_path()),
            Ok(Probe::Held { .. })
        );
        let why = if held {
            match self
                .attach_error
                .take()
                .map_or_else(|| Client::attach(&self.instance), Err)
            {
                Err(e) => e.to_string(),
                Ok(c) => {
                    // It came up meanwhile.
                    let nodes = c.status();
                    self.client = Some(c);
                    return Ok((nodes, None));
                }
            }
        } else {
            format!(
                "the Supervisor of instance '{}' is gone and could not be replaced",
                self.instance.name()
            )
        };
        match Client::last_recorded(&self.instance) {
            Ok(Some(nodes)) => {
                let alive = nodes.iter().filter(|n| n.pid_alive == Some(true)).count();
                return Ok((
                    nodes,
                    Some(format!(
                        "{why}; the states shown are the last ones recorded, unverified ({alive} recorded process(es) still alive per /proc, unsupervised)"
                    )),
                ));
            }
            Ok(None) if held => return Err(CliError::Failed(why)),
            Ok(None) => {}
            Err(e) => return Err(CliError::Failed(format!("{why}; {e}"))),
        }
        let cfg = match find_config(self.config.as_deref()) {
            Ok(c) => c,
            Err(CliError::NoConfig(..)) => return Ok((Vec::new(), None)),
            Err(e) => return Err(e),
        };
        let config = Config::load(&cfg).inspect_err(|_| {
            // Scripts still get JSON; the error (exit status 2) says why.
            if json {
                println!("[]");
            }
        })?;
        // No region to read: what the kernel shows of each node (its lock, its cgroup). A node
        // with a live process is never shown `stopped`.
        let names: Vec<(String, NodeType)> = config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.node_type))
            .collect();
        let nodes = Client::unsupervised_rows(&self.instance, &names);
        let live = nodes
            .iter()
            .filter(|n| !n.verified && n.state == NodeState::Running)
            .count();
        let unreadable = nodes
            .iter()
            .filter(|n| !n.verified && n.state != NodeState::Running)
            .count();
        if live + unreadable == 0 {
            return Ok((nodes, None));
        }
        // A Supervisor that took the lock since we looked (one starting now holds its nodes'
        // locks before its region is ready): attach waits for it, and its answer is the truth.
        if let Ok(Probe::Held { .. }) = LockFile::probe(&self.instance.lock_path()) {
            if let Ok(c) = Client::attach(&self.instance) {
                let nodes = c.status();
                self.client = Some(c);
                return Ok((nodes, None));
            }
        }
        let mut why = format!(
            "no Supervisor runs for instance '{}' and none left a region",
            self.instance.name()
        );
        if live > 0 {
            why.push_str(&format!(", but {live} node(s) have a live process (their lock file or cgroup says so) that nothing supervises; `broctld start` adopts them"));
        }
        if unreadable > 0 {
            why.push_str(&format!("; {unreadable} node(s) could not be checked (their lock file cannot be read), so they are not known to be stopped"));
        }
        Ok((nodes, Some(why)))
    }

    /// The error for a command that needs a Supervisor when none can be reached: names why,
    /// and says that nothing was done.
    fn unreachable(&mut self, what: &str) -> CliError {
        let attached = self
            .attach_error
            .take()
            .map_or_else(|| Client::attach(&self.instance), Err);
        let why = match attached {
            Err(ClientError::NotRunning { .. }) if self.region_survives() => format!(
                "the Supervisor of instance '{}' is gone and could not be replaced (see the messages above); its nodes may still run, unsupervised (`broctld status` shows what it last recorded)",
                self.instance.name()
            ),
            Err(e) => e.to_string(),
            Ok(c) => {
                self.client = Some(c);
                return CliError::Failed(format!(
                    "{what}: the Supervisor came back while this command gave up; nothing was done, run it again"
                ));
            }
        };
        CliError::Failed(format!("{what}: nothing was done: {why}"))
    }

    /// What `status` and `top` say when no Supervisor runs and there is nothing else to show:
    /// `[]` for JSON, else a line ending in `why`; exit status 3.
    fn nothing_runs(&mut self, json: bool, why: &str) -> Outcome {
        if json {
            println!("[]");
        } else {
            println!(
                "no Supervisor is running for instance '{}'{why}",
                self.instance.name()
            );
        }
        self.note(format!("no Supervisor{why}"));
        Outcome::Status(3)
    }

    /// The configured specs by name, for progress lines (empty if the config cannot be read).
    fn specs(&mut self) -> HashMap<String, NodeSpec> {
        self.load_config()
            .map(|c| c.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
            .unwrap_or_default()
    }

    fn start(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        // A Supervisor this command starts starts its autostart nodes itself: those were
        // started by this command, not "already running".
        // What this command started, and then ended as its restart policy says (a
        // `restart = "never"` node that ran and exited), is done: started once.
        let since = crate::sys::clock::wall_ms();
        let was_running = self.client().is_some();
        self.spawn_if_needed()?;
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let selected = selected_names(client, words)?;
        // Nodes already running are said so and not sent (the table shows their pid). A
        // Supervisor this command started has started its autostart nodes itself: they are
        // waited for, not sent a start too (which would run a node that has since ended a
        // second time).
        let mut names = Vec::with_capacity(selected.len());
        let mut already = Vec::new();
        let mut autostarted = Vec::new();
        for n in client.status() {
            if !selected.contains(&n.name) {
                continue;
            }
            match n.pid {
                Some(pid) if was_running && n.state == NodeState::Running => {
                    println!("{}: already running, pid {pid}", n.name);
                    already.push(format!("{} (pid {pid})", n.name));
                }
                _ if !was_running
                    && specs.get(&n.name).is_some_and(|s| s.policy.autostart)
                    && n.state != NodeState::Failed =>
                {
                    autostarted.push(n.index)
                }
                _ => names.push(n.name.clone()),
            }
        }
        if names.is_empty() && autostarted.is_empty() {
            self.note(format!("already running: {}", already.join(", ")));
            return Ok(Outcome::Done);
        }
        let mut idx = if names.is_empty() {
            Vec::new()
        } else {
            send_names(client, Opcode::Start, &names, 0)?
        };
        idx.extend(autostarted);
        let ran_and_ended = |n: &NodeStatus| {
            n.state == NodeState::Stopped
                && n.pid.is_none()
                && n.last_exit.is_some()
                && n.started_wall_ms >= since
        };
        let (done, interrupted) = wait_nodes(
            client,
            &idx,
            Duration::from_secs(20),
            Verb::Start,
            &specs,
            |n| {
                matches!(n.state, NodeState::Running | NodeState::Failed)
                    || n.blocked_by.is_some()
                    || not_ready_in_time(n, &specs)
                    || ran_and_ended(n)
            },
        );
        let r = report(&done, "started", interrupted, |n| {
            n.state == NodeState::Running || ran_and_ended(n)
        });
        self.note_result(&r, &done, "started");
        r
    }

    fn stop(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        if self.client().is_none() {
            let held = matches!(
                LockFile::probe(&self.instance.lock_path()),
                Ok(Probe::Held { .. })
            );
            if held || self.region_survives() {
                return Err(self.unreachable("stop"));
            }
            println!(
                "no Supervisor is running for instance '{}' and none left a region: nothing runs, nothing to stop",
                self.instance.name()
            );
            return Ok(Outcome::Done);
        }
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let idx = send_named(client, Opcode::Stop, words, 0)?;
        let (done, interrupted) = wait_nodes(
            client,
            &idx,
            Duration::from_secs(20),
            Verb::Stop,
            &specs,
            |n| matches!(n.state, NodeState::Stopped | NodeState::Failed) && n.pid.is_none(),
        );
        let r = report(&done, "stopped", interrupted, |n| n.pid.is_none());
        self.note_result(&r, &done, "stopped");
        r
    }

    fn restart(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        self.spawn_if_needed()?;
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let before: HashMap<usize, Option<u32>> = client
            .status()
            .into_iter()
            .map(|n| (n.index, n.pid))
            .collect();
        let idx = send_named(client, Opcode::Restart, words, 0)?;
        let (done, interrupted) = wait_nodes(
            client,
            &idx,
            Duration::from_secs(20),
            Verb::Restart,
            &specs,
            |n| {
                let old = before.get(&n.index).copied().flatten();
                (n.state == NodeState::Running && n.pid.is_some() && n.pid != old)
                    || n.state == NodeState::Failed
                    || n.blocked_by.is_some()
                    || (n.pid != old && not_ready_in_time(n, &specs))
            },
        );
        let r = report(&done, "restarted", interrupted, |n| {
            n.state == NodeState::Running
        });
        self.note_result(&r, &done, "restarted");
        r
    }

    fn note_result(&mut self, r: &Result<Outcome, CliError>, done: &[NodeStatus], verb: &str) {
        if r.is_ok() {
            let names: Vec<String> = done
                .iter()
                .map(|n| match n.pid {
                    Some(p) => format!("{} (pid {p})", n.name),
                    None => n.name.clone(),
                })
                .collect();
            self.note(format!("{verb}: {}", names.join(", ")));
        }
    }

    fn shutdown(&mut self) -> Result<Outcome, CliError> {
        if self.client().is_none() {
            let held = matches!(
                LockFile::probe(&self.instance.lock_path()),
                Ok(Probe::Held { .. })
            );
            if held || self.region_survives() {
                return Err(self.unreachable("shutdown"));
            }
            println!(
                "no Supervisor is running for instance '{}'; nothing to shut down",
                self.instance.name()
            );
            return Ok(Outcome::ShutDown);
        }
        // Read before the shutdown is sent: reading the config looks at the Supervisor, and
        // one that has already exited detaches the client.
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let pid = client.supervisor_pid();
        let running = client.status().iter().filter(|n| n.pid.is_some()).count();
        client.shutdown(REPLY_TIMEOUT)?;
        let mut progress = Progress::new();
        // Wait as long as the slowest stop may take (its SIGKILL deadline), plus a margin.
        let start = Instant::now();
        loop {
            let all = client.status();
            let text = progress_text(Verb::Stop, &all, &specs, |n| n.pid.is_none());
            progress.update(&format!("shutting down: {text}"));
            let longest = client
                .status()
                .iter()
                .filter_map(|n| n.deadline_in)
                .max()
                .unwrap_or_default();
            let step = (longest + Duration::from_secs(5)).min(Duration::from_millis(250));
            if client.wait_supervisor_exit(step)? {
                break;
            }
            if start.elapsed() > longest + Duration::from_secs(30) {
                return Err(CliError::Failed(format!(
                    "the Supervisor (pid {pid}) has not exited {:?} after shutdown; see {}",
                    start.elapsed(),
                    self.instance.log_path().display()
                )));
            }
        }
        // The guardian exits, removing its lock, once the last Supervisor has exited cleanly:
        // a Supervisor killed during the shutdown is replaced, and its successor finishes the
        // shutdown it finds recorded. Wait for the guardian (on a pidfd, bounded), so that the
        // shutdown is complete, and nothing of the instance left, when this returns.
        if let Ok(Probe::Held { pid: g, .. }) =
            LockFile::probe(&crate::guardian::lock_path(&self.instance))
        {
            if let Some(fd) = (g != 0).then(|| crate::sys::pidfd::open(g).ok()).flatten() {
                let limit = specs
                    .values()
                    .map(|s| s.policy.stop_timeout)
                    .max()
                    .unwrap_or_default()
                    + Duration::from_secs(30);
                if !crate::sys::pidfd::wait_exit(&fd, limit).unwrap_or(true) {
                    return Err(CliError::Failed(format!(
                        "the Supervisor (pid {pid}) exited, but its guardian (pid {g}) still runs {limit:?} later: a replacement may still be stopping nodes; see {}",
                        self.instance.log_path().display()
                    )));
                }
            }
        }
        progress.clear();
        println!("shutdown complete: {running} node(s) stopped, Supervisor (pid {pid}) exited");
        self.client = None;
        events::forget_seen(&self.instance);
        self.note(format!(
            "{running} node(s) stopped, Supervisor (pid {pid}) exited"
        ));
        Ok(Outcome::ShutDown)
    }

    fn reload(&mut self) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        // Check the file here first: a config that does not parse changes nothing, and the
        // error (file, line, key) is a config error (exit status 2).
        if let Some(p) = client.config_path().map(Path::to_owned) {
            if let Err(e) = Config::load(&p) {
                return Err(CliError::Unchanged(e));
            }
        }
        let summary = client.reload(REPLY_TIMEOUT)?;
        println!("reloaded: {summary}");
        self.note(format!("reloaded: {summary}"));
        // Added and changed nodes start (in stages), removed ones stop: show it settle.
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let idx: Vec<usize> = client.status().iter().map(|n| n.index).collect();
        let (done, interrupted) = wait_nodes(
            client,
            &idx,
            Duration::from_secs(20),
            Verb::Reload,
            &specs,
            // A node past its ready timeout (never ready) is as settled as it gets.
            |n| {
                !matches!(n.state, NodeState::Starting | NodeState::Stopping)
                    || not_ready_in_time(n, &specs)
            },
        );
        if interrupted {
            println!("stopped waiting; the Supervisor carries on (see `status`)");
        }
        let unsettled: Vec<String> = done
            .iter()
            .filter(|n| matches!(n.state, NodeState::Starting | NodeState::Stopping))
            .map(|n| format!("{} ({})", n.name, n.state.as_str()))
            .collect();
        if !unsettled.is_empty() {
            println!("still settling: {}", unsettled.join(", "));
        }
        Ok(Outcome::Done)
    }

    fn signal(&mut self, signal: i32, words: &[String]) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let names = selected_names(client, words)?;
        let idx = send_named(client, Opcode::Signal, words, signal as u64)?;
        let sig = crate::config::signal_name(signal);
        println!(
            "sent SIG{sig} to {} node(s): {}",
            idx.len(),
            names.join(", ")
        );
        self.note(format!("SIG{sig} sent to {}", names.join(",")));
        Ok(Outcome::Done)
    }

    fn upgrade(&mut self) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let generation = client.generation();
        let pid = client.supervisor_pid();
        let mut cursor = client.event_head();
        // The Supervisor checks the new binary first (it must answer a version probe in
        // time); a refusal leaves everything as it was.
        let said = match client.upgrade_supervisor(REPLY_TIMEOUT) {
            Err(ClientError::Rejected { message, .. }) => {
                return Err(CliError::Failed(format!(
                    "upgrade-supervisor refused: {message}; the Supervisor (pid {pid}) runs on unchanged and still supervises every node (see {})",
                    self.instance.log_path().display()
                )))
            }
            other => other?,
        };
        // The new program takes the region over: the generation goes up, the pid stays, and
        // it serves once the takeover is done. If the exec fails, the old program says so in
        // the event ring and runs on.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.generation() == generation || !client.serving() {
            while let Some((_, ev, _)) = client.next_event(&mut cursor) {
                if ev.kind != crate::protocol::event::EventKind::UpgradeFailed || ev.pid != pid {
                    continue;
                }
                if ev.b == crate::protocol::event::upgrade_failure::EXEC {
                    return Err(CliError::Failed(format!(
                        "the Supervisor (pid {pid}) could not re-execute {}: {}; it runs on unchanged",
                        said.trim_start_matches("checking ")
                            .trim_end_matches(", then re-executing it"),
                        std::io::Error::from_raw_os_error(ev.a as i32)
                    )));
                }
                return Err(CliError::Failed(format!(
                    "upgrade-supervisor refused: {}; the Supervisor (pid {pid}) runs on unchanged and still supervises every node (see {})",
                    super::events::upgrade_failure_text(&ev),
                    self.instance.log_path().display()
                )));
            }
            if Instant::now() >= deadline || !client.supervisor_alive() {
                return Err(CliError::Failed(format!(
                    "the Supervisor (pid {pid}) did not come back after re-executing ({}); see {}",
                    said,
                    self.instance.log_path().display()
                )));
            }
            let head = client.event_head();
            client.wait_event(head, Duration::from_millis(100));
        }
        println!(
            "Supervisor pid {pid} re-executed: generation {} -> {}",
            generation,
            client.generation()
        );
        Ok(Outcome::Done)
    }

    /// `check`: the config's every mistake and every node's unresolvable program, user, group
    /// or folder, each with its line; starts nothing. Exit status 2 if anything is wrong.
    fn check(&mut self) -> Result<Outcome, CliError> {
        // The running Supervisor's file if this session is attached already (never attach
        // here: attaching to a dead Supervisor's region would start a new one).
        let recorded = self
            .client
            .as_ref()
            .and_then(|c| c.config_path().map(Path::to_owned));
        let path = match recorded {
            Some(p) => p,
            None => find_config(self.config.as_deref())?,
        };
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e @ ConfigError::Io { .. }) => return Err(e.into()),
            Err(e) => {
                let each = e.each();
                for problem in &each {
                    println!("{problem}");
                }
                self.note(format!("{} mistake(s) in the file", each.len()));
                return Err(CliError::Problems(format!(
                    "{}: {} mistake(s) in the file (above); nothing was started",
                    path.display(),
                    each.len()
                )));
            }
        };
        let mut problems = super::check::problems(&config);
        let (zeek_problems, notes) = super::check::zeek_scripts(&config);
        for note in &notes {
            println!("{note}");
        }
        problems.extend(zeek_problems);
        for p in &problems {
            println!("{}:{}: {}", path.display(), p.line, p.message);
        }
        if problems.is_empty() {
            println!(
                "{}: {} node(s), every program, user, group and folder resolves",
                path.display(),
                config.nodes.len()
            );
            self.note("no problem");
            return Ok(Outcome::Done);
        }
        self.note(format!("{} problem(s)", problems.len()));
        Err(CliError::Problems(format!(
            "{}: {} problem(s) (above); nothing was started",
            path.display(),
            problems.len()
        )))
    }

    fn ping(&mut self, count: u32) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let mut times = Vec::with_capacity(count as usize);
        for _ in 0..count {
            times.push(client.ping(REPLY_TIMEOUT)?);
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "pong from Supervisor pid {}: {} round trip(s), median {:.1} us, min {:.1} us, max {:.1} us",
            client.supervisor_pid(),
            count,
            median.as_secs_f64() * 1e6,
            times[0].as_secs_f64() * 1e6,
            times[times.len() - 1].as_secs_f64() * 1e6
        );
        Ok(Outcome::Done)
    }
}

/// How long `status` waits for a Supervisor that is taking over (or coming back from an
/// upgrade) to serve, before it shows the last recorded states, unverified.
const SERVE_WAIT: Duration = Duration::from_secs(2);

/// Why the table an attached `client` read cannot all be shown as the truth, if it cannot:
/// the Supervisor does not serve (its region does not say `ready`, or its doorbell has no
/// reader: then every row is marked unverified), or records fail their check and were not
/// rewritten in time.
fn attached_doubt(client: &Client, nodes: &mut [NodeStatus]) -> Option<String> {
    let pid = client.supervisor_pid();
    let log = client.instance().log_path();
    if !client.supervisor_alive() {
        nodes.iter_mut().for_each(NodeStatus::unverify);
        return Some(format!(
            "the Supervisor (pid {pid}) exited while this command read its table: the states shown are the last ones it recorded, unverified"
        ));
    }
    if let Err(why) = client.check_serving() {
        nodes.iter_mut().for_each(NodeStatus::unverify);
        let alive = nodes.iter().filter(|n| n.pid_alive == Some(true)).count();
        return Some(format!(
            "the Supervisor (pid {pid}) is alive but does not serve: {why}; the states shown are the last ones recorded, unverified ({alive} recorded process(es) still alive per /proc, unsupervised until it serves or is replaced); see {}",
            log.display()
        ));
    }
    let bad: Vec<String> = nodes
        .iter()
        .filter(|n| n.damaged)
        .map(|n| n.name.clone())
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "{} record(s) of the node table fail their check ({}) and the Supervisor (pid {pid}) did not rewrite them within {} s of being asked: their rows show `unknown`; see {}",
            bad.len(),
            bad.join(", "),
            crate::client::REPAIR_WAIT.as_secs(),
            log.display()
        )
    })
}

/// The names of the nodes `words` select in the running table. While records fail their
/// check (and were not repaired in time), only exact names of records that verify select:
/// a pattern, a role, `all` or another name might mean a node whose record is damaged.
fn selected_names(client: &Client, words: &[String]) -> Result<Vec<String>, CliError> {
    let nodes = client.status();
    client.check_damage()?;
    if nodes.iter().any(|n| n.damaged) {
        let exact = |w: &String| nodes.iter().any(|n| !n.damaged && &n.name == w);
        if words.is_empty() {
            return Err(client.not_found("all", &nodes).into());
        }
        if let Some(w) = words.iter().find(|w| !exact(w)) {
            return Err(client.not_found(w, &nodes).into());
        }
    }
    let nodes: Vec<NodeStatus> = nodes.into_iter().filter(|n| !n.damaged).collect();
    let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
    Ok(idx.iter().map(|&i| nodes[i].name.clone()).collect())
}

/// Sends `op` for the nodes `words` select, by name (so a reload meanwhile never redirects
/// it), and returns their indices in the table as it is after the reply.
fn send_named(
    client: &Client,
    op: Opcode,
    words: &[String],
    arg: u64,
) -> Result<Vec<usize>, CliError> {
    let names = selected_names(client, words)?;
    send_names(client, op, &names, arg)
}

/// Sends `op` for the nodes named `names`; returns their indices in the table afterwards.
fn send_names(
    client: &Client,
    op: Opcode,
    names: &[String],
    arg: u64,
) -> Result<Vec<usize>, CliError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    client.command_by_name(op, names, arg, REPLY_TIMEOUT)?;
    let table = client.status();
    let mut idx: Vec<usize> = table
        .iter()
        .filter(|n| !n.damaged && names.contains(&n.name))
        .map(|n| n.index)
        .collect();
    // A named node whose record is now damaged is among these: wait for (and report) them,
    // rather than leave it out.
    if idx.len() < names.len() {
        idx.extend(table.iter().filter(|n| n.damaged).map(|n| n.index));
    }
    Ok(idx)
}

/// The text of `help` / `help COMMAND`: the command list, or the command's own `--help`.
pub fn help_text(topic: Option<&str>, in_shell: bool) -> Result<String, CliError> {
    match topic {
        None => Ok(format!(
            "commands (`help COMMAND` or `COMMAND --help` for more):\n{}\n{NODE_HELP}\n",
            super::args::command_list()
        )),
        Some(t) => super::args::command_help(t, in_shell).ok_or_else(|| {
            let names: Vec<String> = super::args::commands().into_iter().map(|c| c.0).collect();
            CliError::Usage(format!(
                "no such command '{t}'{}",
                crate::config::did_you_mean(t, names.iter().map(String::as_str))
            ))
        }),
    }
}
