//! Claude over the Anthropic Messages API, and the offline fallback.
//!
//! [`Claude::reply`] never fails: whatever goes wrong (no key, timeout,
//! 4xx/5xx, garbage, refusal), the shopper gets the store-facts fallback,
//! and the stored message records why.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::config::ClaudeConfig;
use crate::domain::Sender;
use crate::knowledge::Knowledge;
use crate::store::StoredTurn;

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Where an AI message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplySource {
    Claude,
    Fallback,
}

impl ReplySource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplySource::Claude => "claude",
            ReplySource::Fallback => "fallback",
        }
    }
}

/// Why the fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    NoApiKey,
    Timeout,
    Connection,
    RateLimited,
    Overloaded,
    ServerError,
    ClientError,
    BadResponse,
    EmptyContent,
    Refusal,
    Truncated,
    Deadline,
}

impl FallbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoApiKey => "no_api_key",
            FallbackReason::Timeout => "timeout",
            FallbackReason::Connection => "connection",
            FallbackReason::RateLimited => "rate_limited",
            FallbackReason::Overloaded => "overloaded",
            FallbackReason::ServerError => "server_error",
            FallbackReason::ClientError => "client_error",
            FallbackReason::BadResponse => "bad_response",
            FallbackReason::EmptyContent => "empty_content",
            FallbackReason::Refusal => "refusal",
            FallbackReason::Truncated => "truncated",
            FallbackReason::Deadline => "deadline",
        }
    }
}

/// Token usage, for cost reporting (stored per AI message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: Option<u32>,
    #[serde(default)]
    pub output_tokens: Option<u32>,
    #[serde(default, rename = "cache_read_input_tokens")]
    pub cache_read_tokens: Option<u32>,
    #[serde(default, rename = "cache_creation_input_tokens")]
    pub cache_write_tokens: Option<u32>,
}

/// The assistant's answer and how it was obtained.
#[derive(Debug, Clone)]
pub struct AiReply {
    pub text: String,
    pub source: ReplySource,
    /// The model that answered (Claude only).
    pub model: Option<String>,
    pub fallback_reason: Option<FallbackReason>,
    pub usage: Usage,
    pub attempts: u32,
    pub latency: Duration,
}

/// One turn of the conversation sent to Claude.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub role: &'static str,
    pub content: String,
}

/// Builds the `messages` array: the earlier messages (oldest first), merged
/// so roles alternate and the first is the user's, then the new message
/// exactly once, all within `char_budget` characters (the newest kept).
pub fn build_turns(history: &[StoredTurn], new_message: &str, char_budget: usize) -> Vec<Turn> {
    let mut merged: Vec<(Sender, String)> = Vec::new();
    for t in history.iter().chain(std::iter::once(&StoredTurn {
        sender: Sender::User,
        text: new_message.to_owned(),
    })) {
        match merged.last_mut() {
            Some((s, text)) if *s == t.sender => {
                text.push_str("\n\n");
                text.push_str(&t.text);
            }
            _ => merged.push((t.sender, t.text.clone())),
        }
    }
    // Keep the newest turns that fit; the last one (holding the new message)
    // always stays, trimmed from the front if it alone is over budget.
    let mut used = 0usize;
    let mut keep_from = merged.len();
    for (i, (_, text)) in merged.iter().enumerate().rev() {
        let n = text.chars().count();
        if i + 1 < merged.len() && used + n > char_budget {
            break;
        }
        used += n;
        keep_from = i;
    }
    let mut kept: Vec<(Sender, String)> = merged.split_off(keep_from);
    if let Some((_, last)) = kept.last_mut() {
        let n = last.chars().count();
        if n > char_budget {
            *last = last.chars().skip(n - char_budget).collect();
        }
    }
    while kept.first().is_some_and(|(s, _)| *s == Sender::Ai) {
        kept.remove(0);
    }
    kept.into_iter()
        .map(|(s, content)| Turn {
            role: if s == Sender::User {
                "user"
            } else {
                "assistant"
            },
            content,
        })
        .collect()
}

