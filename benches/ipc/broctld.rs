//! broctld's own figures, against a real Supervisor process: the command round trip through
//! the mailbox, status snapshots at N = 1, 64 and 1024 nodes, and reading the event ring.
//!
//! Each instance lives in a fresh temp dir (runtime dir, config, node output) with a unique
//! name. Its Supervisor is the real `broctld` binary that Cargo builds for this bench
//! (`CARGO_BIN_EXE_broctld`), run in its internal `__supervisor` mode as a direct child of the
//! bench (the same code a first Main starts detached), so the bench owns its lifetime: it is
//! shut down through the mailbox at the end, and gets SIGTERM if the bench dies.

use crate::floors::{DoorbellEcho, PipeEcho};
use crate::peer::{Cpus, Pin};
use crate::summary::{self, Filter};
use broctld::client::{Client, ClientError};
use broctld::instance::Instance;
use broctld::protocol::mailbox::Opcode;
use broctld::protocol::ProtocolError;
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broctld executable Cargo built for this bench.
pub fn broctld_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_broctld"))
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// A running instance: temp dir, Supervisor process, attached client.
pub struct Live {
    dir: PathBuf,
    instance: Instance,
    config: PathBuf,
    supervisor: Child,
    /// The attached client (this process is a Main).
    pub client: Client,
}

fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and takes plain integers.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig);
            Ok(())
        });
    }
}

