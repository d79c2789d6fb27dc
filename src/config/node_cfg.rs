//! zeekctl's `node.cfg` (one INI section per node: `type`, `host`, `interface`, `lb_method`,
//! `lb_procs`, `pin_cpus`, `env_vars`, `af_packet_*` ...) with the `zeekctl.cfg` beside it
//! (`ZeekPort`, `MetricsPort`, `ZeekArgs`, `Env_Vars`, `UseWebSocket`, ...): the nodes zeekctl
//! would run, expanded and checked as zeekctl does, and the layout its `install` writes.
//!
//! zeekctl's installation prefix (`ZeekBase`) is the folder above the one holding node.cfg
//! (`<ZeekBase>/etc/node.cfg`); nodes run `<ZeekBase>/bin/zeek` in `<ZeekBase>/spool/<node>`.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};

use super::layout::{self, ZeekctlLayout, ZeekctlNode};
use super::zeek_cluster::ZeekSetup;
use super::{valid_name, ConfigError, NodeSpec, NodeType, Policy, ReadyFile, MAX_CPU};

/// Whether `path` is a zeekctl node.cfg: named `node.cfg` (or `node.cfg__VARIANT`, as
/// zeekctl's test suite names them).
pub fn is_node_cfg(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "node.cfg" || n.starts_with("node.cfg__"))
}

/// Keys zeekctl knows for a node (`af_packet_*` come from its AF_Packet plugin).
const NODE_KEYS: [&str; 10] = [
    "type",
    "host",
    "interface",
    "lb_method",
    "lb_procs",
    "lb_interfaces",
    "pin_cpus",
    "env_vars",
    "aux_scripts",
    "zeek_args",
];

/// The AF_Packet plugin's node keys (without the `af_packet_` prefix).
const AF_PACKET_KEYS: [&str; 10] = [
    "block_size",
    "block_timeout",
    "buffer_size",
    "checksum_validation_mode",
    "enable_defrag",
    "enable_fanout",
    "enable_hw_timestamping",
    "fanout_id",
    "fanout_mode",
    "link_type",
];

/// One `[section]` of node.cfg with its options (keys lowercased) and their lines.
struct Section {
    name: String,
    line: usize,
    options: Vec<(String, String, usize)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<(&str, usize)> {
        self.options
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, l)| (v.as_str(), *l))
    }
}

/// Reads node.cfg's INI syntax (as Python's configparser: `key = value` or `key: value`,
/// `#` and `;` comments, keys in any case).
fn sections(path: &Path, text: &str) -> Result<Vec<Section>, ConfigError> {
    let mut out: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let lineno = i + 1;
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if out.iter().any(|s| s.name == name) {
                return Err(invalid(
                    path,
                    lineno,
                    None,
                    format!("duplicate section '{name}'"),
                ));
            }
            out.push(Section {
                name: name.to_string(),
                line: lineno,
                options: Vec::new(),
            });
            continue;
        }
        let at = line.find(['=', ':']);
        let (Some(at), Some(section)) = (at, out.last_mut()) else {
            return Err(invalid(
                path,
                lineno,
                None,
                format!("expected [NODE] or key = value, got '{line}'"),
            ));
        };
        let key = line[..at].trim().to_ascii_lowercase().replace('.', "_");
        section
            .options
            .push((key, line[at + 1..].trim().to_string(), lineno));
    }
    Ok(out)
}

fn invalid(path: &Path, line: usize, key: Option<&str>, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key: key.map(str::to_string),
        message,
    }
}

/// zeekctl's `env_vars`: `A=1, B="x y"` (comma-separated, trimmed).
fn env_vars(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    if text.is_empty() {
        return Ok(env);
    }
    for kv in text.split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("missing '=' in env_vars option value: {kv}"));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(format!(
                "env_vars option value must contain at least one environment variable name: {kv}"
            ));
        }
        env.push((k.to_string(), v.trim().to_string()));
    }
    Ok(env)
}

/// The first IPv4 address of `host` (else its first address), as Zeek writes it.
fn resolve(host: &str) -> Option<String> {
    let addrs: Vec<std::net::IpAddr> = (host, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    let ip = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first())?;
    Some(match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    })
}

