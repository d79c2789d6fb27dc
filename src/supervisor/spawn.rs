//! Starting a node's process: the program resolved, the output files opened for append, and a
//! child that starts clean: its own session and process group, default signal dispositions,
//! an empty signal mask, only fds 0/1/2 (plus whatever fds the caller asks to pass down), the
//! configured env, cwd and CPU affinity.
//!
//! The child is made as `posix_spawn` makes it (see [`crate::sys::vfork`]): it shares the
//! Supervisor's memory, which is suspended until the child has exec'd, so nothing is copied
//! and everything it needs (argv, envp, paths, limits, credentials) is prepared before, in a
//! `ChildPlan`; the child itself only makes async-signal-safe syscalls. Its fds are set up
//! by one function, `child_fds`.
//!
//! Nothing ties the node's life to the Supervisor: no parent-death signal, no pipe whose only
//! reader is the Supervisor (its output FIFO is open read-write on its side too: see
//! [`super::output`]; with `log_direct` it goes straight to files), its own session so a
//! signal to the Supervisor's group never reaches it.

use crate::config::NodeSpec;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

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
    /// A key the host cannot enforce.
    #[error("node {node}: `{key}` cannot be enforced on this host: {why}; remove it or run where it can")]
    Unenforceable {
        /// Node name.
        node: String,
        /// The config key.
        key: &'static str,
        /// Why not.
        why: String,
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
            SpawnError::Unenforceable { .. } => libc::EOPNOTSUPP,
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

/// The `PATH` node `spec` runs with: `PATH` in its `env` if set there, else its `path`.
/// The `PATH` a node runs with: its `env`'s, else its `path` setting.
pub fn node_env_path(spec: &NodeSpec) -> String {
    spec.env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| spec.policy.path.clone(), |(_, v)| v.clone())
}

/// Node `spec`'s environment, in order (a later name wins): `PATH`; `HOME`, `USER`,
/// `LOGNAME` and `SHELL` of the user it runs as (its `user`, else the Supervisor's); the
/// variables named in `inherit_env` that the Supervisor has; the config's `env` (defaults,
/// then the node's). The caller adds `BROCTLD_*` (and `NOTIFY_SOCKET`).
pub fn node_env(spec: &NodeSpec) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        vec![("PATH".into(), spec.policy.path.clone().into())];
    // SAFETY: getuid cannot fail.
    let uid = spec
        .policy
        .user
        .as_deref()
        .and_then(crate::sys::account::user)
        .map_or(unsafe { libc::getuid() }, |(uid, _)| uid);
    if let Some(l) = crate::sys::account::login(uid) {
        env.push(("HOME".into(), l.home.into()));
        env.push(("USER".into(), l.name.clone().into()));
        env.push(("LOGNAME".into(), l.name.into()));
        env.push(("SHELL".into(), l.shell.into()));
    }
    for name in &spec.policy.inherit_env {
        if let Some(v) = std::env::var_os(name) {
            env.push((name.into(), v));
        }
    }
    for (k, v) in &spec.env {
        env.push((k.into(), v.into()));
    }
    env
}

/// Resolves `command[0]`: a path with a `/` is taken relative to `config_dir`; a bare word is
/// looked up on the node's own `PATH` (`path_var`), then next to the running broctld
/// executable (so the bundled `broctld-node` is found when broctld runs from its build
/// folder).
pub fn resolve_program(
    node: &str,
    program: &str,
    config_dir: &Path,
    path_var: &str,
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
    let mut dirs: Vec<PathBuf> = std::env::split_paths(path_var).collect();
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
            "{path_var} and {}",
            dirs.last()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        ),
    })
}

