//! The operator's read-mostly commands: `events`, `logs`, `diag`, `top`, `nodes`, `config`.

use super::{CliError, Outcome, Session};
use crate::cli::events::{self, Names, Seen};
use crate::cli::output;
use crate::cli::select;
use crate::cli::style::{code, state_color, Cell, Style};
use crate::cli::{interrupt, top};
use crate::client::{Client, NodeStatus};
use crate::config::{Config, NodeSpec};
use crate::protocol::layout::SupervisorState;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Session {
    pub(super) fn events(
        &mut self,
        follow: bool,
        since: Option<u64>,
        last: Option<usize>,
        json: bool,
    ) -> Result<Outcome, CliError> {
        self.require_client()?;
        // Following owns its own attachment: it re-attaches when a new Supervisor takes over,
        // and never starts one itself.
        let mut client = Client::attach(&self.instance)?;
        let style = self.style;
        let head = client.event_head();
        let (mut cursor, note) = match since {
            Some(s) => (s, None),
            None if last.is_some() => (client.oldest_event(), None),
            None => events::since_last_seen(&client),
        };
        if let Some(n) = last {
            cursor = cursor.max(head.saturating_sub(n as u64));
        }
        if let Some(n) = note {
            eprintln!("broctld: {n}");
        }
        if follow {
            interrupt::install();
        }
        let capacity = client.shared().ring().capacity();
        let mut shown = 0u64;
        let mut missed_total = 0u64;
        let mut region = events::region_id(&client);
        let mut names = Names::of(&client);
        let mut shut_down = false;
        loop {
            while let Some((seq, ev, missed)) = client.next_event(&mut cursor) {
                if missed > 0 {
                    missed_total += missed;
                    eprintln!("broctld: {}", events::missed_note(missed, capacity));
                }
                if names.stale_for(&ev) && client.config_epoch() != names.epoch {
                    names.refresh(&client);
                }
                if json {
                    println!("{}", events::json(seq, &ev, &names));
                } else {
                    println!("{}", events::line(seq, &ev, &names, style));
                }
                shown += 1;
                if ev.kind == crate::protocol::event::EventKind::CommandApplied {
                    names.refresh(&client);
                }
            }
            if shut_down {
                // Its region is gone with it: nothing of it is left to look at again.
                events::forget_seen(&self.instance);
                break;
            }
            events::save_seen(
                &self.instance,
                Seen {
                    region,
                    next: cursor,
                },
            );
            if !follow {
                break;
            }
            if output::follow_should_end() {
                break;
            }
            // A clean `shutdown` (by any Main): the Supervisor said so before it removed its
            // region, and no Supervisor follows it. Read what it wrote last, then end.
            if client.supervisor_state() == Some(SupervisorState::Exited) {
                shut_down = true;
                continue;
            }
            // Truncated under us (a SIGBUS was caught), or replaced by a rebuilt one.
            let damaged =
                client.shared().damaged() || !client.shared().still_named().unwrap_or(true);
            if damaged || !client.supervisor_alive() {
                if damaged {
                    eprintln!(
                        "broctld: the region {} was truncated or replaced by another process; waiting for the Supervisor to rebuild it",
                        client.shared().path().display()
                    );
                } else {
                    eprintln!(
                        "broctld: the Supervisor (pid {}) is gone; waiting for a new one",
                        client.supervisor_pid()
                    );
                }
                loop {
                    if output::follow_should_end() {
                        return Ok(Outcome::Done);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                    if let Ok(c) = Client::attach(&self.instance) {
                        client = c;
                        break;
                    }
                }
                if events::region_id(&client) != region {
                    region = events::region_id(&client);
                    cursor = client.oldest_event();
                }
                names.refresh(&client);
                eprintln!(
                    "broctld: following the Supervisor pid {} (generation {})",
                    client.supervisor_pid(),
                    client.generation()
                );
                continue;
            }
            client.wait_event(cursor, Duration::from_millis(250));
        }
        if shut_down {
            eprintln!(
                "broctld: instance '{}' was shut down (the Supervisor, pid {}, exited); nothing more will happen until a `start`",
                self.instance.name(),
                client.supervisor_pid()
            );
            self.note(format!(
                "{shown} event(s) shown; the instance was shut down"
            ));
            return Ok(Outcome::Done);
        }
        if shown == 0 && !follow && !json {
            eprintln!(
                "broctld: no new events (#{} is the next; `events --since 0` shows the {} held)",
                cursor,
                cursor - client.oldest_event().min(cursor)
            );
        }
        self.note(format!(
            "{shown} event(s) shown{}",
            if missed_total > 0 {
                format!(", {missed_total} missed")
            } else {
                String::new()
            }
        ));
        Ok(Outcome::Done)
    }

    /// The one configured node that `word` names.
    fn one_node(&mut self, word: &str) -> Result<NodeSpec, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, &[word.to_owned()]).map_err(CliError::Usage)?;
        match idx.as_slice() {
            [i] => Ok(config.nodes[*i].clone()),
            [] => Err(CliError::Usage(format!("no node matches '{word}'"))),
            more => Err(CliError::Usage(format!(
                "'{word}' names {} nodes ({}); name one",
                more.len(),
                more.iter()
                    .map(|&i| config.nodes[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub(super) fn logs(
        &mut self,
        word: &str,
        lines: usize,
        follow: bool,
        stderr: bool,
        json: bool,
    ) -> Result<Outcome, CliError> {
        let spec = self.one_node(word)?;
        let path = if stderr { &spec.stderr } else { &spec.stdout };
        let tail = match crate::cli::logfiles::tail(path, lines) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !json {
                    eprintln!(
                        "broctld: {} has written nothing to {} yet",
                        spec.name,
                        path.display()
                    );
                }
                Vec::new()
            }
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        if json {
            println!(
                "{}",
                serde_json::json!({"node": spec.name, "file": path.to_string_lossy(), "lines": tail})
            );
        } else {
            for l in &tail {
                println!("{l}");
            }
        }
        self.note(format!(
            "{} line(s) of {}{}",
            tail.len(),
            path.display(),
            if follow { ", following" } else { "" }
        ));
        if follow {
            interrupt::install();
            let out = std::io::stdout();
            crate::cli::logfiles::follow(
                path,
                output::follow_should_end,
                |lines| {
                    let mut o = out.lock();
                    let _ = crate::cli::output::checked_write(
                        o.write_all(lines).and_then(|()| o.flush()),
                    );
                },
                |note| eprintln!("broctld: {note}"),
            )
            .map_err(|e| CliError::Failed(format!("cannot follow {}: {e}", path.display())))?;
        }
        Ok(Outcome::Done)
    }

    pub(super) fn diag(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeSpec> = idx.iter().map(|&i| &config.nodes[i]).collect();
        let reports: Vec<(&NodeSpec, Vec<CrashInfo>)> = chosen
            .iter()
            .map(|n| {
                let mut v: Vec<CrashInfo> = crate::supervisor::crash::list(&n.cwd)
                    .into_iter()
                    .map(|p| CrashInfo::read(&p))
                    .collect();
                v.reverse(); // newest first
                (*n, v)
            })
            .collect();
        let total: usize = reports.iter().map(|(_, v)| v.len()).sum();
        if !json {
            if let Some(crate::supervisor::cgroups::Tracking::Fallback(why)) =
                crate::supervisor::cgroups::tracking(&self.instance.dir())
            {
                println!("{}", crate::supervisor::cgroups::fallback_note(&why));
            }
        }
        self.note(format!("{total} crash report(s)"));
        if json {
            let items: Vec<Value> = reports
                .iter()
                .map(|(n, v)| {
                    let latest = v
                        .first()
                        .and_then(|c| std::fs::read_to_string(&c.path).ok());
                    json!({
                        "node": n.name,
                        "dir": n.cwd.to_string_lossy(),
                        "reports": v.iter().map(CrashInfo::json).collect::<Vec<_>>(),
                        "latest": latest,
                    })
                })
                .collect();
            println!("{}", output::pretty(&Value::Array(items)));
            return Ok(Outcome::Done);
        }
        if let [(n, v)] = reports.as_slice() {
            let Some(latest) = v.first() else {
                println!(
                    "no crash report for {} in {}: it has not died abnormally since reports were kept",
                    n.name,
                    n.cwd.display()
                );
                return Ok(Outcome::Done);
            };
            println!(
                "{} {} (latest of {}):",
                self.style.paint(code::BOLD, "crash report"),
                latest.path.display(),
                v.len()
            );
            let text = std::fs::read_to_string(&latest.path).map_err(|e| {
                CliError::Failed(format!("cannot read {}: {e}", latest.path.display()))
            })?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            if v.len() > 1 {
                println!("\nolder reports of {}:", n.name);
                print!("{}", crash_table(&v[1..], None, self.style));
            }
            return Ok(Outcome::Done);
        }
        let rows: Vec<(String, &CrashInfo, usize)> = reports
            .iter()
            .filter_map(|(n, v)| v.first().map(|c| (n.name.clone(), c, v.len())))
            .collect();
        if rows.is_empty() {
            println!("no crash reports for {} node(s)", chosen.len());
            return Ok(Outcome::Done);
        }
        let infos: Vec<CrashInfo> = rows.iter().map(|(_, c, _)| (*c).clone()).collect();
        let labels: Vec<(String, usize)> = rows.iter().map(|(n, _, k)| (n.clone(), *k)).collect();
        print!("{}", crash_table(&infos, Some(&labels), self.style));
        println!("(`diag NODE` prints a node's latest report in full)");
        Ok(Outcome::Done)
    }

    /// `top`: once, or every `delay` seconds until Ctrl-C (redrawn in place on a terminal).
    /// Exit status 3 when no Supervisor runs: nothing is measured.
    pub(super) fn top(
        &mut self,
        words: &[String],
        json: bool,
        delay: Option<f64>,
    ) -> Result<Outcome, CliError> {
        if self.client().is_none() {
            return Ok(self.nothing_runs(json, ": no node runs"));
        }
        let Some(delay) = delay else {
            let (text, measured) = self.top_once(words, json, Duration::from_millis(300))?;
            print!("{text}");
            self.note(format!("{measured} node(s) measured"));
            return Ok(Outcome::Done);
        };
        interrupt::install();
        let live = std::io::stdout().is_terminal();
        let interval = Duration::from_secs_f64(delay);
        let mut rounds = 0u64;
        while !output::follow_should_end() {
            if self.client().is_none() {
                println!(
                    "the Supervisor of instance '{}' is gone",
                    self.instance.name()
                );
                break;
            }
            let (text, _) = self.top_once(words, false, interval)?;
            if interrupt::pending() {
                break;
            }
            let head = format!(
                "{} every {}, Ctrl-C ends",
                crate::sys::clock::format_wall_ms(crate::sys::clock::wall_ms()),
                output::limit(interval)
            );
            let mut out = std::io::stdout().lock();
            let written = if live {
                // Home, the frame, then clear whatever an earlier, longer frame left below.
                write!(out, "\x1b[H\x1b[2J{head}\n{text}")
            } else {
                write!(out, "{head}\n{text}\n")
            };
            let _ = output::checked_write(written.and_then(|()| out.flush()));
            rounds += 1;
        }
        self.note(format!("{rounds} refresh(es)"));
        Ok(Outcome::Done)
    }

    /// One `top` frame measured over `interval`: the text and how many nodes were measured.
    fn top_once(
        &mut self,
        words: &[String],
        json: bool,
        interval: Duration,
    ) -> Result<(String, usize), CliError> {
        let style = self.style;
        let instance_dir = self.instance.dir();
        let client = self
            .client()
            .ok_or_else(|| CliError::Failed("the Supervisor is gone".into()))?;
        let nodes = client.status();
        let idx = select::select(&nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeStatus> = idx.iter().map(|&i| &nodes[i]).collect();
        let leaders: Vec<u32> = chosen.iter().filter_map(|n| n.pid).collect();
        // With a cgroup per node, a node's processes are its group's.
        let members: HashMap<u32, Vec<u32>> = chosen
            .iter()
            .filter_map(|n| {
                let pid = n.pid?;
                crate::supervisor::cgroups::node_processes(&instance_dir, &n.name).map(|m| (pid, m))
            })
            .collect();
        let usage = top::measure(&leaders, &members, interval);
        // Uptimes after the sampling pause.
        let fresh: HashMap<usize, NodeStatus> =
            client.status().into_iter().map(|n| (n.index, n)).collect();
        if json {
            let items: Vec<Value> = chosen
                .iter()
                .map(|n| {
                    let n = fresh.get(&n.index).unwrap_or(n);
                    let u = n.pid.and_then(|p| usage.get(&p));
                    json!({
                        "name": n.name,
                        "state": n.state.as_str(),
                        "pid": n.pid,
                        "procs": u.map(|u| u.procs),
                        "cpu_percent": u.map(|u| (u.cpu_percent * 10.0).round() / 10.0),
                        "rss_bytes": u.map(|u| u.rss_bytes),
                        "threads": u.map(|u| u.threads),
                        "uptime_ms": n.uptime.map(|d| d.as_millis() as u64),
                    })
                })
                .collect();
            return Ok((
                format!("{}\n", output::pretty(&Value::Array(items))),
                leaders.len(),
            ));
        }
        let rows: Vec<Vec<Cell>> = chosen
            .iter()
            .map(|n| {
                let n = fresh.get(&n.index).unwrap_or(n);
                let u = n.pid.and_then(|p| usage.get(&p));
                let dash = || Cell::new("-");
                vec![
                    Cell::new(n.name.clone()),
                    Cell::colored(n.state.as_str(), state_color(n.state.as_str())),
                    n.pid.map_or_else(dash, |p| Cell::new(p.to_string())),
                    u.map_or_else(dash, |u| Cell::new(u.procs.to_string())),
                    u.map_or_else(dash, |u| Cell::new(format!("{:.1}", u.cpu_percent))),
                    u.map_or_else(dash, |u| Cell::new(top::bytes(u.rss_bytes))),
                    u.map_or_else(dash, |u| Cell::new(u.threads.to_string())),
                    n.uptime
                        .map_or_else(dash, |d| Cell::new(output::duration(d))),
                ]
            })
            .collect();
        let text = crate::cli::style::table(
            &[
                "NAME", "STATE", "PID", "PROCS", "CPU%", "RSS", "THREADS", "UPTIME",
            ],
            &rows,
            style,
        );
        Ok((text, leaders.len()))
    }

    pub(super) fn nodes(&mut self, words: &[String], json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        let idx = select::select(&config.nodes, words).map_err(CliError::Usage)?;
        let chosen: Vec<&NodeSpec> = idx.iter().map(|&i| &config.nodes[i]).collect();
        self.warn_if_config_differs(&config);
        self.note(format!("{} node(s) listed", chosen.len()));
        if json {
            let items: Vec<Value> = chosen.iter().map(|n| output::spec_json(n)).collect();
            println!("{}", output::pretty(&Value::Array(items)));
        } else {
            print!("{}", output::nodes_table(&chosen, self.style));
        }
        Ok(Outcome::Done)
    }

    /// `layout`: the cluster layout a Zeek config gives, as upstream writes it.
    pub(super) fn layout(&mut self) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        let Some(zeek) = &config.zeek else {
            return Err(CliError::Failed(format!(
                "{} is not a Zeek cluster config: name a zeek.conf, a folder of HOST.zeek.conf files or a node.cfg with --config, or include one with [zeek] conf = \"...\"",
                config.path.display()
            )));
        };
        let text = zeek.layout_text().map_err(|e| {
            CliError::Failed(format!(
                "cannot read the cluster_layout file {}: {e}",
                zeek.layout_from
                    .as_deref()
                    .unwrap_or(config.path.as_path())
                    .display()
            ))
        })?;
        print!("{text}");
        self.note(format!("layout of {}", config.path.display()));
        Ok(Outcome::Done)
    }

    pub(super) fn show_config(&mut self, json: bool) -> Result<Outcome, CliError> {
        let config = self.load_config()?;
        self.warn_if_config_differs(&config);
        self.note(format!("{}", config.path.display()));
        if json {
            let doc = json!({
                "path": config.path.to_string_lossy(),
                "dir": config.dir.to_string_lossy(),
                "nodes": config.nodes.iter().map(output::spec_json).collect::<Vec<_>>(),
            });
            println!("{}", output::pretty(&doc));
        } else {
            // One header comment (the rendered file carries it): which file, defaults applied.
            print!("{}", config.to_toml());
        }
        Ok(Outcome::Done)
    }

    /// Says so on stderr when the config file names other nodes than the running table (it
    /// was edited and not yet reloaded).
    fn warn_if_config_differs(&mut self, config: &Config) {
        let Some(client) = self.client() else { return };
        let mut running: Vec<String> = client.status().into_iter().map(|n| n.name).collect();
        let mut file: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
        running.sort();
        file.sort();
        if running != file {
            eprintln!(
                "broctld: {} names other nodes than the Supervisor runs; `reload` applies it",
                config.path.display()
            );
        }
    }
}

/// What the first lines of a crash report say.
#[derive(Debug, Clone, Default)]
struct CrashInfo {
    path: PathBuf,
    time: String,
    pid: String,
    exit: String,
    core: String,
}

impl CrashInfo {
    fn read(path: &Path) -> CrashInfo {
        let mut c = CrashInfo {
            path: path.to_owned(),
            ..CrashInfo::default()
        };
        let mut head = String::new();
        if let Ok(f) = std::fs::File::open(path) {
            let _ = f.take(4096).read_to_string(&mut head);
        }
        for l in head.lines().take(20) {
            if let Some((k, v)) = l.split_once(": ") {
                match k {
                    "time" => c.time = v.to_owned(),
                    "pid" => c.pid = v.to_owned(),
                    "exit" => c.exit = v.to_owned(),
                    "core dumped" => c.core = v.to_owned(),
                    _ => {}
                }
            }
        }
        c
    }

    fn json(&self) -> Value {
        json!({
            "path": self.path.to_string_lossy(),
            "time": self.time,
            "pid": self.pid.parse::<u32>().ok(),
            "exit": self.exit,
            "core_dumped": self.core == "yes",
        })
    }
}

fn crash_table(infos: &[CrashInfo], labels: Option<&[(String, usize)]>, style: Style) -> String {
    let mut header = vec!["TIME", "PID", "EXIT", "CORE", "REPORT"];
    if labels.is_some() {
        header.splice(0..0, ["NODE", "REPORTS"]);
    }
    let rows: Vec<Vec<Cell>> = infos
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut r = vec![
                Cell::new(c.time.clone()),
                Cell::new(c.pid.clone()),
                Cell::colored(c.exit.clone(), code::RED),
                Cell::new(if c.core.is_empty() {
                    "-".into()
                } else {
                    c.core.clone()
                }),
                Cell::new(c.path.display().to_string()),
            ];
            if let Some(l) = labels {
                r.splice(
                    0..0,
                    [Cell::new(l[i].0.clone()), Cell::new(l[i].1.to_string())],
                );
            }
            r
        })
        .collect();
    crate::cli::style::table(&header, &rows, style)
}
