//! The interactive control shell: one command per line, the same words as one-shot use.
//!
//! On a terminal it is a line editor (rustyline): history kept across sessions, Tab completes
//! commands, options and node names, Ctrl-C cancels the line, Ctrl-D leaves (the Supervisor and
//! every node keep running). The prompt shows the instance and the Supervisor's state, and is
//! redrawn as soon as that state changes (the announcer pokes the line editor; the line being
//! typed is kept). The threads share a few atomics and no channel: rustyline's blocking
//! `readline` can only be woken by a key, its external printer or a signal, and the announcer
//! waits on the event ring's futex, so neither end could wait on a channel. A thread
//! follows the event ring and announces what happens (a node died and was restarted, another
//! operator stopped a node) above the prompt without disturbing the line being typed. On open,
//! the shell shows what happened while no Main was looking.
//!
//! With stdin or stdout not a terminal (a script piping commands in), it reads plain lines and
//! prints a plain prompt; nothing is announced.

use super::args::{command_options, commands, parse_shell_words, split_line, takes_nodes, Cmd};
use super::events::{self, Names, Seen};
use super::session::{Outcome, Session};
use super::style::{code, Style};
use super::{interrupt, mainlog};
use crate::client::Client;
use crate::config::NodeType;
use crate::instance::Instance;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Context, Editor, ExternalPrinter, Helper};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Events shown on open, at most; older ones are counted.
pub const AWAY_LINES: usize = 20;

/// Runs the shell until `exit`/`quit`/`detach`, Ctrl-D or end of input, or `shutdown`.
pub fn run(session: &mut Session) -> i32 {
    session.set_in_shell();
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        run_interactive(session)
    } else {
        run_plain(session)
    }
}

/// Runs one line; `Some(code)` when the shell should end.
fn run_line(session: &mut Session, line: &str) -> Option<i32> {
    let words = match split_line(line) {
        Ok(w) if w.is_empty() => return None,
        Ok(w) => w,
        Err(e) => {
            eprintln!("broctld: {e}");
            return None;
        }
    };
    let cmd = match parse_shell_words(&words) {
        Ok(c) => c,
        Err(e) => {
            // A usage error (with clap's suggestion), or the help `COMMAND --help` asked for.
            let text = super::args::shell_error_text(&e);
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            return None;
        }
    };
    if cmd == Cmd::Daemon {
        eprintln!("broctld: `daemon` runs on its own (`broctld daemon`), not in the shell");
        return None;
    }
    interrupt::clear();
    let (_, result, outcome) = super::run_logged(session, &cmd);
    if !matches!(cmd, Cmd::Help { .. }) {
        mainlog::append(
            session.instance(),
            &format!("shell: {}", words.join(" ")),
            &result,
        );
    }
    match outcome {
        Some(Outcome::Detach) => {
            println!("{}", leaving(session));
            Some(0)
        }
        // `shutdown` ends the shell too: the Supervisor is gone.
        Some(Outcome::ShutDown) => Some(0),
        _ => None,
    }
}

/// What the shell says as it closes by `exit`, `quit`, `detach` or Ctrl-D: that everything
/// keeps running, or, with no Supervisor, that there was none (nothing keeps running for it).
fn leaving(session: &mut Session) -> String {
    match session.supervisor_word() {
        "no supervisor" => format!(
            "left the shell: no Supervisor runs for instance '{}'",
            session.instance().name()
        ),
        _ => "detached: the Supervisor and every node keep running".into(),
    }
}

/// One input line of a script: its bytes as text, or, when they are not UTF-8, a message
/// saying so (the line is skipped and the shell reads on).
fn script_line(bytes: &[u8], number: usize) -> Result<String, String> {
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    std::str::from_utf8(trimmed)
        .map(str::to_owned)
        .map_err(|_| {
            format!(
                "input line {number} is not valid UTF-8, skipped: {}",
                super::output::bytes_shown(trimmed)
            )
        })
}

