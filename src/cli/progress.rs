//! Progress of long operations, on stderr: on a terminal one line rewritten in place
//! (`stopping worker-1: SIGTERM sent, 3.0 s of 10 s`), otherwise a plain line at most once a
//! second, and only once the operation has taken longer than a second. Stdout keeps only the
//! results, for scripts.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(1);
/// How often an unchanged plain progress line is written again.
const PLAIN_SAME_EVERY: Duration = Duration::from_secs(10);

/// A progress display.
pub struct Progress {
    live: bool,
    shown: bool,
    started: Instant,
    last_plain: Option<Instant>,
    last_text: String,
}

/// The terminal's width in columns (80 if unknown).
pub fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass; a zeroed one is valid.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            return ws.ws_col as usize;
        }
    }
    80
}

impl Progress {
    /// A live display if stderr is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        Progress::with_mode(std::io::stderr().is_terminal())
    }

    /// A display in the given mode (`live`: rewrite one terminal line).
    pub fn with_mode(live: bool) -> Progress {
        Progress {
            live,
            shown: false,
            started: Instant::now(),
            last_plain: None,
            last_text: String::new(),
        }
    }

    /// Whether this display rewrites a terminal line.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Shows `text` as the current state.
    pub fn update(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.live {
            if text == self.last_text && self.shown {
                return;
            }
            let width = terminal_width().saturating_sub(1).max(10);
            let shown: String = text.chars().take(width).collect();
            let _ = write!(err, "\r\x1b[2K{shown}");
            let _ = err.flush();
            self.shown = true;
        } else {
            let now = Instant::now();
            if now.duration_since(self.started) < PLAIN_EVERY {
                return;
            }
            // A new line at most once a second; the same line again only every ten (a log
            // need not hear "done (2000/2000 stopped)" once a second while the rest finishes).
            let every = if text == self.last_text {
                PLAIN_SAME_EVERY
            } else {
                PLAIN_EVERY
            };
            if self
                .last_plain
                .is_some_and(|t| now.duration_since(t) < every)
            {
                return;
            }
            let _ = writeln!(err, "{text}");
            self.last_plain = Some(now);
        }
        self.last_text = text.to_owned();
    }

    /// Removes the live line (before results are printed).
    pub fn clear(&mut self) {
        if self.live && self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// `3.0 s`: seconds with one decimal, for progress lines.
pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `10 s`, `1.5 s`: a configured limit, without a needless decimal.
pub fn limit(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        secs(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(secs(Duration::from_millis(3040)), "3.0 s");
        assert_eq!(limit(Duration::from_secs(10)), "10 s");
        assert_eq!(limit(Duration::from_millis(1500)), "1.5 s");
    }
}
