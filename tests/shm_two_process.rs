//! The shared-memory building blocks with writers and readers in two (or more) processes at
//! once: the seqlock'd cell, the event ring and the command mailbox, on a real `MAP_SHARED`
//! region made by `broctld::protocol::Shared::create`.
//!
//! Children are made with `fork` from a multi-threaded test binary, so a child only touches
//! atomics in the mapping, makes plain syscalls (clock_gettime, futex, sched_yield, getpid) and
//! leaves with `_exit`: no allocation, no lock, no panic on any path it takes.

mod common;

use broctld::protocol::mailbox::{self, Opcode, ReplyStatus, Request, SlotState, REPLY_WORDS};
use broctld::protocol::{Geometry, Shared};
use broctld::shm::ring::Next;
use common::Watchdog;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

// The reply text the mailbox test uses is 16 bytes.
const _: () = assert!(REPLY_WORDS >= 2);

/// A region with a unique name, unlinked on drop.
struct TestRegion {
    shared: Shared,
}

impl TestRegion {
    fn new(tag: &str, geometry: Geometry) -> TestRegion {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "/broctld-it.{}.{}.{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let shared = Shared::create(&name, geometry).expect("create a test region");
        TestRegion { shared }
    }
}

impl Drop for TestRegion {
    fn drop(&mut self) {
        let _ = broctld::shm::Region::unlink(self.shared.name());
    }
}

/// A forked child, SIGKILLed and reaped on drop if still there.
struct Forked {
    pid: libc::pid_t,
    status: Option<i32>,
}

impl Forked {
    /// Forks; the child runs `f` and `_exit`s with its return value. `f` must only touch
    /// atomics and make async-signal-safe calls.
    fn spawn(f: impl FnOnce() -> i32) -> Forked {
        // SAFETY: fork in a multi-threaded process: the child runs only `f`, which by contract
        // does not allocate, lock or unwind, then `_exit`s without running any destructor.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = f();
            // SAFETY: leaving the child at once, skipping atexit handlers and destructors.
            unsafe { libc::_exit(code) };
        }
        Forked { pid, status: None }
    }

    /// The child's exit code if it has exited (panics if it died of a signal).
    fn try_exit(&mut self) -> Option<i32> {
        if self.status.is_none() {
            let mut st = 0;
            // SAFETY: our own child; a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::WNOHANG) };
            if r == self.pid {
                assert!(
                    libc::WIFEXITED(st),
                    "child {} died of signal {}",
                    self.pid,
                    libc::WTERMSIG(st)
                );
                self.status = Some(libc::WEXITSTATUS(st));
            }
        }
        self.status
    }

    /// Waits at most `limit` for the child's exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(c) = self.try_exit() {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "child {} did not exit within {limit:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: our own unreaped child: the pid cannot have been recycled.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// CLOCK_MONOTONIC in ns, callable in a forked child.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Spins (yielding) until `cond` holds; false if `limit_s` seconds pass first. Child-safe.
fn spin_until(limit_s: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = now_ns().wrapping_add(limit_s * 1_000_000_000);
    let mut k = 0u32;
    while !cond() {
        k = k.wrapping_add(1);
        if k.is_multiple_of(64) {
            if now_ns() > deadline {
                return false;
            }
            // SAFETY: no arguments.
            unsafe { libc::sched_yield() };
        }
        std::hint::spin_loop();
    }
    true
}