fn run_plain(session: &mut Session) -> i32 {
    let name = session.instance().name().to_owned();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut bytes = Vec::new();
    let mut number = 0;
    loop {
        let state = session.supervisor_word();
        print!("broctld[{name}|{state}]> ");
        let _ = super::output::checked_write(std::io::stdout().flush());
        bytes.clear();
        match input.read_until(b'\n', &mut bytes) {
            Ok(0) => {
                println!();
                return 0;
            }
            Ok(_) => {}
            Err(e) => {
                println!();
                eprintln!("broctld: reading input: {e}");
                return 1;
            }
        }
        number += 1;
        match script_line(&bytes, number) {
            Ok(line) => {
                if let Some(code) = run_line(session, &line) {
                    return code;
                }
            }
            Err(why) => eprintln!("broctld: {why}"),
        }
    }
}

/// Where the shell keeps its history: `$XDG_STATE_HOME/broctld/history-INSTANCE` if that is
/// set, else `RUNTIME/INSTANCE/history`.
pub fn history_path(instance: &Instance) -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) if PathBuf::from(&d).is_absolute() => PathBuf::from(d)
            .join("broctld")
            .join(format!("history-{}", instance.name())),
        _ => instance.dir().join("history"),
    }
}

fn prompt_color(word: &str) -> &'static str {
    match word {
        "attached" => code::GREEN,
        "gone" => code::BOLD_RED,
        "restarting" | "shutting down" => code::YELLOW,
        _ => code::DIM,
    }
}

/// Tab completion: commands, their options, node names, roles and signal names. It also
/// keeps the line being typed (rustyline shows it to the hinter after every change), so that
/// a prompt redrawn for a new Supervisor state gives the line back as it was.
pub struct ShellHelper {
    names: Arc<Mutex<Vec<String>>>,
    typed: Mutex<(String, usize)>,
}

impl ShellHelper {
    /// What `word` may complete to, given the words before it on the line.
    pub fn candidates(&self, before: &[&str], word: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        match before.first() {
            None => {
                for (name, aliases, _) in commands() {
                    out.push(name);
                    out.extend(aliases);
                }
            }
            Some(&"help") if before.len() == 1 => {
                out.extend(commands().into_iter().map(|c| c.0));
            }
            Some(&"signal") if before.len() == 1 => {
                out.extend(crate::config::signal_names().map(String::from));
            }
            Some(cmd) => {
                if word.starts_with('-') {
                    out.extend(command_options(cmd));
                } else if takes_nodes(cmd) {
                    out.extend(self.names.lock().map(|n| n.clone()).unwrap_or_default());
                    out.extend(NodeType::ALL.iter().map(|t| t.plural().to_owned()));
                    out.push("all".into());
                }
            }
        }
        out.retain(|c| c.starts_with(word));
        out.sort();
        out.dedup();
        out
    }
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let cands = self
            .candidates(&words, &before[start..])
            .into_iter()
            .map(|c| Pair {
                display: c.clone(),
                replacement: format!("{c} "),
            })
            .collect();
        Ok((start, cands))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<String> {
        if let Ok(mut t) = self.typed.lock() {
            t.0.clear();
            t.0.push_str(line);
            t.1 = pos;
        }
        None
    }
}

impl ShellHelper {
    /// The line as typed so far, split at the cursor (taken once).
    fn take_typed(&self) -> (String, String) {
        let Ok(mut t) = self.typed.lock() else {
            return Default::default();
        };
        let (line, pos) = std::mem::take(&mut *t);
        let pos = (0..=pos.min(line.len()))
            .rev()
            .find(|&p| line.is_char_boundary(p))
            .unwrap_or(0);
        (line[..pos].to_owned(), line[pos..].to_owned())
    }
}

impl Highlighter for ShellHelper {}

impl Validator for ShellHelper {}

impl Helper for ShellHelper {}

