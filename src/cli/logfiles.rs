//! Reading a node's output as `logs` shows it: the current file and the files rotated from it
//! (`FILE.1` the newest of them, `FILE.N` the oldest), as one stream, oldest first; and
//! following it across rotations.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// `FILE.k`: the `k`-th newest file rotated from `path`.
pub use crate::log::rotated;

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The last `n` lines of the output written to `path`, oldest first, reading back through
/// its rotated files as far as needed. `NotFound` if neither `path` nor `path.1` exists.
pub fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    // A rotation while reading would show lines twice or not at all: read again.
    let mut last = Vec::new();
    for _ in 0..3 {
        let before = inode(path);
        last = tail_once(path, n)?;
        if inode(path) == before {
            break;
        }
    }
    Ok(last)
}

fn tail_once(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = match crate::supervisor::crash::tail(path, n) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound && rotated(path, 1).exists() => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut k = 1;
    while lines.len() < n {
        match crate::supervisor::crash::tail(&rotated(path, k), n - lines.len()) {
            Ok(mut older) => {
                older.append(&mut lines);
                lines = older;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
        k += 1;
    }
    Ok(lines)
}

/// Prints (through `emit`, whole lines only) what is written to `path` from now on until
/// `stop()` says so, polling every 200 ms. A rotation is followed: the rest of the old file,
/// then every file rotated since (found by the old file's inode among `path.1`, `path.2`...),
/// then the new one from its start. A truncated file is read again from its start, and a
/// missing one is waited for; both are told through `note`.
pub fn follow(
    path: &Path,
    stop: impl Fn() -> bool,
    mut emit: impl FnMut(&[u8]),
    note: impl Fn(&str),
) -> io::Result<()> {
    let mut cur: Option<(File, u64)> = None;
    if let Ok(mut f) = File::open(path) {
        f.seek(SeekFrom::End(0))?;
        let ino = f.metadata()?.ino();
        cur = Some((f, ino));
    }
    let mut partial = Vec::new();
    let mut take = |f: &mut File, partial: &mut Vec<u8>| {
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_ok() {
            partial.extend_from_slice(&buf);
            if let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') {
                emit(&partial[..=last_nl]);
                partial.drain(..=last_nl);
            }
        }
    };
    loop {
        if stop() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // Looked at before the old file's last read: once the name has moved on, the old file
        // gets no more bytes, so that read gets all of them.
        let now = std::fs::metadata(path).ok();
        let Some((f, ino)) = cur.as_mut() else {
            if now.is_some() {
                cur = File::open(path).ok().and_then(|f| {
                    let ino = f.metadata().ok()?.ino();
                    Some((f, ino))
                });
            }
            continue;
        };
        take(f, &mut partial);
        match now {
            Some(m) if m.ino() != *ino => {
                // Rotated: the files between the old one and the new one, oldest first.
                let old = *ino;
                let mut newer = Vec::new();
                let mut k = 1;
                let found = loop {
                    let p = rotated(path, k);
                    match inode(&p) {
                        Some(i) if i == old => break true,
                        Some(_) => newer.push(p),
                        None => break false,
                    }
                    k += 1;
                };
                if !found {
                    note(&format!(
                        "{} was replaced and the old file is gone; reading the new one from its start",
                        path.display()
                    ));
                    newer.clear();
                }
                for p in newer.iter().rev() {
                    if let Ok(mut f) = File::open(p) {
                        take(&mut f, &mut partial);
                    }
                }
                cur = File::open(path).ok().and_then(|f| {
                    let ino = f.metadata().ok()?.ino();
                    Some((f, ino))
                });
                if let Some((f, _)) = cur.as_mut() {
                    take(f, &mut partial);
                }
            }
            // The same file, now shorter than what was read of it.
            Some(_) if f.metadata()?.len() < f.stream_position()? => {
                note(&format!(
                    "{} was truncated; reading it from the start",
                    path.display()
                ));
                partial.clear();
                f.seek(SeekFrom::Start(0))?;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_back_through_rotated_files_oldest_first() {
        let dir = std::env::temp_dir().join(format!("broctld-logfiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("stdout.log");
        std::fs::write(rotated(&p, 2), "a\nb\n").unwrap();
        std::fs::write(rotated(&p, 1), "c\nd\n").unwrap();
        std::fs::write(&p, "e\n").unwrap();
        assert_eq!(tail(&p, 4).unwrap(), ["b", "c", "d", "e"]);
        assert_eq!(tail(&p, 10).unwrap(), ["a", "b", "c", "d", "e"]);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(tail(&p, 3).unwrap(), ["b", "c", "d"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(tail(&p, 3).is_err());
    }
}
