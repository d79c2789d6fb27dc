//! Issue 16, defect 13: `upgrade-supervisor` to a binary that cannot serve. The Supervisor runs
//! from a copy of broctld (`ROOT/bin/broctld`, so the test can replace the file at its path);
//! each test installs something broken there, asks for the upgrade, then kills a node with
//! SIGKILL and checks against the kernel's truth (`/proc`) that it is restarted, and that
//! `status` and `ping` say what is true.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A cluster whose Supervisor (and guardian) run from `ROOT/bin/broctld`, a copy of broctld;
/// `env` goes to the Main that starts them (the guardian reads its deadline from it).
fn cluster_on_a_copy(name: &str, env: &[(&str, &str)]) -> (Cluster, PathBuf) {
    let c = Cluster::new(name, THREE_NODES);
    let exe = c.root.join("bin/broctld");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::copy(broctld_bin(), &exe).expect("copy broctld");
    // Another test thread that forks while the copy's write fd is open holds it until its
    // child execs (ETXTBSY for that moment): the exec is tried again, a bounded number of times.
    let mut tries = 0;
    let out = loop {
        let r = std::process::Command::new(&exe)
            .arg("--runtime-dir")
            .arg(&c.runtime)
            .arg("--instance")
            .arg(&c.instance)
            .arg("--config")
            .arg(&c.config)
            .arg("start")
            .current_dir(&c.root)
            .envs(env.iter().copied())
            .output();
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => break r.expect("start from the copy"),
        }
    };
    assert!(out.status.success(), "{out:?}");
    let sup = c.supervisor_pid();
    assert_eq!(
        std::fs::read_link(format!("/proc/{sup}/exe")).unwrap(),
        exe,
        "the Supervisor runs the copy"
    );
    (c, exe)
}

/// Puts `content` at `exe` (a new file renamed over it, as an installer does), mode 0755.
fn install(exe: &PathBuf, content: &[u8]) {
    let tmp = exe.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

/// The kernel's truth: each node's one live process.
fn truth(c: &Cluster) -> BTreeMap<String, u32> {
    node_leaders(&c.instance)
        .into_iter()
        .filter_map(|(k, v)| {
            assert!(v.len() <= 1, "{k} runs twice: {v:?}");
            v.first().map(|p| (k, *p))
        })
        .collect()
}

/// `/proc/PID/comm`.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Processes whose command line is exactly `sleep ARG`.
fn sleepers(arg: &str) -> Vec<u32> {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .collect()
}

/// After a refused or failed upgrade: the Supervisor `sup` still runs broctld (not whatever
/// the path holds), `ping` is answered by it, a node killed with SIGKILL is restarted (per
/// `/proc`), and `status` shows exactly the processes that run.
fn supervision_goes_on(c: &Cluster, sup: u32) {
    assert!(pid_alive(sup), "the Supervisor died\n{}", c.log());
    assert_eq!(
        comm(sup),
        "broctld",
        "the Supervisor's pid runs something else"
    );
    assert_eq!(c.lock_pid(), Some(sup));
    let ping = c.run(&["ping"]);
    assert_eq!(ping.code, Some(0), "{ping:?}\n{}", c.log());
    assert!(
        ping.stdout.contains(&format!("Supervisor pid {sup}")),
        "{ping:?}"
    );
    let b = truth(c)["b"];
    let restarts = c.status()["b"].restarts;
    signal(b, libc::SIGKILL);
    let real = wait_for(
        WAIT,
        "b restarted (per /proc)",
        || {
            let t = truth(c);
            t.get("b").is_some_and(|p| *p != b).then_some(t)
        },
        || c.log(),
    );
    let s = c.wait_status(WAIT, "b running again", |s| {
        s["b"].state == "running" && s["b"].pid == real.get("b").copied()
    });
    let out = c.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for (name, n) in &s {
        assert_eq!(n.pid, real.get(name).copied(), "{name}: {s:?}");
    }
    assert_eq!(s["b"].restarts, restarts + 1);
}

/// Installs `content` at the Supervisor's path, asks for the upgrade and checks it is
/// refused with `because` in the reply, in bounded time, with supervision going on.
fn refused(name: &str, content: &[u8], because: &str) {
    let (c, exe) = cluster_on_a_copy(name, &[]);
    let sup = c.supervisor_pid();
    let gen = c.client().generation();
    install(&exe, content);
    let t = Instant::now();
    let out = c.run(&["upgrade-supervisor"]);
    let took = t.elapsed();
    assert_eq!(out.code, Some(1), "{out:?}\n{}", c.log());
    assert!(out.stderr.contains("refused"), "{out:?}");
    assert!(out.stderr.contains(because), "{out:?}");
    assert!(took < Duration::from_secs(15), "the refusal took {took:?}");
    assert_eq!(c.client().generation(), gen, "a new generation");
    let ev = c.run(&["events", "--since", "0"]);
    assert!(ev.stdout.contains("upgrade-failed"), "{ev:?}");
    supervision_goes_on(&c, sup);
}

/// The binary at the path hangs (`exec sleep 1000`): it used to be exec'd, the lock fd
/// surviving into `sleep`, so `status` said every node `running` (verified, exit 0) while a
/// killed node was gone and never restarted, and `ping` said the Supervisor exited. Now the
/// binary is probed first and refused when it does not answer in time; its probe is killed.
#[test]
fn upgrade_to_a_binary_that_hangs_is_refused_and_supervision_goes_on() {
    let arg = format!("1000.{}", std::process::id());
    refused(
        "upgrade_hangs",
        format!("#!/bin/sh\nexec sleep {arg}\n").as_bytes(),
        "did not answer its version probe within 5 s",
    );
    wait_until(WAIT, "the hung probe to be killed", || {
        sleepers(&arg).is_empty()
    });
}

/// A truncated copy of broctld at the path: it used to be exec'd and to crash, and the
/// guardian retried it for ever while the nodes went unsupervised.
#[test]
fn upgrade_to_a_truncated_binary_is_refused_and_supervision_goes_on() {
    let whole = std::fs::read(broctld_bin()).expect("read broctld");
    refused(
        "upgrade_truncated",
        &whole[..loaded_len(&whole) / 2],
        "version probe failed",
    );
}

/// Where an ELF64 file's loaded segments end (the debug sections after them are never
/// mapped: a file cut there still runs).
fn loaded_len(elf: &[u8]) -> usize {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|k| phoff + k * phentsize)
        .filter(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == 1) // PT_LOAD
        .map(|h| u64_at(h + 8) + u64_at(h + 32))
        .max()
        .expect("a loaded segment")
}