fn open_append(node: &str, path: &Path, prepare: bool) -> Result<File, SpawnError> {
    if let Some(parent) = path.parent().filter(|_| prepare) {
        std::fs::create_dir_all(parent).map_err(|source| SpawnError::Prepare {
            node: node.into(),
            what: "create the folder of",
            path: path.to_owned(),
            source,
        })?;
    }
    let fail = |source| SpawnError::Prepare {
        node: node.into(),
        what: "open output file",
        path: path.to_owned(),
        source,
    };
    // Without blocking: the file is in the node's folder, and a FIFO the node put there must
    // not hang the Supervisor (no reader: ENXIO, and the start fails saying so). The node
    // gets a blocking fd, as before.
    let f = open_in_folder(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT).map_err(fail)?;
    crate::sys::fdflags::set_nonblocking(f.as_raw_fd(), false).map_err(fail)?;
    Ok(f)
}

/// Opens `path` (mode 0644 if created, close-on-exec, non-blocking) relative to its folder,
/// opened first. A symlink at `path` is followed only if the folder is ours: a folder given to
/// a node's user (its working folder) may hold a link the node planted to make us open one of
/// our own files for it (ELOOP then, and the start fails saying so).
pub(crate) fn open_in_folder(path: &Path, flags: i32) -> io::Result<File> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let cstr = |p: &[u8]| {
        std::ffi::CString::new(p)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (folder_c, name_c) = (cstr(folder.as_os_str().as_bytes())?, cstr(name.as_bytes())?);
    // SAFETY: a NUL-terminated path and flags; the fd returned is owned by nobody else.
    let dir = crate::syscall!(open(
        folder_c.as_ptr(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC
    ))?;
    // SAFETY: `dir` was just returned by open and is owned by nobody else.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a valid out-pointer.
    crate::syscall!(fstat(dir.as_raw_fd(), &mut st))?;
    // SAFETY: geteuid cannot fail.
    let ours = st.st_uid == unsafe { libc::geteuid() };
    let nofollow = if ours { 0 } else { libc::O_NOFOLLOW };
    // SAFETY: a live directory fd, a NUL-terminated name, flags and a mode.
    let fd = crate::syscall!(openat(
        dir.as_raw_fd(),
        name_c.as_ptr(),
        flags | libc::O_CLOEXEC | libc::O_NONBLOCK | nofollow,
        0o644 as libc::c_uint
    ))?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `log_direct`: the node's output files, rotated first if they are at least `log_max_bytes`,
/// opened for append.
fn direct_outputs(spec: &NodeSpec, prepare: bool) -> Result<(File, File), SpawnError> {
    let node = spec.name.as_str();
    let mut outputs = vec![&spec.stdout];
    if spec.stderr != spec.stdout {
        outputs.push(&spec.stderr);
    }
    for p in outputs {
        rotate(p, spec.policy.log_max_bytes, spec.policy.log_keep).map_err(|source| {
            SpawnError::Prepare {
                node: node.into(),
                what: "rotate",
                path: p.clone(),
                source,
            }
        })?;
    }
    Ok((
        open_append(node, &spec.stdout, prepare)?,
        open_append(node, &spec.stderr, prepare)?,
    ))
}

/// Checks, before anything starts, that `spec` can be started: its program resolves and its
/// working directory exists or can be created. Creates nothing: a start refused later (by
/// another node, or by the node count) must leave no directories behind; the spawn creates
/// the directory.
pub fn preflight(spec: &NodeSpec, config_dir: &Path) -> Result<(), SpawnError> {
    resolve_program(
        &spec.name,
        &spec.command[0],
        config_dir,
        &node_env_path(spec),
    )?;
    check_capabilities(spec)?;
    check_creatable(spec)
}

/// Whether the node's cwd is a directory, or its nearest existing ancestor is a directory we
/// may create entries in.
fn check_creatable(spec: &NodeSpec) -> Result<(), SpawnError> {
    let err = |source| SpawnError::Prepare {
        node: spec.name.clone(),
        what: "create working directory",
        path: spec.cwd.clone(),
        source,
    };
    let mut p = spec.cwd.as_path();
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() && p == spec.cwd => return Ok(()),
            Ok(m) if m.is_dir() => {
                let c =
                    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
                        .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
                // SAFETY: a NUL-terminated path and a mode.
                return crate::syscall!(access(c.as_ptr(), libc::W_OK | libc::X_OK))
                    .map(|_| ())
                    .map_err(err);
            }
            Ok(_) => return Err(err(io::Error::from_raw_os_error(libc::ENOTDIR))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return Err(err(e)),
            },
            Err(e) => return Err(err(e)),
        }
    }
}