impl Live {
    /// Starts a Supervisor for `nodes` nodes running `sleep 3600` (started at once if
    /// `autostart`, else left stopped) and attaches to it.
    pub fn start(label: &str, nodes: usize, autostart: bool) -> Live {
        let dir =
            std::env::temp_dir().join(format!("broctld-bench-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the bench temp dir");
        let config = dir.join("broctld.toml");
        let mut text = format!("[defaults]\nautostart = {autostart}\n");
        for i in 0..nodes {
            text.push_str(&format!(
                "\n[[node]]\nname = \"worker-{i:04}\"\ntype = \"worker\"\ncommand = [\"sleep\", \"3600\"]\n"
            ));
        }
        std::fs::write(&config, text).expect("writing the bench config");
        let instance =
            Instance::new(&format!("bench-{label}"), &dir.join("run")).expect("instance name");
        let log = std::fs::File::create(dir.join("supervisor.out")).expect("log file");
        let mut cmd = Command::new(broctld_bin());
        cmd.arg("--instance")
            .arg(instance.name())
            .arg("--runtime-dir")
            .arg(instance.runtime_dir())
            .arg("--config")
            .arg(&config)
            .arg("__supervisor")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let mut supervisor = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", broctld_bin().display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match Client::attach(&instance) {
                Ok(c) => break c,
                // A Supervisor that has created its region but not yet written the header
                // reads as magic 0: `Client::attach` does not wait for that, so we do.
                Err(ClientError::NotRunning { .. })
                | Err(ClientError::Protocol(ProtocolError::Magic { found: 0, .. }))
                    if Instant::now() < deadline =>
                {
                    if let Ok(Some(st)) = supervisor.try_wait() {
                        panic!(
                            "the Supervisor exited ({st}) during startup:\n{}",
                            std::fs::read_to_string(dir.join("supervisor.out")).unwrap_or_default()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("cannot attach to the bench Supervisor: {e}"),
            }
        };
        let live = Live {
            dir,
            instance,
            config,
            supervisor,
            client,
        };
        if autostart {
            // Wait until every node runs, so the benches see a settled Supervisor.
            let deadline = Instant::now() + Duration::from_secs(60);
            while live.client.status().iter().any(|n| n.pid.is_none()) {
                assert!(Instant::now() < deadline, "nodes did not start in 60 s");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        live
    }

    /// The Supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.supervisor.id()
    }

    /// A `broctld` command line for this instance.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(broctld_bin());
        cmd.arg("--instance")
            .arg(self.instance.name())
            .arg("--runtime-dir")
            .arg(self.instance.runtime_dir())
            .arg("--config")
            .arg(&self.config);
        cmd
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.client.command(Opcode::Shutdown, &[], 0, TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.supervisor.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.supervisor.kill();
                    let _ = self.supervisor.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(client: &Client) {
    client
        .command(Opcode::Ping, &[], 0, TIMEOUT)
        .expect("ping through the mailbox");
}

/// Command round trips, then the event ring (filled by restarts of the nodes).
pub fn mailbox_and_ring(c: &mut Criterion, cpus: &Cpus, filter: &Filter) {
    let mut ids: Vec<String> = Pin::ALL
        .iter()
        .map(|p| format!("mailbox/ping/{}", p.label()))
        .collect();
    ids.extend(["mailbox/ping-busy/1", "mailbox/ping-busy/3"].map(String::from));
    ids.extend(["ring/read-all/4096", "ring/poll-empty/1"].map(String::from));
    if !filter.any(&ids) {
        return;
    }
    let live = Live::start("ping", 2, true);
    let sup = live.pid();
    let mut g = c.benchmark_group("mailbox");
    for pin in Pin::ALL {
        let Some((mine, theirs)) = pin.sets(cpus) else {
            eprintln!("mailbox/ping/{}: skipped (needs two CPUs)", pin.label());
            continue;
        };
        if !filter.any(&[format!("mailbox/ping/{}", pin.label())]) {
            continue;
        }
        mine.apply(0).expect("pinning the bench");
        theirs
            .apply_all_threads(sup)
            .expect("pinning the Supervisor");
        let id = format!("mailbox/ping/{}", pin.label());
        g.bench_function(BenchmarkId::new("ping", pin.label()), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    ping(&live.client);
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        cpus.restore();
        let _ = cpus.original.apply_all_threads(sup);
    }

    // Several Mains at once: other `broctld ping` processes keep the Supervisor busy while this
    // one measures its own round trips. Unpinned.
    for others in [1usize, 3] {
        if !filter.any(&[format!("mailbox/ping-busy/{others}")]) {
            continue;
        }
        let mut load: Vec<Child> = (0..others)
            .map(|_| {
                let mut cmd = live.cli();
                cmd.args(["ping", "-n", "100000000"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                die_with_parent(&mut cmd, libc::SIGKILL);
                cmd.spawn().expect("starting a load Main")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let id = format!("mailbox/ping-busy/{others}");
        g.bench_function(BenchmarkId::new("ping-busy", others), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    ping(&live.client);
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        for mut l in load.drain(..) {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
    g.finish();

    // The ring: make sure it is full, then read it all, and poll it with nothing new.
    let cap = live.client.shared().ring().capacity();
    // Pings leave no events: restarts of the instance's nodes fill the ring (each is a few).
    let names: Vec<String> = live.client.status().into_iter().map(|n| n.name).collect();
    while live.client.event_head() < cap + 16 {
        live.client
            .restart(&names)
            .expect("restarting the nodes to fill the event ring");
    }
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(cap));
    let id = format!("ring/read-all/{cap}");
    g.bench_function(BenchmarkId::new("read-all", cap), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let mut cursor = live.client.oldest_event();
                let mut n = 0u64;
                while let Some(ev) = live.client.next_event(&mut cursor) {
                    black_box(ev);
                    n += 1;
                }
                assert!(n >= cap - 1, "read only {n} events");
            }
            summary::ran(&id);
            t.elapsed()
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("poll-empty", 1), |b| {
        b.iter_custom(|iters| {
            let mut cursor = live.client.event_head();
            let t = Instant::now();
            for _ in 0..iters {
                black_box(live.client.next_event(black_box(&mut cursor)));
            }
            summary::ran("ring/poll-empty/1");
            t.elapsed()
        })
    });
    g.finish();
    drop(live);
}

/// Runs `f` 100 000 times in a forked child under a seccomp filter that kills the process on
/// any syscall but `exit`: proof that `f` makes no syscall. (Strict mode would not do: it also
/// disables the TSC, which the vDSO clock reads.)
fn no_syscall(what: &str, f: &dyn Fn()) {
    const CALLS: u32 = 100_000;
    for _ in 0..1000 {
        f();
    }
    // Load the syscall number; allow `exit`; kill the process on anything else.
    let mut filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_exit as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_KILL_PROCESS,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: the bench is single-threaded here; the child runs `f` (which touches only the
    // shared mapping and the heap it inherited) and leaves with the raw exit syscall.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        for _ in 0..100 {
            f();
        }
        // SAFETY: plain integers and a filter program that outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                libc::_exit(2);
            }
            for _ in 0..CALLS {
                f();
            }
            libc::syscall(libc::SYS_exit, 0);
        }
        unreachable!();
    }
    let mut st = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let line = if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 {
        format!("{what}: no syscall in {CALLS} calls (checked in a child under a seccomp filter that kills it on any syscall but exit)")
    } else if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS {
        format!("{what}: MADE A SYSCALL (killed by the seccomp filter)")
    } else {
        format!("{what}: seccomp check inconclusive (wait status {st:#x})")
    };
    summary::note(line);
}

/// Status snapshots of every node at N = 1, 64 and 1024, through the client's code path.
pub fn status(c: &mut Criterion, filter: &Filter) {
    let mut g = c.benchmark_group("status");
    for n in [1usize, 64, 1024] {
        let ids = ["raw", "records", "client"].map(|k| format!("status/{k}/{n}"));
        if !filter.any(&ids) {
            continue;
        }
        // Nodes are configured but left stopped: a record costs the same to read whatever its
        // state, and 1024 idle `sleep`s would only add noise.
        let live = Live::start(&format!("status-{n}"), n, false);
        let client = &live.client;
        assert_eq!(client.status().len(), n);
        g.throughput(Throughput::Elements(n as u64));
        let raw = || {
            let shared = client.shared();
            let cells = shared.node_cells();
            for cell in &cells[..shared.node_count()] {
                black_box(cell.read());
            }
        };
        let id = format!("status/raw/{n}");
        g.bench_function(BenchmarkId::new("raw", n), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    raw();
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        let mut records = Vec::with_capacity(n);
        let id = format!("status/records/{n}");
        g.bench_function(BenchmarkId::new("records", n), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    client.records_into(&mut records);
                    black_box(&records);
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        let mut snapshot = Vec::with_capacity(n);
        let id = format!("status/into/{n}");
        g.bench_function(BenchmarkId::new("into", n), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    client.status_into(&mut snapshot);
                    black_box(&snapshot);
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        let id = format!("status/client/{n}");
        g.bench_function(BenchmarkId::new("client", n), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(client.status());
                }
                summary::ran(&id);
                t.elapsed()
            })
        });
        if n == 64 {
            // A control, to show the check catches a syscall: getppid() is never cached.
            no_syscall("control: getppid()", &|| {
                // SAFETY: getppid has no arguments and cannot fail.
                black_box(unsafe { libc::getppid() });
            });
            no_syscall("status/raw/64 (seqlock copy of 64 records)", &raw);
            no_syscall("status/client/64 (`Client::status()`)", &|| {
                black_box(client.status());
            });
            let snap = std::cell::RefCell::new(Vec::with_capacity(64));
            no_syscall("status/into/64 (`Client::status_into`)", &|| {
                client.status_into(&mut snap.borrow_mut());
                black_box(&snap);
            });
        }
        drop(live);
    }
    g.finish();
}

/// Interleaved ("paired") ratios, robust to load that comes and goes on a shared machine:
/// criterion measures each bench in its own few seconds, so a floor and broctld may see
/// different background load. Here the pipe floor, the doorbell floor and broctld's ping run in
/// alternating blocks against peers that all live at once, pinned the same way, and the ratio
/// is taken block by block; the summary reports the median and quartiles of those ratios.
pub fn paired(cpus: &Cpus, filter: &Filter) {
    const ROUNDS: usize = 41;
    let pins: Vec<Pin> = [Pin::SameCpu, Pin::CrossCpu]
        .into_iter()
        .filter(|p| filter.any(&[format!("paired/{}", p.label())]))
        .collect();
    if pins.is_empty() {
        return;
    }
    let live = Live::start("paired", 2, true);
    let sup = live.pid();
    for pin in pins {
        let Some((mine, theirs)) = pin.sets(cpus) else {
            continue;
        };
        mine.apply(0).expect("pinning the bench");
        theirs
            .apply_all_threads(sup)
            .expect("pinning the Supervisor");
        let pipe = PipeEcho::new(theirs);
        let bell = DoorbellEcho::new(theirs, &format!("paired-{}", pin.label()));
        // About 5 ms per block on one CPU, 25 ms across two.
        let block = if pin == Pin::SameCpu { 2000 } else { 500 };
        let time = |what: usize| {
            let t = Instant::now();
            for _ in 0..block {
                match what {
                    0 => pipe.round_trip(),
                    1 => bell.round_trip(),
                    _ => ping(&live.client),
                }
            }
            t.elapsed().as_nanos() as f64 / block as f64
        };
        for w in 0..3 {
            time(w);
        }
        let mut per = [Vec::new(), Vec::new(), Vec::new()];
        for r in 0..ROUNDS {
            for k in 0..3 {
                let w = (r + k) % 3;
                per[w].push(time(w));
            }
        }
        let over_pipe: Vec<f64> = (0..ROUNDS).map(|i| per[2][i] / per[0][i]).collect();
        let over_bell: Vec<f64> = (0..ROUNDS).map(|i| per[2][i] / per[1][i]).collect();
        let label = pin.label();
        summary::paired(format!("paired/{label}/ping-over-pipe"), &over_pipe);
        summary::paired(format!("paired/{label}/ping-over-doorbell"), &over_bell);
        summary::paired(format!("paired/{label}/ping-ns"), &per[2]);
        summary::paired(format!("paired/{label}/pipe-ns"), &per[0]);
        summary::paired(format!("paired/{label}/doorbell-ns"), &per[1]);
        summary::ran(&format!("paired/{label}"));
        drop(bell);
        drop(pipe);
        cpus.restore();
        let _ = cpus.original.apply_all_threads(sup);
    }
    drop(live);
}
