//! Shared harness for the integration tests: a [`Cluster`] fixture that owns a private runtime
//! dir and instance, runs the real `broctld` binary against it, and on drop shuts it down and
//! SIGKILLs (by pid, after checking the start time) every process it ever saw. A watchdog
//! aborts the whole test binary, after killing every recorded process, if a test runs longer
//! than [`WATCHDOG`].

#![allow(dead_code)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// No single test may run longer than this: the watchdog then kills every recorded process
/// and aborts the test binary.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// How long any single `broctld` Main run by a test may take before the test fails.
pub const MAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `broctld` executable under test.
pub fn broctld_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_broctld"))
}

/// The `broctld-node` stand-in for a Zeek node, by absolute path.
pub fn node_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_broctld-node"))
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A process we may have to kill: its pid, its start time (so a recycled pid is never hit),
/// and whether it leads a process group of its own (nodes do) that must be killed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tracked {
    pub pid: u32,
    pub start: u64,
    pub group: bool,
}

fn registry() -> &'static Mutex<BTreeMap<usize, BTreeSet<Tracked>>> {
    static R: OnceLock<Mutex<BTreeMap<usize, BTreeSet<Tracked>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn lock_registry() -> std::sync::MutexGuard<'static, BTreeMap<usize, BTreeSet<Tracked>>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Files to remove if the watchdog fires: per owner, a shm name and a temp dir.
fn leftovers() -> &'static Mutex<BTreeMap<usize, (String, PathBuf)>> {
    static L: OnceLock<Mutex<BTreeMap<usize, (String, PathBuf)>>> = OnceLock::new();
    L.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn lock_leftovers() -> std::sync::MutexGuard<'static, BTreeMap<usize, (String, PathBuf)>> {
    leftovers().lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `pid` under the owner `owner` (a cluster or guard id) so cleanup and the watchdog
/// can kill it later. A pid that is already gone is ignored.
pub fn track(owner: usize, pid: u32, group: bool) {
    if pid <= 1 {
        return;
    }
    if let Some(start) = start_time(pid) {
        lock_registry()
            .entry(owner)
            .or_default()
            .insert(Tracked { pid, start, group });
    }
}

/// Every process recorded under `owner`.
pub fn tracked(owner: usize) -> Vec<Tracked> {
    lock_registry()
        .get(&owner)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

/// SIGKILLs a recorded process (if it is still the same process) and its process group.
pub fn kill_tracked(t: Tracked) {
    let same = start_time(t.pid) == Some(t.start);
    if t.group && (same || start_time(t.pid).is_none()) {
        // SAFETY: kill with a negative pid signals the process group; no memory involved.
        unsafe { libc::kill(-(t.pid as libc::pid_t), libc::SIGKILL) };
    }
    if same {
        // SAFETY: as above, for one process.
        unsafe { libc::kill(t.pid as libc::pid_t, libc::SIGKILL) };
    }
}

fn kill_everything_recorded() {
    let all: Vec<Tracked> = lock_registry().values().flatten().copied().collect();
    for t in all {
        // SAFETY: SIGCONT first, so a SIGSTOPped Supervisor can die; harmless otherwise.
        if start_time(t.pid) == Some(t.start) {
            unsafe { libc::kill(t.pid as libc::pid_t, libc::SIGCONT) };
        }
        kill_tracked(t);
    }
    for (shm, dir) in lock_leftovers().values() {
        let _ = broctld::shm::Region::unlink(shm);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A watchdog for one test: if it is not dropped within `limit`, every recorded process (of
/// every test in this binary) is SIGKILLed and the binary aborts with a message.
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_owned();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // Straight to fd 2: the test harness would swallow eprintln! output on abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "WATCHDOG: test '{what}' ran longer than {limit:?}; killing every recorded process and aborting"
                );
                kill_everything_recorded();
                std::process::abort();
            }
        });
        Watchdog {
            cancel: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.cancel.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The start time (field 22 of /proc/PID/stat), or None if no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The state letter (field 3 of /proc/PID/stat), or None if no such process.
pub fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.split_ascii_whitespace().next()?.chars().next()
}

