//! Zeek's `zeek.conf` (Zeek 9's `zeek-systemd-generator` format): what each key means, the
//! checks upstream makes (same conditions, same wording, plus the file, line and key), and the
//! nodes the generator's units would run, as [`NodeSpec`]s.
//!
//! Two styles, as upstream: section-less (every key at top level, one interface, workers named
//! `worker-N`), or a `[zeek]` section plus `[interface NAME]` sections (workers named
//! `worker-NAME-N`). A file named `HOST.zeek.conf` is one host of a multi-host cluster: its
//! cluster node names get the prefix `HOST-` and its address defaults to a lookup of `HOST`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::zeek_ini::{self, IniError, IniOption, IniSection};
use super::{NodeSpec, NodeType, MAX_CPU};

/// Where Zeek is installed when `base_dir` is not set (Zeek's default prefix).
pub const DEFAULT_BASE_DIR: &str = "/usr/local/zeek";

/// A mistake in a zeek.conf: the 1-based line, the key, and upstream's message.
pub type ZeekError = IniError;

/// The keys of an `[interface NAME]` section.
const INTERFACE_KEYS: [&str; 9] = [
    "interface",
    "workers",
    "worker_args",
    "worker_env",
    "workers_cpu_list",
    "worker_numa_policy",
    "worker_nice",
    "worker_memory_max",
    "workers_numa_policy",
];

/// The keys of the `[zeek]` section, for suggestions.
fn zeek_keys() -> Vec<String> {
    const KEYS: [&str; 26] = [
        "ssh",
        "args",
        "env",
        "user",
        "group",
        "manager",
        "loggers",
        "proxies",
        "archiver",
        "archiver_args",
        "base_dir",
        "path",
        "ext_path",
        "ext_zeek_path",
        "cluster_backend_args",
        "cluster_layout",
        "cluster_node_prefix",
        "port",
        "cluster_port",
        "address",
        "cluster_address",
        "metrics_port",
        "restart_interval_sec",
        "manager_args",
        "logger_args",
        "proxy_args",
    ];
    const PER_TYPE: [&str; 5] = ["_env", "_nice", "_memory_max", "_cpu_set", "_args"];
    KEYS.into_iter()
        .map(String::from)
        .chain(
            ["manager", "logger", "proxy", "archiver"]
                .into_iter()
                .flat_map(|t| PER_TYPE.map(|p| format!("{t}{p}"))),
        )
        .collect()
}

/// The workers of one `[interface NAME]` section (or of the section-less file).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interface {
    /// The section's NAME; empty in a section-less file.
    pub name: String,
    /// The `interface` option (may hold `${...}` variables).
    pub interface: String,
    /// The number of workers; `None` when not set.
    pub workers: Option<u32>,
    /// `worker_args`.
    pub args: String,
    /// `worker_env`.
    pub env: Vec<(String, String)>,
    /// `worker_nice`.
    pub nice: Option<i32>,
    /// `worker_memory_max`, in bytes.
    pub memory_max: Option<u64>,
    /// `workers_cpu_list`, expanded.
    pub cpu_list: Vec<usize>,
    /// Line of the `interface` option (for substitution errors).
    pub interface_line: usize,
    /// Line of the section header (or of the first option).
    pub line: usize,
}

impl Interface {
    /// `worker-NAME-SUFFIX` or `worker-SUFFIX`.
    pub fn worker_name(&self, suffix: &str) -> String {
        if self.name.is_empty() {
            format!("worker-{suffix}")
        } else {
            format!("worker-{}-{suffix}", self.name)
        }
    }
}

/// Settings of one process type (manager, logger, proxy, archiver).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypeSettings {
    /// `<type>_args`.
    pub args: String,
    /// `<type>_env`.
    pub env: Vec<(String, String)>,
    /// `<type>_nice`.
    pub nice: Option<i32>,
    /// `<type>_memory_max`, in bytes.
    pub memory_max: Option<u64>,
    /// `<type>_cpu_set`, sorted and without duplicates.
    pub cpu_set: Option<Vec<usize>>,
}

