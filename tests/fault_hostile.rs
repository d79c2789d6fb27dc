//! Bad input and hostile neighbours: the runtime dir, the instance dir, the lock file, the
//! doorbell FIFO and the shared-memory region are checked on every open (owner, mode, type, no
//! symlink followed, exact size, magic, version, layout, geometry). Each refusal names the file
//! and says what to do, and nothing else is touched: the squatted file keeps its bytes, owner,
//! mode and inode, no Supervisor or node runs, no region is left behind. A config naming a
//! missing program, a cwd that cannot be created or a user that does not exist is refused at
//! load (and at reload) with the config line, and nothing is started (or changed).

mod common;

use broctld::protocol::layout::Header;
use broctld::protocol::{Geometry, Shared};
use common::*;
use std::mem::offset_of;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

const ONE: &str = r#"
[[node]]
name = "solo"
command = ["@NODE@", "--interval", "10s"]
"#;

/// Everything about a path that "untouched" covers (without following a symlink).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    bytes: Option<Vec<u8>>,
    uid: u32,
    mode: u32,
    ino: u64,
    link: Option<PathBuf>,
}

fn snapshot(p: &Path) -> Snapshot {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Snapshot {
        bytes: m.is_file().then(|| std::fs::read(p).unwrap()),
        uid: m.uid(),
        mode: m.mode(),
        ino: m.ino(),
        link: std::fs::read_link(p).ok(),
    }
}

/// Runs `start`; it must fail naming `path` and saying `hint`; no Supervisor, no node and no
/// region may be left; every path in `untouched` must be as it was.
fn refused(c: &Cluster, path: &Path, hint: &str, untouched: &[&Path]) -> Output {
    let before: Vec<Snapshot> = untouched.iter().map(|p| snapshot(p)).collect();
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "start succeeded: {out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "the error names {}:\n{all}",
        path.display()
    );
    assert!(out.stderr.contains(hint), "the error says {hint:?}:\n{all}");
    for (p, b) in untouched.iter().zip(&before) {
        assert_eq!(&snapshot(p), b, "{} was touched", p.display());
    }
    wait_until(WAIT, "no Supervisor", || {
        supervisors_of(&c.runtime).is_empty()
    });
    assert!(node_procs(&c.instance).is_empty(), "a node was started");
    out
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("chown");
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mkfifo(p: &Path, mode: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), mode) }, 0);
    chmod(p, mode);
}

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------------
// The runtime dir and the instance dir.

#[test]
fn a_world_writable_runtime_dir_is_refused_and_left_as_it_is() {
    let c = Cluster::new("rt_mode", ONE);
    std::fs::create_dir_all(&c.runtime).unwrap();
    chmod(&c.runtime, 0o777);
    refused(&c, &c.runtime, "chmod", &[&c.runtime]);
    assert!(!c.instance_dir().exists(), "the instance dir was made");
    assert!(!c.shm_path().exists());
}

#[test]
fn a_symlinked_runtime_dir_is_refused_and_its_target_untouched() {
    let c = Cluster::new("rt_link", ONE);
    let target = c.root.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    chmod(&target, 0o700);
    std::os::unix::fs::symlink(&target, &c.runtime).unwrap();
    refused(&c, &c.runtime, "remove it", &[&c.runtime, &target]);
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "files made in the target"
    );
}

/// ... and the refusal says what the path is: a symbolic link (the design's promise), not
/// "a non-directory".
#[test]
fn a_symlinked_runtime_dir_is_reported_as_a_symbolic_link() {
    let c = Cluster::new("rt_link_msg", ONE);
    let target = c.root.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    chmod(&target, 0o700);
    std::os::unix::fs::symlink(&target, &c.runtime).unwrap();
    refused(&c, &c.runtime, "symbolic link", &[&c.runtime, &target]);
}

#[test]
fn an_instance_dir_of_another_user_is_refused() {
    if !root() {
        return;
    }
    let c = Cluster::new("inst_owner", ONE);
    std::fs::create_dir_all(c.instance_dir()).unwrap();
    chmod(&c.runtime, 0o700);
    chmod(&c.instance_dir(), 0o700);
    chown(&c.instance_dir(), 12345);
    let d = c.instance_dir();
    refused(&c, &d, "owned by uid 12345", &[&d]);
}

/// Nothing is written into an instance dir that failed its checks (here: writable by others).
#[test]
fn nothing_is_written_into_an_instance_dir_that_fails_its_checks() {
    let c = Cluster::new("inst_write", ONE);
    std::fs::create_dir_all(c.instance_dir()).unwrap();
    chmod(&c.runtime, 0o700);
    chmod(&c.instance_dir(), 0o777);
    let d = c.instance_dir();
    refused(&c, &d, "chmod", &[&d]);
    let files: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(files.is_empty(), "written into {}: {files:?}", d.display());
}