/// The parent pid (field 4 of /proc/PID/stat).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether a process with this pid exists at all (a zombie counts).
pub fn pid_exists(pid: u32) -> bool {
    proc_state(pid).is_some()
}

/// Whether the pid is a zombie.
pub fn is_zombie(pid: u32) -> bool {
    proc_state(pid) == Some('Z')
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill takes a pid and a signal number.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `limit` with `what` and the
/// last value `describe` gives.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; last seen: {}",
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `pred` until true, or panics after `limit` naming `what`.
pub fn wait_until(limit: Duration, what: &str, mut pred: impl FnMut() -> bool) {
    wait_for(limit, what, || pred().then_some(()), || "-".into())
}

/// Every pid whose environment says it is a node of `instance` (nodes and their children), or
/// whose command line mentions `needle` as a whole argument (Mains and the Supervisor of a
/// test's runtime dir).
pub fn scan_proc(instance: &str, needle: &str) -> Vec<u32> {
    let env_key = format!("BROCTLD_INSTANCE={instance}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|v| v == env_key.as_bytes()) {
                out.push(pid);
                continue;
            }
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if cmd.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// Pids of live `broctld __supervisor` processes whose command line names `runtime_dir`.
pub fn supervisors_of(runtime_dir: &Path) -> Vec<u32> {
    internal_processes_of(runtime_dir, "__supervisor")
}

/// Pids of live `broctld __guardian` processes whose command line names `runtime_dir`.
pub fn guardians_of(runtime_dir: &Path) -> Vec<u32> {
    internal_processes_of(runtime_dir, "__guardian")
}

/// The one live guardian of `runtime_dir` (panics if there is not exactly one).
pub fn the_guardian(runtime_dir: &Path) -> u32 {
    let mut g = Vec::new();
    wait_until(Duration::from_secs(10), "exactly one guardian", || {
        g = guardians_of(runtime_dir);
        g.len() == 1
    });
    g[0]
}

/// Stops the guardian (SIGSTOP) and returns it: until [`thaw`], a dead Supervisor is not
/// replaced, so a test can arrange what the next one finds.
pub fn freeze_guardian(runtime_dir: &Path) -> u32 {
    let g = the_guardian(runtime_dir);
    signal(g, libc::SIGSTOP);
    wait_until(Duration::from_secs(10), "the guardian to stop", || {
        proc_state(g) == Some('T')
    });
    g
}

/// Leaves the instance with no guardian, so that a dead Supervisor is replaced only by a Main
/// (as without a guardian): the Supervisor is stopped (SIGSTOP) first, since it starts a new
/// guardian whenever its own dies, then every guardian is killed. The caller kills the
/// (stopped) Supervisor next.
pub fn kill_guardians(runtime_dir: &Path) {
    let sups = supervisors_of(runtime_dir);
    for &s in &sups {
        signal(s, libc::SIGSTOP);
    }
    wait_until(Duration::from_secs(10), "the Supervisor to stop", || {
        sups.iter()
            .all(|&s| matches!(proc_state(s), Some('T') | None))
    });
    // A guardian it started just before it stopped may still be coming up: wait for it, then
    // kill every one, until none is left.
    wait_until(Duration::from_secs(10), "no guardian", || {
        for g in guardians_of(runtime_dir) {
            signal(g, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
        guardians_of(runtime_dir).is_empty()
    });
}

/// Lets a guardian stopped by [`freeze_guardian`] run again.
pub fn thaw(guardian: u32) {
    signal(guardian, libc::SIGCONT);
}

/// Pids of live broctld processes in internal `mode` whose command line names `runtime_dir`.
fn internal_processes_of(runtime_dir: &Path, mode: &str) -> Vec<u32> {
    let needle = runtime_dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&needle.as_bytes()) && args.contains(&mode.as_bytes()) && pid_alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Waits for `child` at most `limit`; kills it and returns None on timeout.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Output of one Main.

/// What one `broctld` Main printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: Vec<String>,
}

impl Output {
    /// Panics with everything printed unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "`broctld {}` exited with {:?} (signal {:?}), expected {code}\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless it exited 0.
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Status.

/// One node as `status --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub state: String,
    pub pid: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub restarts: u64,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
}

/// Parses the output of `status --json`.
pub fn parse_status(json: &str) -> BTreeMap<String, NodeView> {
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("status --json printed invalid JSON ({e}):\n{json}"));
    let arr = v.as_array().expect("status --json prints an array");
    let mut out = BTreeMap::new();
    for n in arr {
        let name = n["name"].as_str().expect("name").to_owned();
        let view = NodeView {
            name: name.clone(),
            state: n["state"].as_str().expect("state").to_owned(),
            pid: n["pid"].as_u64().map(|p| p as u32),
            uptime_ms: n["uptime_ms"].as_u64(),
            restarts: n["restarts"].as_u64().expect("restarts"),
            exit_code: n["last_exit"].get("code").and_then(Value::as_i64),
            exit_signal: n["last_exit"].get("signal").and_then(Value::as_i64),
        };
        out.insert(name, view);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The fixture.

/// A private broctld instance for one test.
pub struct Cluster {
    pub id: usize,
    pub name: String,
    /// The test's temp dir (holds the config, the runtime dir, node spools and Main outputs).
    pub root: PathBuf,
    /// `--runtime-dir`.
    pub runtime: PathBuf,
    /// `--instance`.
    pub instance: String,
    /// `--config`.
    pub config: PathBuf,
    runs: AtomicUsize,
    /// Variables set in every command's environment (see [`Cluster::set_env`]).
    env: Mutex<Vec<(String, String)>>,
    /// The uid and gid every command runs as (see [`Cluster::run_as`]); `None`: the test's.
    user: Mutex<Option<(u32, u32)>>,
    background: Mutex<Vec<Child>>,
    watchdog: Option<Watchdog>,
}

/// The escaped process of node `escaper` (`setsid env -u BROCTLD_NODE sleep 600 &`): not its leader, in no process group of it, holding
/// its lock file open.
pub fn lock_escapee(c: &Cluster, leader: u32) -> u32 {
    let lock_path = c.instance_dir().join("nodes/escaper.lock");
    let holds_lock = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).ok().as_deref() == Some(lock_path.as_path()))
    };
    let escaped = wait_for(
        Duration::from_secs(30),
        "the escaped child",
        || {
            std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|&p| p != leader && pgid(p) != Some(leader) && pid_alive(p) && holds_lock(p))
        },
        || format!("{:?}", node_procs(&c.instance)),
    );
    track(c.id, escaped, true);
    escaped
}

