//! A non-blocking inotify instance that watches folders and reports the paths of the files in
//! them that an event named: for an event loop (the Supervisor's ready files and PID files, the
//! guardian's hold on output FIFOs). No polling: the kernel queues each event.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The inotify instance and the folders it watches.
#[derive(Debug)]
pub struct Inotify {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
}

impl Inotify {
    /// A new, non-blocking, close-on-exec inotify instance.
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = crate::syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))?;
        Ok(Inotify {
            // SAFETY: `fd` was just returned to us and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            dirs: HashMap::new(),
        })
    }

    /// The fd to poll (readable when events are queued).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches folder `dir` for the events in `mask` (`IN_*`) on the files in it.
    pub fn watch_dir(&mut self, dir: &Path, mask: u32) -> io::Result<()> {
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: `c` is a NUL-terminated path that lives across the call.
        let wd = crate::syscall!(inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask))?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Drains the queued events: the paths of the files they named (sorted, each once), and
    /// whether the kernel's queue overflowed (events were lost: every file must be looked at).
    pub fn changed(&mut self) -> (Vec<PathBuf>, bool) {
        let mut out = Vec::new();
        let mut overflow = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads at most buf.len() bytes into `buf`, which we own.
            let n = match crate::syscall!(read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len()
            )) {
                Ok(n) if n > 0 => n as usize,
                _ => break, // EAGAIN: drained
            };
            let header = std::mem::size_of::<libc::inotify_event>();
            let mut at = 0;
            while at + header <= n {
                // SAFETY: the kernel wrote whole events; read_unaligned copies the header out.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                overflow |= ev.mask & libc::IN_Q_OVERFLOW != 0;
                let name_end = (at + header + ev.len as usize).min(n);
                let name = &buf[at + header..name_end];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                if let Some(dir) = self.dirs.get(&ev.wd) {
                    out.push(dir.join(OsStr::from_bytes(name)));
                }
                at = name_end;
            }
        }
        out.sort();
        out.dedup();
        (out, overflow)
    }
}
