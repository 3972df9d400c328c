//! `send_message` in two steps, so a stream can start between them:
//! [`App::start`] (rate limits, the idempotency claim, the shopper's message
//! stored) and [`App::complete`] (Claude, the reply stored, the cache
//! invalidated, a handoff delivered). Everything that can refuse a request
//! happens in `start`, before any byte of a stream is sent.
//!
//! # Idempotency keys
//!
//! A key only ever answers the client that could have sent the first
//! request: it is stored as a digest of the key *and its scope*, the
//! conversation it names (`sessionId`) or, for a new conversation, the
//! client's IP address. Another client sending the same message with the
//! same key has another scope: its request is simply new (no replay of
//! someone else's session, and no `422` telling it the key was used).
//! Keys must also be long enough to be unguessable (16 to 255 characters;
//! a UUID is the intended choice).

use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use uuid::Uuid;

use super::App;
use crate::cache::Subject;
use crate::domain::{
    AiReply, IdempotencyKey, MessageText, ReplySource, Sender, SessionId, SessionStatus,
};
use crate::error::{Error, Result};
use crate::llm::{ApiMessage, Ask, DeltaSink, build_messages};
use crate::metrics::Doc;
use crate::store::Claim;

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
    /// The stored AI message (absent only on replays of records that predate it).
    pub message_id: Option<Uuid>,
    /// Replayed from an earlier request with the same `Idempotency-Key`.
    pub replayed: bool,
    /// This reply handed the conversation to a person.
    pub handoff: bool,
}

/// What [`App::start`] decided.
#[derive(Debug)]
pub enum Started {
    /// An earlier request with this key completed: its response.
    Replay(SendOutcome),
    /// The shopper's message is stored; [`App::complete`] finishes.
    Pending(Pending),
}

/// An exchange whose user message is stored and whose reply is not.
#[derive(Debug)]
pub struct Pending {
    message: MessageText,
    session_id: SessionId,
    created: bool,
    status: SessionStatus,
    context: Vec<ApiMessage>,
    key: Option<HeldKey>,
}

impl Pending {
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }
}

/// A claimed key: its stored (scoped) form and this attempt's holder id.
#[derive(Debug, Clone)]
struct HeldKey {
    stored: String,
    holder: Uuid,
}

impl App {
    /// The whole exchange, for a JSON response.
    pub async fn send_message(&self, req: SendMessage, deadline: Instant) -> Result<SendOutcome> {
        match self.start(req).await? {
            Started::Replay(out) => Ok(out),
            Started::Pending(p) => self.complete(p, deadline, None).await,
        }
    }

    /// Rate limits, the idempotency claim, and the shopper's message stored.
    pub async fn start(&self, req: SendMessage) -> Result<Started> {
        self.check_rate_limits(&req).await?;
        let Some(key) = &req.idempotency_key else {
            return self.begin(&req, None).await.map(Started::Pending);
        };
        let held = HeldKey {
            stored: scoped_key(&req, key),
            holder: Uuid::new_v4(),
        };
        let lease = self.config.idempotency_lease;
        let claim = self
            .store
            .claim_key(&held.stored, &fingerprint(&req), lease, held.holder)
            .await?;
        let resume = match claim {
            Claim::Replay {
                session_id,
                reply,
                message_id,
                handoff,
            } => {
                info!(session_id = %session_id, "idempotent replay");
                return Ok(Started::Replay(SendOutcome {
                    reply,
                    session_id,
                    message_id,
                    replayed: true,
                    handoff,
                }));
            }
            Claim::Mismatch => return Err(Error::IdempotencyKeyReused),
            Claim::InProgress => return Err(Error::RequestInProgress),
            Claim::Resume { session_id } => Some(session_id),
            Claim::Fresh => None,
        };
        let result = match resume {
            Some(sid) => self.resume(&req, sid, held.clone()).await,
            None => self.begin(&req, Some(held.clone())).await,
        };
        if result.is_err() {
            self.release(&held).await;
        }
        result.map(Started::Pending)
    }

    /// Stores the message (creating the session when needed).
    async fn begin(&self, req: &SendMessage, key: Option<HeldKey>) -> Result<Pending> {
        let exchange = self
            .store
            .begin_exchange(
                req.session_id,
                SessionId::generate(),
                Uuid::now_v7(),
                &req.message,
                self.config.claude.context_messages,
                key.as_ref().map(|k| k.stored.as_str()),
            )
            .await?;
        let budget = self.config.claude.context_chars;
        Ok(Pending {
            context: build_messages(&exchange.context, req.message.as_str(), budget),
            message: req.message.clone(),
            session_id: exchange.session_id,
            created: exchange.created,
            status: exchange.status,
            key,
        })
    }

    /// An earlier attempt stored the message, then failed: do not store it twice.
    async fn resume(&self, req: &SendMessage, sid: SessionId, key: HeldKey) -> Result<Pending> {
        let limit = self.config.claude.context_messages;
        let mut earlier = self.store.recent_turns(sid, limit + 1).await?;
        if earlier
            .last()
            .is_some_and(|t| t.sender == Sender::User && t.text == req.message.as_str())
        {
            earlier.pop();
        }
        let budget = self.config.claude.context_chars;
        // The conversation may have been handed over since: keep its status.
        let status = self
            .store
            .session_status(sid)
            .await?
            .unwrap_or(SessionStatus::Open);
        Ok(Pending {
            context: build_messages(&earlier, req.message.as_str(), budget),
            message: req.message.clone(),
            session_id: sid,
            created: false,
            status,
            key: Some(key),
        })
    }

