//! The hosts of a multi-host cluster: TOML `[[host]]` tables and the `host` key of a
//! `[[node]]`. Each host's broctld runs the nodes of its own host only (its host is `--host
//! NAME`, `$BROCTLD_HOST` or the hostname); the commanding broctld reaches the others over
//! ssh (see `crate::remote`).
//!
//! ```toml
//! [[host]]
//! name = "sensor-1"
//! ssh = "zeek@10.0.0.11"
//! port = 22                                   # optional
//! identity = "/etc/broctld/id_ed25519"        # optional
//! ssh_options = ["-o", "StrictHostKeyChecking=accept-new"]
//! broctld = "/usr/local/bin/broctld"          # default: this broctld's path
//! config = "/etc/broctld/broctld.toml"        # default: this config's path
//! timeout_ms = 60000                          # per command on this host
//!
//! [[node]]
//! name = "worker-1"
//! host = "sensor-1"                           # default: this machine
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Entry, Item, Raw};
use super::{describe, normalize, read_ms, read_string, valid_name, Bad, Checker, NodeType};

/// Default upper bound of one command on one host.
pub const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(60);

/// Keys of a `[[host]]` table.
const HOST_KEYS: [&str; 8] = [
    "name",
    "ssh",
    "port",
    "identity",
    "ssh_options",
    "broctld",
    "config",
    "timeout_ms",
];

/// One host of the cluster, reached over ssh.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// The host's name (the `--host` its broctld runs with), unique.
    pub name: String,
    /// ssh's destination, `user@addr` or `addr`.
    pub ssh: String,
    /// ssh's port (`-p`), if not ssh's default.
    pub port: Option<u16>,
    /// A key file (`-i`, with `IdentitiesOnly=yes`).
    pub identity: Option<PathBuf>,
    /// More arguments for ssh, before the destination.
    pub ssh_options: Vec<String>,
    /// broctld's path on the host (default: this broctld's path).
    pub broctld: Option<PathBuf>,
    /// The config's path on the host (default: this config's path).
    pub config: Option<PathBuf>,
    /// Upper bound of one command on this host.
    pub timeout: Duration,
    /// 1-based line of the `[[host]]` header.
    pub line: usize,
}

/// A node of the whole cluster: where it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNode {
    /// The node's name (unique across the cluster).
    pub name: String,
    /// Its role (for the cluster-wide start order).
    pub node_type: NodeType,
    /// Its host (`None`: the machine whose host names no `[[host]]` table).
    pub host: Option<String>,
}

/// Every host and every node of a multi-host config (present when it has `[[host]]` tables).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The `[[host]]` tables, in file order.
    pub hosts: Vec<HostSpec>,
    /// Every node of every host, in file order.
    pub nodes: Vec<ClusterNode>,
}

impl HostSpec {
    /// A host reached at `ssh` with every optional key at its default.
    pub fn new(name: String, ssh: String, line: usize) -> HostSpec {
        HostSpec {
            name,
            ssh,
            port: None,
            identity: None,
            ssh_options: Vec::new(),
            broctld: None,
            config: None,
            timeout: DEFAULT_HOST_TIMEOUT,
            line,
        }
    }
}

impl Cluster {
    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Whether a broctld whose host is `this` runs `node`: the node's host is `this`, or the
    /// node names no host and `this` is none of the `[[host]]` tables.
    pub fn runs_here(&self, node: &ClusterNode, this: &str) -> bool {
        match &node.host {
            Some(h) => h == this,
            None => self.host(this).is_none(),
        }
    }

    /// Keeps in `nodes` those the broctld of host `this` runs, their `start_after` on other
    /// hosts' nodes dropped (the cluster-wide order is the commanding broctld's).
    pub fn keep_here(&self, nodes: &mut Vec<super::NodeSpec>, this: &str) {
        let here: std::collections::HashSet<&str> = self
            .nodes
            .iter()
            .filter(|n| self.runs_here(n, this))
            .map(|n| n.name.as_str())
            .collect();
        nodes.retain(|n| here.contains(n.name.as_str()));
        for n in nodes.iter_mut() {
            n.start_after.retain(|a| here.contains(a.as_str()));
        }
    }
}

fn read_port(item: &Item) -> Result<u16, Bad> {
    match &item.value {
        Raw::Int(p) if (1..=65535).contains(p) => Ok(*p as u16),
        other => Err(Bad::new(format!(
            "expected a port number from 1 to 65535, got {}",
            describe(other)
        ))),
    }
}

