//! The Redis history cache and rate limits, against the real Redis: never
//! stale after an acknowledged write, correct under concurrency, and never
//! in the way when Redis misbehaves.

use super::support::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support_chat::domain::SessionId;
use support_chat::service::CacheOutcome;

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn texts(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_after_a_post_always_shows_the_posts_messages_despite_racing_readers() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("RATE_LIMIT_PER_SESSION_PER_MINUTE".into(), "0".into()));
    opts.extra
        .push(("RATE_LIMIT_PER_IP_PER_MINUTE".into(), "0".into()));
    let h = Arc::new(Harness::with(opts, fake_claude_answering("ok").await).await);
    let id = h.post(&json_body("round 0", None)).await.session_id();
    for round in 1..=30 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (h, id, stop) = (h.clone(), id.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                    assert_eq!(h.history(&id).await.status, 200);
                    n += 1;
                }
            }));
        }
        let msg = format!("round {round}");
        let r = h.post(&json_body(&msg, Some(&id))).await;
        assert_eq!(r.status, 200);
        let (body, _) = h
            .app
            .get_history(sid(&id), Default::default(), None)
            .await
            .unwrap();
        let t = texts(&body);
        assert_eq!(t.len(), 2 * (round + 1), "round {round}: {t:?}");
        assert_eq!(t[t.len() - 2], msg, "round {round}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
    }
    // The last read came from the cache, and it was complete.
    let (body, outcome) = h
        .app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(texts(&body).len(), 62);
}

