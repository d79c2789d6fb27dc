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
        Err(e) if e.kind() == io::ErrorKind::NotFound && !rotated_numbers(path).is_empty() => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    for k in rotated_numbers(path) {
        if lines.len() >= n {
            break;
        }
        match crate::supervisor::crash::tail(&rotated(path, k), n - lines.len()) {
            Ok(mut older) => {
                older.append(&mut lines);
                lines = older;
            }
            // Rotated away meanwhile (the read is tried again).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(lines)
}

/// The numbers `k` of the files `FILE.k` rotated from `path` that exist, newest (lowest)
/// first. Not simply 1, 2, ... up to the first missing one: a Supervisor killed while it
/// shifts the files (`.k` to `.k+1`, oldest first) leaves a hole, which later rotations carry
/// along until it passes `log_keep`.
fn rotated_numbers(path: &Path) -> Vec<usize> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.to_owned();
    prefix.push(".");
    let prefix = prefix.to_string_lossy().into_owned();
    let mut ks: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let k = n.to_str()?.strip_prefix(&prefix)?;
            // Only the digits `rotated` writes (no sign, no leading zero).
            (k.bytes().all(|b| b.is_ascii_digit()) && !k.starts_with('0'))
                .then(|| k.parse().ok())
                .flatten()
        })
        .collect();
    ks.sort_unstable();
    ks
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
                let mut found = false;
                for k in rotated_numbers(path) {
                    let p = rotated(path, k);
                    match inode(&p) {
                        Some(i) if i == old => {
                            found = true;
                            break;
                        }
                        Some(_) => newer.push(p),
                        None => {}
                    }
                }
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

    #[test]
    fn tail_reads_past_a_hole_in_the_numbering() {
        let dir = std::env::temp_dir().join(format!("broctld-logholes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("stdout.log");
        std::fs::write(rotated(&p, 4), "a\n").unwrap();
        std::fs::write(rotated(&p, 2), "b\n").unwrap();
        std::fs::write(rotated(&p, 1), "c\n").unwrap();
        std::fs::write(dir.join("stdout.log.01"), "not ours\n").unwrap();
        std::fs::write(&p, "d\n").unwrap();
        assert_eq!(tail(&p, 10).unwrap(), ["a", "b", "c", "d"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