/// zeekctl.cfg: `key = value` lines, keys in any case.
fn zeekctl_cfg(path: &Path) -> Result<BTreeMap<String, (String, usize)>, ConfigError> {
    let mut map = BTreeMap::new();
    if !path.exists() {
        return Ok(map);
    }
    let text = super::Config::read_text(path)?;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(invalid(
                path,
                i + 1,
                None,
                format!("zeekctl config syntax error: {line}"),
            ));
        };
        map.insert(k.trim().to_ascii_lowercase(), (v.trim().to_string(), i + 1));
    }
    Ok(map)
}

/// One node after `lb_procs` expansion.
struct Expanded {
    name: String,
    /// The line of its `[section]`.
    line: usize,
    node_type: NodeType,
    addr: String,
    interface: String,
    cpu: Option<usize>,
    env: Vec<(String, String)>,
    extra_args: Vec<String>,
}

/// One node.cfg section, checked as zeekctl checks it and expanded (`lb_procs`) into the
/// processes it stands for.
fn expand(
    path: &Path,
    s: &Section,
    global_env: &[(String, String)],
) -> Result<Vec<Expanded>, ConfigError> {
    let mut out = Vec::new();
    let name = &s.name;
    let bad = |line: usize, key: &str, m: String| invalid(path, line, Some(key), m);
    for (k, _, line) in &s.options {
        let af = k
            .strip_prefix("af_packet_")
            .is_some_and(|r| AF_PACKET_KEYS.contains(&r));
        if !NODE_KEYS.contains(&k.as_str()) && !af {
            return Err(bad(
                *line,
                k,
                format!("unrecognized node config option '{k}' given for node '{name}'"),
            ));
        }
    }
    if !valid_name(name) {
        return Err(invalid(
            path,
            s.line,
            None,
            format!("invalid node name '{name}'"),
        ));
    }
    if let Some(why) = super::selector_name(name) {
        return Err(invalid(
            path,
            s.line,
            None,
            super::selector_name_message(name, &why),
        ));
    }
    let Some((t, tline)) = s.get("type") else {
        return Err(invalid(
            path,
            s.line,
            Some("type"),
            format!("no type given for node {name}"),
        ));
    };
    let node_type = match t {
        "standalone" => NodeType::Standalone,
        "manager" => NodeType::Manager,
        "logger" => NodeType::Logger,
        "proxy" => NodeType::Proxy,
        "worker" => NodeType::Worker,
        _ => {
            return Err(bad(
                tline,
                "type",
                format!("unknown node type '{t}' given for node '{name}'"),
            ))
        }
    };
    let Some((host, hline)) = s.get("host").filter(|(h, _)| !h.is_empty()) else {
        return Err(invalid(
            path,
            s.line,
            Some("host"),
            format!("no host given for node '{name}'"),
        ));
    };
    let addr = resolve(host).ok_or_else(|| {
        bad(
            hline,
            "host",
            format!("hostname lookup failed for '{host}' in node config"),
        )
    })?;
    let mut env = match s.get("env_vars") {
        None => Vec::new(),
        Some((v, line)) => {
            env_vars(v).map_err(|e| bad(line, "env_vars", format!("node '{name}' config: {e}")))?
        }
    };
    for (k, v) in global_env {
        if !env.iter().any(|(ek, _)| ek == k) {
            env.push((k.clone(), v.clone()));
        }
    }
    let mut interface = s
        .get("interface")
        .map_or(String::new(), |(v, _)| v.to_string());
    let lb_method = s.get("lb_method");
    let procs = match s.get("lb_procs") {
        None => {
            if let Some((_, line)) = lb_method {
                return Err(bad(
                    line,
                    "lb_method",
                    format!("number of load-balanced processes not specified for node '{name}'"),
                ));
            }
            0
        }
        Some((v, line)) => {
            if node_type != NodeType::Worker {
                return Err(bad(line, "lb_procs", format!("node '{name}' config: load balancing node config options are only for worker nodes")));
            }
            let n: i64 = v.parse().map_err(|_| {
                bad(
                    line,
                    "lb_procs",
                    format!(
                        "number of load-balanced processes must be an integer for node '{name}'"
                    ),
                )
            })?;
            if n < 1 {
                return Err(bad(line, "lb_procs", format!("number of load-balanced processes must be greater than zero for node '{name}'")));
            }
            n as usize
        }
    };
    let pin: Vec<usize> = match s.get("pin_cpus").filter(|(v, _)| !v.is_empty()) {
        None => Vec::new(),
        Some((v, line)) => {
            let list: Option<Vec<usize>> = v
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|c| *c as i64 <= MAX_CPU)
                })
                .collect();
            let list = list.ok_or_else(|| {
                bad(
                    line,
                    "pin_cpus",
                    format!(
                        "pin cpus list must contain only non-negative integers for node '{name}'"
                    ),
                )
            })?;
            (0..procs.max(list.len()))
                .map(|i| list[i % list.len()])
                .collect()
        }
    };
    let mut lb_interfaces: Vec<String> = Vec::new();
    if procs > 0 {
        let Some((method, mline)) = lb_method else {
            return Err(invalid(
                path,
                s.line,
                Some("lb_method"),
                format!("no load balancing method given for node '{name}'"),
            ));
        };
        if !["af_packet", "pf_ring", "myricom", "custom", "interfaces"].contains(&method) {
            return Err(bad(
                mline,
                "lb_method",
                format!("unknown load balancing method '{method}' given for node '{name}'"),
            ));
        }
        if method == "interfaces" {
            let Some((list, _)) = s.get("lb_interfaces") else {
                return Err(invalid(
                    path,
                    s.line,
                    Some("lb_interfaces"),
                    format!("list of load-balanced interfaces not specified for node '{name}'"),
                ));
            };
            lb_interfaces = list.split(',').map(|i| i.trim().to_string()).collect();
            if lb_interfaces.len() != procs {
                return Err(bad(mline, "lb_interfaces", format!("number of load-balanced interfaces is not same as number of load-balanced processes for node '{name}'")));
            }
        }
        if method == "af_packet" {
            if interface.starts_with("af_packet::") {
                return Err(bad(
                    mline,
                    "interface",
                    format!("unexpected af_packet:: prefix for interface {interface} of {name}"),
                ));
            }
            interface = format!("af_packet::{interface}");
        }
    }
    let mut extra_args = Vec::new();
    if procs > 0 {
        for key in AF_PACKET_KEYS {
            if let Some((v, _)) = s
                .get(&format!("af_packet_{key}"))
                .filter(|(v, _)| !v.trim().is_empty())
            {
                extra_args.push(format!("AF_Packet::{key}={}", v.trim()));
            }
        }
    }
    if let Some((v, _)) = s.get("aux_scripts") {
        extra_args.push(v.to_string());
    }
    let count = procs.max(1);
    for i in 0..count {
        let mut iface = interface.clone();
        if let Some(last) = lb_interfaces.pop() {
            iface = last;
        }
        out.push(Expanded {
            line: s.line,
            name: if procs > 0 {
                format!("{name}-{}", i + 1)
            } else {
                name.clone()
            },
            node_type,
            addr: addr.clone(),
            interface: iface,
            cpu: pin.get(i).copied(),
            env: env.clone(),
            extra_args: extra_args.clone(),
        });
    }
    Ok(out)
}

