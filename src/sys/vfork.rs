//! Starting a process the way `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)`. The child
//! runs on a stack of its own inside the parent's memory while the calling thread is
//! suspended, so nothing is copied (no page tables, no copy-on-write faults after the fork)
//! and the child can read everything the parent prepared. The calling thread resumes as soon
//! as the child has exec'd (the kernel releases the shared memory at the point of no return of
//! `execve`) or exited; an error the child reports is a word it wrote in the shared memory
//! before exiting, read once the parent resumes: no pipe, no wait on a channel.
//!
//! On x86_64 `clone3` is used, which can also place the child in a cgroup before it runs
//! (`CLONE_INTO_CGROUP`: no migration of a running process, which takes the cgroup core's
//! write lock); where `clone3` is refused (before Linux 5.7, or a seccomp filter that answers
//! `ENOSYS`), glibc's `clone` is used and the child is told to move itself.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The child's stack. It runs only the set-up before `execve` (a few syscalls, no
/// allocation); pages it does not touch are never backed.
const STACK_SIZE: usize = 256 * 1024;

/// Set once `clone3` was refused as unsupported: every later spawn goes straight to `clone`.
static NO_CLONE3: AtomicBool = AtomicBool::new(false);

/// What the child runs: the set-up and the `execve`. Called with `placed`: whether the kernel
/// already put the process in the cgroup given to [`spawn`] (if not, and a cgroup was given,
/// the child must move itself). It returns only on failure, with the errno to report.
pub type ChildMain<'a> = &'a dyn Fn(bool) -> i32;

/// Shared between the suspended parent and the child.
struct Shared<'a> {
    run: ChildMain<'a>,
    placed: bool,
    /// The errno the child failed with (0: it exec'd).
    errno: AtomicI32,
}

