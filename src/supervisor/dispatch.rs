//! Mailbox dispatch: taking submitted commands, applying them, answering, and reclaiming
//! slots whose owner died.

use super::machine::{Command, Input};
use super::*;
use crate::protocol::mailbox::Target;
use std::sync::atomic::fence;

/// Rings answered without reading the doorbell FIFO before it is read anyway (see
/// [`Supervisor::answer_bell`]).
const DRAIN_EVERY: u32 = 64;

/// Whether the owner of a slot is certainly gone: no process has its pid, or the one that has
/// it is a zombie or (with `start`) another process. An error reading `/proc` proves nothing.
fn owner_gone(pid: u32, start: Option<u64>) -> bool {
    match procstat::stat(pid) {
        Ok(None) => true,
        Ok(Some(st)) => matches!(st.state, 'Z' | 'X') || start.is_some_and(|s| s != st.start),
        Err(_) => false,
    }
}

impl Supervisor {
    /// Takes and applies every submitted command, reclaims slots of dead Mains; returns how
    /// many commands were taken.
    pub(super) fn scan_mailbox(&mut self) -> usize {
        let mut taken = 0;
        // The bell was just cleared: order that store before the loads below, so a Main that
        // submits after we read its slot as empty is sure to see the bell down and ring again.
        fence(Ordering::SeqCst);
        for i in 0..self.shared.slots().len() {
            if let Some((pid, seq, req)) = mailbox::take(&self.shared.slots()[i]) {
                let (status, msg) = self.apply(&req);
                mailbox::complete(&self.shared.slots()[i], pid, status, &msg);
                // A ping changes nothing: it leaves no event (`ping -n 1000` would otherwise
                // push the history of real events out of the ring).
                if req.opcode != Opcode::Ping as u32 {
                    let mut ev = Event::now(EventKind::CommandApplied, NO_NODE, pid);
                    ev.a = seq;
                    ev.b = req.opcode as u64 | (pid as u64) << 32;
                    ev.exit = Some(Exit::Code(status as i32));
                    self.event(ev);
                }
                self.slot_seen[i] = 0;
                taken += 1;
                continue;
            }
            let slot = &self.shared.slots()[i];
            let v = slot.state.load(Ordering::Acquire);
            let (pid, st) = SlotState::split(v);
            let stale = match st {
                Some(SlotState::Claimed | SlotState::Done) => {
                    // Only check a slot seen in the same state on a previous ring: a live Main
                    // moves on within microseconds, and /proc reads are not free.
                    self.slot_seen[i] == v
                        && owner_gone(pid, Some(slot.owner_start.load(Ordering::Acquire)))
                }
                // Its start time may not be recorded yet: judge by the pid alone.
                Some(SlotState::Claiming) => self.slot_seen[i] == v && owner_gone(pid, None),
                Some(SlotState::Free) | Some(SlotState::Submitted) => false,
                Some(SlotState::Taken) | None => true, // garbage or a dead predecessor's
            };
            self.slot_seen[i] = v;
            if stale && mailbox::reclaim(slot, v) {
                let seq = slot.cmd_seq.load(Ordering::Relaxed);
                log!(
                    "mailbox slot {i}: owner pid {pid} is gone; slot reclaimed (command seq {seq})"
                );
                let mut ev = Event::now(EventKind::SlotReclaimed, NO_NODE, pid);
                ev.a = seq;
                ev.b = i as u64 | (pid as u64) << 32;
                self.event(ev);
                self.slot_seen[i] = 0;
            }
        }
        taken
    }