#[test]
fn seqlock_snapshots_are_consistent_while_another_process_writes() {
    let _dog = Watchdog::new("seqlock", LIMIT);
    let r = TestRegion::new(
        "seqlock",
        Geometry {
            nodes: 1,
            ring: 16,
            slots: 1,
        },
    );
    let cell = &r.shared.node_cells()[0];
    let stop = &r.shared.header().state;
    let written = &r.shared.header().generation;
    const MAX_WRITES: u64 = 50_000_000;

    let mut child = Forked::spawn(|| {
        let mut k = 0u64;
        while stop.load(Ordering::Acquire) == 0 && k < MAX_WRITES {
            k += 1;
            cell.write(&[k; 15]);
            // A short pause between records, so the reader gets stable windows as well as
            // reads that overlap a write.
            for _ in 0..(k % 64) {
                std::hint::spin_loop();
            }
        }
        written.store(k, Ordering::Release);
        0
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut reads, mut stable, mut busy, mut distinct, mut last) = (0u64, 0u64, 0u64, 0u64, 0u64);
    loop {
        let (seq, words) = cell.try_read();
        reads += 1;
        match words {
            Some(w) => {
                stable += 1;
                assert!(
                    w.iter().all(|x| *x == w[0]),
                    "torn snapshot after {reads} reads: seq {seq}, words {w:?}"
                );
                assert_eq!(seq, 2 * w[0], "the sequence matches the record's number");
                assert!(w[0] >= last, "went back from {last} to {}", w[0]);
                if w[0] != last {
                    distinct += 1;
                    last = w[0];
                }
            }
            None => busy += 1,
        }
        if reads.is_multiple_of(4096) {
            // The blocking form too: it must return a consistent copy (or None), never mix.
            if let Some(w) = cell.read() {
                assert!(w.iter().all(|x| *x == w[0]), "read() gave {w:?}");
            }
            if distinct >= 2_000 && reads >= 200_000 {
                break;
            }
            if child.try_exit().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {distinct} distinct records seen in {reads} reads within 30 s"
            );
        }
    }
    stop.store(1, Ordering::Release);
    assert_eq!(child.wait(Duration::from_secs(20)), 0);
    let total = written.load(Ordering::Acquire);
    let final_words = cell.read().expect("stable once the writer is gone");
    assert_eq!(
        final_words, [total; 15],
        "the last record is the last written"
    );
    eprintln!(
        "seqlock: {reads} reads, {stable} stable, {busy} mid-write, {distinct} distinct, {total} written"
    );
    assert!(
        distinct >= 100,
        "the reader saw the writer's progress: {distinct} distinct records ({reads} reads, {stable} stable, {busy} mid-write)"
    );
}

fn ring_words(n: u64) -> [u64; 7] {
    let mut w = [0u64; 7];
    for (i, x) in w.iter_mut().enumerate() {
        *x = n.wrapping_mul(i as u64 + 1).wrapping_add(i as u64);
    }
    w
}

