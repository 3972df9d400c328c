//! Claude over the Anthropic Messages API, and the offline fallback.
//!
//! [`Claude::reply`] never fails: whatever goes wrong (no key, timeout,
//! 4xx/5xx, garbage, refusal), the shopper gets the store-facts fallback,
//! and the stored message records why.
//!
//! With a delta sink the request streams (`"stream": true`) and each piece
//! of text is handed on as it arrives. Transient failures are retried only
//! while nothing has been passed on: once the shopper has seen a beginning,
//! a second attempt could start differently, so a stream that breaks after
//! its first delta ends there, cut at its last complete sentence (or the
//! fallback when none), with the reason recorded.
//!
//! Time: each attempt gets `attempt_timeout` to answer and, when streaming,
//! the same bound on the silence between two events; every wait also stops
//! at the invocation's deadline less the response margin.

mod context;
mod wire;

pub use context::{ApiMessage, build_messages};
pub use wire::{HAND_OFF_TOOL, trim_to_sentence};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::config::ClaudeConfig;
use crate::domain::{AiReply, FallbackReason, HandoffReason, ReplySource, Usage};
use crate::knowledge::Knowledge;
use wire::{CacheControl, MessagesRequest, Parsed, Step, StreamState, SystemBlock, Thinking};

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Receives reply text as Claude writes it.
pub type DeltaSink<'a> = &'a mut (dyn FnMut(&str) + Send);

/// One question for Claude.
pub struct Ask<'a> {
    /// The conversation, the new message last ([`build_messages`]).
    pub messages: &'a [ApiMessage],
    pub new_message: &'a str,
    /// The invocation's deadline.
    pub deadline: Instant,
    /// Offer the `hand_off` tool (not once the conversation waits for a person).
    pub allow_handoff: bool,
}

/// The Claude client: one reqwest client per container, built at cold start.
#[derive(Clone)]
pub struct Claude {
    http: reqwest::Client,
    url: String,
    api_key: Option<SecretString>,
    model: String,
    max_tokens: u32,
    attempt_timeout: Duration,
    max_attempts: u32,
    margin: Duration,
    system_prompt: String,
    tools: Value,
    knowledge: Knowledge,
}

impl std::fmt::Debug for Claude {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claude")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
enum Attempt {
    Done(Parsed),
    /// Worth another try, after at least this long.
    Retry(FallbackReason, Option<Duration>),
    Fail(FallbackReason),
    /// Broke after text was passed on: no retry; keep what came.
    Cut(FallbackReason, Parsed),
}

/// The time limits of one attempt.
#[derive(Clone, Copy)]
struct Limits {
    /// For the answer to start, and between two stream events.
    patience: Duration,
    /// Nothing waits past this.
    end: Instant,
}

impl Limits {
    fn next_wait(&self) -> Duration {
        self.patience
            .min(self.end.saturating_duration_since(Instant::now()))
    }