/// The runtime dir is checked on every open, not only when the Supervisor starts: a Main
/// refuses an instance dir that became writable by others while a Supervisor ran.
#[test]
fn a_main_refuses_an_instance_dir_made_world_writable_while_running() {
    let c = Cluster::new("inst_mode_live", ONE);
    let before = c.start();
    chmod(&c.instance_dir(), 0o777);
    let out = c.run(&["status"]);
    chmod(&c.instance_dir(), 0o700);
    assert_ne!(
        out.code,
        Some(0),
        "status over a world-writable instance dir: {out:?}"
    );
    assert!(
        out.stderr.contains(&c.instance_dir().display().to_string())
            && out.stderr.contains("chmod"),
        "{out:?}"
    );
    assert_eq!(c.status()["solo"].pid, before["solo"].pid);
}

// ---------------------------------------------------------------------------------------------
// The lock file and the doorbell.

/// Prepares the instance dir (ours, 0700) and returns the path of `name` in it.
fn in_instance(c: &Cluster, name: &str) -> PathBuf {
    std::fs::create_dir_all(c.instance_dir()).unwrap();
    chmod(&c.runtime, 0o700);
    chmod(&c.instance_dir(), 0o700);
    c.instance_dir().join(name)
}

#[test]
fn a_squatted_lock_file_is_refused_whatever_it_is() {
    // A symlink to a file of ours: never followed, the target never written.
    let c = Cluster::new("lock_link", ONE);
    let lock = in_instance(&c, "supervisor.lock");
    let victim = c.root.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    chmod(&victim, 0o600);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    refused(&c, &lock, "symbolic link", &[&lock, &victim]);
    drop(c);

    // Mode 0644: group and others may read it.
    let c = Cluster::new("lock_mode", ONE);
    let lock = in_instance(&c, "supervisor.lock");
    std::fs::write(&lock, "").unwrap();
    chmod(&lock, 0o644);
    refused(&c, &lock, "chmod", &[&lock]);
    drop(c);

    // A directory.
    let c = Cluster::new("lock_dir", ONE);
    let lock = in_instance(&c, "supervisor.lock");
    std::fs::create_dir(&lock).unwrap();
    refused(&c, &lock, "directory", &[&lock]);
    drop(c);

    // Another user's.
    if root() {
        let c = Cluster::new("lock_owner", ONE);
        let lock = in_instance(&c, "supervisor.lock");
        std::fs::write(&lock, "1 1\n").unwrap();
        chmod(&lock, 0o600);
        chown(&lock, 12345);
        refused(&c, &lock, "owned by uid 12345", &[&lock]);
    }
}

#[test]
fn a_squatted_doorbell_is_refused() {
    type Plant = fn(&Path, &Path);
    let cases: Vec<(&str, Plant, &str)> = vec![
        (
            "bell_file",
            |p, _| {
                std::fs::write(p, "x").unwrap();
                chmod(p, 0o600);
            },
            "expected a FIFO",
        ),
        (
            "bell_link",
            |p, root| {
                let t = root.join("fifo-elsewhere");
                mkfifo(&t, 0o600);
                std::os::unix::fs::symlink(&t, p).unwrap();
            },
            "symbolic link",
        ),
        ("bell_mode", |p, _| mkfifo(p, 0o666), "chmod"),
    ];
    for (name, plant, hint) in cases {
        let c = Cluster::new(name, ONE);
        let bell = in_instance(&c, "doorbell");
        plant(&bell, &c.root);
        refused(&c, &bell, hint, &[&bell]);
    }
    if root() {
        let c = Cluster::new("bell_owner", ONE);
        let bell = in_instance(&c, "doorbell");
        mkfifo(&bell, 0o600);
        chown(&bell, 12345);
        refused(&c, &bell, "owned by uid 12345", &[&bell]);
    }
}

/// A Supervisor that refuses to start (here: a squatted doorbell) leaves nothing behind: it
/// creates the region before it opens the doorbell, and must remove it again.
#[test]
fn a_start_refused_for_its_doorbell_leaves_no_region() {
    let c = Cluster::new("bell_region", ONE);
    let bell = in_instance(&c, "doorbell");
    std::fs::write(&bell, "x").unwrap();
    chmod(&bell, 0o600);
    refused(&c, &bell, "expected a FIFO", &[&bell]);
    assert!(
        !c.shm_path().exists(),
        "a refused start left its region {}",
        c.shm_path().display()
    );
}

