//! The outbox scheduler: which stored message to (re)send next, and when.
//!
//! A sans-IO state machine in the style of `quinn-proto`: the driver feeds it
//! events with `handle_*(now_ms, ...)` and asks it for work with `poll_*`.
//! Messages themselves live in the store; the scheduler holds only ids,
//! deadlines and attempt counts, so its memory is a few dozen bytes per
//! pending message.
//!
//! Call order, per driver wake-up:
//! 1. `handle_enqueued` for new messages and `handle_attempt_*` for finished attempts;
//! 2. `poll_expired` until `None` (mark those expired in the store);
//! 3. `poll_due` until `None` (start one attempt per id returned);
//! 4. sleep until `poll_timeout`, or until the next event.

use std::collections::{BTreeSet, HashMap};

use crate::core::ids::{MessageId, OperatorId};

/// Exponential backoff with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry, in ms.
    pub initial_ms: u64,
    /// Largest delay, in ms.
    pub max_ms: u64,
}

impl Backoff {
    /// Delay before retry number `attempt` (1 for the first retry).
    ///
    /// "Equal jitter": half the exponential delay is fixed and half is random,
    /// so retries from many nodes spread out but never collapse to zero.
    /// `jitter` is a random value in `[0, 1)` supplied by the caller.
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(32);
        let base = self
            .initial_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let half = base / 2;
        let jitter = jitter.clamp(0.0, 1.0);
        // The product is at most `half`, which fits in u64; truncation is the intent.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let random = (half as f64 * jitter) as u64;
        half + random
    }
}

#[derive(Clone, Debug)]
struct Entry {
    recipient: OperatorId,
    expires_at_ms: u64,
    attempts: u32,
    due_ms: u64,
    in_flight: bool,
}

/// Schedules deliveries of pending outbox messages.
#[derive(Debug)]
pub struct Scheduler {
    backoff: Backoff,
    in_flight_per_peer_max: usize,
    in_flight_total_max: usize,
    entries: HashMap<MessageId, Entry>,
    /// Waiting messages ordered by due time.
    due: BTreeSet<(u64, MessageId)>,
    /// Waiting messages ordered by expiry.
    expiry: BTreeSet<(u64, MessageId)>,
    in_flight_per_peer: HashMap<OperatorId, usize>,
    in_flight_total: usize,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(
        backoff: Backoff,
        in_flight_per_peer_max: usize,
        in_flight_total_max: usize,
    ) -> Self {
        Self {
            backoff,
            in_flight_per_peer_max: in_flight_per_peer_max.max(1),
            in_flight_total_max: in_flight_total_max.max(1),
            entries: HashMap::new(),
            due: BTreeSet::new(),
            expiry: BTreeSet::new(),
            in_flight_per_peer: HashMap::new(),
            in_flight_total: 0,
        }
    }

    /// A stored message is to be delivered, first at `due_ms`. Idempotent.
    pub fn handle_enqueued(
        &mut self,
        id: MessageId,
        recipient: OperatorId,
        expires_at_ms: u64,
        attempts: u32,
        due_ms: u64,
    ) {
        if self.entries.contains_key(&id) {
            return;
        }
        self.due.insert((due_ms, id));
        self.expiry.insert((expires_at_ms, id));
        self.entries.insert(
            id,
            Entry {
                recipient,
                expires_at_ms,
                attempts,
                due_ms,
                in_flight: false,
            },
        );
    }

    /// The attempt started by `poll_due` got a valid receipt: forget the message.
    pub fn handle_attempt_succeeded(&mut self, id: MessageId) {
        if let Some(entry) = self.entries.remove(&id) {
            self.release(&entry);
            self.due.remove(&(entry.due_ms, id));
            self.expiry.remove(&(entry.expires_at_ms, id));
        }
    }

    /// The attempt failed: schedule a retry with backoff. Returns the attempt count.
    pub fn handle_attempt_failed(&mut self, id: MessageId, now_ms: u64, jitter: f64) -> u32 {
        let Some(mut entry) = self.entries.remove(&id) else {
            return 0;
        };
        self.release(&entry);
        entry.in_flight = false;
        entry.attempts = entry.attempts.saturating_add(1);
        entry.due_ms = now_ms.saturating_add(self.backoff.delay_ms(entry.attempts, jitter));
        self.due.insert((entry.due_ms, id));
        let attempts = entry.attempts;
        self.entries.insert(id, entry);
        attempts
    }

    /// A waiting message whose lifetime ended before a receipt came. It is
    /// forgotten; the caller marks it expired in the store.
    #[must_use]
    pub fn poll_expired(&mut self, now_ms: u64) -> Option<MessageId> {
        let &(expires_at_ms, id) = self
            .expiry
            .iter()
            .find(|(_, id)| self.entries.get(id).is_some_and(|e| !e.in_flight))?;
        if expires_at_ms > now_ms {
            return None;
        }
        let entry = self.entries.remove(&id)?;
        self.due.remove(&(entry.due_ms, id));
        self.expiry.remove(&(expires_at_ms, id));
        Some(id)
    }

