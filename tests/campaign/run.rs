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
use std::process::Stdio;
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

struct Driver<'a> {
    c: &'a Cluster,
    sw: &'a Switches,
    model: Model,
    runs: usize,
    outcome: Outcome,
    violations: Vec<Violation>,
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
        let mut cmd = self.c.command(args);
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
            let zombies = sup
                .map(|s| common::zombie_children(s.0))
                .unwrap_or_default();
            let (lies, unsettled) = match &st {
                Some(st) => {
                    let leaders = observe::leaders(&self.c.instance);
                    // No Supervisor, and none can be started (the file is broken): nothing
                    // supervises the nodes, so no state is expected of them; `status` must
                    // still not lie.
                    let unsupervised = self.model.broken && sup.is_none();
                    let unsettled = if unsupervised {
                        Vec::new()
                    } else {
                        self.unsettled(st, &leaders, &after)
                    };
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
                        format!("zombie children of the Supervisor: {zombies:?}"),
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
        let allow = self.model.apply(&step.op, &before, faulted);
        let terms0: BTreeMap<String, usize> = names
            .iter()
            .map(|n| (n.clone(), observe::terms(&self.c.root, n)))
            .collect();
        let run = self.execute(step);
        if let Some(r) = &run {
            self.check_command(step, r);
        }
        self.admitted_failure(step, run.as_ref());
        let begun = self.stops_begun(step, &terms0);
        let supervisor_killed = matches!(step.during, Some(InFlight::KillSupervisor(_)))
            || matches!(
                step.op,
                Op::KillSupervisor | Op::FdLimitSuccessor | Op::UnlinkRegion(true)
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
                Op::KillSupervisor | Op::FdLimitSuccessor | Op::UnlinkRegion(true) | Op::Shutdown
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
    let mut d = Driver {
        c: &c,
        sw,
        model,
        runs: 0,
        outcome: Outcome::default(),
        violations: Vec::new(),
    };
    for (i, step) in steps.iter().enumerate() {
        let go_on = d.step(step);
        d.outcome.steps += 1;
        if !d.violations.is_empty() {
            let v = std::mem::take(&mut d.violations);
            d.outcome.failure = Some((i, step.clone(), v));
            break;
        }
        if !go_on {
            break;
        }
    }
    std::mem::take(&mut d.outcome)
}
