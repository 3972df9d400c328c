//! Telling the store of a handoff: once right after the reply is stored
//! (bounded, so the shopper's answer waits at most the webhook timeout,
//! 1 s by default), then by the scheduled `notify-handoffs` function every
//! minute, with backoff, until delivered or a day old. An event is claimed
//! with a lease before it is sent, so the two paths never post it at once.

use std::time::{Duration, Instant};
use tracing::{info, warn};
use uuid::Uuid;

use super::App;
use crate::error::Result;
use crate::metrics::Doc;
use crate::notify::Notifier;
use crate::store::{DueEvent, Store};

/// While one sender holds an event, nobody else sends it.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// What a run of the scheduled sender did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NotifyReport {
    pub sent: u32,
    pub failed: u32,
    /// Still undelivered after the run, and the oldest one's age.
    pub pending: i64,
    pub oldest_pending: Duration,
}

impl NotifyReport {
    /// The run's EMF document.
    pub fn metrics(&self) -> Doc {
        Doc::default()
            .count("HandoffsSent", u64::from(self.sent))
            .count("HandoffsFailed", u64::from(self.failed))
            .count("HandoffsPending", self.pending.unsigned_abs())
            .seconds("OldestHandoffPendingSeconds", self.oldest_pending)
    }
}

/// 1, 2, 4, 8 minutes ... at most 10 between tries.
fn retry_in(attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 8) - 1).unwrap_or(0);
    Duration::from_secs(60 * 2u64.pow(exp)).min(Duration::from_secs(600))
}

impl App {
    /// The first delivery try, on the request path; failures are left to
    /// the scheduled sender.
    pub(super) async fn deliver_now(&self, event: Uuid, deadline: Instant) {
        if !self.notifier.is_configured() {
            info!("handoff stored; no webhook configured");
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let claimed = match self.store.claim_handoffs(1, Some(event), CLAIM_LEASE).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "could not claim the handoff event; the scheduled sender will");
                return;
            }
        };
        for due in claimed {
            let _ = deliver_one(&self.store, &self.notifier, &due, left).await;
        }
    }
}

/// Sends every due event while `deadline` allows (the scheduled function).
pub async fn deliver_due(
    store: &Store,
    notifier: &Notifier,
    deadline: Instant,
) -> Result<NotifyReport> {
    let mut report = NotifyReport::default();
    if !notifier.is_configured() {
        // Nothing is meant to be sent: nothing is pending (and no alarm fires).
        return Ok(report);
    }
    {
        while deadline.saturating_duration_since(Instant::now()) > Duration::from_secs(2) {
            let batch = store.claim_handoffs(10, None, CLAIM_LEASE).await?;
            if batch.is_empty() {
                break;
            }
            for due in &batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match deliver_one(store, notifier, due, left).await {
                    true => report.sent += 1,
                    false => report.failed += 1,
                }
            }
        }
    }
    let (pending, oldest) = store.pending_handoffs().await?;
    report.pending = pending;
    report.oldest_pending = oldest;
    Ok(report)
}

/// One attempt, its outcome recorded. Whether it was delivered.
async fn deliver_one(store: &Store, notifier: &Notifier, due: &DueEvent, limit: Duration) -> bool {
    let id = due.event.id;
    let outcome = notifier.deliver(&due.event, limit).await;
    let recorded = match &outcome {
        Ok(()) => store.handoff_delivered(id).await,
        Err(e) => {
            let wait = retry_in(due.attempt);
            warn!(event_id = %id, attempt = due.attempt, error = %e, retry_in_s = wait.as_secs(), "handoff delivery failed");
            store.handoff_failed(id, wait, &e.to_string()).await
        }
    };
    if let Err(e) = recorded {
        warn!(event_id = %id, error = %e, "could not record the delivery outcome; the lease decides the next try");
    }
    if outcome.is_ok() {
        info!(event_id = %id, attempt = due.attempt, "handoff delivered");
    }
    outcome.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_ten_minutes() {
        let mins: Vec<u64> = (1..=7).map(|a| retry_in(a).as_secs() / 60).collect();
        assert_eq!(mins, [1, 2, 4, 8, 10, 10, 10]);
    }
}
