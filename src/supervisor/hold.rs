//! Down markers (s6's `down` file): `nodes/NAME.down` exists while a node is `stopped` or
//! `failed`, so that what the operator (or the give-up rule) decided survives the loss of the
//! region. A Supervisor that takes over with no record of a node (the region was removed or
//! rebuilt while no Supervisor lived) does not autostart a node whose marker exists. The
//! markers are written only when a node's held-down state changes (cached per node), and a
//! clean shutdown removes them with the rest of `nodes/`.

use super::Supervisor;
use crate::log;
use crate::sys::checked::{self, Kind};
use std::io;
use std::path::PathBuf;

impl Supervisor {
    fn down_path(&self, i: usize) -> PathBuf {
        self.instance
            .nodes_dir()
            .join(format!("{}.down", self.nodes[i].spec.name))
    }

    /// Keeps node `i`'s down marker in step with its state (called on every publish; touches
    /// the file system only when the held-down state changed).
    pub(super) fn sync_down_marker(&self, i: usize) {
        let n = &self.nodes[i];
        if self.machine.is_retiring(i) {
            return;
        }
        let want = matches!(
            self.machine.core(i).phase,
            super::machine::Phase::Stopped | super::machine::Phase::Failed
        );
        if n.down_marked.get() == Some(want) {
            return;
        }
        let path = self.down_path(i);
        let result = if want {
            checked::private_dir(&self.instance.nodes_dir())
                .map_err(io::Error::other)
                .and_then(|()| {
                    checked::open(
                        &path,
                        libc::O_CREAT | libc::O_WRONLY,
                        0o600,
                        Kind::File,
                        0o077,
                    )
                    .map(drop)
                    .map_err(io::Error::other)
                })
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        match result {
            Ok(()) => n.down_marked.set(Some(want)),
            Err(e) => log!(
                "node {}: cannot {} its down marker {}: {e}",
                n.spec.name,
                if want { "write" } else { "remove" },
                path.display()
            ),
        }
    }

    /// Whether node `i` has a down marker: it was `stopped` or `failed` when its Supervisor
    /// last said so. An error reading it counts as held down (never evidence for a start).
    pub(super) fn held_down(&self, i: usize) -> bool {
        match std::fs::symlink_metadata(self.down_path(i)) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                log!(
                    "node {}: cannot read its down marker ({e}); not starting it automatically",
                    self.nodes[i].spec.name
                );
                true
            }
        }
    }
}
