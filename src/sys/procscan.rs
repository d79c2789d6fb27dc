//! Finding node processes in `/proc`: identity checks by start time, environment and the node's
//! lock, used when adopting survivors of a dead Supervisor and before starting a node (never a
//! second copy while any process of the node may live).
//!
//! Every function returns `io::Result`: an OS error (EMFILE under a low fd limit, ENOMEM) is
//! an error, never evidence that a process is gone or is not a node. Only "no such process"
//! (ENOENT, ESRCH) counts as an answer. "Permission denied" on `/proc/PID/environ` or
//! `/proc/PID/fd` is no answer either: a process that made itself non-dumpable
//! (`prctl(PR_SET_DUMPABLE, 0)`, or one run from a binary with file capabilities, as a non-root
//! Zeek is) hides both from its own user, and so does another user's process. Such a process
//! is told apart by what can still be read: the node's lock file names its main process (pid
//! and start time, written by the Supervisor that started it), and a process in the session or
//! process group of that (live) main process descends from it. Where none of that answers, the
//! answer is [`Identity::Unknown`], which the Supervisor treats as "may be the node" (it blocks
//! the start), never as "is not".

use crate::sys::{lockfile, procstat};
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Whether an error reading `/proc/PID/...` means the process does not exist (any more).
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Whether an error reading `/proc/PID/...` means we may not look: the process is not dumpable
/// or another user's. It says nothing about whose process it is.
fn is_unreadable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// What reading one of a process's `/proc` files found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look<T> {
    /// The process does not exist.
    Gone,
    /// We may not read it (not dumpable, or another user's).
    Unreadable,
    /// What it says.
    Got(T),
}

fn look<T>(r: io::Result<T>) -> io::Result<Look<T>> {
    match r {
        Ok(v) => Ok(Look::Got(v)),
        Err(e) if is_gone(&e) => Ok(Look::Gone),
        Err(e) if is_unreadable(&e) => Ok(Look::Unreadable),
        Err(e) => Err(e),
    }
}