/// One checked zeek.conf.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeekConf {
    /// The file.
    pub path: PathBuf,
    /// `manager`.
    pub manager: bool,
    /// `loggers` (`None` when not set).
    pub loggers: Option<u32>,
    /// `proxies` (`None` when not set).
    pub proxies: Option<u32>,
    /// `args` (default `local`).
    pub args: String,
    /// `env`.
    pub env: Vec<(String, String)>,
    /// Manager settings.
    pub manager_settings: TypeSettings,
    /// Logger settings.
    pub logger_settings: TypeSettings,
    /// Proxy settings.
    pub proxy_settings: TypeSettings,
    /// Archiver settings.
    pub archiver_settings: TypeSettings,
    /// `user` (default `zeek`; empty: the Supervisor's).
    pub user: String,
    /// `group` (default `zeek`; empty: the user's).
    pub group: String,
    /// `path` (default `/usr/local/bin:/usr/bin:/bin`).
    pub path_var: String,
    /// `ext_path`.
    pub ext_path: String,
    /// `ext_zeek_path`.
    pub ext_zeek_path: String,
    /// `base_dir` (default [`DEFAULT_BASE_DIR`]).
    pub base_dir: PathBuf,
    /// `cluster_backend_args` (default `frameworks/cluster/backend/zeromq`).
    pub cluster_backend_args: String,
    /// `cluster_layout`: a ready-made layout to use instead of generating one.
    pub cluster_layout: Option<PathBuf>,
    /// `cluster_node_prefix` (default: the host of a `HOST.zeek.conf`).
    pub cluster_node_prefix: Option<String>,
    /// `port` (default 27760).
    pub port: i64,
    /// `address` (default 127.0.0.1 unless this is a `HOST.zeek.conf`).
    pub address: String,
    /// `ssh` (broctld's, not upstream's): how the commanding broctld reaches this host of a
    /// cluster folder, `user@addr` (default: `address`, else the host's name).
    pub ssh: String,
    /// `metrics_port` (default 9991; 0 disables metrics).
    pub metrics_port: i64,
    /// `restart_interval_sec` (default 1).
    pub restart_interval_sec: i64,
    /// `archiver`: `1`, `0` or a program (default `1` with a manager or loggers).
    pub archiver: Option<String>,
    /// `archiver_args`.
    pub archiver_args: String,
    /// The interface sections.
    pub interfaces: Vec<Interface>,
    /// The line of each key of the `[zeek]` section (or of the section-less file), lowercased.
    pub key_lines: BTreeMap<String, usize>,
}

/// `HOST` of a file named `HOST.zeek.conf`.
pub fn filename_host(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let host = name.strip_suffix(".zeek.conf")?;
    (!host.is_empty()).then(|| host.to_string())
}

/// C's `atoi`: leading blanks, a sign, digits; 0 when there are none.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n: i64 = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .take(18)
        .fold(0, |acc, d| acc * 10 + i64::from(d - b'0'));
    if neg {
        -n
    } else {
        n
    }
}

/// A whole decimal `int`, optionally negative; nothing else around it.
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok().map(i64::from)
}

fn parse_count(s: &str) -> Option<u32> {
    parse_int(s).filter(|n| *n >= 0).map(|n| n as u32)
}

fn parse_nice(s: &str) -> Option<i32> {
    parse_int(s.trim())
        .filter(|n| (-20..=19).contains(n))
        .map(|n| n as i32)
}

