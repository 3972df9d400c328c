//! PostgreSQL: the durable record of conversations.
//!
//! Every statement is sent with `query_typed` (unnamed statement, parameter
//! types given inline), so nothing prepared outlives its statement and every
//! query works through transaction-mode poolers (PgBouncer, Supabase's pooler,
//! RDS Proxy without pinning). Each operation is a single autocommitted
//! statement (CTEs where several rows change together): one round trip, no
//! session state, nothing left half-done by a lost connection.

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::domain::{IdempotencyKey, Message, MessageText, Sender, SessionId};
use crate::error::{Error, Result};
use crate::llm::AiReply;

/// Parses a PostgreSQL URL (or key=value string). libpq's `verify-ca` and
/// `verify-full` are accepted as `require`, which here always verifies the
/// certificate chain and host name.
pub fn parse_database_url(url: &str) -> std::result::Result<tokio_postgres::Config, String> {
    let normalised = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    normalised
        .parse::<tokio_postgres::Config>()
        // The parser's message can quote the input; say only what is wrong in general.
        .map_err(|_| "not a valid PostgreSQL connection URL".to_owned())
}

/// The connection factory shared by the pool, the migrator and tests.
pub fn connector(
    cfg: &DatabaseConfig,
) -> std::result::Result<
    (
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    ),
    String,
> {
    let mut pg = parse_database_url(cfg.url.expose_secret())?;
    pg.connect_timeout(cfg.connect_timeout);
    pg.keepalives_idle(Duration::from_secs(30));
    if pg.get_application_name().is_none() {
        pg.application_name("support-chat");
    }
    let tls = crate::tls::client_config(cfg.ca_cert_pem.as_deref())?;
    Ok((
        pg,
        tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone()),
    ))
}

/// One conversation turn as stored, for building Claude's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTurn {
    pub sender: Sender,
    pub text: String,
}

/// What `begin_exchange` returns.
#[derive(Debug)]
pub struct Exchange {
    pub session_id: SessionId,
    pub created: bool,
    /// Earlier messages of the session, oldest first (excluding the new one).
    pub context: Vec<StoredTurn>,
}

/// The state of an `Idempotency-Key` after trying to claim it.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// New key: this request owns it.
    Fresh,
    /// An earlier attempt stored the user's message and then failed; this
    /// request owns the key now and must finish that exchange.
    Resume { session_id: SessionId },
    /// Completed earlier: replay this.
    Replay {
        session_id: SessionId,
        reply: String,
    },
    /// Another request holds the key.
    InProgress,
    /// The key was used with a different request.
    Mismatch,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    statement_timeout: Duration,
    /// For cancel requests, which open a connection of their own.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
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
    ON CONFLICT (id) DO UPDATE SET updated_at = now()
    RETURNING cs.id
), m AS (
    INSERT INTO chat_messages (id, session_id, sender, text)
    SELECT $3, s.id, 'user', $4 FROM s
    RETURNING session_id
), k AS (
    UPDATE idempotency_keys SET session_id = m.session_id, user_message_id = $3
    FROM m WHERE key = $6
)
SELECT s.id, ctx.senders, ctx.texts
FROM s, m, (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit, LATERAL (
    SELECT COALESCE(array_agg(r.sender ORDER BY r.seq), '{}') AS senders,
           COALESCE(array_agg(r.text ORDER BY r.seq), '{}') AS texts
    FROM (SELECT sender, text, seq FROM chat_messages c
          WHERE c.session_id = s.id ORDER BY seq DESC LIMIT $5) r
) ctx";

const FINISH_EXCHANGE: &str = "
WITH m AS (
    INSERT INTO chat_messages (id, session_id, sender, text, source, model, fallback_reason,
        input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, attempts, latency_ms)
    VALUES ($1, $2, 'ai', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    RETURNING session_id
), s AS (
    UPDATE chat_sessions SET updated_at = now() WHERE id = $2
), k AS (
    UPDATE idempotency_keys SET reply = $3, locked_until = NULL WHERE key = $13
)
SELECT 1 FROM m";

const RECENT_TURNS: &str = "
SELECT r.sender, r.text FROM (
    SELECT sender, text, seq FROM chat_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2
) r ORDER BY r.seq";

const HISTORY: &str = "
SELECT m.id, m.text, m.sender, floor(extract(epoch FROM m.created_at) * 1000)::int8
FROM chat_sessions s LEFT JOIN chat_messages m ON m.session_id = s.id
WHERE s.id = $1
ORDER BY m.seq";

// Claim a key: insert it, or take over an abandoned claim of the same request
// (lease expired, not completed). When the claim fails, the second branch
// reports the existing row as it was when the statement started; a row
// inserted concurrently by another request is not visible there, and no row
// at all means exactly that: someone else holds the key.
const CLAIM_KEY: &str = "
WITH claimed AS (
    INSERT INTO idempotency_keys AS k (key, fingerprint, locked_until)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (key) DO UPDATE SET locked_until = EXCLUDED.locked_until
    WHERE k.fingerprint = EXCLUDED.fingerprint AND k.reply IS NULL
      AND (k.locked_until IS NULL OR k.locked_until < now())
    RETURNING k.session_id
)
SELECT true, c.session_id, NULL::text, true FROM claimed c
UNION ALL
SELECT false, k.session_id, k.reply, k.fingerprint = $2
FROM idempotency_keys k WHERE k.key = $1 AND NOT EXISTS (SELECT 1 FROM claimed)";

const RELEASE_KEY: &str =
    "UPDATE idempotency_keys SET locked_until = NULL WHERE key = $1 AND reply IS NULL";

const DELETE_OLD: &str = "
WITH s AS (DELETE FROM chat_sessions WHERE updated_at < now() - make_interval(secs => $1) RETURNING 1),
     k AS (DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $2) RETURNING 1)
SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM k)";

