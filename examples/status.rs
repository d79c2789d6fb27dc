//! Embedding broctld: attach to a running instance, print its nodes, ping the Supervisor, and
//! follow events for a few seconds.
//!
//! ```text
//! cargo run --example status -- [INSTANCE] [RUNTIME_DIR]
//! ```

use broctld::client::Client;
use broctld::instance::Instance;
use broctld::protocol::mailbox::Opcode;
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
    let t = Instant::now();
    client.command(Opcode::Ping, &[], 0, Duration::from_secs(5))?;
    println!("ping: {:?}", t.elapsed());

    // Follow events for three seconds, starting with the last ten.
    let mut cursor = client.event_head().saturating_sub(10);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let head = client.event_head();
        while let Some((seq, ev, missed)) = client.next_event(&mut cursor) {
            if missed > 0 {
                println!("({missed} events missed)");
            }
            println!(
                "#{seq} {} node={} pid={}",
                ev.kind.as_str(),
                ev.node,
                ev.pid
            );
        }
        client.wait_event(head, until.saturating_duration_since(Instant::now()));
    }
    Ok(())
}
