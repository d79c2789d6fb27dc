//! The machine as one table (phase x input -> phase, actions), as s6-supervise keeps its
//! `actions[state][event]` on one screen. Rendered from the code itself: each cell is what
//! [`Machine::handle`] does to one node in that phase (restart policy `always`, a cgroup per
//! node), so docs/design.md cannot drift from it (a test holds the two together).

use super::*;
use std::fmt::Write;

const MS: Ns = 1_000_000;
/// When every cell's input happens.
const NOW: Ns = 10_000 * MS;

fn proc_() -> Proc {
    Proc { pid: 100, start: 1 }
}

/// The phases of the table's rows.
fn rows() -> Vec<Phase> {
    let p = proc_();
    vec![
        Phase::Stopped,
        Phase::Failed,
        Phase::Queued { was_failed: false },
        Phase::Held,
        Phase::Spawning {
            again: false,
            block: None,
        },
        Phase::Backoff {
            at: NOW,
            blocked_by: None,
            block_ms: 0,
            again: true,
        },
        Phase::Backoff {
            at: NOW,
            blocked_by: Some(7),
            block_ms: 50,
            again: false,
        },
        Phase::Starting {
            proc_: p,
            ready: Readiness::Told,
            ready_at: None,
            ready_by: NOW,
            timed_out: false,
            stop_queued: None,
        },
        Phase::Starting {
            proc_: p,
            ready: Readiness::After(MS),
            ready_at: Some(NOW),
            ready_by: NOW + 1,
            timed_out: false,
            stop_queued: None,
        },
        Phase::AwaitingMain {
            starter: 100,
            ready_by: NOW,
            told: false,
        },
        Phase::Running {
            proc_: p,
            stop_queued: None,
        },
        Phase::Running {
            proc_: p,
            stop_queued: Some(Then::Down),
        },
        Phase::Stopping {
            proc_: p,
            kill_at: Some(NOW),
            then: Then::Down,
        },
        Phase::Stopping {
            proc_: p,
            kill_at: None,
            then: Then::Down,
        },
        Phase::Stopping {
            proc_: p,
            kill_at: Some(NOW),
            then: Then::Restart,
        },
        Phase::Stopping {
            proc_: p,
            kill_at: None,
            then: Then::Restart,
        },
        Phase::Draining {
            pid: 100,
            exit: Exit::Code(1),
            then: None,
        },
        Phase::Draining {
            pid: 100,
            exit: Exit::Code(0),
            then: Some(Then::Down),
        },
    ]
}

/// The inputs of the table's columns.
fn columns() -> Vec<(&'static str, Input)> {
    let p = Proc { pid: 200, start: 2 };
    vec![
        ("start", Input::Command(Command::Start(vec![0]))),
        ("stop", Input::Command(Command::Stop(vec![0]))),
        ("restart", Input::Command(Command::Restart(vec![0]))),
        ("shutdown", Input::Command(Command::Shutdown)),
        (
            "spawned",
            Input::Spawned {
                node: 0,
                proc_: p,
                ready: Readiness::Told,
                wall_ms: 0,
            },
        ),
        ("spawn-failed", Input::SpawnFailed { node: 0, errno: 2 }),
        ("blocked", Input::Blocked { node: 0, by: 7 }),
        (
            "adopted",
            Input::Adopted {
                node: 0,
                proc_: p,
                started: (NOW, 0),
            },
        ),
        (
            "exited 1",
            Input::Exited {
                node: 0,
                pid: 100,
                exit: Exit::Code(1),
                leftovers: false,
                by: Reporter::Reaped,
            },
        ),
        (
            "exited 0, group busy",
            Input::Exited {
                node: 0,
                pid: 100,
                exit: Exit::Code(0),
                leftovers: true,
                by: Reporter::Reaped,
            },
        ),
        ("main-pid", Input::MainPid { node: 0, proc_: p }),
        ("ready", Input::Ready { node: 0 }),
        ("watchdog-ping", Input::WatchdogPing { node: 0 }),
        ("group-empty", Input::GroupEmpty { node: 0 }),
        ("blocker-gone", Input::BlockerGone { node: 0 }),
        (
            "timer",
            Input::Timer {
                node: 0,
                kind: TimerKind::Retry,
            },
        ),
    ]
}

/// The timer that is due for a phase (the `timer` column fires it).
fn due_kind(phase: &Phase) -> Option<TimerKind> {
    match phase {
        Phase::Backoff { .. } => Some(TimerKind::Retry),
        Phase::Stopping {
            kill_at: Some(_), ..
        } => Some(TimerKind::Kill),
        Phase::Starting {
            ready_at: Some(_), ..
        } => Some(TimerKind::ReadyAfter),
        Phase::Starting { .. } | Phase::AwaitingMain { .. } => Some(TimerKind::ReadyBy),
        Phase::Running { .. } => Some(TimerKind::Watchdog),
        _ => None,
    }
}