#[derive(Serialize)]
struct SystemBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    cache_control: CacheControl,
}

#[derive(Serialize)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    system: [SystemBlock<'a>; 1],
    messages: &'a [Turn],
}

#[derive(Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
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

enum Attempt {
    Done(AiReply),
    /// Worth another try, after at least this long.
    Retry(FallbackReason, Option<Duration>),
    Fail(FallbackReason),
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
            knowledge: cfg.knowledge.clone(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks Claude, retrying transient failures while the invocation's
    /// `deadline` (less the response margin) allows; falls back otherwise.
    pub async fn reply(&self, turns: &[Turn], new_message: &str, deadline: Instant) -> AiReply {
        let started = Instant::now();
        let Some(key) = &self.api_key else {
            return self.fallback(new_message, FallbackReason::NoApiKey, 0, started);
        };
        let budget_end = deadline.checked_sub(self.margin).unwrap_or(started);
        let body = MessagesRequest {
            model: &self.model,
            max_tokens: self.max_tokens,
            system: [SystemBlock {
                kind: "text",
                text: &self.system_prompt,
                cache_control: CacheControl { kind: "ephemeral" },
            }],
            messages: turns,
        };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(_) => return self.fallback(new_message, FallbackReason::BadResponse, 0, started),
        };
        let mut attempts = 0;
        let mut reason = FallbackReason::Deadline;
        while attempts < self.max_attempts {
            let now = Instant::now();
            let remaining = budget_end.saturating_duration_since(now);
            if remaining < Duration::from_millis(100) {
                // `reason` is the last attempt's, or Deadline if none fitted.
                break;
            }
            attempts += 1;
            let timeout = self.attempt_timeout.min(remaining);
            match self.attempt(key, &body, timeout, started, attempts).await {
                Attempt::Done(reply) => return reply,
                Attempt::Fail(r) => {
                    reason = r;
                    break;
                }
                Attempt::Retry(r, after) => {
                    reason = r;
                    if attempts >= self.max_attempts {
                        break;
                    }
                    let backoff = after.unwrap_or_else(|| backoff(attempts));
                    let left = budget_end.saturating_duration_since(Instant::now());
                    // Only wait if a useful attempt still fits afterwards.
                    if backoff + Duration::from_millis(500) > left {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                }
            }
        }
        self.fallback(new_message, reason, attempts, started)
    }

    async fn attempt(
        &self,
        key: &SecretString,
        body: &[u8],
        timeout: Duration,
        started: Instant,
        attempts: u32,
    ) -> Attempt {
        let sent = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .header("x-api-key", key.expose_secret())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Attempt::Retry(FallbackReason::Timeout, None),
            Err(_) => return Attempt::Retry(FallbackReason::Connection, None),
        };
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Attempt::Retry(FallbackReason::Timeout, None),
            Err(_) => return Attempt::Retry(FallbackReason::Connection, None),
        };
        match status {
            200 => {}
            429 => return Attempt::Retry(FallbackReason::RateLimited, retry_after),
            529 => return Attempt::Retry(FallbackReason::Overloaded, retry_after),
            500 | 502 | 503 | 504 => {
                return Attempt::Retry(FallbackReason::ServerError, retry_after);
            }
            408 => return Attempt::Retry(FallbackReason::Timeout, retry_after),
            _ => return Attempt::Fail(FallbackReason::ClientError),
        }
        let Ok(parsed) = serde_json::from_slice::<MessagesResponse>(&bytes) else {
            return Attempt::Fail(FallbackReason::BadResponse);
        };
        if parsed.stop_reason.as_deref() == Some("refusal") {
            return Attempt::Fail(FallbackReason::Refusal);
        }
        if parsed.content.is_empty() || parsed.content.iter().any(|b| b.kind != "text") {
            return Attempt::Fail(FallbackReason::EmptyContent);
        }
        let text: String = parsed
            .content
            .iter()
            .filter_map(|b| b.text.as_deref())
            .collect::<Vec<_>>()
            .join("");
        let mut text = text.trim().to_owned();
        if parsed.stop_reason.as_deref() == Some("max_tokens") {
            match trim_to_sentence(&text) {
                Some(t) => text = t.to_owned(),
                None => return Attempt::Fail(FallbackReason::Truncated),
            }
        }
        if text.is_empty() {
            return Attempt::Fail(FallbackReason::EmptyContent);
        }
        Attempt::Done(AiReply {
            text,
            source: ReplySource::Claude,
            model: Some(parsed.model.unwrap_or_else(|| self.model.clone())),
            fallback_reason: None,
            usage: parsed.usage,
            attempts,
            latency: started.elapsed(),
        })
    }

    fn fallback(
        &self,
        new_message: &str,
        reason: FallbackReason,
        attempts: u32,
        started: Instant,
    ) -> AiReply {
        let (_, text) = self.knowledge.fallback_reply(new_message);
        AiReply {
            text,
            source: ReplySource::Fallback,
            model: None,
            fallback_reason: Some(reason),
            usage: Usage::default(),
            attempts,
            latency: started.elapsed(),
        }
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

/// The text up to its last complete sentence, if it has one.
pub fn trim_to_sentence(text: &str) -> Option<&str> {
    let mut end = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?' | '…' | '。') {
            let next = chars.peek().map(|(_, n)| *n);
            // A sentence ends at the mark followed by space/end (not "3.5" or "e.g.x").
            if next.is_none_or(|n| n.is_whitespace() || matches!(n, '"' | '\'' | ')' | '”')) {
                end = Some(i + c.len_utf8());
            }
        } else if is_emoji(c) && end.is_some_and(|e| text[e..i].trim().is_empty()) {
            // An emoji right after the end mark belongs to the sentence.
            end = Some(i + c.len_utf8());
        }
    }
    end.map(|e| text[..e].trim_end())
}