/// The instance's cgroup, from the `cgroup` file its Supervisor wrote.
pub fn instance_cgroup(c: &Cluster) -> PathBuf {
    let text = std::fs::read_to_string(c.instance_dir().join("cgroup"))
        .unwrap_or_else(|e| panic!("no cgroup file ({e}); log:\n{}", c.log()));
    let line = text.lines().next().unwrap_or_default();
    assert!(
        !line.starts_with("none: "),
        "these tests need a writable cgroup v2 hierarchy; the Supervisor says {line}"
    );
    PathBuf::from(line)
}

/// The pids in a cgroup directory (none if it is gone).
pub fn procs_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Three plain nodes `a`, `b`, `c` (the node helper, a line every 10 s), restarted after
/// 100 ms, SIGKILLed 3 s after their stop signal.
pub const THREE_NODES: &str = r#"
[defaults]
restart_delay_ms = 100
stop_timeout_ms = 3000

[[node]]
name = "a"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "b"
command = ["@NODE@", "--interval", "10s"]

[[node]]
name = "c"
command = ["@NODE@", "--interval", "10s"]
"#;

/// Each node's pid in a status snapshot.
pub fn pids(s: &BTreeMap<String, NodeView>) -> BTreeMap<String, Option<u32>> {
    s.iter().map(|(k, v)| (k.clone(), v.pid)).collect()
}

/// Every node `running`, with a pid that is alive in /proc.
pub fn all_running(s: &BTreeMap<String, NodeView>) -> bool {
    s.values()
        .all(|n| n.state == "running" && n.pid.is_some_and(pid_alive))
}