/// A node that runs as a non-root user with `capabilities` gets them only if the Supervisor
/// has them itself (in its permitted set): refused here, with what to do, rather than at exec.
fn check_capabilities(spec: &NodeSpec) -> Result<(), SpawnError> {
    let policy = &spec.policy;
    // SAFETY: getuid cannot fail.
    let uid = policy
        .user
        .as_deref()
        .and_then(crate::sys::account::user)
        .map_or(unsafe { libc::getuid() }, |(uid, _)| uid);
    if policy.capabilities.is_empty() || uid == 0 {
        return Ok(());
    }
    let permitted = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapPrm:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0);
    let missing: Vec<&str> = policy
        .capabilities
        .iter()
        .filter(|c| crate::sys::caps::number(c).is_some_and(|n| permitted & (1 << n) == 0))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SpawnError::Prepare {
        node: spec.name.clone(),
        what: "give the node the capabilities",
        path: PathBuf::from(missing.join(",")),
        source: io::Error::new(
            io::ErrorKind::PermissionDenied,
            "broctld does not have them itself: run it as root, or set `capabilities = []` for this node (for a zeek.conf, in a TOML file that includes it)",
        ),
    })
}

/// Creates the node's working directory if missing; one created for a node that runs as
/// another `user` is given to that user (it must be able to write its own folder).
pub(super) fn prepare_cwd(spec: &NodeSpec) -> Result<(), SpawnError> {
    let err = |what, source| SpawnError::Prepare {
        node: spec.name.clone(),
        what,
        path: spec.cwd.clone(),
        source,
    };
    if spec.cwd.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&spec.cwd).map_err(|e| err("create working directory", e))?;
    let policy = &spec.policy;
    if let Some((uid, primary)) = policy.user.as_deref().and_then(crate::sys::account::user) {
        let gid = policy
            .group
            .as_deref()
            .and_then(crate::sys::account::group)
            .unwrap_or(primary);
        std::os::unix::fs::chown(&spec.cwd, Some(uid), Some(gid))
            .map_err(|e| err("give the working directory to the node's user", e))?;
    }
    Ok(())
}

/// Renames `path` to `path.1` (and `path.1` to `path.2`, ... up to `path.keep`, the oldest
/// dropped) if it is at least `max` bytes. `max == 0` never rotates.
pub fn rotate(path: &Path, max: u64, keep: u32) -> io::Result<bool> {
    if max == 0 || keep == 0 {
        return Ok(false);
    }
    match std::fs::metadata(path) {
        Ok(m) if m.len() >= max => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let numbered = |k: u32| crate::log::rotated(path, k as usize);
    for k in (1..keep).rev() {
        let from = numbered(k);
        if from.exists() {
            std::fs::rename(&from, numbered(k + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))?;
    Ok(true)
}

/// The soft `RLIMIT_NOFILE` this process started with, once [`raise_nofile_limit`] raised it.
static ORIGINAL_NOFILE_SOFT: std::sync::OnceLock<libc::rlim_t> = std::sync::OnceLock::new();

/// This process's soft `RLIMIT_NOFILE` (an fd bound for the close-on-exec fallback).
fn current_nofile_soft() -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    match crate::syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)) {
        Ok(_) => lim.rlim_cur.min(RawFd::MAX as libc::rlim_t) as RawFd,
        Err(_) => 1 << 20,
    }
}

/// Carries the operator's soft fd limit across an in-place upgrade (the new program image
/// inherits the raised one). Removed from every node's environment.
pub const NOFILE_ENV: &str = "BROCTLD_NOFILE_SOFT";

