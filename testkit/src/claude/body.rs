//! Messages API bodies: a whole message, an error, the usage object.

use bytes::Bytes;
use serde_json::{Value, json};

/// The model the fake answers as when a request names none.
pub const MODEL: &str = "claude-haiku-4-5-20251001";

/// A friendly two-sentence answer, about the length of a real reply at
/// `CLAUDE_MAX_TOKENS=100`: the bench's and the `fake-claude` binary's default.
pub const REPLY: &str = "We ship worldwide 🚚 Standard delivery takes 3-5 business days and is \
free on orders over $50; express delivery takes 1-2 business days for $12. You will get a tracking \
link by email as soon as your order leaves our warehouse.";

/// A successful (non-streamed) Messages API response carrying `text`.
pub fn claude_says(text: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{ "type": "text", "text": text }],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": { "input_tokens": 812, "output_tokens": 23, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 790 }
    })
}

/// A whole message with these content blocks.
pub(crate) fn message(model: &str, content: Value, stop_reason: &str, usage: &Usage) -> Value {
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage.to_json()
    })
}

pub(crate) fn message_id() -> String {
    format!("msg_01{}", &uuid::Uuid::new_v4().simple().to_string()[..22])
}

/// The error `type` Anthropic uses for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body for `status`.
pub fn error_json(status: u16) -> Value {
    let kind = error_type(status);
    let message = match kind {
        "overloaded_error" => "Overloaded".to_owned(),
        "rate_limit_error" => {
            "Number of request tokens has exceeded your per-minute rate limit".to_owned()
        }
        "api_error" => "Internal server error".to_owned(),
        other => format!("fake {other}"),
    };
    json!({
        "type": "error",
        "error": { "type": kind, "message": message },
        "request_id": format!("req_011{}", &uuid::Uuid::new_v4().simple().to_string()[..21])
    })
}

pub(crate) fn error(status: u16) -> Bytes {
    Bytes::from(error_json(status).to_string())
}

/// The usage object; `output_tokens` grows as a stream goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    pub input: u64,
    pub output: u64,
}

impl Usage {
    /// Input tokens estimated from the request body's size, so longer contexts cost more.
    pub(crate) fn for_len(len: usize) -> Usage {
        Usage {
            input: (len as u64 / 4).max(1),
            output: 1,
        }
    }

    pub(crate) fn with_output(self, output: u64) -> Usage {
        Usage {
            output: output.max(1),
            ..self
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": self.output
        })
    }
}
