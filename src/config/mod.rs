//! The broctld configuration file: a TOML file with an optional `[defaults]`
//! table and any number of `[[node]]` tables, one per supervised process.
//!
//! ```toml
//! [defaults]
//! restart = "always"
//! stop_timeout_ms = 10000
//!
//! [[node]]
//! name = "worker-1"
//! type = "worker"
//! command = ["broctld-node", "--interval", "1s"]
//! env = { CLUSTER_NODE = "worker-1" }
//! ```
//!
//! [`Config::load`] reads and checks a file; every mistake in it (an unknown
//! key, a value of the wrong type or out of range, a duplicate node name, a
//! `start_after` naming an unknown node or forming a cycle) is reported as a
//! [`ConfigError::Invalid`] that names the file, the 1-based line and the key,
//! e.g. `broctld.toml:7: unknown key 'comand' in [[node]] (did you mean 'command'?)`.
//! A file with several mistakes gives all of them (up to [`MAX_ERRORS`]) at once, as
//! [`ConfigError::Several`]; only a file that is not TOML at all stops at its first.
//!
//! This module depends on no other module of the crate.

pub mod hosts;
pub mod layout;
pub mod node_cfg;
mod raw;
mod render;
#[cfg(test)]
mod tests;
pub mod zeek_cluster;
pub mod zeek_conf;
pub mod zeek_ini;
mod zeek_nodes;

pub use zeek_cluster::ZeekSetup;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raw::{Entry, Item, Raw};

// ---------------------------------------------------------------------------
// Public types.

/// The largest configuration file broctld reads (16 MiB): a bound, so that a config that is
/// really a device (`/dev/zero`) cannot grow the reader without limit.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A loaded and checked configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Absolute path of the configuration file.
    pub path: PathBuf,
    /// Absolute path of the folder holding the file; relative `cwd`s are resolved against it.
    pub dir: PathBuf,
    /// The nodes, in the order of their `[[node]]` tables in the file (a Zeek
    /// configuration's nodes first, in their start order).
    pub nodes: Vec<NodeSpec>,
    /// For a Zeek cluster (a zeek.conf, a cluster folder, a node.cfg, or a TOML file with
    /// `[zeek] conf = ...`): the layout and folders to set up before any node starts.
    pub zeek: Option<ZeekSetup>,
    /// For a multi-host cluster (a TOML file with `[[host]]` tables): every host and every
    /// node of every host; [`Config::nodes`] are then this host's only.
    pub cluster: Option<hosts::Cluster>,
}

/// Everything needed to run one node, with defaults applied and paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Unique name, see [`valid_name`].
    pub name: String,
    /// The node's role in the cluster (`type` in the file).
    pub node_type: NodeType,
    /// The program and its arguments; never empty, no NUL bytes.
    pub command: Vec<String>,
    /// Environment added to the node's, `[defaults]` env merged with the node's own
    /// (the node wins per key), sorted by key.
    pub env: Vec<(String, String)>,
    /// Absolute working directory.
    pub cwd: PathBuf,
    /// Absolute path of the file receiving the node's standard output.
    pub stdout: PathBuf,
    /// Absolute path of the file receiving the node's standard error.
    pub stderr: PathBuf,
    /// CPUs the node is pinned to (each `0..=1023`); empty means no pinning.
    pub cpu_affinity: Vec<usize>,
    /// Names of nodes that must be started before this one (all exist, no cycles).
    pub start_after: Vec<String>,
    /// Restart, stop and readiness policy. Nodes with equal policies share one (most nodes of
    /// a config have the `[defaults]` policy, and a policy is some 500 bytes): see
    /// [`Config::share_policies`].
    pub policy: Arc<Policy>,
    /// 1-based line of the node's `[[node]]` header, for messages.
    pub line: usize,
}

/// How a node is stopped, restarted and judged ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// When a node that exited is started again.
    pub restart: RestartPolicy,
    /// Signal sent to stop the node (a libc signal number).
    pub stop_signal: i32,
    /// How long to wait after `stop_signal` before sending `SIGKILL` (at least 1 ms).
    pub stop_timeout: Duration,
    /// Whether the node is started when the supervisor starts.
    pub autostart: bool,
    /// First delay between successive starts of a flapping node.
    pub restart_delay: Duration,
    /// Cap of the delay between starts (never smaller than `restart_delay` in a loaded config).
    pub restart_delay_max: Duration,
    /// Factor by which the delay grows after each quick death (finite, `>= 1.0`).
    pub restart_delay_factor: f64,
    /// A run at least this long resets the delay to `restart_delay`.
    pub restart_reset: Duration,
    /// This many quick deaths within `give_up_window` mark the node failed (0 = never give up).
    pub give_up_after: u32,
    /// Window for `give_up_after` (zero = never give up).
    pub give_up_window: Duration,
    /// A run shorter than this is a quick death.
    pub quick_death: Duration,
    /// Without `ready_fd`, the node counts as ready after running this long.
    pub ready_after: Duration,
    /// File descriptor number (3..=1023) on which the node writes a newline when ready.
    pub ready_fd: Option<i32>,
    /// How long an ordered start waits for this node to be ready before starting the next
    /// stage anyway (the node itself keeps running, still `starting`).
    pub ready_timeout: Duration,
    /// stdout/stderr files are rotated once they reach this many bytes, at a line boundary,
    /// while the node runs (0 = never).
    pub log_max_bytes: u64,
    /// Rotated files kept (`NAME.1` .. `NAME.N`).
    pub log_keep: u32,
    /// stdout/stderr go straight to the files, opened for append, not through the Supervisor:
    /// rotated only when the node (re)starts.
    pub log_direct: bool,
    /// Run as this user (the Supervisor must be root); checked to exist at load time.
    pub user: Option<String>,
    /// Run with this group (default: the user's primary group).
    pub group: Option<String>,
    /// The node's umask.
    pub umask: Option<u32>,
    /// `RLIMIT_NOFILE` (u64::MAX = unlimited).
    pub rlimit_nofile: Option<u64>,
    /// `RLIMIT_CORE` (u64::MAX = unlimited).
    pub rlimit_core: Option<u64>,
    /// `RLIMIT_MEMLOCK` (u64::MAX = unlimited).
    pub rlimit_memlock: Option<u64>,
    /// The node's nice level (-20..=19), set between fork and exec.
    pub nice: Option<i32>,
    /// The most memory the node may use, in bytes: its cgroup's `memory.max`. A host without
    /// the cgroup v2 memory controller refuses the config at start (preflight).
    pub memory_max: Option<u64>,
    /// Capabilities (`CAP_NET_RAW`, ...) raised into the node's ambient set, so that a node
    /// running as a non-root `user` keeps them across exec.
    pub capabilities: Vec<String>,
    /// The node's `PATH` (also where a bare program name is looked up); by default
    /// [`DEFAULT_PATH`].
    pub path: String,
    /// Names of variables the node takes from the Supervisor's environment (none by default).
    /// Everything else a node gets is defined: `env`, `PATH`, `HOME`, `USER`, `LOGNAME`,
    /// `SHELL` of the user it runs as, `NOTIFY_SOCKET` if used, and `BROCTLD_*`.
    pub inherit_env: Vec<String>,
    /// The node is ready when this file's first line reads a given line (Zeek's `-U` status
    /// file reading `RUNNING`); watched with inotify, no polling.
    pub ready_file: Option<ReadyFile>,
    /// A forking daemon's PID file (systemd's `Type=forking` + `PIDFile=`), relative to the
    /// node's working directory or absolute: once the started process exits with status 0,
    /// the process the file names (in the node's cgroup, or carrying its identity) is the
    /// node's main process. Removed before each start.
    pub pid_file: Option<PathBuf>,
    /// `ready = "notify"`: readiness (and status, main pid, watchdog) by systemd's
    /// notification protocol on the node's own `NOTIFY_SOCKET`.
    pub notify: bool,
    /// With `notify`: a running node that sends no `WATCHDOG=1` within this is killed and
    /// restarted by its policy (zero: no watchdog).
    pub watchdog: Duration,
    /// A command run (in the node's cwd, with its environment) every
    /// `ready_check_interval` while the node is `starting`, until it exits 0: then the node is
    /// ready (s6-notifyoncheck's idea). Empty: none.
    pub ready_check: Vec<String>,
    /// Time between the end of one `ready_check` run and the start of the next.
    pub ready_check_interval: Duration,
    /// What happens to a node not ready within `ready_timeout`.
    pub ready_timeout_action: ReadyTimeoutAction,
}

