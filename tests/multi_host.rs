//! A cluster over three hosts, each a network namespace made by the test with its own sshd
//! (Debian's openssh-server), its own runtime folder (set by sshd's `SetEnv`) and keys made by
//! the test; the commanding broctld runs in a fourth namespace linked to each host by a veth
//! pair. Traffic stays inside these namespaces (10.x addresses assigned only there).
//!
//! Needs root and `ip netns`; without them each test says why and passes without running. With
//! them (as in CI), a missing sshd (Debian's openssh-server) is a failure, not a skip.

mod common;

use common::{node_bin, pid_alive, start_time, wait_for, wait_until, Watchdog};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const HOSTS: usize = 3;
const LIMIT: Duration = Duration::from_secs(60);

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and sshd need root)".into());
    }
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(Command::new("ip").args(["netns", "list"])) {
        return Some("no `ip netns` (iproute2)".into());
    }
    // Root with network namespaces (as CI): these tests must run, so a missing sshd fails.
    for p in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        assert!(
            Path::new(p).exists(),
            "no {p}: these tests need Debian's openssh-server (apt-get install -y openssh-server)"
        );
    }
    None
}

macro_rules! need_netns {
    ($name:expr) => {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED {}: {why}", $name);
            return;
        }
    };
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("running a setup command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three hosts and a commander, torn down (every process whose command line or working folder
/// is in the test's folder, then the namespaces) on drop.
struct Net {
    dir: PathBuf,
    tag: String,
    instance: String,
    sshd: Vec<Option<Child>>,
    config: PathBuf,
    _watchdog: Watchdog,
}

impl Net {
    fn ns(&self, host: usize) -> String {
        // Host 0 is the commander.
        format!("bmh-{}-{host}", self.tag)
    }

    fn addr(&self, host: usize) -> String {
        format!("10.{}.{host}.2", self.subnet())
    }

    fn subnet(&self) -> u32 {
        200 + self.tag.as_bytes()[0] as u32 % 50
    }

    fn host_dir(&self, host: usize) -> PathBuf {
        self.dir.join(format!("h{host}"))
    }

    fn new(tag: &str) -> Net {
        Net::with(tag, false)
    }

    /// `own_config`: each host has its own copy of the config (`config =` in `[[host]]`), as
    /// separate machines do, for `deploy`.
    fn with(tag: &str, own_config: bool) -> Net {
        let dir = PathBuf::from(format!("/tmp/bmh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut net = Net {
            tag: format!("{tag}{}", std::process::id() % 100_000),
            instance: format!("mh{tag}"),
            sshd: Vec::new(),
            config: dir.join("cluster.toml"),
            dir,
            _watchdog: Watchdog::new(tag, Duration::from_secs(110)),
        };
        net.setup(own_config);
        net
    }

    fn setup(&mut self, own_config: bool) {
        let d = &self.dir.clone();
        for key in ["id", "hostkey"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", "broctld-test", "-f"])
                    .arg(d.join(key)),
            );
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap(); // sshd's privilege separation folder
        run_ok(Command::new("ip").args(["netns", "add", &self.ns(0)]));
        run_ok(Command::new("ip").args(["-n", &self.ns(0), "link", "set", "lo", "up"]));
        for h in 1..=HOSTS {
            let ns = self.ns(h);
            run_ok(Command::new("ip").args(["netns", "add", &ns]));
            let (c, s) = (self.veth(h, 'c'), self.veth(h, 'h'));
            run_ok(Command::new("ip").args([
                "link",
                "add",
                &c,
                "netns",
                &self.ns(0),
                "type",
                "veth",
                "peer",
                "name",
                &s,
                "netns",
                &ns,
            ]));
            let sub = self.subnet();
            run_ok(Command::new("ip").args([
                "-n",
                &self.ns(0),
                "addr",
                "add",
                &format!("10.{sub}.{h}.1/24"),
                "dev",
                &c,
            ]));
            run_ok(Command::new("ip").args([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{sub}.{h}.2/24"),
                "dev",
                &s,
            ]));
            for (n, i) in [(self.ns(0), c), (ns.clone(), s)] {
                run_ok(Command::new("ip").args(["-n", &n, "link", "set", &i, "up"]));
            }
            run_ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
            let hd = self.host_dir(h);
            std::fs::create_dir_all(hd.join("run")).unwrap();
            let conf = format!(
                "ListenAddress {addr}\nPort 22\nHostKey {d}/hostkey\nPidFile {hd}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 SetEnv BROCTLD_RUNTIME_DIR={hd}/run\nMaxSessions 50\nMaxStartups 50\n\
                 Subsystem sftp internal-sftp\n",
                addr = self.addr(h),
                d = d.display(),
                hd = hd.display()
            );
            std::fs::write(hd.join("sshd_config"), conf).unwrap();
            self.sshd.push(None);
            self.start_sshd(h);
        }
        let node = node_bin();
        let mut toml = String::from("[defaults]\nready_after_ms = 300\nstop_timeout_ms = 3000\n\n");
        for h in 1..=HOSTS {
            if own_config {
                toml += &format!(
                    "[[host]]\nconfig = \"{}/cluster.toml\"\n",
                    self.host_dir(h).display()
                );
            } else {
                toml += "[[host]]\n";
            }
            toml += &format!(
                "name = \"h{h}\"\nssh = \"root@{}\"\nidentity = \"id\"\ntimeout_ms = 30000\n\
                 ssh_options = [\"-F\", \"/dev/null\", \"-o\", \"UserKnownHostsFile={}/known_hosts\", \"-o\", \"StrictHostKeyChecking=accept-new\"]\n\n",
                self.addr(h),
                d.display()
            );
        }
        for (name, ty, h, extra) in [
            ("logger-1", "logger", 1, ""),
            ("manager", "manager", 1, ""),
            ("proxy-1", "proxy", 2, ""),
            ("worker-1", "worker", 2, ""),
            ("worker-2", "worker", 3, ", \"--ignore-term\""),
            ("worker-3", "worker", 3, ""),
        ] {
            toml += &format!(
                "[[node]]\nname = \"{name}\"\ntype = \"{ty}\"\nhost = \"h{h}\"\ncommand = [\"{}\", \"--interval\", \"5s\"{extra}]\n\n",
                node.display()
            );
        }
        // A node naming no host: the commanding machine's, run there without ssh.
        toml += &format!(
            "[[node]]\nname = \"exporter\"\ncommand = [\"{}\", \"--interval\", \"5s\"]\n\n",
            node.display()
        );
        std::fs::write(&self.config, &toml).unwrap();
        if own_config {
            for h in 1..=HOSTS {
                std::fs::write(self.host_dir(h).join("cluster.toml"), &toml).unwrap();
            }
        }
    }

    fn veth(&self, host: usize, side: char) -> String {
        let t: String = self.tag.chars().take(9).collect();
        format!("v{t}{host}{side}")
    }

    fn start_sshd(&mut self, h: usize) {
        let conf = self.host_dir(h).join("sshd_config");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(h),
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.host_dir(h).join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        self.sshd[h - 1] = Some(child);
        let addr = format!("{}:22", self.addr(h));
        // Listening once the namespace's socket table shows it.
        let ns = self.ns(h);
        wait_until(Duration::from_secs(10), "sshd listening", || {
            Command::new("ip")
                .args(["netns", "exec", &ns, "ss", "-ltn"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&addr))
        });
    }

    fn stop_sshd(&mut self, h: usize) {
        // (A set-up that failed before this host's sshd started has no slot for it.)
        if let Some(mut c) = self.sshd.get_mut(h - 1).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The commanding broctld, in the commander's namespace.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(0)])
            .arg(common::broctld_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--instance", &self.instance, "--runtime-dir"])
            .arg(self.dir.join("c"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(&mut child, LIMIT);
        eprintln!(
            "broctld {args:?} -> {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The host's own broctld, run there directly (no ssh): the test's view of the host.
    fn on_host(&self, h: usize, args: &[&str]) -> Output {
        let own = self.host_dir(h).join("cluster.toml");
        Command::new("ip")
            .args(["netns", "exec", &self.ns(h)])
            .arg(common::broctld_bin())
            .arg("--config")
            .arg(if own.exists() { &own } else { &self.config })
            .args([
                "--instance",
                &self.instance,
                "--host",
                &format!("h{h}"),
                "--local",
                "--runtime-dir",
            ])
            .arg(self.host_dir(h).join("run"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn supervisor_pid(&self, h: usize) -> Option<u32> {
        let lock = self
            .host_dir(h)
            .join("run")
            .join(&self.instance)
            .join("supervisor.lock");
        let s = std::fs::read_to_string(lock).ok()?;
        s.split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
            .filter(|p| pid_alive(*p))
    }

    /// `status --json` of the whole cluster: name -> (host, state, pid).
    fn status(&self) -> (i32, Vec<Row>) {
        let out = self.run(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
        let rows = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["host"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                    r["pid"].as_u64().map(|p| p as u32),
                )
            })
            .collect();
        (out.status.code().unwrap_or(-1), rows)
    }

    /// The network namespace of `pid` (kernel truth of which host runs it).
    fn netns_of_pid(pid: u32) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
    }

    fn netns_of_host(&self, h: usize) -> PathBuf {
        let pid = self.sshd[h - 1].as_ref().unwrap().id();
        // `ip netns exec` execs sshd in place: the child's pid is sshd's.
        Net::netns_of_pid(pid).unwrap()
    }

    /// Every process whose command line or working folder is in the test's folder.
    fn ours(&self) -> Vec<u32> {
        let needle = self.dir.to_string_lossy().into_owned();
        let me = std::process::id();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| p != me)
            .filter(|&p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cwd = std::fs::read_link(format!("/proc/{p}/cwd")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&needle) || cwd.starts_with(&self.dir)
            })
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.run(&["--local", "shutdown"]);
        for h in 1..=HOSTS {
            let _ = self.on_host(h, &["shutdown"]);
            self.stop_sshd(h);
        }
        for _ in 0..20 {
            let pids = self.ours();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                if start_time(p).is_some() {
                    // SAFETY: kill has no memory preconditions; the pid was just read.
                    unsafe { libc::kill(p as i32, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every process still in one of the test's namespaces: above all sshd's sessions
        // (`sshd: root@notty`), which outlive their listening sshd, neither name the test's
        // folder nor run in it, and whose peer, once the namespaces go, can never close
        // their connection: they would wait forever, orphaned.
        for _ in 0..40 {
            let left = self.in_namespaces();
            if left.is_empty() {
                break;
            }
            for p in left {
                // SAFETY: kill has no memory preconditions; the pid was just listed.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.in_namespaces();
        for h in 0..=HOSTS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !left.is_empty() && !std::thread::panicking() {
            panic!(
                "processes left in the test's network namespaces: {}",
                common::describe_pids(&left)
            );
        }
    }
}

impl Net {
    /// Every process in one of the test's network namespaces (`ip netns pids`).
    fn in_namespaces(&self) -> Vec<u32> {
        (0..=HOSTS)
            .flat_map(|h| {
                Command::new("ip")
                    .args(["netns", "pids", &self.ns(h)])
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// One row of the cluster's `status --json`: name, host, state, pid.
type Row = (String, String, String, Option<u32>);

fn wait_output(child: &mut Child, limit: Duration) -> Output {
    let status = common::wait_child(child, limit)
        .unwrap_or_else(|| panic!("a broctld command ran longer than {limit:?}"));
    let mut out = Vec::new();
    let mut err = Vec::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    Output {
        status,
        stdout: out,
        stderr: err,
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn cluster_starts_stops_and_restarts_in_order_across_three_hosts() {
    need_netns!("cluster_starts_stops_and_restarts_in_order_across_three_hosts");
    let net = Net::new("a");
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (code, rows) = net.status();
    assert_eq!(code, 0);
    assert_eq!(rows.len(), 7);
    let want_host = |n: &str| match n {
        "logger-1" | "manager" => 1,
        "proxy-1" | "worker-1" => 2,
        "exporter" => 0,
        _ => 3,
    };
    for (name, host, state, pid) in &rows {
        assert_eq!(state, "running", "{name}");
        let pid = pid.unwrap();
        if want_host(name) == 0 {
            // This machine's node, run without ssh: in none of the hosts' namespaces.
            assert!(!host.starts_with('h') || host.len() > 2, "{host}");
            assert!((1..=HOSTS).all(|h| Net::netns_of_pid(pid) != Some(net.netns_of_host(h))));
            continue;
        }
        assert_eq!(host, &format!("h{}", want_host(name)));
        // The kernel's truth: the process lives in that host's namespace.
        assert_eq!(
            Net::netns_of_pid(pid),
            Some(net.netns_of_host(want_host(name))),
            "{name}"
        );
    }
    // Cluster-wide order, whichever host: each stage started after the previous one.
    let started = |n: &str| start_time(rows.iter().find(|r| r.0 == n).unwrap().3.unwrap()).unwrap();
    let workers = ["worker-1", "worker-2", "worker-3"].map(started);
    assert!(started("logger-1") < started("manager"));
    assert!(started("manager") < started("proxy-1"));
    assert!(started("proxy-1") < *workers.iter().min().unwrap());
    assert!(*workers.iter().max().unwrap() < started("exporter"));

    // `stop NODE` reaches the host that runs it.
    let w3 = rows.iter().find(|r| r.0 == "worker-3").unwrap().3.unwrap();
    let out = net.run(&["stop", "worker-3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("h3: "));
    wait_until(Duration::from_secs(10), "worker-3 gone", || !pid_alive(w3));
    let (code, rows) = net.status();
    assert_eq!(code, 3, "a stopped node: exit status 3");
    assert_eq!(
        rows.iter().find(|r| r.0 == "worker-3").unwrap().2,
        "stopped"
    );

    // `restart`: everything runs again under new pids, in order.
    let before: Vec<u32> = rows.iter().filter_map(|r| r.3).collect();
    let out = net.run(&["restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (code, rows) = net.status();
    assert_eq!(code, 0);
    for (name, _, _, pid) in &rows {
        assert!(
            !before.contains(&pid.unwrap()),
            "{name} kept its pid over restart"
        );
    }
    assert!(
        !before.iter().any(|p| pid_alive(*p)),
        "old processes left running"
    );

    // `stop`: reverse order, whichever host, read from the merged events.
    let out = net.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = net.run(&["events", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().all(|e| e["host"].is_string()));
    let last_exit = |n: &str| {
        events
            .iter()
            .rposition(|e| {
                e["node"] == n
                    && e["kind"]
                        .as_str()
                        .is_some_and(|k| k.contains("exit") || k.contains("stop"))
            })
            .unwrap_or_else(|| panic!("no stop event of {n} in {events:?}"))
    };
    assert!(last_exit("worker-1") < last_exit("proxy-1"));
    assert!(last_exit("proxy-1") < last_exit("manager"));
    assert!(last_exit("manager") < last_exit("logger-1"));
    for r in &rows {
        wait_until(Duration::from_secs(10), "stopped", || {
            !pid_alive(r.3.unwrap())
        });
    }
}

#[test]
fn host_whose_sshd_is_down_is_reported_and_the_others_applied() {
    need_netns!("host_whose_sshd_is_down_is_reported_and_the_others_applied");
    let mut net = Net::new("b");
    net.stop_sshd(3);
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("host 'h3'"))
        .unwrap_or_else(|| panic!("no line for h3 in {err}"));
    assert!(
        line.contains("unreachable") && line.contains("sshd"),
        "{line}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("host 'h3'")).count(),
        1,
        "one line per host: {err}"
    );
    let (code, rows) = net.status();
    assert_eq!(code, 4);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        ["logger-1", "manager", "proxy-1", "worker-1", "exporter"]
    );
    for r in &rows {
        assert_eq!(r.2, "running");
        assert!(pid_alive(r.3.unwrap()));
    }
    // Only the reachable host with --host: no failure at all.
    let out = net.run(&["--host", "h2", "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NAME") && table.contains("HOST") && !table.contains("logger-1"),
        "{table}"
    );
    // The host is back: the next command reaches it.
    net.start_sshd(3);
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(net.status().0, 0);

    // A key h1 does not know, on a cold connection: refused, said so, the others shown.
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(net.dir.join("stranger")),
    );
    let toml = std::fs::read_to_string(&net.config).unwrap().replacen(
        "identity = \"id\"",
        "identity = \"stranger\"",
        1,
    );
    std::fs::write(&net.config, toml).unwrap();
    broctld::remote::close_master(&net.dir.join("c").join(&net.instance).join("ssh-h1"));
    let out = net.run(&["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l.contains("host 'h1'")
            && l.contains("refused the login")
            && l.contains("authorized_keys")),
        "{err}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("worker-3") && !table.contains("logger-1"),
        "{table}"
    );

    // No broctld at the path given for h3: said so (a host that answered: exit status 1).
    let toml = std::fs::read_to_string(&net.config).unwrap().replacen(
        "name = \"h3\"",
        "name = \"h3\"\nbroctld = \"/nonexistent/broctld\"",
        1,
    );
    std::fs::write(&net.config, toml).unwrap();
    let out = net.run(&["--host", "h3", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("host 'h3': no broctld at /nonexistent/broctld")),
        "{err}"
    );
}

#[test]
fn link_dropped_mid_command_is_reported_and_that_host_carries_on_alone() {
    need_netns!("link_dropped_mid_command_is_reported_and_that_host_carries_on_alone");
    let net = Net::new("c");
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, rows) = net.status();
    let pid = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().3.unwrap();
    // worker-2 ignores SIGTERM: h3's stop lasts its stop_timeout (3 s), time to cut the link.
    let mut stop = net
        .cmd(&["stop", "workers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // h3's stop is under way once worker-3 (which obeys SIGTERM) is gone.
    wait_until(Duration::from_secs(20), "h3's stop under way", || {
        !pid_alive(pid("worker-3"))
    });
    run_ok(Command::new("ip").args(["-n", &net.ns(3), "link", "set", &net.veth(3, 'h'), "down"]));
    let out = wait_output(&mut stop, LIMIT);
    eprintln!("{}", text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("host 'h3'") && (l.contains("dropped") || l.contains("no answer"))),
        "{err}"
    );
    // h2's worker was stopped; h3's Supervisor finished its stop without the network.
    assert!(!pid_alive(pid("worker-1")));
    wait_until(
        Duration::from_secs(15),
        "h3 stopped its workers alone",
        || !pid_alive(pid("worker-2")) && !pid_alive(pid("worker-3")),
    );
    assert!(pid_alive(pid("manager")) && pid_alive(pid("proxy-1")));
    // With the link down, status names h3 and shows the others.
    let (code, rows) = net.status();
    assert_eq!(code, 4);
    assert!(rows.iter().all(|r| r.1 != "h3"));
    assert_eq!(rows.len(), 5);
}

#[test]
fn supervisor_kill_on_one_host_while_commands_run_on_the_others() {
    need_netns!("supervisor_kill_on_one_host_while_commands_run_on_the_others");
    let net = Net::new("d");
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, rows) = net.status();
    let h2_nodes: Vec<u32> = rows
        .iter()
        .filter(|r| r.1 == "h2")
        .filter_map(|r| r.3)
        .collect();
    let h3_before: Vec<u32> = rows
        .iter()
        .filter(|r| r.1 == "h3")
        .filter_map(|r| r.3)
        .collect();
    let old = net.supervisor_pid(2).expect("h2's Supervisor");
    let mut restart = net
        .cmd(&["restart", "workers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SAFETY: kill has no memory preconditions; `old` is h2's live Supervisor.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    let out = wait_output(&mut restart, LIMIT);
    eprintln!("{}", text(&out));
    // A new Supervisor on h2 (the guardian's), adopting what ran there.
    let new = wait_for(
        Duration::from_secs(20),
        "h2's new Supervisor",
        || net.supervisor_pid(2).filter(|p| *p != old),
        || "-".into(),
    );
    assert_ne!(new, old);
    // Whatever the restart did on h2 when its Supervisor died, a second command completes it.
    let out = net.run(&["start"]);
    assert!(matches!(out.status.code(), Some(0)), "{}", text(&out));
    let (code, rows) = net.status();
    assert_eq!(code, 0);
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert_eq!(r.2, "running", "{r:?}");
        assert!(pid_alive(r.3.unwrap()));
    }
    // h2's proxy was not restarted: the kill -9 of the Supervisor left it running.
    let proxy = rows.iter().find(|r| r.0 == "proxy-1").unwrap().3.unwrap();
    assert!(
        h2_nodes.contains(&proxy),
        "proxy-1 restarted (pid {proxy}, before {h2_nodes:?})"
    );
    // The other hosts' workers were restarted while h2's Supervisor was gone.
    for r in rows.iter().filter(|r| r.1 == "h3") {
        assert!(!h3_before.contains(&r.3.unwrap()), "{} not restarted", r.0);
    }
}

#[test]
fn deploy_copies_the_config_to_every_host_and_reloads_each() {
    need_netns!("deploy_copies_the_config_to_every_host_and_reloads_each");
    let net = Net::with("e", true);
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, before) = net.status();
    // A new worker on h2, and h3 cut off.
    let mut toml = std::fs::read_to_string(&net.config).unwrap();
    toml += &format!(
        "[[node]]\nname = \"worker-4\"\ntype = \"worker\"\nhost = \"h2\"\ncommand = [\"{}\"]\n",
        node_bin().display()
    );
    std::fs::write(&net.config, &toml).unwrap();
    let h3_old = std::fs::read_to_string(net.host_dir(3).join("cluster.toml")).unwrap();
    run_ok(Command::new("ip").args(["-n", &net.ns(3), "link", "set", &net.veth(3, 'h'), "down"]));
    let out = net.run(&["deploy"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let said = text(&out);
    for h in [1, 2] {
        assert!(said.contains(&format!("h{h}: deployed")), "{said}");
        assert_eq!(
            std::fs::read_to_string(net.host_dir(h).join("cluster.toml")).unwrap(),
            toml
        );
    }
    assert_eq!(
        said.lines().filter(|l| l.contains("host 'h3'")).count(),
        1,
        "{said}"
    );
    // h3 keeps its old config and its nodes.
    assert_eq!(
        std::fs::read_to_string(net.host_dir(3).join("cluster.toml")).unwrap(),
        h3_old
    );
    let (code, rows) = net.status();
    assert_eq!(code, 4);
    let w4 = rows
        .iter()
        .find(|r| r.0 == "worker-4")
        .expect("worker-4 on h2");
    assert_eq!((w4.1.as_str(), w4.2.as_str()), ("h2", "running"));
    // Every other node kept its pid over the reload.
    for r in before.iter() {
        assert!(pid_alive(r.3.unwrap()), "{} lost its process", r.0);
        if let Some(now) = rows.iter().find(|x| x.0 == r.0) {
            assert_eq!(now.3, r.3, "{} restarted", r.0);
        }
    }
}

/// The figure of docs/multi-host.md: `status` of 3 hosts, cold (no ssh connection up) and
/// warm (multiplexed connections up), median of `BROCTLD_LATENCY_RUNS` (default 20) each.
/// `cargo test --release --test multi_host -- --ignored --nocapture status_latency`
#[test]
#[ignore]
fn status_latency_over_three_hosts_cold_and_warm() {
    need_netns!("status_latency_over_three_hosts_cold_and_warm");
    let net = Net::new("f");
    let out = net.run(&["start"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs = common::env_count("BROCTLD_LATENCY_RUNS", 20) as usize;
    let control = |h: usize| {
        net.dir
            .join("c")
            .join(&net.instance)
            .join(format!("ssh-h{h}"))
    };
    let time = |cold: bool| {
        let mut v: Vec<f64> = (0..runs)
            .map(|_| {
                if cold {
                    for h in 1..=HOSTS {
                        broctld::remote::close_master(&control(h));
                    }
                }
                let t = std::time::Instant::now();
                let out = net
                    .cmd(&["status"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(out.code(), Some(0));
                ms
            })
            .collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let cold = time(true);
    let warm = time(false);
    // Its parts: one warm multiplexed `ssh true`, and the host's own `broctld status`.
    let median = |mut f: Box<dyn FnMut()>| {
        let mut v: Vec<f64> = (0..runs)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[runs / 2]
    };
    let (ctl, addr, ns0) = (control(1), net.addr(1), net.ns(0));
    let ssh_true = median(Box::new(move || {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns0, "ssh", "-o", "BatchMode=yes", "-o"])
            .arg(format!("ControlPath={}", ctl.display()))
            .args(["-o", "ControlMaster=no", &format!("root@{addr}"), "true"])
            .status()
            .unwrap();
        assert!(ok.success());
    }));
    let on_host = median(Box::new(|| {
        assert!(net.on_host(1, &["status"]).status.success());
    }));
    common::figure(
        "status_latency",
        "warm_ssh_true_one_host_median_ms",
        format!("{ssh_true:.1}"),
    );
    common::figure(
        "status_latency",
        "host_local_status_median_ms",
        format!("{on_host:.1}"),
    );
    // `ip netns exec` itself, for subtracting.
    let mut bare: Vec<f64> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            Command::new("ip")
                .args(["netns", "exec", &net.ns(0), "/bin/true"])
                .status()
                .unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    bare.sort_by(f64::total_cmp);
    common::figure(
        "status_latency",
        "cold_median_ms",
        format!("{:.1} (min {:.1}, max {:.1})", cold.0, cold.1, cold.2),
    );
    common::figure(
        "status_latency",
        "warm_median_ms",
        format!("{:.1} (min {:.1}, max {:.1})", warm.0, warm.1, warm.2),
    );
    common::figure(
        "status_latency",
        "ip_netns_exec_true_median_ms",
        format!("{:.1}", bare[runs / 2]),
    );
    for h in 1..=HOSTS {
        broctld::remote::close_master(&control(h));
    }
}
