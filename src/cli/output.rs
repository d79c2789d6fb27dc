//! Rendering node status and settings: aligned tables for people, JSON for scripts.

use super::style::{code, state_color, table, Cell, Style};
use crate::client::NodeStatus;
use crate::config::NodeSpec;
use crate::protocol::node::{Exit, NodeState};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether a closed stdout is ignored rather than ending the process (the daemon's).
static KEEP_RUNNING: AtomicBool = AtomicBool::new(false);

/// From now on a closed stdout is ignored: what was to be printed is dropped and the process
/// runs on (`broctld daemon`, whose stdout is the service's log stream).
pub fn keep_running_on_closed_stdout() {
    KEEP_RUNNING.store(true, Ordering::Relaxed);
}

/// Ends the process as a closed pipe ends `ls` in `ls | head`: by SIGPIPE, with nothing
/// printed (see [`crate::sys::stdio::die_of_sigpipe`]). A no-op for a process that keeps
/// running on a closed stdout.
pub fn stdout_closed() {
    if KEEP_RUNNING.load(Ordering::Relaxed) {
        return;
    }
    crate::sys::stdio::die_of_sigpipe();
}

/// Whether stdout is a pipe whose reading end is closed (`broctld events -f | head -1` once
/// `head` is gone), asked without writing: a command that follows (`events -f`, `logs -f`,
/// `top -d`) checks it while it waits, so it ends even when nothing more is written.
pub fn stdout_is_closed() -> bool {
    crate::sys::stdio::stdout_reader_gone()
}

/// Whether a following command should end: Ctrl-C, or a closed stdout (which ends the
/// process quietly, see [`stdout_closed`]).
pub fn follow_should_end() -> bool {
    if stdout_is_closed() {
        stdout_closed();
    }
    super::interrupt::pending()
}

/// What `print!` prints in the CLI: std's, except that a closed stdout is not a panic but
/// [`stdout_closed`]; other write errors are ignored (there is nowhere left to say them).
pub fn print_out(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            drop(out);
            stdout_closed();
        }
    }
}

/// What `eprint!` prints in the CLI: std's, except that a write error (a closed stderr) is
/// ignored rather than a panic.
pub fn print_err(args: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// `s` as text, each byte that is not part of valid UTF-8 shown as `\xNN`.
pub fn bytes_shown(s: &[u8]) -> String {
    s.utf8_chunks()
        .map(|c| {
            let mut out = c.valid().escape_debug().to_string();
            for b in c.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
            out
        })
        .collect()
}

/// Checks a write to stdout made directly (not by `print!`): a closed stdout is
/// [`stdout_closed`]; any other error is returned.
pub fn checked_write(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            stdout_closed();
            Ok(())
        }
        other => other,
    }
}

/// `1h02m03s`, `4m05s`, `6.2s`, `350ms`: the two largest units, fixed width, for table
/// columns (humantime's `format_duration` writes every unit, `1h 2m 3s 350ms`, too wide here).
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A configured limit: `10s`, `1.5s`, `500ms`, `2m`.
pub fn limit(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// An exit as a JSON value (`null` for none).
pub fn exit_json(e: Option<Exit>) -> Value {
    match e {
        None => Value::Null,
        Some(Exit::Code(c)) => json!({"code": c, "signal": null}),
        Some(Exit::Signal { signal, core }) => {
            json!({"code": null, "signal": signal, "core_dumped": core})
        }
        Some(Exit::Unknown) => json!({"code": null, "signal": null, "unknown": true}),
        Some(Exit::SpawnFailed(errno)) => json!({
            "code": null,
            "signal": null,
            "spawn_error": std::io::Error::from_raw_os_error(errno).to_string(),
        }),
        Some(e @ Exit::PidFileRefused(pid)) => json!({
            "code": null,
            "signal": null,
            "pid_file_error": e.describe(),
            "pid_file_named": if pid == 0 { Value::Null } else { json!(pid) },
        }),
    }
}

/// One node's status as `status --json` prints it; `text` is what a `ready = "notify"` node
/// last sent as `STATUS=`.
pub fn status_value(n: &NodeStatus, text: Option<String>) -> Value {
    json!({
        "name": n.name,
        "type": n.node_type.as_str(),
        "state": n.state_word(),
        "pid": n.pid,
        "uptime_ms": n.uptime.map(|u| u.as_millis() as u64),
        "restarts": n.restarts,
        "last_exit": exit_json(n.last_exit),
        "verified": n.verified,
        "last_state": n.state.as_str(),
        "pid_alive": n.pid_alive,
        "blocked_by": n.blocked_by,
        "blocked_reason": n.blocked_by.map(|b| blocked_reason_of(&n.name, b)),
        "status_text": text,
        "damaged": n.damaged,
    })
}

/// The JSON array `status --json` prints; `text` gives a node's `STATUS=` text by name.
pub fn status_json(nodes: &[NodeStatus], text: impl Fn(&str) -> Option<String>) -> String {
    pretty(&Value::Array(
        nodes
            .iter()
            .map(|n| status_value(n, text(&n.name)))
            .collect(),
    ))
}

/// A JSON document for people and scripts alike: indented, one key per line.
pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())
}

