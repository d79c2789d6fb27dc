//! Main's own log, `RUNTIME/INSTANCE/main.log`: one line per command a Main ran (one-shot, in
//! the shell, or by the daemon) with its result, `TIMESTAMP [PID] WHAT: RESULT`. Appended with
//! one `write` per line (`O_APPEND` keeps lines of several Mains whole). When it passes
//! [`ROTATE_AT`] it becomes `main.log.1` (and `.1` becomes `.2`, `.2` becomes `.3`; the oldest is
//! dropped), so at most [`KEEP`] old files are kept.

use crate::instance::Instance;
use std::io::Write;
use std::path::PathBuf;

pub use crate::log::{rotate_if_needed, KEEP, ROTATE_AT};

/// The log's path.
pub fn path(instance: &Instance) -> PathBuf {
    instance.dir().join("main.log")
}

/// Appends one line to the instance's log. Nothing happens if the runtime dir cannot be used
/// (the command itself reports that), or if the instance dir does not exist: a command that
/// created nothing (one that only reads, with nothing running) leaves no log behind either.
pub fn append(instance: &Instance, what: &str, result: &str) {
    // Checked every time: never write into a runtime dir someone else controls.
    if !matches!(instance.dirs_exist(), Ok(true)) {
        return;
    }
    let p = path(instance);
    rotate_if_needed(&p, ROTATE_AT, KEEP);
    let one_line = |s: &str| s.replace('\n', " | ");
    let line = format!(
        "{} [{}] {}: {}\n",
        crate::sys::clock::format_wall_ms(crate::sys::clock::wall_ms()),
        std::process::id(),
        one_line(what),
        one_line(result)
    );
    if let Ok(mut f) = crate::sys::checked::open_log(&p) {
        let _ = f.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::rotated;

    #[test]
    fn rotation_keeps_three_old_files() {
        let dir = std::env::temp_dir().join(format!("broctld-mainlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("main.log");
        for i in 0..6 {
            std::fs::write(&p, format!("generation {i}\n")).unwrap();
            rotate_if_needed(&p, 1, KEEP);
        }
        assert!(!p.exists());
        assert_eq!(
            std::fs::read_to_string(rotated(&p, 1)).unwrap(),
            "generation 5\n"
        );
        assert_eq!(
            std::fs::read_to_string(rotated(&p, 3)).unwrap(),
            "generation 3\n"
        );
        assert!(!rotated(&p, 4).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