#[tokio::test]
async fn a_reader_that_read_the_database_before_a_write_cannot_make_the_cache_serve_it() {
    let h = Harness::with_redis().await;
    let cache = h.app.cache().unwrap();
    let id = h.post(&json_body("first", None)).await.session_id();
    let s = sid(&id);

    // The reader's first half: the database as it is now.
    let page = h.app.store().history(s, 500, None).await.unwrap().unwrap();
    let stale = serde_json::to_vec(&support_chat::domain::History {
        session_id: s,
        messages: page.messages,
        status: page.status,
        has_more: false,
    })
    .unwrap();
    assert_eq!(texts(&stale).len(), 2);

    // A write lands and is acknowledged in between.
    assert_eq!(h.post(&json_body("second", Some(&id))).await.status, 200);

    // The reader's second half: its late fill lands, but it shows an older
    // version of the conversation than the database's, so it is never served.
    cache.fill(s, page.version, &stale).await.unwrap();
    let (body, outcome) = h
        .app
        .get_history(s, Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(texts(&body).len(), 4);
    let (body, outcome) = h
        .app
        .get_history(s, Default::default(), None)
        .await
        .unwrap();
    assert_eq!((outcome, texts(&body).len()), (CacheOutcome::Hit, 4));

    // And an entry at the current version is served, so the check is not vacuous.
    let current = h.app.store().session_version(s).await.unwrap().unwrap();
    cache.fill(s, current, b"{}").await.unwrap();
    let (body, outcome) = h
        .app
        .get_history(s, Default::default(), None)
        .await
        .unwrap();
    assert_eq!((outcome, body.as_slice()), (CacheOutcome::Hit, &b"{}"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_posts_store_forty_messages_and_the_cache_matches_the_database() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra.push(("DATABASE_POOL_SIZE".into(), "8".into()));
    opts.extra
        .push(("RATE_LIMIT_PER_SESSION_PER_MINUTE".into(), "0".into()));
    let h = Arc::new(Harness::with(opts, fake_claude_answering("Sure thing!").await).await);
    let id = h.post(&json_body("start", None)).await.session_id();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (h, id) = (h.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            h.post(&json_body(&format!("message {i}"), Some(&id)))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.db.messages().await, 42);
    let s = sid(&id);
    let (first, _) = h
        .app
        .get_history(s, Default::default(), None)
        .await
        .unwrap();
    let (cached, outcome) = h
        .app
        .get_history(s, Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Hit);
    let page = h.app.store().history(s, 500, None).await.unwrap().unwrap();
    let from_db = serde_json::to_vec(&support_chat::domain::History {
        session_id: s,
        messages: page.messages,
        status: page.status,
        has_more: page.has_more,
    })
    .unwrap();
    assert_eq!(
        cached, from_db,
        "cache and database agree, in the same order"
    );
    assert_eq!(first, from_db);
    assert_eq!(texts(&cached).len(), 42);
}

#[tokio::test]
async fn the_history_entry_expires_after_the_configured_ttl() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("HISTORY_CACHE_TTL_SECONDS".into(), "600".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    let id = h.post(&json_body("hi", None)).await.session_id();
    h.app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    let ns = h.redis.as_ref().unwrap();
    let mut c = RedisNs::conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}:{{{id}}}:h", ns.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn the_request_over_the_session_limit_gets_429_and_changes_nothing() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("RATE_LIMIT_PER_SESSION_PER_MINUTE".into(), "3".into()));
    opts.extra
        .push(("RATE_LIMIT_WINDOW_SECONDS".into(), "2".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    let id = h.post(&json_body("new", None)).await.session_id(); // a new session is not charged
    for i in 0..3 {
        assert_eq!(
            h.post(&json_body(&format!("m{i}"), Some(&id))).await.status,
            200,
            "message {i}"
        );
    }
    let (messages, calls) = (h.db.messages().await, h.claude_requests().await.len());
    let r = h.post(&json_body("one too many", Some(&id))).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(h.db.messages().await, messages, "nothing stored");
    assert_eq!(h.claude_requests().await.len(), calls, "Claude not called");

    // The window resets.
    let started = Instant::now();
    eventually("the rate-limit window to reset", || async {
        h.post(&json_body("later", Some(&id))).await.status == 200
    })
    .await;
    assert!(started.elapsed() <= Duration::from_secs(4));
}

#[tokio::test]
async fn the_per_ip_limit_counts_new_sessions_from_one_address() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("RATE_LIMIT_PER_IP_PER_MINUTE".into(), "2".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    let ip = "198.51.100.23";
    for _ in 0..2 {
        assert_eq!(
            h.send(post_v2_from(&json_body("hi", None), &[], ip))
                .await
                .status,
            200
        );
    }
    let r = h.send(post_v2_from(&json_body("hi", None), &[], ip)).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    assert!(r.header("retry-after").is_some());
    // Another address is not affected.
    assert_eq!(
        h.send(post_v2_from(&json_body("hi", None), &[], "198.51.100.24"))
            .await
            .status,
        200
    );
    assert_eq!(h.db.messages().await, 6);
}

#[tokio::test]
async fn a_limit_of_zero_turns_that_limit_off() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("RATE_LIMIT_PER_IP_PER_MINUTE".into(), "0".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    for _ in 0..5 {
        assert_eq!(
            h.send(post_v2_from(&json_body("hi", None), &[], "198.51.100.99"))
                .await
                .status,
            200
        );
    }
}

async fn degraded(redis_url: &str) -> Harness {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra.push(("REDIS_URL".into(), redis_url.into()));
    opts.extra.push(("REDIS_TIMEOUT_MS".into(), "50".into()));
    opts.extra
        .push(("REDIS_CONNECT_TIMEOUT_MS".into(), "100".into()));
    Harness::with(opts, fake_claude_answering("ok").await).await
}

async fn assert_serves_from_postgres(h: &Harness) {
    let started = Instant::now();
    let r = h.post(&json_body("still there?", None)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let id = r.session_id();
    let r2 = h.post(&json_body("and again", Some(&id))).await;
    assert_eq!(r2.status, 200);
    let got = h.history(&id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["messages"].as_array().unwrap().len(), 4);
    let (_, outcome) = h
        .app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Error);
    // 4 requests with at most a few bounded Redis calls each.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn with_redis_refusing_connections_every_request_succeeds_from_postgres() {
    let h = degraded("redis://127.0.0.1:1").await;
    assert_serves_from_postgres(&h).await;
}

#[tokio::test]
async fn with_a_redis_that_never_answers_every_request_succeeds_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts connections and never says a word.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let h = degraded(&format!("redis://127.0.0.1:{port}")).await;
    assert_serves_from_postgres(&h).await;
    silent.abort();
}

/// A redis-server of the test's own, to stop and restart.
struct OwnRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16, dir: std::path::PathBuf) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        OwnRedis {
            port,
            dir,
            child: Some(child),
        }
    }

    async fn wait_ready(&self) {
        let url = format!("redis://127.0.0.1:{}", self.port);
        eventually("the test's redis-server to answer", || async {
            match redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
            {
                Ok(mut c) => redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_cache_comes_back_by_itself_when_redis_returns() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("chat-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = OwnRedis::start(port, dir.clone());
    server.wait_ready().await;
    let h = degraded(&format!("redis://127.0.0.1:{port}")).await;

    let id = h.post(&json_body("hello", None)).await.session_id();
    h.app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    assert_eq!(
        h.app
            .get_history(sid(&id), Default::default(), None)
            .await
            .unwrap()
            .1,
        CacheOutcome::Hit
    );

    // Redis goes away mid-traffic: requests keep succeeding.
    server.stop();
    let started = Instant::now();
    assert_eq!(
        h.post(&json_body("while down", Some(&id))).await.status,
        200
    );
    let (body, outcome) = h
        .app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome, CacheOutcome::Error);
    assert_eq!(texts(&body).len(), 4);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // Redis is back (empty): the same app uses it again, no restart.
    let _server = OwnRedis::start(port, dir);
    _server.wait_ready().await;
    eventually("the cache to be used again", || async {
        let _ = h.app.get_history(sid(&id), Default::default(), None).await;
        matches!(
            h.app.get_history(sid(&id), Default::default(), None).await,
            Ok((_, CacheOutcome::Hit))
        )
    })
    .await;
    assert_eq!(h.post(&json_body("after", Some(&id))).await.status, 200);
    let (body, _) = h
        .app
        .get_history(sid(&id), Default::default(), None)
        .await
        .unwrap();
    assert_eq!(texts(&body).len(), 6);
}

#[tokio::test]
async fn without_redis_there_is_no_cache_and_no_limit() {
    let mut opts = Options::default();
    opts.extra
        .push(("RATE_LIMIT_PER_IP_PER_MINUTE".into(), "1".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    for _ in 0..3 {
        assert_eq!(h.post(&json_body("hi", None)).await.status, 200);
    }
    let id = h.post(&json_body("hi", None)).await.session_id();
    assert_eq!(
        h.app
            .get_history(sid(&id), Default::default(), None)
            .await
            .unwrap()
            .1,
        CacheOutcome::Off
    );
}
