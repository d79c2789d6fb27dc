//! Waiting for nodes to reach a state, with progress on stderr, and reporting the result.

use super::{CliError, Outcome};
use crate::cli::interrupt;
use crate::cli::progress::{self, Progress};
use crate::client::{Client, NodeStatus};
use crate::config::NodeSpec;
use crate::protocol::node::NodeState;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What a wait is for, to word its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    /// `start`.
    Start,
    /// `stop` and `shutdown`.
    Stop,
    /// `restart`.
    Restart,
    /// `reload`.
    Reload,
}

impl Verb {
    fn done_word(self) -> &'static str {
        match self {
            Verb::Start => "running",
            Verb::Stop => "stopped",
            Verb::Restart => "restarted",
            Verb::Reload => "settled",
        }
    }
}

/// Whether a node has been `starting` (spawned, not yet ready) for longer than its
/// `ready_timeout_ms`: an ordered start no longer waits for it.
pub(super) fn not_ready_in_time(n: &NodeStatus, specs: &HashMap<String, NodeSpec>) -> bool {
    n.state == NodeState::Starting
        && n.pid.is_some()
        && specs
            .get(&n.name)
            .is_some_and(|s| n.uptime.unwrap_or_default() > s.policy.ready_timeout)
}

/// What ends a blocker: `stop` does for one it names (a process of the node, which the stop
/// kills); for one it cannot name, nothing here does, and nothing is promised.
fn stop_ends_it(blocked_by: Option<u32>, stop: String) -> String {
    match blocked_by {
        Some(b) if b != crate::protocol::node::BLOCKED_UNKNOWN => format!("; `{stop}` ends it"),
        _ => String::new(),
    }
}

/// One progress line: the node that holds things up and why, then how many are done.
pub(super) fn progress_text(
    verb: Verb,
    sel: &[NodeStatus],
    specs: &HashMap<String, NodeSpec>,
    done: impl Fn(&NodeStatus) -> bool,
) -> String {
    let finished = sel.iter().filter(|n| done(n)).count();
    let pending: Vec<&NodeStatus> = sel.iter().filter(|n| !done(n)).collect();
    let rank = |n: &NodeStatus| match (n.state, n.pid) {
        _ if n.damaged || !n.verified => 0,
        (NodeState::Stopping, _) => 0,
        (NodeState::Starting, Some(_)) => 1,
        (NodeState::Backoff, _) => 2,
        (NodeState::Starting, None) => 3,
        _ => 4,
    };
    let what = match pending.iter().min_by_key(|n| rank(n)) {
        None => "done".to_owned(),
        Some(n) if n.damaged => format!(
            "{}: record damaged (fails its check), waiting for the Supervisor to rewrite it",
            n.name
        ),
        Some(n) if !n.verified => format!(
            "{}: the Supervisor does not serve, waiting for it (last recorded: {})",
            n.name,
            n.state.as_str()
        ),
        Some(n) => {
            let spec = specs.get(&n.name);
            match (n.state, n.pid) {
                (NodeState::Stopping, _) => {
                    let (sig, timeout) = spec.map_or(("stop signal".to_owned(), None), |s| {
                        (
                            format!("SIG{}", crate::config::signal_name(s.policy.stop_signal)),
                            Some(s.policy.stop_timeout),
                        )
                    });
                    match (timeout, n.deadline_in) {
                        (Some(t), Some(left)) => format!(
                            "stopping {}: {sig} sent, {} of {}",
                            n.name,
                            progress::secs(t.saturating_sub(left)),
                            progress::limit(t)
                        ),
                        (_, Some(left)) => format!(
                            "stopping {}: {sig} sent, SIGKILL in {}",
                            n.name,
                            progress::secs(left)
                        ),
                        _ => format!("stopping {}: {sig} sent", n.name),
                    }
                }
                (NodeState::Starting, Some(_)) => {
                    let up = n.uptime.unwrap_or_default();
                    match spec.map(|s| &s.policy) {
                        Some(p) if p.ready_fd.is_some() => format!(
                            "starting {}: waiting for it to say it is ready, {} of {}",
                            n.name,
                            progress::secs(up),
                            progress::limit(p.ready_timeout)
                        ),
                        Some(p) => format!(
                            "starting {}: ready after {}, {} so far",
                            n.name,
                            progress::limit(p.ready_after),
                            progress::secs(up)
                        ),
                        None => format!("starting {}: {}", n.name, progress::secs(up)),
                    }
                }
                (NodeState::Backoff, _) if n.blocked_by.is_some() => format!(
                    "{}: not started, {}{}",
                    n.name,
                    crate::cli::output::blocked_reason_of(
                        &n.name,
                        n.blocked_by.unwrap_or_default()
                    ),
                    stop_ends_it(n.blocked_by, format!("stop {}", n.name))
                ),
                (NodeState::Backoff, _) => format!(
                    "{}: died, next start in {}",
                    n.name,
                    progress::secs(n.deadline_in.unwrap_or_default())
                ),
                (NodeState::Starting, None) => {
                    format!("{}: queued until the earlier stages are ready", n.name)
                }
                (state, _) => format!("{}: {}", n.name, state.as_str()),
            }
        }
    };
    format!("{what} ({finished}/{} {})", sel.len(), verb.done_word())
}

