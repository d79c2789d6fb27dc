//! The project's own fixtures for Zeek's configuration formats (they run whether or not the
//! upstream corpus is present): errors naming file, line and key; the TOML include with
//! broctld's settings on top; a multi-host cluster folder; zeekctl's node.cfg expansion;
//! worker templates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use broctld::config::{zeek_cluster, Config, ConfigError, NodeSpec};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("broctld-zeekcfg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn node<'a>(nodes: &'a [NodeSpec], name: &str) -> &'a NodeSpec {
    nodes.iter().find(|n| n.name == name).unwrap_or_else(|| {
        panic!(
            "no node {name} in {:?}",
            nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
        )
    })
}

fn env<'a>(n: &'a NodeSpec, key: &str) -> Option<&'a str> {
    n.env
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn zeek_conf_errors_name_the_file_line_and_key() {
    let d = dir("errors");
    let conf = d.join("zeek.conf");
    std::fs::write(&conf, "[zeek]\nmanager = 1\nproxy_nice = 42\n").unwrap();
    let e = Config::load(&conf).unwrap_err();
    let ConfigError::Invalid {
        path,
        line,
        key,
        message,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        (path.as_path(), *line, key.as_deref()),
        (conf.as_path(), 3, Some("proxy_nice"))
    );
    assert!(
        message.contains("invalid proxy_nice value '42'"),
        "{message}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}:3: ", conf.display())),
        "{e}"
    );

    std::fs::write(
        &conf,
        "[interface eth0]\ninterface = eth0\nworkers = 2\nargs = -C\n",
    )
    .unwrap();
    let e = Config::load(&conf).unwrap_err();
    assert_eq!((e.line(), e.key()), (Some(4), Some("args")), "{e}");
    assert!(e
        .to_string()
        .contains("invalid option 'args' in section 'interface eth0'"));

    std::fs::write(&conf, "[zeek]\nmanager = 1\nlogger_nic = 3\n").unwrap();
    let e = Config::load(&conf).unwrap_err();
    assert_eq!((e.line(), e.key()), (Some(3), Some("logger_nic")), "{e}");
    assert!(
        e.to_string()
            .ends_with("invalid key 'logger_nic' in section 'zeek' (did you mean 'logger_nice'?)"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn toml_include_puts_broctld_settings_on_top_of_zeek_conf() {
    let d = dir("include");
    std::fs::write(
        d.join("zeek.conf"),
        "interface = lo\nworkers = 1\nmanager = 1\nbase_dir = /opt/zeek\nrestart_interval_sec = 3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("broctld.toml"),
        "[zeek]\nconf = \"zeek.conf\"\n\n[defaults]\nstop_timeout_ms = 5000\ncapabilities = []\n\n\
         [[node]]\nname = \"exporter\"\ncommand = [\"/bin/true\"]\nstart_after = [\"worker-1\"]\n",
    )
    .unwrap();
    let cfg = Config::load(&d.join("broctld.toml")).unwrap();
    let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["manager", "worker-1", "archiver", "exporter"]);
    let w = node(&cfg.nodes, "worker-1");
    assert_eq!(w.policy.stop_timeout, Duration::from_secs(5));
    assert!(w.policy.capabilities.is_empty());
    assert_eq!(w.policy.restart_delay, Duration::from_secs(3));
    assert_eq!(w.command[0], "/opt/zeek/bin/zeek");
    assert_eq!(env(w, "CLUSTER_NODE"), Some("worker-1"));
    assert_eq!(w.start_after, ["manager"]);
    let setup = cfg.zeek.as_ref().expect("a Zeek setup");
    assert_eq!(
        setup.layout_path,
        Path::new("/opt/zeek/var/spool/zeek/generated-scripts/cluster-layout.zeek")
    );
    assert!(setup
        .layout
        .contains("[\"worker-1\"] = [$node_type=Cluster::WORKER, $ip=127.0.0.1"));
    // An unknown key in [zeek] names its line.
    std::fs::write(
        d.join("broctld.toml"),
        "[zeek]\nconf = \"zeek.conf\"\nhots = \"x\"\n",
    )
    .unwrap();
    let e = Config::load(&d.join("broctld.toml")).unwrap_err();
    assert_eq!((e.line(), e.key()), (Some(3), Some("hots")), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cluster_folder_runs_this_hosts_file_and_lays_out_every_host() {
    let d = dir("folder");
    std::fs::write(
        d.join("mgr.zeek.conf"),
        "manager = 1\nloggers = 1\naddress = 10.1.0.1\n",
    )
    .unwrap();
    std::fs::write(
        d.join("sensor.zeek.conf"),
        "interface = eth1\nworkers = 2\nworkers_cpu_list = 4-5\n",
    )
    .unwrap();
    let (nodes, setup) = zeek_cluster::load(&d, Some("sensor"), &d).unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["sensor-worker-1", "sensor-worker-2"]);
    assert_eq!(node(&nodes, "sensor-worker-2").cpu_affinity, [5]);
    assert!(
        setup.layout.contains("[\"mgr\"] = [$ip=10.1.0.1],"),
        "{}",
        setup.layout
    );
    assert!(setup
        .layout
        .contains("(blocking_lookup_hostname(\"sensor\") as vector of addr)[0]"));
    assert!(setup.layout.contains(
        "[\"mgr-logger-1\"] = [$node_type=Cluster::LOGGER, $ip=hosts[\"mgr\"]$ip, $p=27761/tcp"
    ));
    assert!(setup.layout.contains("[\"sensor-worker-2\"] = [$node_type=Cluster::WORKER, $ip=hosts[\"sensor\"]$ip, $manager=\"manager\", $metrics_port=9992/tcp],"));
    let e = zeek_cluster::load(&d, Some("nosuch"), &d).unwrap_err();
    assert!(e.to_string().contains("--host"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn node_cfg_expands_lb_procs_spreads_pin_cpus_and_merges_env_vars() {
    let d = dir("nodecfg");
    let etc = d.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("node.cfg"),
        "[manager]\ntype=manager\nhost=localhost\n[proxy-1]\ntype=proxy\nhost=localhost\n\
         [worker-1]\ntype=worker\nhost=localhost\ninterface=eth0\nlb_method=af_packet\nlb_procs=3\npin_cpus=2,3\n\
         af_packet_fanout_id=21\nenv_vars=A=node, B = two\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("zeekctl.cfg"),
        "Env_Vars = A=global,C=3\nZeekArgs = -C\n",
    )
    .unwrap();
    let cfg = Config::load(&etc.join("node.cfg")).unwrap();
    let names: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "manager",
            "proxy-1",
            "worker-1-1",
            "worker-1-2",
            "worker-1-3"
        ]
    );
    let cpus: Vec<Vec<usize>> = cfg.nodes[2..]
        .iter()
        .map(|n| n.cpu_affinity.clone())
        .collect();
    assert_eq!(cpus, [vec![2], vec![3], vec![2]]);
    let w = node(&cfg.nodes, "worker-1-2");
    assert_eq!(
        (env(w, "A"), env(w, "B"), env(w, "C")),
        (Some("node"), Some("two"), Some("3"))
    );
    assert_eq!(env(w, "CLUSTER_NODE"), Some("worker-1-2"));
    let args = w.command.join(" ");
    assert!(args.contains("-i af_packet::eth0 -U .status"), "{args}");
    assert!(
        args.ends_with("zeekctl/auto AF_Packet::fanout_id=21 -C"),
        "{args}"
    );
    assert_eq!(w.cwd, d.join("spool/worker-1-2"));
    assert_eq!(node(&cfg.nodes, "proxy-1").start_after, ["manager"]);
    let layout = &cfg.zeek.as_ref().unwrap().layout;
    assert!(layout.contains("\t[\"worker-1-3\"] = [$node_type=Cluster::WORKER, $ip=127.0.0.1, $p=27767/tcp, $manager=\"manager\", $metrics_port=9995/tcp],"), "{layout}");
    // lb_procs on a proxy is refused with its line.
    std::fs::write(etc.join("node.cfg"), "[manager]\ntype=manager\nhost=localhost\n[proxy-1]\ntype=proxy\nhost=localhost\nlb_procs=2\n").unwrap();
    let e = Config::load(&etc.join("node.cfg")).unwrap_err();
    assert_eq!((e.line(), e.key()), (Some(7), Some("lb_procs")), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn worker_interface_templates_substitute_indices_and_cpus() {
    let d = dir("templates");
    std::fs::write(
        d.join("zeek.conf"),
        "[zeek]\nmanager = 1\nbase_dir = /z\n\n[interface a]\ninterface = af_packet::veth${worker_index0}\nworkers = 2\n\
         workers_cpu_list = 0-8:4\nworker_env = IDX=${host_worker_index}/${worker_cpu}\n\n\
         [interface b]\ninterface = b\nworkers = 2\nworkers_cpu_list = 0-8:4\nworker_env = IDX=${host_worker_index}/${worker_cpu}\n",
    )
    .unwrap();
    let cfg = Config::load(&d.join("zeek.conf")).unwrap();
    let a2 = node(&cfg.nodes, "worker-a-2");
    assert_eq!(env(a2, "INTERFACE"), Some("af_packet::veth1"));
    assert!(a2
        .command
        .windows(2)
        .any(|w| w == ["-i", "af_packet::veth1"]));
    assert_eq!(
        (a2.cpu_affinity.as_slice(), env(a2, "IDX")),
        (&[4][..], Some("2/4"))
    );
    let b2 = node(&cfg.nodes, "worker-b-2");
    // The host-wide index continues over interfaces: worker 4 of the host gets CPU 0 again.
    assert_eq!(
        (b2.cpu_affinity.as_slice(), env(b2, "IDX")),
        (&[0][..], Some("4/0"))
    );
    assert_eq!(a2.policy.capabilities, ["CAP_NET_RAW"]);
    std::fs::write(d.join("zeek.conf"), "interface = ${nope}\nworkers = 1\n").unwrap();
    let e = Config::load(&d.join("zeek.conf")).unwrap_err();
    assert_eq!((e.line(), e.key()), (Some(1), Some("interface")), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
