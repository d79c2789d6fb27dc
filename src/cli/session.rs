//! A Main's session: the instance, where its config is, and (once attached) the client. Runs
//! one parsed command and says how it went. The one-shot CLI and the shell share it.

use super::args::{Cmd, COMMANDS, NODE_HELP};
use super::events::{self, Names, Seen};
use super::output;
use super::progress::{self, Progress};
use super::select::{self, Named};
use super::style::{code, state_color, Cell, Style};
use super::{interrupt, top};
use crate::client::{Client, ClientError, NodeStatus};
use crate::config::{Config, ConfigError, NodeSpec, NodeType};
use crate::instance::Instance;
use crate::protocol::layout::SupervisorState;
use crate::protocol::mailbox::Opcode;
use crate::protocol::node::NodeState;
use crate::sys::lockfile::{LockFile, Probe};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    #[error("no config file: none given with --config, and neither {} nor {} exists", .0.display(), .1.display())]
    NoConfig(PathBuf, PathBuf),
    /// The command ran but did not reach its goal.
    #[error("{0}")]
    Failed(String),
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
        Session {
            instance,
            config,
            client: None,
            style: Style::stdout(),
            was_attached: false,
            note: None,
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
        let recorded = self
            .client()
            .and_then(|c| c.config_path().map(Path::to_owned));
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
            self.client = Client::attach(&self.instance).ok();
        }
        if self.client.is_none() && self.region_survives() {
            self.recover();
        }
        if self.client.is_some() {
            self.was_attached = true;
        }
        self.client.as_ref()
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
            // Re-run attach to get its precise error.
            return Err(Client::attach(&self.instance)
                .map(|_| ())
                .unwrap_err()
                .into());
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
            Cmd::Help(topic) => {
                print!("{}", help_text(topic.as_deref())?);
                Ok(Outcome::Done)
            }
            Cmd::Detach => Ok(Outcome::Detach),
            Cmd::Status { nodes, json } => self.status(nodes, *json),
            Cmd::Start(nodes) => self.start(nodes),
            Cmd::Stop(nodes) => self.stop(nodes),
            Cmd::Restart(nodes) => self.restart(nodes),
            Cmd::Shutdown => self.shutdown(),
            Cmd::Ping(n) => self.ping(*n),
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
            Cmd::Top { nodes, json } => self.top(nodes, *json),
            Cmd::Nodes { nodes, json } => self.nodes(nodes, *json),
            Cmd::ShowConfig { json } => self.show_config(*json),
            Cmd::Daemon => Err(CliError::Usage(
                "daemon runs on its own: `broctld daemon`, not in the shell".into(),
            )),
            Cmd::Supervisor { .. } => Err(CliError::Usage(
                "__supervisor is internal: broctld starts it by itself".into(),
            )),
        }
    }

    fn status(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let nodes = match self.client() {
            Some(c) => c.status(),
            None => {
                // No Supervisor: every configured node is stopped.
                let cfg = find_config(self.config.as_deref())?;
                let config = Config::load(&cfg)?;
                config
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| NodeStatus {
                        index: i,
                        name: n.name.clone(),
                        node_type: n.node_type,
                        state: NodeState::Stopped,
                        pid: None,
                        uptime: None,
                        restarts: 0,
                        last_exit: None,
                        started_wall_ms: 0,
                        deadline_in: None,
                    })
                    .collect()
            }
        };
        let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<NodeStatus> = idx.iter().map(|&i| nodes[i].clone()).collect();
        if json {
            println!("{}", output::status_json(&chosen));
        } else {
            if self.client.is_none() {
                println!(
                    "no Supervisor is running for instance '{}': every node is stopped",
                    self.instance.name()
                );
            }
            print!("{}", output::status_table(&chosen, self.style));
        }
        let down: Vec<&str> = chosen
            .iter()
            .filter(|n| n.state != NodeState::Running)
            .map(|n| n.name.as_str())
            .collect();
        if down.is_empty() {
            self.note(format!("{} node(s) running", chosen.len()));
            Ok(Outcome::Done)
        } else {
            self.note(format!("not running: {}", down.join(",")));
            Ok(Outcome::Status(3))
        }
    }

    /// The configured specs by name, for progress lines (empty if the config cannot be read).
    fn specs(&mut self) -> HashMap<String, NodeSpec> {
        self.load_config()
            .map(|c| c.nodes.into_iter().map(|n| (n.name.clone(), n)).collect())
            .unwrap_or_default()
    }

    fn start(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        self.spawn_if_needed()?;
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let idx = self_selected(client, words)?;
        client.command(Opcode::Start, &idx, 0, REPLY_TIMEOUT)?;
        let (done, interrupted) = wait_nodes(
            client,
            &idx,
            Duration::from_secs(20),
            Verb::Start,
            &specs,
            |n| {
                matches!(n.state, NodeState::Running | NodeState::Failed)
                    || not_ready_in_time(n, &specs)
            },
        );
        let r = report(&done, "started", interrupted, |n| {
            n.state == NodeState::Running
        });
        self.note_result(&r, &done, "started");
        r
    }

    fn stop(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        if self.client().is_none() {
            println!(
                "no Supervisor is running for instance '{}': every node is stopped",
                self.instance.name()
            );
            return Ok(Outcome::Done);
        }
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
        let idx = self_selected(client, words)?;
        client.command(Opcode::Stop, &idx, 0, REPLY_TIMEOUT)?;
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
        let idx = self_selected(client, words)?;
        let before: HashMap<usize, Option<u32>> = client
            .status()
            .into_iter()
            .map(|n| (n.index, n.pid))
            .collect();
        client.command(Opcode::Restart, &idx, 0, REPLY_TIMEOUT)?;
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
        let Some(client) = self.client() else {
            println!(
                "no Supervisor is running for instance '{}'; nothing to shut down",
                self.instance.name()
            );
            return Ok(Outcome::ShutDown);
        };
        let pid = client.supervisor_pid();
        let running = client.status().iter().filter(|n| n.pid.is_some()).count();
        client.command(Opcode::Shutdown, &[], 0, REPLY_TIMEOUT)?;
        let specs = self.specs();
        let client = self.client.as_ref().expect("attached above");
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
        let reply = client.command(Opcode::Reload, &[], 0, REPLY_TIMEOUT)?;
        println!("reloaded: {}", reply.message);
        self.note(format!("reloaded: {}", reply.message));
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
            |n| !matches!(n.state, NodeState::Starting | NodeState::Stopping),
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
        let idx = self_selected(client, words)?;
        let names: Vec<String> = client
            .status()
            .into_iter()
            .filter(|n| idx.contains(&n.index))
            .map(|n| n.name)
            .collect();
        client.command(Opcode::Signal, &idx, signal as u64, REPLY_TIMEOUT)?;
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
        let reply = client.command(Opcode::Upgrade, &[], 0, REPLY_TIMEOUT)?;
        // The new program takes the region over: the generation goes up, the pid stays.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.generation() == generation {
            if Instant::now() >= deadline || !client.supervisor_alive() {
                return Err(CliError::Failed(format!(
                    "the Supervisor (pid {pid}) did not come back after re-executing ({}); see {}",
                    reply.message,
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

    fn events(
        &mut self,
        follow: bool,
        since: Option<u64>,
        last: Option<usize>,
        json: bool,
    ) -> Result<Outcome, CliError> {
        self.require_client()?;
        // Following owns its own attachment: it re-attaches when a new Supervisor takes over,
        // and never starts one itself.
        let mut client = Client::attach(&self.instance)?;
        let style = self.style;
        let head = client.event_head();
        let (mut cursor, note) = match since {
            Some(s) => (s, None),
            None if last.is_some() => (client.oldest_event(), None),
            None => events::since_last_seen(&client),
        };
        if let Some(n) = last {
            cursor = cursor.max(head.saturating_sub(n as u64));
        }
        if let Some(n) = note {
            eprintln!("broctld: {n}");
        }
        if follow {
            interrupt::install();
        }
        let capacity = client.shared().ring().capacity();
        let mut shown = 0u64;
        let mut missed_total = 0u64;
        let mut region = events::region_id(&client);
        let mut names = Names::of(&client);
        loop {
            while let Some((seq, ev, missed)) = client.next_event(&mut cursor) {
                if missed > 0 {
                    missed_total += missed;
                    eprintln!("broctld: {}", events::missed_note(missed, capacity));
                }
                if ev.node != crate::protocol::event::NO_NODE && ev.node as usize >= names.0.len() {
                    names = Names::of(&client);
                }
                if json {
                    println!("{}", events::json(seq, &ev, &names));
                } else {
                    println!("{}", events::line(seq, &ev, &names, style));
                }
                shown += 1;
                if ev.kind == crate::protocol::event::EventKind::CommandApplied {
                    names = Names::of(&client);
                }
            }
            events::save_seen(
                &self.instance,
                Seen {
                    region,
                    next: cursor,
                },
            );
            if !follow {
                break;
            }
            if interrupt::pending() {
                break;
            }
            if !client.supervisor_alive() {
                eprintln!(
                    "broctld: the Supervisor (pid {}) is gone; waiting for a new one",
                    client.supervisor_pid()
                );
                loop {
                    if interrupt::pending() {
                        return Ok(Outcome::Done);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                    if let Ok(c) = Client::attach(&self.instance) {
                        client = c;
                        break;
                    }
                }
                if events::region_id(&client) != region {
                    region = events::region_id(&client);
                    cursor = client.oldest_event();
                }
                names = Names::of(&client);
                eprintln!(
                    "broctld: following the Supervisor pid {} (generation {})",
                    client.supervisor_pid(),
                    client.generation()
                );
                continue;
            }
            client.wait_event(cursor, Duration::from_millis(250));
        }
        if shown == 0 && !follow && !json {
            eprintln!(
                "broctld: no new events (#{} is the next; `events --since 0` shows the {} held)",
                cursor,
                cursor - client.oldest_event().min(cursor)
            );
        }
        self.note(format!(
            "{shown} event(s) shown{}",
            if missed_total > 0 {
                format!(", {missed_total} missed")
            } else {
                String::new()
            }
        ));
        Ok(Outcome::Done)
    }

    /// The one configured node that `word` names.
    fn one_node(&mut self, word: &str) -> Result<NodeSpec, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, &[word.to_owned()]).map_err(CliError::Usage)?;
        match idx.as_slice() {
            [i] => Ok(config.nodes[*i].clone()),
            [] => Err(CliError::Usage(format!("no node matches '{word}'"))),
            more => Err(CliError::Usage(format!(
                "'{word}' names {} nodes ({}); name one",
                more.len(),
                more.iter()
                    .map(|&i| config.nodes[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn logs(
        &mut self,
        word: &str,
        lines: usize,
        follow: bool,
        stderr: bool,
        json: bool,
    ) -> Result<Outcome, CliError> {
        if json && follow {
            return Err(CliError::Usage(
                "logs: --json prints the tail once; it does not go with -f".into(),
            ));
        }
        let spec = self.one_node(word)?;
        let path = if stderr { &spec.stderr } else { &spec.stdout };
        let tail = match crate::supervisor::crash::tail(path, lines) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !json {
                    eprintln!(
                        "broctld: {} has written nothing to {} yet",
                        spec.name,
                        path.display()
                    );
                }
                Vec::new()
            }
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        if json {
            println!(
                "{{\"node\": {}, \"file\": {}, \"lines\": {}}}",
                output::json_str(&spec.name),
                output::json_str(&path.to_string_lossy()),
                output::json_list(&tail)
            );
        } else {
            for l in &tail {
                println!("{l}");
            }
        }
        self.note(format!(
            "{} line(s) of {}{}",
            tail.len(),
            path.display(),
            if follow { ", following" } else { "" }
        ));
        if follow {
            interrupt::install();
            follow_file(path)?;
        }
        Ok(Outcome::Done)
    }

    fn diag(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeSpec> = idx.iter().map(|&i| &config.nodes[i]).collect();
        let reports: Vec<(&NodeSpec, Vec<CrashInfo>)> = chosen
            .iter()
            .map(|n| {
                let mut v: Vec<CrashInfo> = crate::supervisor::crash::list(&n.cwd)
                    .into_iter()
                    .map(|p| CrashInfo::read(&p))
                    .collect();
                v.reverse(); // newest first
                (*n, v)
            })
            .collect();
        let total: usize = reports.iter().map(|(_, v)| v.len()).sum();
        self.note(format!("{total} crash report(s)"));
        if json {
            let items: Vec<String> = reports
                .iter()
                .map(|(n, v)| {
                    let list: Vec<String> = v.iter().map(CrashInfo::json).collect();
                    let latest = v
                        .first()
                        .and_then(|c| std::fs::read_to_string(&c.path).ok())
                        .map_or("null".into(), |t| output::json_str(&t));
                    format!(
                        "\n  {{\"node\": {}, \"dir\": {}, \"reports\": [{}], \"latest\": {}}}",
                        output::json_str(&n.name),
                        output::json_str(&n.cwd.to_string_lossy()),
                        list.join(", "),
                        latest
                    )
                })
                .collect();
            println!(
                "[{}{}]",
                items.join(","),
                if items.is_empty() { "" } else { "\n" }
            );
            return Ok(Outcome::Done);
        }
        if let [(n, v)] = reports.as_slice() {
            let Some(latest) = v.first() else {
                println!(
                    "no crash report for {} in {}: it has not died abnormally since reports were kept",
                    n.name,
                    n.cwd.display()
                );
                return Ok(Outcome::Done);
            };
            println!(
                "{} {} (latest of {}):",
                self.style.paint(code::BOLD, "crash report"),
                latest.path.display(),
                v.len()
            );
            let text = std::fs::read_to_string(&latest.path).map_err(|e| {
                CliError::Failed(format!("cannot read {}: {e}", latest.path.display()))
            })?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            if v.len() > 1 {
                println!("\nolder reports of {}:", n.name);
                print!("{}", crash_table(&v[1..], None, self.style));
            }
            return Ok(Outcome::Done);
        }
        let rows: Vec<(String, &CrashInfo, usize)> = reports
            .iter()
            .filter_map(|(n, v)| v.first().map(|c| (n.name.clone(), c, v.len())))
            .collect();
        if rows.is_empty() {
            println!("no crash reports for {} node(s)", chosen.len());
            return Ok(Outcome::Done);
        }
        let infos: Vec<CrashInfo> = rows.iter().map(|(_, c, _)| (*c).clone()).collect();
        let labels: Vec<(String, usize)> = rows.iter().map(|(n, _, k)| (n.clone(), *k)).collect();
        print!("{}", crash_table(&infos, Some(&labels), self.style));
        println!("(`diag NODE` prints a node's latest report in full)");
        Ok(Outcome::Done)
    }

    fn top(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let Some(client) = self.client() else {
            if json {
                println!("[]");
            } else {
                println!(
                    "no Supervisor is running for instance '{}': no node runs",
                    self.instance.name()
                );
            }
            return Ok(Outcome::Done);
        };
        let nodes = client.status();
        let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeStatus> = idx.iter().map(|&i| &nodes[i]).collect();
        let leaders: Vec<u32> = chosen.iter().filter_map(|n| n.pid).collect();
        let usage = top::measure(&leaders, Duration::from_millis(300));
        // Uptimes after the sampling pause.
        let fresh: HashMap<usize, NodeStatus> =
            client.status().into_iter().map(|n| (n.index, n)).collect();
        self.note(format!("{} node(s) measured", leaders.len()));
        if json {
            let items: Vec<String> = chosen
                .iter()
                .map(|n| {
                    let n = fresh.get(&n.index).unwrap_or(n);
                    let u = n.pid.and_then(|p| usage.get(&p));
                    format!(
                        "\n  {{\"name\": {}, \"state\": {}, \"pid\": {}, \"procs\": {}, \"cpu_percent\": {}, \"rss_bytes\": {}, \"threads\": {}, \"uptime_ms\": {}}}",
                        output::json_str(&n.name),
                        output::json_str(n.state.as_str()),
                        n.pid.map_or("null".into(), |p| p.to_string()),
                        u.map_or("null".into(), |u| u.procs.to_string()),
                        u.map_or("null".into(), |u| format!("{:.1}", u.cpu_percent)),
                        u.map_or("null".into(), |u| u.rss_bytes.to_string()),
                        u.map_or("null".into(), |u| u.threads.to_string()),
                        n.uptime.map_or("null".into(), |d| d.as_millis().to_string()),
                    )
                })
                .collect();
            println!(
                "[{}{}]",
                items.join(","),
                if items.is_empty() { "" } else { "\n" }
            );
            return Ok(Outcome::Done);
        }
        let rows: Vec<Vec<Cell>> = chosen
            .iter()
            .map(|n| {
                let n = fresh.get(&n.index).unwrap_or(n);
                let u = n.pid.and_then(|p| usage.get(&p));
                let dash = || Cell::new("-");
                vec![
                    Cell::new(n.name.clone()),
                    Cell::colored(n.state.as_str(), state_color(n.state.as_str())),
                    n.pid.map_or_else(dash, |p| Cell::new(p.to_string())),
                    u.map_or_else(dash, |u| Cell::new(u.procs.to_string())),
                    u.map_or_else(dash, |u| Cell::new(format!("{:.1}", u.cpu_percent))),
                    u.map_or_else(dash, |u| Cell::new(top::bytes(u.rss_bytes))),
                    u.map_or_else(dash, |u| Cell::new(u.threads.to_string())),
                    n.uptime
                        .map_or_else(dash, |d| Cell::new(output::duration(d))),
                ]
            })
            .collect();
        print!(
            "{}",
            super::style::table(
                &["NAME", "STATE", "PID", "PROCS", "CPU%", "RSS", "THREADS", "UPTIME"],
                &rows,
                self.style
            )
        );
        Ok(Outcome::Done)
    }

    fn nodes(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeSpec> = idx.iter().map(|&i| &config.nodes[i]).collect();
        self.warn_if_config_differs(&config);
        self.note(format!("{} node(s) listed", chosen.len()));
        if json {
            let items: Vec<String> = chosen
                .iter()
                .map(|n| format!("\n  {}", output::spec_json(n)))
                .collect();
            println!(
                "[{}{}]",
                items.join(","),
                if items.is_empty() { "" } else { "\n" }
            );
        } else {
            print!("{}", output::nodes_table(&chosen, self.style));
        }
        Ok(Outcome::Done)
    }

    fn show_config(&mut self, json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        self.warn_if_config_differs(&config);
        self.note(format!("{}", config.path.display()));
        if json {
            let items: Vec<String> = config
                .nodes
                .iter()
                .map(|n| format!("\n    {}", output::spec_json(n)))
                .collect();
            println!(
                "{{\n  \"path\": {},\n  \"dir\": {},\n  \"nodes\": [{}{}]\n}}",
                output::json_str(&config.path.to_string_lossy()),
                output::json_str(&config.dir.to_string_lossy()),
                items.join(","),
                if items.is_empty() { "" } else { "\n  " }
            );
        } else {
            println!(
                "# effective config of instance '{}' from {}",
                self.instance.name(),
                config.path.display()
            );
            println!("# (every key explicit: defaults applied, paths absolute)");
            print!("{}", config.to_toml());
        }
        Ok(Outcome::Done)
    }

    /// Says so on stderr when the config file names other nodes than the running table (it
    /// was edited and not yet reloaded).
    fn warn_if_config_differs(&mut self, config: &Config) {
        let Some(client) = self.client() else { return };
        let mut running: Vec<String> = client.status().into_iter().map(|n| n.name).collect();
        let mut file: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
        running.sort();
        file.sort();
        if running != file {
            eprintln!(
                "broctld: {} names other nodes than the Supervisor runs; `reload` applies it",
                config.path.display()
            );
        }
    }

    fn ping(&mut self, count: u32) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let mut times = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let t = Instant::now();
            client.command(Opcode::Ping, &[], 0, REPLY_TIMEOUT)?;
            times.push(t.elapsed());
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

fn self_selected(client: &Client, words: &[String]) -> Result<Vec<usize>, CliError> {
    let nodes = client.status();
    let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
    Ok(idx.iter().map(|&i| nodes[i].index).collect())
}

/// What a wait is for, to word its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
    Reload,
}

impl Verb {
    fn done_word(self) -> &'static str {
        match self {
            Verb::Start => "running",
            Verb::Stop => "stopped",
            Verb::Restart => "restarted",
            Verb::Reload => "settled",
        }
    }
}

/// Whether a node has been `starting` (spawned, not yet ready) for longer than its
/// `ready_timeout_ms`: an ordered start no longer waits for it.
fn not_ready_in_time(n: &NodeStatus, specs: &HashMap<String, NodeSpec>) -> bool {
    n.state == NodeState::Starting
        && n.pid.is_some()
        && specs
            .get(&n.name)
            .is_some_and(|s| n.uptime.unwrap_or_default() > s.policy.ready_timeout)
}

/// One progress line: the node that holds things up and why, then how many are done.
fn progress_text(
    verb: Verb,
    sel: &[NodeStatus],
    specs: &HashMap<String, NodeSpec>,
    done: impl Fn(&NodeStatus) -> bool,
) -> String {
    let finished = sel.iter().filter(|n| done(n)).count();
    let pending: Vec<&NodeStatus> = sel.iter().filter(|n| !done(n)).collect();
    let rank = |n: &NodeStatus| match (n.state, n.pid) {
        (NodeState::Stopping, _) => 0,
        (NodeState::Starting, Some(_)) => 1,
        (NodeState::Backoff, _) => 2,
        (NodeState::Starting, None) => 3,
        _ => 4,
    };
    let what = match pending.iter().min_by_key(|n| rank(n)) {
        None => "done".to_owned(),
        Some(n) => {
            let spec = specs.get(&n.name);
            match (n.state, n.pid) {
                (NodeState::Stopping, _) => {
                    let (sig, timeout) = spec.map_or(("stop signal".to_owned(), None), |s| {
                        (
                            format!("SIG{}", crate::config::signal_name(s.policy.stop_signal)),
                            Some(s.policy.stop_timeout),
                        )
                    });
                    match (timeout, n.deadline_in) {
                        (Some(t), Some(left)) => format!(
                            "stopping {}: {sig} sent, {} of {}",
                            n.name,
                            progress::secs(t.saturating_sub(left)),
                            progress::limit(t)
                        ),
                        (_, Some(left)) => format!(
                            "stopping {}: {sig} sent, SIGKILL in {}",
                            n.name,
                            progress::secs(left)
                        ),
                        _ => format!("stopping {}: {sig} sent", n.name),
                    }
                }
                (NodeState::Starting, Some(_)) => {
                    let up = n.uptime.unwrap_or_default();
                    match spec.map(|s| &s.policy) {
                        Some(p) if p.ready_fd.is_some() => format!(
                            "starting {}: waiting for it to say it is ready, {} of {}",
                            n.name,
                            progress::secs(up),
                            progress::limit(p.ready_timeout)
                        ),
                        Some(p) => format!(
                            "starting {}: ready after {}, {} so far",
                            n.name,
                            progress::limit(p.ready_after),
                            progress::secs(up)
                        ),
                        None => format!("starting {}: {}", n.name, progress::secs(up)),
                    }
                }
                (NodeState::Backoff, _) => format!(
                    "{}: died, next start in {}",
                    n.name,
                    progress::secs(n.deadline_in.unwrap_or_default())
                ),
                (NodeState::Starting, None) => {
                    format!("{}: queued until the earlier stages are ready", n.name)
                }
                (state, _) => format!("{}: {}", n.name, state.as_str()),
            }
        }
    };
    format!("{what} ({finished}/{} {})", sel.len(), verb.done_word())
}

/// Waits until every selected node satisfies `done`, the Supervisor dies, Ctrl-C (in the
/// shell), or the time runs out, showing progress on stderr. The limit stretches to cover a
/// node's published deadline (a stop timeout, a restart delay), up to two minutes in all.
/// Returns the nodes as last seen and whether Ctrl-C ended the wait.
fn wait_nodes(
    client: &Client,
    idx: &[usize],
    base: Duration,
    verb: Verb,
    specs: &HashMap<String, NodeSpec>,
    done: impl Fn(&NodeStatus) -> bool,
) -> (Vec<NodeStatus>, bool) {
    let start = Instant::now();
    let mut progress = Progress::new();
    // A queued stage waits for the ready timeout of the stage before it.
    let ready_wait = specs
        .values()
        .map(|s| s.policy.ready_timeout)
        .max()
        .unwrap_or_default();
    loop {
        let head = client.event_head();
        let all = client.status();
        let sel: Vec<NodeStatus> = all.into_iter().filter(|n| idx.contains(&n.index)).collect();
        if sel.iter().all(&done) {
            progress.clear();
            return (sel, false);
        }
        progress.update(&progress_text(verb, &sel, specs, &done));
        let mut limit = base;
        for n in &sel {
            if let Some(d) = n.deadline_in {
                limit = limit.max(start.elapsed() + d + Duration::from_secs(5));
            }
            if n.state == NodeState::Starting {
                limit = limit.max(ready_wait * 6);
            }
        }
        let limit = limit.min(Duration::from_secs(120));
        if start.elapsed() >= limit || !client.supervisor_alive() {
            progress.clear();
            return (sel, false);
        }
        if interrupt::installed() && interrupt::pending() {
            progress.clear();
            return (sel, true);
        }
        let left = limit - start.elapsed();
        client.wait_event(head, left.min(Duration::from_millis(250)));
    }
}

fn report(
    nodes: &[NodeStatus],
    verb: &str,
    interrupted: bool,
    ok: impl Fn(&NodeStatus) -> bool,
) -> Result<Outcome, CliError> {
    let mut bad = Vec::new();
    for n in nodes {
        if ok(n) {
            match n.pid {
                Some(pid) => println!("{}: {} (pid {pid})", n.name, n.state.as_str()),
                None => println!("{}: {}", n.name, n.state.as_str()),
            }
        } else {
            let why = n
                .last_exit
                .map(|e| format!(", last exit: {}", e.describe()))
                .unwrap_or_default();
            println!("{}: not {verb}: {}{why}", n.name, n.state.as_str());
            bad.push(n.name.clone());
        }
    }
    if bad.is_empty() {
        Ok(Outcome::Done)
    } else if interrupted {
        Err(CliError::Failed(format!(
            "stopped waiting (Ctrl-C) with {} node(s) not yet {verb}: {}; the Supervisor carries on, see `status`",
            bad.len(),
            bad.join(", ")
        )))
    } else {
        Err(CliError::Failed(format!(
            "{} node(s) not {verb}: {}; see `broctld status` and the node's stderr file",
            bad.len(),
            bad.join(", ")
        )))
    }
}

/// What the first lines of a crash report say.
#[derive(Debug, Clone, Default)]
struct CrashInfo {
    path: PathBuf,
    time: String,
    pid: String,
    exit: String,
    core: String,
}

impl CrashInfo {
    fn read(path: &Path) -> CrashInfo {
        let mut c = CrashInfo {
            path: path.to_owned(),
            ..CrashInfo::default()
        };
        let mut head = String::new();
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(4096).read_to_string(&mut head);
        }
        for l in head.lines().take(20) {
            if let Some((k, v)) = l.split_once(": ") {
                match k {
                    "time" => c.time = v.to_owned(),
                    "pid" => c.pid = v.to_owned(),
                    "exit" => c.exit = v.to_owned(),
                    "core dumped" => c.core = v.to_owned(),
                    _ => {}
                }
            }
        }
        c
    }

    fn json(&self) -> String {
        format!(
            "{{\"path\": {}, \"time\": {}, \"pid\": {}, \"exit\": {}, \"core_dumped\": {}}}",
            output::json_str(&self.path.to_string_lossy()),
            output::json_str(&self.time),
            self.pid
                .parse::<u32>()
                .map_or("null".into(), |p| p.to_string()),
            output::json_str(&self.exit),
            self.core == "yes"
        )
    }
}

fn crash_table(infos: &[CrashInfo], labels: Option<&[(String, usize)]>, style: Style) -> String {
    let mut header = vec!["TIME", "PID", "EXIT", "CORE", "REPORT"];
    if labels.is_some() {
        header.splice(0..0, ["NODE", "REPORTS"]);
    }
    let rows: Vec<Vec<Cell>> = infos
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut r = vec![
                Cell::new(c.time.clone()),
                Cell::new(c.pid.clone()),
                Cell::colored(c.exit.clone(), code::RED),
                Cell::new(if c.core.is_empty() {
                    "-".into()
                } else {
                    c.core.clone()
                }),
                Cell::new(c.path.display().to_string()),
            ];
            if let Some(l) = labels {
                r.splice(
                    0..0,
                    [Cell::new(l[i].0.clone()), Cell::new(l[i].1.to_string())],
                );
            }
            r
        })
        .collect();
    super::style::table(&header, &rows, style)
}

/// Prints what is appended to `path` until Ctrl-C: polls its size every 200 ms, starts over
/// when it is truncated or replaced (rotated), and waits for it if it does not exist yet.
fn follow_file(path: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let open = |from_end: bool| -> Option<(std::fs::File, u64, u64)> {
        let mut f = std::fs::File::open(path).ok()?;
        let meta = f.metadata().ok()?;
        let pos = if from_end { meta.len() } else { 0 };
        f.seek(SeekFrom::Start(pos)).ok()?;
        Some((f, pos, meta.ino()))
    };
    let mut cur = open(true);
    let mut partial = Vec::new();
    let out = std::io::stdout();
    loop {
        if interrupt::pending() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        let meta = std::fs::metadata(path).ok();
        match (&mut cur, &meta) {
            (None, Some(_)) => cur = open(false),
            (Some((_, pos, ino)), Some(m)) if m.ino() != *ino || m.len() < *pos => {
                eprintln!(
                    "broctld: {} was truncated or replaced; reading it from the start",
                    path.display()
                );
                partial.clear();
                cur = open(false);
            }
            _ => {}
        }
        let Some((f, pos, _)) = cur.as_mut() else {
            continue;
        };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
            *pos += buf.len() as u64;
            partial.extend_from_slice(&buf);
            if let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') {
                let mut o = out.lock();
                let _ = o.write_all(&partial[..=last_nl]);
                let _ = o.flush();
                partial.drain(..=last_nl);
            }
        }
    }
}

/// The text of `help` / `help COMMAND`.
pub fn help_text(topic: Option<&str>) -> Result<String, CliError> {
    match topic {
        None => {
            let mut s = String::from("commands:\n");
            for (name, args, what) in COMMANDS {
                s.push_str(&format!("  {:<28} {what}\n", format!("{name} {args}")));
            }
            s.push_str(&format!("\n{NODE_HELP}\n"));
            Ok(s)
        }
        Some(t) => COMMANDS
            .iter()
            .find(|c| c.0 == t || (t == "exit" || t == "quit") && c.0 == "detach")
            .map(|(name, args, what)| format!("{name} {args}\n  {what}\n  {NODE_HELP}\n"))
            .ok_or_else(|| CliError::Usage(format!("no such command '{t}'"))),
    }
}
