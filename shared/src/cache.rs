//! Redis: the history cache and the rate limits.
//!
//! # History cache: never stale after an acknowledged write
//!
//! Per session one key, `{prefix}:{sid}:h`, holds the default history page
//! as `<version>:<JSON body>`, where `version` is the conversation's version
//! in PostgreSQL (`chat_sessions.version`, bumped by every write) when the
//! page was read. A reader asks Redis for the entry and PostgreSQL for the
//! current version at the same time (one point read on the primary key) and
//! serves the entry only when the two versions agree; otherwise it reads
//! the page and stores it under its version.
//!
//! Correctness therefore rests on PostgreSQL alone: whatever Redis does
//! after a write commits (refuses writes at `maxmemory`, turns read-only
//! after a failover, answers too slowly, restarts empty, disappears), an
//! entry older than the write no longer matches and is never served. A
//! writer still deletes the entry after its commit, but only to free memory
//! early (`DEL` is allowed even under `OOM`). No write ever creates a key
//! for a session id it has not stored, so unknown ids cannot fill Redis.
//!
//! The price: a cache hit costs a Redis `GET` and a PostgreSQL point read
//! in parallel, instead of the Redis read alone. What the cache saves is
//! the page itself (up to 500 messages read, sorted and serialised).
//!
//! # Rate limits
//!
//! Fixed one-minute windows (`INCR` + `EXPIRE` in one script, per session and
//! per client IP, one round trip). Over a limit, the script answers the
//! seconds until the window resets, for `Retry-After`. When Redis refuses
//! writes (`OOM`), limits cannot be counted: requests are allowed, and each
//! one logs that rate limits are off and why.
//!
//! # Degradation
//!
//! The connection is made lazily and re-made by the connection manager; a
//! `READONLY` answer (a connection left on a replica after a failover, which
//! the manager would keep) replaces the connection, so the next call reaches
//! the new primary. Every call is bounded by `op_timeout`. Callers treat an
//! error as "no cache" (read PostgreSQL) and "no limit" (fail open), and log it.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::RedisConfig;
use crate::domain::SessionId;

