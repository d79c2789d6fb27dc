//! The `broctld` program: global options, one-shot commands, the shell, and the hidden
//! Supervisor mode (`__supervisor`), so that one installed executable is the whole daemon.

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

/// Runs the program with `args` (without `argv[0]`); returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
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
        std::iter::once("broctld".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print on stdout and exit 0; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let globals = cli.globals;
    let cmd = cli.command;
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
    let runtime_dir = globals
        .runtime_dir
        .clone()
        .unwrap_or_else(Instance::default_runtime_dir);
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
