//! The fake, checked from the outside with an ordinary HTTP client.

use super::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn ask(stream: bool, text: &str) -> Value {
    json!({ "model": "claude-haiku-5-5", "max_tokens": 100, "stream": stream,
            "messages": [{ "role": "user", "content": text }] })
}

async fn post(claude: &FakeClaude, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", claude.url()))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .expect("the fake answers")
}

/// `(event, data)` pairs of a complete event stream.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {block:?}"))
                    .to_owned()
            };
            let data = serde_json::from_str(&field("data: ")).expect("data is JSON");
            (field("event: "), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

fn text_of(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_streamed_reply_is_the_real_event_sequence() {
    let claude = FakeClaude::builder()
        .default_scenario(Scenario::text("Hello\u{0} there 🚚").chunks(3))
        .start()
        .await
        .unwrap();
    let resp = post(&claude, &ask(true, "hi")).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ev = events(&resp.text().await.unwrap());
    assert_eq!(
        names(&ev),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(text_of(&ev), "Hello\u{0} there 🚚");
    assert_eq!(ev[0].1["message"]["model"], "claude-haiku-5-5");
    assert!(
        ev[0].1["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(ev[7].1["delta"]["stop_reason"], "end_turn");
    assert!(ev[7].1["usage"]["output_tokens"].as_u64().unwrap() > 1);
    let got = claude.last().unwrap();
    assert!(got.streamed);
    assert_eq!(got.api_key.as_deref(), Some("sk-test"));
    assert_eq!(got.anthropic_version.as_deref(), Some("2023-06-01"));
}

#[tokio::test]
async fn queued_scenarios_answer_in_order_then_the_default() {
    let claude = FakeClaude::answering("default").await;
    claude
        .push(Scenario::overloaded().retry_after(2).retry_after_ms(1500))
        .push(Scenario::text("second").stop_reason(StopReason::MaxTokens));
    assert_eq!(claude.queued(), 2);
    let r = post(&claude, &ask(false, "1")).await;
    assert_eq!(r.status(), 529);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.headers()["retry-after-ms"], "1500");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
    let body: Value = post(&claude, &ask(false, "2")).await.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "second");
    assert_eq!(body["stop_reason"], "max_tokens");
    let body: Value = post(&claude, &ask(false, "3")).await.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "default");
    assert_eq!(claude.requests(), 3);
    let seen: Vec<Value> = claude.received().into_iter().map(|r| r.body).collect();
    assert_eq!(seen[2]["messages"][0]["content"], "3");
}

#[tokio::test]
async fn thinking_tool_use_and_unknown_events_stream_as_the_api_sends_them() {
    let claude = FakeClaude::start().await;
    claude.push(
        Scenario::tool_use("hand_off", json!({ "reason": "shopper_request" }))
            .with_text("One moment.")
            .thinking("The shopper wants a person.")
            .unknown_event()
            .chunks(2),
    );
    let ev = events(
        &post(&claude, &ask(true, "a human please"))
            .await
            .text()
            .await
            .unwrap(),
    );
    let blocks: Vec<&str> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(blocks, ["thinking", "text", "tool_use"]);
    assert!(names(&ev).contains(&"fake_future_event"));
    assert_eq!(text_of(&ev), "One moment.");
    let input: String = ev
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({ "reason": "shopper_request" })
    );
    let stop = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn a_mid_stream_error_event_follows_k_deltas_and_ends_the_stream() {
    let claude = FakeClaude::start().await;
    claude.push(Scenario::text("abcdef").chunks(6).error_event_after(2));
    let ev = events(&post(&claude, &ask(true, "hi")).await.text().await.unwrap());
    assert_eq!(text_of(&ev), "ab");
    let (last, data) = ev.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn a_dropped_stream_breaks_the_body_and_a_stalled_one_goes_quiet() {
    let claude = FakeClaude::start().await;
    claude.push(Scenario::text("abcdef").chunks(6).drop_after(1));
    let resp = post(&claude, &ask(true, "hi")).await;
    assert!(resp.text().await.is_err(), "the body must not complete");

    claude.push(Scenario::text("abcdef").chunks(6).stall_after(3));
    let mut resp = post(&claude, &ask(true, "hi")).await;
    let mut got = String::new();
    let started = Instant::now();
    while let Ok(chunk) = tokio::time::timeout(Duration::from_millis(300), resp.chunk()).await {
        got.push_str(&String::from_utf8_lossy(&chunk.unwrap().expect("open")));
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(text_of(&events(&got)), "abc");
}

#[tokio::test]
async fn timing_spaces_the_deltas() {
    // Generous: the headers must beat a first token that is far away, even on a busy machine.
    let first_token = Duration::from_millis(600);
    let claude = FakeClaude::start().await;
    let s = Scenario::text("abcd")
        .chunks(4)
        .first_token(first_token)
        .gap(Duration::from_millis(40));
    claude.push(s.clone()).push(s);
    let started = Instant::now();
    let mut resp = post(&claude, &ask(true, "hi")).await;
    let head = started.elapsed();
    assert!(head < first_token * 3 / 4, "headers come at once: {head:?}");
    let first = loop {
        let chunk = resp.chunk().await.unwrap().unwrap();
        if String::from_utf8_lossy(&chunk).contains("text_delta") {
            break started.elapsed();
        }
    };
    assert!(first >= first_token, "{first:?}");
    resp.text().await.unwrap();
    assert!(started.elapsed() >= first_token + Duration::from_millis(120));
    let tokens = claude
        .last_tokens()
        .expect("the stream's tokens were timed");
    assert_eq!(tokens.count, 4);
    assert!(tokens.first - started >= first_token, "{tokens:?}");
    assert!(tokens.last - tokens.first >= Duration::from_millis(120));
    let started = Instant::now();
    post(&claude, &ask(false, "hi")).await.text().await.unwrap();
    assert!(
        started.elapsed() >= first_token + Duration::from_millis(120),
        "a whole answer waits for every token"
    );
}

#[tokio::test]
async fn only_the_configured_number_of_requests_is_kept() {
    let claude = FakeClaude::builder().keep(2).start().await.unwrap();
    for i in 0..5 {
        post(&claude, &ask(false, &i.to_string()))
            .await
            .text()
            .await
            .unwrap();
    }
    assert_eq!(claude.requests(), 5);
    let kept: Vec<Value> = claude
        .received()
        .into_iter()
        .map(|r| r.body["messages"][0]["content"].clone())
        .collect();
    assert_eq!(kept, [json!("3"), json!("4")]);
}
