//! The fake Anthropic Messages API: body builders for wiremock-based tests
//! ([`claude_says`], [`error_json`]) and [`FakeClaude`], a real local server
//! scripted per request with [`Scenario`]s, streaming (`"stream": true`) the
//! real event sequence or answering one JSON message.

mod body;
pub mod markers;
mod scenario;
mod server;
mod sse;

pub use body::{MODEL, REPLY, claude_says, error_json, error_type};
pub use scenario::{Scenario, StopReason};
pub use server::{Builder, FakeClaude, Received, Route, TokenTimes};

#[cfg(test)]
mod tests;
