//! The handoff outbox: events committed with the reply that raised them,
//! claimed for delivery with a lease (so two senders never post the same
//! event at once), then marked delivered, or due again after a backoff.

use std::time::Duration;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::Store;
use crate::domain::{HandoffEvent, HandoffReason, Message, Sender, SessionId};
use crate::error::{Error, Result};

/// Events older than this are no longer sent (the "a day old").
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A claimed event and how many times it has been tried (this one included).
#[derive(Debug, Clone)]
pub struct DueEvent {
    pub event: HandoffEvent,
    pub attempt: i32,
}

// Claims up to $1 due events (or just event $2) for $3 seconds. The body's
// messages are read here, bounded by the handing-over message, so every
// retry of an event carries the same messages.
const CLAIM_DUE: &str = "
WITH due AS (
    UPDATE handoff_events e SET attempts = attempts + 1,
        next_attempt_at = now() + make_interval(secs => $3)
    WHERE e.id IN (
        SELECT id FROM handoff_events
        WHERE delivered_at IS NULL AND next_attempt_at <= now()
          AND created_at > now() - make_interval(secs => $4)
          AND ($2::uuid IS NULL OR id = $2)
        ORDER BY next_attempt_at LIMIT $1
        FOR UPDATE SKIP LOCKED)
    RETURNING e.id, e.session_id, e.reason, e.created_at, e.attempts, e.message_id
)
SELECT d.id, d.session_id, d.reason, floor(extract(epoch FROM d.created_at) * 1000)::int8,
       d.attempts, x.ids, x.texts, x.senders, x.stamps
FROM due d, LATERAL (
    SELECT COALESCE(array_agg(r.id ORDER BY r.seq), '{}') AS ids,
           COALESCE(array_agg(left(r.text, 500) ORDER BY r.seq), '{}') AS texts,
           COALESCE(array_agg(r.sender ORDER BY r.seq), '{}') AS senders,
           COALESCE(array_agg(floor(extract(epoch FROM r.created_at) * 1000)::int8 ORDER BY r.seq), '{}') AS stamps
    FROM (SELECT c.id, c.text, c.sender, c.created_at, c.seq FROM chat_messages c
          WHERE c.session_id = d.session_id
            AND c.seq <= (SELECT seq FROM chat_messages WHERE id = d.message_id)
          ORDER BY c.seq DESC LIMIT 10) r
) x";

const DELIVERED: &str =
    "UPDATE handoff_events SET delivered_at = now(), last_error = NULL WHERE id = $1";

const FAILED: &str = "UPDATE handoff_events
SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3 WHERE id = $1";

const PENDING: &str = "
SELECT count(*), COALESCE(max(extract(epoch FROM now() - created_at)), 0)::float8
FROM handoff_events
WHERE delivered_at IS NULL AND created_at > now() - make_interval(secs => $1)";

impl Store {
    /// Claims due events (at most `limit`; only `only` when given) for
    /// `lease`: nobody else sends them meanwhile.
    pub async fn claim_handoffs(
        &self,
        limit: u32,
        only: Option<Uuid>,
        lease: Duration,
    ) -> Result<Vec<DueEvent>> {
        let limit = i64::from(limit);
        let (lease, horizon) = (lease.as_secs_f64(), GIVE_UP_AFTER.as_secs_f64());
        let rows = self
            .query(
                CLAIM_DUE,
                &[
                    (&limit, Type::INT8),
                    (&only, Type::UUID),
                    (&lease, Type::FLOAT8),
                    (&horizon, Type::FLOAT8),
                ],
            )
            .await?;
        rows.iter().map(due_event).collect()
    }

    pub async fn handoff_delivered(&self, id: Uuid) -> Result<()> {
        self.query(DELIVERED, &[(&id, Type::UUID)]).await.map(drop)
    }

    /// Due again after `retry_in`; `error` is a status or a word, never a URL.
    pub async fn handoff_failed(&self, id: Uuid, retry_in: Duration, error: &str) -> Result<()> {
        let secs = retry_in.as_secs_f64();
        self.query(
            FAILED,
            &[
                (&id, Type::UUID),
                (&secs, Type::FLOAT8),
                (&error, Type::TEXT),
            ],
        )
        .await
        .map(drop)
    }

    /// Undelivered events still being retried: how many, and the oldest's age.
    pub async fn pending_handoffs(&self) -> Result<(i64, Duration)> {
        let horizon = GIVE_UP_AFTER.as_secs_f64();
        let rows = self.query(PENDING, &[(&horizon, Type::FLOAT8)]).await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("pending count returned no row"))?;
        let age: f64 = row.try_get(1)?;
        Ok((row.try_get(0)?, Duration::from_secs_f64(age.max(0.0))))
    }
}

fn due_event(row: &tokio_postgres::Row) -> Result<DueEvent> {
    let reason: String = row.try_get(2)?;
    let ids: Vec<Uuid> = row.try_get(5)?;
    let texts: Vec<String> = row.try_get(6)?;
    let senders: Vec<String> = row.try_get(7)?;
    let stamps: Vec<i64> = row.try_get(8)?;
    let messages = ids
        .into_iter()
        .zip(texts)
        .zip(senders.iter().zip(stamps))
        .map(|((id, text), (sender, timestamp))| {
            Ok(Message {
                id,
                text,
                sender: Sender::parse(sender)
                    .ok_or_else(|| Error::internal("unknown sender in database"))?,
                timestamp,
            })
        })
        .collect::<Result<_>>()?;
    Ok(DueEvent {
        event: HandoffEvent {
            id: row.try_get(0)?,
            session_id: SessionId::from(row.try_get::<_, Uuid>(1)?),
            reason: HandoffReason::parse(&reason).unwrap_or(HandoffReason::NotCovered),
            created_at: row.try_get(3)?,
            messages,
        },
        attempt: row.try_get(4)?,
    })
}