impl Store {
    /// Builds the pool; connects lazily, on first use.
    pub fn new(cfg: &DatabaseConfig) -> Result<Self> {
        let (pg, tls) = connector(cfg).map_err(Error::internal)?;
        let manager = Manager::from_config(
            pg,
            tls.clone(),
            // Fast: reuse without a test query (no extra round trip); a closed
            // connection is still detected and replaced.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .build()
            .map_err(Error::internal)?;
        Ok(Store {
            pool,
            statement_timeout: cfg.statement_timeout,
            tls,
        })
    }

    async fn client(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }

    /// Runs one statement within the statement timeout. On timeout the
    /// statement is cancelled on the server and the connection leaves the pool.
    async fn query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let res =
            tokio::time::timeout(self.statement_timeout, client.query_typed(sql, params)).await;
        match res {
            Ok(rows) => Ok(rows?),
            Err(_) => {
                // Cancel on the server, so the statement cannot commit after we answered 503.
                let token = client.cancel_token();
                let cancel = token.cancel_query(self.tls.clone());
                if tokio::time::timeout(Duration::from_secs(1), cancel)
                    .await
                    .is_err()
                {
                    tracing::warn!("could not cancel a timed-out statement in time");
                }
                drop(Object::take(client));
                Err(Error::Unavailable("database statement timed out".into()))
            }
        }
    }