/// What happens to a node still `starting` after its `ready_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadyTimeoutAction {
    /// It goes on starting (an ordered start no longer waits for it).
    #[default]
    Wait,
    /// It is stopped and started again (counted in `restarts`).
    Restart,
    /// It is stopped and left `failed`.
    Fail,
}

impl ReadyTimeoutAction {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyTimeoutAction::Wait => "wait",
            ReadyTimeoutAction::Restart => "restart",
            ReadyTimeoutAction::Fail => "fail",
        }
    }
}

/// `ready_file = { path = ".status", line = "RUNNING" }`: readiness from a status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyFile {
    /// The file, relative to the node's working directory (or absolute). Removed before each
    /// start, so a previous run's file never counts.
    pub path: PathBuf,
    /// The first line that means ready (without its newline).
    pub line: String,
}

impl ReadyFile {
    /// Zeek's: `-U .status` reading `RUNNING`.
    pub fn zeek() -> ReadyFile {
        ReadyFile {
            path: PathBuf::from(".status"),
            line: "RUNNING".into(),
        }
    }
}

impl Default for Policy {
    /// `restart = "always"`, `stop_signal = "TERM"`, `stop_timeout_ms = 10000`,
    /// `autostart = true`, `restart_delay_ms = 100`, `restart_delay_max_ms = 30000`,
    /// `restart_delay_factor = 2.0`, `restart_reset_ms = 30000`, `give_up_after = 5`,
    /// `give_up_window_ms = 10000`, `quick_death_ms = 1000`, `ready_after_ms = 0`,
    /// no `ready_fd`, `ready_timeout_ms = 10000`, `log_max_bytes = 67108864` (64 MiB),
    /// `log_keep = 5`, `log_direct = false`, the default `PATH`, nothing inherited, and no user, group, umask, rlimits, nice level,
    /// memory limit or capabilities (inherited from the Supervisor).
    fn default() -> Self {
        Policy {
            restart: RestartPolicy::Always,
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_millis(10_000),
            autostart: true,
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_millis(30_000),
            restart_delay_factor: 2.0,
            restart_reset: Duration::from_millis(30_000),
            give_up_after: 5,
            give_up_window: Duration::from_millis(10_000),
            quick_death: Duration::from_millis(1_000),
            ready_after: Duration::ZERO,
            ready_fd: None,
            ready_timeout: Duration::from_millis(10_000),
            log_max_bytes: 64 << 20,
            log_keep: 5,
            log_direct: false,
            user: None,
            group: None,
            umask: None,
            rlimit_nofile: None,
            rlimit_core: None,
            rlimit_memlock: None,
            nice: None,
            memory_max: None,
            capabilities: Vec::new(),
            ready_file: None,
            path: DEFAULT_PATH.to_owned(),
            inherit_env: Vec::new(),
            pid_file: None,
            notify: false,
            watchdog: Duration::ZERO,
            ready_check: Vec::new(),
            ready_check_interval: Duration::from_millis(500),
            ready_timeout_action: ReadyTimeoutAction::Wait,
        }
    }
}

/// The role of a node in a Zeek cluster. The discriminant is a stable code
/// (see [`NodeType::code`]) that may be stored in shared memory.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    /// A single Zeek process doing everything.
    Standalone = 0,
    /// The cluster manager.
    Manager = 1,
    /// A logger, receiving logs from the other nodes.
    Logger = 2,
    /// A proxy.
    Proxy = 3,
    /// A worker, analysing traffic.
    Worker = 4,
    /// Anything else (the default).
    Other = 5,
}

impl NodeType {
    /// Every node type, in code order.
    pub const ALL: [NodeType; 6] = [
        NodeType::Standalone,
        NodeType::Manager,
        NodeType::Logger,
        NodeType::Proxy,
        NodeType::Worker,
        NodeType::Other,
    ];

    /// The name used in the file: `"standalone"`, `"manager"`, `"logger"`,
    /// `"proxy"`, `"worker"` or `"other"`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Standalone => "standalone",
            NodeType::Manager => "manager",
            NodeType::Logger => "logger",
            NodeType::Proxy => "proxy",
            NodeType::Worker => "worker",
            NodeType::Other => "other",
        }
    }

    /// The plural of [`NodeType::as_str`]: `"workers"`, `"proxies"`, ...
    pub fn plural(self) -> &'static str {
        match self {
            NodeType::Standalone => "standalones",
            NodeType::Manager => "managers",
            NodeType::Logger => "loggers",
            NodeType::Proxy => "proxies",
            NodeType::Worker => "workers",
            NodeType::Other => "others",
        }
    }

    /// Parses the name used in the file (exactly as [`NodeType::as_str`] gives it).
    pub fn parse(s: &str) -> Option<NodeType> {
        NodeType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The stable numeric code (the `repr(u8)` discriminant).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The node type with the given [`NodeType::code`].
    pub fn from_code(code: u8) -> Option<NodeType> {
        NodeType::ALL.get(usize::from(code)).copied()
    }

    /// Order in which node types are started when nothing else decides:
    /// loggers 0, managers and standalones 1, proxies 2, workers 3, others 4.
    pub fn start_rank(self) -> u8 {
        match self {
            NodeType::Logger => 0,
            NodeType::Manager | NodeType::Standalone => 1,
            NodeType::Proxy => 2,
            NodeType::Worker => 3,
            NodeType::Other => 4,
        }
    }
}

impl fmt::Display for NodeType {
    /// Writes [`NodeType::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a node that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// Every restart policy.
    const ALL: [RestartPolicy; 3] = [
        RestartPolicy::Always,
        RestartPolicy::OnFailure,
        RestartPolicy::Never,
    ];

    /// The name used in the file: `"always"`, `"on-failure"` or `"never"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }

    /// Parses the name used in the file (exactly as [`RestartPolicy::as_str`] gives it).
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        RestartPolicy::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for RestartPolicy {
    /// Writes [`RestartPolicy::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error loading a configuration file. Its `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The path as given by the caller.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Several mistakes in one file, each on its own line of the message, in the order of
    /// their lines; at most [`MAX_ERRORS`] are kept, `more` counts the rest.
    #[error("{}", several(errors, *more))]
    Several {
        /// The mistakes (each an [`ConfigError::Invalid`]).
        errors: Vec<ConfigError>,
        /// How many more were found and not kept.
        more: usize,
    },
    /// The file is not valid TOML or not a valid configuration.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The path as given by the caller.
        path: PathBuf,
        /// 1-based line of the mistake.
        line: usize,
        /// The key the mistake is about, if any (e.g. `stop_timeout_ms`, or the unknown key).
        key: Option<String>,
        /// What is wrong, without the path and line.
        message: String,
    },
}

/// Most mistakes of one file reported at once.
pub const MAX_ERRORS: usize = 20;

fn several(errors: &[ConfigError], more: usize) -> String {
    let mut s = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if more > 0 {
        s.push_str(&format!("\n(and {more} more mistake(s) not shown)"));
    }
    s
}

impl ConfigError {
    /// The 1-based line of an [`ConfigError::Invalid`] error (of the first for
    /// [`ConfigError::Several`]).
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::line),
        }
    }

    /// The key an [`ConfigError::Invalid`] error is about, if any (the first's for
    /// [`ConfigError::Several`]).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Several { errors, .. } => errors.first().and_then(ConfigError::key),
        }
    }

    /// Every mistake, one error each (one for anything but [`ConfigError::Several`]).
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several { errors, .. } => errors.iter().collect(),
            other => vec![other],
        }
    }
}

/// Whether `s` can be a node name: 1 to 48 characters out of `A-Z a-z 0-9 _ . -`,
/// and not `.` or `..` (the name is used as a folder name).
pub fn valid_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s != "."
        && s != ".."
}

/// Why `s` cannot be a node's name although its characters can: it is a selector, a word
/// that commands take for a set of nodes (`all`, or a role in the plural such as `workers`),
/// so a node of that name could never be addressed alone (`stop workers` stops the workers).
pub fn selector_name(s: &str) -> Option<String> {
    if s == "all" {
        return Some("'all' selects every node".into());
    }
    NodeType::ALL
        .iter()
        .find(|t| t.plural() == s)
        .map(|t| format!("'{s}' selects every node of type {}", t.as_str()))
}

/// The message for a node name that is a selector (see [`selector_name`]).
pub fn selector_name_message(name: &str, why: &str) -> String {
    format!("node name '{name}' is a selector, not a name: {why} in commands, so a node of that name could not be addressed alone; choose another name")
}

/// Largest signal number accepted as a number (Linux's `SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;

