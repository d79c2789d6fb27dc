//! `cargo bench --bench ipc`: broctld's IPC paths against the IPC floors of this machine,
//! measured in one run and between two processes.
//!
//! * `floor/*`: spin, futex, pipe, FIFO, Unix socket and doorbell round trips between this
//!   process and a forked echo peer, unpinned, both on one CPU, and on two CPUs;
//! * `mailbox/*`: `Client::command(Ping)` round trips to a real Supervisor, in the same three
//!   pinnings, and while other Main processes ping it flat out;
//! * `status/*`: snapshots of 1, 64 and 1024 node records; `ring/*`: reading the event ring.
//!
//! After criterion's output it prints a summary: every median of this run and broctld's round
//! trip as a ratio to each floor of the same pinning (see `summary.rs`). Set
//! `BROCTLD_BENCH_SUMMARY=FILE` to also write it to FILE. `docs/benchmarks.md` explains it all.

mod broctld;
mod floors;
mod peer;
mod summary;

use criterion::Criterion;
use std::time::{Duration, SystemTime};

fn main() {
    let since = SystemTime::now();
    let mut c = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(3))
        .nresamples(20_000)
        .configure_from_args();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    let cpus = peer::Cpus::current();
    summary::note(format!(
        "CPUs available to the bench: {:?}; same-cpu pins both sides to CPU {}, cross-cpu pins them to CPUs {:?}",
        cpus.list,
        cpus.list[0],
        cpus.list.iter().take(2).collect::<Vec<_>>()
    ));
    let filter = summary::Filter::from_args();
    floors::bench(&mut c, &cpus, &filter);
    broctld::mailbox_and_ring(&mut c, &cpus, &filter);
    broctld::status(&mut c, &filter);
    broctld::paired(&cpus, &filter);
    c.final_summary();
    summary::note(format!(
        "/proc/loadavg before the benches: {}; after: {} (other work on the machine shows here)",
        load_before.trim(),
        load().trim()
    ));
    summary::report(since);
}
