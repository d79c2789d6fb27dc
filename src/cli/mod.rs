//! The `broctld` program: global options, one-shot commands, the shell, and the hidden
//! Supervisor mode (`__supervisor`), so that one installed executable is the whole daemon.

pub mod args;
pub mod daemon;
pub mod events;
pub mod interrupt;
pub mod mainlog;
pub mod output;
pub mod progress;
pub mod select;
pub mod session;
pub mod shell;
pub mod style;
pub mod top;

use crate::instance::Instance;
use args::{parse_command, split_globals, Cmd, NODE_HELP};
use session::{Outcome, Session};

fn usage() -> String {
    let mut s = String::from(
        "broctld: supervise a Zeek cluster (or any programs) so that the control plane can\n\
         exit, crash or be upgraded without any node restarting.\n\n\
         usage: broctld [OPTIONS]                  open the control shell\n\
         \x20      broctld [OPTIONS] COMMAND [ARGS]   run one command and exit\n\n\
         options:\n\
         \x20 -c, --config FILE     config file (default ./broctld.toml, then /etc/broctld/broctld.toml)\n\
         \x20 -i, --instance NAME   instance name (default 'default'); instances are independent\n\
         \x20     --runtime-dir DIR runtime files (default $BROCTLD_RUNTIME_DIR, else\n\
         \x20                       $XDG_RUNTIME_DIR/broctld, else /run/broctld for root, else /tmp/broctld-$UID)\n\
         \x20     --host NAME       this machine in a folder of HOST.zeek.conf files (default: the hostname)\n\
         \x20 -h, --help            this help\n\
         \x20 -V, --version         print the version\n\ncommands:\n",
    );
    s.push_str(&args::command_list());
    s.push_str(&format!(
        "\n{NODE_HELP}\n\nexit status: 0 success, 1 the command failed, 2 bad usage or config,\n\
         3 `status`: a selected node is not running.\n\n\
         environment: NO_COLOR (no colors), XDG_STATE_HOME (the shell's history),\n\
         BROCTLD_RUNTIME_DIR, NOTIFY_SOCKET (set by systemd for `daemon`).\n"
    ));
    s
}

/// Runs the program with `args` (without `argv[0]`); returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let (globals, words) = match split_globals(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("broctld: {e} (see `broctld --help`)");
            return 2;
        }
    };
    if globals.help {
        print!("{}", usage());
        return 0;
    }
    if globals.version {
        println!("broctld {}", env!("CARGO_PKG_VERSION"));
        return 0;
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
    let cmd = if words.is_empty() {
        None
    } else {
        match parse_command(&words) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("broctld: {e} (see `broctld --help`)");
                return 2;
            }
        }
    };
    if let Some(Cmd::Supervisor { notify_fd }) = cmd {
        let Some(config) = globals.config.clone() else {
            eprintln!("broctld: __supervisor needs --config");
            return 2;
        };
        return crate::supervisor::main(instance, config, notify_fd);
    }
    if let Some(Cmd::Guardian { notify_fd, watch }) = cmd {
        let Some(config) = globals.config.clone() else {
            eprintln!("broctld: __guardian needs --config");
            return 2;
        };
        return crate::guardian::main(instance, config, notify_fd, watch);
    }
    if let Some(Cmd::Daemon) = cmd {
        return daemon::run(instance, globals.config.clone());
    }
    let mut session = Session::new(instance, globals.config.clone());
    match cmd {
        None => shell::run(&mut session),
        Some(cmd) => {
            let (code, result, _) = run_logged(&mut session, &cmd);
            if !matches!(cmd, Cmd::Help(_)) {
                mainlog::append(session.instance(), &words.join(" "), &result);
            }
            code
        }
    }
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
