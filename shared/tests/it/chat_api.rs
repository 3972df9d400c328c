//! The API contract end to end through the handlers, on payload 2.0 and 1.0
//! events, a fresh database per test and a fake Anthropic API.

use super::support::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_first_message_creates_a_session_and_returns_claudes_reply() {
    let h = Harness::new().await;
    let r = h
        .post(&json_body("What are your shipping options?", None))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["reply"], "We ship worldwide 🚚");
    let sid = r.session_id();
    assert!(uuid::Uuid::parse_str(&sid).is_ok());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("x-request-id")
            .is_some_and(|v| v.starts_with("req-"))
    );
    assert_eq!(h.db.sessions().await, 1);
    assert_eq!(h.db.messages().await, 2);
}

#[tokio::test]
async fn a_second_message_sends_the_first_exchange_as_context() {
    let h = Harness::new().await;
    let sid = h
        .post(&json_body("What are your shipping options?", None))
        .await
        .session_id();
    let r = h.post(&json_body("And to Canada?", Some(&sid))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.session_id(), sid, "the session continues");

    let requests = h.claude_requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1]["messages"],
        json!([
            { "role": "user", "content": "What are your shipping options?" },
            { "role": "assistant", "content": "We ship worldwide 🚚" },
            { "role": "user", "content": "And to Canada?" }
        ])
    );
}

#[tokio::test]
async fn history_returns_all_messages_oldest_first_with_millisecond_timestamps() {
    let h = Harness::new().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let sid = h.post(&json_body("first", None)).await.session_id();
    h.post(&json_body("second", Some(&sid))).await;

    for r in [
        h.history(&sid).await,
        Reply::from(
            support_chat::http::get_history(&h.app, get_v1(&sid))
                .await
                .unwrap(),
        ),
    ] {
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["sessionId"], sid.as_str());
        let msgs = r.body["messages"].as_array().unwrap();
        let texts: Vec<_> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
        let senders: Vec<_> = msgs.iter().map(|m| m["sender"].as_str().unwrap()).collect();
        assert_eq!(
            texts,
            [
                "first",
                "We ship worldwide 🚚",
                "second",
                "We ship worldwide 🚚"
            ]
        );
        assert_eq!(senders, ["user", "ai", "user", "ai"]);
        let ts: Vec<i64> = msgs
            .iter()
            .map(|m| m["timestamp"].as_i64().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        assert!(
            ts[0] >= before - 5_000 && ts[0] < before + 60_000,
            "ms since epoch: {ts:?}"
        );
        assert!(
            msgs.iter()
                .all(|m| uuid::Uuid::parse_str(m["id"].as_str().unwrap()).is_ok())
        );
    }
}

#[tokio::test]
async fn the_rest_payload_works_like_the_http_api_payload() {
    let h = Harness::new().await;
    let r = h.send(post_v1(&json_body("Hello from REST", None))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.db.messages().await, 2);
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let h = Harness::new().await;
    let body = json_body("What is your return policy?", None);
    let b64 = {
        // Standard base64, as API Gateway sends it.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = body.as_bytes();
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let mut event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("../events/send-message-base64-v2.json").unwrap(),
    )
    .unwrap();
    event["body"] = json!(b64);
    event["isBase64Encoded"] = json!(true);
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        h.claude_requests().await[0]["messages"][0]["content"],
        "What is your return policy?"
    );
}

#[tokio::test]
async fn an_unknown_but_valid_session_id_starts_a_new_session_with_a_server_id() {
    let h = Harness::new().await;
    let stranger = "0b3c2f4e-1d2a-4e5f-8a9b-0c1d2e3f4a5b";
    let r = h.post(&json_body("hi", Some(stranger))).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.session_id(), stranger, "never the client's id");
    assert_eq!(h.history(stranger).await.status, 404);
    assert_eq!(h.history(&r.session_id()).await.status, 200);
}

#[tokio::test]
async fn claude_being_down_gives_a_stored_fallback_reply() {
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&claude)
        .await;
    let h = Harness::with(Options::default(), claude).await;
    let r = h
        .post(&json_body("What is your return policy?", None))
        .await;
    assert_eq!(r.status, 200);
    let reply = r.body["reply"].as_str().unwrap();
    assert!(reply.contains("30 days"), "the returns facts: {reply}");
    let history = h.history(&r.session_id()).await;
    assert_eq!(history.body["messages"][1]["text"], reply);
    assert_eq!(history.body["messages"][1]["sender"], "ai");
    let source: String =
        h.db.client()
            .await
            .query_one("SELECT source FROM chat_messages WHERE sender = 'ai'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(source, "fallback");
}

#[tokio::test]
async fn without_an_api_key_every_reply_is_the_fallback_and_claude_is_not_called() {
    let h = Harness::with(
        Options {
            api_key: false,
            ..Default::default()
        },
        fake_claude_answering("unused").await,
    )
    .await;
    let r = h.post(&json_body("Where is my order?", None)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["reply"].as_str().unwrap().contains("tracking"),
        "{}",
        r.raw
    );
    assert!(h.claude_requests().await.is_empty());
    assert_eq!(h.db.messages().await, 2);
}