/// The environment of `pid`.
fn environ(pid: u32) -> io::Result<Look<Vec<u8>>> {
    look(std::fs::read(format!("/proc/{pid}/environ")))
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
    pub fn of(path: &Path) -> io::Result<Option<LockId>> {
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
/// holds its inherited lock fd; a reader such as `cat` does not count).
fn holds_lock(pid: u32, lock: LockId) -> io::Result<Look<bool>> {
    use std::os::unix::fs::MetadataExt;
    let dir = match look(std::fs::read_dir(format!("/proc/{pid}/fd")))? {
        Look::Got(d) => d,
        Look::Gone => return Ok(Look::Gone),
        Look::Unreadable => return Ok(Look::Unreadable),
    };
    // Some fd could not be looked at: "no" would be a guess.
    let mut hidden = false;
    for e in dir {
        let e = match look(e)? {
            Look::Got(e) => e,
            Look::Gone => return Ok(Look::Gone),
            Look::Unreadable => return Ok(Look::Unreadable),
        };
        // Follows the magic link to the open file itself.
        match look(std::fs::metadata(e.path()))? {
            Look::Got(m) if m.dev() == lock.dev && m.ino() == lock.ino => {}
            Look::Got(_) => continue,
            // Closed meanwhile (the fd, not the process).
            Look::Gone => continue,
            Look::Unreadable => {
                hidden = true;
                continue;
            }
        }
        let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        let text = match look(std::fs::read_to_string(info))? {
            Look::Got(t) => t,
            Look::Gone => continue,
            Look::Unreadable => {
                hidden = true;
                continue;
            }
        };
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32 {
            return Ok(Look::Got(true));
        }
    }
    Ok(if hidden {
        Look::Unreadable
    } else {
        Look::Got(false)
    })
}

/// The pid and start time the lock file at `path` names (see [`lockfile::LockFile::named`]);
/// `None` if there is no file or it names nobody.
fn named_holder(path: &Path) -> io::Result<Option<(u32, u64)>> {
    match lockfile::LockFile::named(path) {
        Ok(Some((pid, start))) if pid != 0 => Ok(Some((pid, start))),
        Ok(_) => Ok(None),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// What is known of whether a process is one of a node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// It is: it carries the node's identity in its environment (`BROCTLD_NODE` and
    /// `BROCTLD_INSTANCE`), holds the node's lock open read-write, or is the process (pid and
    /// start time) the node's lock file names.
    Node,
    /// It is not, or it does not exist.
    Other,
    /// Nothing readable says: its environment or open files cannot be read (it is not
    /// dumpable, or another user's) and the lock file does not name it. Never "not a node".
    Unknown(String),
}

/// Whether process `pid` is one of node `node` of `instance`, whose lock file is `lock`. A
/// program that wrote its process title over its environment (redis, nginx, postgres...) is
/// known by the lock it holds open; one that cannot be read at all, by the lock file naming it.
pub fn identify(pid: u32, node: &str, instance: &str, lock: &Path) -> io::Result<Identity> {
    let env = environ(pid)?;
    match &env {
        Look::Gone => return Ok(Identity::Other),
        Look::Got(e) if carries(e, node, instance) => return Ok(Identity::Node),
        _ => {}
    }
    let fds = match LockId::of(lock)? {
        Some(id) => holds_lock(pid, id)?,
        None => Look::Got(false),
    };
    match (&env, &fds) {
        (_, Look::Gone) => return Ok(Identity::Other),
        (_, Look::Got(true)) => return Ok(Identity::Node),
        (Look::Got(_), Look::Got(false)) => return Ok(Identity::Other),
        _ => {}
    }
    // Something of it is hidden from us: the lock file may still name it.
    let Some(st) = procstat::stat(pid)? else {
        return Ok(Identity::Other);
    };
    if named_holder(lock)? == Some((pid, st.start)) {
        return Ok(Identity::Node);
    }
    let hidden = match (&env, &fds) {
        (Look::Unreadable, Look::Unreadable) => "its environment and open files",
        (Look::Unreadable, _) => "its environment",
        _ => "its open files",
    };
    Ok(Identity::Unknown(format!(
        "pid {pid} cannot be identified: {hidden} cannot be read (it is not dumpable, or another user's), and the node's lock file does not name it"
    )))
}

/// [`identify`] as a yes or no; [`Identity::Unknown`] is an error (`PermissionDenied`, saying
/// why), never "no".
pub fn is_node_process(pid: u32, node: &str, instance: &str, lock: &Path) -> io::Result<bool> {
    match identify(pid, node, instance, lock)? {
        Identity::Node => Ok(true),
        Identity::Other => Ok(false),
        Identity::Unknown(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, why)),
    }
}

/// Every live process that holds the lock file at `lock` open read-write (see
/// [`is_node_process`]), from a look into every process's open files; and how many processes
/// could not be looked into (not dumpable, or another user's: one of them may hold it too).
pub fn lock_holders(lock: &Path) -> io::Result<(Vec<u32>, usize)> {
    let Some(id) = LockId::of(lock)? else {
        return Ok((Vec::new(), 0));
    };
    let me = std::process::id();
    let (mut found, mut hidden) = (Vec::new(), 0);
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        match holds_lock(pid, id)? {
            Look::Got(true) => {}
            Look::Got(false) | Look::Gone => continue,
            Look::Unreadable => {
                hidden += 1;
                continue;
            }
        }
        if matches!(procstat::stat(pid)?, Some(st) if !matches!(st.state, 'Z' | 'X')) {
            found.push(pid);
        }
    }
    Ok((found, hidden))
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

/// Every live (not zombie) process of this node found in `/proc` (see [`instance_processes`]):
/// the node, anything it forked that kept its environment, and copies that escaped its process
/// group or session (`setsid`, daemonizing). `locks` is the folder of the instance's node lock
/// files (`NAME.lock`).
pub fn node_processes(node: &str, instance: &str, locks: &Path) -> io::Result<Vec<NodeProcess>> {
    Ok(scan(instance, locks, Some(node))?
        .remove(node)
        .unwrap_or_default())
}

/// Every live (not zombie) process of any node of `instance`, by node name, from one scan of
/// `/proc` (a Supervisor that looks for running copies of thousands of nodes would otherwise
/// scan it once per node): each process whose environment carries a node's identity, and each
/// process whose environment cannot be read (see the module's notes) that a node's lock file
/// in `locks` names, or that is in the session or process group of the live process a lock
/// file names (every node leads its own session from its start: what is in it descends from
/// it). An unreadable process that none of these ties to a node is not listed: without a
/// cgroup per node that is the limit of what can be known (as for a process that left its
/// node's session and dropped `BROCTLD_NODE`).
pub fn instance_processes(
    instance: &str,
    locks: &Path,
) -> io::Result<HashMap<String, Vec<NodeProcess>>> {
    scan(instance, locks, None)
}

/// What the lock files name: by pid, the node whose lock file names it and the start time.
struct Anchors {
    by_pid: HashMap<u32, (String, u64)>,
    /// Whether each named pid still runs with the named start time (looked up once).
    live: HashMap<u32, bool>,
}

impl Anchors {
    fn read(locks: &Path, only: Option<&str>) -> io::Result<Anchors> {
        let mut by_pid = HashMap::new();
        let mut add = |name: String| -> io::Result<()> {
            if let Some((pid, start)) = named_holder(&locks.join(format!("{name}.lock")))? {
                by_pid.insert(pid, (name, start));
            }
            Ok(())
        };
        match only {
            Some(node) => add(node.to_owned())?,
            None => {
                let dir = match std::fs::read_dir(locks) {
                    Ok(d) => d,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Ok(Anchors {
                            by_pid,
                            live: HashMap::new(),
                        })
                    }
                    Err(e) => return Err(e),
                };
                for e in dir {
                    let e = e?;
                    let file = e.file_name();
                    if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".lock")) {
                        add(name.to_owned())?;
                    }
                }
            }
        }
        Ok(Anchors {
            by_pid,
            live: HashMap::new(),
        })
    }

    /// The node whose lock file names this process (pid `pid`, started at `start`, in group
    /// `pgid` and session `session`), or whose named main process (alive) leads its group or
    /// session. A group or session id stays taken while any member lives, so it cannot be a
    /// recycled pid's while the named process runs.
    fn node_of(&mut self, st: &procstat::Stat, pid: u32) -> io::Result<Option<String>> {
        if let Some((name, start)) = self.by_pid.get(&pid) {
            if *start == st.start {
                return Ok(Some(name.clone()));
            }
        }
        for leader in [st.session, st.pgid] {
            let Some((name, start)) = self.by_pid.get(&leader) else {
                continue;
            };
            let live = match self.live.get(&leader) {
                Some(l) => *l,
                None => {
                    let l = procstat::alive(leader, *start)?;
                    self.live.insert(leader, l);
                    l
                }
            };
            if live {
                return Ok(Some(name.clone()));
            }
        }
        Ok(None)
    }
}

