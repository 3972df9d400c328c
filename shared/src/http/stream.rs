//! The response body of `send-message`: whole (JSON), or a stream of
//! Server-Sent Events fed by the task that completes the exchange. Each
//! event is its own frame, handed to the runtime as soon as it is written:
//! nothing is buffered between Claude and the shopper.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::service::SendOutcome;

/// Either the whole body, or the events as they come.
#[derive(Debug)]
pub enum ChatBody {
    Whole(Option<Bytes>),
    Events(mpsc::UnboundedReceiver<Bytes>),
}

impl ChatBody {
    /// The whole body. An empty one has no frame at all: under the
    /// streaming runner a zero-length frame becomes a zero-length chunk,
    /// which ends the chunked response early and broke the runtime's
    /// connection (a 204 preflight killed the process under `cargo lambda
    /// watch`).
    pub fn whole(body: impl Into<Bytes>) -> Self {
        let body = body.into();
        ChatBody::Whole((!body.is_empty()).then_some(body))
    }
}

impl Body for ChatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ChatBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            // Events are never empty (each is at least its `event:` line).
            ChatBody::Events(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ChatBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ChatBody::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ChatBody::Whole(None) => SizeHint::with_exact(0),
            ChatBody::Events(_) => SizeHint::default(),
        }
    }
}

/// One Server-Sent Event. JSON data never holds a raw newline.
pub fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub fn session(out_sid: &impl serde::Serialize) -> Bytes {
    event("session", &json!({ "sessionId": out_sid }))
}

pub fn delta(text: &str) -> Bytes {
    event("delta", &json!({ "text": text }))
}

/// `done`: the stored reply, authoritative.
pub fn done(out: &SendOutcome) -> Bytes {
    event("done", &reply_json(out))
}

/// `error`: the reply could not be stored after the stream began.
pub fn error(e: &Error) -> Bytes {
    event(
        "error",
        &json!({ "error": { "code": e.code(), "message": e.to_string() } }),
    )
}

/// The reply as the JSON response and the `done` event carry it.
pub fn reply_json(out: &SendOutcome) -> Value {
    let mut v = json!({ "reply": out.reply, "sessionId": out.session_id });
    if let Some(id) = out.message_id {
        v["messageId"] = json!(id);
    }
    if out.handoff {
        v["handoff"] = json!(true);
    }
    v
}
