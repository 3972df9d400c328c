//! The test support itself: a [`Harness`] on testkit's scripted fake Claude
//! streams through [`Harness::send_raw`], and one on a URL where nothing
//! listens still answers (the offline fallback).

use http_body_util::BodyExt;
use serde_json::Value;
use testkit::claude::{FakeClaude, Scenario};
use testkit::events::Event;

use super::support::*;

#[tokio::test]
async fn a_harness_on_the_scripted_fake_streams_the_reply_it_is_given() {
    let h = Harness::with_fake(Options::default(), FakeClaude::answering("unused").await).await;
    h.fake()
        .push(Scenario::text("Hi from the stream").chunks(3));
    let req = Event::send("hello", None)
        .accept("text/event-stream")
        .request();
    let resp = h.send_raw(req).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"session"), "{text}");
    assert_eq!(names.last(), Some(&"done"), "{text}");
    assert!(names.contains(&"delta"), "{text}");
    let done: Value = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .unwrap();
    assert_eq!(done["reply"], "Hi from the stream");
    assert_eq!(h.claude_requests().await.len(), 1);
    assert!(
        h.fake().last().unwrap().streamed,
        "the app asked Claude for a stream"
    );
}

#[tokio::test]
async fn a_harness_on_a_url_where_nothing_listens_still_answers() {
    let h = Harness::with_claude_url(Options::default(), "http://127.0.0.1:1").await;
    let r = h
        .post(&json_body("What is your return policy?", None))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(
        !r.body["reply"].as_str().unwrap_or("").is_empty(),
        "{}",
        r.raw
    );
    assert_eq!(h.db.messages().await, 2, "both messages are stored");
}
