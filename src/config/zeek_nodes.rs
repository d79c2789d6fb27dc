//! What each unit of `zeek-systemd-generator` runs, as broctld's [`NodeSpec`]s: the same
//! program, arguments, environment, working folder, user, CPUs, nice level, memory limit,
//! capabilities, restart delay and start order, for a checked [`ZeekConf`]. The one addition is
//! Zeek's `-U .status`, from which broctld learns that a node is ready.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::zeek_conf::{substitute, Interface, TypeSettings, ZeekConf, ZeekError};
use super::{NodeSpec, NodeType, Policy, ReadyFile};

/// The nodes of `conf` on this host, in start order: manager, loggers, proxies, workers,
/// archiver.
pub fn nodes(conf: &ZeekConf) -> Result<Vec<NodeSpec>, ZeekError> {
    let units = Units::new(conf);
    let loggers: Vec<String> = (1..=conf.logger_count())
        .map(|i| conf.prefixed(&format!("logger-{i}")))
        .collect();
    let proxies: Vec<String> = (1..=conf.proxy_count())
        .map(|i| conf.prefixed(&format!("proxy-{i}")))
        .collect();
    let mut out = Vec::new();
    if conf.manager {
        out.push(units.zeek(
            "manager",
            "manager",
            NodeType::Manager,
            &conf.manager_settings,
            &loggers,
        ));
    }
    for (i, name) in loggers.iter().enumerate() {
        let dir = format!("logger-{}", i + 1);
        out.push(units.zeek(name, &dir, NodeType::Logger, &conf.logger_settings, &[]));
    }
    for (i, name) in proxies.iter().enumerate() {
        let dir = format!("proxy-{}", i + 1);
        out.push(units.zeek(name, &dir, NodeType::Proxy, &conf.proxy_settings, &loggers));
    }
    let mut worker_after = Vec::new();
    if conf.manager {
        worker_after.push("manager".to_string());
    }
    worker_after.extend(loggers);
    worker_after.extend(proxies);
    let mut host_index = 0usize;
    for iwc in &conf.interfaces {
        for index in 1..=iwc.workers.unwrap_or(0) as usize {
            host_index += 1;
            out.push(units.worker(iwc, index, host_index, &worker_after)?);
        }
    }
    if conf.archiver_enabled() {
        out.push(units.archiver());
    }
    Ok(out)
}

fn split(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// The parts every unit shares.
struct Units<'a> {
    conf: &'a ZeekConf,
    /// `<base>/bin/zeek`.
    exe: String,
    /// Restart as `Restart=always` with `RestartSec=` and no start limit; stop as systemd does;
    /// only the unit's environment; the configured user and group.
    policy: Policy,
}

