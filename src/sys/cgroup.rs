//! cgroup v2 filesystem operations: finding the unified hierarchy and our own place in it,
//! creating a group, moving a process into it, listing, signalling and killing its processes,
//! and reading whether it is populated (`cgroup.events`, which the kernel notifies through
//! `poll`/`epoll` with `EPOLLPRI` when it changes).
//!
//! A group's processes are those of its whole subtree: a process in it may make a sub-group
//! and move itself (or a child) there, and is still in the group. Listing, signalling and
//! `contains` read every `cgroup.procs` below it, `cgroup.kill` and `populated` already cover
//! the subtree, and [`Cgroup::remove_tree`] removes the sub-groups deepest first.
//!
//! Policy (which group a node gets, what a missing hierarchy means) is the Supervisor's, in
//! `supervisor/cgroups.rs`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where this process sits in the cgroup v2 hierarchy: the mount point of the unified
/// hierarchy joined with our path in it (`0::PATH` in `/proc/self/cgroup`). `None` if no
/// cgroup2 file system is mounted or we are in no v2 group.
pub fn own_dir() -> io::Result<Option<PathBuf>> {
    let Some((mount, root)) = v2_mount()? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(None);
    };
    // The mount shows the hierarchy from `root` down (a namespace or a bind mount).
    let rel = match Path::new(path).strip_prefix(&root) {
        Ok(r) => r.to_owned(),
        Err(_) => return Ok(None),
    };
    Ok(Some(mount.join(rel)))
}