/// Raises the soft `RLIMIT_NOFILE` to the hard one, for the Supervisor: a successor started
/// from a shell with `ulimit -n 64` must not run out of fds (every node costs it a pidfd,
/// and identity checks open `/proc` files). The original soft limit is remembered and given
/// back to every node in its child before exec, so nodes see the limit the operator set.
/// Returns (original soft, new soft).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim: libc::rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct.
    crate::syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    // A predecessor that re-executed into us already raised it: its original stands.
    let original = std::env::var(NOFILE_ENV)
        .ok()
        .and_then(|v| v.parse::<libc::rlim_t>().ok())
        .unwrap_or(lim.rlim_cur);
    let _ = ORIGINAL_NOFILE_SOFT.set(original);
    // Called while the Supervisor is still single-threaded: nothing reads the environment
    // concurrently.
    std::env::set_var(NOFILE_ENV, original.to_string());
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one rlimit struct; raising soft up to hard needs no privilege.
        crate::syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok((original, lim.rlim_cur))
}

/// Signals whose disposition this process inherited as ignored (`SIG_IGN` survives `execve`,
/// unlike handlers): the only ones a child must reset. Read once, every signal the kernel has
/// (glibc's internal 32 and 33 included: see `sys::sigdisp`).
fn ignored_signals() -> &'static [i32] {
    static IGNORED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();
    IGNORED.get_or_init(|| {
        (1..=crate::sys::sigdisp::NSIG)
            .filter(|&sig| crate::sys::sigdisp::is_ignored(sig))
            .collect()
    })
}

/// The cgroup a node's process starts in.
#[derive(Debug)]
pub struct CgroupTarget {
    /// The group's directory.
    pub dir: std::os::fd::OwnedFd,
    /// Whether the kernel may start the process in it (`clone3` with `CLONE_INTO_CGROUP`);
    /// if not, the child moves itself in first thing.
    pub clone_into: bool,
}

/// What a spawn may skip because an earlier spawn of the same node already did it.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The program as resolved last time.
    pub program: Option<PathBuf>,
    /// The working directory and the output files' folders exist.
    pub dirs: bool,
    /// The node's own environment ([`node_env`]: it looks the user up in the account
    /// databases, which is not worth doing on every restart).
    pub env: Option<Vec<(std::ffi::OsString, std::ffi::OsString)>>,
}

/// Spawns `spec`. `extra_env` is added after the configured env; each `(fd, target)` in `pass`
/// is duplicated to fd number `target` (3 or more) in the child and left open across exec.
/// `cgroup`: a node group's directory, open; the child starts in it (`clone3` with
/// `CLONE_INTO_CGROUP`, or it moves itself in first thing), so everything it ever runs is in
/// the group. `stdio`: the node's stdout and stderr (its ends of its output FIFOs); `None`
/// opens the output files for append (`log_direct`), rotated first if they are at least
/// `log_max_bytes`. `prepared` caches the program's resolution and the directories between
/// spawns (it is cleared when a spawn fails). Returns the child once it has exec'd (an exec
/// that failed is an error, with the OS error); the caller reaps it.
pub fn spawn(
    spec: &NodeSpec,
    config_dir: &Path,
    extra_env: &[(&str, &str)],
    pass: &[(RawFd, RawFd)],
    cgroup: Option<&CgroupTarget>,
    stdio: Option<(File, File)>,
    prepared: &mut Prepared,
) -> Result<Spawned, SpawnError> {
    let r = spawn_prepared(spec, config_dir, extra_env, pass, cgroup, stdio, prepared);
    if r.is_err() {
        *prepared = Prepared::default();
    }
    r
}

