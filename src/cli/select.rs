//! Node selection: names, globs, roles in the plural, `all`.

use crate::config::NodeType;

/// Something with a name and a role.
pub trait Named {
    /// The name.
    fn name(&self) -> &str;
    /// The role.
    fn node_type(&self) -> NodeType;
}

impl Named for crate::config::NodeSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn node_type(&self) -> NodeType {
        self.node_type
    }
}

impl Named for crate::config::hosts::ClusterNode {
    fn name(&self) -> &str {
        &self.name
    }
    fn node_type(&self) -> NodeType {
        self.node_type
    }
}

/// Matches `pattern` (with `*` and `?`) against `s`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The indices of `items` that `words` select (all when `words` is empty), in table order.
/// A word that selects nothing is an error naming it and the known names.
pub fn select<T: Named>(items: &[T], words: &[String]) -> Result<Vec<usize>, String> {
    if words.is_empty() || words.iter().any(|w| w == "all") {
        return Ok((0..items.len()).collect());
    }
    let mut chosen = vec![false; items.len()];
    for w in words {
        let role = NodeType::ALL.iter().find(|t| t.plural() == w).copied();
        let mut hit = false;
        for (i, it) in items.iter().enumerate() {
            let m = match role {
                Some(r) => it.node_type() == r,
                None => glob(w, it.name()),
            };
            if m {
                chosen[i] = true;
                hit = true;
            }
        }
        if !hit && role.is_none() {
            let known: Vec<&str> = items.iter().map(Named::name).collect();
            return Err(format!(
                "no node matches '{w}' (nodes: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
    Ok((0..items.len()).filter(|i| chosen[*i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct N(&'static str, NodeType);
    impl Named for N {
        fn name(&self) -> &str {
            self.0
        }
        fn node_type(&self) -> NodeType {
            self.1
        }
    }

    #[test]
    fn globs() {
        assert!(glob("worker-*", "worker-12"));
        assert!(glob("w?rker-1", "worker-1"));
        assert!(!glob("worker-*", "proxy-1"));
        assert!(glob("*", ""));
        assert!(glob("*-1", "logger-1"));
    }

    #[test]
    fn selection() {
        let items = [
            N("logger-1", NodeType::Logger),
            N("worker-1", NodeType::Worker),
            N("worker-2", NodeType::Worker),
        ];
        let s = |w: &str| {
            select(
                &items,
                &w.split_whitespace().map(String::from).collect::<Vec<_>>(),
            )
        };
        assert_eq!(s("").unwrap(), vec![0, 1, 2]);
        assert_eq!(s("workers").unwrap(), vec![1, 2]);
        assert_eq!(s("worker-2 logger-1").unwrap(), vec![0, 2]);
        assert_eq!(s("w*-1").unwrap(), vec![1]);
        assert!(s("nope")
            .unwrap_err()
            .contains("logger-1, worker-1, worker-2"));
        assert_eq!(s("proxies").unwrap(), Vec::<usize>::new());
    }
}