impl Cluster {
    /// Waits until no process holds the instance lock (a Supervisor killed is gone: the
    /// kernel released its lock).
    pub fn wait_lock_free(&self) {
        let lock = self.instance_dir().join("supervisor.lock");
        wait_until(Duration::from_secs(30), "the instance lock free", || {
            matches!(
                broctld::sys::lockfile::LockFile::probe(&lock),
                Ok(broctld::sys::lockfile::Probe::Free)
            )
        });
    }

    /// The Supervisor's pid once one other than `not` is alive and `ready` in the region (read
    /// from the region: no Main runs), recorded for cleanup.
    pub fn next_supervisor(&self, not: u32) -> u32 {
        wait_for(
            Duration::from_secs(30),
            "a new live Supervisor",
            || {
                let s = broctld::protocol::Shared::open(&self.instance().shm_name()).ok()?;
                let pid = s.header().owner_pid.load(Ordering::Acquire);
                let ready = s.state() == Some(broctld::protocol::layout::SupervisorState::Ready);
                (pid != not && pid_alive(pid) && ready).then(|| {
                    track(self.id, pid, false);
                    pid
                })
            },
            || self.log(),
        )
    }

    /// A cluster for test `name` whose config is `config` with every `@NODE@` replaced by the
    /// absolute path of `broctld-node`. Nothing is started.
    pub fn new(name: &str, config: &str) -> Cluster {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let short: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(24)
            .collect();
        let instance = format!("{short}-{pid}-{id}");
        let root = std::env::temp_dir().join(format!("broctld-it-{pid}-{id}-{short}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("out")).expect("create test dir");
        let runtime = root.join("run");
        let config_path = root.join("broctld.toml");
        let c = Cluster {
            id,
            name: name.to_owned(),
            root,
            runtime,
            instance,
            config: config_path,
            runs: AtomicUsize::new(0),
            env: Mutex::new(Vec::new()),
            user: Mutex::new(None),
            background: Mutex::new(Vec::new()),
            watchdog: Some(Watchdog::new(name, WATCHDOG)),
        };
        lock_leftovers().insert(id, (c.instance().shm_name(), c.root.clone()));
        c.write_config(config);
        c
    }

    /// The example config (`examples/broctld.toml`) with `broctld-node` by absolute path.
    pub fn example(name: &str) -> Cluster {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broctld.toml");
        let text = std::fs::read_to_string(&path).expect("read examples/broctld.toml");
        assert!(text.contains("\"broctld-node\""));
        Cluster::new(name, &text.replace("\"broctld-node\"", "\"@NODE@\""))
    }

    /// Rewrites the config file.
    pub fn write_config(&self, config: &str) {
        if config.contains("@NODE@") {
            assert!(
                node_bin().exists(),
                "{} does not exist: the broctld-node test program (src/bin/broctld-node.rs) is not built",
                node_bin().display()
            );
        }
        let text = config.replace("@NODE@", &node_bin().to_string_lossy());
        std::fs::write(&self.config, text).expect("write config");
    }

    /// The library's view of this instance.
    pub fn instance(&self) -> broctld::instance::Instance {
        broctld::instance::Instance::new(&self.instance, &self.runtime).expect("valid instance")
    }

    /// `/dev/shm/...` of this instance's region.
    pub fn shm_path(&self) -> PathBuf {
        PathBuf::from("/dev/shm").join(self.instance().shm_name().trim_start_matches('/'))
    }

    /// `RUNTIME/INSTANCE`.
    pub fn instance_dir(&self) -> PathBuf {
        self.runtime.join(&self.instance)
    }

    /// The Supervisor's pid from the lock file, if the file says one.
    pub fn lock_pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.instance_dir().join("supervisor.lock")).ok()?;
        s.split_ascii_whitespace().next()?.parse().ok()
    }

    /// The live Supervisor's pid (from the lock file), recorded for cleanup.
    pub fn supervisor_pid(&self) -> u32 {
        let pid = self.lock_pid().unwrap_or_else(|| {
            panic!(
                "no Supervisor pid in {}",
                self.instance_dir().join("supervisor.lock").display()
            )
        });
        track(self.id, pid, false);
        pid
    }

