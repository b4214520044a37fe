//! One persistent subscription running on this node: take the lease, deliver, checkpoint.
//!
//! A runner goes through three phases:
//! 1. **acquiring**: read the subscription's row and take the lease when it is free,
//!    expired, held under this node's own name, or held by a node that this node may
//!    take it from ([`crate::placement::may_take_over`]); otherwise wait for a release
//!    hint, a membership change or the retry timer, and look again;
//! 2. **active**: read events after the last one delivered, hand them to the handler in
//!    order with up to `max_in_flight` unacknowledged, and write the contiguous
//!    checkpoint ([`crate::acks`]) together with a lease renewal, conditional on the
//!    epoch. A rejected write means another node took the lease: the runner stops at
//!    once. A runner that could not renew within the lease's TTL stops delivering until
//!    it can. It reads when told something was appended, when a member came up, when the
//!    database came back, and on the catch-up timer;
//! 3. **draining** (when placement moves the subscription away, or at shutdown): stop
//!    delivering, wait for the acknowledgements in flight, write the final checkpoint
//!    and release the lease, so the next owner starts exactly where this one stopped.
//!
//! The handler of this example records each event it is handed in the `deliveries`
//! table (subscription, position, node, epoch, the store's clock) and acknowledges it
//! after `handler_delay`, which stands for the work a real handler would do.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::acks::Acks;
use crate::placement::{may_take_over, next_record};
use crate::store::{Lease, RecordedEvent};
use crate::supervisor::{RunnerState, Shared};

/// How a runner ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was asked to stop and gave the lease up (or never held it).
    HandedOff,
    /// Another node holds the lease now: a write was rejected.
    Lost,
    /// The subscription no longer exists.
    Gone,
    /// It was asked to stop, but the release failed (the lease expires by itself).
    ReleaseFailed,
}

/// How long a runner waits after a database error before trying again.
const RETRY: Duration = Duration::from_millis(250);

/// Runs the subscription `name` until it is handed off (`handoff` becomes true), lost or
/// gone.
pub async fn run(shared: Arc<Shared>, name: String, mut handoff: watch::Receiver<bool>) -> Outcome {
    let (lease, view, valid_until) = match acquire(&shared, &name, &mut handoff).await {
        Ok(Some(l)) => l,
        Ok(None) => return Outcome::HandedOff,
        Err(outcome) => return outcome,
    };
    tracing::info!(
        subscription = %name,
        epoch = lease.epoch,
        checkpoint = lease.checkpoint,
        "lease acquired, delivering"
    );
    let mut active = Active {
        shared: shared.clone(),
        name: name.clone(),
        epoch: lease.epoch,
        acks: Acks::new(lease.checkpoint),
        recorded: view,
        valid_until,
        record_at: None,
        delivered: 0,
    };
    let outcome = active.run(&mut handoff).await;
    shared.set_state(&name, |s| s.state = RunnerState::Idle);
    outcome
}