impl<'a> Units<'a> {
    fn new(conf: &'a ZeekConf) -> Units<'a> {
        let delay = Duration::from_secs(conf.restart_interval_sec.max(0) as u64);
        let policy = Policy {
            restart_delay: delay,
            restart_delay_max: delay,
            restart_delay_factor: 1.0,
            give_up_after: 0,
            give_up_window: Duration::ZERO,
            stop_timeout: Duration::from_secs(90),
            user: (!conf.user.is_empty()).then(|| conf.user.clone()),
            group: (!conf.group.is_empty()).then(|| conf.group.clone()),
            ..Policy::default()
        };
        Units {
            conf,
            exe: conf.base_dir.join("bin/zeek").display().to_string(),
            policy,
        }
    }

    /// The line of a `[zeek]` key (1 when not set).
    fn line_of(&self, key: &str) -> usize {
        self.conf.key_lines.get(key).copied().unwrap_or(1)
    }

    /// Zeek's command line: the program, `-U .status`, `head` (a worker's `-i IFACE`), the
    /// cluster backend, the generator's policy script, the type's and the common args.
    fn command(&self, head: &[String], extra: &str) -> Vec<String> {
        // Readiness is Zeek's own word: its `-U` status file reading RUNNING (the one argument
        // broctld adds to what the generator's units run).
        let mut c = vec![self.exe.clone(), "-U".into(), ".status".into()];
        c.extend(head.iter().cloned());
        c.extend(split(&self.conf.cluster_backend_args));
        c.push("policy/misc/systemd-generator".into());
        c.extend(split(extra));
        c.extend(split(&self.conf.args));
        c
    }

    /// `PATH`, `ZEEKPATH`, `CLUSTER_NODE`, then `env` and the type's env (later wins).
    fn env(&self, cluster_node: &str, extra: &[(String, String)]) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), self.conf.path_env());
        env.insert("ZEEKPATH".to_string(), self.conf.zeek_path());
        env.insert("CLUSTER_NODE".to_string(), cluster_node.to_string());
        env.extend(self.conf.env.iter().cloned());
        env.extend(extra.iter().cloned());
        env
    }

    /// A node running `command` with exactly `env` in `cwd`, with the type's settings.
    fn spec(
        &self,
        name: String,
        node_type: NodeType,
        (command, env): (Vec<String>, BTreeMap<String, String>),
        cwd: PathBuf,
        settings: &TypeSettings,
        (after, line): (&[String], usize),
    ) -> NodeSpec {
        let mut policy = self.policy.clone();
        if node_type != NodeType::Other {
            policy.ready_file = Some(ReadyFile::zeek());
        }
        policy.nice = settings.nice;
        policy.memory_max = settings.memory_max;
        NodeSpec {
            stdout: cwd.join("stdout.log"),
            stderr: cwd.join("stderr.log"),
            name,
            node_type,
            command,
            env: env.into_iter().collect(),
            cwd,
            cpu_affinity: settings.cpu_set.clone().unwrap_or_default(),
            start_after: after.to_vec(),
            policy: std::sync::Arc::new(policy),
            line,
        }
    }

    /// A manager, logger or proxy (`zeek-manager.service`, `zeek-logger@N`, `zeek-proxy@N`),
    /// named at the line of its count.
    fn zeek(
        &self,
        name: &str,
        dir: &str,
        node_type: NodeType,
        settings: &TypeSettings,
        after: &[String],
    ) -> NodeSpec {
        let key = match node_type {
            NodeType::Manager => "manager",
            NodeType::Logger => "loggers",
            _ => "proxies",
        };
        self.spec(
            name.to_string(),
            node_type,
            (
                self.command(&[], &settings.args),
                self.env(name, &settings.env),
            ),
            self.conf.spool_dir().join(dir),
            settings,
            (after, self.line_of(key)),
        )
    }

    /// Worker `index` of interface `iwc` (`host_index` counts over every interface): the
    /// template `zeek-worker[-NAME]@.service` with its instance's drop-in (INTERFACE,
    /// CPUAffinity, worker_env) applied.
    fn worker(
        &self,
        iwc: &Interface,
        index: usize,
        host_index: usize,
        after: &[String],
    ) -> Result<NodeSpec, ZeekError> {
        let mut vars = BTreeMap::new();
        vars.insert("worker_index", index.to_string());
        vars.insert("worker_index0", (index - 1).to_string());
        vars.insert("host_worker_index", host_index.to_string());
        vars.insert("host_worker_index0", (host_index - 1).to_string());
        let cpu =
            (!iwc.cpu_list.is_empty()).then(|| iwc.cpu_list[(host_index - 1) % iwc.cpu_list.len()]);
        if let Some(c) = cpu {
            vars.insert("worker_cpu", c.to_string());
        }
        if !iwc.name.is_empty() {
            vars.insert("interface_section_name", iwc.name.clone());
        }
        let interface = substitute(&iwc.interface, &vars).map_err(|var| ZeekError {
            line: iwc.interface_line,
            key: Some("interface".into()),
            message: format!(
                "interface substitution for '{}' failed (invalid substitution var '{var}')",
                iwc.interface
            ),
        })?;
        let local = iwc.worker_name(&index.to_string());
        let name = self.conf.prefixed(&local);
        let mut env = self.env(&name, &[]);
        for (k, v) in self.conf.env.iter().chain(&iwc.env) {
            let v = substitute(v, &vars).map_err(|var| ZeekError {
                line: iwc.line,
                key: Some("worker_env".into()),
                message: format!(
                    "worker_env substitution for '{v}' failed of '{k}' (invalid substitution var '{var}')"
                ),
            })?;
            env.insert(k.clone(), v);
        }
        env.insert("INTERFACE".into(), interface.clone());
        let settings = TypeSettings {
            nice: iwc.nice,
            memory_max: iwc.memory_max,
            cpu_set: cpu.map(|c| vec![c]),
            ..TypeSettings::default()
        };
        let mut spec = self.spec(
            name,
            NodeType::Worker,
            (self.command(&["-i".into(), interface], &iwc.args), env),
            self.conf.spool_dir().join(local),
            &settings,
            (after, iwc.interface_line.max(1)),
        );
        std::sync::Arc::make_mut(&mut spec.policy).capabilities = vec!["CAP_NET_RAW".into()];
        Ok(spec)
    }

    /// `zeek-archiver.service`: `<base>/bin/zeek-archiver ARGS QUEUE ARCHIVE` for `archiver = 1`,
    /// else the given program with its args; only `env` and `archiver_env`, no Zeek variables.
    fn archiver(&self) -> NodeSpec {
        let conf = self.conf;
        let s = &conf.archiver_settings;
        let option = conf.archiver.as_deref().unwrap_or("1");
        let mut command = if option == "1" {
            vec![conf
                .base_dir
                .join("bin/zeek-archiver")
                .display()
                .to_string()]
        } else {
            vec![option.to_string()]
        };
        command.extend(split(&conf.archiver_args));
        if option == "1" {
            command.push(conf.log_queue_dir().display().to_string());
            command.push(conf.log_archive_dir().display().to_string());
        }
        let env: BTreeMap<String, String> = conf.env.iter().chain(&s.env).cloned().collect();
        self.spec(
            conf.prefixed("archiver"),
            NodeType::Other,
            (command, env),
            conf.spool_dir(),
            s,
            (&[], self.line_of("archiver")),
        )
    }
}
