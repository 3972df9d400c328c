//! What the fake answers to one request: a [`Scenario`], built by its
//! methods, turned into a [`Plan`] (status, headers, timed body pieces) when a
//! request arrives.

use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;

use super::body::{self, Usage};
use super::sse;

/// Why the model stopped, as `stop_reason` says it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    EndTurn,
    MaxTokens,
    Refusal,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Refusal => "refusal",
        }
    }
}

/// How a stream ends. Failures happen in place of content delta `after + 1`
/// (text and tool-input deltas count; thinking deltas do not), after its wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Ending {
    #[default]
    Complete,
    /// `event: error` with an `overloaded_error`, then the stream ends.
    ErrorEvent { after: usize },
    /// The connection is cut (no terminating chunk).
    Drop { after: usize },
    /// No more bytes; the connection stays open until the client leaves.
    Stall { after: usize },
}

#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// A text reply, optionally followed by a tool call.
    Message {
        text: Option<String>,
        tool: Option<(String, Value)>,
    },
    HttpError {
        status: u16,
        retry_after: Option<String>,
        retry_after_ms: Option<String>,
    },
    Raw {
        status: u16,
        content_type: String,
        body: Bytes,
    },
}

/// One scripted answer of the fake Messages API. Streamed when the request
/// says `"stream": true`, one JSON message otherwise; the same scenario
/// serves both.
///
/// Timing: a streamed answer sends its headers and `message_start` at once,
/// the first content delta after `first_token`, every later one after `gap`.
/// A whole (non-streamed) answer, an HTTP error or a raw body arrives after
/// `first_token` plus the gaps its deltas would have taken.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub(crate) answer: Answer,
    pub(crate) chunks: usize,
    pub(crate) first_token: Duration,
    pub(crate) gap: Duration,
    pub(crate) stop_reason: StopReason,
    pub(crate) thinking: Option<String>,
    pub(crate) unknown_event: bool,
    pub(crate) ending: Ending,
}

impl Scenario {
    fn of(answer: Answer) -> Scenario {
        Scenario {
            answer,
            chunks: 1,
            first_token: Duration::ZERO,
            gap: Duration::ZERO,
            stop_reason: StopReason::EndTurn,
            thinking: None,
            unknown_event: false,
            ending: Ending::Complete,
        }
    }

    /// A text reply; any content (NUL, emoji, quotes) goes through JSON escaping.
    pub fn text(text: impl Into<String>) -> Scenario {
        Scenario::of(Answer::Message {
            text: Some(text.into()),
            tool: None,
        })
    }

    /// A `tool_use` block calling `name` with `input` (stop reason `tool_use`);
    /// streamed as `input_json_delta` pieces.
    pub fn tool_use(name: &str, input: Value) -> Scenario {
        Scenario::of(Answer::Message {
            text: None,
            tool: Some((name.to_owned(), input)),
        })
    }

    /// For [`Scenario::tool_use`]: a text block before the tool call.
    pub fn with_text(mut self, text: impl Into<String>) -> Scenario {
        if let Answer::Message { text: t, .. } = &mut self.answer {
            *t = Some(text.into());
        }
        self
    }

    /// An HTTP error with Anthropic's error body for `status` (400
    /// `invalid_request_error`, 429 `rate_limit_error`, 500 `api_error`,
    /// 529 `overloaded_error`, ...).
    pub fn http_error(status: u16) -> Scenario {
        Scenario::of(Answer::HttpError {
            status,
            retry_after: None,
            retry_after_ms: None,
        })
    }

    /// `529 overloaded_error`.
    pub fn overloaded() -> Scenario {
        Scenario::http_error(529)
    }

    /// For [`Scenario::http_error`]: a `retry-after` header (seconds, or any text).
    pub fn retry_after(mut self, value: impl ToString) -> Scenario {
        if let Answer::HttpError { retry_after, .. } = &mut self.answer {
            *retry_after = Some(value.to_string());
        }
        self
    }

    /// For [`Scenario::http_error`]: a `retry-after-ms` header.
    pub fn retry_after_ms(mut self, value: impl ToString) -> Scenario {
        if let Answer::HttpError { retry_after_ms, .. } = &mut self.answer {
            *retry_after_ms = Some(value.to_string());
        }
        self
    }

