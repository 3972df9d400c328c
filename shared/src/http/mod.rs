//! The API Gateway edge: decodes requests (payload 1.0 and 2.0, via
//! `lambda_http`), parses them into domain types, calls the service, and
//! renders responses and errors, in this one place.

use lambda_http::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{Instrument, error, info, info_span};

use crate::domain::{IdempotencyKey, MessageText, SessionId};
use crate::error::Error;
use crate::service::{App, SendMessage};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

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
        let deadline = req.lambda_context_ref().and_then(|c| {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_millis() as u64;
            // cargo-lambda and the real runtime both set this; 0 means "none".
            (c.deadline > now_ms)
                .then(|| Instant::now() + Duration::from_millis(c.deadline - now_ms))
        });
        Meta {
            request_id,
            origin: req.headers().get(header::ORIGIN).cloned(),
            deadline,
        }
    }
}

/// `POST /api/chat`.
pub async fn send_message(app: &App, req: Request) -> Result<Response<Body>, Infallible> {
    let meta = Meta::of(&req);
    let span = info_span!("request", request_id = %meta.request_id, route = "send-message");
    let started = Instant::now();
    async move {
        let result = match *req.method() {
            Method::OPTIONS => return Ok(preflight(app, &meta, "POST, OPTIONS")),
            Method::POST => match parse_send(&req) {
                Ok(input) => {
                    let deadline = meta
                        .deadline
                        .unwrap_or_else(|| Instant::now() + app.config.default_request_budget);
                    app.send_message(input, deadline).await
                }
                Err(e) => Err(e),
            },
            _ => Err(Error::NotFound),
        };
        let resp = match result {
            Ok(out) => {
                let body = json!({ "reply": out.reply, "sessionId": out.session_id });
                let mut resp = respond(app, &meta, StatusCode::OK, body.to_string());
                if out.replayed {
                    resp.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                }
                resp
            }
            Err(e) => error_response(app, &meta, &e),
        };
        info!(
            status = resp.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "done"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

/// `GET /api/chat/history/{sessionId}`.
pub async fn get_history(app: &App, req: Request) -> Result<Response<Body>, Infallible> {
    let meta = Meta::of(&req);
    let span = info_span!("request", request_id = %meta.request_id, route = "get-history");
    let started = Instant::now();
    async move {
        let result = match *req.method() {
            Method::OPTIONS => return Ok(preflight(app, &meta, "GET, OPTIONS")),
            Method::GET | Method::HEAD => match path_session_id(&req) {
                Some(raw) => match SessionId::parse(&raw) {
                    Ok(sid) => app
                        .get_history(sid)
                        .await
                        .map(|(body, cache)| (sid, body, cache)),
                    Err(e) => Err(e),
                },
                None => Err(Error::NotFound),
            },
            _ => Err(Error::NotFound),
        };
        let resp = match result {
            Ok((sid, body, cache)) => {
                let n = body.len();
                info!(session_id = %sid, cache = cache.as_str(), body_bytes = n, "history served");
                // The cached value is our own serialisation: valid UTF-8.
                match String::from_utf8(body) {
                    Ok(text) => respond(app, &meta, StatusCode::OK, text),
                    Err(e) => error_response(app, &meta, &Error::internal(e)),
                }
            }
            Err(e) => error_response(app, &meta, &e),
        };
        info!(
            status = resp.status().as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "done"
        );
        Ok(resp)
    }
    .instrument(span)
    .await
}

fn path_session_id(req: &Request) -> Option<String> {
    if let Some(id) = req.path_parameters_ref().and_then(|p| p.first("sessionId")) {
        return Some(id.to_owned());
    }
    // Invocations without route metadata: take it from the path itself.
    let path = req.raw_http_path();
    let rest = path
        .trim_end_matches('/')
        .rsplit_once("/api/chat/history/")?
        .1;
    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
}

/// Parses and validates a `POST /api/chat` request. Cheap checks first: a
/// huge or non-JSON body is refused before it is parsed.
pub fn parse_send(req: &Request) -> Result<SendMessage, Error> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::PayloadTooLarge);
    }
    check_content_type(req.headers())?;
    let idempotency_key = match req.headers().get("idempotency-key") {
        Some(v) => Some(IdempotencyKey::parse(v.as_bytes())?),
        None => None,
    };
    let (message, session_id) = parse_body(body)?;
    Ok(SendMessage {
        message,
        session_id,
        client_ip: client_ip(req),
        idempotency_key,
    })
}

/// The JSON body: an object with a string `message` and an optional UUID
/// `sessionId`; other fields are ignored.
pub fn parse_body(body: &[u8]) -> Result<(MessageText, Option<SessionId>), Error> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Error::InvalidJson)?;
    let Value::Object(mut obj) = value else {
        return Err(Error::InvalidJson);
    };
    let message = match obj.remove("message") {
        Some(Value::String(s)) => MessageText::parse(&s)?,
        None | Some(Value::Null) => return Err(Error::InvalidMessage("message is required")),
        Some(_) => return Err(Error::InvalidMessage("message must be a string")),
    };
    let session_id = match obj.remove("sessionId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(SessionId::parse(&s)?),
        Some(_) => return Err(Error::InvalidSessionId),
    };
    Ok((message, session_id))
}

/// Absent is fine (curl without -H); present must be JSON in UTF-8.
fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let v = v
        .to_str()
        .map_err(|_| Error::UnsupportedMediaType)?
        .to_ascii_lowercase();
    let mut parts = v.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    if !(essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json")))
    {
        return Err(Error::UnsupportedMediaType);
    }
    for p in parts {
        if let Some(cs) = p.strip_prefix("charset=") {
            if !matches!(cs.trim_matches('"'), "utf-8" | "utf8") {
                return Err(Error::UnsupportedMediaType);
            }
        }
    }
    Ok(())
}

fn client_ip(req: &Request) -> Option<String> {
    let ip = match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(c) => c.http.source_ip.clone(),
        RequestContext::ApiGatewayV1(c) => c.identity.source_ip.clone(),
        _ => None,
    }?;
    // Only a plausible address becomes part of a Redis key.
    ip.parse::<std::net::IpAddr>().ok().map(|a| a.to_string())
}

fn respond(app: &App, meta: &Meta, status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::Text(body));
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
fn preflight(app: &App, meta: &Meta, methods: &'static str) -> Response<Body> {
    let mut resp = respond(app, meta, StatusCode::NO_CONTENT, String::new());
    let h = resp.headers_mut();
    if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, idempotency-key"),
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
fn error_response(app: &App, meta: &Meta, e: &Error) -> Response<Body> {
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

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
