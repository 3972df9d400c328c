//! Domain types, parsed at the edge: once a value of these types exists it is valid.

use serde::Serialize;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

use crate::error::Error;

/// One literal for the limit, so the constant and its message cannot disagree.
macro_rules! max_message_chars {
    () => {
        2000
    };
}

/// Longest message accepted, in Unicode scalar values.
pub const MAX_MESSAGE_CHARS: usize = max_message_chars!();

/// The `invalid_message` text for a message of the wrong length.
pub const MESSAGE_LENGTH_RULE: &str =
    concat!("message must be 1 to ", max_message_chars!(), " characters");

/// A conversation id: a UUID in its canonical hyphenated form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(Uuid);

impl SessionId {
    /// Accepts the canonical 8-4-4-4-12 form (either case) only, so one
    /// session has exactly one spelling in URLs and cache keys.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() != 36 {
            return Err(Error::InvalidSessionId);
        }
        Uuid::try_parse(s)
            .map(SessionId)
            .map_err(|_| Error::InvalidSessionId)
    }

    /// A fresh, server-generated id.
    pub fn generate() -> Self {
        SessionId(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for SessionId {
    fn from(u: Uuid) -> Self {
        SessionId(u)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

/// A shopper's message: control characters (other than newline and tab)
/// removed, surrounding whitespace trimmed, 1 to 2000 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let cleaned = clean_text(raw);
        let n = cleaned.chars().count();
        if n == 0 || n > MAX_MESSAGE_CHARS {
            return Err(Error::InvalidMessage(MESSAGE_LENGTH_RULE));
        }
        Ok(MessageText(cleaned))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

/// Shoppers' text is personal data: Debug shows its length only.
impl fmt::Debug for MessageText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageText({} chars)", self.char_count())
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    User,
    Ai,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::User => "user",
            Sender::Ai => "ai",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Sender::User),
            "ai" => Some(Sender::Ai),
            _ => None,
        }
    }
}

/// One stored message as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub id: Uuid,
    pub text: String,
    pub sender: Sender,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// One earlier message of a conversation, as the adapters hand it to each
/// other: read from the store, sent to Claude as context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub sender: Sender,
    pub text: String,
}

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

/// Why the fallback answered (or why a streamed reply was cut short).
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub cache_read_tokens: Option<u32>,
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
    /// Set when this reply hands the conversation to a person.
    pub handoff: Option<HandoffReason>,
    /// Claude's text reached `max_tokens` and was cut at its last full
    /// sentence (the measure of whether `CLAUDE_MAX_TOKENS` is too small).
    pub truncated: bool,
}

/// Why a conversation was handed to a person (the webhook's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoffReason {
    /// The shopper asked for a person.
    ShopperRequest,
    /// A refund, exception or compensation someone has to decide.
    RefundDecision,
    /// Changing or cancelling a specific order.
    OrderChange,
    /// A complaint the assistant cannot resolve.
    Complaint,
    /// The store facts do not cover what the shopper needs.
    NotCovered,
}

impl HandoffReason {
    pub const ALL: [HandoffReason; 5] = [
        HandoffReason::ShopperRequest,
        HandoffReason::RefundDecision,
        HandoffReason::OrderChange,
        HandoffReason::Complaint,
        HandoffReason::NotCovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandoffReason::ShopperRequest => "shopper_request",
            HandoffReason::RefundDecision => "refund_decision",
            HandoffReason::OrderChange => "order_change",
            HandoffReason::Complaint => "complaint",
            HandoffReason::NotCovered => "not_covered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The cleaning every stored text gets, shopper's or Claude's: control
/// characters other than newline and tab (NUL included) removed, then
/// surrounding whitespace trimmed.
pub fn clean_text(raw: &str) -> String {
    strip_controls(raw).trim().to_owned()
}

/// `raw` without control characters other than newline and tab (for text
/// shown piece by piece, where trimming each piece would eat its spaces).
pub fn strip_controls(raw: &str) -> String {
    raw.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// A handoff event with what its webhook body needs.
#[derive(Debug, Clone)]
pub struct HandoffEvent {
    pub id: Uuid,
    pub session_id: SessionId,
    pub reason: HandoffReason,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The last messages up to the one that handed over, oldest first,
    /// at most 10, each text cut to 500 characters.
    pub messages: Vec<Message>,
}

/// Whether a conversation waits for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    WaitingForHuman,
}

impl SessionStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(SessionStatus::Open),
            "waiting_for_human" => Some(SessionStatus::WaitingForHuman),
            _ => None,
        }
    }
}

