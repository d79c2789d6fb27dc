//! What a campaign run does: the node behaviours, the operations and faults, the switches that
//! enable them, and the seeded generator that turns a seed into a sequence of steps.

use crate::common::Rng;
use std::collections::BTreeSet;

/// How a node's program behaves (each is a `broctld-node` flag set and some config keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Runs until stopped.
    Plain,
    /// Ignores SIGTERM: only the SIGKILL after `stop_timeout_ms` ends it.
    IgnoreTerm,
    /// Says it is ready on fd 3 after 300 ms (and dies of SIGPIPE if nobody reads it, as
    /// `echo >&3` in a shell does).
    SlowReady,
    /// Has a `ready_fd` but never writes to it (stays `starting`).
    NeverReady,
    /// Exits by itself every 400 ms and is restarted (`restart = "always"`).
    Flap,
    /// Forks a child that stays in its process group.
    Fork,
    /// Forks a child that calls `setsid()`: it escapes the node's group, as a daemon does.
    Setsid,
    /// Closes every inherited fd >= 3 at start (the node lock among them).
    CloseFds,
    /// Non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`, as a binary with file capabilities is): its
    /// `/proc` files are readable only with `CAP_SYS_PTRACE`.
    NonDumpable,
    /// Where broctld gives it a cgroup of its own (`.../node-NAME`), moves a child (`sleep`)
    /// that closed its fds 3-9 and called `setsid` into a sub-cgroup (`node-NAME/sub`) at
    /// start (`--nest-cgroup`), as `tests/identity_faults.rs` defect 10 does; without cgroups
    /// it is a plain node.
    NestedCgroup,
}

impl Kind {
    /// Every kind, in switch order.
    pub const ALL: [Kind; 10] = [
        Kind::Plain,
        Kind::IgnoreTerm,
        Kind::SlowReady,
        Kind::NeverReady,
        Kind::Flap,
        Kind::Fork,
        Kind::Setsid,
        Kind::CloseFds,
        Kind::NonDumpable,
        Kind::NestedCgroup,
    ];

    /// The fault switch that enables this kind (`None`: always enabled).
    pub fn switch(self) -> Option<Fault> {
        match self {
            Kind::Plain => None,
            Kind::IgnoreTerm => Some(Fault::IgnoreTerm),
            Kind::SlowReady => Some(Fault::SlowReady),
            Kind::NeverReady => Some(Fault::NeverReady),
            Kind::Flap => Some(Fault::Flap),
            Kind::Fork => Some(Fault::Fork),
            Kind::Setsid => Some(Fault::Setsid),
            Kind::CloseFds => Some(Fault::CloseFds),
            Kind::NonDumpable => Some(Fault::NonDumpable),
            Kind::NestedCgroup => Some(Fault::NestedCgroup),
        }
    }

    /// The `broctld-node` arguments after the program.
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Kind::Plain => &[],
            Kind::IgnoreTerm => &["--ignore-term"],
            Kind::SlowReady => &[
                "--ready-fd",
                "3",
                "--ready-delay",
                "300ms",
                "--die-on-sigpipe",
            ],
            Kind::NeverReady => &[],
            Kind::Flap => &["--exit-after", "400ms"],
            Kind::Fork => &["--spawn-child"],
            Kind::Setsid => &["--setsid-child"],
            Kind::CloseFds => &["--close-fds"],
            Kind::NonDumpable => &["--non-dumpable"],
            Kind::NestedCgroup => &["--nest-cgroup"],
        }
    }

    /// Whether the node has a `ready_fd` (and so may hold a readiness pipe until ready).
    pub fn has_ready_fd(self) -> bool {
        matches!(self, Kind::SlowReady | Kind::NeverReady)
    }

    /// Whether the node dies on its own (its deaths and spawns are not the control plane's).
    pub fn dies_by_itself(self) -> bool {
        self == Kind::Flap
    }
}

