//! The setup of a Zeek cluster before any of its nodes starts (what the generator's
//! `zeek-setup` unit does): the working, log-queue and log-archive folders exist (given to the
//! nodes' user), and `cluster-layout.zeek` is where the nodes' `ZEEKPATH` finds it. Run at
//! Supervisor start and at every reload, so a changed cluster gets its new layout before any
//! added node starts; the layout is replaced atomically (running nodes never read half a file).

use std::io;
use std::path::{Path, PathBuf};

use crate::config::ZeekSetup;

/// A setup step that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("Zeek cluster setup: cannot {what} {}: {source}", path.display())]
pub struct ZeekSetupError {
    /// What was being done.
    pub what: &'static str,
    /// The folder or file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ZeekSetupError + 'a {
    move |source| ZeekSetupError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the folders and writes the layout.
pub fn apply(setup: &ZeekSetup) -> Result<(), ZeekSetupError> {
    let owner = match &setup.owner {
        None => None,
        Some((user, group)) => {
            let missing = |what: &str| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no such {what} on this system (create it, or set `user =` empty in zeek.conf to run the nodes as broctld's user)"),
                )
            };
            let (uid, primary) = crate::sys::account::user(user)
                .ok_or_else(|| fail("find the user for", Path::new(user))(missing("user")))?;
            let gid = match group {
                Some(g) => crate::sys::account::group(g)
                    .ok_or_else(|| fail("find the group for", Path::new(g))(missing("group")))?,
                None => primary,
            };
            Some((uid, gid))
        }
    };
    let layout_dir = setup.layout_path.parent().unwrap_or(Path::new("/"));
    for dir in std::iter::once(layout_dir).chain(setup.dirs.iter().map(PathBuf::as_path)) {
        std::fs::create_dir_all(dir).map_err(fail("create the folder", dir))?;
        if let Some((uid, gid)) = owner {
            // lchown: a symlink the nodes' user put there is not followed.
            std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
                .map_err(fail("give the nodes' user the folder", dir))?;
        }
    }
    let text = match &setup.layout_from {
        Some(from) => {
            std::fs::read_to_string(from).map_err(fail("read the cluster_layout", from))?
        }
        None => setup.layout.clone(),
    };
    let mut tmp = setup.layout_path.as_os_str().to_owned();
    tmp.push(".broctld-tmp");
    let tmp = PathBuf::from(tmp);
    // The folder belongs to the nodes' user: whatever is at the temporary name (a leftover,
    // or a symlink planted to make us overwrite another file) is removed, and the file is
    // created anew, never opened through a link (`O_EXCL` does not follow one).
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("remove the old temporary layout", &tmp)(e)),
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(fail("write the layout", &tmp))?;
    }
    std::fs::rename(&tmp, &setup.layout_path)
        .map_err(fail("put the layout in place at", &setup.layout_path))
}