/// A binary that exits 1 at once: it used to be exec'd, to exit, and to be retried for ever
/// by the guardian.
#[test]
fn upgrade_to_a_binary_that_exits_1_is_refused_and_supervision_goes_on() {
    refused(
        "upgrade_exits_1",
        b"#!/bin/sh\nexit 1\n",
        "version probe failed (exit 1)",
    );
}

/// A binary that passes the probe (it hands `__upgrade-probe` to real broctld) but stalls as
/// the Supervisor (`exec sleep`): nothing may say it serves. While it stalls, `status` fails
/// with every row unverified and `ping` says it does not serve (not that it exited); the
/// guardian kills it at its deadline and starts the image that last served, which adopts the
/// nodes and restarts one killed meanwhile.
#[test]
fn an_upgrade_that_passes_its_probe_but_never_serves_is_replaced_by_the_running_image() {
    // Long enough for a `status` and a `ping` against the stalled image (each waits 5 s for
    // it to serve), short enough for a test.
    let (c, exe) = cluster_on_a_copy("upgrade_stalls", &[("BROCTLD_SERVE_DEADLINE_MS", "15000")]);
    let sup = c.supervisor_pid();
    let real = c.root.join("bin/broctld.real");
    std::fs::copy(broctld_bin(), &real).unwrap();
    let arg = format!("1001.{}", std::process::id());
    install(
        &exe,
        format!(
            "#!/bin/sh\nif [ \"$1\" = __upgrade-probe ]; then exec {} \"$@\"; fi\nexec sleep {arg}\n",
            real.display()
        )
        .as_bytes(),
    );
    let before = truth(&c);
    let asking = c.spawn_main(&["upgrade-supervisor"]);
    wait_until(WAIT, "the new image to stall", || comm(sup) == "sleep");
    // A node dies while nothing supervises it.
    let b = before["b"];
    signal(b, libc::SIGKILL);
    let out = c.run(&["status", "--json"]);
    assert_eq!(
        comm(sup),
        "sleep",
        "the stall ended before `status` returned"
    );
    {
        assert_ne!(out.code, Some(0), "status over a stalled image: {out:?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        for r in v.as_array().into_iter().flatten() {
            assert_eq!(r["verified"], false, "{r}\n{out:?}");
            assert_eq!(r["state"], "unknown", "{r}");
        }
        assert!(out.stderr.contains("does not serve"), "{out:?}");
    }
    let ping = c.run(&["ping"]);
    if comm(sup) == "sleep" {
        assert_ne!(ping.code, Some(0), "{ping:?}");
        assert!(ping.stderr.contains("does not serve"), "{ping:?}");
        assert!(!ping.stderr.contains("exited"), "{ping:?}");
    }
    // The guardian's deadline: the stalled image is killed and the running image comes back.
    wait_until(
        Duration::from_secs(40),
        "the stalled image to be killed",
        || !pid_alive(sup),
    );
    let next = live_supervisor(&c);
    assert_eq!(comm(next), "broctld");
    c.wait_main(asking, WAIT);
    let real_now = wait_for(
        WAIT,
        "b restarted (per /proc)",
        || {
            let t = truth(&c);
            t.get("b").is_some_and(|p| *p != b).then_some(t)
        },
        || c.log(),
    );
    assert_eq!(real_now["a"], before["a"], "a restarted");
    assert_eq!(real_now["c"], before["c"], "c restarted");
    let s = c.wait_status(WAIT, "b running again", |s| {
        s["b"].state == "running" && s["b"].pid == real_now.get("b").copied()
    });
    assert_eq!(s["a"].pid, Some(before["a"]));
    assert!(
        c.log().contains("image that last served"),
        "the guardian did not fall back:\n{}",
        c.log()
    );
    supervision_goes_on(&c, next);
}

/// The current Supervisor, once one is alive and has published itself.
fn live_supervisor(c: &Cluster) -> u32 {
    wait_for(
        WAIT,
        "a live Supervisor",
        || {
            c.lock_pid()
                .filter(|p| pid_alive(*p) && comm(*p) == "broctld")
        },
        || c.log(),
    )
}
