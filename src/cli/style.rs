//! Colors and aligned tables. Colors only on a terminal, never when `NO_COLOR` is set (to
//! anything but the empty string, as <https://no-color.org> asks) or `TERM=dumb`.

use std::io::IsTerminal;

/// How to render text for one output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// Whether ANSI colors may be used.
    pub color: bool,
}

/// ANSI SGR codes used by the CLI.
pub mod code {
    /// Bold.
    pub const BOLD: &str = "1";
    /// Dim.
    pub const DIM: &str = "2";
    /// Red.
    pub const RED: &str = "31";
    /// Green.
    pub const GREEN: &str = "32";
    /// Yellow.
    pub const YELLOW: &str = "33";
    /// Blue.
    pub const BLUE: &str = "34";
    /// Magenta.
    pub const MAGENTA: &str = "35";
    /// Cyan.
    pub const CYAN: &str = "36";
    /// Bold red.
    pub const BOLD_RED: &str = "1;31";
}

/// Whether the environment forbids colors (`NO_COLOR` set and not empty, or `TERM=dumb`).
pub fn colors_forbidden() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}

impl Style {
    /// The style for stdout: colored if stdout is a terminal and colors are not forbidden.
    pub fn stdout() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && !colors_forbidden(),
        }
    }

    /// The style for stderr.
    pub fn stderr() -> Style {
        Style {
            color: std::io::stderr().is_terminal() && !colors_forbidden(),
        }
    }

    /// No colors.
    pub fn plain() -> Style {
        Style { color: false }
    }

    /// `text` wrapped in the SGR `code` (unchanged without colors).
    pub fn paint(&self, code: &str, text: &str) -> String {
        if self.color && !code.is_empty() && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The color of a node state word.
pub fn state_color(state: &str) -> &'static str {
    match state.split_whitespace().next().unwrap_or("") {
        "running" => code::GREEN,
        "starting" | "stopping" => code::YELLOW,
        "backoff" => code::MAGENTA,
        "failed" => code::BOLD_RED,
        "stopped" => code::DIM,
        _ => "",
    }
}

/// The color of an event kind.
pub fn event_color(kind: &str) -> &'static str {
    match kind {
        "exited" | "killed" | "spawn-failed" | "failed" => code::RED,
        "backoff" => code::MAGENTA,
        "ready" | "adopted" => code::GREEN,
        "spawned" => code::CYAN,
        "stopping" | "stopped" => code::YELLOW,
        "supervisor-started" | "supervisor-exiting" => code::BOLD,
        "command" | "signaled" | "slot-reclaimed" => code::BLUE,
        _ => "",
    }
}

/// One table cell: its text and an optional color.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// The text.
    pub text: String,
    /// SGR code, or empty.
    pub color: &'static str,
}

impl Cell {
    /// An uncolored cell.
    pub fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            color: "",
        }
    }

    /// A colored cell.
    pub fn colored(text: impl Into<String>, color: &'static str) -> Cell {
        Cell {
            text: text.into(),
            color,
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::new(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::new(s)
    }
}

/// An aligned table: columns padded to their widest cell (measured without colors), two spaces
/// apart, the last column unpadded, no trailing blanks. The header is bold on a terminal.
pub fn table(header: &[&str], rows: &[Vec<Cell>], style: Style) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.text.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<(String, &'static str)>| {
        let n = cells.len();
        let mut l = String::new();
        let mut pending = 0usize; // spaces owed before the next non-empty text
        for (i, (text, color)) in cells.into_iter().enumerate() {
            let w = text.chars().count();
            if i + 1 < n {
                if !text.is_empty() {
                    l.push_str(&" ".repeat(pending));
                    pending = 0;
                    l.push_str(&style.paint(color, &text));
                }
                pending += widths[i] - w + 2;
            } else if !text.is_empty() {
                l.push_str(&" ".repeat(pending));
                l.push_str(&style.paint(color, &text));
            }
        }
        out.push_str(&l);
        out.push('\n');
    };
    line(header.iter().map(|h| (h.to_string(), code::BOLD)).collect());
    for r in rows {
        line(r.iter().map(|c| (c.text.clone(), c.color)).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_without_counting_colors() {
        let rows = vec![
            vec![
                Cell::new("a"),
                Cell::colored("running", code::GREEN),
                "x".into(),
            ],
            vec![Cell::new("longer"), Cell::new("failed"), Cell::new("")],
        ];
        let plain = table(&["N", "STATE", "LAST"], &rows, Style::plain());
        assert_eq!(
            plain,
            "N       STATE    LAST\na       running  x\nlonger  failed\n"
        );
        let colored = table(&["N", "STATE", "LAST"], &rows, Style { color: true });
        assert!(colored.contains("\x1b[32mrunning\x1b[0m  x"));
        let stripped = colored
            .replace("\x1b[32m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn paint_is_a_no_op_without_colors() {
        assert_eq!(Style::plain().paint(code::RED, "x"), "x");
        assert_eq!(
            Style { color: true }.paint(code::RED, "x"),
            "\x1b[31mx\x1b[0m"
        );
    }
}
