//! The Messages API on the wire: the request body, and pure parsers for both
//! answers it gives: one JSON message, or (with `"stream": true`) a sequence
//! of Server-Sent Events folded by [`StreamState`]. Content blocks are read
//! by their `type`, never by position: `thinking` blocks are skipped, `text`
//! blocks are the reply, a `tool_use` of [`HAND_OFF_TOOL`] is the handoff
//! signal; unknown blocks and events are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::ApiMessage;
use crate::domain::{FallbackReason, HandoffReason, Usage, clean_text, strip_controls};

/// The tool Claude calls to hand the shopper to a person.
pub const HAND_OFF_TOOL: &str = "hand_off";

#[derive(Serialize)]
pub struct SystemBlock<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
    pub cache_control: CacheControl,
}

#[derive(Serialize)]
pub struct CacheControl {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Serialize)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: &'static str,
}

#[derive(Serialize)]
pub struct MessagesRequest<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub system: [SystemBlock<'a>; 1],
    pub messages: &'a [ApiMessage],
    /// Off: `max_tokens` is all reply.
    pub thinking: Thinking,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// The `tools` array: one `hand_off` tool whose reason is one of ours.
pub fn hand_off_tools() -> Value {
    let reasons: Vec<&str> = HandoffReason::ALL.iter().map(|r| r.as_str()).collect();
    serde_json::json!([{
        "name": HAND_OFF_TOOL,
        "description": "Hand the conversation to a person on the store's support team. Use it when the shopper asks to talk to a human, agent or real person (in any language), or needs something you cannot do from the store facts: a refund or exception decision, changing or cancelling a specific order, or a complaint you cannot resolve. Do not use it for questions the store facts answer.",
        "input_schema": {
            "type": "object",
            "properties": { "reason": { "type": "string", "enum": reasons } },
            "required": ["reason"]
        }
    }])
}

/// What one attempt obtained, before the reply rules are applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub model: Option<String>,
    pub text: String,
    pub stop_reason: Option<String>,
    pub usage: Usage,
    pub handoff: Option<HandoffReason>,
}

/// Anthropic's usage object; every field optional (a stream sends them in parts).
#[derive(Debug, Default, Deserialize)]
struct ApiUsage {
    input_tokens: Option<u32>,
    output_tokens: Option<u32>,
    cache_read_input_tokens: Option<u32>,
    cache_creation_input_tokens: Option<u32>,
}

