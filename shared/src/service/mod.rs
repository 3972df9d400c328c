//! The two use cases, with no HTTP in them: `send_message` and `get_history`.

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use uuid::Uuid;

use crate::cache::{Cache, Lookup, Subject};
use crate::config::{Config, ConfigError};
use crate::domain::{History, IdempotencyKey, MessageText, Sender, SessionId};
use crate::error::{Error, Result};
use crate::llm::{self, AiReply, Claude};
use crate::store::{Claim, Store};

/// A validated `POST /api/chat`.
#[derive(Debug, Clone)]
pub struct SendMessage {
    pub message: MessageText,
    pub session_id: Option<SessionId>,
    /// The caller's IP as API Gateway saw it, for the per-IP limit.
    pub client_ip: Option<String>,
    pub idempotency_key: Option<IdempotencyKey>,
}

/// The answer to a `POST /api/chat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    pub reply: String,
    pub session_id: SessionId,
    /// Replayed from an earlier request with the same `Idempotency-Key`.
    pub replayed: bool,
}

/// How a history read was served, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// No Redis configured.
    Off,
    /// Redis failed; served from PostgreSQL.
    Error,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Off => "off",
            CacheOutcome::Error => "error",
        }
    }
}

/// Everything a function needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    store: Store,
    cache: Option<Cache>,
    claude: Claude,
}

impl App {
    /// Loads the configuration (environment, then SSM) and builds the clients.
    pub async fn from_env() -> std::result::Result<Self, crate::error::BoxError> {
        let config = Config::load().await?;
        Ok(Self::new(config)?)
    }

    /// Builds the clients. Nothing connects yet: the first request (or
    /// [`App::warm_up_in_background`]) does.
    pub fn new(config: Config) -> std::result::Result<Self, ConfigError> {
        let bad = |name: &str, reason: String| ConfigError::Invalid {
            name: name.into(),
            reason,
        };
        let store = Store::new(&config.database).map_err(|e| bad("DATABASE_URL", e.to_string()))?;
        let cache = match &config.redis {
            Some(r) => Some(
                Cache::new(r)
                    .map_err(|_| bad("REDIS_URL", "cannot build a Redis client from it".into()))?,
            ),
            None => None,
        };
        let claude =
            Claude::new(&config.claude).map_err(|e| bad("ANTHROPIC_BASE_URL", e.to_string()))?;
        Ok(App {
            config,
            store,
            cache,
            claude,
        })
    }

