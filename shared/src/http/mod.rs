//! The API Gateway edge: decodes requests (payload 1.0 and 2.0, via
//! `lambda_http`), parses them into domain types (`parse`), calls the
//! service, and renders responses, streams ([`stream`]) and errors
//! (`render`).

mod parse;
mod render;
pub mod stream;

pub use parse::{MAX_BODY_BYTES, parse_body, parse_send};
pub use stream::ChatBody;

use lambda_http::http::{HeaderValue, Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{Instrument, Span, error, info, info_span};

use crate::domain::SessionId;
use crate::error::Error;
use crate::metrics::Doc;
use crate::service::{App, CacheOutcome, SendOutcome, Started};
use render::{error_response, preflight, respond};

/// Per-request facts every response needs.
struct Meta {
    request_id: String,
    origin: Option<HeaderValue>,
    deadline: Option<Instant>,
}

impl Meta {
    fn of(req: &Request) -> Self {
        let request_id = req
            .lambda_context_ref()
            .map(|c| c.request_id.clone())
            .filter(|id| !id.is_empty())
            .or_else(|| match req.request_context_ref() {
                Some(RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
                Some(RequestContext::ApiGatewayV1(c)) => c.request_id.clone(),
                _ => None,
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        // cargo-lambda and the real runtime both set it.
        let deadline = req
            .lambda_context_ref()
            .and_then(crate::deadline::remaining)
            .map(|left| Instant::now() + left);
        Meta {
            request_id,
            origin: req
                .headers()
                .get(lambda_http::http::header::ORIGIN)
                .cloned(),
            deadline,
        }
    }

    fn deadline(&self, app: &App) -> Instant {
        self.deadline
            .unwrap_or_else(|| Instant::now() + app.config.default_request_budget)
    }
}

/// `POST /api/chat`: JSON, or Server-Sent Events when `Accept` asks.
pub async fn send_message(app: &Arc<App>, req: Request) -> Result<Response<ChatBody>, Infallible> {
    let meta = Meta::of(&req);
    let span = info_span!("request", request_id = %meta.request_id, route = "send-message");
    let started = Instant::now();
    let deadline = meta.deadline(app);
    let resp = async {
        let input = match *req.method() {
            Method::OPTIONS => return preflight(app, &meta, "POST, OPTIONS"),
            Method::POST => parse_send(&req),
            _ => Err(Error::NotFound),
        };
        let streamed = parse::wants_stream(req.headers());
        let begun = match input {
            Ok(input) => app.start(input).await,
            Err(e) => Err(e),
        };
        match (begun, streamed) {
            (Err(e), _) => error_response(app, &meta, &e),
            (Ok(begun), true) => open_stream(app.clone(), &meta, begun, Span::current()),
            (Ok(begun), false) => json_reply(app, &meta, begun).await,
        }
    };
    let resp = crate::deadline::within(deadline, resp)
        .instrument(span.clone())
        .await;
    let doc = Doc::default().property("streamed", matches!(resp.body(), ChatBody::Events(_)));
    span.in_scope(|| log_done(app, &meta, resp.status(), started, doc));
    Ok(resp)
}

async fn json_reply(app: &App, meta: &Meta, begun: Started) -> Response<ChatBody> {
    let out = match begun {
        Started::Replay(out) => out,
        Started::Pending(p) => match app.complete(p, meta.deadline(app), None).await {
            Ok(out) => out,
            Err(e) => return error_response(app, meta, &e),
        },
    };
    let body = stream::reply_json(&out).to_string();
    let mut resp = respond(app, meta, StatusCode::OK, body);
    mark_replay(&mut resp, &out);
    resp
}

/// Answers `200 text/event-stream` at once; a task completes the exchange
/// and writes its events. The task owns what it needs, so the reply is
/// completed and stored even when nobody reads the stream any more.
fn open_stream(app: Arc<App>, meta: &Meta, begun: Started, span: Span) -> Response<ChatBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut resp = respond(&app, meta, StatusCode::OK, String::new());
    *resp.body_mut() = ChatBody::Events(rx);
    render::as_event_stream(resp.headers_mut());
    match begun {
        Started::Replay(out) => {
            mark_replay(&mut resp, &out);
            for ev in [
                stream::session(&out.session_id),
                stream::delta(&out.reply),
                stream::done(&out),
            ] {
                let _ = tx.send(ev);
            }
        }
        Started::Pending(p) => {
            let _ = tx.send(stream::session(&p.session_id()));
            let deadline = meta.deadline(&app);
            let task = async move {
                let mut sink = |text: &str| {
                    // A closed stream (the shopper left) is not an error: keep going.
                    let _ = tx.send(stream::delta(text));
                };
                let last = match app.complete(p, deadline, Some(&mut sink)).await {
                    Ok(out) => stream::done(&out),
                    Err(e) => {
                        error!(code = e.code(), error = %render::chain(&e), "the streamed reply could not be stored");
                        stream::error(&e)
                    }
                };
                let gone = tx.send(last).is_err();
                info!(client_gone = gone, "stream finished");
            };
            tokio::spawn(crate::deadline::within(deadline, task).instrument(span));
        }
    }
    resp
}

fn mark_replay(resp: &mut Response<ChatBody>, out: &SendOutcome) {
    if out.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
}

/// `GET /api/chat/history/{sessionId}`.
pub async fn get_history(app: &App, req: Request) -> Result<Response<Body>, Infallible> {
    let meta = Meta::of(&req);
    let span = info_span!("request", request_id = %meta.request_id, route = "get-history");
    let started = Instant::now();
    let deadline = meta.deadline(app);
    let mut cache = None;
    let resp = async {
        let result = match *req.method() {
            Method::OPTIONS => return into_buffered(preflight(app, &meta, "GET, OPTIONS")),
            Method::GET | Method::HEAD => read_history(app, &req).await,
            _ => Err(Error::NotFound),
        };
        let resp = match result {
            Ok((sid, body, outcome)) => {
                cache = Some(outcome);
                info!(session_id = %sid, cache = outcome.as_str(), body_bytes = body.len(), "history served");
                // The cached value is our own serialisation: valid UTF-8.
                match String::from_utf8(body) {
                    Ok(text) => respond(app, &meta, StatusCode::OK, text),
                    Err(e) => error_response(app, &meta, &Error::internal(e)),
                }
            }
            Err(e) => error_response(app, &meta, &e),
        };
        into_buffered(resp)
    };
    let resp = crate::deadline::within(deadline, resp)
        .instrument(span.clone())
        .await;
    let doc = Doc::default()
        .flag("CacheHits", cache == Some(CacheOutcome::Hit))
        .flag("CacheMisses", cache == Some(CacheOutcome::Miss))
        .flag("CacheErrors", cache == Some(CacheOutcome::Error))
        .property("cache", cache.map(CacheOutcome::as_str));
    span.in_scope(|| log_done(app, &meta, resp.status(), started, doc));
    Ok(resp)
}

async fn read_history(
    app: &App,
    req: &Request,
) -> Result<(SessionId, Vec<u8>, crate::service::CacheOutcome), Error> {
    let raw = parse::path_session_id(req).ok_or(Error::NotFound)?;
    let sid = SessionId::parse(&raw)?;
    let query = parse::history_query(req)?;
    let ip = parse::client_ip(req);
    let (body, cache) = app.get_history(sid, query, ip.as_deref()).await?;
    Ok((sid, body, cache))
}

/// The buffered runner's body type, for `get-history`.
fn into_buffered(resp: Response<ChatBody>) -> Response<Body> {
    resp.map(|b| match b {
        ChatBody::Whole(Some(bytes)) => match String::from_utf8(bytes.to_vec()) {
            Ok(s) => Body::Text(s),
            Err(e) => Body::Binary(e.into_bytes()),
        },
        // As before the streaming body type: an empty text body.
        _ => Body::Text(String::new()),
    })
}

/// The request's log line and its EMF document (with `doc`'s figures).
fn log_done(app: &App, meta: &Meta, status: StatusCode, started: Instant, doc: Doc) {
    let took = started.elapsed();
    info!(
        status = status.as_u16(),
        duration_ms = took.as_millis() as u64,
        "done"
    );
    let doc = doc
        .count("Requests", 1)
        .flag("Errors5xx", status.is_server_error())
        .flag("ColdStart", crate::metrics::cold_start())
        .millis("Duration", took)
        .property("statusClass", crate::metrics::status_class(status.as_u16()))
        .property("requestId", meta.request_id.as_str());
    app.metrics().emit(doc);
}
