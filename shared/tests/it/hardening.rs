//! The holes an outside review found, each shown closed: the last
//! milliseconds of a rate window, the history limit, a retention backlog and
//! deleted sessions, a pooled connection that died silently while the
//! function was frozen, and a slow database against the invocation deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support_chat::cache::Subject;
use support_chat::service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::support::*;

/// A TCP proxy in front of PostgreSQL that can close or silently freeze
/// the connections it already carries (new ones pass), or delay every
/// answer from the server.
struct Proxy {
    port: u16,
    next: Arc<AtomicUsize>,
    closed_below: Arc<AtomicUsize>,
    frozen_below: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (next, closed, frozen): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::default(), Arc::default(), Arc::default());
        let delay = Arc::new(AtomicU64::new(0));
        let p = (
            Arc::clone(&next),
            Arc::clone(&closed),
            Arc::clone(&frozen),
            Arc::clone(&delay),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = p.0.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let state = (p.1.clone(), p.2.clone(), p.3.clone());
                tokio::spawn(carry(id, client, server, state));
            }
        });
        Proxy {
            port,
            next,
            closed_below: closed,
            frozen_below: frozen,
            delay_ms: delay,
            task,
        }
    }

    /// Every connection open now is closed (FIN); new ones work.
    fn close_existing(&self) {
        self.closed_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Every connection open now goes silent for good (no FIN, no RST: a
    /// NAT that forgot it); new ones work.
    fn freeze_existing(&self) {
        self.frozen_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ProxyState = (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicU64>);

async fn carry(id: usize, client: TcpStream, server: TcpStream, s: ProxyState) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(id, cr, sw, s.clone(), false);
    let down = pump(id, sr, cw, s, true);
    tokio::select! { _ = up => {}, _ = down => {} }
}

async fn pump(
    id: usize,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (closed, frozen, delay): ProxyState,
    from_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(20), from.read(&mut buf)).await;
        if id < closed.load(Ordering::SeqCst) {
            return;
        }
        if id < frozen.load(Ordering::SeqCst) {
            // Hold both sockets open and pass nothing, ever.
            std::future::pending::<()>().await;
        }
        let n = match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        let d = delay.load(Ordering::SeqCst);
        if from_server && d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A harness whose app reaches its database through a [`Proxy`].
async fn behind_proxy(extra: &[(&str, &str)]) -> (Harness, Proxy) {
    let mut h = Harness::new().await;
    let target = pg_addr(&h.db.url).await;
    let proxy = Proxy::start(target).await;
    let url =
        h.db.url
            .replacen(&target.port().to_string(), &proxy.port.to_string(), 1);
    let url = url.replace("localhost:", "127.0.0.1:");
    let mut opts = Options::default();
    opts.extra.push(("DATABASE_URL".into(), url));
    for (k, v) in extra {
        opts.extra.push(((*k).into(), (*v).into()));
    }
    h.reconfigure(opts);
    (h, proxy)
}

#[tokio::test]
async fn a_connection_that_vanished_silently_while_frozen_is_replaced_not_a_503() {
    let (h, proxy) = behind_proxy(&[("DATABASE_IDLE_CHECK_MS", "100")]).await;
    let sid = h
        .post(&json_body("before the freeze", None))
        .await
        .session_id();
    proxy.freeze_existing();
    // The function sleeps past the idle threshold, as a frozen one does.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let r = h.post(&json_body("after the thaw", Some(&sid))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "detected within the check's bound, not the statement timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_not_a_503() {
    let (h, proxy) = behind_proxy(&[("DATABASE_IDLE_CHECK_MS", "100")]).await;
    let sid = h.post(&json_body("before", None)).await.session_id();
    proxy.close_existing();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = h.post(&json_body("after", Some(&sid))).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(h.db.messages().await, 4);
}

#[tokio::test]
async fn a_slow_database_gets_a_503_before_the_invocation_deadline() {
    let (h, proxy) = behind_proxy(&[
        ("REQUEST_BUDGET_MS", "2000"),
        ("DATABASE_STATEMENT_TIMEOUT_MS", "5000"),
    ])
    .await;
    assert_eq!(h.post(&json_body("warm", None)).await.status, 200);
    proxy.delay(Duration::from_millis(4000));
    let started = Instant::now();
    let r = h.post(&json_body("slow", None)).await;
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.code()),
        (503, "service_unavailable"),
        "{}",
        r.raw
    );
    assert!(
        took < Duration::from_millis(2000),
        "answered before the deadline: {took:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_holds_to_the_last_millisecond_of_its_window() {
    let h = Harness::with_redis().await;
    let cache = h.app.cache().unwrap();
    let ns = h.redis.as_ref().unwrap();
    let ip = "203.0.113.77";
    // The window's last 300 ms, its one allowed request already counted.
    let mut c = RedisNs::conn().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:rl:ip:{ip}", ns.prefix))
        .arg(1)
        .arg("PX")
        .arg(300)
        .query_async(&mut c)
        .await
        .unwrap();
    let retry = cache
        .check_limits(&[(Subject::Ip(ip), 1)], Duration::from_secs(60))
        .await
        .unwrap();
    let retry = retry.expect("over the limit, however little of the window is left");
    assert!(retry <= Duration::from_millis(300), "{retry:?}");
}

#[tokio::test]
async fn history_reads_have_their_own_per_ip_limit() {
    let mut opts = Options {
        redis: true,
        ..Default::default()
    };
    opts.extra
        .push(("RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE".into(), "2".into()));
    let h = Harness::with(opts, fake_claude_answering("ok").await).await;
    let sid = h.post(&json_body("hi", None)).await.session_id();
    let get = || {
        let ev = testkit::events::Event::history(&sid).source_ip("198.51.100.20");
        support_chat::http::get_history(&h.app, ev.request())
    };
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(get().await.unwrap().status(), 200);
    let third = get().await.unwrap();
    assert_eq!(third.status(), 429);
    assert!(third.headers().get("retry-after").is_some());
}

#[tokio::test]
async fn a_retention_backlog_is_deleted_in_batches_and_deleted_sessions_are_404_at_once() {
    let h = Harness::with_redis().await;
    let sid = h
        .post(&json_body("soon forgotten", None))
        .await
        .session_id();
    h.history(&sid).await;
    assert_eq!(h.history(&sid).await.status, 200, "cached");
    let db = h.db.client().await;
    db.batch_execute(
        "INSERT INTO chat_sessions (id, updated_at)
           SELECT md5('s' || g)::uuid, now() - interval '100 days' FROM generate_series(1, 20000) g;
         INSERT INTO idempotency_keys (key, fingerprint, session_id)
           SELECT 'k' || g, '\\x00', md5('s' || (g % 20000 + 1))::uuid
           FROM generate_series(1, 100000) g;",
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE chat_sessions SET updated_at = now() - interval '100 days' WHERE id = $1::text::uuid",
        &[&sid],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (sessions, _) = service::cleanup(h.app.store(), &h.app.config, deadline)
        .await
        .expect("the cleanup makes progress instead of timing out");
    assert_eq!(sessions, 20_001);
    assert_eq!(h.db.sessions().await, 0);
    let keys = h.db.count("SELECT count(*) FROM idempotency_keys").await;
    assert_eq!(keys, 0, "their keys went with them");
    let gone = h.history(&sid).await;
    assert_eq!((gone.status, gone.code()), (404, "session_not_found"));
}