    /// The Supervisor's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.instance_dir().join("supervisor.log")).unwrap_or_default()
    }

    /// A `broctld` command with this cluster's global options.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(broctld_bin());
        cmd.arg("--runtime-dir")
            .arg(&self.runtime)
            .arg("--instance")
            .arg(&self.instance)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.root)
            .env_remove("BROCTLD_RUNTIME_DIR");
        for (k, v) in self.env.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = *self.user.lock().unwrap() {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Runs every later `broctld` command as `user` (so the Supervisor it starts, and the
    /// nodes, are that user's, as in a non-root deployment), with the test's folder made the
    /// user's. Returns `false` (the caller skips, saying so) where that cannot be: the test
    /// does not run as root, there is no such user, or it cannot run `broctld` (a build
    /// folder it cannot enter).
    pub fn run_as(&self, user: &str) -> bool {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot run broctld as {user}; skipped");
            return false;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let Some((uid, gid)) = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        }) else {
            eprintln!("no user {user}: skipped");
            return false;
        };
        let runs = {
            use std::os::unix::process::CommandExt;
            Command::new(broctld_bin())
                .arg("--version")
                .uid(uid)
                .gid(gid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !runs {
            eprintln!("{user} cannot run {}: skipped", broctld_bin().display());
            return false;
        }
        fn chown_all(path: &Path, uid: u32, gid: u32) {
            let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
            if path.is_dir() && !path.is_symlink() {
                for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                    chown_all(&e.path(), uid, gid);
                }
            }
        }
        chown_all(&self.root, uid, gid);
        *self.user.lock().unwrap() = Some((uid, gid));
        true
    }

    /// Sets `key=value` in the environment of every later `broctld` command (and so of the
    /// Supervisor a command starts), e.g. `BROCTLD_CGROUP=off` for the no-cgroup fallback.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env
            .lock()
            .unwrap()
            .push((key.to_owned(), value.to_owned()));
    }

    fn out_files(&self) -> (PathBuf, PathBuf) {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        (
            self.root.join("out").join(format!("{n}.stdout")),
            self.root.join("out").join(format!("{n}.stderr")),
        )
    }

    /// Runs `broctld ARGS` (stdin: `input`) and waits for it, at most [`MAIN_TIMEOUT`].
    pub fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let (o, e) = self.out_files();
        let mut cmd = self.command(args);
        cmd.stdout(std::fs::File::create(&o).expect("stdout file"))
            .stderr(std::fs::File::create(&e).expect("stderr file"))
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().expect("run broctld");
        track(self.id, child.id(), false);
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(text.as_bytes())
                .expect("write to the shell");
        }
        let status = wait_child(&mut child, MAIN_TIMEOUT);
        let stdout = std::fs::read_to_string(&o).unwrap_or_default();
        let stderr = std::fs::read_to_string(&e).unwrap_or_default();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let Some(status) = status else {
            panic!(
                "`broctld {}` did not finish within {MAIN_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nsupervisor log:\n{}",
                args.join(" "),
                self.log()
            );
        };
        use std::os::unix::process::ExitStatusExt;
        Output {
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
            args,
        }
    }

    /// Runs `broctld ARGS` and waits for it.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, None)
    }

    /// Starts `broctld ARGS` in the background (output to files); killed on drop if still
    /// running.
    pub fn spawn_main(&self, args: &[&str]) -> u32 {
        let (o, e) = self.out_files();
        let mut cmd = self.command(args);
        cmd.stdout(std::fs::File::create(o).expect("stdout file"))
            .stderr(std::fs::File::create(e).expect("stderr file"))
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("run broctld");
        let pid = child.id();
        track(self.id, pid, false);
        self.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        pid
    }

    /// Waits for the background Main `pid` to exit (at most `limit`) and returns its status.
    pub fn wait_main(&self, pid: u32, limit: Duration) -> ExitStatus {
        let mut bg = self.background.lock().unwrap_or_else(|e| e.into_inner());
        let child = bg
            .iter_mut()
            .find(|c| c.id() == pid)
            .unwrap_or_else(|| panic!("no background Main with pid {pid}"));
        match wait_child(child, limit) {
            Some(st) => st,
            None => panic!(
                "background Main {pid} did not exit within {limit:?}; supervisor log:\n{}",
                self.log()
            ),
        }
    }

    /// `broctld start`, which must succeed; records the Supervisor and node pids.
    pub fn start(&self) -> BTreeMap<String, NodeView> {
        self.run(&["start"]).ok();
        self.supervisor_pid();
        self.status()
    }

    /// `broctld status --json` (exit 0 or 3), parsed; records every pid it shows.
    pub fn status(&self) -> BTreeMap<String, NodeView> {
        let out = self.run(&["status", "--json"]);
        assert!(
            matches!(out.code, Some(0) | Some(3)),
            "`status --json` failed: {out:?}\nsupervisor log:\n{}",
            self.log()
        );
        let nodes = parse_status(&out.stdout);
        for n in nodes.values() {
            if let Some(pid) = n.pid {
                track(self.id, pid, true);
            }
        }
        nodes
    }

    /// Polls `status --json` until `pred` holds for the snapshot; returns it. Panics after
    /// `limit` with the last snapshot and the Supervisor's log.
    pub fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        mut pred: impl FnMut(&BTreeMap<String, NodeView>) -> bool,
    ) -> BTreeMap<String, NodeView> {
        let last = std::cell::RefCell::new(BTreeMap::new());
        wait_for(
            limit,
            what,
            || {
                let s = self.status();
                let ok = pred(&s);
                *last.borrow_mut() = s.clone();
                ok.then_some(s)
            },
            || format!("{:#?}\nsupervisor log:\n{}", last.borrow(), self.log()),
        )
    }

    /// A library client attached to the running Supervisor.
    pub fn client(&self) -> broctld::client::Client {
        broctld::client::Client::attach(&self.instance())
            .unwrap_or_else(|e| panic!("attach: {e}\nsupervisor log:\n{}", self.log()))
    }

    /// Records every process of this cluster found in /proc (nodes by their environment, the
    /// Supervisor and Mains by their command line).
    pub fn track_from_proc(&self) -> Vec<u32> {
        let pids = scan_proc(&self.instance, &self.runtime.to_string_lossy());
        for &p in &pids {
            track(self.id, p, true);
        }
        pids
    }

    /// Runs `shutdown`, then kills everything ever seen, then removes the files. Idempotent.
    fn cleanup(&mut self) {
        if let Some(pid) = self.lock_pid() {
            track(self.id, pid, false);
            if pid_alive(pid) {
                // SAFETY: a SIGSTOPped Supervisor must be able to run its shutdown.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
            }
        }
        self.track_from_proc();
        if self.lock_pid().is_some() {
            let (o, e) = self.out_files();
            if let (Ok(o), Ok(e)) = (std::fs::File::create(o), std::fs::File::create(e)) {
                if let Ok(mut child) = self
                    .command(&["shutdown"])
                    .stdout(o)
                    .stderr(e)
                    .stdin(Stdio::null())
                    .spawn()
                {
                    track(self.id, child.id(), false);
                    let _ = wait_child(&mut child, Duration::from_secs(15));
                }
            }
        }
        for mut c in self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.track_from_proc();
        let all = tracked(self.id);
        for t in &all {
            kill_tracked(*t);
        }
        // Wait (bounded) until each is dead; a zombie of pid 1 is dead enough (pid 1 reaps
        // orphans lazily here).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && all
                .iter()
                .any(|t| start_time(t.pid) == Some(t.start) && pid_alive(t.pid))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let shm = self.instance().shm_name();
        let _ = broctld::shm::Region::unlink(&shm);
        remove_instance_cgroup(&self.instance_dir());
        if std::env::var_os("BROCTLD_TEST_KEEP").is_some() {
            // For a post-mortem: the logs and the runtime files stay (processes do not).
            eprintln!("kept {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
        lock_registry().remove(&self.id);
        lock_leftovers().remove(&self.id);
    }
}

/// Removes the instance's cgroup (and its node groups, killing what is left in them) that a
/// Supervisor killed by the test could not remove itself.
fn remove_instance_cgroup(instance_dir: &Path) {
    use broctld::supervisor::cgroups::{tracking, Tracking};
    let Some(Tracking::Cgroup(dir)) = tracking(instance_dir) else {
        return;
    };
    if !dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("broctld-"))
    {
        return;
    }
    let group = broctld::sys::cgroup::Cgroup::at(dir.clone());
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            let g = broctld::sys::cgroup::Cgroup::at(e.path());
            let _ = g.kill();
            if let Ok(mut ev) = g.open_events() {
                let _ = broctld::sys::cgroup::wait_empty(&mut ev, Duration::from_secs(5));
            }
            // Sub-groups a node made in its group first.
            let _ = g.remove_tree();
        }
    }
    let _ = group.remove();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cleanup();
        drop(self.watchdog.take());
    }
}