    /// Why a wait ran out: the attempt's patience, or the whole budget.
    fn expired(&self) -> FallbackReason {
        if Instant::now() + Duration::from_millis(5) >= self.end {
            FallbackReason::Deadline
        } else {
            FallbackReason::Timeout
        }
    }
}

impl Claude {
    pub fn new(cfg: &ClaudeConfig) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2).min(cfg.attempt_timeout))
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("support-chat/", env!("CARGO_PKG_VERSION")));
        // The compiled-in public roots the database client uses too: scanning
        // the system trust store was over half of a cold start's CPU.
        if let Ok(tls) = crate::tls::client_config(None) {
            builder = builder.tls_backend_preconfigured((*tls).clone());
        }
        let http = builder.build()?;
        Ok(Claude {
            http,
            url: format!("{}/v1/messages", cfg.base_url),
            api_key: cfg.api_key.clone(),
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens,
            attempt_timeout: cfg.attempt_timeout,
            max_attempts: cfg.max_attempts,
            margin: cfg.response_margin,
            system_prompt: cfg.knowledge.system_prompt(),
            tools: wire::hand_off_tools(),
            knowledge: cfg.knowledge.clone(),
        })
    }

    /// Asks Claude, retrying transient failures while the invocation's
    /// deadline (less the response margin) allows; falls back otherwise.
    /// With `sink`, the answer streams into it as it is written.
    pub async fn reply(&self, ask: &Ask<'_>, mut sink: Option<DeltaSink<'_>>) -> AiReply {
        let started = Instant::now();
        let Some(key) = &self.api_key else {
            return self.fallback(ask, FallbackReason::NoApiKey, 0, started);
        };
        let end = ask.deadline.checked_sub(self.margin).unwrap_or(started);
        let Ok(body) = self.request_body(ask, sink.is_some()) else {
            return self.fallback(ask, FallbackReason::BadResponse, 0, started);
        };
        let mut attempts = 0;
        let mut reason = FallbackReason::Deadline;
        while attempts < self.max_attempts {
            let limits = Limits {
                patience: self.attempt_timeout,
                end,
            };
            if limits.next_wait() < Duration::from_millis(100) {
                // `reason` is the last attempt's, or Deadline if none fitted.
                break;
            }
            attempts += 1;
            let sink: Option<DeltaSink<'_>> = match sink.as_mut() {
                Some(s) => Some(&mut **s),
                None => None,
            };
            let (r, after) = match self.attempt(key, &body, limits, sink).await {
                Attempt::Done(parsed) => return self.answer(ask, parsed, attempts, started),
                Attempt::Cut(r, parsed) => return self.cut(ask, r, parsed, attempts, started),
                Attempt::Fail(r) => return self.fallback(ask, r, attempts, started),
                Attempt::Retry(r, after) => (r, after),
            };
            reason = r;
            let backoff = after.unwrap_or_else(|| backoff(attempts));
            // Only wait if a useful attempt still fits afterwards.
            if attempts >= self.max_attempts
                || backoff + Duration::from_millis(500)
                    > end.saturating_duration_since(Instant::now())
            {
                break;
            }
            tokio::time::sleep(backoff).await;
        }
        self.fallback(ask, reason, attempts, started)
    }

    fn request_body(&self, ask: &Ask<'_>, stream: bool) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&MessagesRequest {
            model: &self.model,
            max_tokens: self.max_tokens,
            system: [SystemBlock {
                kind: "text",
                text: &self.system_prompt,
                cache_control: CacheControl { kind: "ephemeral" },
            }],
            messages: ask.messages,
            thinking: Thinking { kind: "disabled" },
            tools: ask.allow_handoff.then_some(&self.tools),
            stream,
        })
    }

    /// Sends, classifies the status, then reads the answer (whole or streamed).
    async fn attempt(
        &self,
        key: &SecretString,
        body: &[u8],
        limits: Limits,
        sink: Option<DeltaSink<'_>>,
    ) -> Attempt {
        let request = self
            .http
            .post(&self.url)
            .header("x-api-key", key.expose_secret())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("content-type", "application/json")
            .body(body.to_vec());
        let until = tokio::time::Instant::now() + limits.next_wait();
        let resp = match tokio::time::timeout_at(until, request.send()).await {
            Err(_) => return Attempt::Retry(limits.expired(), None),
            Ok(Err(e)) if e.is_timeout() => return Attempt::Retry(FallbackReason::Timeout, None),
            Ok(Err(_)) => return Attempt::Retry(FallbackReason::Connection, None),
            Ok(Ok(r)) => r,
        };
        if let Some(refused) = classify(resp.status().as_u16(), resp.headers()) {
            return refused;
        }
        let streamed = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        match (streamed, sink) {
            (true, Some(sink)) => read_stream(resp, limits, sink).await,
            (true, None) => read_stream(resp, limits, &mut |_: &str| {}).await,
            (false, _) => read_whole(resp, until, limits).await,
        }
    }

    /// A complete answer, through the reply rules.
    fn answer(&self, ask: &Ask<'_>, parsed: Parsed, attempts: u32, started: Instant) -> AiReply {
        match wire::finish(parsed) {
            Ok(p) => self.claude_reply(p, None, attempts, started),
            Err(r) => self.fallback(ask, r, attempts, started),
        }
    }

    /// A stream that broke after text was shown: its last full sentence, if any.
    fn cut(
        &self,
        ask: &Ask<'_>,
        reason: FallbackReason,
        mut parsed: Parsed,
        attempts: u32,
        started: Instant,
    ) -> AiReply {
        let cleaned = crate::domain::clean_text(&parsed.text);
        match trim_to_sentence(&cleaned) {
            Some(t) if parsed.handoff.is_none() => {
                parsed.text = t.to_owned();
                self.claude_reply(parsed, Some(reason), attempts, started)
            }
            _ => self.fallback(ask, reason, attempts, started),
        }
    }

    fn claude_reply(
        &self,
        p: Parsed,
        reason: Option<FallbackReason>,
        attempts: u32,
        started: Instant,
    ) -> AiReply {
        let handoff = p.handoff;
        let truncated = handoff.is_none() && p.stop_reason.as_deref() == Some("max_tokens");
        AiReply {
            text: match handoff {
                Some(_) => self.knowledge.handoff_reply(),
                None => p.text,
            },
            source: ReplySource::Claude,
            model: Some(p.model.unwrap_or_else(|| self.model.clone())),
            fallback_reason: reason,
            usage: p.usage,
            attempts,
            latency: started.elapsed(),
            handoff,
            truncated,
        }
    }

    /// The store-facts answer. An explicit request for a person is still
    /// recognised here, so the handoff works with Claude down or unset.
    fn fallback(
        &self,
        ask: &Ask<'_>,
        reason: FallbackReason,
        attempts: u32,
        started: Instant,
    ) -> AiReply {
        let handoff = (ask.allow_handoff && crate::handoff::asks_for_person(ask.new_message))
            .then_some(HandoffReason::ShopperRequest);
        AiReply {
            text: match handoff {
                Some(_) => self.knowledge.handoff_reply(),
                None => self.knowledge.fallback_reply(ask.new_message),
            },
            source: ReplySource::Fallback,
            model: None,
            fallback_reason: Some(reason),
            usage: Usage::default(),
            attempts,
            latency: started.elapsed(),
            handoff,
            truncated: false,
        }
    }
}