    /// The next message due now whose peer has room for another attempt.
    /// Marks it in flight; report the outcome with `handle_attempt_*`.
    #[must_use]
    pub fn poll_due(&mut self, now_ms: u64) -> Option<(MessageId, OperatorId)> {
        if self.in_flight_total >= self.in_flight_total_max {
            return None;
        }
        let mut chosen = None;
        for &(due_ms, id) in &self.due {
            if due_ms > now_ms {
                break;
            }
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let busy = self
                .in_flight_per_peer
                .get(&entry.recipient)
                .copied()
                .unwrap_or(0);
            if busy < self.in_flight_per_peer_max {
                chosen = Some((due_ms, id));
                break;
            }
        }
        let (due_ms, id) = chosen?;
        self.due.remove(&(due_ms, id));
        let entry = self.entries.get_mut(&id)?;
        entry.in_flight = true;
        *self
            .in_flight_per_peer
            .entry(entry.recipient.clone())
            .or_insert(0) += 1;
        self.in_flight_total += 1;
        Some((id, entry.recipient.clone()))
    }

    /// When the driver should wake up next, if anything waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let next_due = self.due.first().map(|&(t, _)| t);
        let next_expiry = self
            .expiry
            .iter()
            .find(|(_, id)| self.entries.get(id).is_some_and(|e| !e.in_flight))
            .map(|&(t, _)| t);
        match (next_due, next_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages known to the scheduler (waiting or in flight).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight_total
    }

    fn release(&mut self, entry: &Entry) {
        if !entry.in_flight {
            return;
        }
        self.in_flight_total = self.in_flight_total.saturating_sub(1);
        if let Some(count) = self.in_flight_per_peer.get_mut(&entry.recipient) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight_per_peer.remove(&entry.recipient);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::from_bytes([n; 16])
    }

    fn peer(name: &str) -> OperatorId {
        OperatorId::new(name).unwrap()
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(
            Backoff {
                initial_ms: 100,
                max_ms: 1_000,
            },
            2,
            3,
        )
    }

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered() {
        let b = Backoff {
            initial_ms: 100,
            max_ms: 1_000,
        };
        assert_eq!(b.delay_ms(1, 0.0), 50);
        assert_eq!(b.delay_ms(1, 0.999_999), 99);
        assert_eq!(b.delay_ms(2, 0.0), 100);
        assert_eq!(b.delay_ms(3, 0.5), 300);
        assert_eq!(b.delay_ms(10, 1.0), 1_000);
        assert_eq!(b.delay_ms(u32::MAX, 0.0), 500);
    }

    #[test]
    fn due_messages_come_out_in_order_and_failed_ones_come_back_later() {
        let mut s = scheduler();
        s.handle_enqueued(id(2), peer("b"), 10_000, 0, 5);
        s.handle_enqueued(id(1), peer("b"), 10_000, 0, 0);
        assert_eq!(s.poll_due(0), Some((id(1), peer("b"))));
        assert_eq!(s.poll_due(4), None, "id 2 is not due before 5");
        assert_eq!(s.poll_timeout(), Some(5));
        assert_eq!(s.handle_attempt_failed(id(1), 10, 0.0), 1);
        assert_eq!(s.poll_due(10), Some((id(2), peer("b"))));
        assert_eq!(s.poll_due(59), None);
        assert_eq!(s.poll_due(60), Some((id(1), peer("b"))));
        s.handle_attempt_succeeded(id(1));
        s.handle_attempt_succeeded(id(2));
        assert!(s.is_empty());
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn in_flight_is_bounded_per_peer_and_in_total() {
        let mut s = scheduler();
        for n in 0..4 {
            s.handle_enqueued(id(n), peer("b"), 10_000, 0, 0);
        }
        s.handle_enqueued(id(9), peer("c"), 10_000, 0, 0);
        s.handle_enqueued(id(10), peer("d"), 10_000, 0, 0);
        let mut started = Vec::new();
        while let Some((m, p)) = s.poll_due(0) {
            started.push((m, p));
        }
        assert_eq!(started.len(), 3, "total cap");
        assert_eq!(
            started.iter().filter(|(_, p)| p == &peer("b")).count(),
            2,
            "per-peer cap"
        );
        s.handle_attempt_succeeded(started[0].0);
        assert!(s.poll_due(0).is_some());
    }

    #[test]
    fn expired_messages_are_reported_once_but_not_while_in_flight() {
        let mut s = scheduler();
        s.handle_enqueued(id(1), peer("b"), 100, 0, 0);
        s.handle_enqueued(id(2), peer("b"), 100, 0, 0);
        let (first, _) = s.poll_due(0).unwrap();
        assert_eq!(s.poll_expired(99), None);
        let expired = s.poll_expired(100).unwrap();
        assert_ne!(expired, first, "the in-flight one waits for its attempt");
        assert_eq!(s.poll_expired(100), None);
        s.handle_attempt_failed(first, 100, 0.0);
        assert_eq!(s.poll_expired(100), Some(first));
        assert!(s.is_empty());
    }

    #[test]
    fn enqueue_is_idempotent() {
        let mut s = scheduler();
        s.handle_enqueued(id(1), peer("b"), 100, 0, 0);
        s.handle_enqueued(id(1), peer("b"), 100, 0, 0);
        assert_eq!(s.len(), 1);
    }
}