/// One configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `n0`, `n1`, ... (a rename or an added node takes the next number).
    pub name: String,
    /// How its program behaves.
    pub kind: Kind,
    /// `autostart` in the config.
    pub autostart: bool,
    /// Heartbeat interval in ms: a `Change` edit flips it, which makes the node "changed".
    pub interval_ms: u32,
}

/// A config edit applied before a `reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// A new node at the end.
    Add(NodeSpec),
    /// A node dropped.
    Remove(String),
    /// A node renamed (old, new): to broctld, one removed and one added.
    Rename(String, String),
    /// The node list rotated by this many places.
    Reorder(usize),
    /// A node's definition changed (its interval).
    Change(String),
    /// The file edited into an error; it stays broken until the next edit writes a good one.
    Broken,
}

/// The signals `signal` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Hup,
    Term,
}

/// One operation or fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `start` (all) or `start NODE`.
    Start(Option<String>),
    /// `stop` (all) or `stop NODE`.
    Stop(Option<String>),
    /// `restart NODE`.
    Restart(String),
    /// An edit of the config file, then `reload`.
    Reload(Edit),
    /// `upgrade-supervisor`.
    Upgrade,
    /// `upgrade-supervisor` while the config file on disk is broken (restored afterwards).
    UpgradeBrokenConfig,
    /// `signal SIG NODE`.
    Signal(Sig, String),
    /// `shutdown`.
    Shutdown,
    /// Fault: `kill -9` of a node's process.
    KillNode(String),
    /// Fault: `kill -9` of the idle Supervisor.
    KillSupervisor,
    /// Fault: `kill -9` of the Supervisor, whose successor is started by a Main under
    /// `ulimit -n 64`.
    FdLimitSuccessor,
    /// Fault: the region unlinked from `/dev/shm` (as systemd's `RemoveIPC` does), after a
    /// `kill -9` of the Supervisor if `true`, else under the live Supervisor.
    UnlinkRegion(bool),
    /// Fault: the region's header zeroed (magic and the words after it). Ends the run.
    DamageRegion,
    /// Fault: the region truncated to one page. Ends the run.
    TruncateRegion,
    /// Fault: `kill -9` of the guardian (the Supervisor starts a new one).
    KillGuardian,
    /// Fault: `kill -STOP` of the guardian; it stays stopped until `ContGuardian` (or the end
    /// of the run).
    StopGuardian,
    /// `kill -CONT` of the guardian a `StopGuardian` stopped.
    ContGuardian,
    /// Fault: `kill -9` of the guardian and the Supervisor together (the Supervisor is stopped
    /// first, so that neither replaces the other); the next Main starts a Supervisor that
    /// adopts the nodes.
    KillBoth,
    /// Fault: the guardian's fd limit (soft and hard) lowered to this many, until
    /// `FeedGuardian` (or the end of the run).
    StarveGuardian(u64),
    /// The guardian's fd limit put back.
    FeedGuardian,
    /// Fault: `upgrade-supervisor` with a script that hangs (`exec sleep 1000`) at the path
    /// the Supervisor runs from (the real binary put back afterwards).
    HungUpgrade,
    /// Fault: the node-record page (after the header) zeroed (`None`) or filled with bytes
    /// from this seed; the Supervisor repairs it.
    DamageRecords(Option<u64>),
}

/// A fault injected while a Main runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// `kill -9` of the Supervisor this many ms after the Main started.
    KillSupervisor(u32),
    /// `kill -9` of the Main this many ms after it started.
    KillMain(u32),
}

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does.
    pub op: Op,
    /// A fault injected while its Main runs, if any.
    pub during: Option<InFlight>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.op)?;
        match self.during {
            Some(InFlight::KillSupervisor(ms)) => write!(f, " + kill -9 Supervisor at {ms} ms"),
            Some(InFlight::KillMain(ms)) => write!(f, " + kill -9 Main at {ms} ms"),
            None => Ok(()),
        }
    }
}

