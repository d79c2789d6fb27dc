//! Finding node processes in `/proc`: identity checks by start time and environment, used
//! when adopting survivors of a dead Supervisor and before starting a node (never a second
//! copy while any process of the node may live).
//!
//! Every function returns `io::Result`: an OS error (EMFILE under a low fd limit, ENOMEM) is
//! an error, never evidence that a process is gone or is not a node. Only "no such process"
//! (ENOENT, ESRCH) counts as an answer.

use crate::sys::procstat;
use std::collections::HashMap;
use std::io;

/// Whether an error reading `/proc/PID/...` means the process does not exist (any more).
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Whether an error reading `/proc/PID/environ` means the process is not ours to read: another
/// user's (or a non-dumpable) process. A node runs as the Supervisor's user or, when the
/// Supervisor is root (who can read every environment), as its configured user; so such a
/// process is not a node of ours.
fn is_foreign(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// The environment of `pid`; `Ok(None)` if it does not exist or is another user's.
fn environ(pid: u32) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => Ok(Some(env)),
        Err(e) if is_gone(&e) || is_foreign(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn carries(env: &[u8], node: &str, instance: &str) -> bool {
    let want_node = format!("BROCTLD_NODE={node}");
    let want_instance = format!("BROCTLD_INSTANCE={instance}");
    let mut has = (false, false);
    for v in env.split(|b| *b == 0) {
        has.0 |= v == want_node.as_bytes();
        has.1 |= v == want_instance.as_bytes();
    }
    has.0 && has.1
}

/// A node's lock file, by device and inode: every process broctld starts for the node inherits
/// it open read-write, and keeps it unless it closes its fds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockId {
    dev: u64,
    ino: u64,
}

impl LockId {
    /// The lock file at `path`; `Ok(None)` if there is none.
    pub fn of(path: &std::path::Path) -> io::Result<Option<LockId>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(LockId {
                dev: m.dev(),
                ino: m.ino(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Whether process `pid` holds the lock file `lock` open for reading and writing (as a node
/// holds its inherited lock fd; a reader such as `cat` does not count). `Ok(false)` if the
/// process does not exist or is not ours to look into.
pub fn holds_lock(pid: u32, lock: LockId) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) if is_gone(&e) || is_foreign(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    for e in dir {
        let e = match e {
            Ok(e) => e,
            Err(e) if is_gone(&e) || is_foreign(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        // Follows the magic link to the open file itself.
        match std::fs::metadata(e.path()) {
            Ok(m) if m.dev() == lock.dev && m.ino() == lock.ino => {}
            Ok(_) => continue,
            Err(e) if is_gone(&e) || is_foreign(&e) => continue,
            Err(e) => return Err(e),
        }
        let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        let text = match std::fs::read_to_string(info) {
            Ok(t) => t,
            Err(e) if is_gone(&e) || is_foreign(&e) => continue,
            Err(e) => return Err(e),
        };
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether process `pid` carries this node's identity: in its environment (as every node
/// broctld starts does: `BROCTLD_NODE` and `BROCTLD_INSTANCE`), or, for a program that wrote
/// its process title over its environment (redis, nginx, postgres...), by holding the node's
/// `lock` open. `Ok(false)` if it does not exist.
pub fn is_node_process(
    pid: u32,
    node: &str,
    instance: &str,
    lock: Option<LockId>,
) -> io::Result<bool> {
    if environ(pid)?.is_some_and(|env| carries(&env, node, instance)) {
        return Ok(true);
    }
    match lock {
        Some(lock) => holds_lock(pid, lock),
        None => Ok(false),
    }
}

/// A live process that carries a node's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeProcess {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot).
    pub start: u64,
    /// Its process group.
    pub pgid: u32,
}

/// Every live (not zombie) process whose environment carries this node's identity: the node,
/// anything it forked that kept its environment, and copies that escaped its process group or
/// session (`setsid`, daemonizing). Scans all of `/proc`.
pub fn node_processes(node: &str, instance: &str) -> io::Result<Vec<NodeProcess>> {
    Ok(instance_processes(instance)?
        .remove(node)
        .unwrap_or_default())
}

/// Every live (not zombie) process carrying the identity of any node of `instance`, by node
/// name: what [`node_processes`] finds for each node, from one scan of `/proc` (a Supervisor
/// that looks for running copies of thousands of nodes would otherwise scan it once per node).
pub fn instance_processes(instance: &str) -> io::Result<HashMap<String, Vec<NodeProcess>>> {
    let me = std::process::id();
    let want_instance = format!("BROCTLD_INSTANCE={instance}");
    let mut out: HashMap<String, Vec<NodeProcess>> = HashMap::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(env) = environ(pid)? else {
            continue;
        };
        let vars = || env.split(|b| *b == 0);
        if !vars().any(|v| v == want_instance.as_bytes()) {
            continue;
        }
        let names: Vec<&[u8]> = vars()
            .filter_map(|v| v.strip_prefix(b"BROCTLD_NODE="))
            .collect();
        if names.is_empty() {
            continue;
        }
        let Some(st) = procstat::stat(pid)? else {
            continue;
        };
        if matches!(st.state, 'Z' | 'X') {
            continue;
        }
        let p = NodeProcess {
            pid,
            start: st.start,
            pgid: st.pgid,
        };
        for name in names {
            out.entry(String::from_utf8_lossy(name).into_owned())
                .or_default()
                .push(p);
        }
    }
    Ok(out)
}

/// Among `procs` (from [`node_processes`]), the node itself: a process-group leader (every
/// node leads its own group; anything it forked does not) running the node's command (a child
/// that escaped into its own group with the node's environment is not the node).
pub fn leader_running(procs: &[NodeProcess], command: &[String]) -> io::Result<Option<(u32, u64)>> {
    let want: Vec<u8> = command.iter().flat_map(|a| a.bytes().chain([0])).collect();
    for p in procs.iter().filter(|p| p.pgid == p.pid) {
        let argv = match std::fs::read(format!("/proc/{}/cmdline", p.pid)) {
            Ok(a) => a,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let same_args = argv
            .split(|b| *b == 0)
            .skip(1)
            .eq(want.split(|b| *b == 0).skip(1));
        if same_args && is_survivor(p.pid, p.start)? {
            return Ok(Some((p.pid, p.start)));
        }
    }
    Ok(None)
}

/// Whether `pid` with this start time is a node to adopt: alive, or a zombie that is our own
/// child (it died during an upgrade's exec; reaping it gives its real exit status).
pub fn is_survivor(pid: u32, start: u64) -> io::Result<bool> {
    if pid == 0 {
        return Ok(false);
    }
    Ok(match procstat::stat(pid)? {
        Some(st) if st.start == start => {
            !matches!(st.state, 'Z' | 'X') || st.parent == std::process::id()
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_both_variables_exactly() {
        let env = b"A=1\0BROCTLD_NODE=w1\0BROCTLD_INSTANCE=x\0";
        assert!(carries(env, "w1", "x"));
        assert!(!carries(env, "w", "x"));
        assert!(!carries(env, "w1", "y"));
        assert!(!carries(b"BROCTLD_NODE=w1\0", "w1", "x"));
    }

    #[test]
    fn a_missing_process_is_an_answer_not_an_error() {
        // Pid numbers above pid_max never exist.
        assert!(!is_survivor(u32::MAX - 1, 1).unwrap());
        assert!(!is_node_process(u32::MAX - 1, "a", "b", None).unwrap());
    }
}
