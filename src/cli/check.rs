//! `broctld check`: everything that can be known about a config before starting it. The
//! file is loaded (every mistake in it, each with its line), then each node's program is
//! resolved the way the Supervisor resolves it, its user and group are looked up, and its
//! working folder and log files are checked to be creatable and writable. Nothing is
//! started and nothing is created.

use crate::config::{Config, NodeSpec};
use crate::supervisor::spawn::resolve_program;
use nix::unistd::{access, AccessFlags};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// One problem: the line of the file it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the config file.
    pub line: usize,
    /// What is wrong, naming the node.
    pub message: String,
}

/// Every problem of the loaded `config` that would stop a node from starting.
pub fn problems(config: &Config) -> Vec<Problem> {
    let root = nix::unistd::geteuid().is_root();
    let mut out = Vec::new();
    for n in &config.nodes {
        let mut say = |message: String| {
            out.push(Problem {
                line: n.line,
                message: format!("node '{}': {message}", n.name),
            })
        };
        program(n, &config.dir, &mut say);
        if (n.policy.user.is_some() || n.policy.group.is_some()) && !root {
            say(format!(
                "user/group are set ({}), but broctld does not run as root, so the Supervisor cannot switch to them",
                [n.policy.user.as_deref(), n.policy.group.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
        folder("working folder", &n.cwd, &mut say);
        for (what, file) in [("stdout file", &n.stdout), ("stderr file", &n.stderr)] {
            log_file(what, file, &n.cwd, &mut say);
        }
    }
    out
}

fn program(n: &NodeSpec, dir: &Path, say: &mut dyn FnMut(String)) {
    let Some(prog) = n.command.first() else {
        return;
    };
    match resolve_program(
        &n.name,
        prog,
        dir,
        &crate::supervisor::spawn::node_env_path(n),
    ) {
        Err(e) => say(format!("{e}")),
        Ok(p) => match p.metadata() {
            Ok(m) if !m.is_file() => say(format!("program {} is not a file", p.display())),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                say(format!("program {} is not executable", p.display()))
            }
            Ok(_) => {}
            Err(e) => say(format!("program {}: {e}", p.display())),
        },
    }
}

/// The folder exists and can be entered and written, or the Supervisor can create it: its
/// nearest existing ancestor is a writable folder.
fn folder(what: &str, path: &Path, say: &mut dyn FnMut(String)) {
    match path.metadata() {
        Ok(m) if !m.is_dir() => say(format!("{what} {} is not a folder", path.display())),
        Ok(_) => {
            if let Err(e) = access(path, AccessFlags::W_OK | AccessFlags::X_OK) {
                say(format!("{what} {} is not writable: {e}", path.display()));
            }
        }
        Err(_) => {
            let Some(base) = path.ancestors().skip(1).find(|a| a.exists()) else {
                return;
            };
            if !base.is_dir() {
                say(format!(
                    "{what} {} cannot be created: {} is not a folder",
                    path.display(),
                    base.display()
                ));
            } else if let Err(e) = access(base, AccessFlags::W_OK | AccessFlags::X_OK) {
                say(format!(
                    "{what} {} cannot be created: {} is not writable ({e})",
                    path.display(),
                    base.display()
                ));
            }
        }
    }
}

/// The file is writable, or can be created (its folder is checked unless it is the
/// working folder, checked already).
fn log_file(what: &str, file: &Path, cwd: &Path, say: &mut dyn FnMut(String)) {
    match file.metadata() {
        Ok(m) if m.is_dir() => say(format!("{what} {} is a folder", file.display())),
        Ok(_) => {
            if let Err(e) = access(file, AccessFlags::W_OK) {
                say(format!("{what} {} is not writable: {e}", file.display()));
            }
        }
        Err(_) => {
            if let Some(parent) = file.parent().filter(|p| *p != cwd) {
                folder(&format!("folder of the {what}"), parent, say);
            }
        }
    }
}
