//! Issue 16, defect 14: what `status` and the commands say about a node must be true even when
//! another process of the same user overwrites the node table in shared memory. Each test
//! damages the region the way such a process would (writing bytes into `/dev/shm/NAME`, never
//! through broctld's API), then checks `status` and the commands against the kernel's truth:
//! the nodes' processes found in `/proc` by their environment.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Bytes in a node record: its sequence word and 15 words.
const CELL: u64 = 128;

/// The region, opened read-write as any process of the instance's user can.
fn region(c: &Cluster) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.shm_path())
        .unwrap_or_else(|e| panic!("open {}: {e}", c.shm_path().display()))
}

/// Where the node table starts (the default geometry every Supervisor uses).
fn table_at() -> u64 {
    broctld::protocol::Geometry::default().offsets().nodes as u64
}

fn read_word(f: &File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).expect("read the region");
    u64::from_le_bytes(b)
}

fn write_word(f: &File, at: u64, v: u64) {
    f.write_all_at(&v.to_le_bytes(), at)
        .expect("write the region");
}

/// Offset of payload word `word` (0..15) of record `i` (after its sequence word).
fn word_at(i: usize, word: usize) -> u64 {
    table_at() + i as u64 * CELL + 8 + 8 * word as u64
}

/// The table index of node `name`, from the raw bytes (name length in word 6's low byte,
/// the name from word 7 on).
fn index_of(f: &File, name: &str) -> usize {
    (0..64)
        .find(|&i| {
            let len = (read_word(f, word_at(i, 6)) & 0xff) as usize;
            let mut b = vec![0u8; len.min(56)];
            f.read_exact_at(&mut b, word_at(i, 7)).expect("read a name");
            b == name.as_bytes()
        })
        .unwrap_or_else(|| panic!("no record of {name} in the region"))
}

/// The kernel's truth: each node's one live process (found in /proc by its environment).
fn truth(c: &Cluster) -> BTreeMap<String, u32> {
    node_leaders(&c.instance)
        .into_iter()
        .filter_map(|(k, v)| {
            assert!(v.len() <= 1, "{k} runs twice: {v:?}");
            v.first().map(|p| (k, *p))
        })
        .collect()
}

/// `status --json`, which must exit 0 and show exactly what the kernel says: every node
/// `running` with the pid that runs it.
fn status_is_truth(c: &Cluster, what: &str) -> BTreeMap<String, NodeView> {
    let out = c.run(&["status", "--json"]);
    let shown = parse_status(&out.stdout);
    let real = truth(c);
    assert_eq!(
        out.code,
        Some(0),
        "{what}: status exit status\n{out:?}\n{}",
        c.log()
    );
    let names: Vec<&String> = shown.keys().collect();
    assert_eq!(names, ["a", "b", "c"], "{what}: the rows\n{out:?}");
    for (name, n) in &shown {
        assert_eq!(n.state, "running", "{what}: {name}\n{out:?}");
        assert_eq!(
            n.pid,
            real.get(name).copied(),
            "{what}: {name}'s pid\n{out:?}"
        );
    }
    shown
}

/// Freezes the Supervisor (SIGSTOP), so nothing repairs the region until [`thaw`].
fn freeze(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_until(WAIT, "the Supervisor to stop", || {
        proc_state(pid) == Some('T')
    });
}

