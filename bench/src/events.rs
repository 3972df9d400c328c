//! API Gateway HTTP API (payload 2.0) events, shaped like the ones in `events/`
//! (a browser's headers included, so parsing costs what it costs in production).

use serde_json::{Value, json};

const UA: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
pub const SOURCE_IP: &str = "203.0.113.42";

fn headers(extra: &[(&str, &str)]) -> Value {
    let mut h = json!({
        "accept": "*/*",
        "accept-encoding": "gzip, deflate, br, zstd",
        "accept-language": "en-US,en;q=0.9",
        "host": "k7x2m9q4r1.execute-api.us-east-1.amazonaws.com",
        "origin": "https://shop.example.com",
        "referer": "https://shop.example.com/",
        "sec-fetch-dest": "empty",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "cross-site",
        "user-agent": UA,
        "x-amzn-trace-id": "Root=1-6924caf2-3f1a9c2e7b4d6058a1c2e3f4",
        "x-forwarded-for": SOURCE_IP,
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https"
    });
    for (k, v) in extra {
        h[*k] = json!(v);
    }
    h
}

fn context(method: &str, path: &str, route: &str) -> Value {
    json!({
        "accountId": "123456789012",
        "apiId": "k7x2m9q4r1",
        "domainName": "k7x2m9q4r1.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "k7x2m9q4r1",
        "http": { "method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": SOURCE_IP, "userAgent": UA },
        "requestId": format!("Vx9Q{}=", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        "routeKey": route,
        "stage": "$default",
        "time": "24/Nov/2025:21:15:30 +0000",
        "timeEpoch": 1_764_018_930_123u64
    })
}

/// `POST /api/chat` with `{"message": ..., "sessionId": ...}`.
pub fn post(message: &str, session_id: Option<&str>, idempotency_key: Option<&str>) -> String {
    let body = match session_id {
        Some(s) => json!({ "message": message, "sessionId": s }),
        None => json!({ "message": message }),
    }
    .to_string();
    let len = body.len().to_string();
    let mut extra = vec![
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    if let Some(k) = idempotency_key {
        extra.push(("idempotency-key", k));
    }
    json!({
        "version": "2.0",
        "routeKey": "POST /api/chat",
        "rawPath": "/api/chat",
        "rawQueryString": "",
        "headers": headers(&extra),
        "requestContext": context("POST", "/api/chat", "POST /api/chat"),
        "body": body,
        "isBase64Encoded": false
    })
    .to_string()
}

/// `GET /api/chat/history/{sessionId}`.
pub fn get(session_id: &str) -> String {
    let path = format!("/api/chat/history/{session_id}");
    json!({
        "version": "2.0",
        "routeKey": "GET /api/chat/history/{sessionId}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers(&[("accept", "application/json")]),
        "requestContext": context("GET", &path, "GET /api/chat/history/{sessionId}"),
        "pathParameters": { "sessionId": session_id },
        "isBase64Encoded": false
    })
    .to_string()
}

/// A shopper's question, about as long as a typical one.
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
