//! The event ring as lines for people and JSON for scripts, and where this instance's Mains
//! last stopped looking (`RUNTIME/INSTANCE/main.seen`), so that a Main that comes back shows
//! what happened while it was away.

use super::output::exit_json;
use super::style::{event_color, Style};
use crate::client::Client;
use crate::instance::Instance;
use crate::protocol::event::{Event, EventKind, NO_NODE};
use crate::protocol::mailbox::Opcode;
use crate::protocol::node::Exit;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Node names by table index at one table epoch, to label events, and the names of the
/// earlier epochs this Main saw (the table's epoch moves only when a reload or a takeover
/// renumbers it; an event of an epoch this Main never saw cannot be named).
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The table's `config_epoch` the names belong to.
    pub epoch: u32,
    /// Names by index.
    pub names: Vec<String>,
    /// Earlier epochs' names, oldest first (at most [`EARLIER_EPOCHS`]).
    pub earlier: Vec<(u32, Vec<String>)>,
}

/// How many earlier numberings a Main keeps to name events written under them.
pub const EARLIER_EPOCHS: usize = 16;

/// The least width of the node column of event lines (a longer name widens it).
const NODE_COLUMN: usize = 14;

impl Names {
    /// The names of the nodes in `client`'s table.
    pub fn of(client: &Client) -> Names {
        let (epoch, names) = client.names_now();
        Names {
            epoch,
            names,
            earlier: Vec::new(),
        }
    }

    /// Reads `client`'s table again; the names of the epoch left behind are kept to name
    /// events written under it.
    pub fn refresh(&mut self, client: &Client) {
        let now = Names::of(client);
        if now.epoch != self.epoch {
            let old = std::mem::take(&mut self.names);
            self.earlier.push((self.epoch, old));
            if self.earlier.len() > EARLIER_EPOCHS {
                self.earlier.remove(0);
            }
        }
        self.epoch = now.epoch;
        self.names = now.names;
    }

    /// The width of the node column: every name fits, and so does a label such as
    /// `#12(renumbered)`.
    pub fn width(&self) -> usize {
        self.names
            .iter()
            .chain(self.earlier.iter().flat_map(|(_, n)| n))
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(NODE_COLUMN)
    }

    /// Whether `ev` was written at another table epoch than these names (refresh them).
    pub fn stale_for(&self, ev: &Event) -> bool {
        ev.node != NO_NODE
            && ev.epoch != self.epoch
            && !self.earlier.iter().any(|(e, _)| *e == ev.epoch)
    }

    /// The label of the node `ev` is about (`-` for none): its name if the event was written
    /// at our epoch, else its index marked as from another numbering (never a wrong name).
    pub fn label(&self, ev: &Event) -> String {
        let i = ev.node;
        if i == NO_NODE {
            return "-".into();
        }
        let names = if ev.epoch == self.epoch {
            &self.names
        } else {
            match self.earlier.iter().rev().find(|(e, _)| *e == ev.epoch) {
                Some((_, n)) => n,
                None => return format!("#{i}(renumbered)"),
            }
        };
        match names.get(i as usize) {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("#{i}"),
        }
    }
}

fn sig(n: u64) -> String {
    format!("SIG{}", crate::config::signal_name(n as i32))
}

/// What an event says beyond its kind and node.
pub fn detail(ev: &Event) -> String {
    let pid = ev.pid;
    let exit = ev.exit.map(Exit::describe).unwrap_or_default();
    match ev.kind {
        EventKind::SupervisorStarted => format!("pid {pid}, generation {}", ev.a),
        EventKind::SupervisorExiting => format!("pid {pid}"),
        EventKind::Spawned if ev.a > 0 => format!("pid {pid} (restart {})", ev.a),
        EventKind::Spawned | EventKind::Ready => format!("pid {pid}"),
        EventKind::Exited | EventKind::OrphanReaped => format!("pid {pid}, {exit}"),
        EventKind::Backoff if ev.b != 0 => format!(
            "not started: {}; checking again when it exits (or in {} ms)",
            super::output::blocked_reason(ev.b as u32),
            ev.a
        ),
        EventKind::Backoff => format!("next start in {} ms", ev.a),
        EventKind::Failed if ev.a == 0 => {
            "not restarted (its restart policy); `start` starts it".into()
        }
        EventKind::Failed => format!("gave up after {} quick deaths; `start` tries again", ev.a),
        EventKind::Stopping => format!(
            "pid {pid}, {} sent, SIGKILL after {}",
            sig(ev.a),
            super::output::limit(std::time::Duration::from_millis(ev.b))
        ),
        EventKind::Killed => {
            format!("pid {pid}, SIGKILL sent: still running after its stop timeout")
        }
        EventKind::Stopped => String::new(),
        EventKind::SpawnFailed => exit,
        EventKind::CommandApplied => {
            let code = (ev.b & 0xffff_ffff) as u32;
            let op = Opcode::from_u32(code).map_or_else(
                || format!("command {code} (unknown to this Main)"),
                |o| o.as_str().to_owned(),
            );
            let result = match ev.exit {
                Some(Exit::Code(0)) => "ok".to_owned(),
                Some(Exit::Code(1)) => "rejected".to_owned(),
                Some(Exit::Code(2)) => "unsupported".to_owned(),
                Some(Exit::Code(3)) => {
                    "not applied: a reload renumbered the nodes since the Main named them (it resends it)"
                        .to_owned()
                }
                Some(Exit::Code(n)) => format!("reply status {n}"),
                _ => "no reply status recorded".to_owned(),
            };
            format!(
                "{op} from pid {} (command seq {}): {result}",
                ev.b >> 32,
                ev.a
            )
        }
        EventKind::SlotReclaimed => format!(
            "mailbox slot {} of pid {} reclaimed (command seq {})",
            ev.b & 0xffff_ffff,
            ev.b >> 32,
            ev.a
        ),
        EventKind::Adopted => format!("pid {pid} (it outlived its Supervisor)"),
        EventKind::Signaled => format!("pid {pid}, {}", sig(ev.a)),
        EventKind::UpgradeFailed => format!(
            "pid {pid}: {}; the old program runs on",
            upgrade_failure_text(ev)
        ),
    }
}