/// The Supervisor's log, where [`blocked_reason_of`] looks up why a start is blocked.
static SUPERVISOR_LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Tells [`blocked_reason_of`] where the instance's Supervisor log is (set once per Main).
pub fn use_supervisor_log(path: std::path::PathBuf) {
    let _ = SUPERVISOR_LOG.set(path);
}

/// Why a node in `backoff` does not start: another process of it lives.
pub fn blocked_reason(pid: u32) -> String {
    if pid == crate::protocol::node::BLOCKED_UNKNOWN {
        "blocked: a process of this node may still run".into()
    } else {
        format!("blocked by pid {pid}, a process of this node")
    }
}

/// [`blocked_reason`] for node `name`. A blocker the Supervisor could not name is often no
/// process at all but a check that failed (`/proc` could not be read: too many open files):
/// the reason it logged for the node is shown then, not a guess.
pub fn blocked_reason_of(name: &str, pid: u32) -> String {
    if pid == crate::protocol::node::BLOCKED_UNKNOWN {
        if let Some(why) = SUPERVISOR_LOG.get().and_then(|p| logged_block(p, name)) {
            return format!("blocked: {why}");
        }
    }
    blocked_reason(pid)
}

/// The last reason the Supervisor logged for not starting node `name` (the log's last 1 MiB).
fn logged_block(log: &std::path::Path, name: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(1 << 20))).ok()?;
    let mut bytes = Vec::new();
    f.take(1 << 20).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let key = format!("] node {name}: not started: ");
    let line = text.lines().rev().find(|l| l.contains(&key))?;
    let why = &line[line.find(&key)? + key.len()..];
    let why = why.split("; waiting until").next().unwrap_or(why);
    (!why.is_empty()).then(|| why.to_owned())
}

/// The columns of the `status` table.
pub const STATUS_HEADER: [&str; 7] = [
    "NAME",
    "TYPE",
    "STATE",
    "PID",
    "UPTIME",
    "RESTARTS",
    "LAST EXIT",
];

/// The aligned table `status` prints (states colored with `style`).
pub fn status_table(nodes: &[NodeStatus], style: Style) -> String {
    let header = STATUS_HEADER;
    let rows: Vec<Vec<Cell>> = nodes
        .iter()
        .map(|n| {
            let mut state = n.state_word().to_owned();
            if n.damaged {
                // Nothing in the record is believed: not even its state.
                state.push_str(" (record damaged: it fails its check)");
            } else if !n.verified {
                // The last recorded state, and what /proc says of its process.
                let alive = match n.pid_alive {
                    Some(true) => ", process alive",
                    Some(false) => ", process gone",
                    None => "",
                };
                state = format!("{state} (last: {}{alive})", n.state.as_str());
            }
            if let Some(d) = n.deadline_in.filter(|_| !n.damaged) {
                if matches!(n.state, NodeState::Backoff | NodeState::Stopping) {
                    state = format!("{state} ({})", duration(d));
                }
            }
            if n.state == NodeState::Starting && n.pid.is_none() && !n.damaged {
                state.push_str(" (queued)");
            }
            if let Some(b) = n.blocked_by {
                state.push_str(&format!(" ({})", blocked_reason_of(&n.name, b)));
            }
            let exit_color = match n.last_exit {
                Some(e) if e.is_failure() => code::RED,
                _ => "",
            };
            vec![
                Cell::new(n.name.clone()),
                Cell::new(n.node_type.as_str()),
                Cell::colored(state, state_color(n.state_word())),
                Cell::new(n.pid.map_or("-".into(), |p| p.to_string())),
                Cell::new(n.uptime.map_or("-".into(), duration)),
                Cell::new(n.restarts.to_string()),
                Cell::colored(n.last_exit.map_or("-".into(), Exit::describe), exit_color),
            ]
        })
        .collect();
    table(&header, &rows, style)
}