/// A systemd `MemoryMax=` size: digits with an optional `K`, `M`, `G` or `T` (powers of 1024).
pub fn parse_memory(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 10),
        b'M' => (&s[..s.len() - 1], 20),
        b'G' => (&s[..s.len() - 1], 30),
        b'T' => (&s[..s.len() - 1], 40),
        b'0'..=b'9' => (s, 0),
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// A CPU list: `0,1,2`, ranges `4-7`, ranges with a stride `0-8:2`; empty is valid.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    if s.is_empty() {
        return Some(cpus);
    }
    for part in s.split(',') {
        let pieces: Vec<&str> = part.split('-').collect();
        match pieces.as_slice() {
            [one] => cpus.push(usize::try_from(parse_int(one)?).ok()?),
            [l, r] => {
                let (r, stride) = match r.split(':').collect::<Vec<_>>().as_slice() {
                    [r] => (parse_int(r)?, 1),
                    [r, st] => (parse_int(r)?, parse_int(st).filter(|s| *s > 0)?),
                    _ => return None,
                };
                let l = parse_int(l)?;
                if l < 0 || r < l {
                    return None;
                }
                let mut c = l;
                while c <= r {
                    cpus.push(c as usize);
                    c += stride;
                }
            }
            _ => return None,
        }
    }
    if cpus.iter().any(|&c| c as i64 > MAX_CPU) {
        return None;
    }
    Some(cpus)
}

/// Whether `s` is `a.b.c.d` or `[v6]`, as upstream checks addresses.
fn valid_ip(s: &str) -> bool {
    if s.len() < 5 {
        return false;
    }
    match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => s.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

fn valid_prefix(s: &str) -> bool {
    let mut b = s.bytes();
    match b.next() {
        None => true,
        Some(first) => {
            (first.is_ascii_lowercase() || first == b'0')
                && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        }
    }
}

fn err(o: &IniOption, key: &str, message: String) -> ZeekError {
    ZeekError {
        line: o.line,
        key: Some(key.to_string()),
        message,
    }
}

fn suffix(message: String, section: &str) -> String {
    if section.is_empty() {
        message
    } else {
        format!("{message} in section '{section}'")
    }
}

/// Reads an `[interface NAME]` section (or the section-less file, `lenient`: other keys are
/// not interface keys then).
fn interface_from(section: &IniSection, lenient: bool) -> Result<Interface, ZeekError> {
    let mut iwc = Interface {
        line: section.line,
        ..Interface::default()
    };
    let header_err = |message: String| ZeekError {
        line: section.line,
        key: None,
        message,
    };
    if section.name.starts_with("interface") {
        let name = section.name.strip_prefix("interface ").unwrap_or("");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(header_err(format!(
                "invalid interface name in '{}' (must match /interface [-_a-z0-9]+/)",
                section.name
            )));
        }
        iwc.name = name.to_string();
    }
    if section.options.is_empty() {
        return Err(header_err("empty section".to_string()));
    }
    let mut has_interface = false;
    for o in &section.options {
        let key = o.key.to_ascii_lowercase();
        if !key.ends_with("env") && !key.ends_with("args") && o.values.len() > 1 {
            return Err(err(o, &key, format!("multiple values for '{key}' given")));
        }
        match key.as_str() {
            "interface" => {
                iwc.interface = o.value().to_string();
                iwc.interface_line = o.line;
                has_interface = true;
            }
            "workers" => {
                iwc.workers = Some(parse_count(o.value()).ok_or_else(|| {
                    err(o, &key, format!("invalid workers value: '{}'", o.value()))
                })?)
            }
            "worker_args" => iwc.args = o.joined(),
            "worker_env" => {
                iwc.env = o
                    .env()
                    .map_err(|e| err(o, &key, format!("error in worker_env: {e}")))?
            }
            "workers_cpu_list" => {
                iwc.cpu_list = parse_cpu_list(o.value()).ok_or_else(|| {
                    err(
                        o,
                        &key,
                        format!("invalid workers_cpu_list value '{}'", o.value()),
                    )
                })?
            }
            "worker_numa_policy" | "workers_numa_policy" => {
                if o.value() != "local" && o.value() != "default" {
                    return Err(err(o, &key, format!("invalid '{key}' value")));
                }
            }
            "worker_nice" => {
                iwc.nice = Some(parse_nice(o.value()).ok_or_else(|| {
                    err(
                        o,
                        &key,
                        format!("invalid worker_nice value '{}'", o.value()),
                    )
                })?)
            }
            "worker_memory_max" => {
                iwc.memory_max = Some(parse_memory(o.value()).ok_or_else(|| {
                    err(
                        o,
                        &key,
                        format!("invalid worker_memory_max '{}'", o.value()),
                    )
                })?)
            }
            _ if lenient => {}
            _ => {
                return Err(err(
                    o,
                    &key,
                    suffix(format!("invalid option '{key}'"), &section.name)
                        + &super::did_you_mean(&key, INTERFACE_KEYS),
                ))
            }
        }
    }
    let message = if iwc.workers.is_some() && !has_interface {
        Some("found workers but no interface option")
    } else if iwc.workers.is_none() && !iwc.interface.is_empty() {
        Some("found interface but no worker option")
    } else if !iwc.name.is_empty() && iwc.interface.is_empty() {
        Some("empty interface option not allowed")
    } else {
        None
    };
    match message {
        Some(m) => Err(header_err(suffix(m.to_string(), &section.name))),
        None => Ok(iwc),
    }
}