/// Why an `upgrade-failed` event's upgrade did not happen: the new binary failed its probe
/// (how), or `execve` failed (the errno).
pub fn upgrade_failure_text(ev: &Event) -> String {
    use crate::protocol::event::upgrade_failure as why;
    match ev.b {
        why::PROBE_TIMED_OUT => format!(
            "the new binary did not answer its version probe within {} s (it hangs?), so it was not executed",
            ev.a / 1000
        ),
        why::PROBE_FAILED => format!(
            "the new binary's version probe failed ({}), so it was not executed",
            ev.exit.map_or_else(|| "unknown end".into(), |e| e.describe())
        ),
        why::PROBE_ANSWER => "the new binary did not answer its version probe as a broctld this Supervisor can hand over to, so it was not executed".into(),
        _ => format!(
            "re-executing failed ({})",
            std::io::Error::from_raw_os_error(ev.a as i32)
        ),
    }
}

/// One event as a line: time, sequence number, node, what happened, details.
pub fn line(seq: u64, ev: &Event, names: &Names, style: Style) -> String {
    let width = names.width();
    let kind = ev.kind.as_str();
    let padded = format!("{kind:<19}");
    let d = detail(ev);
    let s = format!(
        "{}  #{:<5} {:<width$} {}{}",
        crate::sys::clock::format_wall_ms(ev.wall_ms),
        seq,
        names.label(ev),
        style.paint(event_color(kind), &padded),
        d
    );
    s.trim_end().to_owned()
}

/// One event as a short line for announcements in the shell: `18:15:58 worker-2 exited:
/// pid 17710, signal 9 (KILL)`.
pub fn short_line(ev: &Event, names: &Names, style: Style) -> String {
    let t = crate::sys::clock::format_wall_ms(ev.wall_ms);
    let hms = t.get(11..19).unwrap_or(&t);
    let kind = ev.kind.as_str();
    let d = detail(ev);
    let node = if ev.node == NO_NODE {
        String::new()
    } else {
        format!("{} ", names.label(ev))
    };
    format!(
        "{hms} {node}{}{}{d}",
        style.paint(event_color(kind), kind),
        if d.is_empty() { "" } else { ": " }
    )
}

/// One event as a JSON object on one line.
pub fn json(seq: u64, ev: &Event, names: &Names) -> String {
    serde_json::json!({
        "seq": seq,
        "time": crate::sys::clock::format_wall_ms(ev.wall_ms),
        "wall_ms": ev.wall_ms,
        "node": (ev.node != NO_NODE).then(|| names.label(ev)),
        "kind": ev.kind.as_str(),
        "pid": (ev.pid != 0).then_some(ev.pid),
        "exit": exit_json(ev.exit),
        "a": ev.a,
        "b": ev.b,
        "detail": detail(ev),
    })
    .to_string()
}

/// Whether an event is worth announcing even when the shell's own command caused nearby
/// events: something went wrong or the Supervisor changed.
pub fn is_notable(ev: &Event) -> bool {
    match ev.kind {
        EventKind::Exited => ev.exit.is_some_and(Exit::is_failure),
        EventKind::Backoff
        | EventKind::Failed
        | EventKind::Killed
        | EventKind::SpawnFailed
        | EventKind::SlotReclaimed
        | EventKind::Adopted
        | EventKind::OrphanReaped
        | EventKind::SupervisorStarted
        | EventKind::SupervisorExiting
        | EventKind::UpgradeFailed => true,
        _ => false,
    }
}