/// Every named signal, without the `SIG` prefix (`"HUP"`, `"INT"`, ...), as nix's
/// [`Signal`](nix::sys::signal::Signal) lists them, for suggestions and completion.
pub fn signal_names() -> impl Iterator<Item = &'static str> {
    nix::sys::signal::Signal::iterator().map(|s| s.as_str().trim_start_matches("SIG"))
}

/// The signal number for a name such as `"TERM"`, `"SIGTERM"` or `"term"`
/// (any case, with or without the `SIG` prefix; names as nix's
/// [`Signal`](nix::sys::signal::Signal) knows them), or for a number from 1 to 64
/// written in decimal (`"15"`; real-time signals have numbers only).
pub fn signal_from_name(s: &str) -> Option<i32> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=MAX_SIGNAL).contains(n));
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if bare.is_empty() {
        return None;
    }
    format!("SIG{bare}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as i32)
}

/// The name of a signal without the `SIG` prefix (`"TERM"`), or its number
/// (`"40"`) when it has no name. [`signal_from_name`] reads both back.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().trim_start_matches("SIG").to_owned())
        .unwrap_or_else(|_| sig.to_string())
}

/// What to say after an unknown signal name: the closest real name if one is close
/// (`" (did you mean 'HUP'?)"`), then the list of names.
pub fn signal_hint(word: &str) -> String {
    let upper = word.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    format!(
        "{}; signals: {}, or a number from 1 to {MAX_SIGNAL}",
        did_you_mean(bare, signal_names()),
        signal_names().collect::<Vec<_>>().join(", ")
    )
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    ///
    /// `path` may also name Zeek's own configuration: a `zeek.conf` or `HOST.zeek.conf`, a
    /// folder of `HOST.zeek.conf` files, or zeekctl's `node.cfg` (see [`zeek_cluster`] and
    /// [`node_cfg`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&Config::read_text(path)?, path)
    }

    /// Reads the text of the configuration file at `path`, safely for a process that must
    /// never block: the file is opened `O_NONBLOCK` (opening a FIFO does not wait for a
    /// writer), must then be a regular file by `fstat` of the opened fd (a FIFO, a device such
    /// as `/dev/zero`, a directory, or a symlink to any of them is refused before one byte is
    /// read), and may hold at most [`MAX_CONFIG_BYTES`].
    ///
    /// For a cluster folder of `HOST.zeek.conf` files, the text is this host's file (see
    /// [`zeek_cluster::conf_file`]).
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        use std::io::Read;
        if path.is_dir() {
            return Config::read_text(&zeek_cluster::conf_file(path, None)?);
        }
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let io_err = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err)?;
        let ft = file.metadata().map_err(io_err)?.file_type();
        if !ft.is_file() {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_dir() {
                "a directory"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device"
            } else {
                "not a regular file"
            };
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("it is {what}; the config must be a regular file"),
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "it is larger than {} MiB; a config is never that large",
                    MAX_CONFIG_BYTES >> 20
                ),
            )));
        }
        String::from_utf8(bytes).map_err(|_| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it is not UTF-8 text",
            ))
        })
    }

    /// Checks the configuration `text` as if read from `path`. `path` is used in
    /// messages as given; relative folders in the file are resolved against its
    /// folder (a relative `path` is taken relative to the current directory). A `path` that
    /// names Zeek's own configuration (see [`Config::load`]) is read as that format (for a
    /// cluster folder, `text` is this host's file).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        if zeek_cluster::is_zeek_conf(path) || node_cfg::is_node_cfg(path) {
            return Config::parse_zeek(text, path);
        }
        let abs = absolute(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let src = Source::new(text, path);
        let (nodes, zeek, cluster) = Checker {
            src: &src,
            dir: &dir,
            errors: Default::default(),
        }
        .check()?;
        let mut config = Config {
            path: abs,
            dir,
            nodes,
            zeek,
            cluster,
        };
        config.share_policies();
        Ok(config)
    }

    /// Checks Zeek's own configuration `text` read from `path` (see [`Config::load`]).
    fn parse_zeek(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let abs = absolute(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let (nodes, setup, cluster) = if node_cfg::is_node_cfg(&abs) {
            let (n, s) = node_cfg::load_text(&abs, text)?;
            (n, s, None)
        } else {
            let (n, s) = zeek_cluster::load_text(&abs, text, None, &dir)?;
            let cluster = match zeek_cluster::cluster_folder(&abs) {
                Some(folder) => zeek_cluster::folder_cluster(&folder)?,
                None => None,
            };
            (n, s, cluster)
        };
        let mut config = Config {
            path: abs,
            dir,
            nodes,
            zeek: Some(setup),
            cluster,
        };
        config.share_policies();
        Ok(config)
    }

    /// Makes nodes with equal policies share one allocation (each node is compared with the
    /// last few distinct policies seen, so a config of N different policies costs O(N)).
    pub fn share_policies(&mut self) {
        const LOOK_BACK: usize = 16;
        let mut seen: Vec<Arc<Policy>> = Vec::new();
        for node in &mut self.nodes {
            match seen
                .iter()
                .rev()
                .take(LOOK_BACK)
                .find(|p| **p == node.policy)
            {
                Some(p) => node.policy = Arc::clone(p),
                None => seen.push(Arc::clone(&node.policy)),
            }
        }
    }

    /// A copy whose every allocation is new (a clone shares the policies): what a Supervisor
    /// keeps of a config parsed elsewhere (see `supervisor::heap`). Shared policies stay
    /// shared in the copy.
    pub fn fresh_copy(&self) -> Config {
        let mut copy = self.clone();
        let mut made: Vec<(*const Policy, Arc<Policy>)> = Vec::new();
        for node in &mut copy.nodes {
            let old = Arc::as_ptr(&node.policy);
            node.policy = match made.iter().find(|(p, _)| *p == old) {
                Some((_, new)) => Arc::clone(new),
                None => {
                    let new = Arc::new(Policy::clone(&node.policy));
                    made.push((old, Arc::clone(&new)));
                    new
                }
            };
        }
        copy
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The effective configuration in the file format: one `[[node]]` table per
    /// node with every key explicit (defaults applied, paths absolute), so that
    /// [`Config::parse`] of it with the same path gives back the same nodes
    /// (except for [`NodeSpec::line`]). Durations are written in whole milliseconds.
    pub fn to_toml(&self) -> String {
        render::config(self)
    }
}

/// `path` made absolute against the current directory, with `.` components dropped.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(normalize(path))
    } else {
        Ok(normalize(&std::env::current_dir()?.join(path)))
    }
}

/// Drops `.` components and repeated separators (`..` is kept: symlinks).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

// ---------------------------------------------------------------------------
// Keys.

const MAX_NAME_LEN: usize = 48;
const MAX_CPU: i64 = 1023;
const MIN_READY_FD: i64 = 3;
const MAX_READY_FD: i64 = 1023;
/// Longest accepted duration: 365 days.
const MAX_MS: i64 = 365 * 24 * 3600 * 1000;

const TOP_KEYS: [&str; 4] = ["defaults", "node", "zeek", "host"];

/// Keys that may appear in `[defaults]` and in `[[node]]`.
const POLICY_KEYS: [&str; 36] = [
    "restart",
    "stop_signal",
    "stop_timeout_ms",
    "autostart",
    "restart_delay_ms",
    "restart_delay_max_ms",
    "restart_delay_factor",
    "restart_reset_ms",
    "give_up_after",
    "give_up_window_ms",
    "quick_death_ms",
    "ready_after_ms",
    "ready_fd",
    "ready_timeout_ms",
    "log_max_bytes",
    "log_keep",
    "log_direct",
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
    "path",
    "inherit_env",
    "pid_file",
    "ready",
    "watchdog_ms",
    "ready_check",
    "ready_check_interval_ms",
    "ready_timeout_action",
    // Refused with what replaced it (a node's environment is always clean).
    "clear_env",
];

/// Keys that may appear only in `[[node]]`.
const NODE_ONLY_KEYS: [&str; 9] = [
    "name",
    "host",
    "type",
    "command",
    "cwd",
    "stdout",
    "stderr",
    "cpu_affinity",
    "start_after",
];

fn defaults_keys() -> impl Iterator<Item = &'static str> {
    POLICY_KEYS.into_iter().chain(["env"])
}

fn node_keys() -> impl Iterator<Item = &'static str> {
    NODE_ONLY_KEYS.into_iter().chain(["env"]).chain(POLICY_KEYS)
}

// ---------------------------------------------------------------------------
// Error building.

