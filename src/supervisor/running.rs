//! The running config: the exact bytes of the config file the Supervisor last loaded (at start
//! or by a successful `reload`), kept in `RUNTIME/INSTANCE/running-config` with the path they
//! were read from (relative paths in them are resolved against its folder).
//!
//! A Supervisor that takes over from a predecessor (after a crash or a `kill -9`, or after an
//! in-place upgrade) runs this config, not the file on disk: an edit takes effect only through
//! `reload`, and a file edited into an error can never keep the control plane from coming
//! back. A clean shutdown removes it.
//!
//! Format: `broctld running config v1`, a newline, the path, a newline, then the bytes. The
//! file is written to a temporary name (mode 0600, no symlink followed) and renamed into
//! place; it is read only if it is a regular file of ours that nobody else may read or write.

use crate::config::{Config, ConfigError, MAX_CONFIG_BYTES};
use crate::sys::checked::{self, CheckError, Kind};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &str = "broctld running config v1";
const FILE: &str = "running-config";

/// Why the running config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RunningError {
    /// The file failed a safety check or could not be read.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The file is not one this program wrote.
    #[error("{}: not a running config written by broctld", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The saved bytes no longer load (e.g. a program named in them was removed).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The running config's path in the instance dir `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Saves `text`, loaded from `config_path`, as the running config of the instance in `dir`.
pub fn save(dir: &Path, config_path: &Path, text: &str) -> io::Result<()> {
    let shown = config_path.to_string_lossy();
    if shown.contains('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the config path contains a newline",
        ));
    }
    let tmp = dir.join(format!("{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let (mut f, _) = checked::open(
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
        Kind::File,
        0o077,
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let written = f
        .write_all(format!("{MAGIC}\n{shown}\n").as_bytes())
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path(dir)));
    if written.is_err() {
        // A full disk: the half-written copy goes; the previous running config (if any) was
        // never touched.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether a running config is saved in `dir` (the one the last successful save wrote).
pub fn exists(dir: &Path) -> bool {
    std::fs::symlink_metadata(path(dir)).is_ok_and(|m| m.is_file())
}

/// Loads the running config of the instance in `dir`: `Ok(None)` if there is none.
pub fn load(dir: &Path) -> Result<Option<(Config, String)>, RunningError> {
    let p = path(dir);
    let (f, _) = match checked::open(&p, libc::O_RDONLY, 0, Kind::File, 0o077) {
        Ok(x) => x,
        Err(e) if e.os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 4096 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CheckError::Io {
            path: p.clone(),
            source,
        })?;
    let bad = || RunningError::Format { path: p.clone() };
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let rest = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix('\n'))
        .ok_or_else(bad)?;
    let (config_path, body) = rest.split_once('\n').ok_or_else(bad)?;
    if config_path.is_empty() || body.len() as u64 > MAX_CONFIG_BYTES {
        return Err(bad());
    }
    let config = Config::parse(body, Path::new(config_path))?;
    Ok(Some((config, body.to_owned())))
}

/// Removes the running config (at a clean shutdown), and a temporary copy a failed save left.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(path(dir));
    let _ = std::fs::remove_file(dir.join(format!("{FILE}.tmp")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_config_round_trips_and_resolves_against_its_original_folder() {
        let dir = std::env::temp_dir().join(format!("broctld-running-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_none());
        let text = "[[node]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\ncwd = \"spool/a\"\n";
        save(&dir, Path::new("/etc/broctld/x.toml"), text).unwrap();
        let (config, back) = load(&dir).unwrap().unwrap();
        assert_eq!(back, text);
        assert_eq!(config.path, Path::new("/etc/broctld/x.toml"));
        assert_eq!(config.nodes[0].name, "a");
        assert!(config.nodes[0].cwd.starts_with("/etc/broctld"));
        // A file another program wrote is refused, not run.
        std::fs::write(path(&dir), "[[node]]\n").unwrap();
        assert!(matches!(load(&dir), Err(RunningError::Format { .. })));
        remove(&dir);
        assert!(load(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