    /// Opens the database and Redis connections while the runtime waits for
    /// the first event, so the first request does not pay for them.
    pub fn warm_up_in_background(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.warm_up().await {
                warn!(error = %e, "database warm-up failed; the first request will retry");
            }
        });
        if let Some(cache) = self.cache.clone() {
            tokio::spawn(async move {
                if let Err(e) = cache.ping().await {
                    warn!(error = %e, "redis warm-up failed; the first request will retry");
                }
            });
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// Rate-limits, stores the message, asks Claude (or the fallback), stores
    /// the reply, and keeps the history cache correct.
    pub async fn send_message(&self, req: SendMessage, deadline: Instant) -> Result<SendOutcome> {
        self.check_rate_limits(&req).await?;

        let key = req.idempotency_key.as_ref();
        let claim = match key {
            None => None,
            Some(k) => {
                let claim = self
                    .store
                    .claim_key(k, &fingerprint(&req), self.config.idempotency_lease)
                    .await?;
                match claim {
                    Claim::Replay { session_id, reply } => {
                        info!(session_id = %session_id, "idempotent replay");
                        return Ok(SendOutcome {
                            reply,
                            session_id,
                            replayed: true,
                        });
                    }
                    Claim::Mismatch => return Err(Error::IdempotencyKeyReused),
                    Claim::InProgress => return Err(Error::RequestInProgress),
                    Claim::Fresh | Claim::Resume { .. } => Some(claim),
                }
            }
        };

        let result = self.exchange(&req, claim, deadline).await;
        if let (Err(_), Some(k)) = (&result, key) {
            // Let a retry take the key over at once instead of after the lease.
            if let Err(e) = self.store.release_key(k).await {
                warn!(error = %e, "could not release the idempotency key; it frees itself when the lease ends");
            }
        }
        result
    }

    async fn exchange(
        &self,
        req: &SendMessage,
        claim: Option<Claim>,
        deadline: Instant,
    ) -> Result<SendOutcome> {
        let limit = self.config.claude.context_messages;
        let budget = self.config.claude.context_chars;
        let (session_id, created, turns) = match claim {
            Some(Claim::Resume { session_id }) => {
                // The message was stored by an earlier attempt: do not store it twice.
                let mut earlier = self.store.recent_turns(session_id, limit + 1).await?;
                if earlier
                    .last()
                    .is_some_and(|t| t.sender == Sender::User && t.text == req.message.as_str())
                {
                    earlier.pop();
                }
                (
                    session_id,
                    false,
                    llm::build_turns(&earlier, req.message.as_str(), budget),
                )
            }
            _ => {
                let exchange = self
                    .store
                    .begin_exchange(
                        req.session_id,
                        SessionId::generate(),
                        Uuid::now_v7(),
                        &req.message,
                        limit,
                        req.idempotency_key.as_ref(),
                    )
                    .await?;
                let turns = llm::build_turns(&exchange.context, req.message.as_str(), budget);
                (exchange.session_id, exchange.created, turns)
            }
        };

        let reply = self
            .claude
            .reply(&turns, req.message.as_str(), deadline)
            .await;
        log_reply(&reply, session_id, created, req, turns.len());

        self.store
            .finish_exchange(session_id, &reply, req.idempotency_key.as_ref())
            .await?;
        // A brand-new session id was unknown until now: nothing can be cached under it.
        if !created {
            self.invalidate(session_id).await;
        }
        Ok(SendOutcome {
            reply: reply.text,
            session_id,
            replayed: false,
        })
    }

    async fn check_rate_limits(&self, req: &SendMessage) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let limits = self.config.limits;
        let mut charges = Vec::with_capacity(2);
        if let Some(sid) = req.session_id {
            charges.push((Subject::Session(sid), limits.per_session));
        }
        if let Some(ip) = req.client_ip.as_deref() {
            charges.push((Subject::Ip(ip), limits.per_ip));
        }
        match cache
            .check_limits(&charges, limits.window, req.session_id)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(retry_after)) => {
                info!(retry_after_s = retry_after.as_secs(), "rate limited");
                Err(Error::RateLimited { retry_after })
            }
            Err(e) => {
                warn!(error = %e, "rate limit check failed; allowing the request (fail open)");
                Ok(())
            }
        }
    }

    async fn invalidate(&self, sid: SessionId) {
        let Some(cache) = &self.cache else { return };
        if let Err(first) = cache.invalidate(sid).await {
            // One more try: a failed invalidation is the only way the cache could go stale.
            if let Err(e) = cache.invalidate(sid).await {
                tracing::error!(error = %e, first_error = %first, session_id = %sid, "cache invalidation failed");
            }
        }
    }

    /// The conversation as the JSON body of `GET /history`, from the cache
    /// when it has it, else from PostgreSQL (then cached).
    pub async fn get_history(&self, sid: SessionId) -> Result<(Vec<u8>, CacheOutcome)> {
        let mut outcome = CacheOutcome::Off;
        let mut token = None;
        if let Some(cache) = &self.cache {
            match cache.lookup(sid).await {
                Ok(Lookup::Hit(body)) => return Ok((body, CacheOutcome::Hit)),
                Ok(Lookup::Miss(t)) => {
                    outcome = CacheOutcome::Miss;
                    token = Some(t);
                }
                Err(e) => {
                    outcome = CacheOutcome::Error;
                    warn!(error = %e, "cache lookup failed; reading the database");
                }
            }
        }
        let messages = self
            .store
            .history(sid)
            .await?
            .ok_or(Error::SessionNotFound)?;
        let body = serde_json::to_vec(&History {
            session_id: sid,
            messages,
        })
        .map_err(Error::internal)?;
        if let (Some(cache), Some(token)) = (&self.cache, token) {
            match cache.fill(sid, &token, &body).await {
                Ok(true) => {}
                Ok(false) => info!("cache fill skipped: the session changed meanwhile"),
                Err(e) => warn!(error = %e, "cache fill failed"),
            }
        }
        Ok((body, outcome))
    }

    /// Deletes what the retention policy says to (scheduled cleanup).
    pub async fn cleanup(&self) -> Result<(i64, i64)> {
        const KEY_TTL: Duration = Duration::from_secs(24 * 3600);
        self.store
            .delete_expired(self.config.session_retention, KEY_TTL)
            .await
    }
}

/// What makes two requests "the same" for an `Idempotency-Key`: the parsed
/// message and session id, not the bytes (so JSON spacing does not matter).
fn fingerprint(req: &SendMessage) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"send-message/v1\0");
    h.update(req.message.as_str().as_bytes());
    h.update(b"\0");
    if let Some(sid) = req.session_id {
        h.update(sid.to_string().as_bytes());
    }
    h.finalize().into()
}

fn log_reply(
    reply: &AiReply,
    session_id: SessionId,
    created: bool,
    req: &SendMessage,
    turns: usize,
) {
    let u = reply.usage;
    info!(
        session_id = %session_id,
        new_session = created,
        message_chars = req.message.char_count(),
        context_turns = turns,
        reply_source = reply.source.as_str(),
        model = reply.model.as_deref().unwrap_or("-"),
        fallback_reason = reply.fallback_reason.map(|r| r.as_str()).unwrap_or("-"),
        attempts = reply.attempts,
        claude_ms = reply.latency.as_millis() as u64,
        input_tokens = u.input_tokens.unwrap_or(0),
        output_tokens = u.output_tokens.unwrap_or(0),
        cache_read_tokens = u.cache_read_tokens.unwrap_or(0),
        cache_write_tokens = u.cache_write_tokens.unwrap_or(0),
        reply_chars = reply.text.chars().count(),
        "reply ready"
    );
}
