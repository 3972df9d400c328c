//! Redis: the history cache and the rate limits.
//!
//! # History cache: never stale after an acknowledged write
//!
//! Per session there are two keys sharing one hash tag (so they live on one
//! shard): `{prefix}:{sid}:h`, the exact JSON body `GET /history` returns, and
//! `{prefix}:{sid}:v`, a version counter.
//!
//! - A reader does `MGET h v` (one round trip). `h` present: that is the
//!   answer. Otherwise it remembers `v` (the *token*), reads PostgreSQL, and
//!   fills with a script that sets `h` only if `v` still equals the token.
//! - A writer, after its messages are committed in PostgreSQL and before it
//!   answers, runs `INCR v; DEL h` atomically (and does the same before the
//!   write, in the rate-limit round trip, so an entry that predates the write
//!   is gone as early as possible).
//!
//! The race this closes: a reader misses, reads PostgreSQL *before* a write
//! commits, and fills *after* the writer invalidated. The writer's `INCR`
//! happened after the reader took its token, so the fill's check fails and
//! the old body is never stored. A reader that took its token after the
//! `INCR` reads PostgreSQL after the commit, so what it fills is current.
//! Either way, once a POST has answered, no GET can see a body without its
//! messages. `v` lives longer than `h` (its TTL is refreshed on every write),
//! so a version cannot silently restart under a live entry.
//!
//! # Rate limits
//!
//! Fixed one-minute windows (`INCR` + `EXPIRE` in one script, per session and
//! per client IP, one round trip). Over a limit, the script answers the
//! seconds until the window resets, for `Retry-After`.
//!
//! # Degradation
//!
//! The connection is made lazily and re-made by the connection manager; every
//! call is bounded by `op_timeout`. Callers treat an error as "no cache" (read
//! PostgreSQL) and "no limit" (fail open), and log it.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use secrecy::ExposeSecret;
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

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<u8>),
    /// Not cached; fill with this token after reading the database.
    Miss(FillToken),
}

#[derive(Debug, Clone)]
pub struct FillToken(String);

/// A rate-limit subject.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Session(SessionId),
    Ip(&'a str),
    /// History reads per client IP, counted apart from messages.
    HistoryIp(&'a str),
}

const FILL: &str = r"
local v = redis.call('GET', KEYS[2]) or '0'
if v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0";

const INVALIDATE: &str = r"
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
return 1";

// KEYS: the counters to charge, then (optionally) a session's h and v keys to
// invalidate when the request is allowed. ARGV: window, version TTL, the
// number of counters, then one limit per counter.
const RATE_LIMIT: &str = r"
local window = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local retry = 0
for i = 1, n do
  local count = redis.call('INCR', KEYS[i])
  local ttl = redis.call('TTL', KEYS[i])
  if count == 1 or ttl < 0 then
    redis.call('EXPIRE', KEYS[i], window)
    ttl = window
  end
  if count > tonumber(ARGV[3 + i]) and ttl > retry then
    retry = ttl
  end
end
if retry == 0 and #KEYS > n then
  redis.call('INCR', KEYS[n + 2])
  redis.call('EXPIRE', KEYS[n + 2], ARGV[2])
  redis.call('DEL', KEYS[n + 1])
end
return retry";

#[derive(Clone)]
pub struct Cache {
    conn: ConnectionManager,
    op_timeout: Duration,
    connect_timeout: Duration,
    ttl_secs: u64,
    version_ttl_secs: u64,
    prefix: String,
    fill: Script,
    invalidate: Script,
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
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let ttl_secs = cfg.history_ttl.as_secs().max(1);
        Ok(Cache {
            conn,
            op_timeout: cfg.op_timeout,
            connect_timeout: cfg.connect_timeout,
            ttl_secs,
            version_ttl_secs: ttl_secs + 3600,
            prefix: cfg.key_prefix.clone(),
            fill: Script::new(FILL),
            invalidate: Script::new(INVALIDATE),
            rate_limit: Script::new(RATE_LIMIT),
        })
    }

    fn keys(&self, sid: SessionId) -> (String, String) {
        (
            format!("{}:{{{sid}}}:h", self.prefix),
            format!("{}:{{{sid}}}:v", self.prefix),
        )
    }

    /// A backstop around each call. The client already bounds each
    /// command by `op_timeout` (response timeout) and each (re)connect by
    /// `connect_timeout`; a call that has to connect first may need both.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> CacheResult<T> {
        match tokio::time::timeout(self.op_timeout + self.connect_timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(CacheError::Timeout),
        }
    }

    /// One round trip: the cached body, or a token to fill with.
    pub async fn lookup(&self, sid: SessionId) -> CacheResult<Lookup> {
        let (h, v) = self.keys(sid);
        let mut conn = self.conn.clone();
        let (body, version): (Option<Vec<u8>>, Option<String>) = self
            .bounded(redis::cmd("MGET").arg(&h).arg(&v).query_async(&mut conn))
            .await?;
        Ok(match body {
            Some(b) => Lookup::Hit(b),
            None => Lookup::Miss(FillToken(version.unwrap_or_else(|| "0".into()))),
        })
    }

    /// Stores `body` unless a write happened since `token` was taken.
    /// Returns whether it was stored.
    pub async fn fill(&self, sid: SessionId, token: &FillToken, body: &[u8]) -> CacheResult<bool> {
        let (h, v) = self.keys(sid);
        let mut conn = self.conn.clone();
        let mut inv = self.fill.key(&h);
        inv.key(&v).arg(&token.0).arg(body).arg(self.ttl_secs);
        let stored: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(stored == 1)
    }

    /// After a write to the session is committed: bump the version, drop the body.
    pub async fn invalidate(&self, sid: SessionId) -> CacheResult<()> {
        let (h, v) = self.keys(sid);
        let mut conn = self.conn.clone();
        let mut inv = self.invalidate.key(&h);
        inv.key(&v).arg(self.version_ttl_secs);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Charges each `(subject, limit)` (limits of 0 are skipped) and, when
    /// allowed, invalidates `session`'s cache entry in the same round trip.
    /// `Some(retry_after)` when a limit is exceeded.
    pub async fn check_limits(
        &self,
        charges: &[(Subject<'_>, u32)],
        window: Duration,
        invalidate: Option<SessionId>,
    ) -> CacheResult<Option<Duration>> {
        let charges: Vec<_> = charges.iter().filter(|(_, limit)| *limit > 0).collect();
        if charges.is_empty() && invalidate.is_none() {
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
        if let Some(sid) = invalidate {
            let (h, v) = self.keys(sid);
            inv.key(h).key(v);
        }
        inv.arg(window.as_secs().max(1))
            .arg(self.version_ttl_secs)
            .arg(charges.len());
        for (_, limit) in &charges {
            inv.arg(*limit);
        }
        let mut conn = self.conn.clone();
        let retry: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok((retry > 0).then(|| Duration::from_secs(retry.unsigned_abs())))
    }

    /// A round trip that proves the server answers (for readiness checks and tests).
    pub async fn ping(&self) -> CacheResult<()> {
        let mut conn = self.conn.clone();
        let _: Value = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}
