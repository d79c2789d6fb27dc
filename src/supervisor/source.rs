//! What woke the event loop: every fd the Supervisor registers with `mio` is one [`Source`],
//! and its `mio::Token` is that source encoded. One enum instead of number ranges checked in
//! order: a token decodes to exactly one source (or none), and a node's index comes back as
//! it went in.

use mio::Token;

/// One registered fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Source {
    /// The signalfd (SIGCHLD, SIGTERM, ...).
    Signals,
    /// The doorbell FIFO: a Main wrote a command.
    Bell,
    /// The guardian's report pipe (exits of processes it reaped).
    Reports,
    /// The inotify fd watching `ready_file`s.
    ReadyFiles,
    /// Node `i`'s pidfd: its main process ended.
    Pidfd(usize),
    /// Node `i`'s readiness pipe (`ready_fd`).
    ReadyPipe(usize),
    /// Node `i`'s `cgroup.events` (its group emptied).
    Cgroup(usize),
    /// Node `i`'s sd_notify socket.
    Notify(usize),
    /// Node `i`'s output FIFO: stdout (0) or stderr (1).
    Output(usize, usize),
    /// The pidfd of the process that blocks node `i`'s start (it ended: start again).
    Blocker(usize),
}

/// The kind, in the token's top bits; the node index (and the stream) below.
const KIND_SHIFT: u32 = 40;
const INDEX_MASK: usize = (1 << KIND_SHIFT) - 1;

impl Source {
    fn kind(self) -> usize {
        match self {
            Source::Signals => 0,
            Source::Bell => 1,
            Source::Reports => 2,
            Source::ReadyFiles => 3,
            Source::Pidfd(_) => 4,
            Source::ReadyPipe(_) => 5,
            Source::Cgroup(_) => 6,
            Source::Notify(_) => 7,
            Source::Output(..) => 8,
            Source::Blocker(_) => 9,
        }
    }

    /// Its token.
    pub(super) fn token(self) -> Token {
        let low = match self {
            Source::Signals | Source::Bell | Source::Reports | Source::ReadyFiles => 0,
            Source::Pidfd(i)
            | Source::ReadyPipe(i)
            | Source::Cgroup(i)
            | Source::Notify(i)
            | Source::Blocker(i) => i,
            Source::Output(i, k) => 2 * i + (k & 1),
        };
        debug_assert!(low <= INDEX_MASK, "node index {low} out of range");
        Token((self.kind() << KIND_SHIFT) | (low & INDEX_MASK))
    }

    /// The source a token stands for (`None` for one no source makes).
    pub(super) fn of(token: Token) -> Option<Source> {
        let (kind, low) = (token.0 >> KIND_SHIFT, token.0 & INDEX_MASK);
        let fixed = |s: Source| (low == 0).then_some(s);
        match kind {
            0 => fixed(Source::Signals),
            1 => fixed(Source::Bell),
            2 => fixed(Source::Reports),
            3 => fixed(Source::ReadyFiles),
            4 => Some(Source::Pidfd(low)),
            5 => Some(Source::ReadyPipe(low)),
            6 => Some(Source::Cgroup(low)),
            7 => Some(Source::Notify(low)),
            8 => Some(Source::Output(low / 2, low % 2)),
            9 => Some(Source::Blocker(low)),
            _ => None,
        }
    }
}

impl From<Source> for Token {
    fn from(s: Source) -> Token {
        s.token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_decodes_to_itself_and_no_two_share_a_token() {
        let mut all = vec![
            Source::Signals,
            Source::Bell,
            Source::Reports,
            Source::ReadyFiles,
        ];
        for i in [0, 1, 2, 7, 1000, 65_535, 1 << 20] {
            all.extend([
                Source::Pidfd(i),
                Source::ReadyPipe(i),
                Source::Cgroup(i),
                Source::Notify(i),
                Source::Output(i, 0),
                Source::Output(i, 1),
                Source::Blocker(i),
            ]);
        }
        let mut seen = std::collections::HashSet::new();
        for s in all {
            assert_eq!(Source::of(s.token()), Some(s), "{s:?}");
            assert!(seen.insert(s.token()), "{s:?} shares a token");
        }
    }

    #[test]
    fn a_token_no_source_makes_decodes_to_none() {
        assert_eq!(Source::of(Token(usize::MAX)), None);
        assert_eq!(Source::of(Token(1)), None);
        assert_eq!(Source::of(Token((1 << KIND_SHIFT) | 5)), None);
    }
}