fn spawn_prepared(
    spec: &NodeSpec,
    config_dir: &Path,
    extra_env: &[(&str, &str)],
    pass: &[(RawFd, RawFd)],
    cgroup: Option<&CgroupTarget>,
    stdio: Option<(File, File)>,
    prepared: &mut Prepared,
) -> Result<Spawned, SpawnError> {
    let node = spec.name.as_str();
    if !prepared.dirs {
        prepare_cwd(spec)?;
    }
    let program = match &prepared.program {
        Some(p) => p.clone(),
        None => resolve_program(node, &spec.command[0], config_dir, &node_env_path(spec))?,
    };
    prepared.program = Some(program.clone());
    let (stdout, stderr) = match stdio {
        Some(ends) => ends,
        None => direct_outputs(spec, !prepared.dirs)?,
    };
    prepared.dirs = true;
    let creds = credentials(spec)?;
    let env = prepared.env.get_or_insert_with(|| node_env(spec));
    let plan = ChildPlan::new(
        spec,
        &program,
        env,
        extra_env,
        node_fds(&stdout, &stderr, pass),
        cgroup.map(|c| c.dir.as_raw_fd()),
        creds,
    )
    .map_err(|source| SpawnError::Exec {
        node: node.into(),
        program: program.clone(),
        source,
    })?;
    let run = |placed: bool| plan.run(placed);
    let before = crate::sys::clock::boottime_ns();
    // SAFETY: `plan.run` makes only async-signal-safe calls on `plan`, which was prepared
    // above and lives (untouched) until the child has exec'd; it allocates nothing and ends in
    // execve (see ChildPlan::run).
    let pid = unsafe {
        crate::sys::vfork::spawn(
            &run,
            cgroup
                .filter(|c| c.clone_into)
                .map(|c| std::os::fd::AsFd::as_fd(&c.dir)),
        )
    };
    let after = crate::sys::clock::boottime_ns();
    // Our copies of the output files close here: only the child has them.
    drop((stdout, stderr));
    let pid = pid.map_err(|source| SpawnError::Exec {
        node: node.into(),
        program: program.clone(),
        source,
    })?;
    Ok(Spawned {
        pid,
        start: crate::sys::procstat::start_between(before, after),
    })
}

/// A node's process, started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (as `/proc/PID/stat` has it), when known
    /// without reading `/proc` (see [`crate::sys::procstat::start_between`]).
    pub start: Option<u64>,
}

/// `/dev/null`, opened once, for every node's stdin.
fn dev_null() -> io::Result<RawFd> {
    static NULL: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f.as_raw_fd());
    }
    let f = File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| f).as_raw_fd())
}

/// The fds a node is given, at most this many.
const MAX_FDS: usize = 16;

/// The fds a node gets, as `(our fd, its number)`: `/dev/null` as stdin, `stdout` and `stderr`,
/// then `pass`.
fn node_fds(
    stdout: &File,
    stderr: &File,
    pass: &[(RawFd, RawFd)],
) -> io::Result<Vec<(RawFd, RawFd)>> {
    let mut fds = vec![
        (dev_null()?, 0),
        (stdout.as_raw_fd(), 1),
        (stderr.as_raw_fd(), 2),
    ];
    fds.extend_from_slice(pass);
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds to pass",
        ));
    }
    Ok(fds)
}

/// Everything the child does between clone and exec, prepared before the clone (the child
/// runs in the Supervisor's memory while it is suspended: it may only read this, and make
/// async-signal-safe calls).
struct ChildPlan {
    program: CString,
    /// Keeps `argv`'s strings alive.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    /// Keeps `envp`'s strings alive.
    _env: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// Each `(source, target)`: the source fd ends on number `target` in the node.
    fds: Vec<(RawFd, RawFd)>,
    /// The highest fd this process may have (a bound for the close-on-exec fallback).
    fd_limit: RawFd,
    /// The node's cgroup directory (the child moves itself in if clone could not place it).
    cgroup: Option<RawFd>,
    /// Signals to reset to their default action: those we ignore (`SIG_IGN` survives execve).
    signals: &'static [i32],
    cpus: Option<libc::cpu_set_t>,
    nofile_soft: Option<libc::rlim_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    /// The defined limits every node starts from (see `sys::procenv`), before its own.
    defined: &'static [(libc::__rlimit_resource_t, libc::rlimit)],
    umask: u32,
    nice: Option<i32>,
    /// uid, gid and supplementary groups to take.
    creds: Option<Credentials>,
    /// Ambient capabilities (numbers) and the two 32-bit capability words that hold them.
    caps: Vec<u32>,
    cap_mask: [u32; 2],
}

