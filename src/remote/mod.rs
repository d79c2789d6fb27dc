//! Reaching the other hosts of a multi-host cluster: each remote command runs that host's own
//! `broctld --local ... ` over OpenSSH (`ssh -o BatchMode=yes`), on one multiplexed
//! connection per host (a `ControlMaster` whose socket is in the instance's runtime folder,
//! kept warm by `ControlPersist`), every host in parallel (one thread each), each bounded by the
//! host's timeout. No daemon of broctld's listens on the network; nothing on a host depends on
//! the others.
//!
//! Every failure is a [`RemoteError`] naming the host, what happened and what to do.

mod ssh;

pub use ssh::{close_master, control_path, Target};

use std::time::Duration;

/// What one host answered: the remote broctld's exit status and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The remote broctld's exit status.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Why a host gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// ssh could not connect (no route, refused, timed out, unknown name).
    #[error("host '{host}': unreachable ({detail}); check that it is up, that sshd runs there and the [[host]] ssh address")]
    Unreachable {
        /// The host.
        host: String,
        /// ssh's words.
        detail: String,
    },
    /// sshd refused the key (or the host key did not match).
    #[error("host '{host}': ssh refused the login ({detail}); put the key's .pub in that user's authorized_keys, or set identity = in [[host]] (docs/multi-host.md)")]
    Refused {
        /// The host.
        host: String,
        /// ssh's words.
        detail: String,
    },
    /// The connection dropped while the command ran: it may or may not have been applied.
    #[error("host '{host}': the connection dropped mid-command ({detail}); the command may or may not have run there: check with `broctld --host {host} status` once the link is back")]
    Dropped {
        /// The host.
        host: String,
        /// ssh's words.
        detail: String,
    },
    /// The host did not answer within its timeout (the ssh was killed).
    #[error("host '{host}': no answer within {}s (timeout_ms in [[host]]); the command may or may not have run there", .after.as_secs())]
    TimedOut {
        /// The host.
        host: String,
        /// The timeout.
        after: Duration,
    },
    /// The host's broctld does not know `--local` (it predates multi-host clusters).
    #[error("host '{host}': its broctld is older than this one (it has no --local); install this version there")]
    Older {
        /// The host.
        host: String,
    },
    /// No broctld at the configured path on the host.
    #[error("host '{host}': no broctld at {path} there; install it, or set broctld = in [[host]]")]
    NoBroctld {
        /// The host.
        host: String,
        /// The path tried.
        path: String,
    },
    /// Running ssh here failed.
    #[error("host '{host}': running ssh: {source}; install OpenSSH's client (ssh)")]
    Spawn {
        /// The host.
        host: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl RemoteError {
    /// Whether the host could not be reached at all (the "some hosts unreachable" exit
    /// status), as against a host that answered with a failure.
    pub fn unreachable(&self) -> bool {
        !matches!(
            self,
            RemoteError::Older { .. } | RemoteError::NoBroctld { .. }
        )
    }
}

/// Runs `args` (broctld's words after `--local`) on every target in parallel; one result per
/// target, in order.
pub fn run_all(jobs: &[(&Target, Vec<String>)]) -> Vec<Result<Reply, RemoteError>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(t, args)| s.spawn(move || t.run(args)))
            .collect();
        handles
            .into_iter()
            .zip(jobs)
            .map(|(h, (t, _))| {
                h.join().unwrap_or_else(|_| {
                    Err(RemoteError::Dropped {
                        host: t.host.name.clone(),
                        detail: "the thread running ssh panicked".into(),
                    })
                })
            })
            .collect()
    })
}
