//! The handoff webhook: the JSON body the store receives, its signature,
//! and one bounded delivery attempt.
//!
//! The body is built from the stored event, so every retry of an event sends
//! the same bytes; `id` lets receivers drop duplicates (delivery is at least
//! once). `text` is one line Slack and Teams show as is; the shopper's words
//! in it are escaped (`&`, `<`, `>`) so they cannot mention `<!channel>` or
//! forge a link. Errors never carry the URL: Slack's and Teams' URLs are
//! secrets.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use std::time::Duration;

use crate::config::HandoffConfig;
use crate::domain::{HandoffEvent, Message, Sender, SessionId};

/// How a delivery failed; `Display` is safe to log and store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("status {0}")]
    Status(u16),
    #[error("timeout")]
    Timeout,
    #[error("connection")]
    Connection,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    session_id: SessionId,
    reason: &'static str,
    created_at: i64,
    messages: &'a [Message],
    text: String,
}

/// The webhook client; without a URL it sends nothing.
#[derive(Clone)]
pub struct Notifier {
    http: reqwest::Client,
    url: Option<SecretString>,
    secret: Option<SecretString>,
    timeout: Duration,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("configured", &self.url.is_some())
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Notifier {
    pub fn new(cfg: &HandoffConfig) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("support-chat/", env!("CARGO_PKG_VERSION")));
        if let Ok(tls) = crate::tls::client_config(None) {
            builder = builder.tls_backend_preconfigured((*tls).clone());
        }
        Ok(Notifier {
            http: builder.build()?,
            url: cfg.webhook_url.clone(),
            secret: cfg.webhook_secret.clone(),
            timeout: cfg.timeout,
        })
    }

    pub fn is_configured(&self) -> bool {
        self.url.is_some()
    }

    /// One attempt, within `self.timeout` and `limit`. Any 2xx is delivered.
    pub async fn deliver(
        &self,
        event: &HandoffEvent,
        limit: Duration,
    ) -> Result<(), DeliveryError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let body = body(event);
        let mut req = self
            .http
            .post(url.expose_secret())
            .header("content-type", "application/json")
            .header("x-handoff-event-id", event.id.to_string());
        if let Some(secret) = &self.secret {
            req = req.header("x-signature-256", signature(secret, &body));
        }
        let sent = tokio::time::timeout(self.timeout.min(limit), req.body(body).send()).await;
        match sent {
            Err(_) => Err(DeliveryError::Timeout),
            Ok(Err(e)) if e.is_timeout() => Err(DeliveryError::Timeout),
            Ok(Err(_)) => Err(DeliveryError::Connection),
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(DeliveryError::Status(r.status().as_u16())),
        }
    }
}

/// The exact bytes posted for `event`.
pub fn body(event: &HandoffEvent) -> Vec<u8> {
    let payload = Payload {
        id: event.id.to_string(),
        kind: "handoff",
        session_id: event.session_id,
        reason: event.reason.as_str(),
        created_at: event.created_at,
        messages: &event.messages,
        text: summary(event),
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body>`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One readable line: who waits, and their last words.
fn summary(event: &HandoffEvent) -> String {
    let last = event
        .messages
        .iter()
        .rev()
        .find(|m| m.sender == Sender::User)
        .map(|m| m.text.as_str())
        .unwrap_or_default();
    let one_line: String = last.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut quoted: String = one_line.chars().take(200).collect();
    if one_line.chars().count() > 200 {
        quoted.push('…');
    }
    let escaped = quoted
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "A shopper is waiting for a person ({}): \"{escaped}\"",
        event.reason.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HandoffReason;

    fn event(text: &str) -> HandoffEvent {
        HandoffEvent {
            id: uuid::Uuid::nil(),
            session_id: SessionId::generate(),
            reason: HandoffReason::ShopperRequest,
            created_at: 1_704_067_205_000,
            messages: vec![Message {
                id: uuid::Uuid::nil(),
                text: text.into(),
                sender: Sender::User,
                timestamp: 1_704_067_200_000,
            }],
        }
    }

    #[test]
    fn the_summary_is_one_escaped_line() {
        let s = summary(&event("Can I talk\nto a person? <!channel> & now"));
        assert_eq!(
            s,
            "A shopper is waiting for a person (shopper_request): \"Can I talk to a person? &lt;!channel&gt; &amp; now\""
        );
    }

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        let secret = SecretString::from("Jefe".to_owned());
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_body_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_slice(&body(&event("hi"))).unwrap();
        for k in [
            "id",
            "type",
            "sessionId",
            "reason",
            "createdAt",
            "messages",
            "text",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["type"], "handoff");
        assert_eq!(v["messages"][0]["sender"], "user");
    }
}
