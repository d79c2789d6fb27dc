//! Embedding broctld: attach to a running instance, print its nodes, ping the Supervisor, and
//! follow events for a few seconds.
//!
//! ```text
//! cargo run --example status -- [INSTANCE] [RUNTIME_DIR]
//! ```

use broctld::client::Client;
use broctld::instance::Instance;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "default".into());
    let dir = args
        .next()
        .map(Into::into)
        .unwrap_or_else(Instance::default_runtime_dir);
    let instance = Instance::new(&name, &dir)?;
    let client = Client::attach(&instance)?;

    // A status snapshot: shared memory only, no syscall.
    for n in client.status() {
        println!(
            "{:<12} {:<8} {:<9} pid={:<8} restarts={}",
            n.name,
            n.node_type.as_str(),
            n.state.as_str(),
            n.pid.map_or("-".into(), |p| p.to_string()),
            n.restarts
        );
    }

    // A command round trip through the mailbox.
    println!("ping: {:?}", client.ping(Duration::from_secs(5))?);

    // Follow events for three seconds, starting with the last ten.
    let mut events = client.events_since(client.event_head().saturating_sub(10));
    let until = Instant::now() + Duration::from_secs(3);
    while let Some(ev) = events.next_timeout(until.saturating_duration_since(Instant::now())) {
        if ev.missed > 0 {
            println!("({} events missed)", ev.missed);
        }
        println!(
            "#{} {} node={} pid={}",
            ev.seq,
            ev.kind.as_str(),
            ev.node.as_deref().unwrap_or("-"),
            ev.pid.map_or("-".into(), |p| p.to_string())
        );
    }
    Ok(())
}
