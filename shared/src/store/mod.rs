//! PostgreSQL: the durable record of conversations.
//!
//! Every statement is sent with `query_typed` (unnamed statement, parameter
//! types given inline), so nothing prepared outlives its statement and every
//! query works through transaction-mode poolers (PgBouncer, Supabase's pooler,
//! RDS Proxy without pinning). Each operation is a single autocommitted
//! statement (CTEs where several rows change together): one round trip, no
//! session state, nothing left half-done by a lost connection.

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the check of an idle connection may take.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
use tokio_postgres::types::{ToSql, Type};

use crate::config::DatabaseConfig;

mod chat;
mod keys;
mod outbox;

pub use chat::{Exchange, HistoryPage, Stored};
pub use keys::Claim;
pub use outbox::{DueEvent, GIVE_UP_AFTER};

use crate::error::{Error, Result};

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
    let mut pg = cfg.connect_options()?;
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

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    statement_timeout: Duration,
    connect_timeout: Duration,
    /// A connection unused for longer is checked before it is trusted.
    idle_check: Duration,
    /// When the store last finished a statement (for `idle_check`).
    last_used: Arc<Mutex<Instant>>,
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

// One batch of the retention cleanup: at most $3 idle sessions (their
// messages, keys and events cascade, each through an index) and at most $3
// old idempotency records, so every statement finishes well inside its
// timeout however large the backlog; the caller repeats while time allows.
const DELETE_OLD: &str = "
WITH s AS (
    DELETE FROM chat_sessions WHERE id IN (
        SELECT id FROM chat_sessions WHERE updated_at < now() - make_interval(secs => $1)
        ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING 1
), k AS (
    DELETE FROM idempotency_keys WHERE key IN (
        SELECT key FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $2)
        ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
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
            connect_timeout: cfg.connect_timeout,
            idle_check: cfg.idle_check,
            last_used: Arc::new(Mutex::new(Instant::now())),
            tls,
        })
    }

    async fn checkout(&self) -> Result<Object> {
        let wait = crate::deadline::bound(self.connect_timeout);
        match tokio::time::timeout(wait, self.pool.get()).await {
            Ok(client) => Ok(client?),
            Err(_) => Err(Error::Unavailable("no database connection in time".into())),
        }
    }

    /// A pooled connection, checked first when it sat unused for a while: a
    /// frozen function's connection may have vanished without a FIN (a NAT
    /// or pooler dropped it) and would only fail after the statement
    /// timeout. The check (an empty query, bounded by `CHECK_TIMEOUT`) sends
    /// nothing that could commit, so a failed one is simply replaced.
    async fn client(&self) -> Result<Object> {
        let idle = self
            .last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let client = self.checkout().await?;
        if idle < self.idle_check {
            return Ok(client);
        }
        let wait = crate::deadline::bound(CHECK_TIMEOUT);
        if let Ok(Ok(_)) = tokio::time::timeout(wait, client.simple_query("")).await {
            return Ok(client);
        }
        tracing::warn!(
            idle_ms = idle.as_millis() as u64,
            "a pooled connection did not answer after being idle; replacing it"
        );
        drop(Object::take(client));
        self.checkout().await
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// Runs one statement within the statement timeout. On timeout the
    /// statement is cancelled on the server and the connection leaves the pool.
    async fn query(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        let limit = crate::deadline::bound(self.statement_timeout);
        let res = tokio::time::timeout(limit, client.query_typed(sql, params)).await;
        match res {
            Ok(rows) => {
                self.touch();
                Ok(rows?)
            }
            Err(_) => {
                // Cancel on the server, so the statement cannot commit after we answered 503.
                let token = client.cancel_token();
                let cancel = token.cancel_query(self.tls.clone());
                if tokio::time::timeout(crate::deadline::bound(Duration::from_secs(1)), cancel)
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

    /// Deletes at most `batch` sessions idle for longer than `retention`
    /// (their messages cascade) and `batch` idempotency records older than
    /// `key_ttl`. One batch; see `service::cleanup` for the loop.
    pub async fn delete_expired(
        &self,
        retention: Duration,
        key_ttl: Duration,
        batch: i64,
    ) -> Result<(i64, i64)> {
        let (r, k) = (retention.as_secs_f64(), key_ttl.as_secs_f64());
        let rows = self
            .query(
                DELETE_OLD,
                &[(&r, Type::FLOAT8), (&k, Type::FLOAT8), (&batch, Type::INT8)],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("cleanup returned no row"))?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
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