/// Names of processes grouped by state, for messages.
pub fn describe_pids(pids: &[u32]) -> String {
    let mut m: HashMap<u32, String> = HashMap::new();
    for &p in pids {
        m.insert(
            p,
            match proc_state(p) {
                None => "gone".into(),
                Some(s) => format!("state {s}, parent {:?}", parent_pid(p)),
            },
        );
    }
    format!("{m:?}")
}

// ---------------------------------------------------------------------------------------------
// Fault-injection helpers (tests/fault_*.rs, tests/hygiene_*.rs, tests/fuzz_*.rs).

/// A count from the environment (`BROCTLD_FAULT_KILLS=20`), else `ci`. The CI variant of each
/// fault test uses the small default; `scripts/reliability.sh` sets the full counts.
pub fn env_count(var: &str, ci: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => ci,
    }
}

/// Prints one figure for `scripts/reliability.sh` to collect (`FIGURE test key=value`).
pub fn figure(test: &str, key: &str, value: impl std::fmt::Display) {
    // Straight to fd 1 so it shows with --nocapture and the harness does not reorder it.
    let _ = writeln!(std::io::stdout(), "FIGURE {test} {key}={value}");
}

/// A small seeded PRNG (xorshift64*): every random choice of a fault test comes from it, so a
/// failure can be replayed with the printed seed (`BROCTLD_FAULT_SEED=N`).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `BROCTLD_FAULT_SEED` if set, else from the clock; prints the seed.
    pub fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("BROCTLD_FAULT_SEED") {
            Ok(v) => v.trim().parse().expect("BROCTLD_FAULT_SEED is a number"),
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
            }
        };
        let _ = writeln!(
            std::io::stderr(),
            "{test}: seed {seed} (replay with BROCTLD_FAULT_SEED={seed})"
        );
        figure(test, "seed", seed);
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// One process found in /proc by its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProc {
    pub pid: u32,
    pub ppid: u32,
    pub state: char,
    pub start: u64,
}