/// Phase 1. `Ok(None)`: asked to stop before the lease was taken.
async fn acquire(
    shared: &Arc<Shared>,
    name: &str,
    handoff: &mut watch::Receiver<bool>,
) -> Result<Option<(Lease, Vec<String>, Instant)>, Outcome> {
    let settings = &shared.settings;
    let mut hints = shared.lease_hint.subscribe();
    let mut members = shared.cluster.watch();
    let mut members_open = true;
    shared.set_state(name, |s| s.state = RunnerState::Acquiring);
    loop {
        if *handoff.borrow_and_update() {
            return Ok(None);
        }
        let mut retry = settings.lease_retry;
        match shared.store.subscription(name).await {
            Err(e) => tracing::debug!(subscription = %name, error = %e, "cannot read the lease"),
            Ok(None) => return Err(Outcome::Gone),
            Ok(Some(row)) => {
                let (view, age) = shared.view_with_age();
                let settled = age >= settings.view_settle;
                let reason = match row.owner.as_deref() {
                    None => Some("free"),
                    Some(o) if o == shared.name => Some("same_name"),
                    Some(_) if row.is_free() => Some("expired"),
                    Some(o) if may_take_over(&view, o, &row.owner_view) => {
                        if settled {
                            Some("takeover")
                        } else {
                            // Look again as soon as the view has settled.
                            retry = retry.min(settings.view_settle - age);
                            None
                        }
                    }
                    Some(_) => None,
                };
                tracing::debug!(
                    subscription = %name,
                    owner = ?row.owner,
                    owner_view = ?row.owner_view,
                    lease_remaining_ms = ?row.lease_remaining_ms,
                    view = ?view,
                    settled,
                    ?reason,
                    "lease decision"
                );
                if let Some(reason) = reason {
                    let view: Vec<String> = view.into_iter().collect();
                    let sent = Instant::now();
                    match shared
                        .store
                        .acquire(&row, &shared.name, &view, settings.lease_ttl, reason)
                        .await
                    {
                        Ok(Some(lease)) => {
                            shared.set_state(name, |s| {
                                s.state = RunnerState::Active;
                                s.epoch = Some(lease.epoch);
                                s.acquisitions += 1;
                                s.written = lease.checkpoint;
                                s.acked = lease.checkpoint;
                                s.last_delivered = lease.checkpoint;
                            });
                            return Ok(Some((lease, view, sent + settings.lease_ttl)));
                        }
                        // Someone wrote to the lease since we read it: look again now.
                        Ok(None) => retry = Duration::ZERO,
                        Err(e) => {
                            tracing::debug!(subscription = %name, error = %e, "cannot take the lease")
                        }
                    }
                }
            }
        }
        if retry.is_zero() {
            continue;
        }
        tokio::select! {
            _ = handoff.changed() => {}
            _ = hints.changed() => {}
            r = members.changed(), if members_open => members_open = r.is_ok(),
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Phase 2 and 3.
struct Active {
    shared: Arc<Shared>,
    name: String,
    epoch: i64,
    acks: Acks,
    /// The view recorded with the lease.
    recorded: Vec<String>,
    /// Delivery stops at this instant unless the lease is renewed.
    valid_until: Instant,
    /// When to renew early, to record a view that will have settled by then.
    record_at: Option<Instant>,
    delivered: u64,
}

impl Active {
    async fn run(&mut self, handoff: &mut watch::Receiver<bool>) -> Outcome {
        let s = self.shared.settings.clone();
        let renew_every = s.lease_ttl / 3;
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<i64>();
        let mut buffer: VecDeque<RecordedEvent> = VecDeque::new();
        let mut need_read = true;
        let mut wake = self.shared.wake.subscribe();
        let mut members = self.shared.cluster.watch();
        // The members may have changed since the view recorded with the lease was read:
        // renew (and record the view) at once if so.
        let mut next_renew = if self.shared.view().iter().ne(self.recorded.iter()) {
            Instant::now()
        } else {
            Instant::now() + renew_every
        };
        let mut members_open = true;
        let mut next_flush: Option<Instant> = None;
        let mut next_catch_up = Instant::now() + s.catch_up_interval;
        let mut retry_at: Option<Instant> = None;
        loop {
            while let Ok(p) = ack_rx.try_recv() {
                self.ack(p, &mut next_flush);
            }
            if *handoff.borrow_and_update() {
                return self.drain(&mut ack_rx).await;
            }
            let now = Instant::now();
            let record_due = self.record_at.is_some_and(|t| now >= t);
            if now >= next_renew || record_due || next_flush.is_some_and(|t| now >= t) {
                self.record_at = None;
                match self.renew().await {
                    Ok(true) => {
                        next_renew = Instant::now() + renew_every;
                        next_flush = None;
                    }
                    Ok(false) => return Outcome::Lost,
                    Err(()) => next_renew = Instant::now() + RETRY,
                }
            }
            let now = Instant::now();
            let may_deliver = now < self.valid_until
                && retry_at.is_none_or(|t| now >= t)
                && self.acks.in_flight() < s.max_in_flight;
            if may_deliver {
                retry_at = None;
                if buffer.is_empty() && need_read {
                    match self
                        .shared
                        .store
                        .read_all(self.acks.last_delivered() + 1, s.batch)
                        .await
                    {
                        Ok(events) => {
                            need_read = events.len() as i64 == s.batch;
                            buffer.extend(events);
                        }
                        Err(e) => {
                            tracing::debug!(subscription = %self.name, error = %e, "cannot read events");
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                }
                if let Some(event) = buffer.pop_front() {
                    match self.deliver(&event, &ack_tx).await {
                        Ok(()) => {}
                        Err(()) => {
                            buffer.push_front(event);
                            retry_at = Some(Instant::now() + RETRY);
                        }
                    }
                    continue;
                }
            }
            let mut deadline = next_renew.min(next_catch_up);
            for t in [next_flush, retry_at, self.record_at].into_iter().flatten() {
                deadline = deadline.min(t);
            }
            tokio::select! {
                _ = handoff.changed() => {}
                Some(p) = ack_rx.recv() => self.ack(p, &mut next_flush),
                r = wake.changed() => {
                    if r.is_ok() {
                        need_read = true;
                    }
                }
                r = members.changed(), if members_open => {
                    // Record the new view with the lease at once (if it may be recorded).
                    match r {
                        Ok(()) => next_renew = Instant::now(),
                        Err(_) => members_open = false,
                    }
                }
                _ = sleep_until(deadline) => {
                    if Instant::now() >= next_catch_up {
                        need_read = true;
                        next_catch_up = Instant::now() + s.catch_up_interval;
                        self.shared.counters.catch_up_reads.inc();
                    }
                }
            }
        }
    }

    fn ack(&mut self, position: i64, next_flush: &mut Option<Instant>) {
        if self.acks.acked(position) {
            self.shared
                .set_state(&self.name, |st| st.acked = self.acks.checkpoint());
            if next_flush.is_none() {
                *next_flush = Some(Instant::now() + self.shared.settings.checkpoint_interval);
            }
        }
    }

    /// The handler: record the delivery, acknowledge after the configured delay.
    async fn deliver(
        &mut self,
        event: &RecordedEvent,
        ack_tx: &mpsc::UnboundedSender<i64>,
    ) -> Result<(), ()> {
        if let Err(e) = self
            .shared
            .store
            .record_delivery(&self.name, event.position, &self.shared.name, self.epoch)
            .await
        {
            tracing::debug!(subscription = %self.name, error = %e, "cannot deliver");
            return Err(());
        }
        self.acks.delivered(event.position);
        self.delivered += 1;
        let delivered = self.delivered;
        self.shared.set_state(&self.name, |st| {
            st.last_delivered = event.position;
            st.delivered = delivered;
        });
        let delay = self.shared.settings.handler_delay;
        let tx = ack_tx.clone();
        let position = event.position;
        if delay.is_zero() {
            let _ = tx.send(position);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(position);
            });
        }
        Ok(())
    }

    /// Writes the checkpoint and extends the lease. `Ok(false)`: rejected, lease lost.
    async fn renew(&mut self) -> Result<bool, ()> {
        let (view, age) = self.shared.view_with_age();
        let settle = self.shared.settings.view_settle;
        let record = next_record(&view, &self.recorded, age >= settle);
        if record.is_none() && view.iter().ne(self.recorded.iter()) && age < settle {
            // A smaller view not settled yet: look again when it has.
            self.record_at = Some(Instant::now() + (settle - age));
        }
        let checkpoint = self.acks.checkpoint();
        let sent = Instant::now();
        let ttl = self.shared.settings.lease_ttl;
        match self
            .shared
            .store
            .renew(
                &self.name,
                &self.shared.name,
                self.epoch,
                checkpoint,
                record.as_deref(),
                ttl,
            )
            .await
        {
            Ok(true) => {
                self.valid_until = sent + ttl;
                if let Some(r) = record {
                    self.recorded = r;
                }
                self.shared
                    .set_state(&self.name, |st| st.written = checkpoint);
                Ok(true)
            }
            Ok(false) => {
                self.rejected(checkpoint);
                Ok(false)
            }
            Err(e) => {
                tracing::debug!(subscription = %self.name, error = %e, "cannot renew the lease");
                Err(())
            }
        }
    }

    fn rejected(&self, checkpoint: i64) {
        tracing::warn!(
            subscription = %self.name,
            epoch = self.epoch,
            checkpoint,
            "checkpoint write rejected: another node holds the lease now; stopping"
        );
        self.shared.counters.rejected_writes.inc();
        self.shared
            .set_state(&self.name, |st| st.rejected_writes += 1);
    }

    /// Phase 3: stop delivering, wait for the acknowledgements in flight, write the
    /// final checkpoint and release the lease.
    async fn drain(&mut self, ack_rx: &mut mpsc::UnboundedReceiver<i64>) -> Outcome {
        self.shared
            .set_state(&self.name, |st| st.state = RunnerState::Draining);
        let deadline = Instant::now() + self.shared.settings.drain_timeout;
        let mut none = None;
        while self.acks.in_flight() > 0 {
            tokio::select! {
                Some(p) = ack_rx.recv() => self.ack(p, &mut none),
                _ = sleep_until(deadline) => break,
            }
        }
        let checkpoint = self.acks.checkpoint();
        match self
            .shared
            .store
            .release(&self.name, &self.shared.name, self.epoch, checkpoint)
            .await
        {
            Ok(true) => {
                tracing::info!(subscription = %self.name, epoch = self.epoch, checkpoint, "lease released");
                self.shared
                    .set_state(&self.name, |st| st.written = checkpoint);
                self.shared.released(&self.name).await;
                Outcome::HandedOff
            }
            Ok(false) => {
                self.rejected(checkpoint);
                Outcome::Lost
            }
            Err(e) => {
                tracing::warn!(subscription = %self.name, error = %e, "cannot release the lease; it will expire");
                Outcome::ReleaseFailed
            }
        }
    }
}
