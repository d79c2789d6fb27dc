//! Loading a Zeek cluster from Zeek's own configuration: a `zeek.conf` (or `HOST.zeek.conf`)
//! file, or a folder of `HOST.zeek.conf` files (a multi-host cluster; this machine runs the
//! nodes of the file named after its host). The result is the nodes this host runs and the
//! [`ZeekSetup`] to do before any of them starts, as the generator's `zeek-setup` unit does.

use std::path::{Path, PathBuf};

use super::hosts::{Cluster, ClusterNode, HostSpec};
use super::layout::{self, GeneratorMode};
use super::zeek_conf::{filename_host, ZeekConf, ZeekError, DEFAULT_BASE_DIR};
use super::{ConfigError, NodeSpec};

/// What must be in place before any node of a Zeek cluster starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeekSetup {
    /// The content of `cluster-layout.zeek` (empty when copied from [`ZeekSetup::layout_from`]).
    pub layout: String,
    /// A ready-made layout (zeek.conf's `cluster_layout`) copied at setup time, as the
    /// generator's setup unit copies it.
    pub layout_from: Option<PathBuf>,
    /// Where the layout is written (`cluster-layout.zeek` in a folder on every node's
    /// `ZEEKPATH`).
    pub layout_path: PathBuf,
    /// Folders to create (log archive and queue, every node's working directory).
    pub dirs: Vec<PathBuf>,
    /// Owner (`user`, `group`) given the created folders, if any.
    pub owner: Option<(String, Option<String>)>,
}

impl ZeekSetup {
    /// The layout's text: generated, or read from the ready-made file.
    pub fn layout_text(&self) -> std::io::Result<String> {
        match &self.layout_from {
            Some(p) => {
                super::Config::read_text(p).map_err(|e| std::io::Error::other(e.to_string()))
            }
            None => Ok(self.layout.clone()),
        }
    }
}

/// Environment variable naming this machine's host in a multi-host cluster (set by
/// `broctld --host NAME`); the hostname when unset.
pub const HOST_ENV: &str = "BROCTLD_HOST";

/// This machine's host name for picking its `HOST.zeek.conf`: `host`, else `$BROCTLD_HOST`,
/// else the kernel's hostname.
pub fn this_host(host: Option<&str>) -> String {
    if let Some(h) = host {
        return h.to_string();
    }
    if let Ok(h) = std::env::var(HOST_ENV) {
        if !h.is_empty() {
            return h;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Whether `path` names Zeek's configuration rather than broctld's: a folder, `zeek.conf` or
/// `*.zeek.conf`.
pub fn is_zeek_conf(path: &Path) -> bool {
    path.is_dir()
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "zeek.conf" || n.ends_with(".zeek.conf"))
}

fn invalid(path: &Path, e: ZeekError) -> ConfigError {
    let message = match &e.key {
        Some(k) if !e.message.contains(k.as_str()) => format!("key '{k}': {}", e.message),
        _ => e.message,
    };
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line: e.line,
        key: e.key,
        message,
    }
}

/// Reads and checks one zeek.conf.
pub fn read_conf(path: &Path, base_dir: &Path) -> Result<ZeekConf, ConfigError> {
    let text = super::Config::read_text(path)?;
    ZeekConf::parse(&text, path, base_dir).map_err(|mut errs| invalid(path, errs.remove(0)))
}

/// The file holding the zeek.conf text of `path`: this host's `<host>.zeek.conf` for a cluster
/// folder (`host`, else `$BROCTLD_HOST`, else the hostname), else `path` itself.
pub fn conf_file(path: &Path, host: Option<&str>) -> Result<PathBuf, ConfigError> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let host = this_host(host);
    let file = path.join(format!("{host}.zeek.conf"));
    if !file.is_file() {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            line: 1,
            key: None,
            message: format!(
                "no {host}.zeek.conf in this cluster folder for this host '{host}' (name the host with --host NAME)"
            ),
        });
    }
    Ok(file)
}

/// The `HOST.zeek.conf` files of a cluster folder, sorted (as upstream orders them).
pub fn cluster_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let ok = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".zeek.conf"))
            .is_some_and(|h| {
                h.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && h.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    })
            });
        if ok {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::Invalid {
            path: dir.to_path_buf(),
            line: 1,
            key: None,
            message: format!("no <hostname>.zeek.conf files in {} found", dir.display()),
        });
    }
    Ok(files)
}

/// The hosts and nodes of the cluster folder `dir`: each `HOST.zeek.conf` is the host `HOST`,
/// reached over ssh at its `ssh` key, else its `address`, else `HOST` itself. `None` unless
/// some file has an `ssh` key (a folder run host by host with `--host`, as before, stays so).
pub fn folder_cluster(dir: &Path) -> Result<Option<Cluster>, ConfigError> {
    let files = cluster_files(dir)?;
    let mut any_ssh = false;
    let mut cluster = Cluster {
        hosts: Vec::new(),
        nodes: Vec::new(),
    };
    for f in files {
        let Some(host) = filename_host(&f) else {
            continue;
        };
        let conf = read_conf(&f, Path::new(DEFAULT_BASE_DIR))?;
        any_ssh |= !conf.ssh.is_empty();
        let ssh = [&conf.ssh, &conf.address]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| host.clone());
        for n in conf.nodes().map_err(|e| invalid(&f, e))? {
            cluster.nodes.push(ClusterNode {
                name: n.name,
                node_type: n.node_type,
                host: Some(host.clone()),
            });
        }
        cluster.hosts.push(HostSpec::new(host, ssh, 1));
    }
    Ok(any_ssh.then_some(cluster))
}

