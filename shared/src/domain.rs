//! Domain types, parsed at the edge: once a value of these types exists it is valid.

use serde::Serialize;
use std::fmt;
use uuid::Uuid;

use crate::error::Error;

/// Longest message accepted, in Unicode scalar values.
pub const MAX_MESSAGE_CHARS: usize = 2000;

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
        let cleaned: String = raw
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect();
        let trimmed = cleaned.trim();
        let n = trimmed.chars().count();
        if n == 0 || n > MAX_MESSAGE_CHARS {
            return Err(Error::InvalidMessage(
                "message must be 1 to 2000 characters",
            ));
        }
        Ok(MessageText(trimmed.to_owned()))
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

/// The body of `GET /api/chat/history/{sessionId}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub session_id: SessionId,
    pub messages: Vec<Message>,
}

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// 1 to 255 printable ASCII characters (space through tilde), not all
    /// blank; surrounding blanks are not part of the key.
    pub fn parse(raw: &[u8]) -> Result<Self, Error> {
        let raw = raw.trim_ascii();
        if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
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
        assert!(IdempotencyKey::parse(b"abc-123").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"   ").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"a\nb").is_err());
        assert!(IdempotencyKey::parse("é".as_bytes()).is_err());
    }
}