fn read_words(item: &Item) -> Result<Vec<String>, Bad> {
    let Raw::Array(items) = &item.value else {
        return Err(Bad::new(format!(
            "expected an array of strings, got {}",
            describe(&item.value)
        )));
    };
    items
        .iter()
        .map(|i| match &i.value {
            Raw::Str(s) if !s.contains('\0') => Ok(s.clone()),
            other => Err(Bad::at(
                i,
                format!("expected a string, got {}", describe(other)),
            )),
        })
        .collect()
}

impl Checker<'_> {
    /// The `[[host]]` tables (each mistake reported, that table left out).
    pub(super) fn check_hosts(&self, entry: &Entry) -> Vec<HostSpec> {
        let list_line = self.entry_line(entry, 1);
        let Raw::Array(tables) = &entry.value.value else {
            self.report(self.src.invalid(
                list_line,
                Some("host"),
                format!(
                    "key 'host': expected an array of tables ([[host]]), got {}",
                    describe(&entry.value.value)
                ),
            ));
            return Vec::new();
        };
        let mut hosts: Vec<HostSpec> = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for table in tables {
            let line = self.line_of(table.start(), list_line);
            if let Some(h) = self.check_host(table, line) {
                if let Some(first) = first_line.get(&h.name) {
                    self.report(self.src.invalid(
                        line,
                        Some("name"),
                        format!(
                            "duplicate host name '{}' (first defined on line {first})",
                            h.name
                        ),
                    ));
                    continue;
                }
                first_line.insert(h.name.clone(), line);
                hosts.push(h);
            }
        }
        hosts
    }

    fn check_host(&self, table: &Item, line: usize) -> Option<HostSpec> {
        let Raw::Table(entries) = &table.value else {
            self.report(self.src.invalid(
                line,
                Some("host"),
                format!(
                    "key 'host': expected an array of tables ([[host]]), got an array holding {}",
                    describe(&table.value)
                ),
            ));
            return None;
        };
        let mut ok = true;
        let mut name = None;
        let mut ssh = None;
        let mut host = HostSpec::new(String::new(), String::new(), line);
        let mut label = "[[host]]".to_string();
        for e in entries {
            let item = &e.value;
            let path = |what| read_string(item, what).map(|s| Some(normalize(&self.dir.join(s))));
            let r = match e.key.as_str() {
                "name" => read_string(item, "a host name").and_then(|s| {
                    if valid_name(&s) {
                        label = format!("host '{s}'");
                        name = Some(s);
                        Ok(())
                    } else {
                        Err(Bad::new(format!(
                            "expected a name of the characters A-Z a-z 0-9 _ . -, got \"{s}\""
                        )))
                    }
                }),
                "ssh" => read_string(item, "an ssh destination (user@addr)").and_then(|s| {
                    if s.is_empty() || s.starts_with('-') || s.contains(char::is_whitespace) {
                        Err(Bad::new(format!(
                            "expected an ssh destination such as \"zeek@10.0.0.11\", got \"{s}\""
                        )))
                    } else {
                        ssh = Some(s);
                        Ok(())
                    }
                }),
                "port" => read_port(item).map(|p| host.port = Some(p)),
                "identity" => path("a key file path").map(|p| host.identity = p),
                "ssh_options" => read_words(item).map(|w| host.ssh_options = w),
                "broctld" => read_string(item, "broctld's path on that host")
                    .map(|s| host.broctld = Some(PathBuf::from(s))),
                "config" => read_string(item, "the config's path on that host")
                    .map(|s| host.config = Some(PathBuf::from(s))),
                "timeout_ms" => read_ms(item, 1).map(|d| host.timeout = d),
                _ => {
                    ok = false;
                    self.report(self.unknown_key(e, line, "in [[host]]", &HOST_KEYS));
                    Ok(())
                }
            };
            if let Err(bad) = r {
                ok = false;
                let line = bad
                    .at
                    .map_or_else(|| self.entry_line(e, line), |at| self.src.line(at));
                self.report(self.src.invalid(
                    line,
                    Some(&e.key),
                    format!("{label}: key '{}': {}", e.key, bad.msg),
                ));
            }
        }
        for (key, missing) in [("name", name.is_none()), ("ssh", ssh.is_none())] {
            if missing && !entries.iter().any(|e| e.key == key) {
                ok = false;
                self.report(self.src.invalid(
                    line,
                    Some(key),
                    format!("{label}: missing required key '{key}'"),
                ));
            }
        }
        host.name = name?;
        host.ssh = ssh?;
        ok.then_some(host)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use std::path::Path;

    const TEXT: &str = r#"
[[host]]
name = "h1"
ssh = "root@10.0.0.1"
port = 2222
identity = "keys/id"
ssh_options = ["-o", "StrictHostKeyChecking=accept-new"]

[[host]]
name = "h2"
ssh = "10.0.0.2"

[[node]]
name = "manager"
type = "manager"
command = ["/bin/true"]

[[node]]
name = "worker-1"
type = "worker"
host = "h1"
command = ["/bin/true"]
start_after = ["manager"]

[[node]]
name = "worker-2"
type = "worker"
host = "h2"
command = ["/bin/true"]
"#;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("/etc/c.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.each().iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn each_host_keeps_its_own_nodes_and_the_cluster_keeps_all() {
        // This machine's hostname (no BROCTLD_HOST in unit tests) names no [[host]].
        let config = Config::parse(TEXT, Path::new("/etc/c.toml")).unwrap();
        let names = |nodes: &[crate::config::NodeSpec]| {
            nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&config.nodes), ["manager"]);
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.nodes.len(), 3);
        let h = cluster.host("h1").unwrap();
        assert_eq!(h.port, Some(2222));
        assert_eq!(h.identity.as_deref(), Some(Path::new("/etc/keys/id")));
        assert_eq!(h.ssh_options.len(), 2);
        let all = || {
            let mut c = Config::parse(
                &TEXT.replace("host = ", "# host = "),
                Path::new("/etc/c.toml"),
            )
            .unwrap();
            c.cluster = None;
            c.nodes
        };
        let mut h1 = all();
        cluster.keep_here(&mut h1, "h1");
        assert_eq!(names(&h1), ["worker-1"]);
        // The cross-host order is the commanding broctld's.
        assert!(h1[0].start_after.is_empty());
        let mut h2 = all();
        cluster.keep_here(&mut h2, "h2");
        assert_eq!(names(&h2), ["worker-2"]);
    }

    #[test]
    fn host_mistakes_name_the_line_and_key() {
        let e = errors(
            "[[host]]\nname = \"h1\"\nssh = \"a b\"\nprot = 1\n[[node]]\nname = \"w\"\nhost = \"h9\"\ncommand = [\"/bin/true\"]\n",
        );
        assert!(
            e.iter()
                .any(|m| m.contains(":3:") && m.contains("host 'h1': key 'ssh'")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains(":4:")
                && m.contains("unknown key 'prot'")
                && m.contains("'port'")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains(":7:") && m.contains("unknown host 'h9'")),
            "{e:?}"
        );
        let e = errors("[[host]]\nname = \"h1\"\nssh = \"x\"\n[[host]]\nname = \"h1\"\nssh = \"y\"\n[[host]]\nname = \"h3\"\n");
        assert!(
            e.iter()
                .any(|m| m.contains(":7:") && m.contains("missing required key 'ssh'")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains(":4:") && m.contains("duplicate host name 'h1'")),
            "{e:?}"
        );
        assert!(matches!(
            Config::parse(
                "[[host]]\nname = \"h\"\nssh = \"x\"\nport = 0\n",
                Path::new("/c.toml")
            ),
            Err(ConfigError::Invalid { line: 4, .. })
        ));
    }
}

