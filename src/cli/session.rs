//! A Main's session: the instance, where its config is, and (once attached) the client. Runs
//! one parsed command and says how it went. The one-shot CLI and the shell share it.

use super::args::{Cmd, COMMANDS, NODE_HELP};
use super::output;
use super::select::{self, Named};
use crate::client::{Client, ClientError, NodeStatus};
use crate::config::{Config, ConfigError, NodeType};
use crate::instance::Instance;
use crate::protocol::mailbox::Opcode;
use crate::protocol::node::NodeState;
use std::collections::HashMap;
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
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) | CliError::Config(_) | CliError::NoConfig(..) => 2,
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
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
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
            print!("{}", output::status_table(&chosen));
        }
        if chosen.iter().all(|n| n.state == NodeState::Running) {
            Ok(Outcome::Done)
        } else {
            Ok(Outcome::Status(3))
        }
    }

    fn start(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        let client = self.spawn_if_needed()?;
        let idx = self_selected(client, words)?;
        client.command(Opcode::Start, &idx, 0, REPLY_TIMEOUT)?;
        let done = wait_nodes(client, &idx, Duration::from_secs(20), |n| {
            matches!(n.state, NodeState::Running | NodeState::Failed)
        });
        report(&done, "started", |n| n.state == NodeState::Running)
    }

    fn stop(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        let Some(client) = self.client() else {
            println!(
                "no Supervisor is running for instance '{}': every node is stopped",
                self.instance.name()
            );
            return Ok(Outcome::Done);
        };
        let idx = self_selected(client, words)?;
        client.command(Opcode::Stop, &idx, 0, REPLY_TIMEOUT)?;
        let done = wait_nodes(client, &idx, Duration::from_secs(20), |n| {
            matches!(n.state, NodeState::Stopped | NodeState::Failed) && n.pid.is_none()
        });
        report(&done, "stopped", |n| n.pid.is_none())
    }

    fn restart(&mut self, words: &[String]) -> Result<Outcome, CliError> {
        let client = self.spawn_if_needed()?;
        let idx = self_selected(client, words)?;
        let before: HashMap<usize, Option<u32>> = client
            .status()
            .into_iter()
            .map(|n| (n.index, n.pid))
            .collect();
        client.command(Opcode::Restart, &idx, 0, REPLY_TIMEOUT)?;
        let done = wait_nodes(client, &idx, Duration::from_secs(20), |n| {
            let old = before.get(&n.index).copied().flatten();
            (n.state == NodeState::Running && n.pid.is_some() && n.pid != old)
                || n.state == NodeState::Failed
        });
        report(&done, "restarted", |n| n.state == NodeState::Running)
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
        // Wait as long as the slowest stop may take (its SIGKILL deadline), plus a margin.
        let start = Instant::now();
        loop {
            let longest = client
                .status()
                .iter()
                .filter_map(|n| n.deadline_in)
                .max()
                .unwrap_or_default();
            let step = (longest + Duration::from_secs(5)).min(Duration::from_secs(1));
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
        println!("shutdown complete: {running} node(s) stopped, Supervisor (pid {pid}) exited");
        self.client = None;
        Ok(Outcome::ShutDown)
    }

    fn reload(&mut self) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let reply = client.command(Opcode::Reload, &[], 0, REPLY_TIMEOUT)?;
        println!("reloaded: {}", reply.message);
        Ok(Outcome::Done)
    }

    fn signal(&mut self, signal: i32, words: &[String]) -> Result<Outcome, CliError> {
        let client = self.require_client()?;
        let idx = self_selected(client, words)?;
        client.command(Opcode::Signal, &idx, signal as u64, REPLY_TIMEOUT)?;
        println!(
            "sent SIG{} to {} node(s)",
            crate::config::signal_name(signal),
            idx.len()
        );
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

/// Waits until every selected node satisfies `done`, the Supervisor dies, or the time runs out.
/// The limit stretches to cover a node's published deadline (a stop timeout, a restart delay),
/// up to two minutes in all.
fn wait_nodes(
    client: &Client,
    idx: &[usize],
    base: Duration,
    done: impl Fn(&NodeStatus) -> bool,
) -> Vec<NodeStatus> {
    let start = Instant::now();
    loop {
        let head = client.event_head();
        let all = client.status();
        let sel: Vec<NodeStatus> = all.into_iter().filter(|n| idx.contains(&n.index)).collect();
        if sel.iter().all(&done) {
            return sel;
        }
        let mut limit = base;
        for n in &sel {
            if let Some(d) = n.deadline_in {
                limit = limit.max(start.elapsed() + d + Duration::from_secs(5));
            }
        }
        let limit = limit.min(Duration::from_secs(120));
        if start.elapsed() >= limit || !client.supervisor_alive() {
            return sel;
        }
        let left = limit - start.elapsed();
        client.wait_event(head, left.min(Duration::from_secs(1)));
    }
}

fn report(
    nodes: &[NodeStatus],
    verb: &str,
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
    } else {
        Err(CliError::Failed(format!(
            "{} node(s) not {verb}: {}; see `broctld status` and the node's stderr file",
            bad.len(),
            bad.join(", ")
        )))
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
