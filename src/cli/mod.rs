//! The `broctld` program: global options, one-shot commands, the shell, and the hidden
//! Supervisor mode (`__supervisor`), so that one installed executable is the whole daemon.
//!
//! Every `print!`/`println!`/`eprint!`/`eprintln!` in this module and below is
//! [`output::print_out`]'s or [`output::print_err`]'s, not std's (which panics when the stream
//! is closed): a closed stdout (`broctld status | head -1`) ends a one-shot command quietly, as
//! `ls | head` ends, and a closed stderr is ignored.

/// `print!` to stdout; a closed stdout ends the process quietly (see [`output::print_out`]).
macro_rules! print {
    ($($arg:tt)*) => { $crate::cli::output::print_out(format_args!($($arg)*)) };
}
/// `println!` to stdout; a closed stdout ends the process quietly (see [`output::print_out`]).
macro_rules! println {
    () => { $crate::cli::output::print_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::print_out(format_args!("{}\n", format_args!($($arg)*))) };
}
/// `eprint!` to stderr, never panicking (see [`output::print_err`]).
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::cli::output::print_err(format_args!($($arg)*)) };
}
/// `eprintln!` to stderr, never panicking (see [`output::print_err`]).
macro_rules! eprintln {
    () => { $crate::cli::output::print_err(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::output::print_err(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod args;
pub mod check;
pub mod cluster;
pub mod daemon;
pub mod events;
pub mod interrupt;
pub mod logfiles;
pub mod mainlog;
pub mod output;
pub mod progress;
pub mod select;
pub mod session;
pub mod shell;
pub mod style;
pub mod top;

use crate::instance::Instance;
use args::{Cli, Cmd};
use clap::Parser;
use session::{Outcome, Session};
use std::ffi::OsString;
use std::path::Path;

/// Runs the program with `args` (without `argv[0]`); returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    // Probe mode, before anything else: a Supervisor about to re-execute this binary asks it
    // who it is (see `supervisor::upgrade`). Nothing is read, created or locked.
    if args.len() == 1 && args[0] == crate::supervisor::upgrade::PROBE_ARG {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let answer = crate::supervisor::upgrade::probe_answer();
        return match out.write_all(answer.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => 0,
            Err(_) => 1,
        };
    }
    let cli = match Cli::try_parse_from(
        std::iter::once(OsString::from("broctld")).chain(args.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidUtf8 => {
            eprintln!("broctld: {}", not_utf8(&args));
            return 2;
        }
        Err(e) => {
            // --help and --version print on stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let globals = cli.globals;
    let cmd = cli.command;
    if matches!(cmd, Some(Cmd::Daemon)) {
        // A service's Main never dies of its log stream closing.
        output::keep_running_on_closed_stdout();
    }
    if let Some(Cmd::Completions { shell }) = cmd {
        use std::io::Write;
        return match std::io::stdout()
            .lock()
            .write_all(&args::completions(shell))
        {
            Ok(()) => 0,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("broctld: writing the completion script: {e}");
                1
            }
        };
    }
    if let Some(host) = &globals.host {
        // Read by the config loader here and in the Supervisor this Main starts (still one
        // thread: nothing else reads the environment yet).
        std::env::set_var(crate::config::zeek_cluster::HOST_ENV, host);
    }
    let (runtime_dir, given) = match globals.runtime_dir.clone() {
        Some(d) => (d, Some("--runtime-dir")),
        None => (
            Instance::default_runtime_dir(),
            Instance::runtime_dir_from_env().then_some("BROCTLD_RUNTIME_DIR"),
        ),
    };
    let internal = matches!(cmd, Some(Cmd::Supervisor { .. } | Cmd::Guardian { .. }));
    if !internal {
        // The note about a named runtime dir that does not exist is for the commands that
        // report on the instance; the others do not look there.
        let reports = cmd.as_ref().is_some_and(Cmd::reports_on_instance);
        match usable_runtime_dir(&runtime_dir, given, reports) {
            Ok(Some(note)) => eprintln!("broctld: {note}"),
            Ok(None) => {}
            Err(why) => {
                eprintln!("broctld: {why}");
                return 2;
            }
        }
    }
    let instance = match Instance::new(
        globals.instance.as_deref().unwrap_or("default"),
        &runtime_dir,
    ) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("broctld: {e}");
            return 2;
        }
    };
    if let Some(Cmd::Supervisor { notify_fd }) = cmd {
        let Some(config) = globals.config.clone() else {
            eprintln!("broctld: __supervisor needs --config");
            return 2;
        };
        // Started by the guardian from the image that last served (`/proc/self/fd/N`), the
        // process would be named `N`: it is named after its installed file, as ever.
        if let Some(name) = crate::guardian::installed_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            let _ = crate::sys::procstat::set_own_name(&name);
        }
        return crate::supervisor::main(instance, config, notify_fd);
    }
    if let Some(Cmd::Guardian {
        notify_fd,
        watch,
        reports_read_fd,
        reports_write_fd,
    }) = cmd
    {
        let Some(config) = globals.config.clone() else {
            eprintln!("broctld: __guardian needs --config");
            return 2;
        };
        let reports = reports_read_fd.zip(reports_write_fd);
        return crate::guardian::main(instance, config, notify_fd, watch, reports);
    }
    if let Some(Cmd::Daemon) = cmd {
        return daemon::run(instance, globals.config.clone());
    }
    if let Some(c) = cmd
        .as_ref()
        .filter(|c| !globals.local && cluster::is_cluster_command(c))
    {
        if let Some(code) = cluster::run(
            c,
            globals.config.as_deref(),
            &instance,
            globals.instance.as_deref(),
            globals.host.as_deref(),
        ) {
            mainlog::append(&instance, &command_words(&args), &format!("exit {code}"));
            return code;
        }
    }
    let mut session = Session::new(instance, globals.config.clone());
    match cmd {
        None => shell::run(&mut session),
        Some(cmd) => {
            let (code, result, _) = run_logged(&mut session, &cmd);
            if !matches!(cmd, Cmd::Help { .. }) {
                mainlog::append(session.instance(), &command_words(&args), &result);
            }
            code
        }
    }
}

/// Why a command line that clap refused as not UTF-8 is refused, naming the first such word.
fn not_utf8(args: &[OsString]) -> String {
    let (i, bad) = args
        .iter()
        .enumerate()
        .find(|(_, a)| a.to_str().is_none())
        .map_or((0, OsString::new()), |(i, a)| (i, a.clone()));
    let what = match i.checked_sub(1).and_then(|p| args[p].to_str()) {
        Some(o @ ("-i" | "--instance" | "--host")) => format!("the value of {o}"),
        _ => format!("argument {}", i + 1),
    };
    format!(
        "{what} ({}) is not valid UTF-8: node, instance and host names are ASCII (A-Z a-z 0-9 _ . -); only paths (--config, --runtime-dir) may be any bytes",
        output::bytes_shown(bad.as_encoded_bytes())
    )
}

/// Refuses a runtime dir that cannot be one (an existing path that is not a directory), and
/// gives a note for a dir that was named (`given`: by `--runtime-dir` or `BROCTLD_RUNTIME_DIR`)
/// and does not exist, for a command that reports on the instance (`reports`; it creates
/// nothing): nothing can have run there, whatever runs elsewhere. The default dir's absence
/// only means that nothing runs yet.
fn usable_runtime_dir(
    dir: &Path,
    given: Option<&str>,
    reports: bool,
) -> Result<Option<String>, String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(None),
        Ok(_) => Err(format!(
            "runtime dir {} is not a directory{}",
            dir.display(),
            given.map_or(String::new(), |g| format!(" (from {g})"))
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(given.filter(|_| reports).map(|g| {
            format!(
                "note: runtime dir {} (from {g}) does not exist: no instance has run there (`start` creates it)",
                dir.display()
            )
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(format!(
            "runtime dir {}: a part of the path is not a directory",
            dir.display()
        )),
        // Permission denied and the like: the instance's own checks say so.
        Err(_) => Ok(None),
    }
}

/// The command line without the global options (`status --json`), for Main's log: the
/// instance and config are the log's own.
fn command_words(args: &[String]) -> String {
    const VALUED: [&str; 5] = ["-c", "--config", "-i", "--instance", "--runtime-dir"];
    let mut out: Vec<&str> = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
        if VALUED.contains(&key) {
            skip_value = key == a;
            continue;
        }
        out.push(a);
    }
    out.join(" ")
}

/// Runs one command, prints its error if any, and returns its exit status, a one-line result
/// for Main's log, and the outcome (None if it failed).
pub fn run_logged(session: &mut Session, cmd: &Cmd) -> (i32, String, Option<Outcome>) {
    let r = session.run(cmd);
    let note = session.take_note();
    let with_note = |head: String| match &note {
        Some(n) => format!("{head}: {n}"),
        None => head,
    };
    match r {
        Ok(o @ Outcome::Status(code)) => (code, with_note(format!("exit {code}")), Some(o)),
        Ok(o) => (0, with_note("ok".into()), Some(o)),
        Err(e) => {
            eprintln!("broctld: {e}");
            let code = e.exit_code();
            (code, format!("failed (exit {code}): {e}"), None)
        }
    }
}
