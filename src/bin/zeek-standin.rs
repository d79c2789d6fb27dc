//! A stand-in for the `zeek` binary, for tests and the examples where no Zeek is installed.
//! It keeps the contract supervisors rely on (the one zeekctl's own test stand-in keeps):
//!
//! - `-v` / `--version` prints a version line and exits 0;
//! - `-U FILE` gets `INITIALIZING`, then `RUNNING` once started, then `TERMINATED` when it
//!   stops on `SIGTERM` or `SIGINT` (relative to the working directory, as Zeek does);
//! - `-i IFACE` is the interface it "listens" on (printed);
//! - with `CLUSTER_NODE` set, it reads `cluster-layout.zeek` from the first folder of
//!   `ZEEKPATH` holding one and exits with an error, as Zeek does, unless the layout names
//!   that node (it prints the node's entry); without a layout at all it fails the same way;
//! - `--parse-only` (what `broctld check` runs, as zeekctl's `check` runs Zeek) does the
//!   layout check above, then exits 0 without listening or writing `RUNNING`;
//! - every other argument (scripts, `name=value` redefs) is accepted and ignored.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

fn write_status(path: Option<&Path>, state: &str) -> std::io::Result<()> {
    match path {
        Some(p) => std::fs::write(p, format!("{state}\n")),
        None => Ok(()),
    }
}

/// The layout file on `zeekpath` (the first folder holding a `cluster-layout.zeek`).
fn find_layout(zeekpath: &str) -> Option<PathBuf> {
    zeekpath
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("cluster-layout.zeek"))
        .find(|p| p.is_file())
}

/// The layout's entry for `node` (`["node"] = [...]`), if any.
fn node_entry(layout: &str, node: &str) -> Option<String> {
    let key = format!("[\"{node}\"] = [");
    layout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&key))
        .map(str::to_string)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut status: Option<PathBuf> = None;
    let mut interface: Option<String> = None;
    let mut parse_only = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-v" | "--version" => {
                println!("zeek version 9.0.0 (broctld zeek-standin)");
                return ExitCode::SUCCESS;
            }
            "-U" | "--status-file" => {
                i += 1;
                status = args.get(i).map(PathBuf::from);
            }
            "--parse-only" => parse_only = true,
            "-i" | "--iface" => {
                i += 1;
                interface = args.get(i).cloned();
            }
            _ => {}
        }
        i += 1;
    }
    // Block the stop signals first, so that one arriving during start-up is not lost.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if let Err(e) = stop.thread_block() {
        eprintln!("zeek-standin: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = write_status(status.as_deref(), "INITIALIZING") {
        eprintln!("zeek-standin: cannot write the status file: {e}");
        return ExitCode::FAILURE;
    }
    if let Ok(node) = std::env::var("CLUSTER_NODE") {
        let zeekpath = std::env::var("ZEEKPATH").unwrap_or_default();
        let Some(layout_path) = find_layout(&zeekpath) else {
            eprintln!(
                "fatal error: CLUSTER_NODE '{node}' but no cluster-layout.zeek on ZEEKPATH ({zeekpath})"
            );
            return ExitCode::FAILURE;
        };
        let layout = match std::fs::read_to_string(&layout_path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("fatal error: cannot read {}: {e}", layout_path.display());
                return ExitCode::FAILURE;
            }
        };
        match node_entry(&layout, &node) {
            Some(entry) => println!("cluster node {node}: {entry}"),
            None => {
                eprintln!(
                    "fatal error: Cluster::nodes in {} has no node '{node}' (CLUSTER_NODE)",
                    layout_path.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    // As Zeek's `--parse-only`: the scripts (here: the layout on ZEEKPATH) are read, then it
    // exits without opening an interface or writing a status file.
    if parse_only {
        return ExitCode::SUCCESS;
    }
    if let Some(iface) = &interface {
        println!("listening on {iface}");
    }
    if let Err(e) = write_status(status.as_deref(), "RUNNING") {
        eprintln!("zeek-standin: cannot write the status file: {e}");
        return ExitCode::FAILURE;
    }
    match stop.wait() {
        Ok(sig) => println!("received {sig}, terminating"),
        Err(e) => eprintln!("zeek-standin: sigwait: {e}"),
    }
    let _ = write_status(status.as_deref(), "TERMINATED");
    ExitCode::SUCCESS
}