/// A C string for the child, or `InvalidInput` (a NUL inside).
fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command, environment or working directory",
        )
    })
}

/// The NULL-terminated array of pointers `execve` takes.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

impl ChildPlan {
    fn new(
        spec: &NodeSpec,
        program: &Path,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        extra_env: &[(&str, &str)],
        fds: io::Result<Vec<(RawFd, RawFd)>>,
        cgroup: Option<RawFd>,
        creds: Option<Credentials>,
    ) -> io::Result<ChildPlan> {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let policy = &spec.policy;
        let args = spec
            .command
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        // Exactly the node's own environment (nothing leaks from whoever started the
        // Supervisor); a later name wins, in name order (as std's Command gave it).
        let mut vars = std::collections::BTreeMap::new();
        for (k, v) in env {
            vars.insert(k.clone(), v.clone());
        }
        for (k, v) in extra_env {
            vars.insert((*k).into(), (*v).into());
        }
        let env = vars
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let fds = fds?;
        let cpus = (!spec.cpu_affinity.is_empty()).then(|| {
            // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
            let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for &c in &spec.cpu_affinity {
                if c < libc::CPU_SETSIZE as usize {
                    // SAFETY: `c` is below CPU_SETSIZE, so the bit is inside `cpus`.
                    unsafe { libc::CPU_SET(c, &mut cpus) };
                }
            }
            cpus
        });
        let limit = |v: u64| {
            if v == u64::MAX {
                libc::RLIM_INFINITY
            } else {
                v as libc::rlim_t
            }
        };
        let rlimits = [
            (libc::RLIMIT_NOFILE, policy.rlimit_nofile),
            (libc::RLIMIT_CORE, policy.rlimit_core),
            (libc::RLIMIT_MEMLOCK, policy.rlimit_memlock),
        ]
        .into_iter()
        .filter_map(|(r, v)| v.map(|v| (r, limit(v))))
        .collect();
        // Ambient capabilities: only a node that will not run as root needs them (root keeps
        // every capability across exec).
        // SAFETY: getuid cannot fail.
        let target_uid = creds.as_ref().map_or(unsafe { libc::getuid() }, |c| c.0);
        let caps: Vec<u32> = if target_uid == 0 {
            Vec::new()
        } else {
            policy
                .capabilities
                .iter()
                .filter_map(|c| crate::sys::caps::number(c))
                .collect()
        };
        let mut cap_mask = [0u32; 2];
        for &c in &caps {
            cap_mask[(c / 32) as usize & 1] |= 1 << (c % 32);
        }
        Ok(ChildPlan {
            program: c_string(program.as_os_str().as_bytes())?,
            argv: pointers(&args),
            _args: args,
            envp: pointers(&env),
            _env: env,
            cwd: c_string(spec.cwd.as_os_str().as_bytes())?,
            fds,
            fd_limit: current_nofile_soft(),
            cgroup,
            signals: ignored_signals(),
            cpus,
            nofile_soft: ORIGINAL_NOFILE_SOFT.get().copied(),
            rlimits,
            defined: crate::sys::procenv::defined_limits(),
            umask: policy.umask.unwrap_or(crate::sys::procenv::DEFAULT_UMASK),
            nice: policy.nice,
            creds,
            caps,
            cap_mask,
        })
    }