    /// Asks Claude (streaming into `sink` when given), stores the reply, and
    /// keeps the cache correct; then tries to tell the store of a handoff.
    pub async fn complete(
        &self,
        p: Pending,
        deadline: Instant,
        sink: Option<DeltaSink<'_>>,
    ) -> Result<SendOutcome> {
        let ask = Ask {
            messages: &p.context,
            new_message: p.message.as_str(),
            deadline,
            allow_handoff: p.status == SessionStatus::Open,
        };
        let streamed = sink.is_some();
        let (reply, first_delta) = self.ask_claude(&ask, sink).await;
        log_reply(&reply, &p, streamed);
        let message_id = Uuid::now_v7();
        let key = p.key.as_ref().map(|k| (k.stored.as_str(), k.holder));
        let stored = match self
            .store
            .finish_exchange(p.session_id, message_id, &reply, key)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                if let Some(k) = &p.key {
                    self.release(k).await;
                }
                return Err(e);
            }
        };
        // A brand-new session id was unknown until now: nothing can be cached under it.
        if !p.created {
            self.invalidate(p.session_id).await;
        }
        if let Some(event) = stored.handoff_event {
            self.deliver_now(event, deadline).await;
        }
        self.metrics
            .emit(reply_metrics(&reply, streamed, first_delta));
        Ok(SendOutcome {
            reply: reply.text,
            session_id: p.session_id,
            message_id: Some(message_id),
            replayed: false,
            handoff: reply.handoff.is_some(),
        })
    }

    /// Claude's reply, and when its first words were passed on (streamed).
    async fn ask_claude(
        &self,
        ask: &Ask<'_>,
        sink: Option<DeltaSink<'_>>,
    ) -> (AiReply, Option<Duration>) {
        let Some(sink) = sink else {
            return (self.claude.reply(ask, None).await, None);
        };
        let started = Instant::now();
        let mut first = None;
        let mut timed = |text: &str| {
            first.get_or_insert_with(|| started.elapsed());
            sink(text);
        };
        let reply = self.claude.reply(ask, Some(&mut timed)).await;
        (reply, first)
    }

    async fn release(&self, key: &HeldKey) {
        // Let a retry take the key over at once instead of after the lease.
        if let Err(e) = self.store.release_key(&key.stored, key.holder).await {
            warn!(error = %e, "could not release the idempotency key; it frees itself when the lease ends");
        }
    }

    async fn check_rate_limits(&self, req: &SendMessage) -> Result<()> {
        let limits = self.config.limits;
        let mut charges = Vec::with_capacity(2);
        if let Some(sid) = req.session_id {
            charges.push((Subject::Session(sid), limits.per_session));
        }
        if let Some(ip) = req.client_ip.as_deref() {
            charges.push((Subject::Ip(ip), limits.per_ip));
        }
        self.charge(&charges).await
    }

    /// Frees the session's cache entry; a stale entry is never served
    /// anyway (its version no longer matches), so a failure only costs memory.
    async fn invalidate(&self, sid: SessionId) {
        let Some(cache) = &self.cache else { return };
        if let Err(e) = cache.invalidate(sid).await {
            warn!(error = %e, "cache entry not deleted; it will not be served (stale version)");
        }
    }
}

/// The stored form of a key: a digest of the key within its scope (see the
/// module doc), so keys never collide across clients.
fn scoped_key(req: &SendMessage, key: &IdempotencyKey) -> String {
    let scope = match (req.session_id, req.client_ip.as_deref()) {
        (Some(sid), _) => format!("session:{sid}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_owned(),
    };
    let mut h = Sha256::new();
    h.update(b"idempotency-key/v2\0");
    h.update(scope.as_bytes());
    h.update(b"\0");
    h.update(key.as_str().as_bytes());
    hex::encode(h.finalize())
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

/// The reply's EMF document: counts, Claude's latency and tokens, and the
/// time to the first streamed words.
fn reply_metrics(reply: &AiReply, streamed: bool, first_delta: Option<Duration>) -> Doc {
    let u = reply.usage;
    let mut doc = Doc::default()
        .count("Replies", 1)
        .flag("FallbackReplies", reply.source == ReplySource::Fallback)
        .flag("Handoffs", reply.handoff.is_some())
        .flag("TruncatedReplies", reply.truncated)
        .count("ClaudeAttempts", u64::from(reply.attempts))
        .property("source", reply.source.as_str())
        .property("fallbackReason", reply.fallback_reason.map(|r| r.as_str()))
        .property("streamed", streamed);
    if reply.attempts > 0 {
        doc = doc.millis("ClaudeLatency", reply.latency);
    }
    let tokens = [
        ("InputTokens", u.input_tokens),
        ("OutputTokens", u.output_tokens),
        ("CacheReadTokens", u.cache_read_tokens),
        ("CacheWriteTokens", u.cache_write_tokens),
    ];
    for (name, n) in tokens {
        if let Some(n) = n {
            doc = doc.count(name, u64::from(n));
        }
    }
    match first_delta {
        Some(d) => doc.millis("TimeToFirstDelta", d),
        None => doc,
    }
}

fn log_reply(reply: &AiReply, p: &Pending, streamed: bool) {
    let u = reply.usage;
    info!(
        session_id = %p.session_id,
        new_session = p.created,
        message_chars = p.message.char_count(),
        context_turns = p.context.len(),
        streamed,
        reply_source = reply.source.as_str(),
        model = reply.model.as_deref().unwrap_or("-"),
        fallback_reason = reply.fallback_reason.map(|r| r.as_str()).unwrap_or("-"),
        handoff = reply.handoff.map(|r| r.as_str()).unwrap_or("-"),
        truncated = reply.truncated,
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
