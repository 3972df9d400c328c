//! API Gateway events for the two routes, as API Gateway sends them: HTTP API
//! (payload 2.0) or REST API (payload 1.0), as a JSON string (what the Lambda
//! Runtime API hands a function, so the bench and `cargo lambda invoke` use
//! these) or decoded into a [`lambda_http::Request`] (what the handlers take).
//!
//! ```
//! use testkit::events::{Event, chat_body};
//! let req = Event::chat(chat_body("Where is my order?", None))
//!     .accept("text/event-stream")
//!     .idempotency_key("retry-1")
//!     .request();
//! let json = Event::history("550e8400-e29b-41d4-a716-446655440000").v1().limit(20).json();
//! # let _ = (req, json);
//! ```

use serde_json::{Map, Value, json};

/// The client IP of every event unless [`Event::source_ip`] says otherwise
/// (TEST-NET-3, never routed).
pub const SOURCE_IP: &str = "203.0.113.7";

const HOST: &str = "k7x2m9q4r1.execute-api.us-east-1.amazonaws.com";
const BROWSER_UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const CHAT_PATH: &str = "/api/chat";
const HISTORY_RESOURCE: &str = "/api/chat/history/{sessionId}";
const TIME_EPOCH_MS: u64 = 1_795_554_930_000;

/// Which API Gateway flavour sends the event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// HTTP API, payload format 2.0 (production).
    #[default]
    V2,
    /// REST API, payload format 1.0.
    V1,
}

#[derive(Clone, Debug)]
enum Route {
    Chat,
    History(String),
}

/// One API Gateway event, built up by its methods, rendered by [`Event::json`]
/// or [`Event::request`].
#[derive(Clone, Debug)]
pub struct Event {
    payload: Payload,
    method: String,
    route: Route,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    body: Option<String>,
    source_ip: String,
    browser: bool,
}

impl Event {
    /// `POST /api/chat` with this body and `content-type: application/json`.
    pub fn chat(body: impl Into<String>) -> Event {
        Event::new("POST", Route::Chat, Some(body.into()))
            .header("content-type", "application/json")
    }

    /// `POST /api/chat` carrying `{"message": ..., "sessionId": ...}`.
    pub fn send(message: &str, session_id: Option<&str>) -> Event {
        Event::chat(chat_body(message, session_id))
    }

    /// `GET /api/chat/history/{session_id}` with `accept: application/json`.
    pub fn history(session_id: &str) -> Event {
        Event::new("GET", Route::History(session_id.to_owned()), None)
            .header("accept", "application/json")
    }

    fn new(method: &str, route: Route, body: Option<String>) -> Event {
        Event {
            payload: Payload::V2,
            method: method.to_owned(),
            route,
            headers: Vec::new(),
            query: Vec::new(),
            body,
            source_ip: SOURCE_IP.to_owned(),
            browser: false,
        }
    }

    /// The REST API (payload 1.0) form of the same request.
    pub fn v1(self) -> Event {
        self.payload(Payload::V1)
    }

    pub fn payload(mut self, payload: Payload) -> Event {
        self.payload = payload;
        self
    }

    /// Another HTTP method on the same route (`PUT`, `OPTIONS`, `HEAD`...).
    pub fn method(mut self, method: &str) -> Event {
        self.method = method.to_ascii_uppercase();
        self
    }

    /// Sets a header (names are case-insensitive; API Gateway 2.0 lowercases them).
    pub fn header(mut self, name: &str, value: &str) -> Event {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    /// Removes a header, the default `content-type` or `accept` included.
    pub fn without_header(mut self, name: &str) -> Event {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(k, _)| *k != name);
        self
    }

    pub fn accept(self, value: &str) -> Event {
        self.header("accept", value)
    }

    pub fn idempotency_key(self, key: &str) -> Event {
        self.header("idempotency-key", key)
    }

    pub fn origin(self, origin: &str) -> Event {
        self.header("origin", origin)
    }

    /// The client IP API Gateway reports (and puts in `x-forwarded-for` with [`Event::browser`]).
    pub fn source_ip(mut self, ip: &str) -> Event {
        self.source_ip = ip.to_owned();
        self
    }

    /// Adds a query string parameter (history: `limit`, `before`).
    pub fn query(mut self, name: &str, value: &str) -> Event {
        self.query.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn limit(self, limit: impl ToString) -> Event {
        self.query("limit", &limit.to_string())
    }

    pub fn before(self, message_id: &str) -> Event {
        self.query("before", message_id)
    }

    /// Adds what a browser on the storefront sends besides (user agent,
    /// encodings, `origin`, `x-forwarded-*`, `content-length`), so parsing
    /// costs what it costs in production. Explicit headers win.
    pub fn browser(mut self) -> Event {
        self.browser = true;
        self
    }

    /// The event as the Lambda Runtime API hands it to a function.
    pub fn json(&self) -> String {
        self.to_value().to_string()
    }

    pub fn to_value(&self) -> Value {
        match self.payload {
            Payload::V2 => self.v2_event(),
            Payload::V1 => self.v1_event(),
        }
    }

    /// The event decoded by `lambda_http`, as a handler receives it.
    pub fn request(&self) -> lambda_http::Request {
        lambda_http::request::from_str(&self.json())
            .unwrap_or_else(|e| panic!("lambda_http rejects the event: {e}"))
    }

    fn path(&self) -> String {
        match &self.route {
            Route::Chat => CHAT_PATH.to_owned(),
            Route::History(id) => format!("/api/chat/history/{id}"),
        }
    }

    fn resource(&self) -> &'static str {
        match self.route {
            Route::Chat => CHAT_PATH,
            Route::History(_) => HISTORY_RESOURCE,
        }
    }

