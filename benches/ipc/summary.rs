//! The summary printed after criterion's own output: every bench of this run with its median
//! (criterion's estimate, read back from its `estimates.json`), and each broctld figure as a
//! ratio to the matching floor measured in the same run. Written as Markdown to stdout and, if
//! `BROCTLD_BENCH_SUMMARY` names a file, to that file too.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static PAIRED: Mutex<Vec<(String, [f64; 3])>> = Mutex::new(Vec::new());

/// Records a paired series (see `broctld::paired`) by its median and quartiles.
pub fn paired(id: String, values: &[f64]) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    PAIRED
        .lock()
        .unwrap()
        .push((id, [q(0.5), q(0.25), q(0.75)]));
}

/// Criterion options that take a value (so the word after them is not the filter).
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--color",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// The bench filter given on the command line, as criterion reads it: a regex, or an exact id
/// with `--exact`. Lets the bench skip the setup (forks, Supervisors) of groups it won't run.
pub struct Filter {
    re: Option<regex::Regex>,
    exact: Option<String>,
}

impl Filter {
    /// Parses this process's arguments.
    pub fn from_args() -> Filter {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let exact = args.iter().any(|a| a == "--exact");
        let mut filter = None;
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if VALUE_OPTIONS.contains(&a.as_str()) {
                i += 2;
                continue;
            }
            if !a.starts_with('-') && filter.is_none() {
                filter = Some(a.clone());
            }
            i += 1;
        }
        match filter {
            None => Filter {
                re: None,
                exact: None,
            },
            Some(f) if exact => Filter {
                re: None,
                exact: Some(f),
            },
            Some(f) => Filter {
                re: regex::Regex::new(&f).ok(),
                exact: None,
            },
        }
    }

    /// Whether any of `ids` will run.
    pub fn any(&self, ids: &[String]) -> bool {
        ids.iter().any(|id| match (&self.re, &self.exact) {
            (_, Some(e)) => id == e,
            (Some(re), None) => re.is_match(id),
            (None, None) => true,
        })
    }
}

/// Records that bench `id` (`group/function/parameter`) ran in this process.
pub fn ran(id: &str) {
    let mut r = RAN.lock().unwrap();
    if !r.iter().any(|x| x == id) {
        r.push(id.to_owned());
    }
}

/// Adds a line to the summary's notes.
pub fn note(line: String) {
    eprintln!("note: {line}");
    NOTES.lock().unwrap().push(line);
}

/// Where criterion writes, found the way criterion 0.8 finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target dir `cargo metadata` names, else
/// `target/criterion`.
fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("criterion");
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        if let Ok(out) = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
        {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                if let Some(t) = v["target_directory"].as_str() {
                    return PathBuf::from(t).join("criterion");
                }
            }
        }
    }
    PathBuf::from("target/criterion")
}

/// A median with its 95% confidence interval, in ns.
#[derive(Clone, Copy)]
pub struct Est {
    median: f64,
    lo: f64,
    hi: f64,
}