/// zeekctl's checks of the whole cluster; whether it is a standalone one.
fn check_roles(path: &Path, nodes: &[Expanded]) -> Result<bool, ConfigError> {
    if nodes.is_empty() {
        return Err(invalid(
            path,
            1,
            None,
            "no nodes found in node config".into(),
        ));
    }
    let count = |t: NodeType| nodes.iter().filter(|n| n.node_type == t).count();
    let standalone = count(NodeType::Standalone) > 0;
    if standalone && nodes.len() > 1 {
        return Err(invalid(
            path,
            1,
            Some("type"),
            "more than one node defined in standalone node config".into(),
        ));
    }
    if !standalone {
        if count(NodeType::Manager) > 1 {
            return Err(invalid(
                path,
                1,
                Some("type"),
                "only one manager can be defined in node config".into(),
            ));
        }
        if count(NodeType::Manager) == 0 {
            return Err(invalid(
                path,
                1,
                Some("type"),
                "no manager defined in node config".into(),
            ));
        }
        if count(NodeType::Proxy) == 0 {
            return Err(invalid(
                path,
                1,
                Some("type"),
                "no proxy defined in node config".into(),
            ));
        }
    }
    Ok(standalone)
}

/// zeekctl's order of node types: standalone, logger, manager, proxy, worker.
fn rank(t: NodeType) -> u8 {
    match t {
        NodeType::Standalone => 0,
        NodeType::Logger => 1,
        NodeType::Manager => 2,
        NodeType::Proxy => 3,
        _ => 4,
    }
}