/// The cluster folder of `path` (a folder, or the folder of a `HOST.zeek.conf`), if any.
pub fn cluster_folder(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        Some(path.to_path_buf())
    } else {
        filename_host(path).and_then(|_| path.parent().map(Path::to_path_buf))
    }
}

/// The layout for the cluster folder `dir` (every host), as `-C DIR` renders it.
pub fn folder_layout(dir: &Path) -> Result<String, ConfigError> {
    let mut confs = Vec::new();
    for f in cluster_files(dir)? {
        confs.push(read_conf(&f, Path::new("/dev/null"))?);
    }
    layout::generator(&confs, GeneratorMode::Config).map_err(|m| ConfigError::Invalid {
        path: dir.to_path_buf(),
        line: 1,
        key: Some("manager".into()),
        message: format!("{m} from {}", dir.display()),
    })
}

/// Loads a Zeek configuration: `path` is a zeek.conf, a `HOST.zeek.conf` or a cluster folder
/// (then this host's file is `<host>.zeek.conf`). Relative paths in it are resolved against
/// `dir` (the folder of the file that named it).
pub fn load(
    path: &Path,
    host: Option<&str>,
    dir: &Path,
) -> Result<(Vec<NodeSpec>, ZeekSetup), ConfigError> {
    let file = conf_file(path, host)?;
    let text = super::Config::read_text(&file)?;
    load_text(path, &text, host, dir)
}

/// [`load`] with the text of the zeek.conf (this host's file for a folder) already read, as
/// the Supervisor keeps it for its running config.
pub fn load_text(
    path: &Path,
    text: &str,
    host: Option<&str>,
    dir: &Path,
) -> Result<(Vec<NodeSpec>, ZeekSetup), ConfigError> {
    let file = conf_file(path, host)?;
    let folder = if path.is_dir() {
        Some(path.to_path_buf())
    } else {
        filename_host(path).map(|_| path.parent().unwrap_or(dir).to_path_buf())
    };
    let mut conf = ZeekConf::parse(text, &file, Path::new(DEFAULT_BASE_DIR))
        .map_err(|mut errs| invalid(&file, errs.remove(0)))?;
    let file_dir = file.parent().unwrap_or(dir).to_path_buf();
    conf.base_dir = super::normalize(&file_dir.join(&conf.base_dir));
    let nodes = conf.nodes().map_err(|e| invalid(&file, e))?;
    let layout_from = conf
        .cluster_layout
        .as_ref()
        .map(|given| file_dir.join(given));
    let layout = match (&layout_from, &folder) {
        (Some(_), _) => String::new(),
        (None, Some(folder)) => folder_layout(folder)?,
        (None, None) => layout::generator(std::slice::from_ref(&conf), GeneratorMode::Flags)
            .map_err(|m| {
                invalid(
                    &file,
                    ZeekError {
                        line: 1,
                        key: None,
                        message: m,
                    },
                )
            })?,
    };
    let owner = (!conf.user.is_empty()).then(|| {
        (
            conf.user.clone(),
            (!conf.group.is_empty()).then(|| conf.group.clone()),
        )
    });
    let setup = ZeekSetup {
        layout,
        layout_from,
        layout_path: conf.generated_scripts_dir().join("cluster-layout.zeek"),
        dirs: conf.setup_dirs(&nodes),
        owner,
    };
    Ok((nodes, setup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_with_an_ssh_key_is_a_cluster_of_its_hosts() {
        let dir = std::env::temp_dir().join(format!("broctld-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manager = "[zeek]\nmanager = 1\nloggers = 1\nbase_dir = /tmp/z\narchiver = 0\nssh = root@10.9.0.1\n";
        let sensor =
            "[zeek]\naddress = 10.9.0.2\nbase_dir = /tmp/z\n[interface eth0]\ninterface = eth0\nworkers = 2\n";
        std::fs::write(dir.join("mgr.zeek.conf"), manager).unwrap();
        std::fs::write(dir.join("sensor-1.zeek.conf"), sensor).unwrap();
        let c = folder_cluster(&dir).unwrap().expect("a cluster");
        let hosts: Vec<(&str, &str)> = c
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.ssh.as_str()))
            .collect();
        assert_eq!(hosts, [("mgr", "root@10.9.0.1"), ("sensor-1", "10.9.0.2")]);
        let workers: Vec<&ClusterNode> = c
            .nodes
            .iter()
            .filter(|n| n.node_type == crate::config::NodeType::Worker)
            .collect();
        assert_eq!(workers.len(), 2);
        assert!(workers
            .iter()
            .all(|n| n.host.as_deref() == Some("sensor-1")));
        // Without any ssh key, the folder stays one run host by host with --host.
        std::fs::write(
            dir.join("mgr.zeek.conf"),
            manager.replace("ssh = root@10.9.0.1\n", ""),
        )
        .unwrap();
        assert!(folder_cluster(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