/// One cell: the next phase and the actions, or `·` if nothing happens.
fn cell(phase: &Phase, input: &Input) -> String {
    let conf = Conf {
        rank: 3,
        after: Vec::new(),
        policy: Arc::new(Policy {
            stop_timeout: std::time::Duration::from_millis(1_000),
            ready_timeout: std::time::Duration::from_millis(1_000),
            watchdog: std::time::Duration::from_millis(1_000),
            ..Default::default()
        }),
    };
    let mut m = Machine::new(vec![conf], true);
    let mut core = m.core(0).clone();
    core.phase = phase.clone();
    core.started_ns = NOW - 5_000 * MS;
    // A running node's watchdog is due now (its last ping was `watchdog_ms` ago).
    if matches!(phase, Phase::Running { .. }) {
        core.watchdog_at = Some(NOW);
    }
    m.restore(0, core);
    let input = match input {
        Input::Timer { .. } => match due_kind(phase) {
            Some(kind) => Input::Timer { node: 0, kind },
            None => return "·".into(),
        },
        other => other.clone(),
    };
    let mut acts = m.handle(input, NOW);
    acts.extend(m.advance_waves(NOW));
    let next = m.core(0).phase.clone();
    let names: Vec<String> = acts
        .iter()
        .filter(|a| !matches!(a, Action::Publish { .. } | Action::Log { .. }))
        .map(Action::name)
        .collect();
    if next == *phase && names.is_empty() {
        return "·".into();
    }
    let label = describe(&next);
    if names.is_empty() {
        label.to_string()
    } else {
        format!("{label}: {}", names.join(", "))
    }
}

/// A phase's name with what tells its variants apart in the table.
pub fn describe(phase: &Phase) -> String {
    let then = |t: Then| match t {
        Then::Down => "then down",
        Then::Restart => "then restart",
        Then::Fail => "then fail",
        Then::Retire => "then retire",
        Then::Hold => "then hold",
    };
    let mut parts: Vec<&str> = Vec::new();
    match phase {
        Phase::Queued { was_failed: true } => parts.push("was failed"),
        Phase::Backoff { blocked_by, .. } => parts.push(if blocked_by.is_some() {
            "blocked"
        } else {
            "delay"
        }),
        Phase::Starting {
            ready,
            timed_out,
            stop_queued,
            ..
        } => {
            parts.push(match ready {
                Readiness::After(_) => "ready_after",
                Readiness::Starter(_) => "starter",
                _ => "told",
            });
            if *timed_out {
                parts.push("timed out");
            }
            if let Some(t) = stop_queued {
                parts.push("stop queued");
                if *t != Then::Down {
                    parts.push(then(*t));
                }
            }
        }
        Phase::Running {
            stop_queued: Some(t),
            ..
        } => {
            parts.push("stop queued");
            if *t != Then::Down {
                parts.push(then(*t));
            }
        }
        Phase::Stopping {
            kill_at, then: t, ..
        } => {
            if kill_at.is_none() {
                parts.push("killed");
            }
            if *t != Then::Down {
                parts.push(then(*t));
            }
        }
        Phase::Draining { then: t, .. } => match t {
            None => parts.push("death"),
            Some(t) => parts.push(then(*t)),
        },
        _ => {}
    }
    if parts.is_empty() {
        phase.name().to_string()
    } else {
        format!("{} ({})", phase.name(), parts.join(", "))
    }
}

/// The whole table, in Markdown.
pub fn render() -> String {
    let cols = columns();
    let mut out = String::new();
    let _ = write!(out, "| phase \\ input |");
    for (name, _) in &cols {
        let _ = write!(out, " {name} |");
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in &cols {
        out.push_str("---|");
    }
    out.push('\n');
    for phase in rows() {
        let _ = write!(out, "| **{}** |", describe(&phase));
        for (_, input) in &cols {
            let _ = write!(out, " {} |", cell(&phase, input));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    /// docs/design.md holds the table the code gives (run with `BROCTLD_WRITE_TABLE=1` to
    /// write it there).
    #[test]
    fn design_md_holds_the_machine_table_the_code_gives() {
        const BEGIN: &str =
            "<!-- machine table: generated by src/supervisor/machine/table.rs -->\n";
        const END: &str = "<!-- end of machine table -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/design.md");
        let doc = std::fs::read_to_string(path).expect("docs/design.md");
        let table = super::render();
        let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/design.md has no machine table between {BEGIN:?} and {END:?}");
        };
        let current = &doc[a + BEGIN.len()..b];
        if current != table {
            if std::env::var_os("BROCTLD_WRITE_TABLE").is_some() {
                let new = format!("{}{}{}", &doc[..a + BEGIN.len()], table, &doc[b..]);
                std::fs::write(path, new).expect("write docs/design.md");
                return;
            }
            panic!("docs/design.md's machine table is not the code's; run `BROCTLD_WRITE_TABLE=1 cargo test --lib design_md_holds` and commit it");
        }
    }
}