    /// Exactly these bytes with this status and content type, streamed or not.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Scenario {
        Scenario::of(Answer::Raw {
            status,
            content_type: content_type.to_owned(),
            body: body.into(),
        })
    }

    /// Splits the text (and a tool's input JSON) into `n` deltas of nearly
    /// equal length, on character boundaries; at least one.
    pub fn chunks(mut self, n: usize) -> Scenario {
        self.chunks = n.max(1);
        self
    }

    /// Time to the first content delta.
    pub fn first_token(mut self, d: Duration) -> Scenario {
        self.first_token = d;
        self
    }

    /// Time between two content deltas.
    pub fn gap(mut self, d: Duration) -> Scenario {
        self.gap = d;
        self
    }

    pub fn stop_reason(mut self, reason: StopReason) -> Scenario {
        self.stop_reason = reason;
        self
    }

    /// A `thinking` block (with its signature) before the reply; clients must skip it.
    pub fn thinking(mut self, text: impl Into<String>) -> Scenario {
        self.thinking = Some(text.into());
        self
    }

    /// An event of a type no client knows, after the first content delta;
    /// clients must ignore it.
    pub fn unknown_event(mut self) -> Scenario {
        self.unknown_event = true;
        self
    }

    /// `event: error` (`overloaded_error`) after `k` content deltas.
    /// Not streamed: `529 overloaded_error`.
    pub fn error_event_after(mut self, k: usize) -> Scenario {
        self.ending = Ending::ErrorEvent { after: k };
        self
    }

    /// Cuts the connection after `k` content deltas. Not streamed: cut before answering.
    pub fn drop_after(mut self, k: usize) -> Scenario {
        self.ending = Ending::Drop { after: k };
        self
    }

    /// Sends nothing more after `k` content deltas, keeping the connection
    /// open. Not streamed: never answers.
    pub fn stall_after(mut self, k: usize) -> Scenario {
        self.ending = Ending::Stall { after: k };
        self
    }

    /// The content deltas the answer has (thinking excluded), for timing.
    fn deltas(&self) -> usize {
        match &self.answer {
            Answer::Message { text, tool } => {
                let text = text.as_deref().map_or(0, |t| split(t, self.chunks).len());
                let tool = tool
                    .as_ref()
                    .map_or(0, |(_, input)| split(&input.to_string(), self.chunks).len());
                text + tool
            }
            _ => 0,
        }
    }

    /// How long a whole answer takes to arrive.
    fn whole_delay(&self) -> Duration {
        self.first_token + self.gap * self.deltas().saturating_sub(1) as u32
    }

    /// The response to `request` (`len` bytes of JSON).
    pub(crate) fn plan(&self, request: &Value, len: usize, streamed: bool) -> Plan {
        let usage = Usage::for_len(len);
        match &self.answer {
            Answer::HttpError {
                status,
                retry_after,
                retry_after_ms,
            } => {
                let mut headers = vec![("content-type", "application/json".to_owned())];
                if let Some(v) = retry_after {
                    headers.push(("retry-after", v.clone()));
                }
                if let Some(v) = retry_after_ms {
                    headers.push(("retry-after-ms", v.clone()));
                }
                Plan::whole(*status, headers, self.first_token, body::error(*status))
            }
            Answer::Raw {
                status,
                content_type,
                body,
            } => Plan::whole(
                *status,
                vec![("content-type", content_type.clone())],
                self.first_token,
                body.clone(),
            ),
            Answer::Message { .. } if streamed => sse::plan(self, model(request), usage),
            Answer::Message { text, tool } => self.whole(text.as_deref(), tool, request, usage),
        }
    }

    fn whole(
        &self,
        text: Option<&str>,
        tool: &Option<(String, Value)>,
        request: &Value,
        usage: Usage,
    ) -> Plan {
        let delay = self.whole_delay();
        match self.ending {
            Ending::ErrorEvent { .. } => {
                return Plan::whole(529, json_type(), delay, body::error(529));
            }
            Ending::Drop { .. } => return Plan::cut(delay, Step::Drop),
            Ending::Stall { .. } => return Plan::cut(delay, Step::Stall),
            Ending::Complete => {}
        }
        let mut content = Vec::new();
        if let Some(t) = &self.thinking {
            content.push(json!({ "type": "thinking", "thinking": t, "signature": sse::SIGNATURE }));
        }
        if let Some(t) = text {
            content.push(json!({ "type": "text", "text": t }));
        }
        let stop = match tool {
            Some((name, input)) => {
                content.push(
                    json!({ "type": "tool_use", "id": sse::TOOL_ID, "name": name, "input": input }),
                );
                "tool_use"
            }
            None => self.stop_reason.as_str(),
        };
        let out = usage.with_output(text.map_or(0, output_tokens));
        let msg = body::message(model(request), Value::Array(content), stop, &out);
        Plan::whole(200, json_type(), delay, Bytes::from(msg.to_string()))
    }
}

