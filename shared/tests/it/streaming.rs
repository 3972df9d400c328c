//! Streamed replies (`Accept: text/event-stream`): event order, timing
//! against the fake Claude's tokens, failures mid-stream, a client that
//! leaves, replays, both payload versions; and the JSON path unchanged.

use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support_chat::config::{Config, Env};
use support_chat::{App, http};
use testkit::claude::{FakeClaude, Scenario, StopReason};
use testkit::events::Event;

use super::support::{RedisNs, TestDb};

/// A chat app against a fresh database, its own Redis prefix and a fake Claude.
pub struct Chat {
    pub app: Arc<App>,
    pub db: TestDb,
    pub redis: RedisNs,
    pub claude: FakeClaude,
}

impl Chat {
    pub async fn new(extra: &[(&str, &str)]) -> Self {
        Self::with_metrics(extra, support_chat::metrics::Metrics::off()).await
    }

    /// The same, writing its EMF documents to `metrics`.
    pub async fn with_metrics(
        extra: &[(&str, &str)],
        metrics: support_chat::metrics::Metrics,
    ) -> Self {
        let db = TestDb::new().await;
        let redis = RedisNs::new();
        let claude = FakeClaude::start().await;
        let mut env = Env::from_pairs([
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", super::support::redis_url()),
            ("REDIS_KEY_PREFIX", redis.prefix.clone()),
            ("CLAUDE_API_KEY", "test-key".to_owned()),
            ("ANTHROPIC_BASE_URL", claude.url().to_string()),
            ("CLAUDE_MAX_ATTEMPTS", "2".to_owned()),
        ]);
        for (k, v) in extra {
            env.set(*k, *v);
        }
        let app = App::new(Config::from_env(&env).expect("config")).expect("app");
        let app = Arc::new(app.with_metrics(metrics));
        Chat {
            app,
            db,
            redis,
            claude,
        }
    }

    /// Sends and collects the response's frames with their arrival times.
    pub async fn frames(&self, ev: Event) -> Frames {
        let started = Instant::now();
        let resp = http::send_message(&self.app, ev.request()).await.unwrap();
        let (parts, mut body) = resp.into_parts();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            frames.push((started.elapsed(), String::from_utf8(data.to_vec()).unwrap()));
        }
        Frames {
            status: parts.status.as_u16(),
            headers: parts.headers,
            frames,
        }
    }

    pub async fn stream(&self, message: &str, session: Option<&str>) -> Frames {
        self.frames(Event::send(message, session).accept("text/event-stream"))
            .await
    }

    /// The AI rows, oldest first: (id, text, source, fallback_reason, output tokens).
    pub async fn ai_rows(&self) -> Vec<(uuid::Uuid, String, String, Option<String>, Option<i32>)> {
        let c = self.db.client().await;
        c.query(
            "SELECT id, text, source, fallback_reason, output_tokens FROM chat_messages WHERE sender = 'ai' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
    }
}

/// The request bodies the fake Claude received, oldest first.
pub trait Bodies {
    fn bodies(&self) -> Vec<Value>;
}

impl Bodies for FakeClaude {
    fn bodies(&self) -> Vec<Value> {
        self.received().into_iter().map(|r| r.body).collect()
    }
}

pub struct Frames {
    pub status: u16,
    pub headers: lambda_http::http::HeaderMap,
    pub frames: Vec<(Duration, String)>,
}

