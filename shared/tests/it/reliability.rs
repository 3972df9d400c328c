//! Idempotent retries, database outages, the retention cleanup, and a soak:
//! nothing duplicated, nothing lost, no 5xx a client can cause.

use super::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::claude::{FakeClaude, Scenario};
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn with_key(body: &str, key: &str) -> lambda_http::Request {
    post_v2(body, &[("idempotency-key", key)])
}

#[tokio::test]
async fn a_repeated_request_with_the_same_key_replays_the_stored_response() {
    let h = Harness::new().await;
    let body = json_body("What is your return policy?", None);
    let first = h.send(with_key(&body, "order-123-attempt")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same request, different JSON spacing: still the same request.
    let again = h
        .send(with_key(&format!("  {body}\n"), "order-123-attempt"))
        .await;
    assert_eq!(again.status, 200, "{}", again.raw);
    assert_eq!(again.body, first.body, "same reply, same sessionId");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.db.messages().await, 2, "nothing stored twice");
    assert_eq!(h.claude_requests().await.len(), 1, "Claude called once");
}

#[tokio::test]
async fn reusing_a_key_with_a_different_body_is_refused_and_stores_nothing() {
    let h = Harness::new().await;
    assert_eq!(
        h.send(with_key(&json_body("one", None), "k-1-0000000000000"))
            .await
            .status,
        200
    );
    let r = h
        .send(with_key(&json_body("two", None), "k-1-0000000000000"))
        .await;
    assert_eq!((r.status, r.code()), (422, "idempotency_key_reused"));
    assert_eq!(h.db.messages().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_requests_with_one_key_store_one_exchange_and_call_claude_once() {
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(claude_says("Happy to help!"))
                .set_delay(Duration::from_millis(400)),
        )
        .mount(&claude)
        .await;
    let mut opts = Options::default();
    opts.extra.push(("DATABASE_POOL_SIZE".into(), "10".into()));
    let h = Arc::new(Harness::with(opts, claude).await);
    let body = json_body("Where is my order?", None);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (h, body) = (h.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            h.send(with_key(&body, "same-key-00000000")).await
        }));
    }
    let mut ok = Vec::new();
    let mut in_progress = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok.push(r.body),
            409 => {
                assert_eq!(r.code(), "request_in_progress");
                assert!(r.header("retry-after").is_some());
                in_progress += 1;
            }
            other => panic!("unexpected {other}: {}", r.raw),
        }
    }
    assert!(!ok.is_empty());
    assert!(
        ok.iter().all(|b| *b == ok[0]),
        "every 200 is the same reply"
    );
    assert_eq!(ok.len() + in_progress, 10);
    assert_eq!(
        h.db.count("SELECT count(*) FROM chat_messages WHERE sender = 'user'")
            .await,
        1
    );
    assert_eq!(
        h.db.count("SELECT count(*) FROM chat_messages WHERE sender = 'ai'")
            .await,
        1
    );
    assert_eq!(h.claude_requests().await.len(), 1);
}

#[tokio::test]
async fn a_retry_after_a_failure_resumes_without_storing_the_message_twice() {
    let h = Harness::new().await;
    let db = h.db.client().await;
    // The reply cannot be stored: the first attempt fails after the user's message is in.
    db.batch_execute(
        "CREATE FUNCTION no_ai() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'simulated failure'; END $$;
         CREATE TRIGGER no_ai BEFORE INSERT ON chat_messages FOR EACH ROW WHEN (NEW.sender = 'ai') EXECUTE FUNCTION no_ai();",
    )
    .await
    .unwrap();
    let body = json_body("Do you ship to Canada?", None);
    let r = h.send(with_key(&body, "retry-me-00000000")).await;
    assert_eq!(r.status, 500, "{}", r.raw);
    assert_eq!(h.db.messages().await, 1, "the user's message is kept");

    db.batch_execute("DROP TRIGGER no_ai ON chat_messages")
        .await
        .unwrap();
    let r = h.send(with_key(&body, "retry-me-00000000")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let history = h.history(&r.session_id()).await;
    let msgs = history.body["messages"].as_array().unwrap();
    let texts: Vec<_> = msgs.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["Do you ship to Canada?", "We ship worldwide 🚚"],
        "one user message, then the reply"
    );
    // The resumed request sent the stored message once as the new turn.
    let last = h.claude_requests().await.pop().unwrap();
    assert_eq!(
        last["messages"],
        serde_json::json!([{ "role": "user", "content": "Do you ship to Canada?" }])
    );
    // And now it replays.
    assert_eq!(
        h.send(with_key(&body, "retry-me-00000000"))
            .await
            .header("idempotent-replayed"),
        Some("true")
    );
}