    /// Warms one connection (used at cold start, in the background).
    pub async fn warm_up(&self) -> Result<()> {
        self.client().await.map(drop)
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
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Exchange> {
        let requested = requested.map(|s| *s.as_uuid());
        let limit = i64::from(context_limit);
        let key = idempotency_key.map(IdempotencyKey::as_str);
        let rows = self
            .query(
                BEGIN_EXCHANGE,
                &[
                    (&requested, Type::UUID),
                    (new_id.as_uuid(), Type::UUID),
                    (&user_message_id, Type::UUID),
                    (&text.as_str(), Type::TEXT),
                    (&limit, Type::INT8),
                    (&key, Type::TEXT),
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
            context: senders
                .iter()
                .zip(texts)
                .map(|(s, t)| turn(s, t))
                .collect::<Result<_>>()?,
        })
    }

    /// The last `limit` messages of a session, oldest first.
    pub async fn recent_turns(&self, session_id: SessionId, limit: u32) -> Result<Vec<StoredTurn>> {
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

    /// Stores the AI reply (and completes the idempotency record). One statement.
    pub async fn finish_exchange(
        &self,
        session_id: SessionId,
        reply: &AiReply,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<()> {
        let id = Uuid::now_v7();
        let u = &reply.usage;
        let to_i32 = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
        let (input, output, cache_read, cache_write) = (
            to_i32(u.input_tokens),
            to_i32(u.output_tokens),
            to_i32(u.cache_read_tokens),
            to_i32(u.cache_write_tokens),
        );
        let attempts = i32::try_from(reply.attempts).unwrap_or(i32::MAX);
        let latency = i32::try_from(reply.latency.as_millis()).unwrap_or(i32::MAX);
        let source = reply.source.as_str();
        let reason = reply.fallback_reason.map(|r| r.as_str());
        let key = idempotency_key.map(IdempotencyKey::as_str);
        let rows = self
            .query(
                FINISH_EXCHANGE,
                &[
                    (&id, Type::UUID),
                    (session_id.as_uuid(), Type::UUID),
                    (&reply.text.as_str(), Type::TEXT),
                    (&source, Type::TEXT),
                    (&reply.model.as_deref(), Type::TEXT),
                    (&reason, Type::TEXT),
                    (&input, Type::INT4),
                    (&output, Type::INT4),
                    (&cache_read, Type::INT4),
                    (&cache_write, Type::INT4),
                    (&attempts, Type::INT4),
                    (&latency, Type::INT4),
                    (&key, Type::TEXT),
                ],
            )
            .await?;
        if rows.is_empty() {
            return Err(Error::internal("finish_exchange stored nothing"));
        }
        Ok(())
    }

    /// The whole conversation, oldest first; `None` when there is no such session.
    pub async fn history(&self, session_id: SessionId) -> Result<Option<Vec<Message>>> {
        let rows = self
            .query(HISTORY, &[(session_id.as_uuid(), Type::UUID)])
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(id) = row.try_get::<_, Option<Uuid>>(0)? else {
                continue;
            };
            let sender: String = row.try_get(2)?;
            messages.push(Message {
                id,
                text: row.try_get(1)?,
                sender: Sender::parse(&sender)
                    .ok_or_else(|| Error::internal("unknown sender in database"))?,
                timestamp: row.try_get(3)?,
            });
        }
        Ok(Some(messages))
    }

    /// Claims an `Idempotency-Key` for `lease`.
    pub async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: &[u8],
        lease: Duration,
    ) -> Result<Claim> {
        let secs = lease.as_secs_f64();
        let rows = self
            .query(
                CLAIM_KEY,
                &[
                    (&key.as_str(), Type::TEXT),
                    (&fingerprint, Type::BYTEA),
                    (&secs, Type::FLOAT8),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Claim::InProgress);
        };
        let claimed: bool = row.try_get(0)?;
        let session_id: Option<SessionId> = row.try_get::<_, Option<Uuid>>(1)?.map(SessionId::from);
        let reply: Option<String> = row.try_get(2)?;
        let same_request: bool = row.try_get(3)?;
        Ok(match (claimed, session_id, reply) {
            (true, None, _) => Claim::Fresh,
            (true, Some(session_id), _) => Claim::Resume { session_id },
            (false, ..) if !same_request => Claim::Mismatch,
            (false, Some(session_id), Some(reply)) => Claim::Replay { session_id, reply },
            // Not completed, not claimable: held by a live request.
            (false, ..) => Claim::InProgress,
        })
    }

    /// Gives a claimed key back after a failure, so a retry can resume at once.
    pub async fn release_key(&self, key: &IdempotencyKey) -> Result<()> {
        self.query(RELEASE_KEY, &[(&key.as_str(), Type::TEXT)])
            .await
            .map(drop)
    }

    /// Deletes sessions idle for longer than `retention` (their messages
    /// cascade) and idempotency records older than `key_ttl`.
    pub async fn delete_expired(
        &self,
        retention: Duration,
        key_ttl: Duration,
    ) -> Result<(i64, i64)> {
        let (r, k) = (retention.as_secs_f64(), key_ttl.as_secs_f64());
        let rows = self
            .query(DELETE_OLD, &[(&r, Type::FLOAT8), (&k, Type::FLOAT8)])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("cleanup returned no row"))?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

fn turn(sender: &str, text: String) -> Result<StoredTurn> {
    let sender =
        Sender::parse(sender).ok_or_else(|| Error::internal("unknown sender in database"))?;
    Ok(StoredTurn { sender, text })
}

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Applies pending migrations from `migrations/` over a dedicated connection
/// (not through a transaction pooler: use the direct or session-mode URL).
/// Idempotent; concurrent runs are serialised by an advisory lock.
pub async fn migrate(
    cfg: &DatabaseConfig,
) -> std::result::Result<Vec<String>, crate::error::BoxError> {
    let (pg, tls) = connector(cfg)?;
    let (mut client, connection) = pg.connect(tls).await?;
    let conn = tokio::spawn(connection);
    client
        .batch_execute("SELECT pg_advisory_lock(7321400)")
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let _ = client
        .batch_execute("SELECT pg_advisory_unlock(7321400)")
        .await;
    drop(client);
    let _ = conn.await;
    Ok(report?
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