#[cfg(test)]
mod node_cfg_tests {
    use crate::config::Config;

    #[test]
    fn node_cfg_nodes_go_to_the_host_table_their_host_names() {
        let dir = std::env::temp_dir().join(format!("broctld-nodecfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/node.cfg"),
            "[manager]\ntype=manager\nhost=localhost\n\n[proxy-1]\ntype=proxy\nhost=localhost\n\n[worker-1]\ntype=worker\nhost=10.9.0.2\ninterface=eth0\n",
        )
        .unwrap();
        let toml = "[zeek]\nconf = \"etc/node.cfg\"\n\n[[host]]\nname = \"10.9.0.2\"\nssh = \"root@10.9.0.2\"\n";
        std::fs::write(dir.join("broctld.toml"), toml).unwrap();
        let config = Config::load(&dir.join("broctld.toml")).unwrap();
        let here: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(here, ["manager", "proxy-1"]);
        let cluster = config.cluster.unwrap();
        let worker = cluster.nodes.iter().find(|n| n.name == "worker-1").unwrap();
        assert_eq!(worker.host.as_deref(), Some("10.9.0.2"));
        let manager = cluster.nodes.iter().find(|n| n.name == "manager").unwrap();
        assert_eq!(
            manager.host, None,
            "localhost names no [[host]]: this machine"
        );
        // Without [[host]] tables, node.cfg runs here whole, as before.
        std::fs::write(
            dir.join("broctld.toml"),
            "[zeek]\nconf = \"etc/node.cfg\"\n",
        )
        .unwrap();
        let config = Config::load(&dir.join("broctld.toml")).unwrap();
        assert_eq!(config.nodes.len(), 3);
        assert!(config.cluster.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
