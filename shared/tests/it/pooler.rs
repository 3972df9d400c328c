//! The app behind PgBouncer in transaction mode (as with Supabase's pooler or
//! RDS Proxy): every statement must work when consecutive statements of one
//! client connection land on different server connections, so nothing may
//! rely on named prepared statements or session state.
//!
//! Needs TEST_PG_ADMIN_URL (`eval "$(scripts/services.sh)"`) and
//! TEST_PGBOUNCER_URL_BASE (`eval "$(scripts/tls-services.sh)"`, PgBouncer
//! with pool_mode=transaction and default_pool_size=3 in front of
//! TEST_PG_ADMIN_URL's server): `make test` sets them.

use super::support::*;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::{NoTls, SimpleQueryMessage};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SESSIONS: usize = 40;
/// Messages per session: one that creates it, then follow-ups.
const MESSAGES_PER_SESSION: usize = 4;
const CONCURRENCY: usize = 8;
/// PgBouncer's default_pool_size (scripts/tls-services.sh).
const PGBOUNCER_POOL_SIZE: i64 = 3;

fn required_env(name: &str, how: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: the pooler test needs it ({how}). \
                 Run it through `make test`, which sets it up."
            )
        })
}

fn pgbouncer_base() -> String {
    required_env(
        "TEST_PGBOUNCER_URL_BASE",
        "eval \"$(scripts/tls-services.sh)\"",
    )
}

/// Fake Claude answering "re: <the last user message>", a little slowly, so
/// exchanges overlap and each reply can be matched to its message.
struct Echo;

impl wiremock::Respond for Echo {
    fn respond(&self, req: &wiremock::Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("?")
            .to_owned();
        ResponseTemplate::new(200)
            .set_body_json(claude_says(&format!("re: {last}")))
            .set_delay(Duration::from_millis(5))
    }
}

/// One row of PgBouncer's admin console (`SHOW POOLS` / `SHOW STATS`) for `db`.
async fn pgbouncer_row(command: &str, db: &str) -> HashMap<String, String> {
    let url = format!("{}/pgbouncer", pgbouncer_base());
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PgBouncer's admin console ({url}): {e}. Run `make test`, which starts it.")
        });
    tokio::spawn(conn);
    for msg in client.simple_query(command).await.expect(command) {
        if let SimpleQueryMessage::Row(row) = msg {
            if row.get("database") == Some(db) {
                return row
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            c.name().to_owned(),
                            row.get(i).unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
            }
        }
    }
    panic!("{command}: PgBouncer has no row for database {db}");
}