/// What a status other than 200 means: retry (and after how long) or give up.
fn classify(status: u16, headers: &reqwest::header::HeaderMap) -> Option<Attempt> {
    let after = retry_after(headers);
    Some(match status {
        200 => return None,
        429 => Attempt::Retry(FallbackReason::RateLimited, after),
        529 => Attempt::Retry(FallbackReason::Overloaded, after),
        500 | 502 | 503 | 504 => Attempt::Retry(FallbackReason::ServerError, after),
        408 => Attempt::Retry(FallbackReason::Timeout, after),
        _ => Attempt::Fail(FallbackReason::ClientError),
    })
}

/// A non-streamed answer: the whole body within the attempt's time.
async fn read_whole(
    resp: reqwest::Response,
    until: tokio::time::Instant,
    limits: Limits,
) -> Attempt {
    let bytes = match tokio::time::timeout_at(until, resp.bytes()).await {
        Err(_) => return Attempt::Retry(limits.expired(), None),
        Ok(Err(_)) => return Attempt::Retry(FallbackReason::Connection, None),
        Ok(Ok(b)) => b,
    };
    match wire::parse_message(&bytes) {
        Ok(parsed) => Attempt::Done(parsed),
        Err(r) => Attempt::Fail(r),
    }
}

/// A streamed answer: events parsed by `eventsource-stream` over the body's
/// bytes, text passed to `sink` as soon as each event is read.
async fn read_stream(resp: reqwest::Response, limits: Limits, sink: DeltaSink<'_>) -> Attempt {
    let mut events = resp.bytes_stream().eventsource();
    let mut state = StreamState::default();
    let mut shown = false;
    let reason = loop {
        let event = match tokio::time::timeout(limits.next_wait(), events.next()).await {
            Err(_) => break limits.expired(),
            // Ended or broke before `message_stop`.
            Ok(None | Some(Err(_))) => break FallbackReason::Connection,
            Ok(Some(Ok(e))) => e,
        };
        match state.apply(&event.event, &event.data) {
            Ok(Step::Delta(text)) => {
                sink(&text);
                shown = true;
            }
            Ok(Step::Stop) => return Attempt::Done(state.into_parsed()),
            Ok(Step::Nothing) => {}
            Err(r) => break r,
        }
    };
    match (shown, reason) {
        (true, r) => Attempt::Cut(r, state.into_parsed()),
        (false, FallbackReason::BadResponse | FallbackReason::ClientError) => Attempt::Fail(reason),
        (false, r) => Attempt::Retry(r, None),
    }
}

/// Exponential backoff with full jitter: 200 ms, 400 ms, 800 ms ... capped at 2 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 200u64.saturating_mul(1 << attempt.min(4)).min(2000);
    Duration::from_millis(cap / 2 + fastrand::u64(0..=cap / 2))
}

/// `retry-after-ms` (Anthropic's, precise) or `retry-after` (seconds).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    if let Some(ms) = get("retry-after-ms").filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms.min(60_000.0) / 1000.0));
    }
    get("retry-after")
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(60.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }

    #[test]
    fn statuses_are_classified_as_retry_or_fail() {
        let h = reqwest::header::HeaderMap::new();
        assert!(classify(200, &h).is_none());
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(matches!(classify(s, &h), Some(Attempt::Retry(..))), "{s}");
        }
        for s in [400, 401, 403, 404, 413] {
            assert!(matches!(classify(s, &h), Some(Attempt::Fail(..))), "{s}");
        }
    }
}
