//! Where an instance lives: its runtime dir, lock file, doorbell FIFO, log and shm name.
//!
//! Files are kept in `RUNTIME_DIR/INSTANCE/`. The shm name includes the uid, the instance name
//! and a hash of the runtime dir, so two users, two instances, or two test runs with their own
//! runtime dirs never collide in the host-wide `/dev/shm`.

use crate::sys::checked::{self, CheckError};
use std::path::{Path, PathBuf};

/// Why an instance could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The name has characters outside `[A-Za-z0-9_.-]` or is too long.
    #[error("invalid instance name '{0}': use 1 to 64 of A-Z a-z 0-9 _ . - (and not '.' or '..')")]
    BadName(String),
    /// The runtime dir failed its checks.
    #[error("runtime dir: {0}")]
    Dir(#[from] CheckError),
}

/// One broctld instance: a name and a runtime dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    name: String,
    runtime_dir: PathBuf,
}

/// Whether `s` is a valid instance name.
pub fn valid_instance_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

impl Instance {
    /// An instance called `name` under `runtime_dir` (made absolute against the current dir).
    pub fn new(name: &str, runtime_dir: &Path) -> Result<Instance, InstanceError> {
        if !valid_instance_name(name) {
            return Err(InstanceError::BadName(name.to_owned()));
        }
        let runtime_dir = if runtime_dir.is_absolute() {
            runtime_dir.to_owned()
        } else {
            std::env::current_dir()
                .map(|d| d.join(runtime_dir))
                .unwrap_or_else(|_| runtime_dir.to_owned())
        };
        Ok(Instance {
            name: name.to_owned(),
            runtime_dir,
        })
    }

    /// The default runtime dir: `$BROCTLD_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/broctld`, else
    /// `/run/broctld` for root, else `/tmp/broctld-$UID`.
    pub fn default_runtime_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("BROCTLD_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("broctld");
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid == 0 {
            PathBuf::from("/run/broctld")
        } else {
            PathBuf::from(format!("/tmp/broctld-{uid}"))
        }
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The runtime dir (shared by instances).
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// `RUNTIME_DIR/INSTANCE`.
    pub fn dir(&self) -> PathBuf {
        self.runtime_dir.join(&self.name)
    }

    /// The lock file the Supervisor holds while it lives.
    pub fn lock_path(&self) -> PathBuf {
        self.dir().join("supervisor.lock")
    }

    /// The doorbell FIFO.
    pub fn bell_path(&self) -> PathBuf {
        self.dir().join("doorbell")
    }

    /// The Supervisor's log (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("supervisor.log")
    }

    /// The POSIX shm name of the region.
    pub fn shm_name(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.runtime_dir.as_os_str().as_encoded_bytes() {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        format!("/broctld.{uid}.{}.{h:08x}", self.name)
    }

    /// Creates (0700) or checks the runtime dir and the instance dir: directories, ours, not
    /// writable by group or others, not symlinks.
    pub fn ensure_dirs(&self) -> Result<(), InstanceError> {
        checked::private_dir(&self.runtime_dir)?;
        checked::private_dir(&self.dir())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Instance::new("ok-1.a_b", Path::new("/tmp/x")).is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(Instance::new(bad, Path::new("/tmp/x")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shm_names_differ_by_runtime_dir_and_name() {
        let a = Instance::new("a", Path::new("/tmp/one")).unwrap();
        let b = Instance::new("a", Path::new("/tmp/two")).unwrap();
        let c = Instance::new("c", Path::new("/tmp/one")).unwrap();
        assert_ne!(a.shm_name(), b.shm_name());
        assert_ne!(a.shm_name(), c.shm_name());
        assert!(a.shm_name().starts_with("/broctld."));
    }
}