fn num(row: &HashMap<String, String>, col: &str) -> i64 {
    row.get(col).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One session's conversation, posted in order, with history checks between.
async fn converse(h: &Harness, i: usize) -> usize {
    let mut requests = 0;
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut sid: Option<String> = None;
    for k in 0..MESSAGES_PER_SESSION {
        let text = format!("session {i} message {k}");
        let r = h.post(&json_body(&text, sid.as_deref())).await;
        requests += 1;
        assert_eq!(r.status, 200, "POST {k} of session {i}: {}", r.raw);
        assert_eq!(
            r.body["reply"],
            format!("re: {text}"),
            "Claude's reply to this very message"
        );
        match &sid {
            None => sid = Some(r.session_id()),
            Some(s) => assert_eq!(&r.session_id(), s, "session {i} continues"),
        }
        expected.push(("user".into(), text.clone()));
        expected.push(("ai".into(), format!("re: {text}")));

        if k % 2 == 1 || k + 1 == MESSAGES_PER_SESSION {
            let sid = sid.as_deref().unwrap();
            let hist = h.history(sid).await;
            requests += 1;
            assert_eq!(hist.status, 200, "history of session {i}: {}", hist.raw);
            let msgs = hist.body["messages"].as_array().expect("messages");
            let got: Vec<(String, String)> = msgs
                .iter()
                .map(|m| {
                    (
                        m["sender"].as_str().unwrap().to_owned(),
                        m["text"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                got, expected,
                "history of session {i} is complete and in order"
            );
            let ts: Vec<i64> = msgs
                .iter()
                .map(|m| m["timestamp"].as_i64().unwrap())
                .collect();
            assert!(
                ts.windows(2).all(|w| w[0] <= w[1]),
                "timestamps of session {i}: {ts:?}"
            );
        }
    }
    requests
}

#[tokio::test]
async fn the_app_works_through_a_transaction_mode_pooler_under_concurrent_load() {
    // PgBouncer fronts this server: the test database must be created there.
    required_env("TEST_PG_ADMIN_URL", "eval \"$(scripts/services.sh)\"");
    pgbouncer_base();
    let logs = LogBuffer::default();
    let guard = logs.capture();

    let claude = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Echo)
        .mount(&claude)
        .await;
    // The database is created and migrated directly (migrations need a session);
    // the app then reaches it only through PgBouncer.
    let mut h = Harness::with(Options::default(), claude).await;
    let via_pooler = format!("{}/{}?sslmode=disable", pgbouncer_base(), h.db.name);
    h.reconfigure(Options {
        extra: vec![
            ("DATABASE_URL".into(), via_pooler.clone()),
            ("DATABASE_POOL_SIZE".into(), "4".into()),
            ("DATABASE_CONNECT_TIMEOUT_MS".into(), "5000".into()),
        ],
        ..Default::default()
    });
    assert_eq!(h.app.config.database_url(), via_pooler);
    let h = Arc::new(h);

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (h, next) = (h.clone(), next.clone());
        workers.spawn(async move {
            let mut requests = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SESSIONS {
                    return requests;
                }
                requests += converse(&h, i).await;
            }
        });
    }
    let mut requests = 0;
    while let Some(done) = workers.join_next().await {
        requests += done.expect("a worker panicked (see above)");
    }
    let elapsed = started.elapsed();
    assert!(requests >= 200, "{requests} requests");

    // Everything is in the database, seen directly.
    assert_eq!(h.db.sessions().await, SESSIONS as i64);
    assert_eq!(
        h.db.messages().await,
        (SESSIONS * MESSAGES_PER_SESSION * 2) as i64
    );

    // PgBouncer multiplexed the app's connections over several server connections.
    let pools = pgbouncer_row("SHOW POOLS", &h.db.name).await;
    assert_eq!(
        pools.get("pool_mode").map(String::as_str),
        Some("transaction"),
        "{pools:?}"
    );
    let clients = num(&pools, "cl_active") + num(&pools, "cl_waiting");
    let servers = ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
        .iter()
        .map(|c| num(&pools, c))
        .sum::<i64>();
    assert!(
        clients >= 2,
        "the app used several pool connections: {pools:?}"
    );
    assert!(
        (2..=PGBOUNCER_POOL_SIZE).contains(&servers),
        "more than one, at most {PGBOUNCER_POOL_SIZE} server connections: {pools:?}"
    );
    let stats = pgbouncer_row("SHOW STATS", &h.db.name).await;
    assert!(
        num(&stats, "total_xact_count") >= requests as i64,
        "every request ran through PgBouncer: {stats:?}"
    );
    // PgBouncer passes the app's application_name on; the test's own direct
    // connections (which may still be closing) have none.
    let backends =
        h.db.count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'support-chat'",
        )
        .await;
    assert!(
        (2..=PGBOUNCER_POOL_SIZE).contains(&backends),
        "server connections seen by PostgreSQL: {backends}"
    );
    drop(guard);

    named_statements_do_break_through_this_pooler(&via_pooler).await;

    let text = logs.text();
    let lower = text.to_lowercase();
    assert_eq!(
        text.matches("status=200").count(),
        requests,
        "every request was logged as a 200 (the capture works)"
    );
    assert!(
        !lower.contains("prepared statement"),
        "prepared-statement errors in the logs:\n{}",
        grep(&text, "prepared statement")
    );
    assert!(
        !text.contains("status=5"),
        "5xx responses in the logs:\n{}",
        grep(&text, "status=5")
    );
    for level in [" ERROR ", " WARN "] {
        assert!(
            !text.contains(level),
            "{level} lines in the logs:\n{}",
            grep(&text, level)
        );
    }
    eprintln!(
        "{requests} requests through PgBouncer in {elapsed:.2?} ({CONCURRENCY} concurrent, app pool 4, \
         {clients} client / {servers} server connections, {} log lines)",
        text.lines().count()
    );
}

/// The control: the pooler really is one where a statement prepared by name
/// on one server connection is missing on the next, so the load above would
/// have failed had the store relied on named prepared statements.
async fn named_statements_do_break_through_this_pooler(url: &str) {
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect through PgBouncer");
        tokio::spawn(conn);
        c
    };
    let (a, mut b) = (connect().await, connect().await);
    let stmt = a
        .prepare("SELECT 1::int4")
        .await
        .expect("Parse through PgBouncer");
    // B holds the server connection A just used (PgBouncer reuses the most
    // recently released one), so A's next transaction gets another one.
    let tx = b.transaction().await.unwrap();
    tx.batch_execute("SELECT 1").await.unwrap();
    let err = a
        .query(&stmt, &[])
        .await
        .expect_err("PgBouncer tracks prepared statements (max_prepared_statements > 0?): this test cannot detect their misuse");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("prepared statement")),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
}

fn grep(text: &str, needle: &str) -> String {
    let needle = needle.to_lowercase();
    text.lines()
        .filter(|l| l.to_lowercase().contains(&needle))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}