/// Shared between the shell and its announcer thread.
struct AnnounceState {
    stop: AtomicBool,
    /// Events numbered below this happened while a command of ours ran: only notable ones
    /// are announced (the command itself reports the rest).
    quiet_until: AtomicU64,
    /// The command showed the events itself: do not announce the notable ones it held.
    drop_held: AtomicBool,
    /// The announcer's position, for `main.seen`.
    region: AtomicU64,
    next: AtomicU64,
    /// Whether the main thread is in the line editor (held while it is poked, so that a
    /// poke never lands on a running command).
    reading: Mutex<bool>,
    /// When the announcer poked the line editor (monotonic ms; 0: no poke pending): redraw
    /// the prompt, keep the line.
    poked_at: AtomicU64,
    /// The main thread, which runs the line editor.
    main: nix::sys::pthread::Pthread,
    /// Whether the prompt being shown says `attached`.
    shows_attached: AtomicBool,
}

impl AnnounceState {
    /// Makes the line editor give the line back so that the prompt is drawn again with the
    /// Supervisor's new state. rustyline can only be woken by a key, by its external printer
    /// (which prints and redraws the old prompt) or by SIGINT, which it turns into
    /// `Interrupted` while it reads; outside the editor SIGINT only sets the Ctrl-C flag,
    /// which the next command clears before it runs.
    fn poke_editor(&self) {
        let Ok(reading) = self.reading.lock() else {
            return;
        };
        if *reading {
            let now = crate::sys::clock::monotonic_ns() / 1_000_000;
            self.poked_at.store(now.max(1), Ordering::SeqCst);
            let _ = nix::sys::pthread::pthread_kill(self.main, nix::sys::signal::SIGINT);
        }
    }

    /// Pokes again if a poke has gone unanswered for a while: SIGINT reaches rustyline only
    /// once it has installed its handler for this line, so a poke sent just as the editor
    /// started (or before the main thread came back to it) is lost.
    fn repoke_if_lost(&self) {
        let at = self.poked_at.load(Ordering::SeqCst);
        let now = crate::sys::clock::monotonic_ns() / 1_000_000;
        if at != 0 && now.saturating_sub(at) >= 500 {
            self.poke_editor();
        }
    }

    /// Whether a poke is pending (taken once).
    fn take_poke(&self) -> bool {
        self.poked_at.swap(0, Ordering::SeqCst) != 0
    }

    fn set_reading(&self, on: bool) {
        if let Ok(mut r) = self.reading.lock() {
            *r = on;
        }
    }
}

/// Follows the event ring in a thread and prints through rustyline's external printer.
struct Announcer {
    state: Arc<AnnounceState>,
}

impl Announcer {
    fn start(
        instance: Instance,
        printer: Option<Box<dyn ExternalPrinter + Send>>,
        style: Style,
        start: Option<Seen>,
    ) -> Announcer {
        let state = Arc::new(AnnounceState {
            stop: AtomicBool::new(false),
            quiet_until: AtomicU64::new(0),
            drop_held: AtomicBool::new(false),
            region: AtomicU64::new(start.map_or(0, |s| s.region)),
            next: AtomicU64::new(start.map_or(0, |s| s.next)),
            reading: Mutex::new(false),
            poked_at: AtomicU64::new(0),
            shows_attached: AtomicBool::new(false),
            main: nix::sys::pthread::pthread_self(),
        });
        let st = state.clone();
        std::thread::spawn(move || announce_loop(instance, printer, style, st));
        Announcer { state }
    }

    /// A command starts: hold back the events it causes.
    fn command_starts(&self) {
        self.state.quiet_until.store(u64::MAX, Ordering::SeqCst);
    }

    /// Back at the prompt: events from `head` on are announced in full; `shown` if the
    /// command printed the events itself.
    fn command_ends(&self, head: u64, shown: bool) {
        if shown {
            self.state.drop_held.store(true, Ordering::SeqCst);
        }
        self.state.quiet_until.store(head, Ordering::SeqCst);
    }

    fn seen(&self) -> Option<Seen> {
        let region = self.state.region.load(Ordering::SeqCst);
        (region != 0).then(|| Seen {
            region,
            next: self.state.next.load(Ordering::SeqCst),
        })
    }