#[tokio::test]
async fn bad_inputs_get_the_exact_error_and_change_nothing() {
    let h = Harness::new().await;
    let long = "a".repeat(2001);
    let emoji_over = "😀".repeat(2001);
    let big = format!(r#"{{"message":"hi","pad":"{}"}}"#, "x".repeat(17 * 1024));
    // (case, body, extra headers, status, code)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing message",
            r#"{"sessionId":null}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "empty message",
            r#"{"message":""}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "whitespace message",
            r#"{"message":"  \n\t "}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "null message",
            r#"{"message":null}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "number message",
            r#"{"message":42}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "array message",
            r#"{"message":["hi"]}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "too long message",
            json_body(&long, None),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "2001 emoji",
            json_body(&emoji_over, None),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "only NUL and controls",
            r#"{"message":"\u0000\u0007\u001b"}"#.into(),
            vec![],
            400,
            "invalid_message",
        ),
        (
            "bad session id",
            r#"{"message":"hi","sessionId":"abc"}"#.into(),
            vec![],
            400,
            "invalid_session_id",
        ),
        (
            "numeric session id",
            r#"{"message":"hi","sessionId":123}"#.into(),
            vec![],
            400,
            "invalid_session_id",
        ),
        (
            "unhyphenated uuid",
            r#"{"message":"hi","sessionId":"550e8400e29b41d4a716446655440000"}"#.into(),
            vec![],
            400,
            "invalid_session_id",
        ),
        (
            "array body",
            r#"["hi"]"#.into(),
            vec![],
            400,
            "invalid_json",
        ),
        ("string body", r#""hi""#.into(), vec![], 400, "invalid_json"),
        (
            "invalid json",
            r#"{"message": "hi""#.into(),
            vec![],
            400,
            "invalid_json",
        ),
        ("empty body", String::new(), vec![], 400, "invalid_json"),
        (
            "lone surrogate",
            r#"{"message":"\ud800"}"#.into(),
            vec![],
            400,
            "invalid_json",
        ),
        ("oversized body", big, vec![], 413, "payload_too_large"),
        (
            "text/plain",
            json_body("hi", None),
            vec![("content-type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        (
            "form",
            "message=hi".into(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
            "unsupported_media_type",
        ),
        (
            "latin-1 charset",
            json_body("hi", None),
            vec![("content-type", "application/json; charset=latin1")],
            415,
            "unsupported_media_type",
        ),
        (
            "empty idempotency key",
            json_body("hi", None),
            vec![("idempotency-key", " ")],
            400,
            "invalid_idempotency_key",
        ),
    ];
    for (name, body, headers, status, code) in &cases {
        let r = h.send(post_v2(body, headers)).await;
        assert_eq!(r.status, *status, "{name}: {}", r.raw);
        assert_eq!(r.code(), *code, "{name}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
    }
    for (name, id, status, code) in [
        (
            "history id not a uuid",
            "not-a-uuid",
            400,
            "invalid_session_id",
        ),
        (
            "history id with braces",
            "{550e8400-e29b-41d4-a716-446655440000}",
            400,
            "invalid_session_id",
        ),
        (
            "history of no session",
            "550e8400-e29b-41d4-a716-446655440000",
            404,
            "session_not_found",
        ),
    ] {
        let r = h.history(id).await;
        assert_eq!((r.status, r.code()), (status, code), "{name}");
    }
    assert_eq!(h.db.sessions().await, 0, "nothing written");
    assert_eq!(h.db.messages().await, 0, "nothing written");
    assert!(h.claude_requests().await.is_empty());
}

#[tokio::test]
async fn control_characters_are_removed_and_the_message_trimmed_before_storing() {
    let h = Harness::new().await;
    let sid = h
        .post(r#"{"message":"  \u0000hello\u0007 there\r\n\t","unknown":"ignored"}"#)
        .await
        .session_id();
    assert_eq!(
        h.history(&sid).await.body["messages"][0]["text"],
        "hello there"
    );
    let exactly = "😀".repeat(2000);
    let r = h.post(&json_body(&exactly, None)).await;
    assert_eq!(r.status, 200, "2000 emoji are 2000 characters");
}

#[tokio::test]
async fn methods_a_function_does_not_serve_get_not_found() {
    let h = Harness::new().await;
    let mut req = post_v2(&json_body("hi", None), &[]);
    *req.method_mut() = lambda_http::http::Method::PUT;
    let r = h.send(req).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let mut req = get_v2("550e8400-e29b-41d4-a716-446655440000");
    *req.method_mut() = lambda_http::http::Method::DELETE;
    let r = Reply::from(support_chat::http::get_history(&h.app, req).await.unwrap());
    assert_eq!((r.status, r.code()), (404, "not_found"));
}

#[tokio::test]
async fn cors_headers_are_sent_only_to_allowed_origins() {
    let h = Harness::new().await;
    let r = h
        .send(post_v2(
            &json_body("hi", None),
            &[("origin", "https://shop.example.com")],
        ))
        .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = h
        .send(post_v2(
            &json_body("hi", None),
            &[("origin", "https://evil.example")],
        ))
        .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));

    let mut pre = post_v2(
        "",
        &[("origin", "https://shop.example.com"), ("content-type", "")],
    );
    *pre.method_mut() = lambda_http::http::Method::OPTIONS;
    let r = h.send(pre).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("content-type")
    );
}

#[tokio::test]
async fn server_errors_are_opaque() {
    let h = Harness::new().await;
    // Break the schema under the app: a bug, not a client error.
    h.db.client()
        .await
        .batch_execute("DROP TABLE chat_messages CASCADE")
        .await
        .unwrap();
    let r = h.post(&json_body("hi", None)).await;
    assert_eq!((r.status, r.code()), (500, "internal_error"));
    assert_eq!(r.body["error"]["message"], "internal error");
    assert!(
        !r.raw.contains("chat_messages") && !r.raw.contains("relation"),
        "{}",
        r.raw
    );
}