/// The doorbell is checked by every Main too: one swapped for a symlink while the Supervisor
/// runs is refused, not followed.
#[test]
fn a_main_refuses_a_doorbell_swapped_for_a_symlink() {
    let c = Cluster::new("bell_swap", ONE);
    c.start();
    let bell = c.instance_dir().join("doorbell");
    let moved = c.instance_dir().join("doorbell.real");
    std::fs::rename(&bell, &moved).unwrap();
    let target = c.root.join("fifo-elsewhere");
    mkfifo(&target, 0o600);
    std::os::unix::fs::symlink(&target, &bell).unwrap();
    let out = c.run(&["ping"]);
    std::fs::remove_file(&bell).unwrap();
    std::fs::rename(&moved, &bell).unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(&bell.display().to_string()) && out.stderr.contains("symbolic link"),
        "{out:?}"
    );
    c.run(&["ping"]).ok();
}

/// The Supervisor's log is in the instance dir (ours, 0700); a symlink planted there is not
/// followed to append to another file.
#[test]
fn a_symlinked_supervisor_log_is_not_followed() {
    let c = Cluster::new("log_link", ONE);
    let log = in_instance(&c, "supervisor.log");
    let victim = c.root.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let _ = c.run(&["start"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

// ---------------------------------------------------------------------------------------------
// The region.

/// Plants a region of default geometry at the instance's name, lets `damage` change it, and
/// checks a start is refused naming it with `hint`, leaving it as it was.
fn refused_region(test: &str, damage: impl FnOnce(&Path), hint: &str) {
    let c = Cluster::new(test, ONE);
    let name = c.instance().shm_name();
    let path = c.shm_path();
    drop(Shared::create(&name, Geometry::default()).expect("plant a region"));
    damage(&path);
    refused(&c, &path, hint, &[&path]);
    let st = c.run(&["status"]);
    assert_ne!(st.code, Some(0));
    let _ = std::fs::remove_file(&path);
    let _ = broctld::shm::Region::unlink(&name);
}

fn write_at(p: &Path, at: usize, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, at as u64).unwrap();
}

#[test]
fn a_truncated_region_is_refused() {
    refused_region(
        "region_short",
        |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(100).unwrap();
        },
        "remove it",
    );
    refused_region(
        "region_shorter",
        |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len - 4096).unwrap();
        },
        "damaged",
    );
}

#[test]
fn an_oversized_region_is_refused() {
    refused_region(
        "region_long",
        |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len + 4096).unwrap();
        },
        "damaged",
    );
    refused_region(
        "region_huge",
        |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(1 << 30).unwrap();
        },
        "remove it",
    );
}

#[test]
fn a_region_with_a_wrong_magic_layout_or_geometry_is_refused() {
    refused_region(
        "region_magic",
        |p| write_at(p, offset_of!(Header, magic), b"NOTOURS!"),
        "not a broctld region",
    );
    refused_region(
        "region_layout",
        |p| write_at(p, offset_of!(Header, layout_hash), &7u64.to_le_bytes()),
        "has layout",
    );
    refused_region(
        "region_geometry",
        |p| write_at(p, offset_of!(Header, node_capacity), &0u32.to_le_bytes()),
        "inconsistent header",
    );
    refused_region(
        "region_size_field",
        |p| write_at(p, offset_of!(Header, total_size), &12u64.to_le_bytes()),
        "inconsistent header",
    );
}

#[test]
fn a_symlink_or_a_directory_at_the_region_name_is_refused() {
    let c = Cluster::new("region_link", ONE);
    let path = c.shm_path();
    let victim = c.root.join("victim");
    std::fs::write(&victim, vec![0u8; 405_504]).unwrap();
    chmod(&victim, 0o600);
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    refused(&c, &path, "symbolic link", &[&path, &victim]);
    std::fs::remove_file(&path).unwrap();
    drop(c);

    let c = Cluster::new("region_dir", ONE);
    let path = c.shm_path();
    std::fs::create_dir(&path).unwrap();
    chmod(&path, 0o700);
    let out = c.run(&["start"]);
    let _ = std::fs::remove_dir(&path);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "names {}: {out:?}",
        path.display()
    );
    assert!(node_procs(&c.instance).is_empty());
}