fn read_est(dir: &std::path::Path, id: &str, since: SystemTime) -> Option<Est> {
    let path = dir.join(id).join("new").join("estimates.json");
    let meta = std::fs::metadata(&path).ok()?;
    // Refuse a file an earlier run left behind: ratios only within one run.
    if meta.modified().ok()? < since {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let m = &v["median"];
    Some(Est {
        median: m["point_estimate"].as_f64()?,
        lo: m["confidence_interval"]["lower_bound"].as_f64()?,
        hi: m["confidence_interval"]["upper_bound"].as_f64()?,
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// What each bench measures, for the table.
fn describe(id: &str) -> String {
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        ["floor", kind, _] => match *kind {
            "spin" => "round trip, busy-wait on one shared cache line".into(),
            "futex" => "round trip, shared futex wait/wake each way".into(),
            "pipe" => "round trip, 1 byte each way over two pipes".into(),
            "fifo" => "round trip, 1 byte each way over two FIFOs".into(),
            "unix" => "round trip, 1 byte each way on a Unix stream socketpair".into(),
            "doorbell" => "round trip, FIFO doorbell into epoll + futex reply (broctld's transport, no protocol)".into(),
            _ => String::new(),
        },
        ["mailbox", "ping", _] => "`Client::command(Ping)` round trip to a real Supervisor process".into(),
        ["mailbox", "ping-busy", k] => format!(
            "`Client::command(Ping)` round trip while {k} other Main process(es) ping flat out (latency of this Main)"
        ),
        ["status", "raw", n] => format!("seqlock copy of {n} node record(s), no decoding"),
        ["status", "records", n] => format!("`Client::records_into` for {n} node(s) (decoded records)"),
        ["status", "client", n] => format!("`Client::status()` for {n} node(s) (what `broctld status` reads; allocates)"),
        ["status", "into", n] => format!("`Client::status_into` for {n} node(s) (same snapshot, buffers reused)"),
        ["ring", "read-all", n] => format!("read {n} events from the ring with `Client::next_event`"),
        ["ring", "poll-empty", _] => "`Client::next_event` with nothing new".into(),
        _ => String::new(),
    }
}

/// Prints (and writes) the summary of this run.
pub fn report(since: SystemTime) {
    let dir = criterion_dir();
    let ran = RAN.lock().unwrap().clone();
    let mut est: BTreeMap<String, Est> = BTreeMap::new();
    for id in &ran {
        if let Some(e) = read_est(&dir, id, since) {
            est.insert(id.clone(), e);
        }
    }
    let mut out = String::new();
    if est.is_empty() {
        out.push_str("No criterion estimates from this run (test mode, a filter that matched nothing, or a different criterion output dir).\n");
    } else {
        out.push_str(
            "| bench | what it measures | median | 95% CI of the median |\n|---|---|---:|---|\n",
        );
        for id in &ran {
            let Some(e) = est.get(id) else { continue };
            let mut median = fmt_ns(e.median);
            if let Some(n) = id
                .strip_prefix("status/")
                .and_then(|r| r.rsplit('/').next())
                .and_then(|n| n.parse::<f64>().ok())
            {
                median = format!("{median} ({} per node)", fmt_ns(e.median / n));
            }
            if let Some(n) = id
                .strip_prefix("ring/read-all/")
                .and_then(|n| n.parse::<f64>().ok())
            {
                median = format!("{median} ({} per event)", fmt_ns(e.median / n));
            }
            out.push_str(&format!(
                "| `{id}` | {} | {median} | {} .. {} |\n",
                describe(id),
                fmt_ns(e.lo),
                fmt_ns(e.hi)
            ));
        }
        let mut ratios = String::new();
        for pin in ["unpinned", "same-cpu", "cross-cpu"] {
            let Some(p) = est.get(&format!("mailbox/ping/{pin}")) else {
                continue;
            };
            let mut row = format!("| {pin} | {} |", fmt_ns(p.median));
            for floor in ["pipe", "fifo", "futex", "unix", "doorbell", "spin"] {
                match est.get(&format!("floor/{floor}/{pin}")) {
                    Some(f) => row.push_str(&format!(" {:.2} |", p.median / f.median)),
                    None => row.push_str(" - |"),
                }
            }
            ratios.push_str(&row);
            ratios.push('\n');
        }
        if !ratios.is_empty() {
            out.push_str("\nbroctld's command round trip as a ratio to each floor of the same pinning, same run:\n\n");
            out.push_str("| pinning | ping median | ÷ pipe | ÷ fifo | ÷ futex | ÷ unix | ÷ doorbell | ÷ spin |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
            out.push_str(&ratios);
        }
    }
    let paired = PAIRED.lock().unwrap();
    let get = |id: String| paired.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    if !paired.is_empty() {
        out.push_str("\nThe same ratio, paired: the pipe floor, the doorbell floor and broctld's ping in 41 interleaved blocks against peers that live at once (2000 round trips per block on one CPU, 500 across two), the ratio taken block by block; median and quartiles of those ratios. Load that comes and goes on the machine hits both sides of each ratio alike.\n\n");
        out.push_str("| pinning | ping | pipe | doorbell | ping ÷ pipe | ping ÷ doorbell |\n|---|---:|---:|---:|---:|---:|\n");
        for pin in ["same-cpu", "cross-cpu"] {
            let (Some(p), Some(f), Some(d), Some(rp), Some(rd)) = (
                get(format!("paired/{pin}/ping-ns")),
                get(format!("paired/{pin}/pipe-ns")),
                get(format!("paired/{pin}/doorbell-ns")),
                get(format!("paired/{pin}/ping-over-pipe")),
                get(format!("paired/{pin}/ping-over-doorbell")),
            ) else {
                continue;
            };
            out.push_str(&format!(
                "| {pin} | {} | {} | {} | {:.2} ({:.2} .. {:.2}) | {:.2} ({:.2} .. {:.2}) |\n",
                fmt_ns(p[0]),
                fmt_ns(f[0]),
                fmt_ns(d[0]),
                rp[0],
                rp[1],
                rp[2],
                rd[0],
                rd[1],
                rd[2]
            ));
        }
    }
    let notes = NOTES.lock().unwrap();
    if !notes.is_empty() {
        out.push('\n');
        for n in notes.iter() {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out.push_str("\nRaw (criterion: id median_ns ci_low_ns ci_high_ns; paired: id median q1 q3, ns or ratio):\n\n```\n");
    for id in &ran {
        if let Some(e) = est.get(id) {
            out.push_str(&format!("{id} {:.1} {:.1} {:.1}\n", e.median, e.lo, e.hi));
        }
    }
    for (id, v) in paired.iter() {
        out.push_str(&format!("{id} {:.3} {:.3} {:.3}\n", v[0], v[1], v[2]));
    }
    out.push_str("```\n");
    println!("\n== broctld bench summary (criterion medians of this run) ==\n\n{out}");
    if let Some(path) = std::env::var_os("BROCTLD_BENCH_SUMMARY") {
        if let Err(e) = std::fs::write(&path, &out) {
            eprintln!("cannot write {}: {e}", PathBuf::from(path).display());
        }
    }
}