fn is_emoji(c: char) -> bool {
    matches!(c as u32, 0x1F300..=0x1FAFF | 0x2600..=0x27BF | 0xFE0F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sender: Sender, text: &str) -> StoredTurn {
        StoredTurn {
            sender,
            text: text.into(),
        }
    }

    #[test]
    fn turns_alternate_start_with_the_user_and_end_with_the_new_message_once() {
        let h = [
            t(Sender::Ai, "welcome"),
            t(Sender::User, "a"),
            t(Sender::User, "b"),
            t(Sender::Ai, "c"),
        ];
        let turns = build_turns(&h, "new", 10_000);
        let roles: Vec<_> = turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(turns[0].content, "a\n\nb");
        assert_eq!(turns[2].content, "new");
    }

    #[test]
    fn the_character_budget_keeps_the_newest_turns() {
        let h: Vec<_> = (0..50)
            .map(|i| {
                t(
                    if i % 2 == 0 { Sender::User } else { Sender::Ai },
                    &"x".repeat(1000),
                )
            })
            .collect();
        let turns = build_turns(&h, "latest question", 5_000);
        let total: usize = turns.iter().map(|t| t.content.chars().count()).sum();
        assert!(total <= 5_000, "{total}");
        assert_eq!(turns.first().unwrap().role, "user");
        assert_eq!(turns.last().unwrap().content, "latest question");
    }

    #[test]
    fn truncated_text_is_cut_at_the_last_full_sentence() {
        assert_eq!(
            trim_to_sentence("We ship fast. Orders over $50 ship fr"),
            Some("We ship fast.")
        );
        assert_eq!(
            trim_to_sentence("Great! 🎉 Returns are free within 30"),
            Some("Great! 🎉")
        );
        assert_eq!(trim_to_sentence("Version 3.5 is out and"), None);
        assert_eq!(trim_to_sentence("no sentence at all"), None);
    }

    #[test]
    fn retry_after_prefers_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }
}