    /// The child: its cgroup, its own session, default signals, CPU affinity, its fds, its
    /// folder, limits, umask, nice level, user and capabilities, then `execve`. Returns only
    /// if a step failed, with the errno. Async-signal-safe calls only, no allocation; user,
    /// group and capability changes are raw syscalls (glibc's wrappers would signal every
    /// thread of the process the child shares memory with).
    fn run(&self, placed: bool) -> i32 {
        match self.setup(placed) {
            Err(e) => e,
            Ok(()) => {
                // SAFETY: NUL-terminated path and NULL-terminated arrays of NUL-terminated
                // strings, all alive in `self`.
                unsafe {
                    libc::execve(
                        self.program.as_ptr(),
                        self.argv.as_ptr(),
                        self.envp.as_ptr(),
                    )
                };
                errno()
            }
        }
    }

    fn setup(&self, placed: bool) -> Result<(), i32> {
        // SAFETY: every call below is an async-signal-safe syscall on values in `self` or on
        // the stack (see `run`).
        unsafe {
            // Into the node's cgroup before anything else runs (clone3 already did it).
            if let (Some(dir), false) = (self.cgroup, placed) {
                enter_cgroup(dir)?;
            }
            // Own session and process group: not in the Supervisor's group, no controlling tty.
            check(libc::setsid())?;
            // Handlers are reset by execve itself; only ignored signals stay ignored. Every
            // signal is blocked until here (see sys::vfork).
            for &sig in self.signals {
                crate::sys::sigdisp::set_default(sig);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some(cpus) = &self.cpus {
                check(libc::sched_setaffinity(
                    0,
                    std::mem::size_of::<libc::cpu_set_t>(),
                    cpus,
                ))?;
            }
            child_fds(&self.fds, self.fd_limit)?;
            check(libc::chdir(self.cwd.as_ptr()))?;
            // The soft fd limit the operator gave the Supervisor (it raised its own), set
            // after the fds are in place (moving them may need numbers above it).
            if let Some(soft) = self.nofile_soft {
                let mut lim: libc::rlimit = std::mem::zeroed();
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
            }
            // The defined environment (pid 1's limits, umask 022, nice 0), whoever started
            // the first Main; best effort (raising a hard limit or lowering the nice level
            // needs privileges; the guardian logged what it could not take for itself).
            for (resource, lim) in self.defined {
                let _ = crate::sys::procenv::set_limit(*resource, lim);
            }
            for &(resource, value) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(resource, &lim))?;
            }
            crate::sys::procenv::set_umask(self.umask);
            // Nice level first: lowering it needs the privileges dropped below.
            match self.nice {
                Some(n) => check(libc::setpriority(libc::PRIO_PROCESS, 0, n))?,
                None => {
                    let _ = crate::sys::procenv::set_nice(0);
                }
            }
            // Keep the permitted capabilities across setuid when some are to stay ambient.
            if !self.caps.is_empty() {
                check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            }
            if let Some((uid, gid, groups)) = &self.creds {
                check_long(libc::syscall(
                    libc::SYS_setgroups,
                    groups.len(),
                    groups.as_ptr(),
                ))?;
                check_long(libc::syscall(libc::SYS_setgid, *gid))?;
                check_long(libc::syscall(libc::SYS_setuid, *uid))?;
            }
            if !self.caps.is_empty() {
                raise_ambient(&self.caps, self.cap_mask)?;
            }
        }
        Ok(())
    }
}

