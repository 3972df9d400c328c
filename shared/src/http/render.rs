//! Responses: headers every answer carries, CORS, and the one place an
//! [`Error`] becomes a response.

use lambda_http::Response;
use lambda_http::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use tracing::{error, info};

use super::{ChatBody, Meta};
use crate::error::Error;
use crate::service::App;

pub(super) fn respond(
    app: &App,
    meta: &Meta,
    status: StatusCode,
    body: String,
) -> Response<ChatBody> {
    let mut resp = Response::new(ChatBody::whole(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&meta.request_id) {
        h.insert("x-request-id", v);
    }
    cors(app, meta, h);
    resp
}

/// The headers of a Server-Sent Events response; `X-Accel-Buffering: no`
/// asks proxies that honour it not to hold events back.
pub(super) fn as_event_stream(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

fn cors(app: &App, meta: &Meta, h: &mut HeaderMap) {
    let origins = &app.config.allowed_origins;
    if origins.is_empty() {
        return;
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = &meta.origin else { return };
    let allowed = origin
        .to_str()
        .map(|o| {
            origins
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o.trim_end_matches('/')))
        })
        .unwrap_or(false);
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, retry-after, idempotent-replayed"),
        );
    }
}

/// CORS preflight, for local runs (API Gateway answers it in production).
pub(super) fn preflight(app: &App, meta: &Meta, methods: &'static str) -> Response<ChatBody> {
    let mut resp = respond(app, meta, StatusCode::NO_CONTENT, String::new());
    let h = resp.headers_mut();
    if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, idempotency-key, accept"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

/// The one place an [`Error`] becomes a response. 5xx bodies say nothing
/// about the cause; the log gets all of it.
pub(super) fn error_response(app: &App, meta: &Meta, e: &Error) -> Response<ChatBody> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        error!(code = e.code(), error = %chain(e), "request failed");
    } else {
        info!(code = e.code(), "request refused");
    }
    let body = json!({ "error": { "code": e.code(), "message": e.to_string() } });
    let mut resp = respond(app, meta, status, body.to_string());
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
