//! What the tests, the bench and the end-to-end scripts share, written once.
//!
//! - [`events`]: API Gateway events (payload 2.0 and 1.0) for `POST /api/chat`
//!   and `GET /api/chat/history/{id}`, as JSON or as a `lambda_http::Request`.
//! - [`claude`]: the fake Anthropic Messages API, as response bodies (for
//!   wiremock) and as [`claude::FakeClaude`], a local server that streams.
//!
//! # The `fake-claude` binary
//!
//! For scripts and browser tests: a [`claude::FakeClaude`] on a fixed port.
//!
//! ```text
//! fake-claude --port P [--first-token-ms N] [--gap-ms N] [--reply TEXT] [--chunks N]
//! ```
//!
//! - `--port P`: listens on 127.0.0.1:P (required); prints
//!   `listening on 127.0.0.1:P` once it accepts connections.
//! - `--first-token-ms N` (default 150): time to the first streamed delta
//!   (a whole answer comes after the time all its deltas would take).
//! - `--gap-ms N` (default 40): time between two streamed deltas.
//! - `--reply TEXT` (default [`claude::REPLY`], a friendly two-sentence answer).
//! - `--chunks N` (default 8): deltas the reply is streamed in.
//!
//! Streamed and non-streamed requests both get the reply. A marker in the
//! shopper's last message changes the answer ([`claude::markers`]):
//!
//! - `[[fail:529]]`: `529 overloaded_error` (any status after `fail:` works);
//! - `[[tool:hand_off]]`: a short text, then a `hand_off` tool call with input
//!   `{"reason":"shopper_request"}`;
//! - `[[slow]]`: a 300 ms gap between deltas.

pub mod claude;
pub mod events;
