//! A streamed answer as the real API sends it: `message_start`, per block
//! `content_block_start` / `content_block_delta`s / `content_block_stop`,
//! a `ping` after the first block starts, `message_delta` with the stop reason
//! and the cumulative usage, `message_stop`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::body::{self, Usage};
use super::scenario::{Answer, Ending, Plan, Scenario, Step, output_tokens, split};

pub(crate) const SIGNATURE: &str =
    "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds1Nk3Q8pXyZ4Bb7Xx0";
pub(crate) const TOOL_ID: &str = "toolu_01A09q90qw90lq917835lq9";

/// The steps of a streamed [`Answer::Message`].
pub(crate) fn plan(s: &Scenario, model: &str, usage: Usage) -> Plan {
    let mut w = Writer {
        s,
        steps: Vec::new(),
        block: 0,
        counted: 0,
        started: false,
        pinged: false,
    };
    w.event(
        "message_start",
        json!({ "type": "message_start", "message": {
            "id": body::message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage.to_json()
        }}),
    );
    let ended = w.blocks().is_none() || w.fail_at_end().is_none();
    if !ended {
        let (stop, out) = outcome(s);
        w.event(
            "message_delta",
            json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop, "stop_sequence": null },
                    "usage": usage.with_output(out).to_json() }),
        );
        w.event("message_stop", json!({ "type": "message_stop" }));
    }
    Plan::stream(w.steps)
}

fn event_bytes(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The stop reason and the output tokens of the whole answer.
fn outcome(s: &Scenario) -> (&'static str, u64) {
    let Answer::Message { text, tool } = &s.answer else {
        return (s.stop_reason.as_str(), 1);
    };
    let text_tokens = text.as_deref().map_or(0, output_tokens);
    match tool {
        Some((_, input)) => ("tool_use", text_tokens + output_tokens(&input.to_string())),
        None => (s.stop_reason.as_str(), text_tokens),
    }
}

struct Writer<'a> {
    s: &'a Scenario,
    steps: Vec<Step>,
    /// Index of the next content block.
    block: usize,
    /// Text and tool-input deltas sent so far.
    counted: usize,
    /// Whether any content delta has been sent (the first waits `first_token`).
    started: bool,
    pinged: bool,
}

impl Writer<'_> {
    fn event(&mut self, name: &str, data: Value) {
        self.steps.push(Step::Bytes(event_bytes(name, &data)));
    }

    fn wait(&mut self) {
        let d = if self.started {
            self.s.gap
        } else {
            self.s.first_token
        };
        self.started = true;
        if !d.is_zero() {
            self.steps.push(Step::Wait(d));
        }
    }

    /// The content blocks; `None` when a failure ended the stream.
    fn blocks(&mut self) -> Option<()> {
        let Answer::Message { text, tool } = &self.s.answer else {
            return Some(());
        };
        if let Some(thinking) = self.s.thinking.clone() {
            self.thinking(&thinking);
        }
        if let Some(text) = text {
            let start = json!({ "type": "text", "text": "" });
            let pieces = split(text, self.s.chunks);
            self.block_of(
                start,
                &pieces,
                |t| json!({ "type": "text_delta", "text": t }),
            )?;
        }
        if let Some((name, input)) = tool {
            let start = json!({ "type": "tool_use", "id": TOOL_ID, "name": name, "input": {} });
            let input = input.to_string();
            let pieces = split(&input, self.s.chunks);
            let delta = |p: &str| json!({ "type": "input_json_delta", "partial_json": p });
            self.block_of(start, &pieces, delta)?;
        }
        Some(())
    }

    fn start_block(&mut self, content_block: Value) -> usize {
        let index = self.block;
        self.block += 1;
        self.event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": content_block }),
        );
        if !self.pinged {
            self.pinged = true;
            self.event("ping", json!({ "type": "ping" }));
        }
        index
    }

    fn delta(&mut self, index: usize, delta: Value) {
        self.event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        );
    }

    /// A delta that counts as a token: [`Step::Token`], its sending time recorded.
    fn token(&mut self, index: usize, delta: Value) {
        let data = json!({ "type": "content_block_delta", "index": index, "delta": delta });
        self.steps
            .push(Step::Token(event_bytes("content_block_delta", &data)));
    }

    fn stop_block(&mut self, index: usize) {
        self.event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        );
    }

    fn thinking(&mut self, text: &str) {
        self.wait();
        let index = self.start_block(json!({ "type": "thinking", "thinking": "" }));
        self.delta(index, json!({ "type": "thinking_delta", "thinking": text }));
        self.delta(
            index,
            json!({ "type": "signature_delta", "signature": SIGNATURE }),
        );
        self.stop_block(index);
    }

    /// One text or tool block whose deltas count towards a scripted failure.
    fn block_of(
        &mut self,
        start: Value,
        pieces: &[&str],
        delta: impl Fn(&str) -> Value,
    ) -> Option<()> {
        let mut index = None;
        let tool = start["type"] == "tool_use";
        for piece in pieces {
            self.wait();
            self.fail_before_delta()?;
            let i = match index {
                Some(i) => i,
                None => {
                    let i = self.start_block(start.clone());
                    if tool {
                        // The real API opens a tool's input with an empty piece.
                        self.delta(i, json!({ "type": "input_json_delta", "partial_json": "" }));
                    }
                    *index.insert(i)
                }
            };
            self.token(i, delta(piece));
            self.counted += 1;
            if self.counted == 1 && self.s.unknown_event {
                self.event(
                    "fake_future_event",
                    json!({ "type": "fake_future_event", "index": i, "note": "clients ignore event types they do not know" }),
                );
            }
        }
        let i = index.unwrap_or_else(|| self.start_block(start));
        self.stop_block(i);
        Some(())
    }

    /// The scripted failure, in place of delta `after + 1`.
    fn fail_before_delta(&mut self) -> Option<()> {
        match self.s.ending {
            Ending::ErrorEvent { after } | Ending::Drop { after } | Ending::Stall { after }
                if after == self.counted =>
            {
                self.fail();
                None
            }
            _ => Some(()),
        }
    }

    /// A failure scripted after more deltas than the answer has: at its end.
    fn fail_at_end(&mut self) -> Option<()> {
        if self.s.ending == Ending::Complete {
            return Some(());
        }
        self.wait();
        self.fail();
        None
    }

    fn fail(&mut self) {
        match self.s.ending {
            Ending::ErrorEvent { .. } => self.event(
                "error",
                json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
            ),
            Ending::Drop { .. } => self.steps.push(Step::Drop),
            Ending::Stall { .. } => self.steps.push(Step::Stall),
            Ending::Complete => {}
        }
    }
}
