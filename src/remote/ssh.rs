//! One host's ssh: the command line, the multiplexed master connection, and one remote
//! command bounded by the host's timeout.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{RemoteError, Reply};
use crate::config::hosts::HostSpec;

/// How long the master connection stays up after its last command.
const CONTROL_PERSIST_S: u32 = 600;
/// ssh's connect timeout (seconds), within the host's own timeout.
const CONNECT_TIMEOUT_S: u32 = 5;
/// Keepalives: a link that drops is noticed after `INTERVAL * COUNT` seconds.
const ALIVE_INTERVAL_S: u32 = 2;
const ALIVE_COUNT: u32 = 3;

/// One host as this broctld reaches it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host's `[[host]]` table.
    pub host: HostSpec,
    /// broctld's path on the host.
    pub broctld: PathBuf,
    /// The config's path on the host.
    pub config: PathBuf,
    /// The instance (`--instance`), if given.
    pub instance: Option<String>,
    /// The master connection's socket.
    pub control: PathBuf,
    /// This machine (its nodes name no host): broctld runs here, without ssh.
    pub local: bool,
    /// The runtime folder to pass (`--runtime-dir`): this machine's, for a local target.
    pub runtime_dir: Option<PathBuf>,
}

/// The control socket of `host` in `dir` (the instance's runtime folder).
pub fn control_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("ssh-{host}"))
}

