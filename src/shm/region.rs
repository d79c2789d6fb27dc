//! The POSIX layer: create, open, check and map a named shared-memory object.
//!
//! This is the only module that calls `mmap` or turns a pointer into the region into a Rust
//! reference. It hands out references only to types that implement [`SharedPod`]: `repr(C)`
//! structs made solely of atomics, valid for every bit pattern, so a concurrent (or hostile)
//! writer in another process can never produce undefined behaviour in this one.
//!
//! Another process with our uid can shrink the object under a live mapping; touching a page
//! past its new end raises SIGBUS, which would kill the Supervisor or a Main. Every mapping is
//! therefore registered with a SIGBUS handler (installed once per process): a fault inside a
//! registered mapping replaces that whole mapping with anonymous zeroed memory (`MAP_FIXED`),
//! so the faulting access retries and succeeds, and marks the region damaged
//! ([`Region::damaged`]); the owner then rebuilds or reports it. A fault anywhere else goes
//! to the previous handler (std's guard-page check) and then to the default action.

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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use zerocopy::{FromBytes, KnownLayout};

/// Mappings the SIGBUS handler can repair at once (more are mapped unguarded).
const GUARDED: usize = 64;

/// One guarded mapping: start address (0 = unused entry), length, and whether it was hit.
struct Guard {
    start: AtomicUsize,
    len: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_GUARD: Guard = Guard {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};

static GUARDS: [Guard; GUARDED] = [EMPTY_GUARD; GUARDED];
/// How many SIGBUS faults were repaired in this process.
static REPAIRED: AtomicUsize = AtomicUsize::new(0);

/// The SIGBUS action that was in place before ours (std's guard-page handler or the default).
struct OldAction(libc::sigaction);
// SAFETY: plain data (a handler address, a mask and flags), written once before our handler
// can run and only read afterwards.
unsafe impl Sync for OldAction {}
// SAFETY: as above.
unsafe impl Send for OldAction {}
static OLD_SIGBUS: OnceLock<OldAction> = OnceLock::new();

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in &GUARDS {
        let start = g.start.load(Ordering::Acquire);
        let len = g.len.load(Ordering::Acquire);
        if start == 0 || start == RESERVED || addr < start || addr >= start.wrapping_add(len) {
            continue;
        }
        // SAFETY: [start, start + len) is one of our live mappings (registered after mmap,
        // unregistered before munmap); replacing it with private anonymous memory of the same
        // size keeps every reference into it valid (atomics over zeroed, writable memory).
        // mmap is a plain system call (no lock, no allocation), safe to make in a handler.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            g.hit.store(true, Ordering::Release);
            REPAIRED.fetch_add(1, Ordering::AcqRel);
            return;
        }
    }
    // Not ours (or the repair failed): put the previous action back and return; the access
    // faults again and is handled (or kills the process) as if we had never been here.
    let old = OLD_SIGBUS.get().map(|o| &o.0 as *const libc::sigaction);
    // SAFETY: restoring a sigaction that the kernel gave us, or the default action.
    unsafe {
        match old {
            Some(o) => libc::sigaction(sig, o, std::ptr::null_mut()),
            None => {
                libc::signal(sig, libc::SIG_DFL);
                0
            }
        };
    }
}

fn install_sigbus_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: zeroed sigaction structs are valid; we fill in a handler with the SA_SIGINFO
        // signature and keep the previous action for faults that are not ours.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            let _ = OLD_SIGBUS.set(OldAction(old));
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
        }
    });
}

/// The `start` of an entry being filled in: taken, but not yet a mapping the handler may
/// repair (no address is at or above it, so the handler's range check skips it).
const RESERVED: usize = usize::MAX;

/// Registers a mapping with the SIGBUS handler; `None` if every entry is in use. An entry is
/// claimed first (`0` to [`RESERVED`]), then filled in, then published with its `start`: no
/// other thread can write its length in between, and the handler never sees a `start` without
/// its own length.
fn guard(start: usize, len: usize) -> Option<usize> {
    install_sigbus_handler();
    for (k, g) in GUARDS.iter().enumerate() {
        if g.start
            .compare_exchange(0, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            continue;
        }
        g.len.store(len, Ordering::Release);
        g.hit.store(false, Ordering::Release);
        g.start.store(start, Ordering::Release);
        return Some(k);
    }
    None
}

/// How many times this process repaired a region after a SIGBUS (see the module docs).
pub fn sigbus_repairs() -> usize {
    REPAIRED.load(Ordering::Acquire)
}

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
    /// The object's (device, inode), to tell whether the name still names it.
    id: (u64, u64),
    /// Our entry in the SIGBUS handler's table.
    guard: Option<usize>,
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
        let st = checked::verify(&path, &file, Kind::File, 0o077)?;
        file.set_len(size as u64)
            .map_err(|source| RegionError::Io {
                path: path.clone(),
                what: "ftruncate",
                source,
            })?;
        Self::map(file, size, name, path, (st.dev, st.ino))
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
        Self::map(file, st.size as usize, name, path, (st.dev, st.ino))
    }

    fn map(
        file: File,
        size: usize,
        name: &str,
        path: PathBuf,
        id: (u64, u64),
    ) -> Result<Region, RegionError> {
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
            id,
            guard: guard(ptr.as_ptr() as usize, size),
        })
    }

    /// Whether a SIGBUS hit this mapping (the object was shrunk under it): its contents are
    /// now zeroed private memory, no longer shared with anyone.
    pub fn damaged(&self) -> bool {
        self.guard
            .is_some_and(|k| GUARDS[k].hit.load(Ordering::Acquire))
    }

    /// Whether `/dev/shm/NAME` still names the object we mapped (false if it was removed or
    /// replaced; an error of the check counts as false only for "not there").
    pub fn still_named(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => Ok((m.dev(), m.ino()) == self.id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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
        if let Some(k) = self.guard {
            GUARDS[k].start.store(0, Ordering::Release);
        }
        // SAFETY: ptr/len are exactly what mmap returned; every reference handed out borrowed
        // `self`, so none outlives this call.
        let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two threads registering mappings at once must never leave an entry with one's start
    /// and the other's length: the SIGBUS handler would then replace memory that is not a
    /// mapping of ours (or only part of one).
    #[test]
    fn concurrent_guards_never_mix_start_and_length() {
        let threads: Vec<_> = (1..=4usize)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut mixed = 0;
                    for i in 0..1_000_000usize {
                        // Fake, distinct addresses: the handler is never invoked here.
                        let start = (t << 40) | (i << 12);
                        let len = t * 4096;
                        if let Some(k) = guard(start, len) {
                            if GUARDS[k].len.load(Ordering::Acquire) != len {
                                mixed += 1;
                            }
                            GUARDS[k].start.store(0, Ordering::Release);
                        }
                    }
                    mixed
                })
            })
            .collect();
        let mixed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(mixed, 0, "entries with another mapping's length");
    }
}
