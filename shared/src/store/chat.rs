//! Conversations: storing an exchange (the shopper's message, then the
//! reply), the context Claude sees, and history pages.

use tokio_postgres::types::Type;
use uuid::Uuid;

use super::Store;
use crate::domain::{AiReply, Message, MessageText, Sender, SessionId, SessionStatus, Turn};
use crate::error::{Error, Result};

/// What `begin_exchange` returns.
#[derive(Debug)]
pub struct Exchange {
    pub session_id: SessionId,
    pub created: bool,
    pub status: SessionStatus,
    /// Earlier messages of the session, oldest first (excluding the new one).
    pub context: Vec<Turn>,
}

/// What `finish_exchange` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// A handoff event raised by this reply (none when the conversation
    /// already waited for a person).
    pub handoff_event: Option<Uuid>,
}

/// One page of a conversation, oldest first.
#[derive(Debug)]
pub struct HistoryPage {
    pub status: SessionStatus,
    pub messages: Vec<Message>,
    /// Older messages exist before the first one of this page.
    pub has_more: bool,
    /// The conversation's version when the page was read.
    pub version: i64,
}

// The shopper's message commits without waiting for its WAL flush
// (`synchronous_commit = off` for this transaction only): it is not
// acknowledged yet, and the reply's commit, which does wait, flushes the WAL
// past it before anything is acknowledged. One fsync per exchange, not two.
// It is visible to readers at once either way.
const BEGIN_EXCHANGE: &str = "
WITH target AS (
    SELECT COALESCE((SELECT id FROM chat_sessions WHERE id = $1), $2) AS id
), s AS (
    INSERT INTO chat_sessions AS cs (id) SELECT id FROM target
    ON CONFLICT (id) DO UPDATE SET updated_at = now(), version = cs.version + 1
    RETURNING cs.id, cs.status
), m AS (
    INSERT INTO chat_messages (id, session_id, sender, text)
    SELECT $3, s.id, 'user', $4 FROM s
    RETURNING session_id
), k AS (
    UPDATE idempotency_keys SET session_id = m.session_id, user_message_id = $3
    FROM m WHERE key = $6
)
SELECT s.id, ctx.senders, ctx.texts, s.status
FROM s, m, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit, LATERAL (
    SELECT COALESCE(array_agg(r.sender ORDER BY r.seq), '{}') AS senders,
           COALESCE(array_agg(r.text ORDER BY r.seq), '{}') AS texts
    FROM (SELECT sender, text, seq FROM chat_messages c
          WHERE c.session_id = s.id ORDER BY seq DESC LIMIT $5) r
) ctx";

// One statement: the reply, the session's activity and (on a handoff) its
// status and an outbox event, and the idempotency record. Under concurrent
// handoffs of one session, the UPDATE's SET is evaluated on the latest row,
// so only the first raises the count and only it inserts an event.
const FINISH_EXCHANGE: &str = "
WITH m AS (
    INSERT INTO chat_messages (id, session_id, sender, text, source, model, fallback_reason,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, attempts, latency_ms,
        handoff_reason)
    VALUES ($1, $2, 'ai', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14)
    RETURNING session_id
), s AS (
    UPDATE chat_sessions SET updated_at = now(), version = version + 1,
        handoffs = handoffs + CASE WHEN $14::text IS NOT NULL AND status = 'open' THEN 1 ELSE 0 END,
        status = CASE WHEN $14::text IS NOT NULL THEN 'waiting_for_human' ELSE status END
    WHERE id = $2
    RETURNING id, handoffs
), e AS (
    INSERT INTO handoff_events (id, session_id, generation, message_id, reason)
    SELECT $15, s.id, s.handoffs, $1, $14 FROM s WHERE $14::text IS NOT NULL
    ON CONFLICT (session_id, generation) DO NOTHING
    RETURNING id
), k AS (
    UPDATE idempotency_keys SET reply = $3, locked_until = NULL, reply_message_id = $1,
        reply_handoff = $14::text IS NOT NULL
    WHERE key = $13 AND holder = $16
)
SELECT (SELECT id FROM e) FROM m";