/// A fault kind the campaign can inject; each can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    KillSupervisor,
    KillMain,
    KillNode,
    IgnoreTerm,
    SlowReady,
    NeverReady,
    Flap,
    Fork,
    Setsid,
    CloseFds,
    FdLimit,
    UnlinkRegion,
    DamageRegion,
    TruncateRegion,
    BrokenReload,
    BrokenUpgrade,
    KillGuardian,
    StopGuardian,
    KillBoth,
    GuardianFdStarve,
    HungUpgrade,
    DamageRecords,
    NonDumpable,
    NestedCgroup,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 24] = [
        Fault::KillSupervisor,
        Fault::KillMain,
        Fault::KillNode,
        Fault::IgnoreTerm,
        Fault::SlowReady,
        Fault::NeverReady,
        Fault::Flap,
        Fault::Fork,
        Fault::Setsid,
        Fault::CloseFds,
        Fault::FdLimit,
        Fault::UnlinkRegion,
        Fault::DamageRegion,
        Fault::TruncateRegion,
        Fault::BrokenReload,
        Fault::BrokenUpgrade,
        Fault::KillGuardian,
        Fault::StopGuardian,
        Fault::KillBoth,
        Fault::GuardianFdStarve,
        Fault::HungUpgrade,
        Fault::DamageRecords,
        Fault::NonDumpable,
        Fault::NestedCgroup,
    ];

    /// The name used in `BROCTLD_CAMPAIGN_FAULTS` and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillSupervisor => "kill-supervisor",
            Fault::KillMain => "kill-main",
            Fault::KillNode => "kill-node",
            Fault::IgnoreTerm => "ignore-term",
            Fault::SlowReady => "slow-ready",
            Fault::NeverReady => "never-ready",
            Fault::Flap => "flap",
            Fault::Fork => "fork",
            Fault::Setsid => "setsid",
            Fault::CloseFds => "close-fds",
            Fault::FdLimit => "fd-limit",
            Fault::UnlinkRegion => "unlink-region",
            Fault::DamageRegion => "damage-region",
            Fault::TruncateRegion => "truncate-region",
            Fault::BrokenReload => "broken-reload",
            Fault::BrokenUpgrade => "broken-upgrade",
            Fault::KillGuardian => "kill-guardian",
            Fault::StopGuardian => "stop-guardian",
            Fault::KillBoth => "kill-both",
            Fault::GuardianFdStarve => "guardian-fd-starve",
            Fault::HungUpgrade => "hung-upgrade",
            Fault::DamageRecords => "damage-records",
            Fault::NonDumpable => "non-dumpable",
            Fault::NestedCgroup => "nested-cgroup",
        }
    }
}

/// An invariant the campaign checks after every step; each can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// No node process dies except by a command that named it or by its own death.
    NoStrayKill,
    /// Never two live processes of one node.
    NoDuplicate,
    /// Every command applied at most once, to the node it named (spawns and SIGHUPs counted
    /// from the nodes' own output); every exit recorded at most once (a node's `restarts`
    /// grows no more than it was spawned).
    AtMostOnce,
    /// `status --json` never says stopped (or backoff, failed, or nothing) for a live node nor
    /// running for a dead one, after a bounded settle time.
    StatusTruth,
    /// A command that exits 0 did what it says (`stop` leaves no process, `start` one).
    CommandTruth,
    /// No zombie child of the Supervisor, nor of a guardian that is not stopped.
    NoZombie,
    /// No fd a node should not have, no growing fd table in the Supervisor.
    NoFdLeak,
    /// No "panicked" in supervisor.log or any Main's output; the Supervisor never dies unless
    /// killed or shut down.
    NoCrash,
    /// Once quiet, every node is in the state the model expects.
    QuietState,
}

impl Invariant {
    /// Every invariant.
    pub const ALL: [Invariant; 9] = [
        Invariant::NoStrayKill,
        Invariant::NoDuplicate,
        Invariant::AtMostOnce,
        Invariant::StatusTruth,
        Invariant::CommandTruth,
        Invariant::NoZombie,
        Invariant::NoFdLeak,
        Invariant::NoCrash,
        Invariant::QuietState,
    ];

