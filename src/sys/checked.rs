//! Opening files in shared places (`/dev/shm`, the runtime dir) without trusting them.
//!
//! Every open here refuses symlinks (`O_NOFOLLOW`), then `fstat`s the descriptor it got (never
//! the path, which could be swapped in between) and checks its type, owner and permission bits.
//! A name squatted by another user or left world-writable is refused with an error that names
//! the file and says what to do.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What kind of file an open expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A named pipe.
    Fifo,
    /// A directory.
    Dir,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Fifo => "FIFO",
            Kind::Dir => "directory",
        }
    }

    fn matches(self, mode: libc::mode_t) -> bool {
        let fmt = mode & libc::S_IFMT;
        match self {
            Kind::File => fmt == libc::S_IFREG,
            Kind::Fifo => fmt == libc::S_IFIFO,
            Kind::Dir => fmt == libc::S_IFDIR,
        }
    }
}

fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFIFO => "FIFO",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "unknown file type",
    }
}

/// Why a file in a shared place was refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The syscall itself failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path is a symbolic link (refused, never followed).
    #[error(
        "{path} is a symbolic link; broctld never follows links in its runtime files: remove it"
    )]
    Symlink {
        /// The file.
        path: PathBuf,
    },
    /// The file is not of the expected type.
    #[error("{path} is a {found}, expected a {expected}: remove it if no broctld uses it")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// The file belongs to another user.
    #[error("{path} is owned by uid {owner}, not by this user (uid {expected}): another user created it; remove it or use another --runtime-dir/--instance")]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        expected: u32,
    },
    /// Group or other users may access (or write) the file.
    #[error("{path} has mode {mode:04o}, which lets other users in; run `chmod {fix:o} {path}` or remove it")]
    BadMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode we would accept.
        fix: u32,
    },
}

impl CheckError {
    /// The OS error behind this failure, if any.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            CheckError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The facts `fstat` gave about an opened file.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Full mode (type and permission bits).
    pub mode: u32,
}

fn raw_fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: `st` is plain old data that fstat fills in; a zeroed stat is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a valid out-pointer.
    crate::syscall!(fstat(fd.as_raw_fd(), &mut st))?;
    Ok(st)
}

/// Checks an fstat result: type, owner == our euid, and no permission bits in `forbidden`.
pub fn verify(
    path: &Path,
    fd: &impl AsRawFd,
    kind: Kind,
    forbidden: u32,
) -> Result<Stat, CheckError> {
    let st = raw_fstat(fd).map_err(|source| CheckError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !kind.matches(st.st_mode) {
        return Err(CheckError::WrongType {
            path: path.to_owned(),
            expected: kind.name(),
            found: kind_of(st.st_mode),
        });
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me {
        return Err(CheckError::WrongOwner {
            path: path.to_owned(),
            owner: st.st_uid,
            expected: me,
        });
    }
    let perm = st.st_mode & 0o7777;
    if perm & forbidden != 0 {
        return Err(CheckError::BadMode {
            path: path.to_owned(),
            mode: perm,
            fix: perm & !forbidden & 0o777,
        });
    }
    Ok(Stat {
        size: st.st_size as u64,
        ino: st.st_ino,
        dev: st.st_dev,
        mode: st.st_mode,
    })
}

pub(crate) fn cpath(path: &Path) -> Result<std::ffi::CString, CheckError> {
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| CheckError::Io {
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
    })
}

/// Opens `path` with `flags | O_NOFOLLOW | O_CLOEXEC` (and `mode` when creating), then verifies
/// it with [`verify`]. A symlink is reported as [`CheckError::Symlink`].
pub fn open(
    path: &Path,
    flags: i32,
    mode: u32,
    kind: Kind,
    forbidden: u32,
) -> Result<(File, Stat), CheckError> {
    let c = cpath(path)?;
    // SAFETY: a NUL-terminated path, flags and a mode; returns a new fd or -1.
    let fd = crate::syscall!(open(
        c.as_ptr(),
        flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        mode as libc::c_uint
    ))
    .map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            CheckError::Symlink {
                path: path.to_owned(),
            }
        } else {
            CheckError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    // SAFETY: the fd was just returned by open and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let st = verify(path, &file, kind, forbidden)?;
    Ok((file, st))
}

/// Makes sure `dir` is a directory owned by us and writable by nobody else, creating it (and
/// missing parents) with mode 0700 if needed. A symlink is refused.
pub fn private_dir(dir: &Path) -> Result<(), CheckError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(CheckError::Symlink {
                path: dir.to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CheckError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Err(source) => {
            return Err(CheckError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    }
    let (_f, _st) = open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0, Kind::Dir, 0o022).map_err(
        |e| match e {
            CheckError::Io { path, source } if source.raw_os_error() == Some(libc::ENOTDIR) => {
                CheckError::WrongType {
                    path,
                    expected: "directory",
                    found: "non-directory",
                }
            }
            other => other,
        },
    )?;
    Ok(())
}

/// Opens (creating, mode 0600) a log file for appending, refusing a symlink, another owner, or
/// a file others may write.
pub fn open_log(path: &Path) -> Result<File, CheckError> {
    let (f, _) = open(
        path,
        libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
        0o600,
        Kind::File,
        0o022,
    )?;
    Ok(f)
}