/// The first cgroup2 mount in `/proc/self/mountinfo`: its mount point and the root of the
/// hierarchy it shows.
fn v2_mount() -> io::Result<Option<(PathBuf, PathBuf)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        if f.len() >= 5 {
            return Ok(Some((unescape(f[4]).into(), unescape(f[3]).into())));
        }
    }
    Ok(None)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'\\' && k + 3 < b.len() && b[k + 1..k + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[k + 1] - b'0') * 64 + (b[k + 2] - b'0') * 8 + (b[k + 3] - b'0');
            out.push(v);
            k += 4;
        } else {
            out.push(b[k]);
            k += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One cgroup v2 group, by its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The group at `dir` (nothing is checked or created).
    pub fn at(dir: PathBuf) -> Cgroup {
        Cgroup { dir }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The child group `name` (nothing is created).
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::at(self.dir.join(name))
    }

    /// Creates the group (an existing one is fine).
    pub fn create(&self) -> io::Result<()> {
        match std::fs::create_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the group exists.
    pub fn exists(&self) -> bool {
        self.dir.join("cgroup.procs").exists()
    }

    /// Removes the group (not its sub-groups: one that has any, or still has processes, is
    /// left as is, `EBUSY`), or nothing if it is gone.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound || is_busy(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes the group and every sub-group its processes made in it (`node-n/sub`), deepest
    /// first (a group with sub-groups cannot be removed). Returns whether the group is gone; a
    /// group (or sub-group) that still has processes (`EBUSY`) is left, with what is above it.
    pub fn remove_tree(&self) -> io::Result<bool> {
        for sub in self.subgroups()?.iter().rev() {
            match std::fs::remove_dir(sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound || is_busy(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if is_busy(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every group below this one, parents before their children (none if it is gone).
    pub fn subgroups(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut k = 0;
        let mut next = Some(self.dir.clone());
        while let Some(dir) = next {
            match std::fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd {
                        let e = e?;
                        // Interface files are regular files; every directory is a group.
                        if e.file_type()?.is_dir() {
                            out.push(e.path());
                        }
                    }
                }
                // Removed meanwhile (by its own processes, or an emptied sub-group).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            next = out.get(k).cloned();
            k += 1;
        }
        Ok(out)
    }

    /// Opens `cgroup.procs` for writing: a process writes `0` to it to move itself in.
    pub fn open_attach(&self) -> io::Result<OwnedFd> {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// Opens the group's directory: `clone3` with `CLONE_INTO_CGROUP` starts a process in it
    /// (and a child that could not be placed so opens its `cgroup.procs` to move itself in).
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY)
            .open(&self.dir)?;
        Ok(f.into())
    }

    /// Moves process `pid` into the group.
    pub fn attach(&self, pid: u32) -> io::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The processes in the group and in every sub-group below it (a process of a node that
    /// moved itself into `node-n/sub` is still the node's), in no order. A group that is gone
    /// has none.
    pub fn procs(&self) -> io::Result<Vec<u32>> {
        let mut out = read_procs(&self.dir)?;
        for sub in self.subgroups()? {
            out.extend(read_procs(&sub)?);
        }
        Ok(out)
    }

    /// Whether any process is in the group or below it (`populated` in `cgroup.events`). A
    /// group that is gone is not.
    pub fn populated(&self) -> io::Result<bool> {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(t) => Ok(parse_populated(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens `cgroup.events` to watch: the kernel wakes `epoll` (`EPOLLPRI`) on it whenever
    /// the group becomes populated or empty. Read it again with [`events_populated`].
    pub fn open_events(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.dir.join("cgroup.events"))
    }

    /// SIGKILLs every process in the group and below it at once (`cgroup.kill`, Linux 5.14),
    /// or, on an older kernel, each process listed in `cgroup.procs`.
    pub fn kill(&self) -> io::Result<()> {
        match self.write("cgroup.kill", "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.exists() => {
                self.signal(libc::SIGKILL)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `sig` to every process in the group and below it.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        for pid in self.procs()? {
            // SAFETY: kill takes a pid and a signal number. A process gone meanwhile: ESRCH.
            let _ = crate::syscall!(kill(pid as libc::pid_t, sig));
        }
        Ok(())
    }

    /// The controllers the group's children may use (`cgroup.controllers`).
    pub fn controllers(&self) -> io::Result<Vec<String>> {
        let t = std::fs::read_to_string(self.dir.join("cgroup.controllers"))?;
        Ok(t.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// The controllers enabled for the group's children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> io::Result<Vec<String>> {
        let t = std::fs::read_to_string(self.dir.join("cgroup.subtree_control"))?;
        Ok(t.split_ascii_whitespace().map(str::to_owned).collect())
    }

    /// Enables `controller` for the group's children.
    pub fn enable(&self, controller: &str) -> io::Result<()> {
        self.write("cgroup.subtree_control", &format!("+{controller}"))
    }

    /// Writes `value` to the group's interface file `file` (one write, as the kernel wants).
    pub fn write(&self, file: &str, value: &str) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.dir.join(file))?;
        f.write_all(value.as_bytes())
    }

    /// Whether `pid` is in this group or below it (listed in its `cgroup.procs` or a
    /// sub-group's). A process that is gone is not.
    pub fn contains(&self, pid: u32) -> io::Result<bool> {
        Ok(self.procs()?.contains(&pid))
    }
}

/// Reads `populated` from an open `cgroup.events` (from its start, so the kernel counts the
/// notification as seen).
pub fn events_populated(f: &mut File) -> io::Result<bool> {
    f.seek(SeekFrom::Start(0))?;
    let mut t = String::new();
    f.read_to_string(&mut t)?;
    Ok(parse_populated(&t))
}

/// Waits (at most `timeout`) until the group watched through `events` is empty.
pub fn wait_empty(events: &mut File, timeout: std::time::Duration) -> io::Result<bool> {
    let end = std::time::Instant::now() + timeout;
    loop {
        if !events_populated(events)? {
            return Ok(true);
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        match crate::syscall!(poll(
            &mut p,
            1,
            left.as_millis().min(i32::MAX as u128) as i32
        )) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The pids listed in the `cgroup.procs` of the group at `dir` (not its sub-groups'); none if
/// it is gone.
fn read_procs(dir: &Path) -> io::Result<Vec<u32>> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `rmdir` of a group that still has processes or sub-groups.
fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY))
}

fn parse_populated(t: &str) -> bool {
    t.lines().any(|l| l.trim() == "populated 1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populated_is_read_from_the_events_text() {
        assert!(parse_populated("populated 1\nfrozen 0\n"));
        assert!(!parse_populated("populated 0\nfrozen 0\n"));
        assert!(!parse_populated(""));
    }

    /// A group's processes are its whole subtree's, and sub-groups are listed parents first
    /// (removal goes the other way). A plain folder tree stands in for cgroupfs here.
    #[test]
    fn procs_cover_every_sub_group_and_sub_groups_come_parents_first() {
        let root = std::env::temp_dir().join(format!("broctld-cgtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(root.join("d")).unwrap();
        for (dir, pids) in [("", "1\n2\n"), ("a", "3\n"), ("a/b/c", "4\n"), ("d", "")] {
            std::fs::write(root.join(dir).join("cgroup.procs"), pids).unwrap();
        }
        let g = Cgroup::at(root.clone());
        let mut procs = g.procs().unwrap();
        procs.sort_unstable();
        assert_eq!(procs, vec![1, 2, 3, 4]);
        let subs = g.subgroups().unwrap();
        assert_eq!(subs.len(), 4);
        let at = |p: &str| subs.iter().position(|s| s == &root.join(p)).unwrap();
        assert!(at("a") < at("a/b") && at("a/b") < at("a/b/c"));
        assert!(Cgroup::at(root.join("gone")).procs().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }
}
