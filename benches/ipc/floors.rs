//! The floors: the cheapest round trips two processes can make on this machine, measured in the
//! same run as broctld so that broctld's figures can be given as ratios to them.
//!
//! Every floor forks one peer per bench (outside the timed loop) that echoes each message back:
//!
//! * `spin`: both sides busy-wait on one shared cache line (no syscall, no sleep);
//! * `futex`: a shared (not PRIVATE) futex word, `FUTEX_WAIT`/`FUTEX_WAKE` each way;
//! * `pipe`: one byte down a pipe and one back up another;
//! * `fifo`: the same through two named pipes (`mkfifo`);
//! * `unix`: one byte each way on a `socketpair(AF_UNIX, SOCK_STREAM)`;
//! * `doorbell`: broctld's own transport without its protocol: a coalesced byte down a FIFO that
//!   the peer waits for in edge-triggered epoll (as the Supervisor does), and a futex wake back
//!   (as a Supervisor's reply does).

use crate::peer::{read1, write1, CpuSet, Cpus, Peer, Pin, SharedPage, BELL, SPIN, STOP, WORD};
use crate::summary::{self, Filter};
use broctld::sys::futex;
use criterion::{BenchmarkId, Criterion};
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a blocked side waits before checking that the other side still lives.
const CHECK: Duration = Duration::from_secs(1);

fn pipe() -> [libc::c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: a two-int out-array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    fds
}

/// A forked peer echoing one byte at a time over two pipes.
pub struct PipeEcho {
    _peer: Peer,
    wr: libc::c_int,
    rd: libc::c_int,
}

impl PipeEcho {
    /// Forks the echo peer onto `cpus`.
    pub fn new(cpus: CpuSet) -> PipeEcho {
        let down = pipe();
        let up = pipe();
        let peer = Peer::fork(
            cpus,
            &[down[1], up[0]],
            &[down[0], up[1]],
            &[down[1], up[0]],
            || {
                while read1(down[0]) {
                    if !write1(up[1]) {
                        return;
                    }
                }
            },
        );
        PipeEcho {
            _peer: peer,
            wr: down[1],
            rd: up[0],
        }
    }

    /// One round trip.
    pub fn round_trip(&self) {
        assert!(write1(self.wr) && read1(self.rd), "pipe peer died");
    }
}

/// A forked peer answering like broctld's Supervisor: it sleeps in edge-triggered epoll on a
/// FIFO (opened `O_RDWR | O_NONBLOCK`, as the Supervisor opens its doorbell), clears the bell
/// flag, answers through a futex word and wakes the Main; the Main swaps the flag and writes a
/// byte only on 0 -> 1, then sleeps on the word. Like the Supervisor (where every write wakes
/// an edge-triggered waiter, as on Linux 6), it reads the FIFO empty only every 64th wake (one
/// read unless the read fills the buffer): four syscalls per round trip, as broctld's own.
pub struct DoorbellEcho {
    page: SharedPage,
    peer: Peer,
    wr: libc::c_int,
    dir: PathBuf,
}