/// What zeekctl's installation decides about every node's process.
struct Install<'a> {
    /// `ZeekBase`.
    base: &'a Path,
    standalone: bool,
    /// `ClusterBackend`.
    backend: &'a str,
    /// `Prefixes`.
    prefixes: String,
    /// `SitePolicyScripts`.
    site_scripts: String,
    /// `ZeekArgs`.
    zeek_args: String,
}

impl Install<'_> {
    /// `<ZeekBase>/spool/installed-scripts-do-not-touch`.
    fn installed(&self) -> PathBuf {
        self.base.join("spool/installed-scripts-do-not-touch")
    }

    /// zeekctl's command line for node `n`.
    fn command(&self, n: &Expanded) -> Vec<String> {
        let mut command = vec![self.base.join("bin/zeek").display().to_string()];
        if !n.interface.is_empty() {
            command.extend(["-i".to_string(), n.interface.clone()]);
        }
        command.extend(["-U", ".status"].map(String::from));
        let mut prefixes = vec!["zeekctl", "zeekctl-live"];
        if self.standalone {
            prefixes.push("standalone");
        }
        prefixes.extend(self.prefixes.split(':'));
        prefixes.push(&n.name);
        for p in prefixes {
            command.extend(["-p".to_string(), p.to_string()]);
        }
        command.push(format!(
            "policy/frameworks/cluster/backend/{}",
            self.backend.to_ascii_lowercase()
        ));
        command.extend(self.site_scripts.split_whitespace().map(String::from));
        command.push("zeekctl".into());
        if self.standalone {
            command.push("zeekctl/standalone".into());
        }
        command.push("zeekctl/auto".into());
        command.extend(n.extra_args.iter().cloned());
        command.extend(self.zeek_args.split_whitespace().map(String::from));
        command
    }

    /// The whole environment of node `n`.
    fn env(&self, n: &Expanded) -> Vec<(String, String)> {
        let installed = self.installed();
        let zeekpath = [
            installed.join("site"),
            installed.join("auto"),
            self.base.join("share/zeek"),
            self.base.join("share/zeek/policy"),
            self.base.join("share/zeek/site"),
            self.base.join("share/zeek/builtin-plugins"),
        ]
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
        let mut env: BTreeMap<String, String> = n.env.iter().cloned().collect();
        env.insert("ZEEKPATH".into(), zeekpath);
        env.insert(
            "PATH".into(),
            format!(
                "{}:/usr/local/bin:/usr/bin:/bin",
                self.base.join("bin").display()
            ),
        );
        if !self.standalone {
            env.insert("CLUSTER_NODE".into(), n.name.clone());
        }
        env.into_iter().collect()
    }

    /// Node `n` as broctld runs it: after every node of an earlier type (zeekctl's order).
    fn spec(&self, n: &Expanded, nodes: &[Expanded]) -> NodeSpec {
        let cwd = self.base.join("spool").join(&n.name);
        NodeSpec {
            name: n.name.clone(),
            node_type: n.node_type,
            command: self.command(n),
            env: self.env(n),
            stdout: cwd.join("stdout.log"),
            stderr: cwd.join("stderr.log"),
            cwd,
            cpu_affinity: n.cpu.into_iter().collect(),
            start_after: nodes
                .iter()
                .filter(|o| rank(o.node_type) < rank(n.node_type))
                .map(|o| o.name.clone())
                .collect(),
            policy: std::sync::Arc::new(Policy {
                ready_file: Some(ReadyFile::zeek()),
                ..Policy::default()
            }),
            line: n.line,
        }
    }
}

/// Loads node.cfg (and the zeekctl.cfg beside it): the nodes in zeekctl's start order and the
/// layout its `install` writes.
pub fn load(path: &Path) -> Result<(Vec<NodeSpec>, ZeekSetup), ConfigError> {
    load_text(path, &super::Config::read_text(path)?)
}