/// Every process whose environment carries `BROCTLD_INSTANCE=instance`, by its
/// `BROCTLD_NODE` value (nodes and everything they forked that kept the environment), zombies
/// included (their environment is gone, so they are found by `zombie_children`).
pub fn node_procs(instance: &str) -> BTreeMap<String, Vec<NodeProc>> {
    let inst = format!("BROCTLD_INSTANCE={instance}");
    let me = std::process::id();
    let mut out: BTreeMap<String, Vec<NodeProc>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        if !vars.contains(&inst.as_bytes()) {
            continue;
        }
        let Some(name) = vars
            .iter()
            .find_map(|v| v.strip_prefix(b"BROCTLD_NODE=".as_slice()))
        else {
            continue;
        };
        let (Some(state), Some(ppid), Some(start)) =
            (proc_state(pid), parent_pid(pid), start_time(pid))
        else {
            continue;
        };
        out.entry(String::from_utf8_lossy(name).into_owned())
            .or_default()
            .push(NodeProc {
                pid,
                ppid,
                state,
                start,
            });
    }
    out
}

/// Live (not zombie) copies of each node: processes of `node_procs` that lead their own
/// process group and whose parent is not itself a process of the same node (a node's
/// grandchildren share its group, and one that made a group of its own is still its child).
pub fn node_leaders(instance: &str) -> BTreeMap<String, Vec<u32>> {
    node_procs(instance)
        .into_iter()
        .map(|(k, v)| {
            let family: BTreeSet<u32> = v.iter().map(|p| p.pid).collect();
            let pids = v
                .iter()
                .filter(|p| {
                    p.state != 'Z'
                        && p.state != 'X'
                        && pgid(p.pid) == Some(p.pid)
                        && !family.contains(&p.ppid)
                })
                .map(|p| p.pid)
                .collect();
            (k, pids)
        })
        .collect()
}