impl DoorbellEcho {
    /// Forks the peer onto `cpus`; `label` makes its FIFO's dir unique.
    pub fn new(cpus: CpuSet, label: &str) -> DoorbellEcho {
        let page = SharedPage::new();
        let dir =
            std::env::temp_dir().join(format!("broctld-bench-bell-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("doorbell dir");
        let path = CString::new(dir.join("doorbell").to_str().unwrap()).unwrap();
        // SAFETY: NUL-terminated path; fds checked below.
        let (rd, wr, ep) = unsafe {
            assert_eq!(libc::mkfifo(path.as_ptr(), 0o600), 0, "mkfifo");
            let rd = libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            let wr = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            );
            let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: 1,
            };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, rd, &mut ev), 0);
            (rd, wr, ep)
        };
        assert!(rd >= 0 && wr >= 0 && ep >= 0, "doorbell fds");
        let peer = Peer::fork(cpus, &[wr], &[rd, ep], &[wr], || {
            let w = page.u32(WORD);
            let bell = page.u32(BELL);
            let stop = page.u32(STOP);
            // SAFETY: plain data.
            let mut evs: [libc::epoll_event; 4] = unsafe { std::mem::zeroed() };
            let mut buf = [0u8; 256];
            let mut undrained = 0u32;
            loop {
                // SAFETY: a live epoll fd and event buffer.
                let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 1000) };
                if stop.load(Ordering::Acquire) != 0 {
                    return;
                }
                if n <= 0 {
                    continue;
                }
                bell.store(0, Ordering::SeqCst);
                if undrained < 64 {
                    undrained += 1;
                } else {
                    undrained = 0;
                    // Drain as `fifo::drain` does: a short read means the pipe is empty.
                    // SAFETY: reading into a live buffer.
                    while unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) }
                        == buf.len() as isize
                    {}
                }
                let v = w.load(Ordering::Acquire);
                if v % 2 == 1 {
                    w.store(v.wrapping_add(1), Ordering::Release);
                    futex::wake(w, i32::MAX);
                }
            }
        });
        DoorbellEcho {
            page,
            peer,
            wr,
            dir,
        }
    }

    /// One round trip.
    pub fn round_trip(&self) {
        let w = self.page.u32(WORD);
        let bell = self.page.u32(BELL);
        let sent = w.load(Ordering::Relaxed).wrapping_add(1);
        w.store(sent, Ordering::SeqCst);
        if bell.swap(1, Ordering::SeqCst) == 0 {
            assert!(write1(self.wr), "doorbell write");
        }
        loop {
            let v = w.load(Ordering::Acquire);
            if v != sent {
                break;
            }
            if matches!(futex::wait(w, v, Some(CHECK)), Ok(futex::Wake::TimedOut)) {
                assert!(self.peer.alive(), "doorbell peer died");
            }
        }
    }
}

