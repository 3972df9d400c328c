//! Markers a browser test writes into the shopper's message to provoke what
//! the `fake-claude` binary otherwise never does.

use serde_json::{Value, json};
use std::time::Duration;

use super::scenario::Scenario;

/// The gap between deltas under `[[slow]]`.
pub const SLOW_GAP: Duration = Duration::from_millis(300);

/// The short text that comes with a `[[tool:hand_off]]` call.
pub const HAND_OFF_TEXT: &str = "Let me get a person from our team for you.";

/// The text of the last `user` message of a Messages API request (string
/// content, or its text blocks joined).
pub fn last_user_text(request: &Value) -> String {
    let Some(last) = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The scenario a marker in the shopper's last message asks for, built on
/// `base` (its timing and reply):
///
/// - `[[fail:NNN]]`: HTTP NNN with Anthropic's error body (`[[fail:529]]`: overloaded);
/// - `[[tool:NAME]]`: a NAME tool call (`{"reason":"shopper_request"}`) after a short text;
/// - `[[slow]]`: `base` with a 300 ms gap between deltas.
///
/// `None` without a marker.
pub fn scenario_for(base: &Scenario, request: &Value) -> Option<Scenario> {
    let text = last_user_text(request);
    if let Some(status) = between(&text, "[[fail:", "]]").and_then(|s| s.parse::<u16>().ok()) {
        return Some(Scenario::http_error(status).first_token(base.first_token));
    }
    if let Some(name) = between(&text, "[[tool:", "]]") {
        let tool = Scenario::tool_use(name, json!({ "reason": "shopper_request" }))
            .with_text(HAND_OFF_TEXT)
            .chunks(base.chunks)
            .first_token(base.first_token)
            .gap(base.gap);
        return Some(tool);
    }
    if text.contains("[[slow]]") {
        return Some(base.clone().gap(SLOW_GAP));
    }
    None
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let from = text.find(open)? + open.len();
    let len = text[from..].find(close)?;
    Some(&text[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(text: &str) -> Value {
        json!({ "messages": [
            { "role": "user", "content": "earlier [[fail:500]]" },
            { "role": "assistant", "content": "ok" },
            { "role": "user", "content": [{ "type": "text", "text": text }] }
        ]})
    }

    #[test]
    fn only_the_last_user_message_counts() {
        let base = Scenario::text("hi");
        assert!(scenario_for(&base, &asking("plain question")).is_none());
        let s = scenario_for(&base, &asking("please [[fail:529]]")).unwrap();
        assert_eq!(s.plan(&Value::Null, 0, true).status, 529);
        let s = scenario_for(&base, &asking("[[slow]] hello")).unwrap();
        assert_eq!(s.gap, SLOW_GAP);
        let s = scenario_for(&base, &asking("a human [[tool:hand_off]]")).unwrap();
        let whole = s.plan(&Value::Null, 0, false).whole.unwrap();
        let v: Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][1]["name"], "hand_off");
        assert_eq!(v["content"][1]["input"]["reason"], "shopper_request");
    }
}