/// The text being checked, for turning offsets into lines and building errors.
struct Source<'a> {
    text: &'a str,
    path: &'a Path,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            text,
            path,
            line_starts,
        }
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    fn invalid(&self, line: usize, key: Option<&str>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: key.map(str::to_string),
            message,
        }
    }

    fn toml_error(&self, err: toml::de::Error) -> ConfigError {
        let line = err.span().map_or(1, |s| self.line(s.start));
        let message = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        let key = message
            .split_once("duplicate key `")
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(key, _)| key.to_string());
        let message = format!("invalid TOML: {message}");
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key,
            message,
        }
    }
}

/// Where a key is, for messages.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Defaults,
    /// The `[zeek]` table.
    Zeek,
    /// A `[[node]]` whose name is known.
    Node(&'a str),
    /// A `[[node]]` whose name is not known yet.
    UnnamedNode,
}

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Defaults => f.write_str("[defaults]"),
            Scope::Zeek => f.write_str("[zeek]"),
            Scope::Node(name) => write!(f, "node '{name}'"),
            Scope::UnnamedNode => f.write_str("[[node]]"),
        }
    }
}

/// A bad value: what is wrong and, if known, the offset of the offending part.
struct Bad {
    at: Option<usize>,
    msg: String,
}

impl Bad {
    /// About the whole value of the key.
    fn new(msg: impl Into<String>) -> Self {
        Bad {
            at: None,
            msg: msg.into(),
        }
    }

    /// About a part of the value (an array element, an env entry).
    fn at(item: &Item, msg: impl Into<String>) -> Self {
        Bad {
            at: item.start(),
            msg: msg.into(),
        }
    }
}