pub type CacheResult<T> = Result<T, CacheError>;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis call timed out")]
    Timeout,
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A rate-limit subject.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Session(SessionId),
    Ip(&'a str),
    /// History reads per client IP, counted apart from messages.
    HistoryIp(&'a str),
}

// KEYS: the counters to charge. ARGV: the window in milliseconds, then one
// limit per counter. Answers 0 (allowed) or the milliseconds until the
// latest exceeded window ends. PTTL, not TTL: TTL rounds down, so in a
// window's last second it said 0 and requests over the limit went through.
const RATE_LIMIT: &str = r"
local window = tonumber(ARGV[1])
local retry = 0
for i = 1, #KEYS do
  local count = redis.call('INCR', KEYS[i])
  local pttl = redis.call('PTTL', KEYS[i])
  if count == 1 or pttl < 0 then
    redis.call('PEXPIRE', KEYS[i], window)
    pttl = window
  end
  if count > tonumber(ARGV[1 + i]) then
    retry = math.max(retry, pttl, 1)
  end
end
return retry";

/// A cached history page: the body and the conversation version it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub version: i64,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct Cache {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Replaced (not mutated) when a connection turns out read-only.
    conn: Arc<Mutex<ConnectionManager>>,
    op_timeout: Duration,
    connect_timeout: Duration,
    ttl_secs: u64,
    prefix: String,
    rate_limit: Script,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// Whether Redis refused a write for lack of memory (`maxmemory`, `noeviction`).
pub fn is_out_of_memory(e: &CacheError) -> bool {
    matches!(e, CacheError::Redis(r) if r.code() == Some("OOM"))
}

impl Cache {
    /// Builds the client; the connection is opened on first use.
    pub fn new(cfg: &RedisConfig) -> CacheResult<Self> {
        crate::tls::install_crypto_provider();
        let url = cfg.url.expose_secret();
        let client = match &cfg.ca_cert_pem {
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Cache {
            client,
            config,
            conn: Arc::new(Mutex::new(conn)),
            op_timeout: cfg.op_timeout,
            connect_timeout: cfg.connect_timeout,
            ttl_secs: cfg.history_ttl.as_secs().max(1),
            prefix: cfg.key_prefix.clone(),
            rate_limit: Script::new(RATE_LIMIT),
        })
    }

    fn key(&self, sid: SessionId) -> String {
        format!("{}:{{{sid}}}:h", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A backstop around each call. The client already bounds each
    /// command by `op_timeout` (response timeout) and each (re)connect by
    /// `connect_timeout`; a call that has to connect first may need both.
    /// A `READONLY` answer replaces the connection for the next call.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> CacheResult<T> {
        let limit = crate::deadline::bound(self.op_timeout + self.connect_timeout);
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.code() == Some("READONLY") {
                    self.reconnect();
                }
                Err(e.into())
            }
            Err(_) => Err(CacheError::Timeout),
        }
    }

    fn reconnect(&self) {
        tracing::warn!("redis answered READONLY (a replica): reconnecting");
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
            && let Ok(mut c) = self.conn.lock()
        {
            *c = fresh;
        }
    }

    /// The cached default page of `sid`, if any (one round trip).
    pub async fn lookup(&self, sid: SessionId) -> CacheResult<Option<Cached>> {
        let mut conn = self.conn();
        let raw: Option<Vec<u8>> = self
            .bounded(redis::cmd("GET").arg(self.key(sid)).query_async(&mut conn))
            .await?;
        Ok(raw.and_then(|r| decode(&r)))
    }

    /// Stores the default page of `sid` as read at `version`.
    pub async fn fill(&self, sid: SessionId, version: i64, body: &[u8]) -> CacheResult<()> {
        let mut value = format!("{version}:").into_bytes();
        value.extend_from_slice(body);
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(self.key(sid))
            .arg(value)
            .arg("EX")
            .arg(self.ttl_secs)
            .to_owned();
        self.bounded(cmd.query_async::<()>(&mut conn)).await
    }

    /// After a write to the session is committed: drop its entry (memory
    /// only; correctness does not depend on it, see the module doc).
    pub async fn invalidate(&self, sid: SessionId) -> CacheResult<()> {
        let mut conn = self.conn();
        self.bounded(
            redis::cmd("DEL")
                .arg(self.key(sid))
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Charges each `(subject, limit)` (limits of 0 are skipped).
    /// `Some(retry_after)` when a limit is exceeded.
    pub async fn check_limits(
        &self,
        charges: &[(Subject<'_>, u32)],
        window: Duration,
    ) -> CacheResult<Option<Duration>> {
        let charges: Vec<_> = charges.iter().filter(|(_, limit)| *limit > 0).collect();
        if charges.is_empty() {
            return Ok(None);
        }
        let mut inv = self.rate_limit.prepare_invoke();
        for (subject, _) in &charges {
            inv.key(match subject {
                Subject::Session(sid) => format!("{}:rl:s:{sid}", self.prefix),
                Subject::Ip(ip) => format!("{}:rl:ip:{ip}", self.prefix),
                Subject::HistoryIp(ip) => format!("{}:rl:hip:{ip}", self.prefix),
            });
        }
        inv.arg(window.as_millis().max(1) as u64);
        for (_, limit) in &charges {
            inv.arg(*limit);
        }
        let mut conn = self.conn();
        let retry: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok((retry > 0).then(|| Duration::from_millis(retry.unsigned_abs())))
    }

    /// A round trip that proves the server answers (for readiness checks and tests).
    pub async fn ping(&self) -> CacheResult<()> {
        let mut conn = self.conn();
        let _: Value = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}

/// `<version>:<body>`; anything else is treated as absent.
fn decode(raw: &[u8]) -> Option<Cached> {
    let colon = raw.iter().position(|b| *b == b':')?;
    let version = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
    Some(Cached {
        version,
        body: raw[colon + 1..].to_vec(),
    })
}