/// A node's lock file squatted by a symlink: the link is never followed (its target keeps its
/// bytes), whatever the Supervisor then does with the node.
#[test]
fn a_symlinked_node_lock_is_not_followed() {
    let c = Cluster::new("node_lock_link", ONE);
    let nodes = in_instance(&c, "nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    chmod(&nodes, 0o700);
    let victim = c.root.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    chmod(&victim, 0o600);
    let lock = nodes.join("solo.lock");
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let before = snapshot(&victim);
    let _ = c.run(&["start"]);
    assert_eq!(snapshot(&victim), before, "the link was followed");
    assert!(
        c.log().contains(&lock.display().to_string()),
        "the log names it:\n{}",
        c.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Configs that cannot be started: refused at load, nothing started.

/// `start` with `text` fails naming the config line `line` and `needles`; nothing runs.
fn bad_node(test: &str, text: &str, line: usize, needles: &[&str]) {
    let c = Cluster::new(test, text);
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let at = format!("{}:{line}", c.config.display());
    assert!(out.stderr.contains(&at), "names {at}: {out:?}");
    for n in needles {
        assert!(out.stderr.contains(n), "says {n:?}: {out:?}");
    }
    wait_until(WAIT, "no Supervisor", || {
        supervisors_of(&c.runtime).is_empty()
    });
    assert!(node_procs(&c.instance).is_empty(), "a node was started");
    assert!(!c.shm_path().exists(), "a region was left");
}

const GOOD: &str = "[[node]]\nname = \"good\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n";

#[test]
fn a_config_naming_a_missing_program_starts_nothing() {
    bad_node(
        "cfg_no_program",
        &format!("{GOOD}\n[[node]]\nname = \"bad\"\ncommand = [\"no-such-program-xyz\"]\n"),
        5,
        &["bad", "no-such-program-xyz"],
    );
    bad_node(
        "cfg_no_program_path",
        &format!("{GOOD}\n[[node]]\nname = \"bad\"\ncommand = [\"./bin/nothing\"]\n"),
        5,
        &["bad", "bin/nothing"],
    );
}

#[test]
fn a_config_with_a_cwd_that_cannot_be_made_starts_nothing() {
    let text = format!(
        "{GOOD}\n[[node]]\nname = \"bad\"\ncommand = [\"@NODE@\"]\ncwd = \"blocker/sub\"\n"
    );
    let c = Cluster::new("cfg_cwd", &text);
    std::fs::write(c.root.join("blocker"), "a file, not a folder").unwrap();
    let out = c.run(&["start"]);
    assert_ne!(out.code, Some(0), "{out:?}");
    let at = format!("{}:5", c.config.display());
    assert!(out.stderr.contains(&at), "names {at}: {out:?}");
    assert!(out.stderr.contains("blocker/sub"), "{out:?}");
    wait_until(WAIT, "no Supervisor", || {
        supervisors_of(&c.runtime).is_empty()
    });
    assert!(node_procs(&c.instance).is_empty());
    assert!(!c.shm_path().exists());
}

#[test]
fn a_config_naming_a_user_or_group_that_does_not_exist_starts_nothing() {
    bad_node(
        "cfg_no_user",
        &format!("{GOOD}\n[[node]]\nname = \"bad\"\ncommand = [\"@NODE@\"]\nuser = \"no-such-user-xyz\"\n"),
        8,
        &["no such user 'no-such-user-xyz'"],
    );
    bad_node(
        "cfg_no_group",
        &format!("{GOOD}\n[[node]]\nname = \"bad\"\ncommand = [\"@NODE@\"]\ngroup = \"no-such-group-xyz\"\n"),
        8,
        &["no such group 'no-such-group-xyz'"],
    );
}

#[test]
fn a_reload_to_a_config_that_cannot_be_started_changes_nothing() {
    let c = Cluster::new(
        "reload_bad",
        &format!(
            "{GOOD}\n[[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"10s\"]\n"
        ),
    );
    let before = c.start();
    for (i, bad) in [
        "[[node]]\nname = \"new\"\ncommand = [\"no-such-program-xyz\"]\n",
        "[[node]]\nname = \"new\"\ncommand = [\"@NODE@\"]\nuser = \"no-such-user-xyz\"\n",
    ]
    .iter()
    .enumerate()
    {
        c.write_config(&format!(
            "{GOOD}\n[[node]]\nname = \"other\"\ncommand = [\"@NODE@\", \"--interval\", \"5s\"]\n\n{bad}"
        ));
        let out = c.run(&["reload"]);
        assert_ne!(out.code, Some(0), "reload {i}: {out:?}");
        assert!(
            out.stderr.contains("nothing changed")
                && out.stderr.contains(&c.config.display().to_string()),
            "reload {i}: {out:?}"
        );
        let s = c.status();
        assert_eq!(s.len(), 2, "reload {i}: {s:?}");
        for (name, n) in &before {
            assert_eq!(s[name].pid, n.pid, "reload {i}: {name} changed");
            assert_eq!(s[name].restarts, 0);
        }
    }
}
