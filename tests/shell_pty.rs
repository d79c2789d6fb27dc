//! The control shell as a person uses it: in a pseudo-terminal (portable-pty), keys typed one
//! by one, and the screen read back through a terminal emulator (vt100): completion of node
//! names, events announced above the prompt while a line is being typed, colors, live
//! progress, Ctrl-C, Ctrl-D, history across sessions, the prompt's Supervisor state, and what
//! happened while no Main was looking.

mod common;

use common::*;
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const ROWS: u16 = 40;
const COLS: u16 = 140;

const CLUSTER: &str = r#"
[defaults]
stop_timeout_ms = 5000

[[node]]
name = "logger-1"
type = "logger"
command = ["sleep", "600"]

[[node]]
name = "worker-1"
type = "worker"
command = ["sleep", "600"]

[[node]]
name = "worker-2"
type = "worker"
command = ["sleep", "600"]

[[node]]
name = "slow"
type = "other"
command = ["sh", "-c", "trap '' TERM; echo >&3; while :; do sleep 0.1; done"]
ready_fd = 3
stop_timeout_ms = 3000
autostart = false
"#;

/// A `broctld` shell in a pseudo-terminal, with an emulated screen.
struct Term {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Term {
    /// Opens the shell of cluster `c` (no command: the shell) with extra environment.
    fn open(c: &Cluster, env: &[(&str, &str)]) -> Term {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(broctld_bin());
        cmd.args([
            "--runtime-dir".as_ref(),
            c.runtime.as_os_str(),
            "--instance".as_ref(),
            c.instance.as_ref(),
            "--config".as_ref(),
            c.config.as_os_str(),
        ]);
        cmd.cwd(&c.root);
        cmd.env("TERM", "xterm-256color");
        cmd.env("XDG_STATE_HOME", c.root.join("state"));
        cmd.env_remove("NO_COLOR");
        cmd.env_remove("BROCTLD_RUNTIME_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pair.slave.spawn_command(cmd).expect("spawn the shell");
        drop(pair.slave);
        let pid = child.process_id().expect("pid");
        track(c.id, pid, false);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            std::num::NonZeroU16::new(ROWS).unwrap(),
            std::num::NonZeroU16::new(COLS).unwrap(),
            0,
        )));
        let writer = Arc::new(Mutex::new(pair.master.take_writer().expect("writer")));
        let mut reader = pair.master.try_clone_reader().expect("reader");
        let (s, w) = (screen.clone(), writer.clone());
        std::thread::spawn(move || {
            // Keep the master open as long as we read.
            let _master = pair.master;
            let mut buf = [0u8; 8192];
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut p = s.lock().unwrap();
                p.process(&buf[..n]);
                // Answer cursor position reports (ESC [ 6 n), as a real terminal does.
                tail.extend_from_slice(&buf[..n]);
                let asks = tail.windows(4).filter(|x| x == b"\x1b[6n").count();
                if tail.len() > 3 {
                    tail.drain(..tail.len() - 3);
                }
                for _ in 0..asks {
                    let (row, col) = p.screen().cursor_position();
                    let _ = write!(w.lock().unwrap(), "\x1b[{};{}R", row + 1, col + 1);
                }
            }
        });
        Term {
            screen,
            writer,
            child,
        }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// The screen row the cursor is on.
    fn cursor_row(&self) -> String {
        let p = self.screen.lock().unwrap();
        let (row, _) = p.screen().cursor_position();
        let line = p.screen().rows(0, COLS).nth(row as usize);
        line.unwrap_or_default()
    }

    fn send(&self, keys: &str) {
        let mut w = self.writer.lock().unwrap();
        w.write_all(keys.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    /// Types a line and presses Enter.
    fn line(&self, text: &str) {
        self.send(text);
        self.send("\r");
    }

    /// Waits (bounded) until the screen satisfies `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.contents();
            if pred(&text) {
                return text;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {WAIT:?} waiting for {what}; the screen:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the last non-empty row is the prompt `prompt` followed by `typed`.
    fn wait_prompt(&self, prompt: &str, typed: &str) {
        let want = format!("{prompt}{typed}");
        self.wait(&format!("the prompt line '{want}'"), |t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_end() == want.trim_end())
        });
    }

    /// Waits for the shell to exit; its exit status.
    fn exit_status(&mut self) -> u32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.exit_code();
            }
            assert!(
                Instant::now() < deadline,
                "the shell did not exit; screen:\n{}",
                self.contents()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The color of `text` in the first row that starts with `row_start`.
    fn color_of(&self, row_start: &str, text: &str) -> Option<vt100::Color> {
        let p = self.screen.lock().unwrap();
        let screen = p.screen();
        for (r, line) in screen.rows(0, COLS).enumerate() {
            if !line.starts_with(row_start) {
                continue;
            }
            if let Some(byte_col) = line.find(text) {
                let col = line[..byte_col].chars().count() as u16;
                return screen.cell(r as u16, col).map(|c| c.fgcolor());
            }
        }
        None
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prompt(c: &Cluster, state: &str) -> String {
    format!("broctld[{}|{state}]> ", c.instance)
}

#[test]
fn completion_announcements_colors_and_the_line_being_typed() {
    let c = Cluster::new("shell_complete", CLUSTER);
    let s = c.start();
    let t = Term::open(&c, &[]);
    let attached = prompt(&c, "attached");
    t.wait_prompt(&attached, "");
    // Tab completes a command, then a node name as far as it is unambiguous, then lists.
    t.send("sta");
    t.send("\t");
    t.send("\t");
    t.wait("both commands listed", |s| {
        s.lines()
            .any(|l| l.starts_with("start") && l.contains("status") && !l.contains("broctld["))
    });
    t.send("tus wor\t");
    t.wait_prompt(&attached, "status worker");
    t.send("-1\t");
    // Before Enter, a node dies and is restarted: the shell announces it above the prompt
    // and the half-typed line stays as it was.
    t.send("wor");
    t.wait_prompt(&attached, "status worker-1 wor");
    let victim = s["worker-2"].pid.unwrap();
    signal(victim, libc::SIGKILL);
    let screen = t.wait("the death announced", |s| {
        s.contains(&format!("worker-2 exited: pid {victim}, signal 9 (KILL)"))
    });
    t.wait("the restart announced", |s| {
        s.contains("worker-2 spawned: pid")
    });
    assert!(screen.contains("** "), "{screen}");
    t.wait_prompt(&attached, "status worker-1 wor");
    assert!(t.cursor_row().contains("status worker-1 wor"));
    // Take the extra word back and run the line.
    t.send("\x7f\x7f\x7f"); // backspace x3
    t.line("");
    let screen = t.wait("the status table", |s| {
        s.contains("NAME") && s.contains("LAST EXIT") && s.contains("worker-1  worker")
    });
    assert!(
        !screen.contains("logger-1  logger"),
        "only worker-1:\n{screen}"
    );
    // On a terminal, states are colored: running is green.
    assert_eq!(
        t.color_of("worker-1  worker", "running"),
        Some(vt100::Color::Idx(2))
    );
    t.wait_prompt(&attached, "");
    t.line("exit");
    let mut t = t;
    assert_eq!(t.exit_status(), 0);
    // Nothing stopped.
    let after = c.status();
    assert_eq!(after["worker-1"].pid, s["worker-1"].pid);
    assert_eq!(after["worker-1"].state, "running");
}

#[test]
fn ctrl_c_cancels_the_line_ctrl_d_detaches_and_history_persists() {
    let c = Cluster::new("shell_keys", CLUSTER);
    let s = c.start();
    let mut t = Term::open(&c, &[("NO_COLOR", "1")]);
    let attached = prompt(&c, "attached");
    t.wait_prompt(&attached, "");
    // Ctrl-C drops the half-typed command: it never runs.
    t.send("stop worker-1");
    t.wait_prompt(&attached, "stop worker-1");
    t.send("\x03");
    t.wait_prompt(&attached, "");
    t.line("ping");
    t.wait("pong", |s| s.contains("pong from Supervisor pid"));
    t.line("status worker-1");
    t.wait("status of worker-1", |s| {
        s.contains("worker-1  worker  running")
    });
    // NO_COLOR: no colors even on a terminal.
    assert_eq!(
        t.color_of("worker-1  worker", "running"),
        Some(vt100::Color::Default)
    );
    t.wait_prompt(&attached, "");
    // Ctrl-D: detach. The Supervisor and every node keep running.
    t.send("\x04");
    t.wait("the detach message", |s| s.contains("detached"));
    assert_eq!(t.exit_status(), 0);
    let after = c.status();
    assert_eq!(after["worker-1"].pid, s["worker-1"].pid);
    assert_eq!(after["worker-1"].state, "running");
    let history = std::fs::read_to_string(
        c.root
            .join("state/broctld")
            .join(format!("history-{}", c.instance)),
    )
    .expect("history file");
    assert!(history.contains("status worker-1"), "{history}");
    assert!(!history.contains("stop worker-1"), "{history}");
    drop(t);

    // A new shell recalls the previous commands with the up arrow.
    let t = Term::open(&c, &[("NO_COLOR", "1")]);
    t.wait_prompt(&attached, "");
    t.send("\x1b[A");
    t.wait_prompt(&attached, "status worker-1");
    t.send("\x1b[A");
    t.wait_prompt(&attached, "ping");
    t.send("\x03");
    t.line("exit");
}

#[test]
fn the_prompt_follows_the_supervisor_and_a_returning_shell_shows_what_it_missed() {
    let c = Cluster::new("shell_prompt", CLUSTER);
    let s = c.start();
    // A first shell looks, and leaves.
    let mut t = Term::open(&c, &[]);
    let attached = prompt(&c, "attached");
    t.wait_prompt(&attached, "");
    t.line("exit");
    assert_eq!(t.exit_status(), 0);
    drop(t);
    // While no Main looks, worker-1 dies and is restarted.
    let victim = s["worker-1"].pid.unwrap();
    signal(victim, libc::SIGKILL);
    c.wait_status(WAIT, "worker-1 restarted", |s| {
        s["worker-1"].pid.is_some_and(|p| p != victim) && s["worker-1"].state == "running"
    });
    let t = Term::open(&c, &[]);
    let screen = t.wait("what happened while away", |s| {
        s.contains("while no Main was looking:")
    });
    assert!(
        screen.contains(&format!("pid {victim}, signal 9 (KILL)")),
        "{screen}"
    );
    t.wait_prompt(&attached, "");
    // The Supervisor is killed with no guardian left to replace it (the guardian's own
    // replacement is in tests/fault_guardian.rs) while a line is being typed: announced at
    // once, and the prompt says `gone` without waiting for Enter, with the line kept as typed.
    t.send("sta");
    t.wait_prompt(&attached, "sta");
    let sup = c.supervisor_pid();
    kill_guardians(&c.runtime);
    signal(sup, libc::SIGKILL);
    t.wait("the Supervisor's death announced", |s| {
        s.contains(&format!("the Supervisor (pid {sup}) is gone"))
    });
    t.wait_prompt(&prompt(&c, "gone"), "sta");
    let screen = t.contents();
    assert!(
        !screen.contains(&format!("{attached}sta")),
        "the old prompt's row was redrawn, not left behind:\n{screen}"
    );
    // The next command starts a new Supervisor, which adopts the nodes.
    t.line("tus");
    t.wait("the recovery", |s| {
        s.contains("starting a new one to adopt")
    });
    t.wait_prompt(&attached, "");
    let now = c.status();
    assert_eq!(
        now["worker-2"].pid, s["worker-2"].pid,
        "worker-2 kept its pid"
    );
    assert_ne!(c.supervisor_pid(), sup);
    t.line("exit");
}

#[test]
fn stop_shows_live_progress_on_the_terminal() {
    let c = Cluster::new("shell_progress", CLUSTER);
    c.start();
    let t = Term::open(&c, &[]);
    let attached = prompt(&c, "attached");
    let count = |needle: &'static str, n: usize| move |s: &str| s.matches(needle).count() == n;
    t.wait_prompt(&attached, "");
    // `start` of a node that runs says so, with its pid, and sends nothing.
    t.line("start slow");
    t.wait(
        "slow already running",
        count("slow: already running, pid", 1),
    );
    t.wait_prompt(&attached, "");
    // `slow` ignores SIGTERM: the line shows the wait until SIGKILL, in place.
    t.line("stop slow");
    t.wait("live progress", |s| {
        s.contains("stopping slow: SIGTERM sent,") && s.contains("of 3 s (0/1 stopped)")
    });
    let screen = t.wait("the result", count("slow: stopped", 1));
    assert!(
        !screen.contains("stopping slow: SIGTERM sent,"),
        "the progress line is replaced by the result:\n{screen}"
    );
    t.wait_prompt(&attached, "");
    // Ctrl-C while a command waits: the shell stops waiting and stays; the Supervisor
    // carries on with the stop.
    t.line("start slow");
    t.wait("slow running again", count("slow: running (pid", 1));
    t.wait_prompt(&attached, "");
    t.line("stop slow");
    t.wait("progress of the second stop", |s| {
        s.contains("stopping slow: SIGTERM sent,")
    });
    t.send("\x03");
    t.wait("the wait given up", |s| {
        s.contains("stopped waiting (Ctrl-C)")
    });
    t.wait_prompt(&attached, "");
    c.wait_status(WAIT, "slow stopped by the Supervisor", |s| {
        s["slow"].state == "stopped"
    });
    t.line("exit");
}

#[test]
fn top_with_a_delay_redraws_in_place_until_ctrl_c() {
    let c = Cluster::new("shell_top", CLUSTER);
    c.start();
    let t = Term::open(&c, &[]);
    let attached = prompt(&c, "attached");
    t.wait_prompt(&attached, "");
    t.line("top -d 0.3");
    let stamp = |s: &str| {
        s.lines()
            .find(|l| l.contains("every 300ms, Ctrl-C ends"))
            .map(str::to_owned)
    };
    let first = t.wait("a top frame", |s| {
        stamp(s).is_some() && s.contains("THREADS")
    });
    let a = stamp(&first);
    let later = t.wait("a later frame", |s| {
        stamp(s).is_some_and(|b| Some(b) != a) && s.contains("THREADS")
    });
    // Redrawn in place: one header and one table on the screen, from its first row.
    assert_eq!(later.matches("Ctrl-C ends").count(), 1, "{later}");
    assert_eq!(later.matches("THREADS").count(), 1, "{later}");
    assert!(
        later
            .lines()
            .next()
            .is_some_and(|l| l.contains("Ctrl-C ends")),
        "{later}"
    );
    // Ctrl-C ends it; the shell stays.
    t.send("\x03");
    t.wait_prompt(&attached, "");
    t.line("exit");
}

#[test]
fn the_prompt_says_attached_when_another_main_starts_the_supervisor() {
    let c = Cluster::new("shell_appears", CLUSTER);
    let t = Term::open(&c, &[]);
    t.wait_prompt(&prompt(&c, "no supervisor"), "");
    t.send("stat");
    t.wait_prompt(&prompt(&c, "no supervisor"), "stat");
    // Another Main starts the Supervisor: the prompt follows without Enter, the line kept.
    c.start();
    t.wait_prompt(&prompt(&c, "attached"), "stat");
    t.line("us");
    t.wait("the status table", |s| s.contains("LAST EXIT"));
    t.line("exit");
}

/// Leaving the shell says what keeps running, the same for Ctrl-D and `exit`: with a
/// Supervisor, that it and every node run on; with none, that there is none (not that
/// anything "keeps running"). A line that is not UTF-8 is refused and the shell reads on.
#[test]
fn ctrl_d_and_exit_say_what_keeps_running() {
    let c = Cluster::new("shell_leave", CLUSTER);
    let none = prompt(&c, "no supervisor");
    let left = format!(
        "left the shell: no Supervisor runs for instance '{}'",
        c.instance
    );
    for key in ["\x04", "exit\r"] {
        let mut t = Term::open(&c, &[("NO_COLOR", "1")]);
        t.wait_prompt(&none, "");
        t.send(key);
        let screen = t.wait("the leaving message", |s| s.contains(&left));
        assert!(!screen.contains("keep running"), "{key:?}:\n{screen}");
        assert_eq!(t.exit_status(), 0, "{key:?}");
    }
    c.start();
    let attached = prompt(&c, "attached");
    for key in ["\x04", "exit\r"] {
        let mut t = Term::open(&c, &[("NO_COLOR", "1")]);
        t.wait_prompt(&attached, "");
        // Bytes that are not UTF-8, typed as a line: refused or taken, never the end.
        {
            let mut w = t.writer.lock().unwrap();
            w.write_all(b"status \xff\xfe\r").unwrap();
            w.flush().unwrap();
        }
        t.wait("the line refused", |s| {
            s.contains("the line typed is not valid UTF-8; ignored")
        });
        t.wait_prompt(&attached, "");
        t.line("ping");
        t.wait("pong", |s| s.contains("pong from Supervisor pid"));
        t.wait_prompt(&attached, "");
        t.send(key);
        t.wait("the detach message", |s| {
            s.contains("detached: the Supervisor and every node keep running")
        });
        assert_eq!(t.exit_status(), 0, "{key:?}");
    }
    assert!(c.status().values().all(|n| n.state == "running"));
}