impl ZeekConf {
    /// Checks the zeek.conf `text` read from `path`; `base_dir` is used when it sets none.
    /// Returns every mistake, in upstream's order.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<ZeekConf, Vec<ZeekError>> {
        let sections = zeek_ini::parse(text)?;
        let mut conf = ZeekConf {
            path: path.to_path_buf(),
            manager: false,
            loggers: None,
            proxies: None,
            args: String::new(),
            env: Vec::new(),
            manager_settings: TypeSettings::default(),
            logger_settings: TypeSettings::default(),
            proxy_settings: TypeSettings::default(),
            archiver_settings: TypeSettings::default(),
            user: "zeek".into(),
            group: "zeek".into(),
            path_var: "/usr/local/bin:/usr/bin:/bin".into(),
            ext_path: String::new(),
            ext_zeek_path: String::new(),
            base_dir: base_dir.to_path_buf(),
            cluster_backend_args: String::new(),
            cluster_layout: None,
            cluster_node_prefix: None,
            port: 27760,
            address: String::new(),
            ssh: String::new(),
            metrics_port: 9991,
            restart_interval_sec: 1,
            archiver: None,
            archiver_args: String::new(),
            interfaces: Vec::new(),
            key_lines: BTreeMap::new(),
        };
        let mut errors = Vec::new();
        let empty = IniSection::default();
        let zeek_section: &IniSection;
        if sections.len() == 1 && sections[0].name.is_empty() {
            match interface_from(&sections[0], true) {
                Ok(iwc) => conf.interfaces.push(iwc),
                Err(e) => errors.push(e),
            }
            zeek_section = &sections[0];
        } else {
            let mut found = None;
            for s in &sections {
                if s.name.is_empty() {
                    let line = s.options.first().map_or(1, |o| o.line);
                    return Err(vec![ZeekError {
                        line,
                        key: None,
                        message: "options in unnamed section mixed with options in sections".into(),
                    }]);
                }
                if s.name == "zeek" {
                    found = Some(s);
                } else if s.name.starts_with("interface") {
                    conf.interfaces
                        .push(interface_from(s, false).map_err(|e| vec![e])?);
                }
            }
            zeek_section = found.unwrap_or(&empty);
        }
        for o in &zeek_section.options {
            if let Err(e) = conf.apply(o, zeek_section) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if conf.cluster_backend_args.is_empty() {
            conf.cluster_backend_args = "frameworks/cluster/backend/zeromq".into();
        }
        let host = filename_host(path);
        if conf.cluster_node_prefix.is_none() {
            conf.cluster_node_prefix = host.clone();
        }
        if conf.archiver.is_none() && (conf.manager || conf.loggers.unwrap_or(0) > 0) {
            conf.archiver = Some("1".into());
        }
        if host.is_none() && conf.address.is_empty() {
            conf.address = "127.0.0.1".into();
        }
        if conf.args.is_empty() {
            conf.args = "local".into();
        }
        Ok(conf)
    }

