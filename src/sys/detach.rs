//! Starting a program detached from this process, as a *sibling* (`CLONE_PARENT`, see
//! [`super::vfork::spawn_beside`]): for the Supervisor, a child subreaper, which starts a new
//! guardian when its own has died. A double fork would not detach it: the grandchild is
//! reparented to the nearest subreaper, the Supervisor itself, so the new guardian would be
//! the Supervisor's child and die unnoticed.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in an argument or the environment",
        )
    })
}

fn pointers(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// Runs `program` with `args` (argv\[0\] is `program`) and this process's environment as a
/// child of our parent, in a session of its own, working directory `/`, with an empty signal
/// mask and exactly the fds `fds` gives (`(source, target)`: `source` open here ends on number
/// `target` there; every other fd of ours is close-on-exec). Returns its pid once it has
/// exec'd.
pub fn spawn_beside(program: &Path, args: &[OsString], fds: &[(RawFd, RawFd)]) -> io::Result<u32> {
    let prog = c_string(program.as_os_str().as_bytes().to_vec())?;
    let argv_s = std::iter::once(program.as_os_str().to_owned())
        .chain(args.iter().cloned())
        .map(|a| c_string(a.into_vec()))
        .collect::<io::Result<Vec<_>>>()?;
    let env_s = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(kv)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let argv = pointers(&argv_s);
    let envp = pointers(&env_s);
    // Every source above every target first, so no dup2 overwrites a source still to come.
    let high: Vec<(OwnedFd, RawFd)> = fds
        .iter()
        .map(|&(src, dst)| {
            // SAFETY: F_DUPFD_CLOEXEC on an fd the caller holds open returns a new fd that
            // nobody else owns.
            let n = crate::syscall!(fcntl(src, libc::F_DUPFD_CLOEXEC, 64))?;
            // SAFETY: just returned by fcntl, owned by nobody else.
            Ok((unsafe { OwnedFd::from_raw_fd(n) }, dst))
        })
        .collect::<io::Result<_>>()?;
    let moves: Vec<(RawFd, RawFd)> = high.iter().map(|(f, d)| (f.as_raw_fd(), *d)).collect();
    let root = c"/";
    let run = |_placed: bool| -> i32 {
        // SAFETY: async-signal-safe syscalls only, on data prepared above that stays alive
        // (and untouched) while the parent is suspended; no allocation (see vfork::spawn).
        unsafe {
            if libc::setsid() < 0 {
                return errno();
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for &(src, dst) in &moves {
                if libc::dup2(src, dst) < 0 {
                    return errno();
                }
            }
            if libc::chdir(root.as_ptr()) < 0 {
                return errno();
            }
            libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
            errno()
        }
    };
    // SAFETY: `run` makes only async-signal-safe calls on memory prepared above, never
    // allocates or unwinds, and ends in execve.
    let pid = unsafe { super::vfork::spawn_beside(&run) };
    drop(high);
    pid
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
