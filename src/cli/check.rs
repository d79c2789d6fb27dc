//! `broctld check`: everything that can be known about a config before starting it. The
//! file is loaded (every mistake in it, each with its line), then each node's program is
//! resolved the way the Supervisor resolves it, its user and group are looked up, and its
//! working folder and log files are checked to be creatable and writable. Nothing is
//! started and nothing is created.

use crate::config::{Config, NodeSpec};
use crate::supervisor::spawn::{node_env_path, resolve_program};
use nix::unistd::{access, AccessFlags};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    // What the Supervisor refuses before anything else (`start` and `reload` say the same).
    let max = crate::protocol::layout::MAX_NODES;
    if let Some(first_over) = config.nodes.get(max) {
        out.push(Problem {
            line: first_over.line,
            message: crate::supervisor::SupervisorError::TooManyNodes {
                count: config.nodes.len(),
                max,
            }
            .to_string(),
        });
    }
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

/// How long Zeek may take to parse one node's scripts.
const PARSE_LIMIT: Duration = Duration::from_secs(120);

/// What Zeek itself says of each Zeek node's scripts, as zeekctl's `check` asks it: for a
/// Zeek config (zeek.conf, cluster folder, node.cfg), every node that runs Zeek (its env names
/// `CLUSTER_NODE`) is run once as `zeek --parse-only` with its own arguments (less `-i` and
/// `-U`), its own environment, and this config's `cluster-layout.zeek` first on its
/// `ZEEKPATH` (in a private temporary folder, so nothing of the node's is written). Returns
/// the problems, and lines to show (what passed, or why nothing could be checked).
pub fn zeek_scripts(config: &Config) -> (Vec<Problem>, Vec<String>) {
    let (mut problems, mut notes) = (Vec::new(), Vec::new());
    let Some(setup) = &config.zeek else {
        return (problems, notes);
    };
    let zeek_nodes: Vec<&NodeSpec> = config
        .nodes
        .iter()
        .filter(|n| n.env.iter().any(|(k, _)| k == "CLUSTER_NODE"))
        .collect();
    let first_line = zeek_nodes.first().map_or(1, |n| n.line);
    let layout = match setup.layout_text() {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem {
                line: first_line,
                message: format!("cannot render cluster-layout.zeek: {e}"),
            });
            return (problems, notes);
        }
    };
    let dir = std::env::temp_dir().join(format!(
        "broctld-check-{}-{}",
        std::process::id(),
        crate::sys::clock::monotonic_ns()
    ));
    if let Err(e) = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::write(dir.join("cluster-layout.zeek"), &layout))
    {
        problems.push(Problem {
            line: first_line,
            message: format!("cannot prepare {} for Zeek's checks: {e}", dir.display()),
        });
        let _ = std::fs::remove_dir_all(&dir);
        return (problems, notes);
    }
    let mut checked = 0;
    for n in &zeek_nodes {
        let path_var = node_env_path(n);
        // A program that does not resolve is already a problem of `problems`.
        let Ok(program) = resolve_program(&n.name, &n.command[0], &config.dir, &path_var) else {
            continue;
        };
        checked += 1;
        match parse_only(n, &program, &path_var, &dir) {
            Ok(()) => notes.push(format!(
                "node '{}': {} --parse-only: ok",
                n.name,
                program.display()
            )),
            Err(why) => problems.push(Problem {
                line: n.line,
                message: format!(
                    "node '{}': {} --parse-only failed: {why}",
                    n.name,
                    program.display()
                ),
            }),
        }
    }
    if checked == 0 && !zeek_nodes.is_empty() {
        notes.push(
            "no zeek binary found for the Zeek nodes: Zeek's own checks of their scripts were skipped (install Zeek, or put it on the nodes' PATH)".into(),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    (problems, notes)
}

/// Runs node `n`'s Zeek as `PROGRAM --parse-only ARGS` in `dir` (which holds the layout);
/// `Err` says how it failed (its last lines of output).
fn parse_only(n: &NodeSpec, program: &Path, path_var: &str, dir: &Path) -> Result<(), String> {
    let mut args = vec!["--parse-only".to_string()];
    let mut rest = n.command[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            // The interface and the status file are the running node's, not a check's.
            "-i" | "--iface" | "-U" | "--status-file" => {
                rest.next();
            }
            _ => args.push(a.clone()),
        }
    }
    let zeekpath = match n.env.iter().rev().find(|(k, _)| k == "ZEEKPATH") {
        Some((_, v)) if !v.is_empty() => format!("{}:{v}", dir.display()),
        _ => dir.display().to_string(),
    };
    let out_path = dir.join(format!("{}.out", n.name));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(program)
        .args(&args)
        .env_clear()
        .env("PATH", path_var)
        .envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("ZEEKPATH", &zeekpath)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let done = crate::sys::pidfd::open(child.id())
        .and_then(|fd| crate::sys::pidfd::wait_exit(&fd, PARSE_LIMIT))
        .unwrap_or(true);
    if !done {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("did not finish within {} s", PARSE_LIMIT.as_secs()));
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read(&out_path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("{status}: {}", tail.join(" / ")))
}
