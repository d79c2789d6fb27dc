//! A minimal embedder: restart one node by name and follow the events until it is back (or a
//! timeout passes), printing each event with the name of the node it is about.
//!
//! ```text
//! cargo run --example embed -- NODE [INSTANCE] [RUNTIME_DIR]
//! ```

use broctld::client::{Client, ClientError, EventKind};
use broctld::instance::Instance;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let node = args
        .next()
        .ok_or("usage: embed NODE [INSTANCE] [RUNTIME_DIR]")?;
    let name = args.next().unwrap_or_else(|| "default".into());
    let dir = args
        .next()
        .map(Into::into)
        .unwrap_or_else(Instance::default_runtime_dir);
    let client = match Client::attach(&Instance::new(&name, &dir)?) {
        Ok(c) => c,
        Err(e @ ClientError::NotRunning { .. }) => {
            eprintln!("{e}");
            std::process::exit(3);
        }
        Err(e) => return Err(e.into()),
    };

    // Start following before acting, so no event of the restart is missed.
    let mut events = client.events();
    let old_pid = client.node(&node)?.pid;
    let done = client.restart(&[&node])?;
    println!(
        "restart of {} applied (command #{})",
        done.nodes.join(", "),
        done.seq
    );

    let until = Instant::now() + Duration::from_secs(30);
    while let Some(ev) = events.next_timeout(until.saturating_duration_since(Instant::now())) {
        println!(
            "#{} {:<14} {:<12} pid={}",
            ev.seq,
            ev.kind.as_str(),
            ev.node.as_deref().unwrap_or("-"),
            ev.pid.map_or("-".into(), |p| p.to_string())
        );
        let ours = ev.node.as_deref() == Some(node.as_str());
        if ours && matches!(ev.kind, EventKind::Ready | EventKind::Failed) {
            break;
        }
    }
    let now = client.node(&node)?;
    println!(
        "{node}: {} (pid {:?}, was {:?})",
        now.state.as_str(),
        now.pid,
        old_pid
    );
    Ok(())
}
