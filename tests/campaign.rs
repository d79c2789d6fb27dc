//! The fault campaign: model-based, seeded and shrinking. Each seed generates a cluster of
//! nodes of random behaviours (plain, TERM-ignoring, slow or never ready, flapping, forking,
//! escaping their group, closing their fds) and a random sequence of operations (start, stop,
//! restart, reload with nodes added, removed, renamed, reordered, changed or the file broken,
//! upgrade-supervisor, signal, shutdown) and faults (`kill -9` of the Supervisor at random
//! moments, of Mains mid-command, of nodes; a successor under `ulimit -n 64`; a damaged or
//! truncated region). A real Supervisor runs it through the `broctld` binary; after every step
//! the invariants are checked against the kernel's truth (`/proc`, the nodes' own output), not
//! against broctld's report. A violation is shrunk (ddmin of the step list) and reported with
//! its seed and the minimal sequence.
//!
//! Environment (all optional; CI uses the defaults):
//! - `BROCTLD_CAMPAIGN_SEEDS`: `1,2,3` or `1..40` (default: the fixed CI set `1..8`)
//! - `BROCTLD_CAMPAIGN_STEPS`: steps per seed (default 30; at most 60, the harness's 120 s
//!   watchdog bounds one instance)
//! - `BROCTLD_CAMPAIGN_FAULTS`, `BROCTLD_CAMPAIGN_INVARIANTS`: which are enabled, e.g.
//!   `all,-setsid,-close-fds` (default: all; names in tests/campaign/plan.rs and
//!   docs/reliability.md)
//! - `BROCTLD_CAMPAIGN_SHRINK`: replays allowed to shrink each violation (default 24)
//! - `BROCTLD_CAMPAIGN_KEEP_GOING=1`: run every seed even after a violation (the long run)

mod common;
#[path = "campaign/model.rs"]
mod model;
#[path = "campaign/observe.rs"]
mod observe;
#[path = "campaign/plan.rs"]
mod plan;
#[path = "campaign/run.rs"]
mod run;
#[path = "campaign/shrink.rs"]
mod shrink;

use plan::Switches;
use std::collections::BTreeMap;
use std::io::Write;

/// The seeds CI runs.
const CI_SEEDS: std::ops::RangeInclusive<u64> = 1..=8;

fn seeds() -> Vec<u64> {
    let Ok(text) = std::env::var("BROCTLD_CAMPAIGN_SEEDS") else {
        return CI_SEEDS.collect();
    };
    let bad = || -> ! { panic!("BROCTLD_CAMPAIGN_SEEDS={text:?}: expected 1,2,3 or 1..40") };
    if let Some((a, b)) = text.split_once("..") {
        let (a, b) = (a.trim().parse::<u64>(), b.trim().parse::<u64>());
        match (a, b) {
            (Ok(a), Ok(b)) => (a..=b).collect(),
            _ => bad(),
        }
    } else {
        text.split(',')
            .map(|s| s.trim().parse::<u64>().unwrap_or_else(|_| bad()))
            .collect()
    }
}

fn say(line: &str) {
    // Straight to fd 1, so it shows with --nocapture in order.
    let _ = writeln!(std::io::stdout(), "{line}");
}

#[test]
fn fault_campaign_keeps_every_invariant_under_random_operations_and_faults() {
    let sw = Switches::from_env();
    let steps = common::env_count("BROCTLD_CAMPAIGN_STEPS", 30) as usize;
    assert!(
        (1..=60).contains(&steps),
        "BROCTLD_CAMPAIGN_STEPS={steps}: use 1 to 60 steps per seed and more seeds instead"
    );
    let budget = common::env_count("BROCTLD_CAMPAIGN_SHRINK", 24) as usize;
    let keep_going = std::env::var("BROCTLD_CAMPAIGN_KEEP_GOING").is_ok_and(|v| v == "1");
    let faults: Vec<&str> = sw.faults.iter().map(|f| f.name()).collect();
    let invariants: Vec<&str> = sw.invariants.iter().map(|i| i.name()).collect();
    say(&format!("campaign: faults enabled: {}", faults.join(",")));
    say(&format!(
        "campaign: invariants checked: {}",
        invariants.join(",")
    ));
    let mut total_steps = 0;
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reports = Vec::new();
    for seed in seeds() {
        let p = plan::generate(seed, steps, &sw);
        let label = format!("campaign_s{seed}");
        let o = run::run(&label, &p.nodes, &p.steps, &sw);
        total_steps += o.steps;
        for (k, v) in &o.faults {
            *injected.entry(k).or_default() += v;
        }
        let Some((at, step, violations)) = o.failure else {
            say(&format!(
                "campaign: seed {seed}: {} steps, no violation",
                o.steps
            ));
            continue;
        };
        let first = violations[0].invariant;
        say(&format!(
            "campaign: seed {seed}: step {at} ({step}) broke {}; shrinking",
            violations
                .iter()
                .map(|v| v.invariant.name())
                .collect::<Vec<_>>()
                .join(",")
        ));
        let (minimal, used) = shrink::shrink(
            &format!("campaign_s{seed}_shrink"),
            &p.nodes,
            p.steps[..=at].to_vec(),
            first,
            &sw,
            budget,
        );
        let mut r = format!("seed {seed} broke {} at step {at}: {step}\n", first.name());
        for v in &violations {
            r.push_str(&format!("  [{}] {}\n", v.invariant.name(), v.detail));
        }
        r.push_str(&format!(
            "  nodes: {:?}\n",
            p.nodes
                .iter()
                .map(|n| (&n.name, n.kind, n.autostart))
                .collect::<Vec<_>>()
        ));
        r.push_str(&format!(
            "  minimal sequence ({} steps, {used} replays; replay with BROCTLD_CAMPAIGN_SEEDS={seed}):\n",
            minimal.len()
        ));
        for s in &minimal {
            r.push_str(&format!("    {s}\n"));
        }
        say(&r);
        reports.push(r);
        if !keep_going {
            break;
        }
    }
    let kinds: Vec<String> = injected.iter().map(|(k, v)| format!("{k}={v}")).collect();
    say(&format!(
        "campaign summary: steps={total_steps} faults: {} violations={}",
        kinds.join(" "),
        reports.len()
    ));
    common::figure("campaign", "steps", total_steps);
    for (k, v) in &injected {
        common::figure("campaign", &format!("fault.{k}"), v);
    }
    common::figure("campaign", "violations", reports.len());
    assert!(
        reports.is_empty(),
        "the fault campaign found violations:\n{}",
        reports.join("\n")
    );
}