/// Where each node of node.cfg runs: its section's `host=`, for every node the section makes
/// (`NAME`, or `NAME-1` .. `NAME-N` with `lb_procs`). A TOML config's `[[host]]` table of that
/// name places them on that host.
pub fn node_hosts(path: &Path, nodes: &[NodeSpec]) -> Result<Vec<(String, String)>, ConfigError> {
    let text = super::Config::read_text(path)?;
    let sections = sections(path, &text)?;
    let mut out = Vec::new();
    for n in nodes {
        let section = sections.iter().find(|s| {
            n.name == s.name
                || n.name
                    .strip_prefix(s.name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        });
        if let Some((host, _)) = section.and_then(|s| s.get("host")) {
            out.push((n.name.clone(), host.to_string()));
        }
    }
    Ok(out)
}

/// [`load`] with node.cfg's text already read (the zeekctl.cfg beside it is read here).
pub fn load_text(path: &Path, text: &str) -> Result<(Vec<NodeSpec>, ZeekSetup), ConfigError> {
    let etc = path.parent().unwrap_or(Path::new("/"));
    let base = etc.parent().unwrap_or(Path::new("/")).to_path_buf();
    let cfg_path = etc.join("zeekctl.cfg");
    let cfg = zeekctl_cfg(&cfg_path)?;
    let int_opt = |key: &str, default: u32| -> Result<u32, ConfigError> {
        match cfg.get(key) {
            None => Ok(default),
            Some((v, line)) => v.parse().map_err(|_| {
                invalid(
                    &cfg_path,
                    *line,
                    Some(key),
                    format!("option '{key}' must be a whole number, got '{v}'"),
                )
            }),
        }
    };
    let str_opt = |key: &str, default: &str| -> String {
        cfg.get(key).map_or(default.to_string(), |(v, _)| v.clone())
    };
    let bool_opt = |key: &str, default: bool| -> Result<bool, ConfigError> {
        match cfg.get(key) {
            None => Ok(default),
            Some((v, line)) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err(invalid(
                    &cfg_path,
                    *line,
                    Some(key),
                    format!("invalid boolean: '{v}'"),
                )),
            },
        }
    };
    let backend = str_opt("clusterbackend", "ZeroMQ");
    let zeek_port = int_opt("zeekport", 27760)?;
    let first_port = if backend.eq_ignore_ascii_case("zeromq") {
        zeek_port + 2
    } else {
        zeek_port
    };
    let global_env = match cfg.get("env_vars") {
        None => Vec::new(),
        Some((v, line)) => env_vars(v).map_err(|e| {
            invalid(
                &cfg_path,
                *line,
                Some("env_vars"),
                format!("zeekctl config: {e}"),
            )
        })?,
    };

    let mut nodes: Vec<Expanded> = Vec::new();
    for s in sections(path, text)? {
        nodes.extend(expand(path, &s, &global_env)?);
    }
    let standalone = check_roles(path, &nodes)?;
    // zeekctl's order: by type, then node.cfg order.
    nodes.sort_by_key(|n| rank(n.node_type));

    let install = Install {
        base: &base,
        standalone,
        backend: &backend,
        prefixes: str_opt("prefixes", "local"),
        site_scripts: str_opt("sitepolicyscripts", "local.zeek"),
        zeek_args: str_opt("zeekargs", ""),
    };
    let specs: Vec<NodeSpec> = nodes.iter().map(|n| install.spec(n, &nodes)).collect();
    let installed = install.installed();

    let layout_nodes: Vec<ZeekctlNode> = nodes
        .iter()
        .filter_map(|n| {
            let kind = match n.node_type {
                NodeType::Manager => "MANAGER",
                NodeType::Logger => "LOGGER",
                NodeType::Proxy => "PROXY",
                NodeType::Worker => "WORKER",
                _ => return None,
            };
            Some(ZeekctlNode {
                name: n.name.clone(),
                kind,
                addr: n.addr.clone(),
            })
        })
        .collect();
    let websocket = if bool_opt("usewebsocket", true)? {
        Some((
            str_opt("websockethost", "127.0.0.1"),
            int_opt("websocketport", 27759)?,
        ))
    } else {
        None
    };
    let lay = ZeekctlLayout {
        standalone,
        first_port,
        metrics_port: int_opt("metricsport", 9991)?,
        websocket,
    };
    let file = if standalone {
        "standalone-layout.zeek"
    } else {
        "cluster-layout.zeek"
    };
    let mut dirs: Vec<PathBuf> = vec![installed.join("auto"), installed.join("site")];
    dirs.extend(specs.iter().map(|s| s.cwd.clone()));
    let setup = ZeekSetup {
        layout: layout::zeekctl(&layout_nodes, &lay),
        layout_from: None,
        layout_path: installed.join("auto").join(file),
        dirs,
        owner: None,
    };
    Ok((specs, setup))
}