impl Frames {
    /// The events in order: (arrival, name, data).
    pub fn events(&self) -> Vec<(Duration, String, Value)> {
        let mut out = Vec::new();
        for (at, text) in &self.frames {
            for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .expect("every event is named");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("every event has data");
                out.push((*at, name.to_owned(), serde_json::from_str(data).unwrap()));
            }
        }
        out
    }

    pub fn names(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, n, _)| n).collect()
    }

    pub fn last(&self) -> Value {
        self.events().pop().expect("at least one event").2
    }

    pub fn deltas(&self) -> String {
        self.events()
            .into_iter()
            .filter(|(_, n, _)| n == "delta")
            .map(|(_, _, d)| d["text"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

const ANSWER: &str =
    "We ship in 3 to 5 days. Express takes 1 to 2 days. Orders over $50 ship free!";

#[tokio::test]
async fn a_stream_sends_session_then_deltas_then_done_with_the_stored_reply() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text(ANSWER).chunks(5));
    let f = chat.stream("How long does shipping take?", None).await;
    assert_eq!(f.status, 200);
    assert_eq!(
        f.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let names = f.names();
    assert_eq!(names.first().map(String::as_str), Some("session"));
    assert_eq!(names.last().map(String::as_str), Some("done"));
    assert!(
        names[1..names.len() - 1].iter().all(|n| n == "delta"),
        "{names:?}"
    );
    assert!(names.len() >= 4, "several deltas: {names:?}");
    assert_eq!(f.deltas(), ANSWER);
    let done = f.last();
    let rows = chat.ai_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        done["reply"], rows[0].1,
        "done.reply is exactly the stored text"
    );
    assert_eq!(done["messageId"], rows[0].0.to_string());
    assert_eq!(done["sessionId"], f.events()[0].2["sessionId"]);
    assert_eq!(rows[0].2, "claude");
    assert!(rows[0].4.is_some(), "usage stored for streamed replies too");
    let sent = chat.claude.bodies();
    assert_eq!(sent[0]["stream"], true);
    assert_eq!(sent[0]["thinking"]["type"], "disabled");
}

#[tokio::test]
async fn without_the_accept_header_the_answer_is_the_json_reply() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text(ANSWER).chunks(5));
    let f = chat
        .frames(Event::send("How long does shipping take?", None))
        .await;
    assert_eq!(f.status, 200);
    assert_eq!(f.header("content-type"), Some("application/json"));
    let body: Value =
        serde_json::from_str(&f.frames.iter().map(|(_, t)| t.as_str()).collect::<String>())
            .unwrap();
    assert_eq!(body["reply"], ANSWER);
    assert!(body["sessionId"].is_string());
    assert!(
        chat.claude.bodies()[0].get("stream").is_none(),
        "not streamed from Claude either"
    );
}

#[tokio::test]
async fn session_comes_before_claudes_first_token_and_each_delta_as_it_is_written() {
    let chat = Chat::new(&[]).await;
    let first_token = Duration::from_millis(400);
    let gap = Duration::from_millis(120);
    chat.claude.set_default(
        Scenario::text(ANSWER)
            .chunks(5)
            .first_token(first_token)
            .gap(gap),
    );
    let f = chat.stream("How long does shipping take?", None).await;
    let ev = f.events();
    let (session_at, first_delta_at) = (ev[0].0, ev[1].0);
    assert_eq!(ev[0].1, "session");
    assert!(
        session_at < first_token,
        "session at {session_at:?}, before the first token"
    );
    assert!(first_delta_at >= first_token, "{first_delta_at:?}");
    assert!(
        first_delta_at < first_token + Duration::from_millis(150),
        "first delta {first_delta_at:?} right after the first token"
    );
    let last_delta_at = ev.iter().rev().find(|e| e.1 == "delta").unwrap().0;
    assert!(
        last_delta_at - first_delta_at >= gap * 3,
        "deltas spread over time, not one lump: {first_delta_at:?} .. {last_delta_at:?}"
    );
}

#[tokio::test]
async fn an_error_mid_stream_ends_with_done_cut_at_the_last_sentence_and_no_retry() {
    let chat = Chat::new(&[]).await;
    chat.claude
        .set_default(Scenario::text(ANSWER).chunks(6).error_event_after(3));
    let f = chat.stream("How long does shipping take?", None).await;
    assert_eq!(f.names().last().map(String::as_str), Some("done"));
    let done = f.last();
    let rows = chat.ai_rows().await;
    assert_eq!(done["reply"], rows[0].1);
    let reply = done["reply"].as_str().unwrap();
    assert!(
        f.deltas().starts_with(reply),
        "the stored text is a cut of what was shown: {reply:?}"
    );
    assert!(reply.ends_with('.') || reply.ends_with('!'), "{reply:?}");
    assert_eq!(rows[0].3.as_deref(), Some("overloaded"));
    assert_eq!(
        chat.claude.bodies().len(),
        1,
        "no second, different beginning"
    );
}

#[tokio::test]
async fn a_dropped_or_stalled_stream_still_ends_with_done() {
    for (scenario, reason) in [
        (Scenario::text(ANSWER).chunks(6).drop_after(4), "connection"),
        (Scenario::text(ANSWER).chunks(6).stall_after(4), "timeout"),
    ] {
        let chat = Chat::new(&[("CLAUDE_ATTEMPT_TIMEOUT_MS", "400")]).await;
        chat.claude.set_default(scenario);
        let started = Instant::now();
        let f = chat.stream("How long does shipping take?", None).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{reason}");
        assert_eq!(
            f.names().last().map(String::as_str),
            Some("done"),
            "{reason}"
        );
        let rows = chat.ai_rows().await;
        assert_eq!(f.last()["reply"], rows[0].1, "{reason}");
        assert_eq!(rows[0].3.as_deref(), Some(reason));
    }
}