fn scan(
    instance: &str,
    locks: &Path,
    only: Option<&str>,
) -> io::Result<HashMap<String, Vec<NodeProcess>>> {
    let me = std::process::id();
    let want_instance = format!("BROCTLD_INSTANCE={instance}");
    let mut out: HashMap<String, Vec<NodeProcess>> = HashMap::new();
    // Read at the first process whose environment is hidden from us.
    let mut anchors: Option<Anchors> = None;
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Read once: for a hidden environment, to tie the process to a node.
        let mut stat = None;
        let names: Vec<String> = match environ(pid)? {
            Look::Gone => continue,
            Look::Got(env) => {
                let vars = || env.split(|b| *b == 0);
                if !vars().any(|v| v == want_instance.as_bytes()) {
                    continue;
                }
                vars()
                    .filter_map(|v| v.strip_prefix(b"BROCTLD_NODE="))
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .filter(|n| only.is_none_or(|o| o == n))
                    .collect()
            }
            Look::Unreadable => {
                let Some(st) = procstat::stat(pid)? else {
                    continue;
                };
                let a = match &mut anchors {
                    Some(a) => a,
                    None => anchors.insert(Anchors::read(locks, only)?),
                };
                let name = a.node_of(&st, pid)?;
                stat = Some(st);
                match name {
                    Some(name) => vec![name],
                    None => continue,
                }
            }
        };
        if names.is_empty() {
            continue;
        }
        let st = match stat {
            Some(st) => st,
            None => match procstat::stat(pid)? {
                Some(st) => st,
                None => continue,
            },
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
            out.entry(name).or_default().push(p);
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
        let lock = Path::new("/nonexistent/a.lock");
        assert!(!is_node_process(u32::MAX - 1, "a", "b", lock).unwrap());
    }

    #[test]
    fn permission_denied_is_no_answer() {
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(look::<()>(Err(denied)).unwrap(), Look::Unreadable);
        let gone = io::Error::from_raw_os_error(libc::ESRCH);
        assert_eq!(look::<()>(Err(gone)).unwrap(), Look::Gone);
        let other = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(look::<()>(Err(other)).is_err());
    }
}
