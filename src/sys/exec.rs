//! Running a program exactly: `execve` of the given path, nothing else.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Makes `cmd` run `path` with arguments `args` (after `argv[0]`, the path) and our
/// environment by `execve` itself, in the child, after std's set-up (stdio, process group,
/// signal mask), never through `execvp`, which retries a file the kernel refuses as a program
/// (`ENOEXEC`) as a shell script: a file that is not a program then fails to spawn with its
/// real error. The child is also sent SIGKILL if the thread that started it dies first
/// (`PR_SET_PDEATHSIG`). Whatever `cmd` was told to run is ignored, and so are environment
/// changes made on it.
pub fn exactly(cmd: &mut Command, path: &Path, args: &[&str]) -> io::Result<()> {
    let nul = |e: std::ffi::NulError| io::Error::new(io::ErrorKind::InvalidInput, e);
    let prog = CString::new(path.as_os_str().as_bytes()).map_err(nul)?;
    let mut argv = vec![prog.clone()];
    for a in args {
        argv.push(CString::new(*a).map_err(nul)?);
    }
    let envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut b = k.as_bytes().to_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            CString::new(b).ok()
        })
        .collect();
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe calls
    // (prctl, execve) on memory prepared before the fork: the CStrings and the pointer arrays
    // it owns, built here and only read in the child.
    unsafe {
        let argv_p: Vec<usize> = argv
            .iter()
            .map(|c| c.as_ptr() as usize)
            .chain([0])
            .collect();
        let envp_p: Vec<usize> = envp
            .iter()
            .map(|c| c.as_ptr() as usize)
            .chain([0])
            .collect();
        cmd.pre_exec(move || {
            // Keep the strings alive as long as the pointers.
            let _ = (&argv, &envp);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::execve(
                prog.as_ptr(),
                argv_p.as_ptr() as *const *const libc::c_char,
                envp_p.as_ptr() as *const *const libc::c_char,
            );
            Err(io::Error::last_os_error())
        });
    }
    Ok(())
}