#[test]
fn event_ring_seqs_are_consecutive_and_missed_counts_are_exact_across_processes() {
    let _dog = Watchdog::new("ring", LIMIT);
    let r = TestRegion::new(
        "ring",
        Geometry {
            nodes: 1,
            ring: 16,
            slots: 1,
        },
    );
    let ring = r.shared.ring();
    let cap = ring.capacity();
    assert_eq!(cap, 16);
    let h = r.shared.header();
    let (ack, phase) = (&h.generation, &h.state);
    const N1: u64 = 20_000; // flow-controlled: the reader must see every one
    const N2: u64 = 5_000; // pushed while the reader waits: all but the last 16 are missed
    const N3: u64 = 300_000; // pushed freely while the reader follows with deliberate lags

    let mut child = Forked::spawn(|| {
        for n in 0..N1 {
            // Never more than half a ring ahead of the reader.
            if !spin_until(20, || {
                n.saturating_sub(ack.load(Ordering::Acquire)) < cap / 2
            }) {
                return 2;
            }
            ring.push(&ring_words(n));
        }
        if !spin_until(20, || phase.load(Ordering::Acquire) >= 2) {
            return 3;
        }
        for n in N1..N1 + N2 {
            ring.push(&ring_words(n));
        }
        if !spin_until(20, || phase.load(Ordering::Acquire) >= 3) {
            return 4;
        }
        for n in N1 + N2..N1 + N2 + N3 {
            ring.push(&ring_words(n));
        }
        0
    });

    let deadline = Instant::now() + Duration::from_secs(40);
    let check_time = |what: &str| {
        assert!(Instant::now() < deadline, "ring test stuck in {what}");
    };

    // Phase 1: close following. Every event, in order, nothing missed.
    let mut cursor = 0u64;
    while cursor < N1 {
        match ring.next(&mut cursor) {
            Next::Event { seq, words, missed } => {
                assert_eq!(missed, 0, "missed events while following closely at {seq}");
                assert_eq!(seq, cursor - 1);
                assert_eq!(words, ring_words(seq), "event {seq} has another's words");
                ack.store(cursor, Ordering::Release);
            }
            Next::Empty => {
                check_time("phase 1");
                std::hint::spin_loop();
            }
        }
    }

    // Phase 2: lag by a whole burst; the first read reports exactly what was overwritten.
    phase.store(2, Ordering::Release);
    while ring.head() < N1 + N2 {
        check_time("phase 2");
        std::thread::yield_now();
    }
    let mut got = Vec::new();
    while let Next::Event { seq, words, missed } = ring.next(&mut cursor) {
        assert_eq!(words, ring_words(seq));
        got.push((seq, missed));
    }
    let first = N1 + N2 - cap;
    let mut expect = vec![(first, first - N1)];
    expect.extend((first + 1..N1 + N2).map(|s| (s, 0)));
    assert_eq!(
        got, expect,
        "after lagging by {N2} events on a ring of {cap}"
    );

    // Phase 3: the writer runs freely while the reader follows with pauses. Every read must
    // account for every sequence number: read, or counted as missed, never both or neither.
    phase.store(3, Ordering::Release);
    let end = N1 + N2 + N3;
    let (mut received, mut missed_total, mut reads) = (0u64, 0u64, 0u64);
    while cursor < end {
        let before = cursor;
        match ring.next(&mut cursor) {
            Next::Event { seq, words, missed } => {
                assert_eq!(
                    seq,
                    before + missed,
                    "event {seq} after cursor {before} with {missed} missed"
                );
                assert_eq!(cursor, seq + 1);
                assert_eq!(words, ring_words(seq), "event {seq} is torn or misplaced");
                received += 1;
                missed_total += missed;
                reads += 1;
                if reads.is_multiple_of(512) {
                    // Deliberate lag.
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
            Next::Empty => {
                check_time("phase 3");
                std::hint::spin_loop();
            }
        }
    }
    assert_eq!(child.wait(Duration::from_secs(20)), 0, "the writer failed");
    assert_eq!(
        received + missed_total,
        N3,
        "received {received} + missed {missed_total}"
    );
    assert!(received >= cap, "received only {received}");
    assert!(missed_total > 0, "the reader never lagged");
    assert_eq!(ring.next(&mut cursor), Next::Empty);
}

/// The reply text the test's "Supervisor" writes for `arg`, as the reply words hold it.
fn reply_words(arg: u64) -> [u64; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut w = [0u64; 2];
    for i in 0..16 {
        let nibble = ((arg >> (60 - 4 * i)) & 0xf) as usize;
        w[i / 8] |= (HEX[nibble] as u64) << (8 * (i % 8));
    }
    w
}

#[test]
fn mailbox_answers_every_command_exactly_once_with_many_processes() {
    let _dog = Watchdog::new("mailbox", LIMIT);
    const SLOTS: usize = 3;
    const MAINS: u64 = 5;
    const EACH: u64 = 300;
    let r = TestRegion::new(
        "mailbox",
        Geometry {
            nodes: 4,
            ring: 16,
            slots: SLOTS,
        },
    );
    let slots = r.shared.slots();
    let h = r.shared.header();

    // Several Mains at once, more than there are slots.
    let mut mains: Vec<Forked> = (0..MAINS)
        .map(|m| {
            Forked::spawn(move || {
                // SAFETY: getpid cannot fail.
                let pid = unsafe { libc::getpid() } as u32;
                for j in 0..EACH {
                    let arg = (m << 32) | j;
                    let mut idx = None;
                    if !spin_until(20, || {
                        idx = mailbox::claim(slots, pid, 0);
                        idx.is_some()
                    }) {
                        return 10;
                    }
                    let Some(i) = idx else { return 11 };
                    let slot = &slots[i];
                    let seq = h.next_cmd_seq.fetch_add(1, Ordering::Relaxed);
                    let req = Request::new(Opcode::Ping, [m as usize], arg);
                    if mailbox::submit(slot, pid, seq, &req).is_err() {
                        return 14;
                    }
                    if mailbox::wait_done(slot, pid, Duration::from_secs(20)).is_err() {
                        return 12;
                    }
                    let want = reply_words(arg);
                    if slot.cmd_seq.load(Ordering::Relaxed) != seq
                        || slot.reply_status.load(Ordering::Relaxed) != ReplyStatus::Ok as u32
                        || slot.reply_len.load(Ordering::Relaxed) != 16
                        || slot.reply[0].load(Ordering::Relaxed) != want[0]
                        || slot.reply[1].load(Ordering::Relaxed) != want[1]
                    {
                        return 13;
                    }
                    if mailbox::take_reply(slot, pid).is_none() {
                        return 15;
                    }
                }
                0
            })
        })
        .collect();

    // This process is the Supervisor side.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut answered: HashMap<u64, (u32, u64)> = HashMap::new();
    let mut seqs = HashSet::new();
    let total = MAINS * EACH;
    let mut spins = 0u64;
    while (answered.len() as u64) < total {
        let mut any = false;
        for slot in slots {
            if let Some((pid, seq, req)) = mailbox::take(slot) {
                any = true;
                assert_eq!(req.opcode, Opcode::Ping as u32);
                assert_eq!(req.nodes(64), vec![(req.arg >> 32) as usize]);
                assert!(seqs.insert(seq), "command seq {seq} taken twice");
                if let Some(prev) = answered.insert(req.arg, (pid, seq)) {
                    panic!(
                        "command {:#x} taken twice: {prev:?} and ({pid}, {seq})",
                        req.arg
                    );
                }
                mailbox::complete(slot, pid, ReplyStatus::Ok, &format!("{:016x}", req.arg));
            }
        }
        if !any {
            spins += 1;
            if spins.is_multiple_of(1024) {
                for (k, m) in mains.iter_mut().enumerate() {
                    if let Some(code) = m.try_exit() {
                        assert_eq!(code, 0, "Main {k} failed (10 claim, 12 wait, 13 reply)");
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "only {} of {total} commands answered within 40 s",
                    answered.len()
                );
            }
            std::thread::yield_now();
        }
    }
    for (k, m) in mains.iter_mut().enumerate() {
        assert_eq!(
            m.wait(Duration::from_secs(20)),
            0,
            "Main {k} failed (10 claim, 12 wait, 13 reply)"
        );
    }
    for m in 0..MAINS {
        for j in 0..EACH {
            assert!(
                answered.contains_key(&((m << 32) | j)),
                "command {m}/{j} lost"
            );
        }
    }
    // No slot is lost: every one is free again, and nothing is left to take.
    for (i, s) in slots.iter().enumerate() {
        assert_eq!(s.state.load(Ordering::Acquire), 0, "slot {i} not free");
        assert!(mailbox::take(s).is_none());
    }

    // A Main that dies holding a claimed slot: the slot can be reclaimed once, then reused.
    let mut dead = Forked::spawn(|| {
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() } as u32;
        match mailbox::claim(slots, pid, 0) {
            Some(_) => 0,
            None => 1,
        }
    });
    assert_eq!(dead.wait(Duration::from_secs(20)), 0);
    let dead_pid = dead.pid as u32;
    let (i, v) = slots
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.state.load(Ordering::Acquire)))
        .find(|(_, v)| SlotState::split(*v) == (dead_pid, Some(SlotState::Claimed)))
        .expect("the dead Main's claimed slot");
    assert!(mailbox::reclaim(&slots[i], v), "reclaimed");
    assert!(!mailbox::reclaim(&slots[i], v), "reclaimed only once");
    assert_eq!(slots[i].state.load(Ordering::Acquire), 0);
    let me = std::process::id();
    let j = mailbox::claim(slots, me, 0).expect("a free slot again");
    mailbox::abandon(&slots[j], me);
    assert!(slots.iter().all(|s| s.state.load(Ordering::Acquire) == 0));
}