/// Waits until every selected node satisfies `done`, the Supervisor dies, Ctrl-C (in the
/// shell), or the time runs out, showing progress on stderr. The limit stretches to cover a
/// node's published deadline (a stop timeout, a restart delay), up to two minutes in all.
/// Returns the nodes as last seen and whether Ctrl-C ended the wait.
pub(super) fn wait_nodes(
    client: &Client,
    idx: &[usize],
    base: Duration,
    verb: Verb,
    specs: &HashMap<String, NodeSpec>,
    done: impl Fn(&NodeStatus) -> bool,
) -> (Vec<NodeStatus>, bool) {
    // Only a record the Supervisor stands behind settles anything.
    let done = |n: &NodeStatus| n.verified && !n.damaged && done(n);
    let start = Instant::now();
    let mut progress = Progress::new();
    // A queued stage waits for the ready timeout of the stage before it.
    let ready_wait = specs
        .values()
        .map(|s| s.policy.ready_timeout)
        .max()
        .unwrap_or_default();
    let wanted: HashSet<usize> = idx.iter().copied().collect();
    loop {
        let head = client.event_head();
        let read_at = Instant::now();
        let all = client.status();
        let read_cost = read_at.elapsed();
        let sel: Vec<NodeStatus> = all
            .into_iter()
            .filter(|n| wanted.contains(&n.index))
            .collect();
        if sel.iter().all(&done) {
            progress.clear();
            return (sel, false);
        }
        progress.update(&progress_text(verb, &sel, specs, done));
        let mut limit = base;
        for n in &sel {
            // A deadline still ahead stretches the wait to it (elapsed + time left stays put
            // as time passes); one already past reads as zero and stretches nothing, or the
            // limit would move with the clock and never arrive.
            if let Some(d) = n.deadline_in.filter(|d| !d.is_zero()) {
                limit = limit.max(start.elapsed() + d + Duration::from_secs(5));
            }
            if n.state == NodeState::Starting {
                limit = limit.max(ready_wait * 6);
            }
        }
        let limit = limit.min(Duration::from_secs(120));
        // One reading of the clock for the test and the time left: two readings could
        // straddle the limit and the subtraction underflow (a panic the fault campaign hit).
        let elapsed = start.elapsed();
        if elapsed >= limit || !client.supervisor_alive() {
            progress.clear();
            return (sel, false);
        }
        if interrupt::installed() && interrupt::pending() {
            progress.clear();
            return (sel, true);
        }
        let left = limit.saturating_sub(elapsed);
        client.wait_event(head, left.min(Duration::from_millis(250)));
        // Each event wakes us, and each wake reads the whole table: with thousands of nodes
        // coming up, that was one read per node per step, quadratic in all (2,000 nodes took
        // 17 s to start). Reading at most once per four times what a read costs keeps this
        // loop under a fifth of a core whatever the size, and costs a one-node wait nothing.
        let gap = read_cost * 4;
        let since = read_at.elapsed();
        if since < gap && gap > Duration::from_micros(200) {
            std::thread::sleep((gap - since).min(limit.saturating_sub(start.elapsed())));
        }
    }
}

pub(super) fn report(
    nodes: &[NodeStatus],
    verb: &str,
    interrupted: bool,
    ok: impl Fn(&NodeStatus) -> bool,
) -> Result<Outcome, CliError> {
    let mut bad = Vec::new();
    // In the order the Supervisor goes (by role: loggers first; stops the other way round),
    // not the config's: `start` then lists nodes as they came up.
    let mut nodes: Vec<&NodeStatus> = nodes.iter().collect();
    let key = |n: &&NodeStatus| (n.node_type.start_rank(), n.index);
    if verb == "stopped" {
        nodes.sort_by_key(|n| std::cmp::Reverse(key(n)));
    } else {
        nodes.sort_by_key(key);
    }
    for n in nodes {
        if n.damaged {
            println!(
                "{}: record damaged (fails its check) and not rewritten in time: cannot tell whether a node was {verb}",
                n.name
            );
            bad.push(n.name.clone());
        } else if !n.verified {
            println!(
                "{}: unknown (the Supervisor does not serve; last recorded: {}): cannot tell whether it was {verb}",
                n.name,
                n.state.as_str()
            );
            bad.push(n.name.clone());
        } else if ok(n) {
            match (n.pid, n.last_exit) {
                (Some(pid), _) => println!("{}: {} (pid {pid})", n.name, n.state.as_str()),
                // Started, and then ended as its restart policy says: how it ended.
                (None, Some(e)) if verb == "started" => println!(
                    "{}: {}, last exit: {}",
                    n.name,
                    n.state.as_str(),
                    e.describe()
                ),
                (None, _) => println!("{}: {}", n.name, n.state.as_str()),
            }
        } else {
            let why = n
                .last_exit
                .map(|e| format!(", last exit: {}", e.describe()))
                .unwrap_or_default();
            match n.blocked_by {
                // Another process of the node lives: say which, and how to end it.
                Some(b) => println!(
                    "{}: not {verb}: {}{}",
                    n.name,
                    crate::cli::output::blocked_reason_of(&n.name, b),
                    stop_ends_it(Some(b), format!("broctld stop {}", n.name))
                ),
                None => println!("{}: not {verb}: {}{why}", n.name, n.state.as_str()),
            }
            bad.push(n.name.clone());
        }
    }
    if bad.is_empty() {
        Ok(Outcome::Done)
    } else if interrupted {
        Err(CliError::Failed(format!(
            "stopped waiting (Ctrl-C) with {} node(s) not yet {verb}: {}; the Supervisor carries on, see `status`",
            bad.len(),
            bad.join(", ")
        )))
    } else {
        Err(CliError::Failed(format!(
            "{} node(s) not {verb}: {}; see `broctld status` and the node's stderr file",
            bad.len(),
            bad.join(", ")
        )))
    }
}
