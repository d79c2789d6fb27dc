//! Where an instance lives: its runtime dir, lock file, doorbell FIFO, log and shm name.
//!
//! Files are kept in `RUNTIME_DIR/INSTANCE/`. The runtime dir is canonicalised first (symlinks
//! resolved, `//`, `/./` and a trailing `/` gone), so every spelling of one directory names one
//! instance. The shm name includes the uid, the instance name and a 128-bit hash of the
//! canonical runtime dir and the name; the region also records that identity in full and a
//! Main or Supervisor refuses a region whose identity is not its own, so two instances can
//! never share a region even if their hashes collided.

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
    /// The runtime dir cannot be resolved to one canonical path.
    #[error("runtime dir {path}: cannot resolve it to a canonical path: {why}; give an existing directory (or one whose parent exists) without `..` after the part that does not exist yet")]
    Canonical {
        /// The dir as given.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// The canonical form of `dir`: absolute, with `//`, `/./`, a trailing `/` and `..` gone and
/// every symlink *above* it resolved by `realpath`; the parts that do not exist yet (the
/// Supervisor creates them) are appended as plain names. The last part itself is kept as
/// named: a runtime dir that is a symlink is refused later, by [`Instance::ensure_dirs`].
pub fn canonical_dir(dir: &Path) -> Result<PathBuf, InstanceError> {
    use std::path::Component;
    let err = |why: String| InstanceError::Canonical {
        path: dir.to_owned(),
        why,
    };
    let abs = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| err(format!("the current dir is unknown ({e})")))?
            .join(dir)
    };
    let mut parts: Vec<Component> = abs.components().collect();
    let last = match parts.last() {
        Some(Component::Normal(name)) => {
            let name = name.to_owned();
            parts.pop();
            Some(name)
        }
        _ => None,
    };
    for keep in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..keep].iter().collect();
        match std::fs::canonicalize(&prefix) {
            Ok(mut real) => {
                for c in &parts[keep..] {
                    match c {
                        Component::Normal(name) => real.push(name),
                        Component::CurDir => {}
                        _ => {
                            return Err(err(format!(
                                "`{}` follows {}, which does not exist",
                                c.as_os_str().to_string_lossy(),
                                prefix.display()
                            )))
                        }
                    }
                }
                if let Some(name) = last {
                    real.push(name);
                }
                return Ok(real);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(format!("{}: {e}", prefix.display()))),
        }
    }
    Err(err("not even / resolves".into()))
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
    /// An instance called `name` under `runtime_dir`, canonicalised (see [`canonical_dir`]).
    pub fn new(name: &str, runtime_dir: &Path) -> Result<Instance, InstanceError> {
        if !valid_instance_name(name) {
            return Err(InstanceError::BadName(name.to_owned()));
        }
        let runtime_dir = canonical_dir(runtime_dir)?;
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

    /// Whether [`Instance::default_runtime_dir`] is the one `$BROCTLD_RUNTIME_DIR` names.
    pub fn runtime_dir_from_env() -> bool {
        std::env::var_os("BROCTLD_RUNTIME_DIR").is_some_and(|d| !d.is_empty())
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

    /// The folder of per-node files (lock files, output and readiness FIFOs, `STATUS=` texts,
    /// down marks).
    pub fn nodes_dir(&self) -> PathBuf {
        self.dir().join("nodes")
    }

    /// Node `name`'s lock file (held by its processes through an inherited fd).
    pub fn node_lock_path(&self, name: &str) -> PathBuf {
        self.nodes_dir().join(format!("{name}.lock"))
    }

    /// The doorbell FIFO.
    pub fn bell_path(&self) -> PathBuf {
        self.dir().join("doorbell")
    }

    /// The Supervisor's log (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("supervisor.log")
    }

    /// What the region records as its owner: the canonical runtime dir, a NUL, the name.
    pub fn identity(&self) -> Vec<u8> {
        let mut id = self.runtime_dir.as_os_str().as_encoded_bytes().to_vec();
        id.push(0);
        id.extend_from_slice(self.name.as_bytes());
        id
    }

    /// The POSIX shm name of the region: uid, instance name and the 128-bit hash of
    /// [`Instance::identity`].
    pub fn shm_name(&self) -> String {
        let h = crate::protocol::layout::identity_hash(&self.identity());
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        format!("/broctld.{uid}.{}.{h:032x}", self.name)
    }

    /// The region's name under ABI 1 (a 32-bit hash of the runtime dir), so that a Supervisor
    /// upgraded from such a build can remove the region it left.
    pub fn legacy_shm_name(&self) -> String {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.runtime_dir.as_os_str().as_encoded_bytes() {
            h ^= *b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        format!("/broctld.{uid}.{}.{h:08x}", self.name)
    }

    /// Whether the instance dir exists (something of this instance ran here), checking the
    /// runtime dir and the instance dir as [`Instance::ensure_dirs`] does, but creating
    /// nothing: `Ok(false)` when either is missing.
    pub fn dirs_exist(&self) -> Result<bool, InstanceError> {
        for d in [self.runtime_dir.clone(), self.dir()] {
            match std::fs::symlink_metadata(&d) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                _ => checked::private_dir(&d)?,
            }
        }
        Ok(true)
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

    #[test]
    fn spellings_of_one_dir_are_one_instance() {
        let base = std::env::temp_dir().join(format!("broctld-canon-{}", std::process::id()));
        std::fs::create_dir_all(base.join("real")).unwrap();
        let _ = std::fs::remove_file(base.join("link"));
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let want = Instance::new("a", &base.join("real")).unwrap();
        let b = base.to_string_lossy().into_owned();
        for spelling in [
            format!("{b}/real/"),
            format!("{b}//real"),
            format!("{b}/./real"),
            format!("{b}/link/../real"),
            format!("{b}/real/../real"),
            format!("{b}/real/."),
        ] {
            let i = Instance::new("a", Path::new(&spelling)).unwrap();
            assert_eq!(i.shm_name(), want.shm_name(), "{spelling}");
            assert_eq!(i.runtime_dir(), want.runtime_dir(), "{spelling}");
        }
        // A symlink as the last part is kept (the dir checks refuse it); above it, resolved.
        let link = Instance::new("a", &base.join("link")).unwrap();
        assert_eq!(
            link.runtime_dir(),
            base.canonicalize().unwrap().join("link")
        );
        // Not there yet: resolved through the part that exists.
        let fresh = Instance::new("a", &base.join("link/new/./dir/")).unwrap();
        assert_eq!(
            fresh.runtime_dir(),
            base.canonicalize().unwrap().join("real/new/dir")
        );
        let bad = Instance::new("a", &base.join("missing/../x"));
        assert!(
            matches!(bad, Err(InstanceError::Canonical { .. })),
            "{bad:?}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
