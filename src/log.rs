//! Timestamped log lines. The Supervisor's stderr is its log file, so a line written here lands
//! there in one `write` (lines are short, and `O_APPEND` keeps concurrent writers whole).

use std::io::Write;

/// Writes `TIMESTAMP [pid] message` to stderr as a single write.
pub fn line(args: std::fmt::Arguments<'_>) {
    let s = format!(
        "{} [{}] {}\n",
        crate::sys::clock::format_wall_ms(crate::sys::clock::wall_ms()),
        std::process::id(),
        args
    );
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// `log!("...", args)`: a timestamped line on stderr.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::log::line(format_args!($($t)*)) };
}