    /// Applies one option of the `[zeek]` section (or of the section-less file).
    fn apply(&mut self, o: &IniOption, section: &IniSection) -> Result<(), ZeekError> {
        let key = o.key.to_ascii_lowercase();
        self.key_lines.insert(key.clone(), o.line);
        let k = key.as_str();
        if !k.ends_with("env") && !k.ends_with("args") && o.values.len() > 1 {
            return Err(err(o, k, format!("multiple values for '{k}' given")));
        }
        let v = o.value();
        let invalid = |what: &str| err(o, k, format!("invalid {what} '{v}'"));
        let invalid_value = |what: &str| err(o, k, format!("invalid {what} value '{v}'"));
        let type_key = k.split_once('_').and_then(|(t, rest)| {
            let settings = match t {
                "manager" => Some(&mut self.manager_settings),
                "logger" => Some(&mut self.logger_settings),
                "proxy" => Some(&mut self.proxy_settings),
                "archiver" => Some(&mut self.archiver_settings),
                _ => None,
            }?;
            Some((t, rest, settings))
        });
        if let Some((t, rest, settings)) = type_key {
            match rest {
                "args" if t != "archiver" => {
                    settings.args = o.joined();
                    return Ok(());
                }
                "env" => {
                    // Upstream names proxy_env in an archiver_env error (a slip kept here).
                    let shown = if t == "archiver" { "proxy" } else { t };
                    settings.env = o
                        .env()
                        .map_err(|e| err(o, k, format!("error in {shown}_env: {e}")))?;
                    return Ok(());
                }
                "nice" if !o.is_empty() => {
                    settings.nice = Some(parse_nice(v).ok_or_else(|| invalid_value(k))?);
                    return Ok(());
                }
                "memory_max" if !o.is_empty() => {
                    settings.memory_max = Some(parse_memory(v).ok_or_else(|| invalid(k))?);
                    return Ok(());
                }
                "cpu_set" => {
                    let mut cpus = parse_cpu_list(v).ok_or_else(|| invalid(k))?;
                    cpus.sort_unstable();
                    cpus.dedup();
                    settings.cpu_set = Some(cpus);
                    return Ok(());
                }
                _ => {}
            }
        }
        match k {
            "args" => self.args = o.joined(),
            "archiver_args" => self.archiver_args = o.joined(),
            "env" => {
                self.env = o
                    .env()
                    .map_err(|e| err(o, k, format!("error in env: {e}")))?
            }
            "user" => self.user = v.to_string(),
            "group" => self.group = v.to_string(),
            "manager" => match parse_int(v) {
                Some(0) => self.manager = false,
                Some(1) => self.manager = true,
                _ => return Err(err(o, k, format!("invalid manager value: '{v}'"))),
            },
            "loggers" => {
                self.loggers = Some(
                    parse_count(v)
                        .ok_or_else(|| err(o, k, format!("invalid loggers value: '{v}'")))?,
                )
            }
            "proxies" => {
                self.proxies = Some(
                    parse_count(v)
                        .ok_or_else(|| err(o, k, format!("invalid proxies value: '{v}'")))?,
                )
            }
            "archiver" => self.archiver = Some(v.to_string()),
            "base_dir" => {
                if !v.is_empty() {
                    self.base_dir = PathBuf::from(v)
                }
            }
            "path" => self.path_var = v.to_string(),
            "ext_path" => self.ext_path = v.to_string(),
            "ext_zeek_path" => self.ext_zeek_path = v.to_string(),
            "cluster_backend_args" => self.cluster_backend_args = o.joined(),
            "cluster_layout" => self.cluster_layout = Some(PathBuf::from(v)),
            "cluster_node_prefix" => {
                if !valid_prefix(v) {
                    return Err(err(
                        o,
                        k,
                        format!(
                            "invalid cluster_node_prefix '{v}' (must be empty or match /[a-z0-9][-_a-z0-9]+/)"
                        ),
                    ));
                }
                self.cluster_node_prefix = Some(v.to_string());
            }
            "port" | "cluster_port" => self.port = atoi(v),
            "address" | "cluster_address" => {
                if !valid_ip(v) {
                    return Err(err(o, k, format!("invalid address '{v}'")));
                }
                self.address = v.to_string();
            }
            "metrics_port" => self.metrics_port = atoi(v),
            "restart_interval_sec" => self.restart_interval_sec = atoi(v),
            "ssh" => self.ssh = v.to_string(),
            _ if section.name.is_empty() => {}
            _ => {
                return Err(err(
                    o,
                    k,
                    format!(
                        "invalid key '{k}' in section '{}'{}",
                        section.name,
                        super::did_you_mean(k, zeek_keys().iter().map(String::as_str))
                    ),
                ))
            }
        }
        Ok(())
    }