    /// The name used in `BROCTLD_CAMPAIGN_INVARIANTS` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoStrayKill => "no-stray-kill",
            Invariant::NoDuplicate => "no-duplicate",
            Invariant::AtMostOnce => "at-most-once",
            Invariant::StatusTruth => "status-truth",
            Invariant::CommandTruth => "command-truth",
            Invariant::NoZombie => "no-zombie",
            Invariant::NoFdLeak => "no-fd-leak",
            Invariant::NoCrash => "no-crash",
            Invariant::QuietState => "quiet-state",
        }
    }
}

/// Which faults and invariants are on: every one unless the environment says otherwise.
#[derive(Debug, Clone)]
pub struct Switches {
    /// Fault kinds injected.
    pub faults: BTreeSet<Fault>,
    /// Invariants checked.
    pub invariants: BTreeSet<Invariant>,
}

/// Fault kinds left out when `BROCTLD_CAMPAIGN_FAULTS` is not set (CI): those whose fix has
/// not landed yet. Empty: everything is injected.
///
/// `guardian-fd-starve`: a guardian under a tiny fd limit cannot start a Supervisor (EMFILE,
/// retried 100 ms doubling to 30 s) and Mains leave that to it; with the region lost as well
/// (`UnlinkRegion(true)`), `status` then says `stopped`, verified, for every live node
/// (`Session::unsupervised_status`, src/cli/session.rs: no Supervisor, no region, so "every
/// configured node stopped" without looking at `/proc` or the node locks). Seeds 23, 37 and
/// 57 of the long run (docs/reliability.md).
pub const DISABLED_FAULTS: &[&str] = &["guardian-fd-starve"];

/// Invariants left out when `BROCTLD_CAMPAIGN_INVARIANTS` is not set (CI). Empty: everything
/// is checked.
pub const DISABLED_INVARIANTS: &[&str] = &[];

/// Parses a switch list: `all` (the default), a comma list of names, or `all,-name,-name`.
fn parse_list<T: Copy + Ord>(
    var: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
    disabled: &[&str],
) -> BTreeSet<T> {
    for d in disabled {
        assert!(
            all.iter().any(|t| name(*t) == *d),
            "{var}: the disabled list names '{d}', which is not a switch"
        );
    }
    let Ok(text) = std::env::var(var) else {
        return all
            .iter()
            .copied()
            .filter(|t| !disabled.contains(&name(*t)))
            .collect();
    };
    let mut set = BTreeSet::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (remove, word) = match word.strip_prefix('-') {
            Some(w) => (true, w),
            None => (false, word),
        };
        let chosen: Vec<T> = if word == "all" {
            all.to_vec()
        } else if word == "none" {
            Vec::new()
        } else {
            let one = all.iter().copied().find(|t| name(*t) == word);
            let known: Vec<&str> = all.iter().map(|t| name(*t)).collect();
            vec![one.unwrap_or_else(|| {
                panic!(
                    "{var}: unknown name '{word}' (known: all, none, {})",
                    known.join(", ")
                )
            })]
        };
        for t in chosen {
            if remove {
                set.remove(&t);
            } else {
                set.insert(t);
            }
        }
    }
    set
}

impl Switches {
    /// From `BROCTLD_CAMPAIGN_FAULTS` and `BROCTLD_CAMPAIGN_INVARIANTS` (e.g.
    /// `all,-setsid,-close-fds`), else everything.
    pub fn from_env() -> Switches {
        Switches {
            faults: parse_list(
                "BROCTLD_CAMPAIGN_FAULTS",
                &Fault::ALL,
                Fault::name,
                DISABLED_FAULTS,
            ),
            invariants: parse_list(
                "BROCTLD_CAMPAIGN_INVARIANTS",
                &Invariant::ALL,
                Invariant::name,
                DISABLED_INVARIANTS,
            ),
        }
    }

    /// Whether fault kind `f` is injected.
    pub fn fault(&self, f: Fault) -> bool {
        self.faults.contains(&f)
    }

    /// Whether invariant `i` is checked.
    pub fn check(&self, i: Invariant) -> bool {
        self.invariants.contains(&i)
    }

    fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| k.switch().is_none_or(|f| self.fault(f)))
            .collect()
    }
}

/// A generated campaign: the first config and the steps.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The first config.
    pub nodes: Vec<NodeSpec>,
    /// The steps, the first a `start`.
    pub steps: Vec<Step>,
}

/// The generator's own view of the config, so that its steps name nodes that exist.
struct Gen<'a> {
    rng: Rng,
    sw: &'a Switches,
    kinds: Vec<Kind>,
    names: Vec<String>,
    next_name: usize,
    /// Steps left before a stopped guardian is resumed (`None`: not stopped).
    stopped_for: Option<u32>,
    /// Steps left before a starved guardian gets its fds back (`None`: not starved).
    starved_for: Option<u32>,
    /// A hung upgrade costs its 5 s probe: at most one per run.
    hung_upgrade: bool,
}

impl Gen<'_> {
    fn node(&mut self) -> NodeSpec {
        let name = format!("n{}", self.next_name);
        self.next_name += 1;
        NodeSpec {
            name,
            kind: *self.rng.pick(&self.kinds),
            autostart: !self.rng.chance(1, 5),
            interval_ms: 1000,
        }
    }

    fn some_name(&mut self) -> Option<String> {
        (!self.names.is_empty()).then(|| self.rng.pick(&self.names).clone())
    }

    fn in_flight(&mut self) -> Option<InFlight> {
        let mut choices = Vec::new();
        if self.sw.fault(Fault::KillSupervisor) {
            choices.push(InFlight::KillSupervisor(self.rng.below(300) as u32));
        }
        if self.sw.fault(Fault::KillMain) {
            choices.push(InFlight::KillMain(self.rng.below(60) as u32));
        }
        if choices.is_empty() || !self.rng.chance(1, 3) {
            return None;
        }
        Some(*self.rng.pick(&choices))
    }

    fn edit(&mut self) -> Edit {
        loop {
            let edit = match self.rng.below(6) {
                0 => {
                    let n = self.node();
                    self.names.push(n.name.clone());
                    Edit::Add(n)
                }
                1 if self.names.len() > 1 => {
                    let i = self.rng.below(self.names.len() as u64) as usize;
                    Edit::Remove(self.names.remove(i))
                }
                2 if !self.names.is_empty() => {
                    let i = self.rng.below(self.names.len() as u64) as usize;
                    let new = format!("n{}", self.next_name);
                    self.next_name += 1;
                    let old = std::mem::replace(&mut self.names[i], new.clone());
                    Edit::Rename(old, new)
                }
                3 if self.names.len() > 1 => {
                    let k = 1 + self.rng.below(self.names.len() as u64 - 1) as usize;
                    self.names.rotate_left(k);
                    Edit::Reorder(k)
                }
                4 => match self.some_name() {
                    Some(n) => Edit::Change(n),
                    None => continue,
                },
                5 if self.sw.fault(Fault::BrokenReload) => Edit::Broken,
                _ => continue,
            };
            return edit;
        }
    }

    /// The step that ends a guardian fault whose time is up, if any.
    fn due(&mut self) -> Option<Step> {
        for (left, op) in [
            (&mut self.stopped_for, Op::ContGuardian),
            (&mut self.starved_for, Op::FeedGuardian),
        ] {
            match left {
                Some(0) => {
                    *left = None;
                    return Some(Step { op, during: None });
                }
                Some(k) => *k -= 1,
                None => {}
            }
        }
        None
    }

    fn step(&mut self) -> Step {
        if let Some(s) = self.due() {
            return s;
        }
        loop {
            let op = match self.rng.below(113) {
                0..=11 => Op::Start(if self.rng.chance(1, 2) {
                    None
                } else {
                    self.some_name()
                }),
                12..=23 => Op::Stop(if self.rng.chance(1, 4) {
                    None
                } else {
                    self.some_name()
                }),
                24..=35 => match self.some_name() {
                    Some(n) => Op::Restart(n),
                    None => continue,
                },
                36..=49 => Op::Reload(self.edit()),
                50..=55 => Op::Upgrade,
                56..=58 if self.sw.fault(Fault::BrokenUpgrade) => Op::UpgradeBrokenConfig,
                59..=66 => match self.some_name() {
                    Some(n) => Op::Signal(
                        if self.rng.chance(1, 2) {
                            Sig::Hup
                        } else {
                            Sig::Term
                        },
                        n,
                    ),
                    None => continue,
                },
                67..=69 => Op::Shutdown,
                70..=81 if self.sw.fault(Fault::KillNode) => match self.some_name() {
                    Some(n) => Op::KillNode(n),
                    None => continue,
                },
                82..=91 if self.sw.fault(Fault::KillSupervisor) => Op::KillSupervisor,
                92..=95 if self.sw.fault(Fault::FdLimit) => Op::FdLimitSuccessor,
                96..=98 if self.sw.fault(Fault::UnlinkRegion) => Op::UnlinkRegion(true),
                100..=102 if self.sw.fault(Fault::KillGuardian) => Op::KillGuardian,
                103..=105 if self.sw.fault(Fault::StopGuardian) && self.stopped_for.is_none() => {
                    self.stopped_for = Some(1 + self.rng.below(3) as u32);
                    Op::StopGuardian
                }
                106..=107 if self.sw.fault(Fault::KillBoth) => Op::KillBoth,
                108..=109
                    if self.sw.fault(Fault::GuardianFdStarve) && self.starved_for.is_none() =>
                {
                    self.starved_for = Some(1 + self.rng.below(2) as u32);
                    Op::StarveGuardian(*self.rng.pick(&[4, 8, 16]))
                }
                110 if self.sw.fault(Fault::HungUpgrade) && !self.hung_upgrade => {
                    self.hung_upgrade = true;
                    Op::HungUpgrade
                }
                111..=112 if self.sw.fault(Fault::DamageRecords) => {
                    Op::DamageRecords(self.rng.chance(1, 2).then(|| self.rng.next_u64()))
                }
                _ => continue,
            };
            let during = match op {
                Op::Start(_)
                | Op::Stop(_)
                | Op::Restart(_)
                | Op::Reload(_)
                | Op::Upgrade
                | Op::Shutdown => self.in_flight(),
                _ => None,
            };
            return Step { op, during };
        }
    }
}

