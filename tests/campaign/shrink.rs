//! Shrinking a failing sequence: delta debugging (ddmin) of the step list. A candidate counts
//! as failing if a replay on a fresh instance breaks the same invariant; replays are bounded,
//! because each one runs real processes and a fault's timing is not exactly reproducible.

use crate::plan::{Invariant, NodeSpec, Step, Switches};
use crate::run;

/// The smallest failing sequence found within `budget` replays, and how many were used.
pub fn shrink(
    label: &str,
    nodes: &[NodeSpec],
    failing: Vec<Step>,
    invariant: Invariant,
    sw: &Switches,
    budget: usize,
) -> (Vec<Step>, usize) {
    let used = std::cell::Cell::new(0);
    let fails = |steps: &[Step]| -> bool {
        if used.get() >= budget {
            return false;
        }
        used.set(used.get() + 1);
        let o = run::run(label, nodes, steps, sw);
        o.failure
            .is_some_and(|(_, _, v)| v.iter().any(|v| v.invariant == invariant))
    };
    let mut cur = failing;
    let mut n = 2usize;
    while cur.len() >= 2 && used.get() < budget {
        let chunk = cur.len().div_ceil(n);
        // Try each complement (the sequence without one chunk); keep the first that fails.
        let found = (0..n)
            .map(|i| i * chunk)
            .take_while(|lo| *lo < cur.len())
            .map(|lo| {
                let hi = (lo + chunk).min(cur.len());
                cur[..lo]
                    .iter()
                    .chain(&cur[hi..])
                    .cloned()
                    .collect::<Vec<Step>>()
            })
            .find(|candidate| !candidate.is_empty() && fails(candidate));
        let reduced = found.is_some();
        if let Some(candidate) = found {
            cur = candidate;
            n = (n - 1).max(2);
        }
        if !reduced {
            if n >= cur.len() {
                break;
            }
            n = (2 * n).min(cur.len());
        }
    }
    (cur, used.get())
}