    /// `HOST` when the file is `HOST.zeek.conf`.
    pub fn host(&self) -> Option<String> {
        filename_host(&self.path)
    }

    /// `name` with the cluster node prefix, if any.
    pub fn prefixed(&self, name: &str) -> String {
        match self.cluster_node_prefix.as_deref() {
            Some(p) if !p.is_empty() => format!("{p}-{name}"),
            _ => name.to_string(),
        }
    }

    /// The number of loggers (0 when not set).
    pub fn logger_count(&self) -> u32 {
        self.loggers.unwrap_or(0)
    }

    /// The number of proxies (0 when not set).
    pub fn proxy_count(&self) -> u32 {
        self.proxies.unwrap_or(0)
    }

    /// `<base>/var/spool/zeek`.
    pub fn spool_dir(&self) -> PathBuf {
        self.base_dir.join("var/spool/zeek")
    }

    /// Where the layout is written: `<spool>/generated-scripts`.
    pub fn generated_scripts_dir(&self) -> PathBuf {
        self.spool_dir().join("generated-scripts")
    }

    /// Where loggers rotate logs for the archiver: `<spool>/log-queue`.
    pub fn log_queue_dir(&self) -> PathBuf {
        self.spool_dir().join("log-queue")
    }

    /// Where the archiver archives logs: `<base>/var/logs/zeek`.
    pub fn log_archive_dir(&self) -> PathBuf {
        self.base_dir.join("var/logs/zeek")
    }

    /// The `ZEEKPATH` the nodes get: `ext_zeek_path`, the generated scripts, then Zeek's own.
    pub fn zeek_path(&self) -> String {
        let mut parts = Vec::new();
        if !self.ext_zeek_path.is_empty() {
            parts.push(self.ext_zeek_path.clone());
        }
        parts.push(self.generated_scripts_dir().display().to_string());
        for s in [
            "share/zeek",
            "share/zeek/policy",
            "share/zeek/site",
            "share/zeek/builtin-plugins",
        ] {
            parts.push(self.base_dir.join(s).display().to_string());
        }
        parts.join(":")
    }

    /// The `PATH` the nodes get: `ext_path`, `<base>/bin`, then `path`.
    pub fn path_env(&self) -> String {
        let mut s = String::new();
        if !self.ext_path.is_empty() {
            s.push_str(&self.ext_path);
            s.push(':');
        }
        s.push_str(&self.base_dir.join("bin").display().to_string());
        s.push(':');
        s.push_str(&self.path_var);
        s
    }

    /// Whether the archiver runs.
    pub fn archiver_enabled(&self) -> bool {
        self.archiver.as_deref().is_some_and(|a| a != "0")
    }

    /// The folders the setup creates before any node starts: the generated scripts, the log
    /// archive and queue, and every node's working directory.
    pub fn setup_dirs(&self, nodes: &[NodeSpec]) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.generated_scripts_dir(),
            self.log_archive_dir(),
            self.log_queue_dir(),
        ];
        dirs.extend(
            nodes
                .iter()
                .filter(|n| n.node_type != NodeType::Other)
                .map(|n| n.cwd.clone()),
        );
        dirs
    }

    /// The nodes the generator's units run on this host, in start order: manager, loggers,
    /// proxies, workers, archiver (see `config/zeek_nodes.rs`).
    pub fn nodes(&self) -> Result<Vec<NodeSpec>, ZeekError> {
        super::zeek_nodes::nodes(self)
    }
}

/// Replaces `${var}` by its value (`\${` stays a literal `${`); the unknown name on failure.
pub fn substitute(s: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest.as_bytes()[at - 1] == b'\\' {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(close) = after.find('}') else {
            return Err(after.to_string());
        };
        let var = &after[..close];
        out.push_str(vars.get(var).ok_or_else(|| var.to_string())?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
