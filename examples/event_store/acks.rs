//! Contiguous-ack checkpointing.
//!
//! A subscription hands events to its handler in position order, with several in flight
//! at once; the handler acknowledges them in any order. The checkpoint is the highest
//! position up to which every delivered event is acknowledged: an event acknowledged
//! before an earlier one does not move it. After a crash, delivery resumes after the
//! stored checkpoint, so what is redelivered is only what was not yet covered by it.

use std::collections::BTreeSet;

/// Delivered and acknowledged positions of one subscription.
#[derive(Debug, Clone)]
pub struct Acks {
    checkpoint: i64,
    last_delivered: i64,
    in_flight: BTreeSet<i64>,
}

impl Acks {
    /// Starts after `checkpoint` (everything up to it is done).
    pub fn new(checkpoint: i64) -> Acks {
        Acks {
            checkpoint,
            last_delivered: checkpoint,
            in_flight: BTreeSet::new(),
        }
    }

    /// Records that the event at `position` was handed to the handler. Positions must
    /// increase; one that does not is ignored and `false` returned.
    pub fn delivered(&mut self, position: i64) -> bool {
        if position <= self.last_delivered {
            return false;
        }
        self.last_delivered = position;
        self.in_flight.insert(position);
        true
    }

    /// Records the handler's acknowledgement of `position`. Returns whether the
    /// checkpoint moved. An acknowledgement of a position not in flight is ignored.
    pub fn acked(&mut self, position: i64) -> bool {
        if !self.in_flight.remove(&position) {
            return false;
        }
        let next = match self.in_flight.first() {
            Some(first) => first - 1,
            None => self.last_delivered,
        };
        let moved = next > self.checkpoint;
        self.checkpoint = self.checkpoint.max(next);
        moved
    }

    /// Every delivered event up to here is acknowledged.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint
    }

    /// The last position handed to the handler.
    pub fn last_delivered(&self) -> i64 {
        self.last_delivered
    }

    /// How many delivered events await acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_move_the_checkpoint_only_when_contiguous() {
        let mut a = Acks::new(10);
        for p in 11..=14 {
            assert!(a.delivered(p));
        }
        assert!(!a.acked(12));
        assert!(!a.acked(13));
        assert_eq!(a.checkpoint(), 10);
        assert!(a.acked(11));
        assert_eq!(a.checkpoint(), 13);
        assert_eq!(a.in_flight(), 1);
        assert!(a.acked(14));
        assert_eq!(a.checkpoint(), 14);
    }

    #[test]
    fn unknown_and_repeated_acks_and_old_deliveries_are_ignored() {
        let mut a = Acks::new(0);
        assert!(a.delivered(1));
        assert!(!a.delivered(1));
        assert!(!a.acked(7));
        assert!(a.acked(1));
        assert!(!a.acked(1));
        assert_eq!(a.checkpoint(), 1);
    }

    #[test]
    fn gaps_between_delivered_positions_count_as_done() {
        // A filtered subscription skips positions; they are not waited for.
        let mut a = Acks::new(0);
        a.delivered(3);
        a.delivered(9);
        a.acked(9);
        assert_eq!(a.checkpoint(), 2);
        a.acked(3);
        assert_eq!(a.checkpoint(), 9);
    }
}