const RECENT_TURNS: &str = "
SELECT r.sender, r.text FROM (
    SELECT sender, text, seq FROM chat_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2
) r ORDER BY r.seq";

// A page is an index range scan on (session_id, seq): newest `$2` messages
// older than `$3` (when given), read newest first, returned oldest first.
// `before_ok` is false when `$3` names no message of this session.
const HISTORY: &str = "
WITH b AS (SELECT seq FROM chat_messages WHERE id = $3 AND session_id = $1)
SELECT s.status, ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM b)), s.version,
       m.id, m.text, m.sender, floor(extract(epoch FROM m.created_at) * 1000)::int8
FROM chat_sessions s
LEFT JOIN LATERAL (
    SELECT c.id, c.text, c.sender, c.created_at, c.seq FROM chat_messages c
    WHERE c.session_id = s.id AND ($3::uuid IS NULL OR c.seq < (SELECT seq FROM b))
    ORDER BY c.seq DESC LIMIT $2
) m ON true
WHERE s.id = $1
ORDER BY m.seq";

const VERSION: &str = "SELECT version FROM chat_sessions WHERE id = $1";

const STATUS: &str = "SELECT status FROM chat_sessions WHERE id = $1";

impl Store {
    /// The conversation's current version; `None` when there is no such session.
    pub async fn session_version(&self, session_id: SessionId) -> Result<Option<i64>> {
        let rows = self
            .query(VERSION, &[(session_id.as_uuid(), Type::UUID)])
            .await?;
        rows.first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(Into::into)
    }

    /// Whether the conversation waits for a person; `None`: no such session.
    pub async fn session_status(&self, session_id: SessionId) -> Result<Option<SessionStatus>> {
        let rows = self
            .query(STATUS, &[(session_id.as_uuid(), Type::UUID)])
            .await?;
        match rows.first() {
            Some(r) => Ok(Some(status(r.try_get(0)?)?)),
            None => Ok(None),
        }
    }