/// `got ...` text for a value.
fn describe(value: &Raw) -> String {
    match value {
        Raw::Str(s) => {
            let mut short: String = s.chars().take(60).collect();
            if short.len() < s.len() {
                short.push_str("...");
            }
            format!("{short:?}")
        }
        Raw::Int(n) => n.to_string(),
        Raw::Float(x) => format!("{x:?}"),
        Raw::Bool(b) => b.to_string(),
        Raw::Datetime(d) => format!("a date-time ({d})"),
        Raw::Array(_) => "an array".to_string(),
        Raw::Table(_) => "a table".to_string(),
    }
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word` within an edit distance of 2 (ignoring case),
/// if the distance is smaller than the word's length.
fn suggest<'c, I: IntoIterator<Item = &'c str>>(word: &str, candidates: I) -> Option<&'c str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|&(d, _)| d <= 2 && d < word.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `" (did you mean 'X'?)"` for the candidate closest to `word` (within an edit distance of 2),
/// or nothing.
pub fn did_you_mean<'c, I: IntoIterator<Item = &'c str>>(word: &str, candidates: I) -> String {
    suggest(word, candidates)
        .map(|c| format!(" (did you mean '{c}'?)"))
        .unwrap_or_default()
}

fn quoted_list(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Value readers. Each returns the value or what is wrong with it.

fn read_ms(item: &Item, min: i64) -> Result<Duration, Bad> {
    let what = if min > 0 { "positive" } else { "non-negative" };
    match item.value {
        Raw::Int(n) if n > MAX_MS => Err(Bad::new(format!(
            "expected at most {MAX_MS} milliseconds (365 days), got {n}"
        ))),
        // n >= min >= 0, so the conversion cannot fail.
        Raw::Int(n) if n >= min => Ok(Duration::from_millis(n.unsigned_abs())),
        ref other => Err(Bad::new(format!(
            "expected a {what} number of milliseconds, got {}",
            describe(other)
        ))),
    }
}

fn read_bool(item: &Item) -> Result<bool, Bad> {
    match item.value {
        Raw::Bool(b) => Ok(b),
        ref other => Err(Bad::new(format!(
            "expected true or false, got {}",
            describe(other)
        ))),
    }
}

fn read_u32(item: &Item) -> Result<u32, Bad> {
    match item.value {
        Raw::Int(n) if n >= 0 && n <= i64::from(u32::MAX) => Ok(n as u32),
        ref other => Err(Bad::new(format!(
            "expected a whole number from 0 to {}, got {}",
            u32::MAX,
            describe(other)
        ))),
    }
}

fn read_factor(item: &Item) -> Result<f64, Bad> {
    let x = match item.value {
        Raw::Float(x) => x,
        Raw::Int(n) => n as f64,
        ref other => {
            return Err(Bad::new(format!(
                "expected a number >= 1.0, got {}",
                describe(other)
            )))
        }
    };
    if x.is_finite() && x >= 1.0 {
        Ok(x)
    } else {
        Err(Bad::new(format!(
            "expected a finite number >= 1.0, got {}",
            describe(&item.value)
        )))
    }
}

fn read_u64(item: &Item) -> Result<u64, Bad> {
    match item.value {
        Raw::Int(n) if n >= 0 => Ok(n as u64),
        ref other => Err(Bad::new(format!(
            "expected a whole number of bytes (0 or more), got {}",
            describe(other)
        ))),
    }
}

/// An octal umask as a string (`"027"`), or a number read as written in octal.
fn read_umask(item: &Item) -> Result<u32, Bad> {
    let text = match &item.value {
        Raw::Str(s) => s.clone(),
        Raw::Int(n) => n.to_string(),
        other => {
            return Err(Bad::new(format!(
                "expected an octal umask like \"027\", got {}",
                describe(other)
            )))
        }
    };
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|v| *v <= 0o777)
        .ok_or_else(|| {
            Bad::new(format!(
                "expected an octal umask from \"000\" to \"777\", got \"{text}\""
            ))
        })
}

/// A resource limit: a whole number, or "unlimited" (stored as u64::MAX).
fn read_rlimit(item: &Item) -> Result<u64, Bad> {
    match &item.value {
        Raw::Int(n) if *n >= 0 => Ok(*n as u64),
        Raw::Str(s) if s == "unlimited" => Ok(u64::MAX),
        other => Err(Bad::new(format!(
            "expected a whole number or \"unlimited\", got {}",
            describe(other)
        ))),
    }
}

fn read_nice(item: &Item) -> Result<i32, Bad> {
    match item.value {
        Raw::Int(n) if (-20..=19).contains(&n) => Ok(n as i32),
        ref other => Err(Bad::new(format!(
            "expected a nice level from -20 to 19, got {}",
            describe(other)
        ))),
    }
}

/// Bytes as a number, or a string with a `K`, `M`, `G` or `T` suffix (powers of 1024).
fn read_memory(item: &Item) -> Result<u64, Bad> {
    match &item.value {
        Raw::Int(n) if *n > 0 => Ok(*n as u64),
        Raw::Str(s) => zeek_conf::parse_memory(s).ok_or_else(|| {
            Bad::new(format!(
                "expected a size such as \"4G\" (bytes, or K, M, G, T), got {}",
                describe(&item.value)
            ))
        }),
        other => Err(Bad::new(format!(
            "expected a positive number of bytes or a size such as \"4G\", got {}",
            describe(other)
        ))),
    }
}

fn read_capabilities(item: &Item) -> Result<Vec<String>, Bad> {
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "expected an array of capability names such as [\"CAP_NET_RAW\"], got {}",
            describe(&item.value)
        )));
    };
    let mut caps = Vec::with_capacity(items.len());
    for cap in items {
        match &cap.value {
            Raw::Str(s) if crate::sys::caps::number(s).is_some() => caps.push(s.clone()),
            other => {
                return Err(Bad::at(
                    cap,
                    format!(
                    "unknown capability {} (names such as \"CAP_NET_RAW\", see capabilities(7))",
                    describe(other)
                ),
                ))
            }
        }
    }
    Ok(caps)
}

fn read_ready_file(item: &Item) -> Result<ReadyFile, Bad> {
    let expected = "expected a table such as { path = \".status\", line = \"RUNNING\" }";
    let Raw::Table(entries) = &item.value else {
        return Err(Bad::new(format!(
            "{expected}, got {}",
            describe(&item.value)
        )));
    };
    let (mut path, mut line) = (None, None);
    for e in entries {
        match (e.key.as_str(), &e.value.value) {
            ("path", Raw::Str(s)) if !s.is_empty() && !s.contains('\0') => path = Some(s.clone()),
            ("line", Raw::Str(s)) if !s.contains('\n') && !s.contains('\0') => {
                line = Some(s.clone())
            }
            (k @ ("path" | "line"), other) => {
                return Err(Bad::at(
                    &e.value,
                    format!(
                        "'{k}' must be a non-empty string on one line, got {}",
                        describe(other)
                    ),
                ))
            }
            (k, _) => {
                return Err(Bad::at(
                    &e.value,
                    format!("unknown key '{k}' (a ready_file has 'path' and 'line')"),
                ))
            }
        }
    }
    match (path, line) {
        (Some(path), Some(line)) => Ok(ReadyFile {
            path: PathBuf::from(path),
            line,
        }),
        _ => Err(Bad::new(format!(
            "{expected}: both 'path' and 'line' are required"
        ))),
    }
}

fn read_ready_fd(item: &Item) -> Result<i32, Bad> {
    match item.value {
        Raw::Int(n) if (MIN_READY_FD..=MAX_READY_FD).contains(&n) => Ok(n as i32),
        ref other => Err(Bad::new(format!(
            "expected a file descriptor number from {MIN_READY_FD} to {MAX_READY_FD}, got {}",
            describe(other)
        ))),
    }
}

fn read_restart(item: &Item) -> Result<RestartPolicy, Bad> {
    let names = RestartPolicy::ALL.map(RestartPolicy::as_str);
    match &item.value {
        Raw::Str(s) => RestartPolicy::parse(s).ok_or_else(|| {
            Bad::new(format!(
                "expected one of {}, got {}{}",
                quoted_list(&names),
                describe(&item.value),
                did_you_mean(s, names)
            ))
        }),
        other => Err(Bad::new(format!(
            "expected one of {}, got {}",
            quoted_list(&names),
            describe(other)
        ))),
    }
}

fn read_signal(item: &Item) -> Result<i32, Bad> {
    let expected =
        format!("expected a signal name such as \"TERM\" or a number from 1 to {MAX_SIGNAL}");
    match &item.value {
        Raw::Int(n) if (1..=i64::from(MAX_SIGNAL)).contains(n) => Ok(*n as i32),
        Raw::Str(s) => signal_from_name(s).ok_or_else(|| {
            let upper = s.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            Bad::new(format!(
                "{expected}, got {}{}",
                describe(&item.value),
                did_you_mean(bare, signal_names())
            ))
        }),
        other => Err(Bad::new(format!("{expected}, got {}", describe(other)))),
    }
}

fn read_string(item: &Item, what: &str) -> Result<String, Bad> {
    match &item.value {
        Raw::Str(s) if s.is_empty() => Err(Bad::new(format!("expected {what}, got \"\""))),
        Raw::Str(s) if s.contains('\0') => Err(Bad::new("must not contain a NUL byte")),
        Raw::Str(s) => Ok(s.clone()),
        other => Err(Bad::new(format!(
            "expected {what}, got {}",
            describe(other)
        ))),
    }
}

/// The `PATH` of a node without `path` (systemd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

fn read_env_names(item: &Item) -> Result<Vec<String>, Bad> {
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "expected a list of variable names such as [\"TZ\", \"LANG\"], got {}",
            describe(&item.value)
        )));
    };
    items
        .iter()
        .map(|i| match &i.value {
            Raw::Str(s) if valid_env_name(s) => Ok(s.clone()),
            other => Err(Bad::at(
                i,
                format!("invalid environment variable name {}", describe(other)),
            )),
        })
        .collect()
}

fn read_env(item: &Item) -> Result<Vec<(String, String)>, Bad> {
    let Raw::Table(entries) = &item.value else {
        return Err(Bad::new(format!(
            "expected a table of strings such as {{ NAME = \"value\" }}, got {}",
            describe(&item.value)
        )));
    };
    let mut env = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = &entry.key;
        if !valid_env_name(name) {
            return Err(Bad {
                at: entry.start(),
                msg: format!("invalid environment variable name {name:?}"),
            });
        }
        match &entry.value.value {
            Raw::Str(v) if v.contains('\0') => {
                return Err(Bad::at(
                    &entry.value,
                    format!("value of '{name}' must not contain a NUL byte"),
                ))
            }
            Raw::Str(v) => env.push((name.clone(), v.clone())),
            other => {
                return Err(Bad::at(
                    &entry.value,
                    format!(
                        "value of '{name}' must be a string, got {}",
                        describe(other)
                    ),
                ))
            }
        }
    }
    Ok(env)
}

fn read_command(item: &Item) -> Result<Vec<String>, Bad> {
    let expected = "expected a non-empty array of strings (the program and its arguments)";
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "{expected}, got {}",
            describe(&item.value)
        )));
    };
    if items.is_empty() {
        return Err(Bad::new(format!("{expected}, got []")));
    }
    let mut argv = Vec::with_capacity(items.len());
    for (i, arg) in items.iter().enumerate() {
        match &arg.value {
            Raw::Str(s) if s.contains('\0') => {
                return Err(Bad::at(arg, format!("argument {i} contains a NUL byte")))
            }
            Raw::Str(s) if i == 0 && s.is_empty() => {
                return Err(Bad::at(arg, "the program (first element) is empty"))
            }
            Raw::Str(s) => argv.push(s.clone()),
            other => {
                return Err(Bad::at(
                    arg,
                    format!("argument {i} must be a string, got {}", describe(other)),
                ))
            }
        }
    }
    Ok(argv)
}

fn read_cpus(item: &Item) -> Result<Vec<usize>, Bad> {
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "expected an array of CPU numbers such as [0, 1], got {}",
            describe(&item.value)
        )));
    };
    let mut cpus: Vec<usize> = Vec::with_capacity(items.len());
    for cpu in items {
        match cpu.value {
            Raw::Int(n) if (0..=MAX_CPU).contains(&n) => {
                let n = n as usize;
                if cpus.contains(&n) {
                    return Err(Bad::at(cpu, format!("CPU {n} is listed twice")));
                }
                cpus.push(n);
            }
            ref other => {
                return Err(Bad::at(
                    cpu,
                    format!(
                        "expected CPU numbers from 0 to {MAX_CPU}, got {}",
                        describe(other)
                    ),
                ))
            }
        }
    }
    Ok(cpus)
}

/// `start_after` names with the offset of each; existence and cycles are checked later.
fn read_start_after(item: &Item, own_name: &str) -> Result<Vec<(String, Option<usize>)>, Bad> {
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "expected an array of node names, got {}",
            describe(&item.value)
        )));
    };
    let mut names: Vec<(String, Option<usize>)> = Vec::with_capacity(items.len());
    for name in items {
        match &name.value {
            Raw::Str(s) if !valid_name(s) => {
                return Err(Bad::at(name, format!("invalid node name {s:?}")))
            }
            Raw::Str(s) if s == own_name => {
                return Err(Bad::at(name, "a node cannot start after itself"))
            }
            Raw::Str(s) if names.iter().any(|(n, _)| n == s) => {
                return Err(Bad::at(name, format!("'{s}' is listed twice")))
            }
            Raw::Str(s) => names.push((s.clone(), name.start())),
            other => {
                return Err(Bad::at(
                    name,
                    format!("expected node names, got {}", describe(other)),
                ))
            }
        }
    }
    Ok(names)
}

// ---------------------------------------------------------------------------
// Checking.

/// A policy being built, with the lines of the delay keys set in the current scope.
#[derive(Clone)]
struct PolicyDraft {
    policy: Policy,
    env: BTreeMap<String, String>,
    delay_line: Option<usize>,
    delay_max_line: Option<usize>,
}

/// What is remembered about a node for the checks across nodes.
struct NodeMeta {
    name_line: usize,
    /// The node's `host` and its line.
    host: Option<(String, usize)>,
    /// Line of each `start_after` element.
    start_after_lines: Vec<usize>,
}

/// What [`Checker::check`] finds: this host's nodes, the Zeek setup, the cluster.
type Checked = (Vec<NodeSpec>, Option<ZeekSetup>, Option<hosts::Cluster>);

struct Checker<'a> {
    src: &'a Source<'a>,
    dir: &'a Path,
    /// Every mistake found so far (at most [`MAX_ERRORS`]), and how many more.
    errors: std::cell::RefCell<(Vec<ConfigError>, usize)>,
}

impl Checker<'_> {
    /// Notes a mistake and carries on checking.
    fn report(&self, e: ConfigError) {
        let mut errs = self.errors.borrow_mut();
        if errs.0.len() < MAX_ERRORS {
            errs.0.push(e);
        } else {
            errs.1 += 1;
        }
    }

    /// Notes the mistake of `r`, if any.
    fn keep<T>(&self, r: Result<T, ConfigError>) -> Option<T> {
        r.map_err(|e| self.report(e)).ok()
    }

    /// The nodes if nothing was wrong, else every mistake (in the order they were found:
    /// table by table, unknown keys first).
    fn finish(&self, nodes: Vec<NodeSpec>) -> Result<Vec<NodeSpec>, ConfigError> {
        let (mut errors, more) = self.errors.take();
        match errors.len() {
            0 => Ok(nodes),
            1 if more == 0 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several { errors, more }),
        }
    }

    fn line_of(&self, offset: Option<usize>, fallback: usize) -> usize {
        offset.map_or(fallback, |o| self.src.line(o))
    }

    fn entry_line(&self, entry: &Entry, fallback: usize) -> usize {
        self.line_of(entry.start(), fallback)
    }

    /// The error for a bad value of `entry` in `scope`.
    fn bad(&self, scope: Scope<'_>, entry: &Entry, fallback: usize, bad: Bad) -> ConfigError {
        let line = match bad.at {
            Some(at) => self.src.line(at),
            None => self.line_of(entry.value.start(), self.entry_line(entry, fallback)),
        };
        self.src.invalid(
            line,
            Some(&entry.key),
            format!("{scope}: key '{}': {}", entry.key, bad.msg),
        )
    }

    fn unknown_key(
        &self,
        entry: &Entry,
        fallback: usize,
        place: &str,
        allowed: &[&str],
    ) -> ConfigError {
        let line = self.entry_line(entry, fallback);
        let key = &entry.key;
        let message = if place == "in [defaults]" && NODE_ONLY_KEYS.contains(&key.as_str()) {
            format!("key '{key}' is not allowed in [defaults]; set it in each [[node]]")
        } else {
            format!(
                "unknown key '{key}' {place}{}",
                did_you_mean(key, allowed.iter().copied())
            )
        };
        self.src.invalid(line, Some(key), message)
    }

    fn check(&self) -> Result<Checked, ConfigError> {
        let top = raw::parse_document(self.src.text).map_err(|e| self.src.toml_error(e))?;
        let mut defaults = None;
        let mut node_list = None;
        let mut zeek = None;
        let mut hosts: Vec<hosts::HostSpec> = Vec::new();
        for entry in &top {
            match entry.key.as_str() {
                "host" => hosts = self.check_hosts(entry),
                "defaults" => defaults = Some(entry),
                "node" => node_list = Some(entry),
                "zeek" => zeek = Some(entry),
                _ => self.report(self.unknown_key(entry, 1, "at the top level", &TOP_KEYS)),
            }
        }

        let base = PolicyDraft {
            policy: Policy::default(),
            env: BTreeMap::new(),
            delay_line: None,
            delay_max_line: None,
        };
        let base = match defaults {
            None => base,
            Some(entry) => self.check_defaults(entry, base),
        };

        let mut nodes: Vec<NodeSpec> = Vec::new();
        let mut metas: Vec<NodeMeta> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut zeek_cluster: Option<hosts::Cluster> = None;
        let setup = match zeek {
            None => None,
            Some(entry) => {
                let line = self.entry_line(entry, 1);
                let (zeek_nodes, setup) = match self.check_zeek(entry) {
                    Ok((n, setup, c)) => {
                        zeek_cluster = c;
                        (n, Some(setup))
                    }
                    Err(e) => {
                        self.report(e);
                        (Vec::new(), None)
                    }
                };
                for mut node in zeek_nodes {
                    // Messages about the node name this file: point at its [zeek] table.
                    node.line = line;
                    if let Some(d) = defaults {
                        let draft = PolicyDraft {
                            policy: Policy::clone(&node.policy),
                            env: node.env.iter().cloned().collect(),
                            delay_line: None,
                            delay_max_line: None,
                        };
                        let draft = self.check_defaults(d, draft);
                        node.policy = Arc::new(draft.policy);
                        node.env = draft.env.into_iter().collect();
                    }
                    by_name.insert(node.name.clone(), nodes.len());
                    // Its host, if a host of the cluster folder or a [[host]] table names it
                    // (a node.cfg host= naming none is this machine, as without hosts).
                    let host = zeek_cluster.as_ref().and_then(|c| {
                        let n = c.nodes.iter().find(|n| n.name == node.name)?;
                        let h = n.host.clone()?;
                        let named = c.hosts.iter().chain(&hosts).any(|x| x.name == h);
                        named.then_some((h, line))
                    });
                    metas.push(NodeMeta {
                        name_line: line,
                        host,
                        start_after_lines: vec![line; node.start_after.len()],
                    });
                    nodes.push(node);
                }
                setup
            }
        };

        let Some(node_list) = node_list else {
            let cluster = self.place(&mut nodes, &metas, hosts, zeek_cluster);
            return self.finish(nodes).map(|n| (n, setup, cluster));
        };
        let list_line = self.entry_line(node_list, 1);
        let Raw::Array(tables) = &node_list.value.value else {
            let hint = if matches!(node_list.value.value, Raw::Table(_)) {
                " (write [[node]], not [node])"
            } else {
                ""
            };
            self.report(self.src.invalid(
                list_line,
                Some("node"),
                format!(
                    "key 'node': expected an array of tables ([[node]]), got {}{hint}",
                    describe(&node_list.value.value)
                ),
            ));
            let cluster = self.place(&mut nodes, &metas, hosts, zeek_cluster);
            return self.finish(nodes).map(|n| (n, setup, cluster));
        };

        for table in tables {
            // A node without a usable name is left out; one with other mistakes is kept
            // (with defaults for what is wrong) so that `start_after` can name it.
            let Some((node, meta)) = self.check_node(table, list_line, &base, &metas, &by_name)
            else {
                continue;
            };
            by_name.insert(node.name.clone(), nodes.len());
            nodes.push(node);
            metas.push(meta);
        }
        self.check_start_after(&nodes, &metas, &by_name);
        let cluster = self.place(&mut nodes, &metas, hosts, zeek_cluster);
        self.finish(nodes).map(|n| (n, setup, cluster))
    }

    /// Checks every node's `host` and, for a multi-host config, keeps in `nodes` only this
    /// host's (their `start_after` on other hosts' nodes dropped: the cluster-wide order is
    /// the commanding broctld's).
    fn place(
        &self,
        nodes: &mut Vec<NodeSpec>,
        metas: &[NodeMeta],
        mut hosts: Vec<hosts::HostSpec>,
        zeek: Option<hosts::Cluster>,
    ) -> Option<hosts::Cluster> {
        let mut placed = Vec::with_capacity(nodes.len());
        // This machine's host: the one whose HOST.zeek.conf was loaded, else --host (or
        // $BROCTLD_HOST, or the hostname).
        let mut this = zeek_cluster::this_host(None);
        if let Some(zc) = zeek {
            // A cluster folder loaded one host's file; a node.cfg loads every node.
            if !zc.hosts.is_empty() {
                if let Some(h) = metas.iter().find_map(|m| m.host.as_ref()) {
                    this = h.0.clone();
                }
            }
            for h in zc.hosts {
                if !hosts.iter().any(|x| x.name == h.name) {
                    hosts.push(h);
                }
            }
            // The other hosts' Zeek nodes (this host's are in `nodes`).
            placed.extend(
                zc.nodes
                    .into_iter()
                    .filter(|n| !nodes.iter().any(|x| x.name == n.name)),
            );
        }
        for (node, meta) in nodes.iter().zip(metas) {
            if let Some((h, line)) = &meta.host {
                if !hosts.iter().any(|x| &x.name == h) {
                    self.report(self.src.invalid(
                        *line,
                        Some("host"),
                        format!(
                            "node '{}': key 'host': unknown host '{h}' (no [[host]] table names it){}",
                            node.name,
                            did_you_mean(h, hosts.iter().map(|x| x.name.as_str()))
                        ),
                    ));
                }
            }
            placed.push(hosts::ClusterNode {
                name: node.name.clone(),
                node_type: node.node_type,
                host: meta.host.as_ref().map(|(h, _)| h.clone()),
            });
        }
        if hosts.is_empty() {
            return None;
        }
        let cluster = hosts::Cluster {
            hosts,
            nodes: placed,
        };
        cluster.keep_here(nodes, &this);
        Some(cluster)
    }

    /// `[zeek]`: `conf` names a zeek.conf, `HOST.zeek.conf`, cluster folder or node.cfg
    /// (relative to this file's folder); `host` picks this machine's file in a folder.
    fn check_zeek(
        &self,
        entry: &Entry,
    ) -> Result<(Vec<NodeSpec>, ZeekSetup, Option<hosts::Cluster>), ConfigError> {
        const KEYS: [&str; 2] = ["conf", "host"];
        let line = self.entry_line(entry, 1);
        let Raw::Table(entries) = &entry.value.value else {
            return Err(self.src.invalid(
                line,
                Some("zeek"),
                format!(
                    "key 'zeek': expected a table ([zeek]), got {}",
                    describe(&entry.value.value)
                ),
            ));
        };
        let mut conf = None;
        let mut host = None;
        for e in entries {
            let read = |what| {
                read_string(&e.value, what).map_err(|bad| self.bad(Scope::Zeek, e, line, bad))
            };
            match e.key.as_str() {
                "conf" => conf = Some(read("the path of a zeek.conf, cluster folder or node.cfg")?),
                "host" => host = Some(read("a host name")?),
                _ => return Err(self.unknown_key(e, line, "in [zeek]", &KEYS)),
            }
        }
        let Some(conf) = conf else {
            return Err(self.src.invalid(
                line,
                Some("conf"),
                "[zeek]: missing required key 'conf'".to_string(),
            ));
        };
        let path = normalize(&self.dir.join(conf));
        if node_cfg::is_node_cfg(&path) {
            let (n, s) = node_cfg::load(&path)?;
            // Placed on the [[host]] tables named by their host= (no hosts to reach here).
            let placed = node_cfg::node_hosts(&path, &n)?
                .into_iter()
                .filter_map(|(name, host)| {
                    let node_type = n.iter().find(|x| x.name == name)?.node_type;
                    Some(hosts::ClusterNode {
                        name,
                        node_type,
                        host: Some(host),
                    })
                })
                .collect();
            let cluster = hosts::Cluster {
                hosts: Vec::new(),
                nodes: placed,
            };
            return Ok((n, s, Some(cluster)));
        }
        let (n, s) = zeek_cluster::load(&path, host.as_deref(), self.dir)?;
        let cluster = match zeek_cluster::cluster_folder(&path) {
            Some(folder) => zeek_cluster::folder_cluster(&folder)?,
            None => None,
        };
        Ok((n, s, cluster))
    }

    fn check_defaults(&self, entry: &Entry, mut draft: PolicyDraft) -> PolicyDraft {
        let line = self.entry_line(entry, 1);
        let Raw::Table(entries) = &entry.value.value else {
            self.report(self.src.invalid(
                line,
                Some("defaults"),
                format!(
                    "key 'defaults': expected a table ([defaults]), got {}",
                    describe(&entry.value.value)
                ),
            ));
            return draft;
        };
        let allowed: Vec<&str> = defaults_keys().collect();
        for e in entries {
            if allowed.contains(&e.key.as_str()) {
                self.keep(self.apply_policy_key(Scope::Defaults, e, line, &mut draft));
            } else {
                self.report(self.unknown_key(e, line, "in [defaults]", &allowed));
            }
        }
        self.keep(self.check_delays(Scope::Defaults, &draft, line));
        draft
    }

    /// Applies a policy key or `env`; returns whether `entry` was one.
    fn apply_policy_key(
        &self,
        scope: Scope<'_>,
        entry: &Entry,
        fallback: usize,
        draft: &mut PolicyDraft,
    ) -> Result<bool, ConfigError> {
        let item = &entry.value;
        let p = &mut draft.policy;
        let result = match entry.key.as_str() {
            "restart" => read_restart(item).map(|v| p.restart = v),
            "stop_signal" => read_signal(item).map(|v| p.stop_signal = v),
            "stop_timeout_ms" => read_ms(item, 1).map(|v| p.stop_timeout = v),
            "autostart" => read_bool(item).map(|v| p.autostart = v),
            "path" => read_string(item, "a PATH such as \"/usr/local/bin:/usr/bin:/bin\"")
                .map(|v| p.path = v),
            "inherit_env" => read_env_names(item).map(|v| p.inherit_env = v),
            "clear_env" => Err(Bad::new(
                "a node's environment is always clean now (its env, PATH, HOME, USER, LOGNAME, SHELL, BROCTLD_*): remove clear_env; list variables to take from broctld's environment in inherit_env",
            )),
            "restart_delay_ms" => read_ms(item, 0).map(|v| {
                p.restart_delay = v;
                draft.delay_line = Some(self.entry_line(entry, fallback));
            }),
            "restart_delay_max_ms" => read_ms(item, 0).map(|v| {
                p.restart_delay_max = v;
                draft.delay_max_line = Some(self.entry_line(entry, fallback));
            }),
            "restart_delay_factor" => read_factor(item).map(|v| p.restart_delay_factor = v),
            "restart_reset_ms" => read_ms(item, 0).map(|v| p.restart_reset = v),
            "give_up_after" => read_u32(item).map(|v| p.give_up_after = v),
            "give_up_window_ms" => read_ms(item, 0).map(|v| p.give_up_window = v),
            "quick_death_ms" => read_ms(item, 0).map(|v| p.quick_death = v),
            "ready_after_ms" => read_ms(item, 0).map(|v| p.ready_after = v),
            "ready_fd" => read_ready_fd(item).map(|v| p.ready_fd = Some(v)),
            "ready_timeout_ms" => read_ms(item, 1).map(|v| p.ready_timeout = v),
            "log_max_bytes" => read_u64(item).map(|v| p.log_max_bytes = v),
            "log_direct" => read_bool(item).map(|v| p.log_direct = v),
            "log_keep" => read_u32(item).and_then(|v| {
                if v == 0 || v > 1000 {
                    Err(Bad::new(format!(
                        "expected 1 to 1000 rotated files, got {v}"
                    )))
                } else {
                    {
                        p.log_keep = v;
                        Ok(())
                    }
                }
            }),
            "user" => read_string(item, "a user name").and_then(|u| {
                if crate::sys::account::user(&u).is_none() {
                    Err(Bad::new(format!("no such user '{u}' on this system")))
                } else {
                    {
                        p.user = Some(u);
                        Ok(())
                    }
                }
            }),
            "group" => read_string(item, "a group name").and_then(|g| {
                if crate::sys::account::group(&g).is_none() {
                    Err(Bad::new(format!("no such group '{g}' on this system")))
                } else {
                    {
                        p.group = Some(g);
                        Ok(())
                    }
                }
            }),
            "umask" => read_umask(item).map(|v| p.umask = Some(v)),
            "rlimit_nofile" => read_rlimit(item).map(|v| p.rlimit_nofile = Some(v)),
            "rlimit_core" => read_rlimit(item).map(|v| p.rlimit_core = Some(v)),
            "rlimit_memlock" => read_rlimit(item).map(|v| p.rlimit_memlock = Some(v)),
            "nice" => read_nice(item).map(|v| p.nice = Some(v)),
            "memory_max" => read_memory(item).map(|v| p.memory_max = Some(v)),
            "capabilities" => read_capabilities(item).map(|v| p.capabilities = v),
            "ready_file" => read_ready_file(item).map(|v| p.ready_file = Some(v)),
            "ready" => match &item.value {
                Raw::Str(s) if s == "notify" => {
                    p.notify = true;
                    Ok(())
                }
                other => Err(Bad::new(format!(
                    "expected \"notify\" (systemd's sd_notify protocol), got {}",
                    describe(other)
                ))),
            },
            "watchdog_ms" => read_ms(item, 0).map(|v| p.watchdog = v),
            "ready_check" => read_command(item).map(|v| p.ready_check = v),
            "ready_check_interval_ms" => read_ms(item, 1).map(|v| p.ready_check_interval = v),
            "ready_timeout_action" => match &item.value {
                Raw::Str(s) => [
                    ReadyTimeoutAction::Wait,
                    ReadyTimeoutAction::Restart,
                    ReadyTimeoutAction::Fail,
                ]
                .into_iter()
                .find(|a| a.as_str() == s)
                .map(|a| p.ready_timeout_action = a)
                .ok_or_else(|| {
                    Bad::new(format!(
                        "expected \"wait\", \"restart\" or \"fail\", got {}",
                        describe(&item.value)
                    ))
                }),
                other => Err(Bad::new(format!(
                    "expected \"wait\", \"restart\" or \"fail\", got {}",
                    describe(other)
                ))),
            },
            "pid_file" => read_string(item, "a file name such as \"redis.pid\"")
                .map(|v| p.pid_file = Some(v.into())),
            "env" => read_env(item).map(|env| draft.env.extend(env)),
            _ => return Ok(false),
        };
        result.map_err(|bad| self.bad(scope, entry, fallback, bad))?;
        Ok(true)
    }

    /// `restart_delay_ms` must not exceed `restart_delay_max_ms`; reported at
    /// whichever of the two was set in this scope.
    fn check_delays(
        &self,
        scope: Scope<'_>,
        draft: &PolicyDraft,
        fallback: usize,
    ) -> Result<(), ConfigError> {
        let p = &draft.policy;
        if p.restart_delay <= p.restart_delay_max {
            return Ok(());
        }
        let (delay, max) = (p.restart_delay.as_millis(), p.restart_delay_max.as_millis());
        let (line, key, msg) = match (draft.delay_max_line, draft.delay_line) {
            (Some(line), _) => (
                line,
                "restart_delay_max_ms",
                format!("must not be smaller than restart_delay_ms ({delay}), got {max}"),
            ),
            (None, line) => (
                line.unwrap_or(fallback),
                "restart_delay_ms",
                format!("must not be larger than restart_delay_max_ms ({max}), got {delay}"),
            ),
        };
        Err(self
            .src
            .invalid(line, Some(key), format!("{scope}: key '{key}': {msg}")))
    }

    fn check_node(
        &self,
        table: &Item,
        fallback: usize,
        base: &PolicyDraft,
        metas: &[NodeMeta],
        by_name: &HashMap<String, usize>,
    ) -> Option<(NodeSpec, NodeMeta)> {
        let line = self.line_of(table.start(), fallback);
        let Raw::Table(entries) = &table.value else {
            self.report(self.src.invalid(
                line,
                Some("node"),
                format!(
                    "key 'node': expected an array of tables ([[node]]), got an array holding {}",
                    describe(&table.value)
                ),
            ));
            return None;
        };
        let allowed: Vec<&str> = node_keys().collect();
        // Keys an unknown key is likely a misspelling of: their absence is not reported
        // again as a missing key.
        let mut misspelled: Vec<&str> = Vec::new();
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                self.report(self.unknown_key(e, line, "in [[node]]", &allowed));
                misspelled.extend(suggest(&e.key, allowed.iter().copied()));
            }
        }
        let find = |key: &str| entries.iter().find(|e| e.key == key);
        let missing = |key: &str| find(key).is_none() && !misspelled.contains(&key);

        // The name first: every other message names the node.
        let Some(name_entry) = find("name") else {
            if !missing("name") {
                return None; // misspelled, reported above
            }
            self.report(self.src.invalid(
                line,
                Some("name"),
                "[[node]]: missing required key 'name'".to_string(),
            ));
            return None;
        };
        let name = match &name_entry.value.value {
            Raw::Str(s) if valid_name(s) => s.clone(),
            other => {
                let bad = Bad::new(format!(
                    "expected 1 to {MAX_NAME_LEN} of the characters A-Z a-z 0-9 _ . - (not \".\" or \"..\"), got {}",
                    describe(other)
                ));
                self.report(self.bad(Scope::UnnamedNode, name_entry, line, bad));
                return None;
            }
        };
        let name_line = self.line_of(name_entry.value.start(), line);
        if let Some(why) = selector_name(&name) {
            self.report(self.src.invalid(
                name_line,
                Some("name"),
                selector_name_message(&name, &why),
            ));
            return None;
        }
        if let Some(&first) = by_name.get(&name) {
            self.report(self.src.invalid(
                name_line,
                Some("name"),
                format!(
                    "duplicate node name '{name}' (first defined on line {})",
                    metas[first].name_line
                ),
            ));
            return None;
        }
        let scope = Scope::Node(&name);

        let mut draft = base.clone();
        draft.delay_line = None;
        draft.delay_max_line = None;
        let mut node_type = NodeType::Other;
        let mut command = None;
        let mut cwd = None;
        let mut stdout = None;
        let mut stderr = None;
        let mut cpu_affinity = Vec::new();
        let mut start_after = Vec::new();
        let mut host = None;
        for e in entries.iter().filter(|e| allowed.contains(&e.key.as_str())) {
            let item = &e.value;
            let result = match e.key.as_str() {
                "name" => Ok(()),
                "host" => read_string(item, "a host name")
                    .map(|v| host = Some((v, self.line_of(item.start(), line)))),
                "type" => read_node_type(item).map(|v| node_type = v),
                "command" => read_command(item).map(|v| command = Some(v)),
                "cwd" => read_string(item, "a folder path").map(|v| cwd = Some(v)),
                "stdout" => read_string(item, "a file path").map(|v| stdout = Some(v)),
                "stderr" => read_string(item, "a file path").map(|v| stderr = Some(v)),
                "cpu_affinity" => read_cpus(item).map(|v| cpu_affinity = v),
                "start_after" => read_start_after(item, &name).map(|v| start_after = v),
                _ => {
                    self.keep(self.apply_policy_key(scope, e, line, &mut draft));
                    Ok(())
                }
            };
            if let Err(bad) = result {
                self.report(self.bad(scope, e, line, bad));
            }
        }
        self.keep(self.check_delays(scope, &draft, line));

        let command = match command {
            Some(c) => c,
            None => {
                // Reported unless the key is there with a bad value or misspelled (both
                // reported above).
                if missing("command") {
                    self.report(self.src.invalid(
                        line,
                        Some("command"),
                        format!("{scope}: missing required key 'command'"),
                    ));
                }
                Vec::new()
            }
        };
        let cwd = normalize(
            &self
                .dir
                .join(cwd.unwrap_or_else(|| format!("spool/{name}"))),
        );
        let stdout = normalize(&cwd.join(stdout.as_deref().unwrap_or("stdout.log")));
        let stderr = normalize(&cwd.join(stderr.as_deref().unwrap_or("stderr.log")));
        let start_after_lines = start_after
            .iter()
            .map(|(_, at)| self.line_of(*at, line))
            .collect();
        let node = NodeSpec {
            name,
            node_type,
            command,
            env: draft.env.into_iter().collect(),
            cwd,
            stdout,
            stderr,
            cpu_affinity,
            start_after: start_after.into_iter().map(|(n, _)| n).collect(),
            policy: Arc::new(draft.policy),
            line,
        };
        let meta = NodeMeta {
            name_line,
            host,
            start_after_lines,
        };
        Some((node, meta))
    }

    /// Every `start_after` names an existing node and they form no cycle.
    fn check_start_after(
        &self,
        nodes: &[NodeSpec],
        metas: &[NodeMeta],
        by_name: &HashMap<String, usize>,
    ) {
        let mut edges: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
        for (node, meta) in nodes.iter().zip(metas) {
            let mut out = Vec::with_capacity(node.start_after.len());
            for (target, &line) in node.start_after.iter().zip(&meta.start_after_lines) {
                match by_name.get(target) {
                    Some(&i) => out.push(i),
                    None => self.report(self.src.invalid(
                        line,
                        Some("start_after"),
                        format!(
                            "node '{}': key 'start_after': unknown node '{target}'{}",
                            node.name,
                            did_you_mean(target, nodes.iter().map(|n| n.name.as_str()))
                        ),
                    )),
                }
            }
            edges.push(out);
        }
        let Some(cycle) = find_cycle(&edges) else {
            return;
        };
        // Report at the first node of the cycle in the file, on its element
        // naming the next node of the cycle.
        let first = &nodes[cycle[0]].name;
        let next = &nodes[cycle[1 % cycle.len()]].name;
        let pos = nodes[cycle[0]]
            .start_after
            .iter()
            .position(|n| n == next)
            .unwrap_or(0);
        let line = metas[cycle[0]]
            .start_after_lines
            .get(pos)
            .copied()
            .unwrap_or(nodes[cycle[0]].line);
        let path: Vec<&str> = cycle
            .iter()
            .chain(cycle.first())
            .map(|&i| nodes[i].name.as_str())
            .collect();
        self.report(self.src.invalid(
            line,
            Some("start_after"),
            format!(
                "node '{first}': key 'start_after': cycle {} (each node starts after the next)",
                path.join(" -> ")
            ),
        ));
    }
}

fn read_node_type(item: &Item) -> Result<NodeType, Bad> {
    let names = NodeType::ALL.map(NodeType::as_str);
    match &item.value {
        Raw::Str(s) => NodeType::parse(s).ok_or_else(|| {
            Bad::new(format!(
                "expected one of {}, got {}{}",
                quoted_list(&names),
                describe(&item.value),
                did_you_mean(s, names)
            ))
        }),
        other => Err(Bad::new(format!(
            "expected one of {}, got {}",
            quoted_list(&names),
            describe(other)
        ))),
    }
}

/// A cycle in a directed graph given as adjacency lists, as the list of its
/// vertices (each with an edge to the next, the last to the first), starting
/// at its smallest vertex. Iterative, so deep chains cannot overflow the stack.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..edges.len() {
        if mark[start] != Mark::New {
            continue;
        }
        mark[start] = Mark::OnPath;
        path.push((start, 0));
        while let Some(top) = path.last_mut() {
            let (v, next) = *top;
            if let Some(&w) = edges[v].get(next) {
                top.1 += 1;
                match mark[w] {
                    Mark::New => {
                        mark[w] = Mark::OnPath;
                        path.push((w, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&(x, _)| x == w).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(x, _)| x).collect();
                        let min_at = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, &x)| x)
                            .map_or(0, |(i, _)| i);
                        cycle.rotate_left(min_at);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[v] = Mark::Done;
                path.pop();
            }
        }
    }
    None
}
