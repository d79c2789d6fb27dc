//! The POSIX layer: create, open, check and map a named shared-memory object.
//!
//! This is the only module that calls `mmap` or turns a pointer into the region into a Rust
//! reference. It hands out references only to types that implement [`SharedPod`]: `repr(C)`
//! structs made solely of atomics, valid for every bit pattern, so a concurrent (or hostile)
//! writer in another process can never produce undefined behaviour in this one.

use crate::sys::checked::{self, CheckError, Kind};
use nix::fcntl::OFlag;
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;
use zerocopy::{FromBytes, KnownLayout};

/// Types that may be viewed in place inside a shared mapping.
///
/// # Safety
///
/// An implementor must be `repr(C)` (or `repr(transparent)`), contain only atomics or arrays of
/// atomics (so every byte is inside an `UnsafeCell` and may change under a shared reference), and
/// be valid for any bit pattern (enforced by the `FromBytes` bound where it is used).
pub unsafe trait SharedPod: FromBytes + KnownLayout + Sync {}

// SAFETY: atomics are repr(transparent) over an UnsafeCell of an integer; any bit pattern is valid.
unsafe impl SharedPod for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl SharedPod for std::sync::atomic::AtomicU32 {}

/// Errors from creating or opening a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A region of that name already exists (from `create`).
    #[error("shared memory region {path} already exists")]
    Exists {
        /// `/dev/shm/NAME`.
        path: PathBuf,
    },
    /// No region of that name exists (from `open_existing`).
    #[error("shared memory region {path} does not exist")]
    Missing {
        /// `/dev/shm/NAME`.
        path: PathBuf,
    },
    /// Owner, mode, type or symlink check failed.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The object's size is not one we accept.
    #[error("shared memory region {path} is {size} bytes, expected {expected}: it was made by another program or another broctld version; stop whatever uses it, then remove it")]
    Size {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// What was expected (a number or a range).
        expected: String,
    },
    /// A syscall failed.
    #[error("shared memory region {path}: {what}: {source}")]
    Io {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// Which step failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An offset or count does not fit the mapping or is misaligned (a layout bug or a lie in
    /// the header).
    #[error("shared memory region {path}: {what} at offset {offset} (x{count}) does not fit {len} bytes or is misaligned")]
    OutOfBounds {
        /// `/dev/shm/NAME`.
        path: PathBuf,
        /// The type being viewed.
        what: &'static str,
        /// Its offset.
        offset: usize,
        /// How many.
        count: usize,
        /// The mapping's length.
        len: usize,
    },
}

/// A mapped shared-memory object.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    name: String,
    path: PathBuf,
}

// SAFETY: the mapping is plain memory, valid until drop; all access to it goes through
// `SharedPod` references (atomics), which are Sync.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

fn shm_path(name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(name.trim_start_matches('/'))
}

impl Region {
    /// Creates a new object `name` (which must start with `/`) of `size` bytes, mode 0600, and
    /// maps it. Fails with [`RegionError::Exists`] if the name is taken: it never opens, reuses
    /// or truncates someone else's object.
    pub fn create(name: &str, size: usize) -> Result<Region, RegionError> {
        let path = shm_path(name);
        let io = |what, e: nix::Error| RegionError::Io {
            path: path.clone(),
            what,
            source: io::Error::from(e),
        };
        let fd = match mman::shm_open(
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => fd,
            Err(nix::Error::EEXIST) => return Err(RegionError::Exists { path }),
            Err(e) => return Err(io("shm_open", e)),
        };
        let file = File::from(fd);
        // umask may have cleared bits but never adds any; set the mode exactly anyway.
        // SAFETY: a live fd and a mode.
        crate::syscall!(fchmod(file.as_raw_fd(), 0o600)).map_err(|source| RegionError::Io {
            path: path.clone(),
            what: "fchmod",
            source,
        })?;
        checked::verify(&path, &file, Kind::File, 0o077)?;
        file.set_len(size as u64)
            .map_err(|source| RegionError::Io {
                path: path.clone(),
                what: "ftruncate",
                source,
            })?;
        Self::map(file, size, name, path)
    }

    /// Opens an existing object and maps it, after checking that it is a regular file owned by
    /// us with no group/other permission bits and a size in `min..=max`.
    pub fn open_existing(name: &str, min: usize, max: usize) -> Result<Region, RegionError> {
        let path = shm_path(name);
        let fd = match mman::shm_open(name, OFlag::O_RDWR | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Err(RegionError::Missing { path }),
            Err(nix::Error::ELOOP) => return Err(CheckError::Symlink { path }.into()),
            Err(e) => {
                return Err(RegionError::Io {
                    path,
                    what: "shm_open",
                    source: e.into(),
                })
            }
        };
        let file = File::from(fd);
        let st = checked::verify(&path, &file, Kind::File, 0o077)?;
        if st.size < min as u64 || st.size > max as u64 {
            return Err(RegionError::Size {
                path,
                size: st.size,
                expected: format!("{min}..={max}"),
            });
        }
        Self::map(file, st.size as usize, name, path)
    }

    fn map(file: File, size: usize, name: &str, path: PathBuf) -> Result<Region, RegionError> {
        let len = NonZeroUsize::new(size).ok_or_else(|| RegionError::Size {
            path: path.clone(),
            size: 0,
            expected: "more than 0".into(),
        })?;
        // SAFETY: a fresh shared mapping of a file we hold open; no address hint, so it cannot
        // overlap existing memory. The fd may be closed afterwards: the mapping keeps the
        // object alive.
        let ptr = unsafe {
            mman::mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| RegionError::Io {
            path: path.clone(),
            what: "mmap",
            source: e.into(),
        })?;
        Ok(Region {
            ptr: ptr.cast(),
            len: size,
            name: name.to_owned(),
            path,
        })
    }

    /// Removes the name (the memory lives on until every mapping is gone).
    pub fn unlink(name: &str) -> io::Result<()> {
        mman::shm_unlink(name).map_err(io::Error::from)
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a mapped region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The object's name (`/broctld...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's path under `/dev/shm`.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Views `count` consecutive `T` starting at byte `offset`, after checking bounds and
    /// alignment.
    pub fn slice<T: SharedPod>(&self, offset: usize, count: usize) -> Result<&[T], RegionError> {
        let size = std::mem::size_of::<T>();
        let align = std::mem::align_of::<T>();
        let end = count.checked_mul(size).and_then(|b| b.checked_add(offset));
        let base = self.ptr.as_ptr() as usize;
        match end {
            Some(end) if end <= self.len && (base + offset).is_multiple_of(align) => {}
            _ => {
                return Err(RegionError::OutOfBounds {
                    path: self.path.clone(),
                    what: std::any::type_name::<T>(),
                    offset,
                    count,
                    len: self.len,
                })
            }
        }
        // SAFETY: the range [offset, offset + count * size) lies inside the live mapping and is
        // aligned for T (checked above). T is SharedPod: made only of atomics and valid for any
        // bit pattern, so viewing bytes that another process may write concurrently is sound
        // (all accesses are atomic). The slice borrows `self`, so it cannot outlive the mapping.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset) as *const T, count) })
    }

    /// Views one `T` at byte `offset` (see [`Region::slice`]).
    pub fn get<T: SharedPod>(&self, offset: usize) -> Result<&T, RegionError> {
        Ok(&self.slice::<T>(offset, 1)?[0])
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; every reference handed out borrowed
        // `self`, so none outlives this call.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
    }
}