/// Node names that have more than one live leader: running twice.
pub fn duplicates(instance: &str) -> BTreeMap<String, Vec<u32>> {
    node_leaders(instance)
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .collect()
}

/// The process group (field 5 of /proc/PID/stat).
pub fn pgid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(2)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Zombie processes whose parent is `parent`.
pub fn zombie_children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if proc_state(pid) == Some('Z') && parent_pid(pid) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The fd numbers a process has open (from /proc/PID/fd).
pub fn open_fds(pid: u32) -> Option<Vec<i32>> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Some(v)
}

/// Everything the event ring says, followed across Supervisor restarts (same region, new
/// generation) and across regions (a shutdown and a new start make a new ring): call
/// [`EventLog::poll`] often enough that the ring never laps it; `missed` counts what it lost.
pub struct EventLog {
    shm_name: String,
    shm_path: PathBuf,
    shared: Option<(broctld::protocol::Shared, u64)>,
    cursor: u64,
    /// (region number, seq, event), oldest first; the region number grows with each new region.
    pub events: Vec<(u32, u64, broctld::protocol::event::Event)>,
    /// Events overwritten before they were read, or torn.
    pub missed: u64,
    region_no: u32,
}

impl EventLog {
    pub fn new(c: &Cluster) -> EventLog {
        EventLog {
            shm_name: c.instance().shm_name(),
            shm_path: c.shm_path(),
            shared: None,
            cursor: 0,
            events: Vec::new(),
            missed: 0,
            region_no: 0,
        }
    }

    fn inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.shm_path).ok().map(|m| m.ino())
    }

    /// Reads every new event.
    pub fn poll(&mut self) {
        let ino = self.inode();
        let stale = match (&self.shared, ino) {
            (Some((_, have)), Some(now)) => *have != now,
            (None, Some(_)) => true,
            _ => false,
        };
        if stale {
            // Drain the old mapping first (it stays valid after an unlink).
            self.drain();
            if let Ok(s) = broctld::protocol::Shared::open(&self.shm_name) {
                self.shared = Some((s, ino.unwrap_or(0)));
                self.cursor = 0;
                self.region_no += 1;
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        use broctld::protocol::event::Event;
        use broctld::shm::ring::Next;
        let Some((s, _)) = &self.shared else { return };
        let ring = s.ring();
        loop {
            match ring.next(&mut self.cursor) {
                Next::Empty => break,
                Next::Event { seq, words, missed } => {
                    self.missed += missed;
                    match Event::decode(&words) {
                        Some(ev) => self.events.push((self.region_no, seq, ev)),
                        None => self.missed += 1,
                    }
                }
            }
        }
    }

    /// Events of one kind.
    pub fn of(
        &self,
        kind: broctld::protocol::event::EventKind,
    ) -> Vec<broctld::protocol::event::Event> {
        self.events
            .iter()
            .filter(|(_, _, e)| e.kind == kind)
            .map(|(_, _, e)| *e)
            .collect()
    }
}

/// Waits (bounded) until `pred` holds, sleeping `step` between tries; returns whether it held.
pub fn eventually(limit: Duration, step: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// A log file `path`, then its rotated files `path.1`, `path.2`... while they exist: newest
/// first.
pub fn output_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    for k in 1.. {
        let p = PathBuf::from(format!("{}.{k}", path.display()));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    files
}