#[tokio::test]
async fn a_failure_before_any_delta_is_retried_and_nothing_usable_gives_the_fallback() {
    let chat = Chat::new(&[]).await;
    chat.claude.push(Scenario::overloaded());
    chat.claude
        .set_default(Scenario::text("Hello there! How can I help?").chunks(3));
    let f = chat.stream("hi", None).await;
    assert_eq!(f.last()["reply"], "Hello there! How can I help?");
    assert_eq!(chat.claude.bodies().len(), 2);

    let chat = Chat::new(&[]).await;
    chat.claude.set_default(
        Scenario::text("Our return window is thirty")
            .chunks(4)
            .drop_after(2),
    );
    let f = chat.stream("What is your return policy?", None).await;
    let rows = chat.ai_rows().await;
    assert_eq!(
        rows[0].2, "fallback",
        "no complete sentence came: the store facts answer"
    );
    assert_eq!(f.last()["reply"], rows[0].1);
    assert!(rows[0].1.contains("30 days"), "{}", rows[0].1);
}

#[tokio::test]
async fn the_deadline_nearing_mid_stream_still_ends_with_done_in_time() {
    let chat = Chat::new(&[
        ("REQUEST_BUDGET_MS", "2500"),
        ("CLAUDE_RESPONSE_MARGIN_MS", "1000"),
        ("CLAUDE_ATTEMPT_TIMEOUT_MS", "5000"),
    ])
    .await;
    chat.claude.set_default(
        Scenario::text(ANSWER)
            .chunks(8)
            .gap(Duration::from_millis(400)),
    );
    let started = Instant::now();
    let f = chat.stream("How long does shipping take?", None).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.names().last().map(String::as_str), Some("done"));
    let rows = chat.ai_rows().await;
    assert_eq!(rows[0].3.as_deref(), Some("deadline"));
    assert_eq!(f.last()["reply"], rows[0].1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_gets_its_reply_stored() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(
        Scenario::text(ANSWER)
            .chunks(5)
            .gap(Duration::from_millis(100)),
    );
    let req = Event::send("How long does shipping take?", None)
        .accept("text/event-stream")
        .request();
    let resp = http::send_message(&chat.app, req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: session"));
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = chat.ai_rows().await;
        if let Some(row) = rows.first() {
            assert_eq!(row.1, ANSWER);
            break;
        }
        assert!(Instant::now() < deadline, "the reply was never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replayed_stream_is_session_one_delta_and_done() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text(ANSWER).chunks(4));
    let key = "5f0d8c1e-2b7a-4c3d-9e8f-a1b2c3d4e5f6";
    let ev = || {
        Event::send("How long does shipping take?", None)
            .accept("text/event-stream")
            .idempotency_key(key)
    };
    let first = chat.frames(ev()).await;
    let again = chat.frames(ev()).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.names(), ["session", "delta", "done"]);
    assert_eq!(again.deltas(), ANSWER);
    assert_eq!(
        again.last(),
        first.last(),
        "the same done, messageId included"
    );
    assert_eq!(chat.claude.bodies().len(), 1);
}

#[tokio::test]
async fn refusals_before_the_stream_are_json_errors() {
    let chat = Chat::new(&[("RATE_LIMIT_PER_IP_PER_MINUTE", "1")]).await;
    let bad = chat
        .frames(Event::chat("{\"message\": \"\"}").accept("text/event-stream"))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("content-type"), Some("application/json"));
    let ok = chat.stream("hi", None).await;
    assert_eq!(ok.status, 200);
    let limited = chat.stream("hi again", None).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    assert!(limited.header("retry-after").is_some());
}

#[tokio::test]
async fn both_payload_versions_stream() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text(ANSWER).chunks(3));
    for ev in [
        Event::send("Shipping?", None).accept("text/event-stream"),
        Event::send("Shipping?", None)
            .v1()
            .accept("text/event-stream"),
    ] {
        let f = chat.frames(ev).await;
        assert_eq!(f.names().first().map(String::as_str), Some("session"));
        assert_eq!(f.last()["reply"], ANSWER);
    }
}

#[tokio::test]
async fn claudes_control_characters_are_cleaned_and_never_a_5xx() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text("Hi\u{0} there"));
    let f = chat.frames(Event::send("hello", None)).await;
    assert_eq!(f.status, 200);
    let f2 = chat.stream("hello", None).await;
    assert_eq!(f2.last()["reply"], "Hi there");
    let rows = chat.ai_rows().await;
    assert!(rows.iter().all(|r| r.1 == "Hi there"), "{rows:?}");
}

#[tokio::test]
async fn a_reply_cut_by_max_tokens_streams_then_done_holds_the_trimmed_text() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(
        Scenario::text("We ship fast. Orders over $50 ship fr")
            .chunks(4)
            .stop_reason(StopReason::MaxTokens),
    );
    let f = chat.stream("shipping?", None).await;
    assert_eq!(f.deltas(), "We ship fast. Orders over $50 ship fr");
    assert_eq!(f.last()["reply"], "We ship fast.");
}