impl Drop for DoorbellEcho {
    fn drop(&mut self) {
        self.page.u32(STOP).store(1, Ordering::Release);
        write1(self.wr);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs all floors, in every pinning this machine allows.
pub fn bench(c: &mut Criterion, cpus: &Cpus, filter: &Filter) {
    let mut g = c.benchmark_group("floor");
    for pin in Pin::ALL {
        let Some((mine, theirs)) = pin.sets(cpus) else {
            eprintln!("floor/*/{}: skipped (needs two CPUs)", pin.label());
            continue;
        };
        let want = |name: &str| filter.any(&[format!("floor/{name}/{}", pin.label())]);
        let run = |g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
                   name: &str,
                   rt: &mut dyn FnMut(u64) -> Duration| {
            mine.apply(0).expect("pinning the bench");
            let id = format!("floor/{name}/{}", pin.label());
            g.bench_function(BenchmarkId::new(name, pin.label()), |b| {
                b.iter_custom(|iters| {
                    let d = rt(iters);
                    summary::ran(&id);
                    d
                })
            });
            cpus.restore();
        };

        // Spin: skipped on one CPU, where each hand-over waits for the other side's timeslice
        // to end (milliseconds), which measures the scheduler tick, not a floor.
        if pin != Pin::SameCpu && want("spin") {
            let page = SharedPage::new();
            let peer = Peer::fork(theirs, &[], &[], &[], || {
                let w = page.u64(SPIN);
                loop {
                    let v = w.load(Ordering::Acquire);
                    if v == u64::MAX {
                        return;
                    }
                    if v % 2 == 1 {
                        w.store(v + 1, Ordering::Release);
                    }
                    std::hint::spin_loop();
                }
            });
            let w = page.u64(SPIN);
            let mut next = 1u64;
            run(&mut g, "spin", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    w.store(next, Ordering::Release);
                    let mut spins = 0u64;
                    while w.load(Ordering::Acquire) != next + 1 {
                        std::hint::spin_loop();
                        spins += 1;
                        if spins.is_multiple_of(1 << 24) {
                            assert!(peer.alive(), "spin peer died");
                        }
                    }
                    next += 2;
                }
                t.elapsed()
            });
            w.store(u64::MAX, Ordering::Release);
            drop(peer);
        }

        // Futex: the word is odd while the peer has to answer, even once it has.
        if want("futex") {
            let page = SharedPage::new();
            let peer = Peer::fork(theirs, &[], &[], &[], || {
                let w = page.u32(WORD);
                let stop = page.u32(STOP);
                loop {
                    let v = w.load(Ordering::Acquire);
                    if stop.load(Ordering::Acquire) != 0 {
                        return;
                    }
                    if v % 2 == 1 {
                        w.store(v.wrapping_add(1), Ordering::Release);
                        futex::wake(w, 1);
                    } else {
                        let _ = futex::wait(w, v, Some(CHECK));
                    }
                }
            });
            let w = page.u32(WORD);
            run(&mut g, "futex", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let sent = w.load(Ordering::Relaxed).wrapping_add(1);
                    w.store(sent, Ordering::Release);
                    futex::wake(w, 1);
                    loop {
                        let v = w.load(Ordering::Acquire);
                        if v != sent {
                            break;
                        }
                        if matches!(futex::wait(w, v, Some(CHECK)), Ok(futex::Wake::TimedOut)) {
                            assert!(peer.alive(), "futex peer died");
                        }
                    }
                }
                t.elapsed()
            });
            page.u32(STOP).store(1, Ordering::Release);
            futex::wake(w, 1);
            drop(peer);
        }

        // Pipe.
        if want("pipe") {
            let echo = PipeEcho::new(theirs);
            run(&mut g, "pipe", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    echo.round_trip();
                }
                t.elapsed()
            });
            drop(echo);
        }

        // FIFO: two named pipes, opened in the same order on both sides so neither open blocks
        // forever.
        if want("fifo") {
            let dir = std::env::temp_dir().join(format!(
                "broctld-bench-fifo-{}-{}",
                std::process::id(),
                pin.label()
            ));
            std::fs::create_dir_all(&dir).expect("fifo dir");
            let a = CString::new(dir.join("down").to_str().unwrap()).unwrap();
            let b = CString::new(dir.join("up").to_str().unwrap()).unwrap();
            for p in [&a, &b] {
                // SAFETY: a NUL-terminated path.
                let r = unsafe { libc::mkfifo(p.as_ptr(), 0o600) };
                assert_eq!(r, 0, "mkfifo: {}", std::io::Error::last_os_error());
            }
            let peer = Peer::fork(theirs, &[], &[], &[], || {
                // SAFETY: NUL-terminated paths prepared before the fork.
                let (rd, wr) = unsafe {
                    let rd = libc::open(a.as_ptr(), libc::O_RDONLY);
                    let wr = libc::open(b.as_ptr(), libc::O_WRONLY);
                    (rd, wr)
                };
                while read1(rd) {
                    if !write1(wr) {
                        return;
                    }
                }
            });
            // SAFETY: as above.
            let (wr, rd) = unsafe {
                let wr = libc::open(a.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let rd = libc::open(b.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                (wr, rd)
            };
            assert!(wr >= 0 && rd >= 0, "opening the FIFOs");
            run(&mut g, "fifo", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    assert!(write1(wr) && read1(rd), "fifo peer died");
                }
                t.elapsed()
            });
            // SAFETY: our fds.
            unsafe {
                libc::close(wr);
                libc::close(rd);
            }
            drop(peer);
            let _ = std::fs::remove_dir_all(&dir);
        }

        // Unix stream socket pair.
        if want("unix") {
            let mut sv = [0; 2];
            // SAFETY: a two-int out-array.
            let r = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    sv.as_mut_ptr(),
                )
            };
            assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
            let peer = Peer::fork(theirs, &[sv[0]], &[sv[1]], &[sv[0]], || {
                while read1(sv[1]) {
                    if !write1(sv[1]) {
                        return;
                    }
                }
            });
            run(&mut g, "unix", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    assert!(write1(sv[0]) && read1(sv[0]), "unix peer died");
                }
                t.elapsed()
            });
            drop(peer);
        }

        // Doorbell: broctld's transport with no protocol (see `DoorbellEcho`).
        if want("doorbell") {
            let echo = DoorbellEcho::new(theirs, pin.label());
            run(&mut g, "doorbell", &mut |iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    echo.round_trip();
                }
                t.elapsed()
            });
            drop(echo);
        }
    }
    g.finish();
}