/// One node's configured settings as a JSON object (what `nodes --json` and `config --json`
/// print for each node).
pub fn spec_json(n: &NodeSpec) -> Value {
    let p = &n.policy;
    let env: serde_json::Map<String, Value> = n
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let ms = |d: Duration| d.as_millis() as u64;
    json!({
        "name": n.name,
        "type": n.node_type.as_str(),
        "command": n.command,
        "cwd": n.cwd.to_string_lossy(),
        "stdout": n.stdout.to_string_lossy(),
        "stderr": n.stderr.to_string_lossy(),
        "env": env,
        "cpu_affinity": n.cpu_affinity,
        "start_after": n.start_after,
        "autostart": p.autostart,
        "restart": p.restart.as_str(),
        "stop_signal": format!("SIG{}", crate::config::signal_name(p.stop_signal)),
        "stop_timeout_ms": ms(p.stop_timeout),
        "restart_delay_ms": ms(p.restart_delay),
        "restart_delay_factor": p.restart_delay_factor,
        "restart_delay_max_ms": ms(p.restart_delay_max),
        "restart_reset_ms": ms(p.restart_reset),
        "quick_death_ms": ms(p.quick_death),
        "give_up_after": p.give_up_after,
        "give_up_window_ms": ms(p.give_up_window),
        "ready_after_ms": ms(p.ready_after),
        "ready_fd": p.ready_fd,
        "ready_timeout_ms": ms(p.ready_timeout),
        "user": p.user,
        "group": p.group,
        "nice": p.nice,
        "memory_max": p.memory_max,
        "capabilities": p.capabilities,
        "path": p.path,
        "inherit_env": p.inherit_env,
        "pid_file": p.pid_file.as_ref().map(|f| f.to_string_lossy()),
        "ready_file": p.ready_file.as_ref().map(|r| json!({
            "path": r.path.to_string_lossy(),
            "line": r.line,
        })),
    })
}

/// `sh`-style quoting of one word, for showing command lines.
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The aligned table `nodes` prints.
pub fn nodes_table(nodes: &[&NodeSpec], style: Style) -> String {
    let header = [
        "NAME",
        "TYPE",
        "AUTOSTART",
        "RESTART",
        "STOP",
        "READY",
        "START AFTER",
        "COMMAND",
    ];
    let rows: Vec<Vec<Cell>> = nodes
        .iter()
        .map(|n| {
            let p = &n.policy;
            let ready = match p.ready_fd {
                Some(fd) => format!("fd {fd}"),
                None if p.ready_after.is_zero() => "at once".into(),
                None => format!("after {}", limit(p.ready_after)),
            };
            vec![
                Cell::new(n.name.clone()),
                Cell::new(n.node_type.as_str()),
                Cell::new(if p.autostart { "yes" } else { "no" }),
                Cell::new(p.restart.as_str()),
                Cell::new(format!(
                    "SIG{} {}",
                    crate::config::signal_name(p.stop_signal),
                    limit(p.stop_timeout)
                )),
                Cell::new(ready),
                Cell::new(if n.start_after.is_empty() {
                    "-".to_owned()
                } else {
                    n.start_after.join(",")
                }),
                Cell::new(
                    n.command
                        .iter()
                        .map(|a| shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
            ]
        })
        .collect();
    table(&header, &rows, style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(350)), "350ms");
        assert_eq!(duration(Duration::from_millis(6200)), "6.2s");
        assert_eq!(duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