fn json_type() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_owned())]
}

/// The model the request named (the real API answers with the model it used).
fn model(request: &Value) -> &str {
    request["model"].as_str().unwrap_or(body::MODEL)
}

/// Roughly what a tokenizer counts: four characters a token.
pub(crate) fn output_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

/// `text` in `n` pieces of nearly equal length on character boundaries (fewer
/// when it has fewer characters; none when it is empty).
pub(crate) fn split(text: &str, n: usize) -> Vec<&str> {
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let n = n.max(1).min(chars.len());
    (0..n)
        .map(|k| {
            let from = chars[k * chars.len() / n];
            let to = chars.get((k + 1) * chars.len() / n).copied();
            &text[from..to.unwrap_or(text.len())]
        })
        .collect()
}

/// One piece of a response body, in order.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Wait(Duration),
    Bytes(Bytes),
    /// A content delta (text or tool input): bytes whose sending time is
    /// recorded ([`FakeClaude::last_tokens`](super::FakeClaude::last_tokens)).
    Token(Bytes),
    /// Cut the connection.
    Drop,
    /// Send nothing more, keep the connection.
    Stall,
}

/// A response, ready to send.
#[derive(Debug)]
pub(crate) struct Plan {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Time before the status line and headers go out.
    pub head_delay: Duration,
    /// `Some`: a body of known length (sent with content-length).
    pub whole: Option<Bytes>,
    pub steps: Vec<Step>,
}

impl Plan {
    fn whole(
        status: u16,
        headers: Vec<(&'static str, String)>,
        delay: Duration,
        body: Bytes,
    ) -> Plan {
        Plan {
            status,
            headers,
            head_delay: delay,
            whole: Some(body),
            steps: Vec::new(),
        }
    }

    /// No response at all: the connection is cut or left hanging after `delay`.
    fn cut(delay: Duration, how: Step) -> Plan {
        Plan {
            status: 0,
            headers: Vec::new(),
            head_delay: delay,
            whole: None,
            steps: vec![how],
        }
    }

    pub(crate) fn stream(steps: Vec<Step>) -> Plan {
        Plan {
            status: 200,
            headers: vec![
                (
                    "content-type",
                    "text/event-stream; charset=utf-8".to_owned(),
                ),
                ("cache-control", "no-cache".to_owned()),
            ],
            head_delay: Duration::ZERO,
            whole: None,
            steps,
        }
    }

    /// A response never starts: status 0 marks "cut or hang before the head".
    pub(crate) fn has_head(&self) -> bool {
        self.status != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_on_character_boundaries_into_at_most_n_pieces() {
        assert_eq!(split("héllo 🚚!", 3), vec!["hé", "llo", " 🚚!"]);
        assert_eq!(split("ab", 5), vec!["a", "b"]);
        assert!(split("", 4).is_empty());
        assert_eq!(split("a\u{0}b", 1), vec!["a\u{0}b"]);
    }

    #[test]
    fn a_whole_answer_waits_for_all_its_tokens() {
        let s = Scenario::text("abcdef")
            .chunks(3)
            .first_token(Duration::from_millis(100))
            .gap(Duration::from_millis(10));
        assert_eq!(s.whole_delay(), Duration::from_millis(120));
    }
}