    /// The doorbell rang: answers what the Mains submitted. The FIFO is read (emptied) only
    /// when it may hold something other than plain rings, or every [`DRAIN_EVERY`] rings, not
    /// on each: where every write to a pipe wakes an edge-triggered epoll waiter (see
    /// [`fifo::every_write_wakes`]), the bytes of plain rings can stay in the FIFO, and a
    /// command round trip makes one syscall fewer. The FIFO is read when a ring found no
    /// command (a [`fifo::REPAIR`] request, a repeated ring, or junk); then the bell flag is
    /// lowered again and the mailbox scanned again, since the read may have consumed the ring
    /// of a command submitted after the first scan. Between reads the FIFO holds at most one byte per ring (a Main writes
    /// only when it raises the bell flag, which each wake lowers) plus the rare unconditional
    /// rings, far below a pipe's smallest capacity (4096 bytes).
    pub(super) fn answer_bell(&mut self) {
        self.shared.header().bell.store(0, Ordering::SeqCst);
        let taken = self.scan_mailbox();
        if self.bell_lazy && taken > 0 && self.bell_undrained < DRAIN_EVERY {
            self.bell_undrained += 1;
            return;
        }
        self.bell_undrained = 0;
        let repair = fifo::drain_requests(&self.bell).unwrap_or(false);
        // A Main that rang since the flag was lowered left it raised, and its byte may be
        // among those just read: lower it again (or its next ring would write nothing and wake
        // no one), then take what it submitted.
        self.shared.header().bell.store(0, Ordering::SeqCst);
        if repair {
            self.check_region();
        }
        self.scan_mailbox();
    }

    pub(super) fn apply(&mut self, req: &Request) -> (ReplyStatus, String) {
        let Some(op) = Opcode::from_u32(req.opcode) else {
            return (
                ReplyStatus::Unsupported,
                format!("unknown command code {}", req.opcode),
            );
        };
        if self.machine.shutting_down() && op != Opcode::Ping {
            return (
                ReplyStatus::Rejected,
                "the Supervisor is shutting down".into(),
            );
        }
        let epoch = self.shared.header().config_epoch.load(Ordering::Acquire);
        if req.names_nodes() && req.epoch != epoch {
            return (
                ReplyStatus::Stale,
                format!(
                    "not applied: the node table changed (epoch {} -> {epoch}) since the command named its nodes",
                    req.epoch
                ),
            );
        }
        let nodes = req.nodes(self.nodes.len());
        if let Target::Mask(m) = &req.target {
            if req.nodes(m.len() * 64).len() != nodes.len() {
                return (
                    ReplyStatus::Rejected,
                    format!(
                        "not applied: a node index beyond the {} nodes in the table",
                        self.nodes.len()
                    ),
                );
            }
        }
        match op {
            Opcode::Ping => (ReplyStatus::Ok, "pong".into()),
            Opcode::Start => {
                self.feed(Input::Command(Command::Start(nodes)));
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Stop => {
                self.feed(Input::Command(Command::Stop(nodes)));
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Restart => {
                self.feed(Input::Command(Command::Restart(nodes)));
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Reload => self.reload(),
            // The binary is checked first (see `upgrade::Probe`).
            Opcode::Upgrade => self.request_upgrade(),
            Opcode::Shutdown => {
                log!("shutdown requested");
                self.begin_shutdown();
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Signal => {
                let sig = req.arg as i32;
                if !(1..libc::SIGRTMAX()).contains(&sig) {
                    return (ReplyStatus::Rejected, format!("invalid signal {}", req.arg));
                }
                let mut missing = Vec::new();
                for i in nodes {
                    match self.main_pid(i) {
                        Some(pid) => {
                            let _ = spawn::signal_pid(pid, sig);
                            let mut ev = Event::now(EventKind::Signaled, i as u16, pid);
                            ev.a = sig as u64;
                            self.event(ev);
                        }
                        None => missing.push(self.nodes[i].spec.name.clone()),
                    }
                }
                if missing.is_empty() {
                    (ReplyStatus::Ok, String::new())
                } else {
                    (
                        ReplyStatus::Rejected,
                        format!("not running: {}", missing.join(", ")),
                    )
                }
            }
        }
    }
}

impl Supervisor {
    /// Stops every node (in reverse role order), then exits: the region says so at once.
    pub(super) fn begin_shutdown(&mut self) {
        if self.machine.shutting_down() {
            return;
        }
        self.shared
            .header()
            .state
            .store(SupervisorState::ShuttingDown as u32, Ordering::Release);
        crate::sys::futex::wake(&self.shared.header().state, i32::MAX);
        self.feed(Input::Command(Command::Shutdown));
    }
}