/// Defect 11: a reader killed while it sleeps in `Ring::wait` left `waiters` counted forever,
/// so every later push paid a futex wake. The next push now finds nobody to wake and resets
/// the count.
#[test]
fn ring_waiters_heal_after_a_reader_is_killed_while_waiting() {
    let _w = Watchdog::new("ring_waiters_heal", LIMIT);
    let r = TestRegion::new("waiters", Geometry::default());
    let ring = r.shared.ring();
    let head = ring.head();
    let ring_ptr = &ring as *const _ as usize;
    // The reader sleeps at most 250 ms per wait and loops: a kill that lands between two waits
    // leaves nothing counted. Try again until a kill lands while it sleeps (nearly always the
    // first time).
    let mut leaked = false;
    for _ in 0..20 {
        let mut child = Forked::spawn(move || {
            // SAFETY: the ring (and the mapping it views) was made before fork and lives on in
            // the child's copy of the address space.
            let ring = unsafe { &*(ring_ptr as *const broctld::shm::ring::Ring<'_, 7>) };
            loop {
                ring.wait(head, Some(Duration::from_secs(10)));
            }
        });
        assert!(
            common::eventually(Duration::from_secs(10), Duration::from_millis(1), || ring
                .waiters()
                == 1),
            "the child never counted itself as waiting"
        );
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(child.pid, libc::SIGKILL) };
        let mut st = 0;
        // SAFETY: our own child; a valid out-pointer.
        unsafe { libc::waitpid(child.pid, &mut st, 0) };
        child.status = Some(-1);
        if ring.waiters() == 1 {
            leaked = true;
            break;
        }
    }
    assert!(leaked, "no kill landed while the reader slept");
    ring.push(&[1; 7]);
    assert_eq!(
        ring.waiters(),
        0,
        "the push found nobody asleep and healed the count"
    );
}

/// Defect 11: between winning a slot and recording its start time a Main's slot read as
/// `Claimed` with a stale start time, so a Supervisor could judge the live owner dead and
/// hand the slot to another Main. Now the slot reads `Claiming` then, and a live pid keeps it.
#[test]
fn a_slot_being_claimed_is_never_reclaimed_while_its_owner_lives() {
    let c = common::Cluster::new("claiming_slot", ONE_NODE);
    c.start();
    let client = c.client();
    let slots = client.shared().slots();
    let me = std::process::id();
    // As if this Main had just won slot 0 and not yet written its start time.
    let i = mailbox::claim(slots, me, 0).expect("a free slot");
    slots[i].owner_start.store(12345, Ordering::Relaxed);
    slots[i]
        .state
        .store(SlotState::Claiming.word(me), Ordering::SeqCst);
    // Several rings: the Supervisor looks at the slot on each.
    for _ in 0..4 {
        c.run(&["ping"]).ok();
    }
    assert_eq!(
        slots[i].state.load(Ordering::SeqCst),
        SlotState::Claiming.word(me),
        "a live owner's slot was reclaimed:\n{}",
        c.log()
    );
    // And a dead owner's Claiming slot comes back.
    let dead = {
        let mut f = Forked::spawn(|| 0);
        f.wait(Duration::from_secs(10));
        f.pid as u32
    };
    slots[i]
        .state
        .store(SlotState::Claiming.word(dead), Ordering::SeqCst);
    let freed = common::eventually(Duration::from_secs(10), Duration::from_millis(20), || {
        c.run(&["ping"]).ok();
        slots[i].state.load(Ordering::SeqCst) == SlotState::Free as u32
    });
    assert!(
        freed,
        "a dead owner's Claiming slot was never reclaimed:\n{}",
        c.log()
    );
}

const ONE_NODE: &str = r#"
[[node]]
name = "worker-1"
command = ["@NODE@", "--interval", "10s"]
"#;

/// Defect 11: `submit` stored without a CAS, so a Main whose slot had been (falsely) reclaimed
/// and claimed by another Main overwrote that Main's command. It now fails and writes nothing
/// that changes the state word.
#[test]
fn submit_into_a_slot_that_is_no_longer_ours_fails() {
    let r = TestRegion::new("submit_cas", Geometry::default());
    let slots = r.shared.slots();
    let me = std::process::id();
    let i = mailbox::claim(slots, me, 1).expect("a free slot");
    let other = me + 1;
    slots[i]
        .state
        .store(SlotState::Submitted.word(other), Ordering::SeqCst);
    let req = Request::new(Opcode::Stop, [3], 0);
    assert!(mailbox::submit(&slots[i], me, 9, &req).is_err());
    assert_eq!(
        slots[i].state.load(Ordering::SeqCst),
        SlotState::Submitted.word(other)
    );
    // Nor can we take a reply that is not ours, or withdraw another Main's command.
    slots[i]
        .state
        .store(SlotState::Done.word(other), Ordering::SeqCst);
    assert!(mailbox::take_reply(&slots[i], me).is_none());
    assert_eq!(
        slots[i].state.load(Ordering::SeqCst),
        SlotState::Done.word(other)
    );
    slots[i]
        .state
        .store(SlotState::Submitted.word(other), Ordering::SeqCst);
    assert!(!mailbox::withdraw(&slots[i], me));
    assert!(mailbox::withdraw(&slots[i], other));
}
