//! Requests into domain types. Cheap checks first: a huge or non-JSON body
//! is refused before it is parsed.

use lambda_http::http::{HeaderMap, header};
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde_json::Value;

use crate::domain::{HistoryQuery, IdempotencyKey, MessageText, SessionId};
use crate::error::Error;
use crate::service::SendMessage;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Parses and validates a `POST /api/chat` request.
pub fn parse_send(req: &Request) -> Result<SendMessage, Error> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
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

/// Whether the client asked for Server-Sent Events (`Accept` lists
/// `text/event-stream`, with any parameters, in any case).
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|item| {
                let essence = item.split(';').next().unwrap_or_default().trim();
                essence.eq_ignore_ascii_case("text/event-stream")
            })
        })
    })
}

pub fn client_ip(req: &Request) -> Option<String> {
    let ip = match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(c) => c.http.source_ip.clone(),
        RequestContext::ApiGatewayV1(c) => c.identity.source_ip.clone(),
        _ => None,
    }?;
    // Only a plausible address becomes part of a Redis key.
    ip.parse::<std::net::IpAddr>().ok().map(|a| a.to_string())
}

pub fn path_session_id(req: &Request) -> Option<String> {
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

/// `limit` and `before` from the query string.
pub fn history_query(req: &Request) -> Result<HistoryQuery, Error> {
    let params = req.query_string_parameters_ref();
    let get = |name: &str| params.and_then(|p| p.first(name));
    HistoryQuery::parse(get("limit"), get("before"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::HeaderValue;

    #[test]
    fn event_stream_is_recognised_among_other_types() {
        let mut h = HeaderMap::new();
        assert!(!wants_stream(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_stream(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9"),
        );
        assert!(wants_stream(&h));
    }
}