    fn stop(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn announce_loop(
    instance: Instance,
    mut printer: Option<Box<dyn ExternalPrinter + Send>>,
    style: Style,
    st: Arc<AnnounceState>,
) {
    let mut say = |text: String| {
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
        match printer.as_mut() {
            Some(p) => {
                let _ = p.print(format!("{text}\n"));
            }
            None => println!("{text}"),
        }
    };
    // While a command of ours runs, only notable things are kept, and shown after it.
    let quiet = || st.quiet_until.load(Ordering::SeqCst) == u64::MAX;
    let mut client: Option<Client> = None;
    // Lines to show, with the event number they come from (None: about the Supervisor).
    let mut held: Vec<(Option<u64>, String)> = Vec::new();
    let mut was_attached = false;
    while !st.stop.load(Ordering::SeqCst) {
        st.repoke_if_lost();
        if !quiet() {
            if st.drop_held.swap(false, Ordering::SeqCst) {
                // The command itself showed the events that happened while it ran (`events`).
                let from = st.quiet_until.load(Ordering::SeqCst);
                held.retain(|(seq, _)| seq.is_none_or(|n| n >= from));
            }
            // A line about the Supervisor (no event number) means the prompt's word changed.
            let supervisor_changed = held.iter().any(|(seq, _)| seq.is_none());
            for (_, l) in held.drain(..) {
                say(l);
            }
            if supervisor_changed {
                st.poke_editor();
            }
        }
        let alive = client.as_ref().is_some_and(Client::supervisor_alive);
        if !alive {
            if let Some(c) = client.take() {
                let msg = match c.supervisor_state() {
                    Some(crate::protocol::layout::SupervisorState::Exited) => format!(
                        "** the Supervisor (pid {}) exited",
                        c.supervisor_pid()
                    ),
                    _ => format!(
                        "** the Supervisor (pid {}) is gone; its nodes keep running, and its guardian (or, if none runs, the next command) starts a new Supervisor that adopts them",
                        c.supervisor_pid()
                    ),
                };
                held.push((None, style.paint(code::BOLD_RED, &msg)));
                continue;
            }
            match Client::attach(&instance) {
                Ok(c) => {
                    watch_supervisor(instance.clone(), c.supervisor_pid(), st.clone());
                    let region = events::region_id(&c);
                    if st.region.load(Ordering::SeqCst) != region {
                        // A region we have not followed: from its start if we saw its
                        // predecessor die, else from now.
                        let from = if was_attached {
                            c.oldest_event()
                        } else {
                            c.event_head()
                        };
                        st.region.store(region, Ordering::SeqCst);
                        st.next.store(from, Ordering::SeqCst);
                    }
                    if was_attached {
                        held.push((
                            None,
                            style.paint(
                                code::BOLD,
                                &format!(
                                    "** attached to the Supervisor pid {} (generation {})",
                                    c.supervisor_pid(),
                                    c.generation()
                                ),
                            ),
                        ));
                    }
                    if !was_attached && !st.shows_attached.load(Ordering::SeqCst) {
                        // A Supervisor appeared (another Main started one): say so in the
                        // prompt.
                        st.poke_editor();
                    }
                    was_attached = true;
                    client = Some(c);
                    continue;
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let mut cursor = st.next.load(Ordering::SeqCst);
        let names = Names::of(c);
        let capacity = c.shared().ring().capacity();
        while let Some((seq, ev, missed)) = c.next_event(&mut cursor) {
            if missed > 0 {
                held.push((
                    None,
                    format!("** {}", events::missed_note(missed, capacity)),
                ));
            }
            let line = format!("** {}", events::short_line(&ev, &names, style));
            if seq >= st.quiet_until.load(Ordering::SeqCst) || events::is_notable(&ev) {
                held.push((Some(seq), line));
            }
        }
        st.next.store(cursor, Ordering::SeqCst);
        if !held.is_empty() && !quiet() {
            continue; // show them now
        }
        c.wait_event(cursor, Duration::from_millis(250));
    }
}

/// Wakes the announcer the moment the Supervisor `pid` exits (its pidfd becomes readable), so
/// that a `kill -9` is announced and the prompt redrawn at once, not at the announcer's next
/// look at the ring (it waits on the ring's futex, which a killed Supervisor never wakes).
fn watch_supervisor(instance: Instance, pid: u32, st: Arc<AnnounceState>) {
    std::thread::spawn(move || {
        let Ok(fd) = crate::sys::pidfd::open(pid) else {
            return; // gone already: the announcer sees it on its next look
        };
        loop {
            if st.stop.load(Ordering::SeqCst) {
                return;
            }
            match crate::sys::pidfd::wait_exit(&fd, Duration::from_secs(1)) {
                Ok(true) => break,
                Ok(false) => continue,
                Err(_) => return,
            }
        }
        if let Ok(shared) = crate::protocol::Shared::open(&instance.shm_name()) {
            shared.ring().wake_all();
        }
    });
}

/// Prints what happened since this instance's Mains last looked (at most [`AWAY_LINES`]
/// events), and returns the position after it.
fn show_while_away(client: &Client, style: Style) -> Seen {
    let region = events::region_id(client);
    let head = client.event_head();
    let saved = events::load_seen(client.instance());
    let (mut cursor, note) = events::since_last_seen(client);
    if saved.is_none() {
        return Seen { region, next: head };
    }
    let names = Names::of(client);
    let mut lines = Vec::new();
    let mut missed_total = 0;
    while let Some((seq, ev, missed)) = client.next_event(&mut cursor) {
        missed_total += missed;
        lines.push(events::line(seq, &ev, &names, style));
    }
    if lines.is_empty() && missed_total == 0 && note.is_none() {
        return Seen {
            region,
            next: cursor,
        };
    }
    println!("while no Main was looking:");
    if let Some(n) = note {
        println!("  ({n})");
    }
    if missed_total > 0 {
        println!(
            "  ({})",
            events::missed_note(missed_total, client.shared().ring().capacity())
        );
    }
    if lines.len() > AWAY_LINES {
        println!(
            "  ... {} earlier event(s) (`events --since {}` lists them)",
            lines.len() - AWAY_LINES,
            head.saturating_sub(lines.len() as u64)
        );
    }
    for l in &lines[lines.len().saturating_sub(AWAY_LINES)..] {
        println!("  {l}");
    }
    Seen {
        region,
        next: cursor,
    }
}

fn run_interactive(session: &mut Session) -> i32 {
    interrupt::install();
    let style = Style::stdout();
    let name = session.instance().name().to_owned();
    let names = Arc::new(Mutex::new(Vec::new()));
    let config = rustyline::Config::builder()
        .auto_add_history(true)
        .max_history_size(1000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| {
            b.history_ignore_space(true)
                .completion_type(CompletionType::List)
                .build()
        })
        .unwrap_or_default();
    let mut ed: Editor<ShellHelper, FileHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("broctld: cannot use the terminal ({e}); reading plain lines");
            return run_plain(session);
        }
    };
    ed.set_helper(Some(ShellHelper {
        names: names.clone(),
        typed: Mutex::new(Default::default()),
    }));
    let history = history_path(session.instance());
    if let Some(dir) = history.parent() {
        if dir.starts_with(session.instance().dir()) {
            let _ = session.instance().ensure_dirs();
        } else {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let _ = ed.load_history(&history);
    let start = match session.client() {
        Some(c) => {
            println!(
                "broctld: attached to '{name}' (Supervisor pid {}); `help` lists commands, Ctrl-D leaves",
                c.supervisor_pid()
            );
            let seen = show_while_away(c, style);
            events::save_seen(session.instance(), seen);
            Some(seen)
        }
        None => {
            println!(
                "broctld: no Supervisor runs for instance '{name}'; `start` launches it, `help` lists commands"
            );
            None
        }
    };
    let printer: Option<Box<dyn ExternalPrinter + Send>> = ed
        .create_external_printer()
        .ok()
        .map(|p| Box::new(p) as Box<dyn ExternalPrinter + Send>);
    let announcer = Announcer::start(session.instance().clone(), printer, style, start);
    let mut last_was_events = false;
    let mut keep = (String::new(), String::new());
    let code = loop {
        if let Ok(mut n) = names.lock() {
            *n = session.node_names();
        }
        let word = session.supervisor_word();
        announcer
            .state
            .shows_attached
            .store(word == "attached", Ordering::SeqCst);
        let raw = format!("broctld[{name}|{word}]> ");
        let styled = if style.color {
            format!(
                "broctld[{name}|{}]> ",
                style.paint(prompt_color(word), word)
            )
        } else {
            raw.clone()
        };
        announcer.command_ends(session.event_head_if_attached(), last_was_events);
        let typed = std::mem::take(&mut keep);
        announcer.state.set_reading(true);
        let read = ed.readline_with_initial(
            &(raw.as_str(), styled.as_str()),
            (typed.0.as_str(), typed.1.as_str()),
        );
        announcer.state.set_reading(false);
        match read {
            Err(ReadlineError::Interrupted) if announcer.state.take_poke() => {
                // The Supervisor's state changed while the line was being typed: erase the
                // old prompt's row and draw the new one with the line as it was.
                keep = ed.helper().map(ShellHelper::take_typed).unwrap_or_default();
                // rustyline ended the line with a newline: go back up over the rows the
                // prompt and the line took, and clear from there.
                let width = raw.chars().count() + keep.0.chars().count() + keep.1.chars().count();
                let rows = width / super::progress::terminal_width().max(1) + 1;
                print!("\x1b[{rows}A\r\x1b[J");
                let _ = std::io::stdout().flush();
                continue;
            }
            Ok(line) => {
                // The prompt is drawn afresh after the command: a pending poke is moot.
                announcer.state.take_poke();
                announcer.command_starts();
                last_was_events = line.split_whitespace().next() == Some("events");
                let _ = ed.append_history(&history);
                if let Some(code) = run_line(session, &line) {
                    break code;
                }
            }
            Err(ReadlineError::Interrupted) => {
                if let Some(h) = ed.helper() {
                    h.take_typed(); // Ctrl-C cancels the line
                }
                continue;
            }
            Err(ReadlineError::Eof) => {
                println!("{}", leaving(session));
                mainlog::append(session.instance(), "shell: Ctrl-D", "detached");
                break 0;
            }
            // Bytes that are not UTF-8 (a paste, a wrong terminal encoding): that line is
            // dropped and the shell reads on.
            Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                if let Some(h) = ed.helper() {
                    h.take_typed();
                }
                eprintln!("broctld: the line typed is not valid UTF-8; ignored");
                continue;
            }
            Err(e) => {
                eprintln!("broctld: reading the terminal: {e}");
                break 1;
            }
        }
    };
    announcer.stop();
    if let Some(seen) = announcer.seen() {
        if session.supervisor_word() != "no supervisor" {
            events::save_seen(session.instance(), seen);
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_offers_commands_options_and_nodes() {
        let h = ShellHelper {
            names: Arc::new(Mutex::new(vec!["worker-1".into(), "worker-2".into()])),
            typed: Mutex::new(Default::default()),
        };
        assert_eq!(h.candidates(&[], "sta"), vec!["start", "status"]);
        assert_eq!(
            h.candidates(&["stop"], "wor"),
            vec!["worker-1", "worker-2", "workers"]
        );
        assert_eq!(h.candidates(&["status"], "--j"), vec!["--json"]);
        assert_eq!(h.candidates(&["signal"], "HU"), vec!["HUP"]);
        assert_eq!(h.candidates(&["help"], "di"), vec!["diag"]);
        assert!(h.candidates(&["ping"], "w").is_empty());
    }
}
