//! Mailbox dispatch: taking submitted commands, applying them, answering, and reclaiming
//! slots whose owner died.

use super::*;

impl Supervisor {
    pub(super) fn scan_mailbox(&mut self) {
        for i in 0..self.shared.slots().len() {
            if let Some((pid, seq, req)) = mailbox::take(&self.shared.slots()[i]) {
                let (status, msg) = self.apply(&req);
                mailbox::complete(&self.shared.slots()[i], pid, status, &msg);
                let mut ev = Event::now(EventKind::CommandApplied, NO_NODE, pid);
                ev.a = seq;
                ev.b = req.opcode as u64 | (pid as u64) << 32;
                ev.exit = Some(Exit::Code(status as i32));
                self.event(ev);
                self.slot_seen[i] = 0;
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
                        && !procstat::is_alive(pid, slot.owner_start.load(Ordering::Relaxed))
                }
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
    }

    pub(super) fn apply(&mut self, req: &Request) -> (ReplyStatus, String) {
        let Some(op) = Opcode::from_u32(req.opcode) else {
            return (
                ReplyStatus::Unsupported,
                format!("unknown command code {}", req.opcode),
            );
        };
        if self.shutting_down && op != Opcode::Ping {
            return (
                ReplyStatus::Rejected,
                "the Supervisor is shutting down".into(),
            );
        }
        let nodes = req.nodes(self.nodes.len());
        match op {
            Opcode::Ping => (ReplyStatus::Ok, "pong".into()),
            Opcode::Start => {
                self.queue_start(nodes);
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Stop => {
                self.queue_stop(nodes);
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Restart => {
                let order = self.start_order(nodes);
                order.into_iter().for_each(|i| self.restart_node(i));
                (ReplyStatus::Ok, String::new())
            }
            Opcode::Reload => self.reload(),
            Opcode::Upgrade => match upgrade::check_executable(&self.exe) {
                Ok(()) => {
                    self.upgrade_requested = true;
                    (
                        ReplyStatus::Ok,
                        format!("re-executing {}", self.exe.display()),
                    )
                }
                Err(e) => (
                    ReplyStatus::Rejected,
                    format!("cannot re-execute {}: {e}", self.exe.display()),
                ),
            },
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
                    match self.nodes[i].pid {
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