/// The child's entry point, on its own stack. Never returns: `run` either execs or fails.
extern "C" fn child_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Shared` that `spawn` keeps alive (and does not touch) until this
    // process has exec'd or exited: the parent thread is suspended by CLONE_VFORK until then.
    let shared = unsafe { &*(arg as *const Shared) };
    let errno = (shared.run)(shared.placed);
    shared
        .errno
        .store(if errno == 0 { libc::EIO } else { errno }, Ordering::SeqCst);
    // SAFETY: _exit ends this process at once, running nothing of the parent's.
    unsafe { libc::_exit(127) }
}

/// A private anonymous mapping for the child's stack, unmapped when dropped (at thread exit).
struct Stack(*mut c_void);

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Stack(p))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the child that used it has exec'd
        // or exited (the parent resumes only then).
        unsafe { libc::munmap(self.0, STACK_SIZE) };
    }
}

/// Every signal blocked for the calling thread until dropped (the previous mask restored): a
/// handler of the parent must never run in the child, on memory the parent owns.
struct AllBlocked(libc::sigset_t);

impl AllBlocked {
    fn new() -> io::Result<AllBlocked> {
        // SAFETY: sigset_t is plain data; sigfillset fills it; pthread_sigmask reads one set
        // and writes the old one.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let r = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(AllBlocked(old))
        }
    }
}

impl Drop for AllBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Starts a process that runs `run` and then execs (see the module's doc); it is placed in
/// the cgroup whose directory is `cgroup` (by the kernel with `clone3`, else by itself: `run`
/// is told which). Returns its pid once it has exec'd; if `run` returned an errno instead,
/// the child is reaped and that error returned. The child is a normal child of this process
/// (`SIGCHLD` at its exit), reaped by the caller.
///
/// # Safety
///
/// `run` executes in the child, which shares this process's memory, on a small stack, while
/// this thread is suspended: it must make only async-signal-safe calls on data prepared
/// before this call, must not allocate, lock, panic or unwind, must not modify memory the
/// parent uses, and must end in `execve` (returning an errno only if that, or a step before
/// it, failed). Other threads of this process keep running meanwhile: they must not change
/// what `run` reads.
pub unsafe fn spawn(run: ChildMain<'_>, cgroup: Option<BorrowedFd<'_>>) -> io::Result<u32> {
    // SAFETY: as documented for this function.
    unsafe { spawn_flags(run, cgroup, 0) }
}

/// [`spawn`], but the child is a child of this process's *parent* (`CLONE_PARENT`), not
/// ours: it is detached from us at once, however we are (a child subreaper's double fork
/// would leave the grandchild with us), and its exit goes to our parent. EINVAL if this
/// process is the init of its pid namespace. An errno `run` returns is reported as for
/// [`spawn`] (the child is our parent's to reap).
///
/// # Safety
///
/// As for [`spawn`].
pub unsafe fn spawn_beside(run: ChildMain<'_>) -> io::Result<u32> {
    // SAFETY: as documented for this function.
    unsafe { spawn_flags(run, None, libc::CLONE_PARENT as u64) }
}

/// [`spawn`] with `extra` clone flags.
///
/// # Safety
///
/// As for [`spawn`].
unsafe fn spawn_flags(
    run: ChildMain<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    extra: u64,
) -> io::Result<u32> {
    // One stack per thread, kept: unmapping it after each spawn costs a TLB shootdown on the
    // CPU the child ran on.
    thread_local! {
        static STACK: std::cell::Cell<Option<Stack>> = const { std::cell::Cell::new(None) };
    }
    let stack = match STACK.take() {
        Some(s) => s,
        None => Stack::new()?,
    };
    // SAFETY: as documented for this function.
    let r = unsafe { spawn_on(run, cgroup, &stack, extra) };
    STACK.set(Some(stack));
    r
}

/// [`spawn`] with the child on `stack`.
///
/// # Safety
///
/// As for [`spawn`].
unsafe fn spawn_on(
    run: ChildMain<'_>,
    cgroup: Option<BorrowedFd<'_>>,
    stack: &Stack,
    extra: u64,
) -> io::Result<u32> {
    let mut shared = Shared {
        run,
        placed: false,
        errno: AtomicI32::new(0),
    };
    let blocked = AllBlocked::new()?;
    let mut pid = -1;
    // Extra flags go through glibc's clone only: an EINVAL from clone3 must not be taken for
    // "clone3 unsupported" (which would turn it off for every later spawn).
    if extra == 0 && !NO_CLONE3.load(Ordering::Relaxed) {
        shared.placed = cgroup.is_some();
        // SAFETY: `shared` and `stack` outlive the child's use of them (see child_entry).
        match unsafe { clone3(&mut shared, stack, cgroup.map(|c| c.as_raw_fd()), extra) } {
            Ok(p) => pid = p,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
                ) =>
            {
                NO_CLONE3.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    if pid < 0 {
        shared.placed = false;
        // SAFETY: as above; glibc's clone runs `child_entry` on the top of `stack`.
        pid = unsafe {
            libc::clone(
                child_entry,
                (stack.0 as *mut u8).add(STACK_SIZE).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | extra as libc::c_int,
                (&mut shared as *mut Shared).cast(),
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(blocked);
    match shared.errno.load(Ordering::SeqCst) {
        0 => Ok(pid as u32),
        errno => {
            let mut status = 0;
            // SAFETY: our own child, which has called _exit: reaped here, so the caller never
            // sees a pid it was not given. (A `CLONE_PARENT` child is our parent's: not ours
            // to reap.)
            if extra & libc::CLONE_PARENT as u64 == 0 {
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(CLONE_VM | CLONE_VFORK [| CLONE_INTO_CGROUP])` running `child_entry(shared)` on
/// `stack`. Returns the child's pid (after it has exec'd or exited).
///
/// # Safety
///
/// `shared` and `stack` must stay alive and untouched until this returns.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3(
    shared: &mut Shared,
    stack: &Stack,
    cgroup: Option<RawFd>,
    extra: u64,
) -> io::Result<i32> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let mut flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | extra;
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.0 as u64,
        stack_size: STACK_SIZE as u64,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup.map_or(0, |fd| fd as u64),
    };
    let entry: extern "C" fn(*mut c_void) -> libc::c_int = child_entry;
    let arg: *mut Shared = shared;
    let ret: i64;
    // SAFETY: the parent's side is a plain syscall (rcx and r11 clobbered by `syscall`). The
    // child (rax == 0) starts on the top of `stack` (16-byte aligned: the mapping is
    // page-aligned and its size a multiple of 16) with the parent's other registers: it calls
    // `child_entry(arg)` (r12, r13), which never returns; the `ud2` after it is never reached.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(ret as i32)
}

/// Without an x86_64 `clone3` trampoline: always glibc's `clone`.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3(_: &mut Shared, _: &Stack, _: Option<RawFd>, _: u64) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child that fails before its exec is reported with its errno.
    #[test]
    fn a_child_that_fails_before_exec_reports_its_errno() {
        let run = |_placed: bool| libc::ENOEXEC;
        // SAFETY: the child only returns an errno.
        let e = unsafe { spawn(&run, None) }.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOEXEC));
    }

    /// A child that execs is returned by pid, and runs the program it exec'd.
    #[test]
    fn a_child_that_execs_returns_its_pid() {
        let path = c"/bin/sh";
        let argv = [
            c"sh".as_ptr(),
            c"-c".as_ptr(),
            c"exit 7".as_ptr(),
            std::ptr::null(),
        ];
        let envp = [std::ptr::null::<libc::c_char>()];
        let run = move |_placed: bool| {
            // SAFETY: NUL-terminated path and NULL-terminated arrays prepared before spawn.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() }
        };
        // SAFETY: the child only execs.
        let pid = unsafe { spawn(&run, None) }.unwrap();
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(
            unsafe { libc::waitpid(pid as i32, &mut status, 0) },
            pid as i32
        );
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7);
    }
}
