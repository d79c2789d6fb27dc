//! Starting a node's process: the program resolved, the output files opened for append, and a
//! child that starts clean: its own session and process group, default signal dispositions,
//! an empty signal mask, only fds 0/1/2 (plus whatever fds the caller asks to pass down), the
//! configured env, cwd and CPU affinity.
//!
//! Nothing ties the node's life to the Supervisor: no parent-death signal, no pipe whose only
//! reader is the Supervisor (output goes straight to files), its own session so a signal to
//! the Supervisor's group never reaches it.

use crate::config::NodeSpec;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a node could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program was not found.
    #[error("node {node}: program '{program}' not found (searched {searched}); install it or give a full path in `command`")]
    NotFound {
        /// Node name.
        node: String,
        /// The program as configured.
        program: String,
        /// Where we looked.
        searched: String,
    },
    /// A file or directory could not be prepared.
    #[error("node {node}: cannot {what} {path}: {source}")]
    Prepare {
        /// Node name.
        node: String,
        /// What we tried.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// fork or exec failed.
    #[error("node {node}: cannot start {program}: {source}")]
    Exec {
        /// Node name.
        node: String,
        /// The resolved program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// The errno to record as the node's last exit.
    pub fn errno(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => libc::ENOENT,
            SpawnError::Prepare { source, .. } | SpawnError::Exec { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves `command[0]`: a path with a `/` is taken relative to `config_dir`; a bare word is
/// looked up on `PATH`, then next to the running broctld executable (so the bundled
/// `broctld-node` is found when broctld runs from its build folder).
pub fn resolve_program(
    node: &str,
    program: &str,
    config_dir: &Path,
) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        let p = config_dir.join(program);
        return if p.exists() {
            Ok(p)
        } else {
            Err(SpawnError::NotFound {
                node: node.into(),
                program: program.into(),
                searched: p.display().to_string(),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(own) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        dirs.push(own);
    }
    for d in &dirs {
        let c = d.join(program);
        if is_executable(&c) {
            return Ok(c);
        }
    }
    Err(SpawnError::NotFound {
        node: node.into(),
        program: program.into(),
        searched: format!(
            "PATH and {}",
            dirs.last()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        ),
    })
}

fn open_append(node: &str, path: &Path) -> Result<File, SpawnError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SpawnError::Prepare {
            node: node.into(),
            what: "create the folder of",
            path: path.to_owned(),
            source,
        })?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| SpawnError::Prepare {
            node: node.into(),
            what: "open output file",
            path: path.to_owned(),
            source,
        })
}

/// Spawns `spec`. `extra_env` is added after the configured env; `pass_fd`, if given as
/// `(fd, target)`, is duplicated to fd number `target` (3 or more) in the child and left open
/// across exec. Returns the child's pid; the caller reaps it.
pub fn spawn(
    spec: &NodeSpec,
    config_dir: &Path,
    extra_env: &[(&str, &str)],
    pass_fd: Option<(RawFd, RawFd)>,
) -> Result<u32, SpawnError> {
    let node = spec.name.as_str();
    std::fs::create_dir_all(&spec.cwd).map_err(|source| SpawnError::Prepare {
        node: node.into(),
        what: "create working directory",
        path: spec.cwd.clone(),
        source,
    })?;
    let program = resolve_program(node, &spec.command[0], config_dir)?;
    let stdout = open_append(node, &spec.stdout)?;
    let stderr = open_append(node, &spec.stderr)?;

    let mut cmd = Command::new(&program);
    cmd.arg0(&spec.command[0])
        .args(&spec.command[1..])
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }

    // Everything the child does after fork must be async-signal-safe: prepare it now.
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in &spec.cpu_affinity {
        if c < libc::CPU_SETSIZE as usize {
            // SAFETY: `c` is below CPU_SETSIZE, so the bit is inside `cpus`.
            unsafe { libc::CPU_SET(c, &mut cpus) };
        }
    }
    let want_affinity = !spec.cpu_affinity.is_empty();

    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (setsid, sigaction via signal, sigprocmask, sched_setaffinity,
    // close_range, dup2, fcntl) on values prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Own session and process group: not in the Supervisor's group, no controlling tty.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if want_affinity
                && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Every fd above 2 closes at exec. CLOEXEC rather than close: std's own exec-status
            // pipe must stay open until the exec itself.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if let Some((fd, target)) = pass_fd {
                if fd == target {
                    let fl = libc::fcntl(fd, libc::F_GETFD);
                    libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        node: node.into(),
        program: program.clone(),
        source,
    })?;
    Ok(child.id())
}

/// Sends `sig` to the node's process group (it leads its own), falling back to the pid alone.
pub fn signal_group(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: kill with a negative pid signals a process group; no memory is involved.
    match crate::syscall!(kill(-(pid as libc::pid_t), sig)) {
        Ok(_) => Ok(()),
        // SAFETY: as above, for the single process.
        Err(_) => crate::syscall!(kill(pid as libc::pid_t, sig)).map(|_| ()),
    }
}

/// Sends `sig` to the process alone.
pub fn signal_pid(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes a pid and a signal number.
    crate::syscall!(kill(pid as libc::pid_t, sig)).map(|_| ())
}