/// The row JSON `status --json` printed for `name`, if any.
fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Zeroing the node table's first page (the 4 KiB page past the header, where every record of
/// a small instance lives) made `status` show nameless `standalone stopped` rows, verified,
/// exit 3, while every node ran, and `stop b` said "no node matches 'b' (nodes: , , )". Now
/// the records fail their check, the Main asks the Supervisor, which rewrites them from its
/// memory at once: `status` shows the truth and `stop b` stops b.
#[test]
fn zeroed_node_record_page_is_never_shown_as_nameless_stopped_rows() {
    let c = Cluster::new("zeroed_records", THREE_NODES);
    c.start();
    let before = status_is_truth(&c, "before");
    let f = region(&c);
    f.write_all_at(&[0u8; 4096], 4096).expect("zero the page");
    status_is_truth(&c, "after the page was zeroed");
    // The Supervisor found them and says so.
    assert!(
        c.log().contains("damaged or forged"),
        "no repair logged:\n{}",
        c.log()
    );
    // Zeroed again: a command by name still finds its node.
    f.write_all_at(&[0u8; 4096], 4096).expect("zero the page");
    let out = c.run(&["stop", "b"]);
    assert_eq!(out.code, Some(0), "{out:?}\n{}", c.log());
    wait_until(WAIT, "b to be gone from /proc", || {
        !truth(&c).contains_key("b")
    });
    let real = truth(&c);
    assert_eq!(real.get("a"), before["a"].pid.as_ref(), "a was touched");
    assert_eq!(real.get("c"), before["c"].pid.as_ref(), "c was touched");
    let s = c.status();
    assert_eq!(s["b"].state, "stopped");
    assert_eq!(s["b"].pid, None);
}

/// The same damage while the Supervisor cannot repair it (stopped): no row is shown as the
/// truth. `status` shows each damaged record as `unknown` with no pid and fails, saying why;
/// `stop b` does nothing and says the table is damaged (never "no node matches"). Once the
/// Supervisor runs again it repairs the table from its memory.
#[test]
fn zeroed_node_records_are_shown_unknown_while_the_supervisor_cannot_repair_them() {
    let c = Cluster::new("zeroed_frozen", THREE_NODES);
    c.start();
    let before = status_is_truth(&c, "before");
    let sup = c.supervisor_pid();
    freeze(sup);
    let f = region(&c);
    f.write_all_at(&[0u8; 4096], 4096).expect("zero the page");
    let out = c.run(&["status", "--json"]);
    let rows = json_rows(&out.stdout);
    assert_eq!(rows.len(), 3, "{out:?}");
    for r in &rows {
        assert_eq!(r["state"], "unknown", "{r}");
        assert_eq!(r["verified"], false, "{r}");
        assert_eq!(r["damaged"], true, "{r}");
        assert!(r["pid"].is_null(), "{r}");
    }
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("fail their check"), "{out:?}");
    let text = c.run(&["status"]);
    assert!(text.stdout.contains("record damaged"), "{text:?}");
    assert_ne!(text.code, Some(0), "{text:?}");
    let stop = c.run(&["stop", "b"]);
    assert_ne!(stop.code, Some(0), "{stop:?}");
    assert!(stop.stderr.contains("damaged"), "{stop:?}");
    assert!(!stop.stderr.contains("no node matches"), "{stop:?}");
    assert_eq!(
        truth(&c).get("b"),
        before["b"].pid.as_ref(),
        "b was stopped"
    );
    thaw(sup);
    wait_until(WAIT, "the table to be repaired", || {
        c.run(&["status", "--json"]).code == Some(0)
    });
    status_is_truth(&c, "after the Supervisor ran again");
}