/// Where a Main last stopped reading: the region's creation time (which tells a recreated
/// region apart) and the next event number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `created_wall_ms` of the region.
    pub region: u64,
    /// The first event not yet seen.
    pub next: u64,
}

fn seen_path(instance: &Instance) -> PathBuf {
    instance.dir().join("main.seen")
}

/// Reads `main.seen` (None if absent or unreadable).
pub fn load_seen(instance: &Instance) -> Option<Seen> {
    let text = std::fs::read_to_string(seen_path(instance)).ok()?;
    let mut it = text.split_ascii_whitespace();
    Some(Seen {
        region: it.next()?.parse().ok()?,
        next: it.next()?.parse().ok()?,
    })
}

/// Writes `main.seen` (atomically: a temp file renamed over it). Errors are ignored: it is
/// a convenience.
pub fn save_seen(instance: &Instance, seen: Seen) {
    if load_seen(instance).is_some_and(|old| old.region == seen.region && old.next >= seen.next) {
        return; // another Main already looked further
    }
    let path = seen_path(instance);
    let tmp = instance
        .dir()
        .join(format!("main.seen.{}", std::process::id()));
    if std::fs::write(&tmp, format!("{} {}\n", seen.region, seen.next)).is_ok()
        && std::fs::rename(&tmp, &path).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Removes `main.seen` (after a shutdown: the region and its events are gone).
pub fn forget_seen(instance: &Instance) {
    let _ = std::fs::remove_file(seen_path(instance));
}

/// The identity of the client's region.
pub fn region_id(client: &Client) -> u64 {
    client
        .shared()
        .header()
        .created_wall_ms
        .load(Ordering::Relaxed)
}

/// Where to start reading to show what happened since this instance's Mains last looked, and
/// a note to print first if the saved position no longer applies.
pub fn since_last_seen(client: &Client) -> (u64, Option<String>) {
    let head = client.event_head();
    let oldest = client.oldest_event();
    match load_seen(client.instance()) {
        None => (oldest, None),
        Some(s) if s.region != region_id(client) || s.next > head => (
            oldest,
            Some(
                "the Supervisor's region was created anew since a Main last looked: showing every event it holds"
                    .into(),
            ),
        ),
        Some(s) => (s.next, None),
    }
}

/// The note printed when the ring overran a reader.
pub fn missed_note(missed: u64, capacity: u64) -> String {
    format!(
        "{missed} event(s) were overwritten before they could be read (the ring holds the last {capacity})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_node_and_say_what_happened() {
        let mut ev = Event::now(EventKind::Exited, 1, 4242);
        ev.exit = Some(Exit::Signal {
            signal: 9,
            core: false,
        });
        let names = Names {
            epoch: 0,
            names: vec!["logger-1".into(), "worker-1".into()],
            earlier: Vec::new(),
        };
        let l = line(7, &ev, &names, Style::plain());
        assert!(l.contains("#7"), "{l}");
        assert!(l.contains("worker-1"), "{l}");
        assert!(l.contains("exited"), "{l}");
        assert!(l.contains("pid 4242, signal 9 (KILL)"), "{l}");
        let j = json(7, &ev, &names);
        assert!(j.contains("\"node\":\"worker-1\""), "{j}");
        assert!(j.contains("\"signal\":9"), "{j}");
        assert!(is_notable(&ev));
        let mut stop = Event::now(EventKind::Stopping, 0, 5);
        stop.a = 15;
        stop.b = 10_000;
        assert_eq!(detail(&stop), "pid 5, SIGTERM sent, SIGKILL after 10s");
        assert!(!is_notable(&stop));
        assert_eq!(names.label(&Event::now(EventKind::Ready, NO_NODE, 1)), "-");
        assert_eq!(names.label(&Event::now(EventKind::Ready, 9, 1)), "#9");
        // An event written under another numbering never gets a name from ours.
        let mut old = Event::now(EventKind::Ready, 1, 1);
        old.epoch = 5;
        assert_eq!(names.label(&old), "#1(renumbered)");
        assert!(names.stale_for(&old));
        // One this Main saw: named by the numbering it was written under.
        let mut seen = names.clone();
        seen.earlier
            .push((5, vec!["proxy-1".into(), "manager".into()]));
        assert_eq!(seen.label(&old), "manager");
        let a = line(1, &old, &seen, Style::plain());
        let b = line(
            2,
            &Event::now(EventKind::Ready, 0, 1),
            &seen,
            Style::plain(),
        );
        assert_eq!(a.find("ready"), b.find("ready"), "{a}\n{b}");
    }
}