/// The body of `GET /api/chat/history/{sessionId}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub session_id: SessionId,
    pub messages: Vec<Message>,
    pub status: SessionStatus,
    /// Present (true) only when older messages exist beyond this page.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub has_more: bool,
}

/// Most messages one history page holds (and the default page size).
pub const MAX_PAGE: u32 = 500;

/// The paging of a history request: `limit` 1 to 500 (default 500), and
/// `before`, a message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub limit: u32,
    pub before: Option<Uuid>,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        HistoryQuery {
            limit: MAX_PAGE,
            before: None,
        }
    }
}

impl HistoryQuery {
    /// From the raw query parameters (absent ones take their defaults).
    pub fn parse(limit: Option<&str>, before: Option<&str>) -> Result<Self, Error> {
        let limit = match limit {
            None => MAX_PAGE,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or(Error::InvalidQuery("limit must be a number from 1 to 500"))?,
        };
        let before = match before {
            None => None,
            Some(v) => Some(
                Uuid::try_parse(v.trim())
                    .map_err(|_| Error::InvalidQuery("before must be a message id"))?,
            ),
        };
        Ok(HistoryQuery { limit, before })
    }

    /// What a request without paging parameters asks: the page the cache holds.
    pub fn is_default(&self) -> bool {
        *self == HistoryQuery::default()
    }
}

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// 16 to 255 printable ASCII characters (space through tilde);
    /// surrounding blanks are not part of the key. Sixteen characters at
    /// least, so a key is not guessable (a UUID is the intended choice).
    pub fn parse(raw: &[u8]) -> Result<Self, Error> {
        let raw = raw.trim_ascii();
        if raw.len() < 16 || raw.len() > 255 || !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(Error::InvalidIdempotencyKey);
        }
        // Checked ASCII above, so this cannot fail.
        let s = std::str::from_utf8(raw).map_err(|_| Error::InvalidIdempotencyKey)?;
        Ok(IdempotencyKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_removes_control_characters_then_trims() {
        let m = MessageText::parse("  \u{0}hi\u{7}\tthere\r\n ").unwrap();
        assert_eq!(m.as_str(), "hi\tthere");
    }

    #[test]
    fn message_text_counts_scalar_values_not_bytes() {
        let emoji = "😀".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(MessageText::parse(&emoji).unwrap().char_count(), 2000);
        assert!(MessageText::parse(&format!("{emoji}😀")).is_err());
    }

    #[test]
    fn message_text_debug_hides_the_text() {
        let m = MessageText::parse("my address is 1 Main St").unwrap();
        assert_eq!(format!("{m:?}"), "MessageText(23 chars)");
    }

    #[test]
    fn session_id_accepts_only_the_canonical_form() {
        assert!(SessionId::parse("550e8400-e29b-41d4-a716-446655440000").is_ok());
        assert!(SessionId::parse("550E8400-E29B-41D4-A716-446655440000").is_ok());
        assert!(SessionId::parse("550e8400e29b41d4a716446655440000").is_err());
        assert!(SessionId::parse("{550e8400-e29b-41d4-a716-446655440000}").is_err());
        assert!(SessionId::parse("not-a-uuid").is_err());
        assert!(SessionId::parse("").is_err());
    }

    #[test]
    fn idempotency_key_must_be_printable_ascii() {
        assert!(IdempotencyKey::parse(b"9f1c2b7e-0d5a-4c1e-8b3a-2f6e4d7c9a10").is_ok());
        assert!(
            IdempotencyKey::parse(b"order-1").is_err(),
            "too short to be unguessable"
        );
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"   ").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"a\nb").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
    }
}