/// The calling thread's errno.
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `Err(errno)` for a C call's `-1`.
fn check(r: libc::c_int) -> Result<(), i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// [`check`] for `syscall()`'s `long`.
fn check_long(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// In the child: moves itself into the cgroup whose directory is `dir` (where clone3 could
/// not place it).
///
/// # Safety
///
/// Async-signal-safe calls only; `dir` is an open directory fd.
unsafe fn enter_cgroup(dir: RawFd) -> Result<(), i32> {
    // SAFETY: openat on an open directory fd with a NUL-terminated name; write of one byte
    // from a static; close of the fd just opened.
    unsafe {
        let procs = libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        check(procs)?;
        let r = libc::write(procs, b"0".as_ptr().cast(), 1);
        let e = errno();
        libc::close(procs);
        if r < 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// In the child: the node's fds. Every fd above 2 closes at exec (close-on-exec rather than
/// close, so nothing is closed until the exec has succeeded); each `(source, target)` in
/// `fds` ends on number `target`, open across exec. A kernel without close_range falls back to
/// /proc/self/fd; failing that, the node is not started (never a leak).
///
/// # Safety
///
/// Async-signal-safe calls only; at most [`MAX_FDS`] entries; every source is open.
unsafe fn child_fds(fds: &[(RawFd, RawFd)], fd_limit: RawFd) -> Result<(), i32> {
    crate::sys::fdflags::cloexec_from(3, fd_limit)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    // First out of the way of every target (a source may sit on another's target number),
    // then onto the targets; dup2 clears CLOEXEC on the new fd.
    let floor = fds.iter().map(|p| p.1).max().unwrap_or(2) + 1;
    let mut tmp = [-1; MAX_FDS];
    for (slot, &(src, _)) in tmp.iter_mut().zip(fds) {
        // SAFETY: F_DUPFD_CLOEXEC on an open fd.
        *slot = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor) };
        check(*slot)?;
    }
    for (&t, &(_, target)) in tmp.iter().zip(fds) {
        // SAFETY: dup2 of the fd just made onto a number.
        check(unsafe { libc::dup2(t, target) })?;
    }
    Ok(())
}

/// In the child: effective, permitted and inheritable hold the capabilities in `mask`
/// (capset fails with EPERM if the Supervisor did not have them), then each of `caps` is
/// raised into the ambient set, which execve keeps for a non-root program.
///
/// # Safety
///
/// Async-signal-safe calls only.
unsafe fn raise_ambient(caps: &[u32], mask: [u32; 2]) -> Result<(), i32> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = mask.map(|m| CapData {
        effective: m,
        permitted: m,
        inheritable: m,
    });
    // SAFETY: capset reads a header and two data structs on the stack; prctl takes integers.
    unsafe {
        check_long(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
        for &c in caps {
            check(libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                libc::c_ulong::from(c),
                0,
                0,
            ))?;
        }
    }
    Ok(())
}

/// uid, gid and supplementary groups.
type Credentials = (u32, u32, Vec<libc::gid_t>);

/// The credentials node `spec` runs with, if it sets `user` or `group` (resolved before the
/// clone: the account databases are not async-signal-safe).
fn credentials(spec: &NodeSpec) -> Result<Option<Credentials>, SpawnError> {
    let policy = &spec.policy;
    let missing = |what, name: &str| SpawnError::Prepare {
        node: spec.name.clone(),
        what,
        path: PathBuf::from(name),
        source: io::Error::from(io::ErrorKind::NotFound),
    };
    let (user, group) = match (&policy.user, &policy.group) {
        (None, None) => return Ok(None),
        (u, g) => (u, g),
    };
    let (uid, primary) = match user {
        Some(u) => crate::sys::account::user(u).ok_or_else(|| missing("find user", u))?,
        // SAFETY: getuid/getgid cannot fail.
        None => unsafe { (libc::getuid(), libc::getgid()) },
    };
    let gid = match group {
        Some(g) => crate::sys::account::group(g).ok_or_else(|| missing("find group", g))?,
        None => primary,
    };
    let groups = match user {
        Some(u) => crate::sys::account::groups_of(u, gid),
        None => vec![gid],
    };
    Ok(Some((uid, gid, groups)))
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

/// Sends `sig` to process group `pgid` only (never to a lone pid: use this after the leader
/// was reaped, when its pid may already belong to someone else).
pub fn signal_group_only(pgid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: kill with a negative pid signals a process group; no memory is involved.
    crate::syscall!(kill(-(pgid as libc::pid_t), sig)).map(|_| ())
}

/// Sends `sig` to the process alone.
pub fn signal_pid(pid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes a pid and a signal number.
    crate::syscall!(kill(pid as libc::pid_t, sig)).map(|_| ())
}