/// A TCP proxy in front of PostgreSQL that can be cut and restored, to play
/// an outage and a recovery under one warm app.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, count) = (up.clone(), active.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    break;
                };
                let flag = flag.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    if !flag.load(Ordering::SeqCst) {
                        return; // refuse: drop the connection at once
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    // Copy both ways until either side closes or the switch goes down.
                    let pump = async {
                        tokio::select! {
                            _ = tokio::io::copy(&mut cr, &mut sw) => {},
                            _ = tokio::io::copy(&mut sr, &mut cw) => {},
                        }
                    };
                    let watch = async {
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = pump => {}, _ = watch => {} }
                    drop((client, server));
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Switch {
            port,
            up,
            active,
            task,
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Cuts every connection and refuses new ones; returns once all are closed.
    async fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let active = self.active.clone();
        eventually("the switch to close its connections", || {
            let n = active.load(Ordering::SeqCst);
            async move { n == 0 }
        })
        .await;
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn with_the_database_unreachable_requests_get_503_quickly_and_recover_when_it_returns() {
    let mut h = Harness::new().await;
    let sid = h
        .post(&json_body("before the outage", None))
        .await
        .session_id();

    let pg_addr = pg_addr(&h.db.url).await;
    let switch = Switch::start(pg_addr).await;
    let proxied = h.db.url.replacen(
        &format!(":{}/", pg_addr.port()),
        &format!(":{}/", switch.port),
        1,
    );
    let proxied = proxied.replacen("@localhost/", &format!("@127.0.0.1:{}/", switch.port), 1);
    assert_ne!(proxied, h.db.url, "the app goes through the switch");
    let mut opts = Options::default();
    opts.extra.push(("DATABASE_URL".into(), proxied));
    opts.extra
        .push(("DATABASE_CONNECT_TIMEOUT_MS".into(), "1000".into()));
    opts.extra
        .push(("DATABASE_STATEMENT_TIMEOUT_MS".into(), "1500".into()));
    h.reconfigure(opts);
    assert_eq!(
        h.history(&sid).await.status,
        200,
        "works through the switch"
    );

    switch.down().await;
    for attempt in 0..2 {
        let started = Instant::now();
        let r = h.post(&json_body("during the outage", Some(&sid))).await;
        assert_eq!(
            (r.status, r.code()),
            (503, "service_unavailable"),
            "attempt {attempt}: {}",
            r.raw
        );
        assert!(r.header("retry-after").is_some());
        let g = h.history(&sid).await;
        assert_eq!((g.status, g.code()), (503, "service_unavailable"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            started.elapsed()
        );
        assert!(
            !r.raw.contains("127.0.0.1") && !g.raw.contains("postgres"),
            "opaque"
        );
    }

    switch.up();
    let r = h.post(&json_body("after the outage", Some(&sid))).await;
    assert_eq!(r.status, 200, "the same warm app recovers: {}", r.raw);
    let msgs = h.history(&sid).await.body["messages"]
        .as_array()
        .unwrap()
        .clone();
    let texts: Vec<_> = msgs
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts[0], "before the outage");
    assert_eq!(
        texts[2], "after the outage",
        "nothing half-written from the outage: {texts:?}"
    );
    assert_eq!(texts.len(), 4);
}

#[tokio::test]
async fn a_database_at_a_closed_port_gives_503_within_the_connect_timeout() {
    let mut h = Harness::new().await;
    let mut opts = Options::default();
    opts.extra.push((
        "DATABASE_URL".into(),
        "postgres://postgres@127.0.0.1:1/nowhere?sslmode=disable".into(),
    ));
    opts.extra
        .push(("DATABASE_CONNECT_TIMEOUT_MS".into(), "1000".into()));
    h.reconfigure(opts);
    let started = Instant::now();
    let r = h.post(&json_body("hello?", None)).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "service_unavailable"),
        "{}",
        r.raw
    );
    assert_eq!(r.header("retry-after"), Some("2"));
    let g = h.history("550e8400-e29b-41d4-a716-446655440000").await;
    assert_eq!(g.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_cleanup_deletes_idle_sessions_and_old_keys_and_keeps_the_rest() {
    let h = Harness::new().await;
    let old = h
        .send(with_key(&json_body("old chat", None), "old-key-000000000"))
        .await
        .session_id();
    let recent = h.post(&json_body("recent chat", None)).await.session_id();
    let db = h.db.client().await;
    db.execute("UPDATE chat_sessions SET updated_at = now() - interval '91 days' WHERE id = $1::text::uuid", &[&old])
        .await
        .unwrap();
    db.batch_execute("INSERT INTO idempotency_keys (key, fingerprint, created_at) VALUES ('stale', '\\x00', now() - interval '25 hours')")
        .await
        .unwrap();
    let (sessions, keys) = h.app.cleanup().await.unwrap();
    assert_eq!(sessions, 1);
    assert!(
        keys >= 1,
        "the stale key (and the old session's key) are gone"
    );
    assert_eq!(h.history(&old).await.status, 404);
    assert_eq!(h.history(&recent).await.status, 200);
    assert_eq!(
        h.db.messages().await,
        2,
        "the old session's messages went with it"
    );
    assert_eq!(h.db.count("SELECT count(*) FROM idempotency_keys").await, 0);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_of_5000_mixed_requests_has_no_5xx_loses_nothing_and_does_not_grow() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    // Keeps no request bodies (wiremock keeps every one), so memory measures the app.
    let claude = FakeClaude::builder()
        .default_scenario(Scenario::text("Glad to help 🙂"))
        .keep(0)
        .start()
        .await
        .unwrap();
    opts.extra
        .push(("RATE_LIMIT_PER_SESSION_PER_MINUTE".into(), "0".into()));
    opts.extra
        .push(("RATE_LIMIT_PER_IP_PER_MINUTE".into(), "0".into()));
    opts.extra.push(("DATABASE_POOL_SIZE".into(), "8".into()));
    let h = Arc::new(Harness::with_fake(opts, claude).await);

    const WORKERS: usize = 8;
    const PER_WORKER: usize = 625; // 5,000 requests
    let run = |h: Arc<Harness>, w: usize, start: usize, n: usize| async move {
        let mut acked: Vec<(String, String)> = Vec::new(); // (session, user text)
        let mut sessions: Vec<String> = Vec::new();
        let mut fivexx = 0;
        for i in start..start + n {
            let kind = (i * 7 + w) % 10;
            if kind < 3 || sessions.is_empty() {
                let text = format!("w{w} new {i}");
                let r = h.post(&json_body(&text, None)).await;
                if r.status >= 500 {
                    fivexx += 1;
                }
                if r.status == 200 {
                    sessions.push(r.session_id());
                    acked.push((r.session_id(), text));
                }
            } else if kind < 7 {
                let s = sessions[i % sessions.len()].clone();
                let text = format!("w{w} more {i}");
                let r = h.post(&json_body(&text, Some(&s))).await;
                if r.status >= 500 {
                    fivexx += 1;
                }
                if r.status == 200 {
                    acked.push((s, text));
                }
            } else if kind < 9 {
                let s = &sessions[i % sessions.len()];
                let r = h.history(s).await;
                if r.status >= 500 {
                    fivexx += 1;
                }
                assert_eq!(r.status, 200);
            } else {
                // Garbage a client could send: 4xx, never 5xx.
                let r = h.post(r#"{"message": 12}"#).await;
                assert_eq!(r.status, 400);
            }
        }
        (acked, fivexx)
    };

    // Warm up, then measure memory over the rest.
    let warm = run(h.clone(), 99, 0, 200).await;
    assert_eq!(warm.1, 0);
    let rss_start = rss_kib();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        tasks.push(tokio::spawn(run(h.clone(), w, 0, PER_WORKER)));
    }
    let mut acked = Vec::new();
    for t in tasks {
        let (a, fivexx) = t.await.unwrap();
        assert_eq!(fivexx, 0, "no 5xx");
        acked.extend(a);
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib();
    eprintln!(
        "soak: {} requests in {:.1}s, {} acknowledged messages; RSS {} KiB -> {} KiB",
        WORKERS * PER_WORKER,
        elapsed.as_secs_f64(),
        acked.len(),
        rss_start,
        rss_end
    );

    // Every acknowledged message is in its session's history, with a reply after it.
    let mut by_session: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (s, t) in acked {
        by_session.entry(s).or_default().push(t);
    }
    for (s, sent) in &by_session {
        let r = h.history(s).await;
        let msgs = r.body["messages"].as_array().unwrap();
        for t in sent {
            let pos = msgs
                .iter()
                .position(|m| m["text"] == t.as_str())
                .unwrap_or_else(|| panic!("lost: {t}"));
            assert!(
                msgs[pos + 1..].iter().any(|m| m["sender"] == "ai"),
                "reply after {t}"
            );
        }
    }
    assert!(
        rss_end < rss_start + 16 * 1024,
        "memory grew from {rss_start} KiB to {rss_end} KiB"
    );
}

#[tokio::test]
async fn a_hanging_statement_is_cut_off_by_the_statement_timeout() {
    let mut h = Harness::new().await;
    let mut opts = Options::default();
    opts.extra
        .push(("DATABASE_STATEMENT_TIMEOUT_MS".into(), "500".into()));
    h.reconfigure(opts);
    h.db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON chat_messages FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let r = h.post(&json_body("hello", None)).await;
    assert_eq!(
        (r.status, r.code()),
        (503, "service_unavailable"),
        "{}",
        r.raw
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The statement was cancelled on the server: nothing commits after the 503.
    let db = &h.db;
    eventually("the cancelled statement to end", || async {
        db.count("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%chat_sessions%' AND state = 'active' AND pid <> pg_backend_pid()").await == 0
    })
    .await;
    assert_eq!(
        h.db.messages().await,
        0,
        "the timed-out insert did not commit"
    );
    assert_eq!(h.db.sessions().await, 0);
    // Without the trigger, the same app works again (the stuck connection was discarded).
    h.db.client()
        .await
        .batch_execute("DROP TRIGGER slow ON chat_messages")
        .await
        .unwrap();
    let r = h.post(&json_body("hello again", None)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
}