    /// Stores the shopper's message, creating the session when `requested`
    /// names none (with the server-generated `new_id`), and returns the
    /// earlier messages for context. One statement.
    pub async fn begin_exchange(
        &self,
        requested: Option<SessionId>,
        new_id: SessionId,
        user_message_id: Uuid,
        text: &MessageText,
        context_limit: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Exchange> {
        let requested = requested.map(|s| *s.as_uuid());
        let limit = i64::from(context_limit);
        let rows = self
            .query(
                BEGIN_EXCHANGE,
                &[
                    (&requested, Type::UUID),
                    (new_id.as_uuid(), Type::UUID),
                    (&user_message_id, Type::UUID),
                    (&text.as_str(), Type::TEXT),
                    (&limit, Type::INT8),
                    (&idempotency_key, Type::TEXT),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("begin_exchange returned no row"))?;
        let session_id = SessionId::from(row.try_get::<_, Uuid>(0)?);
        let senders: Vec<String> = row.try_get(1)?;
        let texts: Vec<String> = row.try_get(2)?;
        Ok(Exchange {
            session_id,
            created: session_id == new_id,
            status: status(row.try_get(3)?)?,
            context: senders
                .iter()
                .zip(texts)
                .map(|(s, t)| turn(s, t))
                .collect::<Result<_>>()?,
        })
    }

    /// The last `limit` messages of a session, oldest first.
    pub async fn recent_turns(&self, session_id: SessionId, limit: u32) -> Result<Vec<Turn>> {
        let limit = i64::from(limit);
        let rows = self
            .query(
                RECENT_TURNS,
                &[(session_id.as_uuid(), Type::UUID), (&limit, Type::INT8)],
            )
            .await?;
        rows.iter()
            .map(|row| turn(row.try_get(0)?, row.try_get(1)?))
            .collect()
    }

    /// Stores the AI reply as message `id` (with its handoff, if any, and
    /// completes the idempotency record held by `holder`). One statement.
    pub async fn finish_exchange(
        &self,
        session_id: SessionId,
        id: Uuid,
        reply: &AiReply,
        idempotency: Option<(&str, Uuid)>,
    ) -> Result<Stored> {
        let u = &reply.usage;
        let to_i32 = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
        let tokens = [
            to_i32(u.input_tokens),
            to_i32(u.output_tokens),
            to_i32(u.cache_read_tokens),
            to_i32(u.cache_write_tokens),
        ];
        let attempts = i32::try_from(reply.attempts).unwrap_or(i32::MAX);
        let latency = i32::try_from(reply.latency.as_millis()).unwrap_or(i32::MAX);
        let reason = reply.fallback_reason.map(|r| r.as_str());
        let handoff = reply.handoff.map(|r| r.as_str());
        let (key, holder) = (idempotency.map(|k| k.0), idempotency.map(|k| k.1));
        let rows = self
            .query(
                FINISH_EXCHANGE,
                &[
                    (&id, Type::UUID),
                    (session_id.as_uuid(), Type::UUID),
                    (&reply.text.as_str(), Type::TEXT),
                    (&reply.source.as_str(), Type::TEXT),
                    (&reply.model.as_deref(), Type::TEXT),
                    (&reason, Type::TEXT),
                    (&tokens[0], Type::INT4),
                    (&tokens[1], Type::INT4),
                    (&tokens[2], Type::INT4),
                    (&tokens[3], Type::INT4),
                    (&attempts, Type::INT4),
                    (&latency, Type::INT4),
                    (&key, Type::TEXT),
                    (&handoff, Type::TEXT),
                    (&Uuid::now_v7(), Type::UUID),
                    (&holder, Type::UUID),
                ],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("finish_exchange stored nothing"))?;
        Ok(Stored {
            handoff_event: row.try_get(0)?,
        })
    }

    /// A page of the conversation: the newest `limit` messages older than
    /// `before`. `None` when there is no such session; `InvalidQuery` when
    /// `before` is not one of its messages.
    pub async fn history(
        &self,
        session_id: SessionId,
        limit: u32,
        before: Option<Uuid>,
    ) -> Result<Option<HistoryPage>> {
        let fetch = i64::from(limit) + 1;
        let rows = self
            .query(
                HISTORY,
                &[
                    (session_id.as_uuid(), Type::UUID),
                    (&fetch, Type::INT8),
                    (&before, Type::UUID),
                ],
            )
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        if !first.try_get::<_, bool>(1)? {
            return Err(Error::InvalidQuery(
                "before must be the id of a message of this conversation",
            ));
        }
        let status = status(first.try_get(0)?)?;
        let version: i64 = first.try_get(2)?;
        let mut messages = rows
            .iter()
            .map(message)
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>>>()?;
        let has_more = messages.len() > limit as usize;
        if has_more {
            messages.remove(0);
        }
        Ok(Some(HistoryPage {
            status,
            messages,
            has_more,
            version,
        }))
    }
}

/// A history row's message; `None` for the empty row of a session without any.
fn message(row: &tokio_postgres::Row) -> Result<Option<Message>> {
    let Some(id) = row.try_get::<_, Option<Uuid>>(3)? else {
        return Ok(None);
    };
    let sender: String = row.try_get(5)?;
    Ok(Some(Message {
        id,
        text: row.try_get(4)?,
        sender: Sender::parse(&sender)
            .ok_or_else(|| Error::internal("unknown sender in database"))?,
        timestamp: row.try_get(6)?,
    }))
}

fn status(s: &str) -> Result<SessionStatus> {
    SessionStatus::parse(s).ok_or_else(|| Error::internal("unknown session status in database"))
}

fn turn(sender: &str, text: String) -> Result<Turn> {
    let sender =
        Sender::parse(sender).ok_or_else(|| Error::internal("unknown sender in database"))?;
    Ok(Turn { sender, text })
}