impl ApiUsage {
    /// Later figures win: `message_delta` carries cumulative counts.
    fn merge_into(self, u: &mut Usage) {
        let pairs = [
            (self.input_tokens, &mut u.input_tokens),
            (self.output_tokens, &mut u.output_tokens),
            (self.cache_read_input_tokens, &mut u.cache_read_tokens),
            (self.cache_creation_input_tokens, &mut u.cache_write_tokens),
        ];
        for (new, slot) in pairs {
            if new.is_some() {
                *slot = new;
            }
        }
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

/// The reason a `hand_off` call gave; an unknown one still hands off.
fn handoff_reason(input: &Value) -> HandoffReason {
    input
        .get("reason")
        .and_then(Value::as_str)
        .and_then(HandoffReason::parse)
        .unwrap_or(HandoffReason::NotCovered)
}

/// Parses a non-streamed Messages API response.
pub fn parse_message(body: &[u8]) -> Result<Parsed, FallbackReason> {
    let resp: MessagesResponse =
        serde_json::from_slice(body).map_err(|_| FallbackReason::BadResponse)?;
    let mut parsed = Parsed {
        model: resp.model,
        stop_reason: resp.stop_reason,
        ..Parsed::default()
    };
    if let Some(u) = resp.usage {
        u.merge_into(&mut parsed.usage);
    }
    for block in resp.content {
        match block.kind.as_str() {
            "text" => parsed
                .text
                .push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" if block.name.as_deref() == Some(HAND_OFF_TOOL) => {
                parsed.handoff = Some(handoff_reason(&block.input.unwrap_or_default()));
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// The reply rules, the same for streamed and whole answers: a refusal or
/// nothing usable is a fallback; text is cleaned like shopper input; a reply
/// cut by `max_tokens` ends at its last full sentence.
pub fn finish(mut parsed: Parsed) -> Result<Parsed, FallbackReason> {
    if parsed.stop_reason.as_deref() == Some("refusal") {
        return Err(FallbackReason::Refusal);
    }
    parsed.text = clean_text(&parsed.text);
    if parsed.handoff.is_some() {
        // The handoff reply is ours; Claude's words before the call are not needed.
        return Ok(parsed);
    }
    if parsed.stop_reason.as_deref() == Some("tool_use") {
        // It wanted a tool we do not offer: what it wrote first is half an answer.
        return Err(FallbackReason::EmptyContent);
    }
    if parsed.stop_reason.as_deref() == Some("max_tokens") {
        let cut = trim_to_sentence(&parsed.text).ok_or(FallbackReason::Truncated)?;
        parsed.text = cut.to_owned();
    }
    if parsed.text.is_empty() {
        return Err(FallbackReason::EmptyContent);
    }
    Ok(parsed)
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

/// What one stream event means to the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Reply text to pass on to the shopper now.
    Delta(String),
    /// `message_stop`: the answer is complete.
    Stop,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    #[default]
    None,
    Text,
    HandOff,
    /// Thinking, other tools, unknown blocks: skipped.
    Other,
}

/// Folds the events of a streamed answer into a [`Parsed`].
#[derive(Debug, Default)]
pub struct StreamState {
    parsed: Parsed,
    block: BlockKind,
    tool_json: String,
}

impl StreamState {
    /// Applies one event (`event:` name and `data:` JSON). An `error` event,
    /// or data that is not the JSON the event promises, ends the attempt.
    pub fn apply(&mut self, event: &str, data: &str) -> Result<Step, FallbackReason> {
        if matches!(event, "ping" | "") {
            return Ok(Step::Nothing);
        }
        let v: Value = serde_json::from_str(data).map_err(|_| FallbackReason::BadResponse)?;
        match event {
            "message_start" => self.message_start(&v["message"]),
            "content_block_start" => return Ok(self.block_start(&v["content_block"])),
            "content_block_delta" => return Ok(self.block_delta(&v["delta"])),
            "content_block_stop" => self.block_stop(),
            "message_delta" => self.message_delta(&v),
            "message_stop" => return Ok(Step::Stop),
            "error" => return Err(stream_error(&v)),
            _ => {}
        }
        Ok(Step::Nothing)
    }

    pub fn into_parsed(self) -> Parsed {
        self.parsed
    }

    fn message_start(&mut self, message: &Value) {
        if let Some(m) = message.get("model").and_then(Value::as_str) {
            self.parsed.model = Some(m.to_owned());
        }
        merge_usage(message.get("usage"), &mut self.parsed.usage);
    }

    fn block_start(&mut self, block: &Value) -> Step {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = block.get("name").and_then(Value::as_str);
        self.block = match (kind, name) {
            ("text", _) => BlockKind::Text,
            ("tool_use", Some(HAND_OFF_TOOL)) => BlockKind::HandOff,
            _ => BlockKind::Other,
        };
        self.tool_json.clear();
        match block.get("text").and_then(Value::as_str) {
            Some(t) if self.block == BlockKind::Text && !t.is_empty() => self.text(t),
            _ => Step::Nothing,
        }
    }

    fn block_delta(&mut self, delta: &Value) -> Step {
        let kind = delta
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (self.block, kind) {
            (BlockKind::Text, "text_delta") => {
                let t = delta
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.text(t)
            }
            (BlockKind::HandOff, "input_json_delta") => {
                let part = delta.get("partial_json").and_then(Value::as_str);
                self.tool_json.push_str(part.unwrap_or_default());
                Step::Nothing
            }
            _ => Step::Nothing,
        }
    }

    fn text(&mut self, t: &str) -> Step {
        self.parsed.text.push_str(t);
        let shown = strip_controls(t);
        if shown.is_empty() {
            Step::Nothing
        } else {
            Step::Delta(shown)
        }
    }

    fn block_stop(&mut self) {
        if self.block == BlockKind::HandOff {
            let input = serde_json::from_str(&self.tool_json).unwrap_or_default();
            self.parsed.handoff = Some(handoff_reason(&input));
        }
        self.block = BlockKind::None;
    }

    fn message_delta(&mut self, v: &Value) {
        if let Some(r) = v["delta"].get("stop_reason").and_then(Value::as_str) {
            self.parsed.stop_reason = Some(r.to_owned());
        }
        merge_usage(v.get("usage"), &mut self.parsed.usage);
    }
}

fn merge_usage(v: Option<&Value>, usage: &mut Usage) {
    if let Some(u) = v.and_then(|u| ApiUsage::deserialize(u).ok()) {
        u.merge_into(usage);
    }
}

/// An `error` event's type, as a fallback reason.
fn stream_error(v: &Value) -> FallbackReason {
    match v["error"].get("type").and_then(Value::as_str) {
        Some("overloaded_error") => FallbackReason::Overloaded,
        Some("rate_limit_error") => FallbackReason::RateLimited,
        Some("invalid_request_error" | "authentication_error" | "permission_error") => {
            FallbackReason::ClientError
        }
        _ => FallbackReason::ServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(events: &[(&str, &str)]) -> (Vec<String>, Result<Parsed, FallbackReason>) {
        let mut state = StreamState::default();
        let mut deltas = Vec::new();
        for (e, d) in events {
            match state.apply(e, d) {
                Ok(Step::Delta(t)) => deltas.push(t),
                Ok(Step::Stop) => return (deltas, Ok(state.into_parsed())),
                Ok(Step::Nothing) => {}
                Err(r) => return (deltas, Err(r)),
            }
        }
        (deltas, Err(FallbackReason::Connection))
    }

    const START: (&str, &str) = (
        "message_start",
        r#"{"type":"message_start","message":{"model":"claude-haiku-5-5","usage":{"input_tokens":900,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":1}}}"#,
    );

    #[test]
    fn a_stream_folds_into_text_usage_and_stop_reason() {
        let (deltas, parsed) = fold(&[
            START,
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
            ),
            ("content_block_stop", r#"{"index":0}"#),
            (
                "content_block_start",
                r#"{"index":1,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":1,"delta":{"type":"text_delta","text":"We ship "}}"#,
            ),
            ("brand_new_event", r#"{"anything":true}"#),
            (
                "content_block_delta",
                r#"{"index":1,"delta":{"type":"text_delta","text":"fast.\u0000"}}"#,
            ),
            ("content_block_stop", r#"{"index":1}"#),
            (
                "message_delta",
                r#"{"delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        assert_eq!(deltas, ["We ship ", "fast."]);
        let parsed = finish(parsed.unwrap()).unwrap();
        assert_eq!(parsed.text, "We ship fast.");
        assert_eq!(parsed.model.as_deref(), Some("claude-haiku-5-5"));
        assert_eq!(parsed.usage.input_tokens, Some(900));
        assert_eq!(parsed.usage.output_tokens, Some(42));
        assert_eq!(parsed.stop_reason.as_deref(), Some("end_turn"));
    }

    #[test]
    fn an_error_event_mid_stream_ends_the_attempt_with_its_reason() {
        let (deltas, r) = fold(&[
            START,
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ),
        ]);
        assert_eq!(deltas, ["Hi"]);
        assert_eq!(r, Err(FallbackReason::Overloaded));
    }

    #[test]
    fn a_hand_off_tool_call_is_read_from_its_streamed_input() {
        let (_, parsed) = fold(&[
            START,
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"tool_use","id":"t1","name":"hand_off","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"input_json_delta","partial_json":"{\"reason\": \"shop"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"input_json_delta","partial_json":"per_request\"}"}}"#,
            ),
            ("content_block_stop", r#"{"index":0}"#),
            ("message_delta", r#"{"delta":{"stop_reason":"tool_use"}}"#),
            ("message_stop", "{}"),
        ]);
        let parsed = finish(parsed.unwrap()).unwrap();
        assert_eq!(parsed.handoff, Some(HandoffReason::ShopperRequest));
    }

    #[test]
    fn a_whole_message_is_read_by_block_type() {
        let body = br#"{"model":"m","stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":3},
            "content":[{"type":"thinking","thinking":"x"},{"type":"text","text":"Hi\u0000 there"}]}"#;
        let parsed = finish(parse_message(body).unwrap()).unwrap();
        assert_eq!(parsed.text, "Hi there");
        assert_eq!(parsed.usage.output_tokens, Some(3));
    }

    #[test]
    fn refusals_empty_and_garbage_are_fallbacks() {
        let refusal = br#"{"content":[{"type":"text","text":"no"}],"stop_reason":"refusal"}"#;
        assert_eq!(
            finish(parse_message(refusal).unwrap()),
            Err(FallbackReason::Refusal)
        );
        let empty = br#"{"content":[{"type":"text","text":" \u0000 "}]}"#;
        assert_eq!(
            finish(parse_message(empty).unwrap()),
            Err(FallbackReason::EmptyContent)
        );
        assert_eq!(parse_message(b"<html>"), Err(FallbackReason::BadResponse));
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
}
