//! The INI-like syntax of Zeek's `zeek.conf` (as `zeek-systemd-generator` reads it): optional
//! `[section]` headers, `key = value` options whose key starts with `a-z`, `0-9` or `_`,
//! continuation lines (starting with white space) adding values to the option above, and `#`
//! comments. Only the syntax lives here; what the keys mean is in [`super::zeek_conf`].

/// One option: its key, every value (one per line; the first from the `key =` line) and the
/// 1-based line of each value.
#[derive(Debug, Clone, PartialEq)]
pub struct IniOption {
    /// The key as written (trimmed).
    pub key: String,
    /// The values, trimmed: one per line.
    pub values: Vec<String>,
    /// The line of the `key =` line.
    pub line: usize,
}

impl IniOption {
    /// The single value (the first one; callers check [`IniOption::values`] for more).
    pub fn value(&self) -> &str {
        &self.values[0]
    }

    /// Whether the option has nothing but an empty value.
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(String::is_empty)
    }

    /// The values joined with single spaces, empty ones left out.
    pub fn joined(&self) -> String {
        let parts: Vec<&str> = self
            .values
            .iter()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .collect();
        parts.join(" ")
    }

    /// The values read as `NAME=value` environment entries (empty values skipped).
    pub fn env(&self) -> Result<Vec<(String, String)>, String> {
        let mut env = Vec::new();
        for v in self.values.iter().filter(|v| !v.is_empty()) {
            let Some((k, val)) = v.split_once('=') else {
                return Err(format!("invalid env value '{v}'"));
            };
            env.push((k.to_string(), val.to_string()));
        }
        Ok(env)
    }
}

/// A section: its name (empty for options before any header) and options in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IniSection {
    /// The name between the brackets; empty for the unnamed section.
    pub name: String,
    /// The 1-based line of the header (0 for the unnamed section).
    pub line: usize,
    /// The options, in file order.
    pub options: Vec<IniOption>,
}

/// A syntax error: the 1-based line, the key if any, and upstream's wording.
#[derive(Debug, Clone, PartialEq)]
pub struct IniError {
    /// 1-based line.
    pub line: usize,
    /// The key the error is about.
    pub key: Option<String>,
    /// What is wrong, worded as `zeek-systemd-generator` words it.
    pub message: String,
}

fn in_section(message: String, section: &str) -> String {
    if section.is_empty() {
        message
    } else {
        format!("{message} in section '{section}'")
    }
}

/// Whether `key` can start an option line: its first character is `a-z`, `0-9` or `_`.
fn option_start(line: &str) -> Option<(&str, &str)> {
    let first = line.bytes().next()?;
    if !(first.is_ascii_lowercase() || first.is_ascii_digit() || first == b'_') {
        return None;
    }
    line.split_once('=')
}

/// Parses `text` into sections. Every error is returned, in file order (as upstream lists them).
pub fn parse(text: &str) -> Result<Vec<IniSection>, Vec<IniError>> {
    let mut errors = Vec::new();
    let mut sections: Vec<IniSection> = Vec::new();
    let mut current = IniSection::default();
    let mut have_option = false;
    for (i, raw) in text.split('\n').enumerate() {
        let lineno = i + 1;
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > 2 && line.starts_with('[') && line.ends_with(']') {
            if !current.options.is_empty() || !current.name.is_empty() {
                sections.push(std::mem::take(&mut current));
            }
            let name = &line[1..line.len() - 1];
            if sections.iter().any(|s| s.name == name) {
                errors.push(IniError {
                    line: lineno,
                    key: None,
                    message: format!("duplicate section '{name}'"),
                });
                current = IniSection::default();
                break;
            }
            current = IniSection {
                name: name.to_string(),
                line: lineno,
                options: Vec::new(),
            };
            have_option = false;
        } else if let Some((key, value)) = option_start(line) {
            let key = key.trim().to_string();
            if current.options.iter().any(|o| o.key == key) {
                errors.push(IniError {
                    line: lineno,
                    key: Some(key.clone()),
                    message: in_section(format!("duplicate option '{key}'"), &current.name),
                });
                continue;
            }
            current.options.push(IniOption {
                key,
                values: vec![value.trim().to_string()],
                line: lineno,
            });
            have_option = true;
        } else if line.starts_with(|c: char| c.is_whitespace()) {
            if !have_option {
                errors.push(IniError {
                    line: lineno,
                    key: None,
                    message: in_section(
                        format!("unexpected continuation line '{line}'"),
                        &current.name,
                    ),
                });
                continue;
            }
            if let Some(o) = current.options.last_mut() {
                o.values.push(line.trim().to_string());
            }
        } else {
            errors.push(IniError {
                line: lineno,
                key: None,
                message: in_section(format!("invalid line '{line}'"), &current.name),
            });
        }
    }
    if !current.options.is_empty() || !current.name.is_empty() {
        sections.push(current);
    }
    if errors.is_empty() {
        Ok(sections)
    } else {
        Err(errors)
    }
}