/// A forged pid (one of a process that exists, with its start time) written into b's record
/// was shown as b's pid, and `top` measured that process as b. Now the forged record fails
/// its check: `status` and `top` show b's real process, `stop b` stops b and never the
/// stranger; with the Supervisor stopped, b's row is `unknown` with no pid.
#[test]
fn a_forged_pid_in_a_record_is_never_shown_as_the_nodes_pid() {
    let c = Cluster::new("forged_pid", THREE_NODES);
    c.start();
    status_is_truth(&c, "before");
    let mut stranger = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("sleep");
    let sp = stranger.id();
    track(c.id, sp, false);
    let f = region(&c);
    let forge = |f: &File| {
        let i = index_of(f, "b");
        let w1 = read_word(f, word_at(i, 1));
        write_word(f, word_at(i, 1), (w1 & !0xffff_ffff) | sp as u64);
        write_word(f, word_at(i, 2), start_time(sp).expect("stranger's start"));
    };
    forge(&f);
    let s = status_is_truth(&c, "after the forgery");
    assert_ne!(s["b"].pid, Some(sp));
    forge(&f);
    let top = c.run(&["top", "b", "--json"]);
    assert_eq!(top.code, Some(0), "{top:?}");
    let rows = json_rows(&top.stdout);
    assert_eq!(rows.len(), 1, "{top:?}");
    assert_eq!(
        rows[0]["pid"].as_u64(),
        truth(&c).get("b").map(|p| *p as u64),
        "top measured another process as b: {top:?}"
    );
    // Frozen Supervisor: the forged record is unknown, never the stranger's.
    let sup = c.supervisor_pid();
    freeze(sup);
    forge(&f);
    let out = c.run(&["status", "--json"]);
    let b = json_rows(&out.stdout)
        .into_iter()
        .find(|r| r["damaged"] == true)
        .unwrap_or_else(|| panic!("no damaged row: {out:?}"));
    assert!(b["pid"].is_null(), "{out:?}");
    assert!(!out.stdout.contains(&format!("\"pid\": {sp}")), "{out:?}");
    assert_ne!(out.code, Some(0), "{out:?}");
    thaw(sup);
    forge(&f);
    c.run(&["stop", "b"]).ok();
    wait_until(WAIT, "b to be gone from /proc", || {
        !truth(&c).contains_key("b")
    });
    assert!(pid_alive(sp), "`stop b` signalled the stranger");
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// Single bits flipped anywhere in b's record (every payload word, and the sequence word's
/// low bit, which leaves the record torn) are caught: `status` shows the truth each time,
/// restored from the Supervisor's memory, and with the Supervisor stopped b's row is never
/// anything but the truth or `unknown`.
#[test]
fn single_bit_flips_in_a_record_are_caught_and_repaired() {
    let c = Cluster::new("bit_flips", THREE_NODES);
    c.start();
    status_is_truth(&c, "before");
    let f = region(&c);
    let i = index_of(&f, "b");
    let mut rng = Rng::from_env("single_bit_flips_in_a_record_are_caught_and_repaired");
    // (word, bit): word 0..15 are the payload, `None` the sequence word.
    let mut flips: Vec<(Option<usize>, u32)> = vec![(None, 0)];
    for w in 0..15 {
        flips.push((Some(w), rng.below(64) as u32));
    }
    // The state's bit (running -> stopped), the pid's low bit, the name length, a name byte.
    flips.extend([(Some(0), 1), (Some(1), 0), (Some(6), 0), (Some(7), 0)]);
    let flip = |f: &File, (w, bit): (Option<usize>, u32)| {
        let at = match w {
            Some(w) => word_at(i, w),
            None => table_at() + i as u64 * CELL,
        };
        write_word(f, at, read_word(f, at) ^ (1u64 << bit));
    };
    for &fl in &flips {
        flip(&f, fl);
        status_is_truth(&c, &format!("after flipping {fl:?}"));
    }
    let sup = c.supervisor_pid();
    let real_b = truth(&c)["b"];
    freeze(sup);
    for &fl in &[(Some(0), 1), (Some(1), 0), (Some(7), 0)] {
        flip(&f, fl);
        let out = c.run(&["status", "--json"]);
        let rows = json_rows(&out.stdout);
        assert_eq!(rows.len(), 3, "{out:?}");
        let lies: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| {
                let honest_b = r["name"] == "b"
                    && r["state"] == "running"
                    && r["pid"].as_u64() == Some(real_b as u64);
                let unknown = r["state"] == "unknown" && r["pid"].is_null();
                r["name"] == "b" && !honest_b || r["name"] != "a" && r["name"] != "c" && !unknown
            })
            .collect();
        assert!(lies.is_empty(), "flip {fl:?}: {lies:?}\n{out:?}");
        assert_ne!(out.code, Some(0), "flip {fl:?}: {out:?}");
        // Undo it, as if it never happened, for the next.
        flip(&f, fl);
    }
    thaw(sup);
    status_is_truth(&c, "after the Supervisor ran again");
}