/// The campaign for `seed`: 4 nodes of random kinds, `steps` steps, and (one run in four, if
/// enabled) a region damaged, truncated or unlinked under its live Supervisor as the last
/// step. A guardian stopped or starved of fds is given back what it lost a few steps later,
/// and always before the end (and before a last region fault).
pub fn generate(seed: u64, steps: usize, sw: &Switches) -> Plan {
    let mut g = Gen {
        rng: Rng::new(seed),
        sw,
        kinds: sw.kinds(),
        names: Vec::new(),
        next_name: 0,
        stopped_for: None,
        starved_for: None,
        hung_upgrade: false,
    };
    let nodes: Vec<NodeSpec> = (0..4).map(|_| g.node()).collect();
    g.names = nodes.iter().map(|n| n.name.clone()).collect();
    let mut out = vec![Step {
        op: Op::Start(None),
        during: None,
    }];
    while out.len() < steps {
        out.push(g.step());
    }
    if g.stopped_for.take().is_some() {
        out.push(Step {
            op: Op::ContGuardian,
            during: None,
        });
    }
    if g.starved_for.take().is_some() {
        out.push(Step {
            op: Op::FeedGuardian,
            during: None,
        });
    }
    let mut region = Vec::new();
    if sw.fault(Fault::UnlinkRegion) {
        region.push(Op::UnlinkRegion(false));
    }
    if sw.fault(Fault::DamageRegion) {
        region.push(Op::DamageRegion);
    }
    if sw.fault(Fault::TruncateRegion) {
        region.push(Op::TruncateRegion);
    }
    if !region.is_empty() && g.rng.chance(1, 4) {
        let op = g.rng.pick(&region).clone();
        out.push(Step { op, during: None });
    }
    Plan { nodes, steps: out }
}