    fn path_parameters(&self) -> Value {
        match &self.route {
            Route::Chat => Value::Null,
            Route::History(id) => json!({ "sessionId": id }),
        }
    }

    fn user_agent(&self) -> &'static str {
        if self.browser { BROWSER_UA } else { "testkit" }
    }

    /// Browser headers first (when asked for), then the explicit ones.
    fn header_map(&self) -> Map<String, Value> {
        let mut h = Map::new();
        if self.browser {
            for (k, v) in browser_headers(&self.source_ip) {
                h.insert(k.to_owned(), json!(v));
            }
            if let Some(body) = &self.body {
                h.insert("content-length".into(), json!(body.len().to_string()));
            }
        }
        for (k, v) in &self.headers {
            h.insert(k.clone(), json!(v));
        }
        h
    }

    fn v2_event(&self) -> Value {
        let path = self.path();
        let route_key = format!("{} {}", self.method, self.resource());
        let mut event = json!({
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": path,
            "rawQueryString": raw_query(&self.query),
            "headers": self.header_map(),
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "k7x2m9q4r1",
                "domainName": HOST,
                "domainPrefix": "k7x2m9q4r1",
                "http": { "method": self.method, "path": path, "protocol": "HTTP/1.1",
                          "sourceIp": self.source_ip, "userAgent": self.user_agent() },
                "requestId": request_id(),
                "routeKey": route_key,
                "stage": "$default",
                "time": "24/Nov/2026:21:15:30 +0000",
                "timeEpoch": TIME_EPOCH_MS
            },
            "isBase64Encoded": false
        });
        if !self.query.is_empty() {
            let q: Map<String, Value> = self
                .query
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            event["queryStringParameters"] = Value::Object(q);
        }
        if let Route::History(_) = self.route {
            event["pathParameters"] = self.path_parameters();
        }
        if let Some(body) = &self.body {
            event["body"] = json!(body);
        }
        event
    }

    fn v1_event(&self) -> Value {
        let path = self.path();
        let headers = self.header_map();
        let multi: Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), json!([v])))
            .collect();
        let (single_q, multi_q) = v1_query(&self.query);
        json!({
            "resource": self.resource(),
            "path": path,
            "httpMethod": self.method,
            "headers": headers,
            "multiValueHeaders": multi,
            "queryStringParameters": single_q,
            "multiValueQueryStringParameters": multi_q,
            "pathParameters": self.path_parameters(),
            "stageVariables": null,
            "requestContext": {
                "accountId": "123456789012", "apiId": "a1b2c3d4e5", "resourceId": "abc123",
                "stage": "prod", "requestId": request_id(), "httpMethod": self.method,
                "path": format!("/prod{path}"), "resourcePath": self.resource(),
                "protocol": "HTTP/1.1", "requestTimeEpoch": TIME_EPOCH_MS,
                "identity": { "sourceIp": self.source_ip, "userAgent": self.user_agent() }
            },
            "body": self.body,
            "isBase64Encoded": false
        })
    }
}

fn request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

fn raw_query(query: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish()
}

/// REST API query parameters: `null` when there are none, as API Gateway sends them.
fn v1_query(query: &[(String, String)]) -> (Value, Value) {
    if query.is_empty() {
        return (Value::Null, Value::Null);
    }
    let mut single = Map::new();
    let mut multi = Map::new();
    for (k, v) in query {
        single.insert(k.clone(), json!(v));
        match multi.get_mut(k) {
            Some(Value::Array(all)) => all.push(json!(v)),
            _ => {
                multi.insert(k.clone(), json!([v]));
            }
        }
    }
    (Value::Object(single), Value::Object(multi))
}

