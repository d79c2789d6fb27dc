//! Runs one sequence of steps against a real instance, step by step: the operation through a
//! `broctld` Main (with a fault in flight if the step says so), a bounded settle, and every
//! enabled invariant checked against `/proc` and the nodes' own output.

use crate::common::{self, Cluster, NodeView};
use crate::model::{Allow, Model, Want, BROKEN_TAIL};
use crate::observe::{self, Proc};
use crate::plan::{Edit, Fault, InFlight, Invariant, Kind, NodeSpec, Op, Sig, Step, Switches};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for the instance to settle after a step (an "eventually" bound, not a speed
/// claim: it covers a 300 ms stop timeout, a 400 ms restart delay and the slow readiness).
const SETTLE: Duration = Duration::from_secs(8);

/// `Kind::SlowReady`'s readiness delay.
const READY_DELAY: Duration = Duration::from_millis(300);

/// Upper bound for one Main (its own waits are 20 s at most).
const MAIN_LIMIT: Duration = Duration::from_secs(40);

/// Whether `BROCTLD_CAMPAIGN_TRACE=1` asks for one line per step on stderr.
fn trace() -> bool {
    std::env::var("BROCTLD_CAMPAIGN_TRACE").is_ok_and(|v| v == "1")
}

/// One invariant broken at one step.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which one.
    pub invariant: Invariant,
    /// What was seen (node, behaviour, pids, states).
    pub detail: String,
}

/// What a run did: steps run, faults injected by kind, and the first violating step.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Steps run (the violating one included).
    pub steps: usize,
    /// Faults injected, by kind name.
    pub faults: BTreeMap<&'static str, u64>,
    /// (step index, the step, what broke).
    pub failure: Option<(usize, Step, Vec<Violation>)>,
}

/// How one Main ended.
#[derive(Debug)]
struct MainRun {
    code: Option<i32>,
    out: String,
}

/// What the guardian was deprived of: stopped (`kill -STOP`), or its fd limit lowered (the
/// old limit kept). Dropping it gives everything back (also on a panic), to the same process
/// only (pid and start time).
#[derive(Default)]
struct GuardianHold {
    stopped: Option<Proc>,
    /// The guardian starved, its old limit, the limit it got, and the runtime dir.
    starved: Option<(Proc, libc::rlimit, u64, PathBuf)>,
}

impl GuardianHold {
    /// The guardian is stopped and still that process.
    fn stopped(&self) -> bool {
        self.stopped.is_some_and(observe::alive)
    }

    /// The guardian is stopped or starved of fds (so that it may not be able to start a
    /// Supervisor: it retries, 100 ms doubling to 30 s, and Mains leave that to it), and
    /// still that process.
    fn impaired(&self) -> bool {
        self.stopped()
            || self
                .starved
                .as_ref()
                .is_some_and(|(g, ..)| observe::alive(*g))
    }

    fn resume(&mut self) -> bool {
        match self.stopped.take() {
            Some(g) if observe::alive(g) => {
                // SAFETY: kill takes a pid and a signal; the start time was checked just above.
                unsafe { libc::kill(g.0 as libc::pid_t, libc::SIGCONT) };
                true
            }
            _ => false,
        }
    }

    /// Gives the starved guardian its fd limit back, and with it every Supervisor and
    /// guardian of the instance that inherited the starved limit meanwhile (a Supervisor the
    /// starved guardian started, a guardian that Supervisor started in turn).
    fn feed(&mut self) -> bool {
        let Some((g, old, n, runtime)) = self.starved.take() else {
            return false;
        };
        let mut heirs = common::guardians_of(&runtime);
        heirs.extend(common::supervisors_of(&runtime));
        for pid in heirs {
            let mut now = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit writes the local `now` and reads nothing (null new_limit).
            let r = unsafe {
                libc::prlimit(
                    pid as libc::pid_t,
                    libc::RLIMIT_NOFILE,
                    std::ptr::null(),
                    &mut now,
                )
            };
            if r == 0 && (pid == g.0 || now.rlim_max <= n) {
                // SAFETY: prlimit reads the local `old` and writes nothing (null old_limit).
                unsafe {
                    libc::prlimit(
                        pid as libc::pid_t,
                        libc::RLIMIT_NOFILE,
                        &old,
                        std::ptr::null_mut(),
                    )
                };
            }
        }
        observe::alive(g)
    }
}

impl Drop for GuardianHold {
    fn drop(&mut self) {
        self.feed();
        self.resume();
    }
}

struct Driver<'a> {
    c: &'a Cluster,
    sw: &'a Switches,
    model: Model,
    runs: usize,
    outcome: Outcome,
    violations: Vec<Violation>,
    /// The path Mains (and so the guardian and the Supervisor) run broctld from: a link to
    /// (or copy of) the built binary, which `HungUpgrade` replaces for a moment.
    exe: PathBuf,
    hold: GuardianHold,
    /// At the end of the last step the guardian was stopped or starved of fds and no
    /// Supervisor lived: nothing supervised the nodes.
    unsupervised: bool,
    /// Each node's `restarts` and spawns when `status` first showed it (see `check_exits`).
    restarts: BTreeMap<String, (u64, u64)>,
}

