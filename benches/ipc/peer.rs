//! Two-process plumbing for the floors: a forked peer process, CPU pinning, and a page of
//! `MAP_SHARED | MAP_ANONYMOUS` memory both processes see.
//!
//! The peer runs a closure right after `fork` and leaves with `_exit`: it allocates nothing and
//! makes raw syscalls only, so forking from the bench process is safe. It dies with its parent
//! (`PR_SET_PDEATHSIG`), and [`Peer`]'s `Drop` kills and reaps it, so no teardown can hang.

use std::sync::atomic::{AtomicU32, AtomicU64};

/// Where each side of a two-process bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Both processes may run on any allowed CPU (the scheduler decides).
    Unpinned,
    /// Both processes pinned to the same CPU: every hand-over is a context switch.
    SameCpu,
    /// The bench on one CPU, its peer on another: every hand-over is a cross-CPU wake.
    CrossCpu,
}

impl Pin {
    /// Every variant, in report order.
    pub const ALL: [Pin; 3] = [Pin::Unpinned, Pin::SameCpu, Pin::CrossCpu];

    /// The name used in bench ids.
    pub fn label(self) -> &'static str {
        match self {
            Pin::Unpinned => "unpinned",
            Pin::SameCpu => "same-cpu",
            Pin::CrossCpu => "cross-cpu",
        }
    }

    /// The CPU sets for (bench, peer), or `None` if this machine cannot do the variant.
    pub fn sets(self, cpus: &Cpus) -> Option<(CpuSet, CpuSet)> {
        match self {
            Pin::Unpinned => Some((cpus.original, cpus.original)),
            Pin::SameCpu => Some((CpuSet::one(cpus.list[0]), CpuSet::one(cpus.list[0]))),
            Pin::CrossCpu if cpus.list.len() >= 2 => {
                Some((CpuSet::one(cpus.list[0]), CpuSet::one(cpus.list[1])))
            }
            Pin::CrossCpu => None,
        }
    }
}

/// A `cpu_set_t`, prepared before a fork so the child only has to pass it to the kernel.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// A set holding `cpu` alone.
    pub fn one(cpu: usize) -> CpuSet {
        // SAFETY: cpu_set_t is plain data and all-zero is the empty set.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` came from the kernel's own affinity mask, so it is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut s) };
        CpuSet(s)
    }

    /// Applies the set to process (or thread) `pid`; 0 is the caller. Async-signal-safe.
    pub fn apply(&self, pid: libc::pid_t) -> std::io::Result<()> {
        // SAFETY: a valid cpu_set_t and its exact size.
        let r = unsafe {
            libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &self.0)
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Applies the set to every thread of process `pid` (through `/proc/PID/task`).
    pub fn apply_all_threads(&self, pid: u32) -> std::io::Result<()> {
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
                self.apply(tid)?;
            }
        }
        Ok(())
    }
}

/// The CPUs this process may use when the bench starts.
pub struct Cpus {
    /// The original mask, restored after every pinned bench.
    pub original: CpuSet,
    /// The CPUs in it, lowest first.
    pub list: Vec<usize>,
}

impl Cpus {
    /// Reads the calling process's affinity mask.
    pub fn current() -> Cpus {
        // SAFETY: plain data, then filled by the kernel.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer and its size.
        let r =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut s) };
        assert_eq!(
            r,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        let list = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: i is below CPU_SETSIZE.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &s) })
            .collect();
        Cpus {
            original: CpuSet(s),
            list,
        }
    }

    /// Puts the bench process back on its original CPUs.
    pub fn restore(&self) {
        let _ = self.original.apply(0);
    }
}

/// One page of memory shared with forked peers.
pub struct SharedPage {
    ptr: *mut u8,
}

/// Byte offsets of the words used in the shared page, each on its own cache line.
pub const SPIN: usize = 0;
/// The futex word of the futex and doorbell floors.
pub const WORD: usize = 64;
/// The doorbell flag of the doorbell floor.
pub const BELL: usize = 128;
/// Set to 1 to ask the peer to leave.
pub const STOP: usize = 192;

impl SharedPage {
    /// Maps a zeroed page `MAP_SHARED | MAP_ANONYMOUS`: a fork shares it.
    pub fn new() -> SharedPage {
        // SAFETY: an anonymous mapping; no fd, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        SharedPage { ptr: p.cast() }
    }

    /// The 64-bit atomic at `off`.
    pub fn u64(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= 4096 && off.is_multiple_of(8));
        // SAFETY: in bounds, aligned, and the page lives as long as `self`; every access to it
        // from either process is atomic.
        unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
    }

    /// The 32-bit atomic at `off`.
    pub fn u32(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= 4096 && off.is_multiple_of(4));
        // SAFETY: as for `u64`.
        unsafe { &*(self.ptr.add(off) as *const AtomicU32) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), 4096) };
    }
}

/// A forked peer process.
pub struct Peer {
    pid: libc::pid_t,
    fds: Vec<libc::c_int>,
}

impl Peer {
    /// Forks; the child applies `cpus`, runs `body` and exits. The parent gets the peer and
    /// closes `close_in_parent` (the child's ends); the child closes `close_in_child` first.
    pub fn fork(
        cpus: CpuSet,
        close_in_child: &[libc::c_int],
        close_in_parent: &[libc::c_int],
        keep_in_parent: &[libc::c_int],
        body: impl FnOnce(),
    ) -> Peer {
        // SAFETY: the child runs only `body` (raw syscalls, no allocation) then `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: async-signal-safe calls only, on values prepared before the fork.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() == 1 {
                    libc::_exit(0);
                }
                for &fd in close_in_child {
                    libc::close(fd);
                }
            }
            let _ = cpus.apply(0);
            body();
            // SAFETY: leaves without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(0) };
        }
        for &fd in close_in_parent {
            // SAFETY: an fd the parent owns and no longer needs.
            unsafe { libc::close(fd) };
        }
        Peer {
            pid,
            fds: keep_in_parent.to_vec(),
        }
    }

    /// Whether the peer still runs (it is our child, so a dead one is a zombie until reaped).
    pub fn alive(&self) -> bool {
        let mut st = 0;
        // SAFETY: our own child; WNOHANG never blocks.
        unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) == 0 }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: our fds and our own child.
        unsafe {
            for &fd in &self.fds {
                libc::close(fd);
            }
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.pid, &mut st, 0);
        }
    }
}

/// Writes one byte, retrying on EINTR. `false` if the other side is gone.
pub fn write1(fd: libc::c_int) -> bool {
    let b = [1u8];
    loop {
        // SAFETY: one byte from a live buffer.
        let r = unsafe { libc::write(fd, b.as_ptr().cast(), 1) };
        if r == 1 {
            return true;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return false;
    }
}

/// Reads one byte, retrying on EINTR. `false` on EOF or error.
pub fn read1(fd: libc::c_int) -> bool {
    let mut b = [0u8];
    loop {
        // SAFETY: one byte into a live buffer.
        let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if r == 1 {
            return true;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return false;
    }
}
