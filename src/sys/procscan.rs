//! Finding node processes in `/proc`: identity checks by start time and environment, used
//! when adopting survivors of a dead Supervisor.

use crate::sys::procstat;

/// Whether process `pid` carries this node's identity in its environment (as every node
/// broctld starts does: `BROCTLD_NODE` and `BROCTLD_INSTANCE`).
pub fn is_node_process(pid: u32, node: &str, instance: &str) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want_node = format!("BROCTLD_NODE={node}");
    let want_instance = format!("BROCTLD_INSTANCE={instance}");
    let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
    vars.contains(&want_node.as_bytes()) && vars.contains(&want_instance.as_bytes())
}

/// Finds a running copy of a node: a process-group leader (every node leads its own group;
/// anything it forked does not) whose environment names this node and instance. Scans /proc:
/// used only when a node's lock is held by a process its lock file does not name.
pub fn find_node_process(node: &str, instance: &str, command: &[String]) -> Option<(u32, u64)> {
    let want: Vec<u8> = command.iter().flat_map(|a| a.bytes().chain([0])).collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // SAFETY: getpgid takes a pid and returns its group or -1.
        if unsafe { libc::getpgid(pid as libc::pid_t) } != pid as libc::pid_t {
            continue;
        }
        // Its command line must be the node's command (a child that escaped into its own
        // group with the node's environment is not the node).
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let same_args = argv
            .split(|b| *b == 0)
            .skip(1)
            .eq(want.split(|b| *b == 0).skip(1));
        if same_args && is_node_process(pid, node, instance) {
            if let Ok(Some(start)) = procstat::start_time(pid) {
                if is_survivor(pid, start) {
                    return Some((pid, start));
                }
            }
        }
    }
    None
}

/// Whether `pid` with this start time is a node to adopt: alive, or a zombie that is our own
/// child (it died during an upgrade's exec; reaping it gives its real exit status).
pub fn is_survivor(pid: u32, start: u64) -> bool {
    match procstat::stat(pid) {
        Ok(Some(st)) if st.start == start => {
            !matches!(st.state, 'Z' | 'X') || st.parent == std::process::id()
        }
        _ => false,
    }
}