fn browser_headers(ip: &str) -> [(&'static str, String); 14] {
    [
        ("accept", "*/*".into()),
        ("accept-encoding", "gzip, deflate, br, zstd".into()),
        ("accept-language", "en-US,en;q=0.9".into()),
        ("host", HOST.into()),
        ("origin", "https://shop.example.com".into()),
        ("referer", "https://shop.example.com/".into()),
        ("sec-fetch-dest", "empty".into()),
        ("sec-fetch-mode", "cors".into()),
        ("sec-fetch-site", "cross-site".into()),
        ("user-agent", BROWSER_UA.into()),
        (
            "x-amzn-trace-id",
            "Root=1-6924caf2-3f1a9c2e7b4d6058a1c2e3f4".into(),
        ),
        ("x-forwarded-for", ip.into()),
        ("x-forwarded-port", "443".into()),
        ("x-forwarded-proto", "https".into()),
    ]
}

/// The JSON body of a `POST /api/chat`.
pub fn chat_body(message: &str, session_id: Option<&str>) -> String {
    match session_id {
        Some(s) => json!({ "message": message, "sessionId": s }),
        None => json!({ "message": message }),
    }
    .to_string()
}

/// A shopper's question, about as long as a typical one, numbered so that
/// consecutive ones differ.
pub fn question(i: usize) -> String {
    const QS: [&str; 5] = [
        "What are your shipping options to Canada?",
        "Can I return a sweater I bought two weeks ago if it does not fit?",
        "Do you have the running shoes in size 43?",
        "How long does express delivery take?",
        "Is there a discount for first orders?",
    ];
    format!("{} (#{i})", QS[i % QS.len()])
}

/// Payload 2.0 `POST /api/chat`; each `(name, value)` sets a header, and an
/// empty value removes it (`("content-type", "")` sends none).
pub fn post_v2(body: &str, headers: &[(&str, &str)]) -> lambda_http::Request {
    post_v2_from(body, headers, SOURCE_IP)
}

/// [`post_v2`] from another client IP.
pub fn post_v2_from(body: &str, headers: &[(&str, &str)], ip: &str) -> lambda_http::Request {
    let mut event = Event::chat(body).source_ip(ip);
    for (k, v) in headers {
        event = if v.is_empty() {
            event.without_header(k)
        } else {
            event.header(k, v)
        };
    }
    event.request()
}

/// Payload 1.0 `POST /api/chat`.
pub fn post_v1(body: &str) -> lambda_http::Request {
    Event::chat(body).v1().request()
}

/// Payload 2.0 `GET /api/chat/history/{session_id}`.
pub fn get_v2(session_id: &str) -> lambda_http::Request {
    Event::history(session_id).request()
}

/// Payload 1.0 `GET /api/chat/history/{session_id}`.
pub fn get_v1(session_id: &str) -> lambda_http::Request {
    Event::history(session_id).v1().request()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::RequestExt;

    #[test]
    fn both_payloads_decode_to_the_same_request() {
        for payload in [Payload::V2, Payload::V1] {
            let req = Event::history("550e8400-e29b-41d4-a716-446655440000")
                .payload(payload)
                .limit(5)
                .before("a b&c")
                .origin("https://shop.example.com")
                .request();
            assert_eq!(req.method(), "GET", "{payload:?}");
            assert!(
                req.uri()
                    .path()
                    .ends_with("/api/chat/history/550e8400-e29b-41d4-a716-446655440000"),
                "{payload:?}: {}",
                req.uri()
            );
            let q = req.query_string_parameters();
            assert_eq!(q.first("limit"), Some("5"), "{payload:?}");
            assert_eq!(q.first("before"), Some("a b&c"), "{payload:?}");
            assert_eq!(
                req.path_parameters().first("sessionId"),
                Some("550e8400-e29b-41d4-a716-446655440000")
            );
            assert_eq!(req.headers()["origin"], "https://shop.example.com");
        }
    }

    #[test]
    fn a_post_carries_its_body_headers_and_source_ip() {
        for payload in [Payload::V2, Payload::V1] {
            let req = Event::send("hi", Some("s-1"))
                .payload(payload)
                .accept("text/event-stream")
                .idempotency_key("k-1")
                .source_ip("198.51.100.9")
                .request();
            assert_eq!(req.method(), "POST");
            let body: Value = serde_json::from_slice(req.body().as_ref()).unwrap();
            assert_eq!(body, json!({ "message": "hi", "sessionId": "s-1" }));
            assert_eq!(req.headers()["accept"], "text/event-stream");
            assert_eq!(req.headers()["idempotency-key"], "k-1");
            assert_eq!(req.headers()["content-type"], "application/json");
            let ctx = req.request_context();
            let ip = match ctx {
                lambda_http::request::RequestContext::ApiGatewayV2(c) => c.http.source_ip,
                lambda_http::request::RequestContext::ApiGatewayV1(c) => c.identity.source_ip,
                _ => None,
            };
            assert_eq!(ip.as_deref(), Some("198.51.100.9"), "{payload:?}");
        }
    }

    #[test]
    fn an_empty_value_removes_a_header_and_browser_adds_the_rest() {
        let req = post_v2("{}", &[("content-type", "")]);
        assert!(req.headers().get("content-type").is_none());
        let ev: Value = serde_json::from_str(&Event::chat("{}").browser().json()).unwrap();
        assert_eq!(ev["headers"]["content-length"], "2");
        assert_eq!(ev["headers"]["x-forwarded-for"], SOURCE_IP);
        assert_eq!(ev["headers"]["content-type"], "application/json");
    }
}