/// Ends the master connection at `control`, if one listens (`ssh -O exit`).
pub fn close_master(control: &Path) {
    if control.exists() {
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .args(["-O", "exit", "broctld-master"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Target {
    /// ssh's options for this host (everything before the destination).
    fn options(&self, master: bool) -> Vec<String> {
        let o = |s: String| ["-o".to_string(), s];
        let mut v: Vec<String> = Vec::new();
        v.extend(o("BatchMode=yes".into()));
        v.extend(o(format!("ConnectTimeout={CONNECT_TIMEOUT_S}")));
        v.extend(o(format!("ServerAliveInterval={ALIVE_INTERVAL_S}")));
        v.extend(o(format!("ServerAliveCountMax={ALIVE_COUNT}")));
        v.extend(o(format!("ControlPath={}", self.control.display())));
        if master {
            v.extend(o("ControlMaster=yes".into()));
            v.extend(o(format!("ControlPersist={CONTROL_PERSIST_S}")));
        } else {
            v.extend(o("ControlMaster=no".into()));
        }
        if let Some(p) = self.host.port {
            v.extend(["-p".into(), p.to_string()]);
        }
        if let Some(i) = &self.host.identity {
            v.extend(["-i".into(), i.display().to_string()]);
            v.extend(o("IdentitiesOnly=yes".into()));
        }
        v.extend(self.host.ssh_options.iter().cloned());
        v
    }

    /// ssh's options for a command on the master connection (for rsync's `-e`).
    pub fn ssh_args(&self) -> Vec<String> {
        self.options(false)
    }

    /// The same options for scp (whose port option is `-P`).
    pub fn scp_args(&self) -> Vec<String> {
        let mut v = self.options(false);
        if let Some(i) = v.iter().position(|w| w == "-p") {
            v[i] = "-P".into();
        }
        v
    }

    /// Connects the master connection now (within the host's timeout), unless one is up.
    pub fn connect(&self) -> Result<(), RemoteError> {
        self.ensure_master(Instant::now() + self.host.timeout)
    }

    /// broctld's words on the host: `broctld --config C --host NAME [--instance I] --local ARGS`.
    fn words(&self, args: &[String]) -> Vec<String> {
        let mut words = vec![
            self.broctld.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
            "--host".into(),
            self.host.name.clone(),
        ];
        if let Some(i) = &self.instance {
            words.extend(["--instance".into(), i.clone()]);
        }
        if let Some(r) = &self.runtime_dir {
            words.extend(["--runtime-dir".into(), r.display().to_string()]);
        }
        words.push("--local".into());
        words.extend(args.iter().cloned());
        words
    }

    /// The remote shell command: `broctld --config C --host NAME [--instance I] --local ARGS`.
    pub fn remote_command(&self, args: &[String]) -> String {
        self.words(args)
            .iter()
            .map(|w| crate::cli::output::shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether a master connection listens on the control socket (a stale socket is removed).
    fn master_alive(&self) -> bool {
        match UnixStream::connect(&self.control) {
            Ok(_) => true,
            Err(_) => {
                let _ = std::fs::remove_file(&self.control);
                false
            }
        }
    }

    /// Starts the master connection (`ssh -M -N -f`), unless one is up.
    fn ensure_master(&self, deadline: Instant) -> Result<(), RemoteError> {
        if self.master_alive() {
            return Ok(());
        }
        let mut cmd = Command::new("ssh");
        cmd.args(self.options(true))
            .args(["-N", "-f", &self.host.ssh])
            .stdin(Stdio::null());
        // `-f` leaves a background master behind that keeps its stderr: a file, so that
        // nothing here waits for the master to close a pipe.
        let log = self.control.with_extension("log");
        let err = std::fs::File::create(&log).map_err(|source| self.spawn_error(source))?;
        cmd.stdout(Stdio::null()).stderr(err);
        let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let code = self.wait(child, deadline)?.0;
        let detail = last_line(&std::fs::read_to_string(&log).unwrap_or_default());
        if code == 0 {
            return Ok(());
        }
        Err(if refused(&detail) {
            RemoteError::Refused {
                host: self.host.name.clone(),
                detail,
            }
        } else {
            RemoteError::Unreachable {
                host: self.host.name.clone(),
                detail,
            }
        })
    }

    fn spawn_error(&self, source: std::io::Error) -> RemoteError {
        RemoteError::Spawn {
            host: self.host.name.clone(),
            source,
        }
    }

    /// Waits for `child` until `deadline` (then SIGKILLs it): its exit status and output.
    fn wait(
        &self,
        mut child: Child,
        deadline: Instant,
    ) -> Result<(i32, String, String), RemoteError> {
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_end(&mut buf);
                }
                String::from_utf8_lossy(&buf).into_owned()
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn Read + Send>),
        );
        let mut nap = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
                Err(source) => return Err(self.spawn_error(source)),
            }
        };
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        match status {
            None => Err(RemoteError::TimedOut {
                host: self.host.name.clone(),
                after: self.host.timeout,
            }),
            Some(st) => Ok((st.code().unwrap_or(255), out, err)),
        }
    }

    /// Runs broctld `args` on the host: the master connection first, then the command on it.
    pub fn run(&self, args: &[String]) -> Result<Reply, RemoteError> {
        let deadline = Instant::now() + self.host.timeout;
        let mut cmd;
        if self.local {
            let words = self.words(args);
            cmd = Command::new(&words[0]);
            cmd.args(&words[1..]);
        } else {
            self.ensure_master(deadline)?;
            cmd = Command::new("ssh");
            cmd.args(self.options(false))
                .arg(&self.host.ssh)
                .arg("--")
                .arg(self.remote_command(args));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let (code, stdout, stderr) = self.wait(child, deadline)?;
        if self.local {
            return Ok(Reply {
                code,
                stdout,
                stderr,
            });
        }
        match classify(&self.host.name, &self.broctld, code, &stderr) {
            Some(e) => Err(e),
            None => Ok(Reply {
                code,
                stdout,
                stderr,
            }),
        }
    }
}

/// What a remote command's exit status and stderr say about the host, when it is not the
/// remote broctld's own answer: ssh's failure (255), no broctld there (127, the shell's "not
/// found"), or a broctld that does not know `--local` (clap's usage error).
fn classify(host: &str, broctld: &Path, code: i32, stderr: &str) -> Option<RemoteError> {
    let host = host.to_string();
    match code {
        255 => {
            // ssh's own failure: the master had connected, so the link went away meanwhile.
            let detail = last_line(stderr);
            Some(if refused(&detail) {
                RemoteError::Refused { host, detail }
            } else if detail.is_empty() {
                RemoteError::Dropped {
                    host,
                    detail: "ssh exited 255".into(),
                }
            } else {
                RemoteError::Dropped { host, detail }
            })
        }
        127 => Some(RemoteError::NoBroctld {
            host,
            path: broctld.display().to_string(),
        }),
        2 if stderr.contains("unexpected argument '--local'") => Some(RemoteError::Older { host }),
        _ => None,
    }
}

fn refused(detail: &str) -> bool {
    detail.contains("Permission denied") || detail.contains("Host key verification failed")
}

/// ssh's last non-empty line (its reason).
fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            host: HostSpec {
                name: "sensor-1".into(),
                ssh: "zeek@10.0.0.1".into(),
                port: Some(2222),
                identity: Some("/k/id".into()),
                ssh_options: vec!["-o".into(), "StrictHostKeyChecking=accept-new".into()],
                broctld: None,
                config: None,
                timeout: Duration::from_secs(5),
                line: 1,
            },
            broctld: "/usr/bin/broctld".into(),
            config: "/etc/broctld/my cluster.toml".into(),
            instance: Some("z".into()),
            control: "/run/broctld/z/ssh-sensor-1".into(),
            local: false,
            runtime_dir: None,
        }
    }

    #[test]
    fn older_broctld_missing_broctld_and_dropped_links_are_told_apart() {
        let b = Path::new("/usr/bin/broctld");
        // clap's words for an option an older broctld does not have.
        let older =
            "error: unexpected argument '--local' found\n\nUsage: broctld [OPTIONS] [COMMAND]\n";
        assert!(matches!(
            classify("h", b, 2, older),
            Some(RemoteError::Older { .. })
        ));
        // A bad config there is the host's answer, not a failure to reach it.
        assert!(classify("h", b, 2, "broctld: /etc/c.toml:3: unknown key").is_none());
        let gone = "bash: line 1: /usr/bin/broctld: No such file or directory\n";
        assert!(matches!(
            classify("h", b, 127, gone),
            Some(RemoteError::NoBroctld { .. })
        ));
        let dropped = classify("h", b, 255, "client_loop: send disconnect: Broken pipe\n").unwrap();
        assert!(dropped.unreachable());
        assert!(dropped
            .to_string()
            .contains("host 'h': the connection dropped mid-command"));
        assert!(matches!(
            classify("h", b, 255, "root@x: Permission denied (publickey).\n"),
            Some(RemoteError::Refused { .. })
        ));
        assert!(classify("h", b, 3, "").is_none());
    }

    #[test]
    fn remote_command_quotes_every_word_and_runs_locally_there() {
        assert_eq!(
            target().remote_command(&["status".into(), "--json".into()]),
            "/usr/bin/broctld --config '/etc/broctld/my cluster.toml' --host sensor-1 --instance z --local status --json"
        );
    }

    #[test]
    fn ssh_options_are_batch_multiplexed_and_keep_alive() {
        let o = target().options(false).join(" ");
        for want in [
            "-o BatchMode=yes",
            "-o ControlPath=/run/broctld/z/ssh-sensor-1",
            "-o ControlMaster=no",
            "-o ServerAliveInterval=2",
            "-p 2222",
            "-i /k/id -o IdentitiesOnly=yes",
            "-o StrictHostKeyChecking=accept-new",
        ] {
            assert!(o.contains(want), "{want} in {o}");
        }
        assert!(target()
            .options(true)
            .join(" ")
            .contains("ControlPersist=600"));
    }
}