/// Puts a file at `exe` the way an installer does (a new file renamed over it): `content`, or
/// the built broctld (hard-linked, else copied) for `None`.
fn install(exe: &Path, content: Option<&[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = exe.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    match content {
        Some(bytes) => {
            std::fs::write(&tmp, bytes).expect("write the new image");
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .expect("chmod the new image");
        }
        None => {
            if std::fs::hard_link(common::broctld_bin(), &tmp).is_err() {
                std::fs::copy(common::broctld_bin(), &tmp).expect("copy broctld");
            }
        }
    }
    std::fs::rename(&tmp, exe).expect("rename the new image into place");
}

impl Driver<'_> {
    fn violate(&mut self, invariant: Invariant, detail: String) {
        if self.sw.check(invariant) {
            self.violations.push(Violation { invariant, detail });
        }
    }

    /// `NAME (Kind)`, for messages.
    fn who(&self, name: &str) -> String {
        match self.model.kind(name) {
            Some(k) => format!("{name} ({k:?})"),
            None => name.to_owned(),
        }
    }

    fn count(&mut self, f: Fault) {
        *self.outcome.faults.entry(f.name()).or_default() += 1;
    }

    fn write_config(&self) {
        self.c.write_config(&self.model.config_text());
    }

    /// `PROGRAM` with the cluster's global options and `args` (as `Cluster::command`).
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("--runtime-dir")
            .arg(&self.c.runtime)
            .arg("--instance")
            .arg(&self.c.instance)
            .arg("--config")
            .arg(&self.c.config)
            .args(args)
            .current_dir(&self.c.root)
            .env_remove("BROCTLD_RUNTIME_DIR");
        cmd
    }

    /// The one live guardian, if there is exactly one.
    fn guardian(&self) -> Option<Proc> {
        match common::guardians_of(&self.c.runtime)[..] {
            [g] => common::start_time(g).map(|s| (g, s)),
            _ => None,
        }
    }

    fn kill_guardian(&mut self) {
        let all = common::guardians_of(&self.c.runtime);
        for &g in &all {
            common::track(self.c.id, g, false);
            // SAFETY: kill takes a pid and a signal.
            unsafe { libc::kill(g as libc::pid_t, libc::SIGKILL) };
        }
        if !all.is_empty() {
            common::wait_until(
                Duration::from_secs(10),
                "the killed guardian to die",
                || all.iter().all(|g| !common::pid_alive(*g)),
            );
            self.count(Fault::KillGuardian);
        }
    }

    fn stop_guardian(&mut self) {
        let Some(g) = self.guardian() else { return };
        common::track(self.c.id, g.0, false);
        // SAFETY: kill takes a pid and a signal.
        unsafe { libc::kill(g.0 as libc::pid_t, libc::SIGSTOP) };
        self.hold.stopped = Some(g);
        common::wait_until(Duration::from_secs(10), "the guardian to stop", || {
            !observe::alive(g) || common::proc_state(g.0) == Some('T')
        });
        self.count(Fault::StopGuardian);
    }

    /// `kill -9` of the guardian and the Supervisor, neither left to replace the other: the
    /// Supervisor is stopped first (it starts a new guardian whenever its own dies), every
    /// guardian killed, then the Supervisor.
    fn kill_both(&mut self) {
        let sup = observe::supervisor(self.c);
        if sup.is_none() && common::guardians_of(&self.c.runtime).is_empty() {
            return;
        }
        if let Some((pid, _)) = sup {
            common::track(self.c.id, pid, false);
        }
        common::kill_guardians(&self.c.runtime);
        if let Some((pid, _)) = sup {
            // SAFETY: kill takes a pid and a signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            common::wait_until(
                Duration::from_secs(10),
                "the killed Supervisor to die",
                || !common::pid_alive(pid),
            );
        }
        self.hold.stopped = None;
        self.count(Fault::KillBoth);
    }

    fn starve_guardian(&mut self, n: u64) {
        if self.hold.starved.is_some() {
            return;
        }
        let Some(g) = self.guardian() else { return };
        common::track(self.c.id, g.0, false);
        let new = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads `new` and writes `old`, both local.
        let r = unsafe { libc::prlimit(g.0 as libc::pid_t, libc::RLIMIT_NOFILE, &new, &mut old) };
        if r == 0 {
            self.hold.starved = Some((g, old, n, self.c.runtime.clone()));
            self.count(Fault::GuardianFdStarve);
        }
    }

    /// The node-record page (the 4 KiB after the header) zeroed or scribbled over.
    fn damage_records(&mut self, seed: Option<u64>) {
        use std::os::unix::fs::FileExt;
        let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.c.shm_path())
        else {
            return;
        };
        let at = broctld::protocol::Geometry::default().offsets().nodes as u64;
        let mut page = vec![0u8; 4096];
        if let Some(seed) = seed {
            let mut rng = common::Rng::new(seed);
            for chunk in page.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
        if f.write_all_at(&page, at).is_ok() {
            self.count(Fault::DamageRecords);
        }
    }

    /// `upgrade-supervisor` while the path the Supervisor runs from holds a script that hangs
    /// (the Main itself runs the built binary); the real image is put back afterwards.
    fn hung_upgrade(&mut self) -> MainRun {
        self.count(Fault::HungUpgrade);
        install(&self.exe, Some(b"#!/bin/sh\nexec sleep 1000\n"));
        let exe = std::mem::replace(&mut self.exe, common::broctld_bin());
        let r = self.main(&["upgrade-supervisor"], None, None);
        self.exe = exe;
        install(&self.exe, None);
        // A probe the Supervisor did not end (it must) is not left behind.
        for pid in common::scan_proc("-", "1000") {
            if std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|t| t.to_string_lossy().contains("sleep"))
                && common::parent_pid(pid)
                    .is_some_and(|p| observe::supervisor(self.c).is_some_and(|s| s.0 == p))
            {
                self.violate(
                    Invariant::NoCrash,
                    format!("the hung upgrade's probe (pid {pid}) was left running"),
                );
                common::track(self.c.id, pid, false);
            }
        }
        r
    }

    /// Runs `broctld ARGS`; `during` injects a fault while it runs; `nofile` sets its soft fd
    /// limit (inherited by a Supervisor it starts).
    fn main(&mut self, args: &[&str], during: Option<InFlight>, nofile: Option<u64>) -> MainRun {
        self.runs += 1;
        let base = self
            .c
            .root
            .join("out")
            .join(format!("campaign-{}", self.runs));
        let (o, e) = (base.with_extension("stdout"), base.with_extension("stderr"));
        let mut cmd = self.command(&self.exe, args);
        cmd.stdout(std::fs::File::create(&o).expect("stdout file"))
            .stderr(std::fs::File::create(&e).expect("stderr file"))
            .stdin(Stdio::null());
        if let Some(n) = nofile {
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
            // reads a local struct.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = n.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("run broctld");
        common::track(self.c.id, child.id(), false);
        match during {
            Some(InFlight::KillSupervisor(ms)) => {
                std::thread::sleep(Duration::from_millis(ms.into()));
                if let Some((pid, _)) = observe::supervisor(self.c) {
                    common::track(self.c.id, pid, false);
                    // SAFETY: kill takes a pid and a signal.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    self.count(Fault::KillSupervisor);
                }
            }
            Some(InFlight::KillMain(ms)) => {
                std::thread::sleep(Duration::from_millis(ms.into()));
                let _ = child.kill();
                self.count(Fault::KillMain);
            }
            None => {}
        }
        let status = common::wait_child(&mut child, MAIN_LIMIT);
        let out = format!(
            "{}{}",
            std::fs::read_to_string(&o).unwrap_or_default(),
            std::fs::read_to_string(&e).unwrap_or_default()
        );
        if out.contains("panicked") {
            self.violate(
                Invariant::NoCrash,
                format!("`broctld {}` panicked:\n{out}", args.join(" ")),
            );
        }
        let code = match status {
            Some(st) => st.code(),
            None => {
                self.violate(
                    Invariant::CommandTruth,
                    format!(
                        "`broctld {}` did not finish within {MAIN_LIMIT:?}",
                        args.join(" ")
                    ),
                );
                None
            }
        };
        MainRun { code, out }
    }

    /// `status --json`: the parsed view, or None if it failed (exit not 0 or 3).
    fn status(&mut self) -> Option<BTreeMap<String, NodeView>> {
        let r = self.main(&["status", "--json"], None, None);
        if !matches!(r.code, Some(0) | Some(3)) {
            return None;
        }
        let json = r.out.find('[').map(|i| &r.out[i..]).unwrap_or("");
        let end = json.rfind(']').map(|i| i + 1).unwrap_or(0);
        serde_json::from_str::<serde_json::Value>(&json[..end])
            .ok()
            .map(|_| common::parse_status(&json[..end]))
    }

    fn kill_node(&mut self, name: &str) {
        for (pid, start) in observe::leaders(&self.c.instance)
            .get(name)
            .cloned()
            .unwrap_or_default()
        {
            if common::start_time(pid) == Some(start) {
                // SAFETY: kill of a process group we checked leads it; no memory involved.
                unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
            }
        }
        self.count(Fault::KillNode);
    }

    fn kill_supervisor(&mut self) {
        if let Some((pid, _)) = observe::supervisor(self.c) {
            // SAFETY: kill takes a pid and a signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            common::wait_until(
                Duration::from_secs(10),
                "the killed Supervisor to die",
                || !common::pid_alive(pid),
            );
        }
    }

    /// Writes `bytes` at `offset` of the region file, or truncates it to `len`.
    fn hurt_region(&mut self, truncate: bool) {
        use std::os::unix::fs::FileExt;
        let path = self.c.shm_path();
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return;
        };
        if truncate {
            let _ = f.set_len(4096);
            self.count(Fault::TruncateRegion);
        } else {
            let _ = f.write_at(&[0u8; 64], 0);
            self.count(Fault::DamageRegion);
        }
    }

    /// Runs the operation; returns the Main's exit code if one ran.
    fn execute(&mut self, step: &Step) -> Option<MainRun> {
        let during = step.during;
        let run = match &step.op {
            Op::Start(t) => {
                let mut args = vec!["start"];
                args.extend(t.as_deref());
                self.main(&args, during, None)
            }
            Op::Stop(t) => {
                let mut args = vec!["stop"];
                args.extend(t.as_deref());
                self.main(&args, during, None)
            }
            Op::Restart(n) => self.main(&["restart", n], during, None),
            Op::Reload(edit) => {
                if matches!(edit, Edit::Broken) {
                    self.count(Fault::BrokenReload);
                }
                self.write_config();
                let r = self.main(&["reload"], during, None);
                if during.is_some() {
                    // Whether or not the first one was applied, this one converges.
                    return Some(self.main(&["reload"], None, None));
                }
                r
            }
            Op::Upgrade => self.main(&["upgrade-supervisor"], during, None),
            Op::UpgradeBrokenConfig => {
                self.count(Fault::BrokenUpgrade);
                let good = self.model.config_text();
                self.c.write_config(&format!("{good}{BROKEN_TAIL}"));
                let r = self.main(&["upgrade-supervisor"], during, None);
                self.write_config();
                r
            }
            Op::Signal(sig, n) => {
                let s = match sig {
                    Sig::Hup => "HUP",
                    Sig::Term => "TERM",
                };
                self.main(&["signal", s, n], during, None)
            }
            Op::Shutdown => self.main(&["shutdown"], during, None),
            Op::KillNode(n) => {
                self.kill_node(n);
                return None;
            }
            Op::KillSupervisor => {
                self.kill_supervisor();
                self.count(Fault::KillSupervisor);
                return None;
            }
            Op::FdLimitSuccessor => {
                self.kill_supervisor();
                self.count(Fault::FdLimit);
                self.main(&["status", "--json"], None, Some(64))
            }
            Op::UnlinkRegion(kill) => {
                if *kill {
                    self.kill_supervisor();
                }
                let _ = std::fs::remove_file(self.c.shm_path());
                self.count(Fault::UnlinkRegion);
                return None;
            }
            Op::DamageRegion => {
                self.hurt_region(false);
                return None;
            }
            Op::TruncateRegion => {
                self.hurt_region(true);
                return None;
            }
            Op::KillGuardian => {
                self.kill_guardian();
                return None;
            }
            Op::StopGuardian => {
                self.stop_guardian();
                return None;
            }
            Op::ContGuardian => {
                self.hold.resume();
                return None;
            }
            Op::KillBoth => {
                self.kill_both();
                return None;
            }
            Op::StarveGuardian(n) => {
                self.starve_guardian(*n);
                return None;
            }
            Op::FeedGuardian => {
                if self.hold.feed() && observe::supervisor(self.c).is_none() {
                    // It starts one at its next attempt, at most 30 s away (its retry delay
                    // doubled while it could not).
                    let _ = common::eventually(
                        Duration::from_secs(35),
                        Duration::from_millis(50),
                        || {
                            observe::supervisor(self.c).is_some()
                                || common::guardians_of(&self.c.runtime).is_empty()
                        },
                    );
                }
                return None;
            }
            Op::HungUpgrade => self.hung_upgrade(),
            Op::DamageRecords(seed) => {
                self.damage_records(*seed);
                return None;
            }
        };
        Some(run)
    }

    /// Everything `status` says that `/proc` contradicts (checked on both sides of the call:
    /// a process that lived before and after the call was alive during it). `before` and
    /// `after` hold every live process of each node, leftovers included: a node whose child
    /// outlived it is not stopped.
    fn lies(
        &self,
        before: &BTreeMap<String, Vec<Proc>>,
        st: &BTreeMap<String, NodeView>,
        after: &BTreeMap<String, Vec<Proc>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (name, procs) in after {
            let lived: Vec<&Proc> = procs
                .iter()
                .filter(|p| before.get(name).is_some_and(|b| b.contains(p)))
                .collect();
            if lived.is_empty() {
                continue;
            }
            match st.get(name) {
                None => out.push(format!(
                    "{}: live process {:?} but `status` does not list the node",
                    self.who(name),
                    lived[0].0
                )),
                // A state that claims the node is down; any other (running, starting,
                // stopping, or one that says broctld cannot know) is no lie.
                Some(v) if matches!(v.state.as_str(), "stopped" | "failed" | "backoff") => out
                    .push(format!(
                        "{}: `status` says {} (pid {:?}) but process {} lives",
                        self.who(name),
                        v.state,
                        v.pid,
                        lived[0].0
                    )),
                Some(_) => {}
            }
        }
        for (name, v) in st {
            if !matches!(v.state.as_str(), "running" | "starting" | "stopping") {
                continue;
            }
            let dead_both = !before.contains_key(name) && !after.contains_key(name);
            let pid_dead = v.pid.is_some_and(|p| {
                !before.get(name).is_some_and(|b| b.iter().any(|q| q.0 == p))
                    && !common::pid_alive(p)
            });
            if dead_both || pid_dead {
                out.push(format!(
                    "{}: `status` says {} (pid {:?}) but no process of the node lives",
                    self.who(name),
                    v.state,
                    v.pid
                ));
            }
        }
        out
    }

    /// What the model expects and `status` plus `/proc` do not show yet.
    /// `live`: each node's leaders; `members`: every live process of each node.
    fn unsettled(
        &self,
        st: &BTreeMap<String, NodeView>,
        live: &BTreeMap<String, Vec<Proc>>,
        members: &BTreeMap<String, Vec<Proc>>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.model.nodes {
            let state = st
                .get(&n.name)
                .map(|v| v.state.as_str())
                .unwrap_or("absent");
            let up = live.contains_key(&n.name);
            if n.kind.dies_by_itself() {
                continue;
            }
            let transient = match state {
                "starting" => !n.kind.has_ready_fd() || n.kind == Kind::SlowReady,
                "stopping" | "backoff" => true,
                _ => false,
            };
            if transient {
                out.push(format!("{}: still {state}", self.who(&n.name)));
                continue;
            }
            match self
                .model
                .want
                .get(&n.name)
                .copied()
                .unwrap_or(Want::Unknown)
            {
                // Running: a leader and `running`/`starting`; or, if only a leftover of the
                // node lives (a child that outlived it holds its lock), any state that does
                // not claim the node is down (broctld may refuse a second copy and say why).
                Want::Running
                    if !(up && matches!(state, "running" | "starting")
                        || members.contains_key(&n.name)
                            && !matches!(state, "stopped" | "failed" | "backoff" | "absent")) =>
                {
                    out.push(format!(
                        "{}: expected running; status says {state}, live processes: {up}",
                        n.name
                    ))
                }
                Want::Stopped if up || !matches!(state, "stopped" | "failed") => out.push(format!(
                    "{}: expected stopped; status says {state}, live processes: {up}",
                    n.name
                )),
                _ => {}
            }
        }
        for name in live.keys() {
            if self.model.spec(name).is_none() && !self.model.broken {
                out.push(format!("{name}: not configured, yet a process of it lives"));
            }
        }
        out
    }

    /// Polls until `status` and `/proc` agree and the model's expectations hold (or `SETTLE`
    /// passes); reports what still did not, by invariant. Returns the last status.
    /// `min_quiet`: settle no sooner than this (a readiness that a killed Supervisor broke
    /// shows only when the node writes it, 300 ms after its start).
    /// `may_fail`: `status` failing (an error, not a lie) is acceptable, as after a region
    /// fault: "the lock is held but the region is missing or damaged" is an error that says
    /// what to do.
    fn settle(
        &mut self,
        min_quiet: Duration,
        may_fail: bool,
    ) -> Option<BTreeMap<String, NodeView>> {
        let started = Instant::now();
        let deadline = started + SETTLE;
        let mut dup_seen = BTreeMap::new();
        loop {
            let before = observe::members(&self.c.instance);
            let st = self.status();
            let after = observe::members(&self.c.instance);
            for (k, v) in observe::leaders(&self.c.instance) {
                if v.len() > 1 {
                    dup_seen.insert(k, v);
                }
            }
            let sup = observe::supervisor(self.c);
            let stopped = self.hold.stopped();
            let guardians = common::guardians_of(&self.c.runtime);
            let mut zombies = sup
                .map(|s| common::zombie_children(s.0))
                .unwrap_or_default();
            if !stopped {
                // A guardian that runs reaps what it reported (a stopped one cannot yet).
                for &g in &guardians {
                    zombies.extend(common::zombie_children(g));
                }
            }
            // With the guardian stopped (or starved of fds) and the Supervisor dead nothing
            // supervises: a Main says so (with `kill -CONT PID`, or the guardian's error and
            // its next attempt) and fails, and no state is expected until the guardian runs
            // again (or has its fds back).
            let impaired = self.hold.impaired();
            let may_fail = may_fail || impaired && sup.is_none();
            let (lies, unsettled) = match &st {
                Some(st) => {
                    let leaders = observe::leaders(&self.c.instance);
                    // No Supervisor, and none can be started (the file is broken): nothing
                    // supervises the nodes, so no state is expected of them; `status` must
                    // still not lie.
                    let unsupervised = (self.model.broken || impaired) && sup.is_none();
                    let mut unsettled = if unsupervised {
                        Vec::new()
                    } else {
                        self.unsettled(st, &leaders, &after)
                    };
                    // A live Supervisor is watched by exactly one guardian (it starts a new
                    // one when its own dies), unless that one is stopped.
                    if sup.is_some() && !stopped && guardians.len() != 1 {
                        unsettled.push(format!(
                            "the Supervisor has {} guardians (pids {guardians:?}), not one",
                            guardians.len()
                        ));
                    }
                    (self.lies(&before, st, &after), unsettled)
                }
                None if self.model.broken || may_fail => (Vec::new(), Vec::new()),
                None => (Vec::new(), vec!["`status --json` fails".to_owned()]),
            };
            let done = lies.is_empty()
                && unsettled.is_empty()
                && zombies.is_empty()
                && started.elapsed() >= min_quiet;
            if done || Instant::now() >= deadline {
                if !lies.is_empty() {
                    self.violate(Invariant::StatusTruth, lies.join("; "));
                }
                if !unsettled.is_empty() {
                    self.violate(Invariant::QuietState, unsettled.join("; "));
                }
                if !zombies.is_empty() {
                    self.violate(
                        Invariant::NoZombie,
                        format!(
                            "zombie children of the Supervisor or a running guardian: {zombies:?}"
                        ),
                    );
                }
                if !dup_seen.is_empty() {
                    self.violate(
                        Invariant::NoDuplicate,
                        format!("nodes running twice (pid, start): {dup_seen:?}"),
                    );
                }
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fds a node must not hold, and a Supervisor whose fd table grew past any need.
    fn check_fds(&mut self, live: &BTreeMap<String, Vec<Proc>>) {
        let model = self.model.clone();
        let unexpected = |name: &str, pid: u32| -> observe::Fds {
            let ready = model.kind(name).is_some_and(|k| k.has_ready_fd());
            observe::fd_targets(pid)
                .into_iter()
                // The node's lock, and its readiness FIFO (`nodes/NAME.ready`, held read-write
                // so that saying "ready" never raises SIGPIPE; docs/design.md).
                .filter(|(_, t)| {
                    !(t.ends_with(".lock") || ready && t.ends_with(&format!("/nodes/{name}.ready")))
                })
                .collect()
        };
        let suspects: Vec<(String, Proc, observe::Fds)> = live
            .iter()
            .flat_map(|(name, procs)| procs.iter().map(move |p| (name, *p)))
            .map(|(name, p)| (name.clone(), p, unexpected(name, p.0)))
            .filter(|(_, _, bad)| !bad.is_empty())
            .collect();
        if !suspects.is_empty() {
            // A process caught in exec holds the loader's fds for a moment (a flapping node
            // restarts often): only an fd still there, in the same process, is a leak.
            std::thread::sleep(Duration::from_millis(300));
        }
        for (name, p, first) in suspects {
            let again = unexpected(&name, p.0);
            let kept: Vec<&(i32, String)> = first.iter().filter(|f| again.contains(f)).collect();
            if observe::alive(p) && !kept.is_empty() {
                let who = self.who(&name);
                self.violate(
                    Invariant::NoFdLeak,
                    format!("{who} (pid {}) holds fds it was not given: {kept:?}", p.0),
                );
            }
        }
        if let Some((pid, _)) = observe::supervisor(self.c) {
            let n = common::open_fds(pid).map(|v| v.len()).unwrap_or(0);
            let bound = 32 + 4 * self.model.nodes.len();
            if n > bound {
                self.violate(
                    Invariant::NoFdLeak,
                    format!(
                        "the Supervisor (pid {pid}) holds {n} fds, more than {bound} for {} nodes: {:?}",
                        self.model.nodes.len(),
                        observe::fd_targets(pid)
                    ),
                );
            }
        }
    }

    /// One step: operation, settle, every check. Returns whether the run may go on.
    fn step(&mut self, step: &Step) -> bool {
        if !self.model.applies(&step.op) {
            return true;
        }
        let before = self.model.clone();
        let pre = observe::leaders(&self.c.instance);
        let names: BTreeSet<String> = before
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(self.model_names_after(&step.op))
            .collect();
        let spawns0: BTreeMap<String, usize> = names
            .iter()
            .map(|n| (n.clone(), observe::spawns(&self.c.root, n)))
            .collect();
        let hups0: BTreeMap<String, usize> = names
            .iter()
            .map(|n| (n.clone(), observe::hups(&self.c.root, n)))
            .collect();
        let sup0 = observe::supervisor(self.c);
        let panics0 = observe::panics(self.c);
        if let Op::Reload(edit) = &step.op {
            self.model.edit_config(edit);
        }
        let faulted = step.during.is_some();
        let mut allow = self.model.apply(&step.op, &before, faulted);
        let resuming = self.unsupervised;
        if resuming {
            allow.resumed(&before);
        }
        if let Op::Reload(Edit::Add(n)) = &step.op {
            if let Some(f) = n.kind.switch() {
                self.count(f);
            }
        }
        let terms0: BTreeMap<String, usize> = names
            .iter()
            .map(|n| (n.clone(), observe::terms(&self.c.root, n)))
            .collect();
        let run = self.execute(step);
        if let Some(r) = &run {
            self.check_command(step, r);
        }
        self.refused_unsupervised(step, run.as_ref(), resuming, &before);
        self.admitted_failure(step, run.as_ref());
        let begun = self.stops_begun(step, &terms0);
        let supervisor_killed = matches!(step.during, Some(InFlight::KillSupervisor(_)))
            || matches!(
                step.op,
                Op::KillSupervisor | Op::FdLimitSuccessor | Op::UnlinkRegion(true) | Op::KillBoth
            );
        let readiness = self.model.nodes.iter().any(|n| n.kind == Kind::SlowReady);
        let min_quiet = if supervisor_killed && readiness {
            READY_DELAY + Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let region_fault = matches!(
            step.op,
            Op::UnlinkRegion(_) | Op::DamageRegion | Op::TruncateRegion
        );
        let st = self.settle(min_quiet, region_fault);
        // With nothing supervising (the guardian stopped, the Supervisor dead), a begun stop
        // is carried through only when supervision resumes (`Allow::resumed`; the model
        // still wants the node stopped).
        let unsupervised = self.hold.impaired() && observe::supervisor(self.c).is_none();
        let begun = if unsupervised { Vec::new() } else { begun };
        for name in &begun {
            let old: Vec<&Proc> = pre
                .get(name)
                .into_iter()
                .flatten()
                .filter(|p| observe::alive(**p))
                .collect();
            if !old.is_empty() {
                let who = self.who(name);
                self.violate(
                    Invariant::QuietState,
                    format!(
                        "{who} got the SIGTERM of a stop, yet process {} still lives {SETTLE:?} later (the stop was not carried through)",
                        old[0].0
                    ),
                );
            }
        }
        let live = observe::leaders(&self.c.instance);
        if trace() {
            let code = run.as_ref().map(|r| r.code);
            let states: Vec<String> = st
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}:{:?}", v.state, v.pid))
                .collect();
            let _ = writeln!(
                std::io::stderr(),
                "campaign trace: {step} -> exit {code:?}; status {}; live {live:?}",
                states.join(" ")
            );
        }
        self.c.track_from_proc();
        self.check_accounting(&allow, &pre, &live, &spawns0, &hups0, &before);
        self.check_exits(st.as_ref(), &before);
        self.unsupervised = unsupervised;
        self.check_fds(&live);
        self.check_supervisor(step, sup0, panics0, &before);
        self.resolve(st.as_ref(), &live);
        // A region damaged, truncated or unlinked under its live Supervisor needs an operator:
        // the run ends there.
        !matches!(
            step.op,
            Op::UnlinkRegion(false) | Op::DamageRegion | Op::TruncateRegion
        )
    }

    /// A command run while nothing supervised (the guardian stopped, the Supervisor dead) that
    /// exits non-zero: the Main said nothing was done (it cannot start a Supervisor while the
    /// guardian is stopped), so the model goes back to before the step (a reload's edit is
    /// taken back, the file rewritten). If a fault hit it too, the next observation decides.
    fn refused_unsupervised(
        &mut self,
        step: &Step,
        run: Option<&MainRun>,
        resuming: bool,
        before: &Model,
    ) {
        if !resuming || run.is_none_or(|r| r.code == Some(0)) {
            return;
        }
        if step.during.is_some() {
            let names: Vec<String> = self.model.nodes.iter().map(|n| n.name.clone()).collect();
            for n in names {
                self.model.want.insert(n, Want::Unknown);
            }
            self.model.supervisor = None;
            return;
        }
        let edited = self.model.nodes != before.nodes || self.model.broken != before.broken;
        self.model = before.clone();
        if edited {
            self.write_config();
        }
    }

    /// A `start`, `stop` or `restart` that no fault hit but that exits non-zero said it did
    /// not (fully) do what was asked: its nodes' state is observed, not assumed (and a node
    /// the command left alone is still checked by every other invariant).
    fn admitted_failure(&mut self, step: &Step, run: Option<&MainRun>) {
        if step.during.is_some() || run.is_none_or(|r| r.code == Some(0)) {
            return;
        }
        let targets: Vec<String> = match &step.op {
            Op::Start(Some(n)) | Op::Stop(Some(n)) | Op::Restart(n) => vec![n.clone()],
            Op::Start(None) | Op::Stop(None) => {
                self.model.nodes.iter().map(|n| n.name.clone()).collect()
            }
            _ => return,
        };
        for n in targets {
            self.model.want.insert(n, Want::Unknown);
        }
    }

    /// Nodes whose stop provably began in a step whose command a fault hit: they got a
    /// SIGTERM (the node logs it, even when it ignores it). A begun stop must be carried
    /// through (SIGKILL after the timeout) by whichever Supervisor serves next; after `stop`
    /// the node must stay down.
    fn stops_begun(&mut self, step: &Step, terms0: &BTreeMap<String, usize>) -> Vec<String> {
        if step.during.is_none() {
            return Vec::new();
        }
        let targets: Vec<String> = match &step.op {
            Op::Stop(Some(n)) | Op::Restart(n) => vec![n.clone()],
            Op::Stop(None) | Op::Shutdown => {
                self.model.nodes.iter().map(|n| n.name.clone()).collect()
            }
            _ => return Vec::new(),
        };
        let begun: Vec<String> = targets
            .into_iter()
            .filter(|n| !self.model.kind(n).is_some_and(|k| k.dies_by_itself()))
            .filter(|n| observe::terms(&self.c.root, n) > terms0.get(n).copied().unwrap_or(0))
            .collect();
        if matches!(step.op, Op::Stop(_)) {
            for n in &begun {
                self.model.want.insert(n.clone(), Want::Stopped);
            }
        }
        begun
    }

    fn model_names_after(&self, op: &Op) -> Vec<String> {
        match op {
            Op::Reload(Edit::Add(NodeSpec { name, .. })) | Op::Reload(Edit::Rename(_, name)) => {
                vec![name.clone()]
            }
            _ => Vec::new(),
        }
    }

    /// A command that exits 0 did what it says.
    fn check_command(&mut self, step: &Step, r: &MainRun) {
        if step.during.is_some() || r.code != Some(0) {
            return;
        }
        let live = observe::leaders(&self.c.instance);
        let flap = |m: &Model, n: &str| m.kind(n).is_some_and(|k| k.dies_by_itself());
        match &step.op {
            Op::Stop(t) => {
                let targets: Vec<String> = match t {
                    Some(n) => vec![n.clone()],
                    None => self.model.nodes.iter().map(|n| n.name.clone()).collect(),
                };
                for n in targets {
                    if let Some(p) = live.get(&n) {
                        let who = self.who(&n);
                        self.violate(
                            Invariant::CommandTruth,
                            format!(
                                "`stop` exited 0 but {who} still has live processes {p:?}:\n{}",
                                r.out
                            ),
                        );
                    }
                }
            }
            Op::HungUpgrade => self.violate(
                Invariant::CommandTruth,
                format!(
                    "`upgrade-supervisor` to a binary that hangs exited 0:\n{}",
                    r.out
                ),
            ),
            Op::Shutdown if !live.is_empty() => self.violate(
                Invariant::CommandTruth,
                format!(
                    "`shutdown` exited 0 but node processes live: {live:?}\n{}",
                    r.out
                ),
            ),
            Op::Start(Some(n)) | Op::Restart(n)
                if !live.contains_key(n) && !flap(&self.model, n) =>
            {
                self.violate(
                    Invariant::CommandTruth,
                    format!(
                        "`{:?}` exited 0 but {n} has no live process:\n{}",
                        step.op, r.out
                    ),
                )
            }
            _ => {}
        }
    }

    /// Deaths, spawns and SIGHUPs against the step's allowance.
    fn check_accounting(
        &mut self,
        allow: &Allow,
        pre: &BTreeMap<String, Vec<Proc>>,
        live: &BTreeMap<String, Vec<Proc>>,
        spawns0: &BTreeMap<String, usize>,
        hups0: &BTreeMap<String, usize>,
        before: &Model,
    ) {
        let now = self.model.clone();
        let flap = |n: &str| {
            before
                .kind(n)
                .or(now.kind(n))
                .is_some_and(|k| k.dies_by_itself())
        };
        for (name, procs) in pre {
            if allow.die.contains(name) || flap(name) {
                continue;
            }
            let gone: Vec<&Proc> = procs
                .iter()
                .filter(|p| !live.get(name).is_some_and(|l| l.contains(p)) && !observe::alive(**p))
                .collect();
            if !gone.is_empty() {
                self.violate(
                    Invariant::NoStrayKill,
                    format!("{name}: process {:?} died, but no command named it and it does not exit by itself", gone[0].0),
                );
            }
        }
        for (name, n0) in spawns0 {
            if flap(name) {
                continue;
            }
            let spawned = observe::spawns(&self.c.root, name).saturating_sub(*n0);
            let may = allow.spawn.get(name).copied().unwrap_or(0) as usize;
            if spawned > may {
                self.violate(
                    Invariant::AtMostOnce,
                    format!("{name}: spawned {spawned} times in this step, at most {may} allowed"),
                );
            }
            let hupped = observe::hups(&self.c.root, name)
                .saturating_sub(hups0.get(name).copied().unwrap_or(0));
            let may = allow.hup.get(name).copied().unwrap_or(0) as usize;
            if hupped > may {
                self.violate(
                    Invariant::AtMostOnce,
                    format!(
                        "{name}: got SIGHUP {hupped} times in this step, at most {may} allowed"
                    ),
                );
            }
        }
    }

    /// Every exit recorded at most once: a node's `restarts` (which grows by one per restart
    /// the Supervisor decided) grows no more than the node was spawned (its own `started`
    /// lines), counted from the first `status` that showed the node (a region lost resets the
    /// count: counted again from there). Cumulative, so that a count published a moment
    /// after the new pid (or the reverse) is not mistaken for one. An exit applied twice
    /// (reported by the guardian and also read from `/proc`, or again to a successor) would
    /// count a restart that never ran.
    fn check_exits(&mut self, st: Option<&BTreeMap<String, NodeView>>, before: &Model) {
        let Some(st) = st else { return };
        for (name, v) in st {
            let flap = before
                .kind(name)
                .or(self.model.kind(name))
                .is_some_and(|k| k.dies_by_itself());
            let spawns = observe::spawns(&self.c.root, name) as u64;
            let base = self
                .restarts
                .entry(name.clone())
                .or_insert((v.restarts, spawns));
            if v.restarts < base.0 {
                *base = (v.restarts, spawns);
            }
            let (r0, s0) = *base;
            let mut spawned = spawns.saturating_sub(s0);
            if !flap && v.restarts > r0 + spawned {
                // The new process's `started` line reaches its log when the Supervisor moves it
                // out of the node's output FIFO: a moment after `status` shows the count.
                common::eventually(Duration::from_secs(3), Duration::from_millis(50), || {
                    spawned = (observe::spawns(&self.c.root, name) as u64).saturating_sub(s0);
                    v.restarts <= r0 + spawned
                });
            }
            if !flap && v.restarts > r0 + spawned {
                let who = self.who(name);
                self.violate(
                    Invariant::AtMostOnce,
                    format!(
                        "{who}: `restarts` grew from {r0} to {} while it was spawned {spawned} times",
                        v.restarts
                    ),
                );
            }
        }
    }

    /// The Supervisor never panics, and dies only when killed or shut down.
    fn check_supervisor(
        &mut self,
        step: &Step,
        sup0: Option<Proc>,
        panics0: usize,
        before: &Model,
    ) {
        let panics = observe::panics(self.c);
        if panics > panics0 {
            let log = self.c.log();
            let tail: String = log
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            self.violate(
                Invariant::NoCrash,
                format!("supervisor.log says panicked:\n{tail}"),
            );
        }
        let may_die = step.during.is_some()
            || matches!(
                step.op,
                Op::KillSupervisor
                    | Op::FdLimitSuccessor
                    | Op::UnlinkRegion(true)
                    | Op::Shutdown
                    | Op::KillBoth
            );
        if let Some(p) = sup0 {
            if !may_die && !observe::alive(p) {
                let _ = before;
                self.violate(
                    Invariant::NoCrash,
                    format!(
                        "the Supervisor (pid {}) died, though nothing killed it or shut it down",
                        p.0
                    ),
                );
            }
            // The same process, but no longer a Supervisor: it exec'd something else (an
            // upgrade must only ever exec a binary that answered its probe).
            if observe::alive(p) && !common::supervisors_of(&self.c.runtime).contains(&p.0) {
                let cmd = std::fs::read(format!("/proc/{}/cmdline", p.0)).unwrap_or_default();
                self.violate(
                    Invariant::NoCrash,
                    format!(
                        "the Supervisor (pid {}) is no longer a broctld Supervisor: it runs {:?}",
                        p.0,
                        String::from_utf8_lossy(&cmd).replace('\0', " ")
                    ),
                );
            }
        }
    }

    /// Unknown expectations become what was observed; so does whether a Supervisor runs.
    fn resolve(
        &mut self,
        st: Option<&BTreeMap<String, NodeView>>,
        live: &BTreeMap<String, Vec<Proc>>,
    ) {
        let names: Vec<String> = self.model.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            let w = self.model.want.get(&n).copied().unwrap_or(Want::Unknown);
            if w == Want::Unknown {
                let up = live.contains_key(&n)
                    || st.and_then(|s| s.get(&n)).is_some_and(|v| v.pid.is_some());
                self.model
                    .want
                    .insert(n, if up { Want::Running } else { Want::Stopped });
            }
        }
        self.model.supervisor = Some(observe::supervisor(self.c).is_some());
    }
}

/// Runs `steps` from `nodes` on a fresh instance named after `label`; stops at the first step
/// that breaks an enabled invariant.
pub fn run(label: &str, nodes: &[NodeSpec], steps: &[Step], sw: &Switches) -> Outcome {
    let model = Model::new(nodes.to_vec());
    let c = Cluster::new(label, &model.config_text());
    let exe = c.root.join("bin").join("broctld");
    std::fs::create_dir_all(exe.parent().expect("bin dir")).expect("create ROOT/bin");
    install(&exe, None);
    let mut d = Driver {
        c: &c,
        sw,
        model,
        runs: 0,
        outcome: Outcome::default(),
        violations: Vec::new(),
        exe,
        hold: GuardianHold::default(),
        unsupervised: false,
        restarts: BTreeMap::new(),
    };
    for n in nodes {
        if let Some(f) = n.kind.switch() {
            d.count(f);
        }
    }
    let mut ended = false;
    for (i, step) in steps.iter().enumerate() {
        let go_on = d.step(step);
        d.outcome.steps += 1;
        if !d.violations.is_empty() {
            let v = std::mem::take(&mut d.violations);
            d.outcome.failure = Some((i, step.clone(), v));
            ended = true;
            break;
        }
        if !go_on {
            ended = true;
            break;
        }
    }
    // A sequence (shrunk, or cut short) that leaves the guardian stopped or starved: it gets
    // everything back, and the checks run once more, before the run ends.
    if !ended {
        for op in [Op::FeedGuardian, Op::ContGuardian] {
            let pending = match op {
                Op::FeedGuardian => d.hold.starved.is_some(),
                _ => d.hold.stopped.is_some(),
            };
            if !pending {
                continue;
            }
            let step = Step { op, during: None };
            d.step(&step);
            if !d.violations.is_empty() {
                let v = std::mem::take(&mut d.violations);
                d.outcome.failure = Some((steps.len().saturating_sub(1), step, v));
                break;
            }
        }
    }
    // Given back here at the latest (also on a panic, by the hold's drop), before the
    // cluster's cleanup.
    drop(std::mem::take(&mut d.hold));
    std::mem::take(&mut d.outcome)
}
