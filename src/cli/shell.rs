//! The interactive control shell: one command per line, the same words as one-shot use.

use super::args::{parse_command, split_line};
use super::session::{Outcome, Session};
use std::io::{BufRead, IsTerminal, Write};

/// Runs the shell on stdin until `exit`/`quit`/`detach`, end of input, or `shutdown`.
pub fn run(session: &mut Session) -> i32 {
    let tty = std::io::stdin().is_terminal();
    let name = session.instance().name().to_owned();
    if tty {
        match session.client() {
            Some(c) => println!(
                "broctld: attached to instance '{name}' (Supervisor pid {}); `help` lists commands, `exit` leaves everything running",
                c.supervisor_pid()
            ),
            None => println!(
                "broctld: no Supervisor runs for instance '{name}'; `start` launches it, `help` lists commands"
            ),
        }
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let state = if session.client().is_some() {
            "attached"
        } else {
            "no supervisor"
        };
        print!("broctld[{name}|{state}]> ");
        let _ = std::io::stdout().flush();
        let Some(Ok(line)) = lines.next() else {
            println!();
            return 0;
        };
        let words = match split_line(&line) {
            Ok(w) if w.is_empty() => continue,
            Ok(w) => w,
            Err(e) => {
                eprintln!("broctld: {e}");
                continue;
            }
        };
        let cmd = match parse_command(&words) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("broctld: {e}");
                continue;
            }
        };
        match session.run(&cmd) {
            Ok(Outcome::Detach) => return 0,
            Ok(Outcome::ShutDown) => return 0,
            Ok(_) => {}
            Err(e) => eprintln!("broctld: {e}"),
        }
    }
}
