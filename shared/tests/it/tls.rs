//! TLS to PostgreSQL and Redis, against the TLS-only servers of
//! `scripts/tls-services.sh` (certificates from a private test CA).
//!
//! `sslmode=require` means a verified certificate chain and host name here,
//! with the webpki roots plus `DATABASE_CA_CERT` / `REDIS_CA_CERT`; nothing
//! may fall back to plaintext or skip verification.
//!
//! Needs TEST_TLS_PG_URL, TEST_TLS_CA, TEST_TLS_WRONG_CA, TEST_TLS_REDIS_URL
//! (`eval "$(scripts/tls-services.sh)"`) and, for the fake-Claude exchange,
//! nothing else: `make test` sets them.

use super::support::*;
use std::error::Error as StdError;
use support_chat::App;
use support_chat::cache::Cache;
use support_chat::config::{Config, Env, RedisConfig};
use support_chat::domain::SessionId;
use support_chat::store;

fn required_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: the TLS tests need the TLS services \
             (eval \"$(scripts/tls-services.sh)\"). Run them through `make test`, which sets it up."
            )
        })
}

fn ca() -> String {
    required_env("TEST_TLS_CA")
}

fn wrong_ca() -> String {
    required_env("TEST_TLS_WRONG_CA")
}

/// TEST_TLS_PG_URL with another database and an `sslmode`.
fn pg_url(db: &str, sslmode: &str) -> String {
    let base = required_env("TEST_TLS_PG_URL");
    assert!(
        base.contains("@localhost:"),
        "TEST_TLS_PG_URL must name the host localhost (the certificate's name): {base}"
    );
    let mut url: url_like::Url = base.parse().unwrap();
    url.set_db(db);
    let url = url.to_string();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode={sslmode}")
}

fn db_config(url: &str, ca: Option<&str>) -> Config {
    let mut env = Env::from_pairs([
        ("DATABASE_URL", url),
        ("DATABASE_CONNECT_TIMEOUT_MS", "5000"),
    ]);
    if let Some(ca) = ca {
        env.set("DATABASE_CA_CERT", ca);
    }
    Config::from_env(&env).expect("database config")
}

/// The error and all its causes, one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = format!("{e}");
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(" <- ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn assert_certificate_error(what: &str, chain: &str) {
    eprintln!("{what}: {chain}");
    let lower = chain.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("unknownissuer"),
        "{what}: expected a certificate verification error, got: {chain}"
    );
}

/// Connects with the crate's own connector (what the pool and the migrator use).
async fn connect(cfg: &Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (pg, tls) = store::connector(&cfg.database).expect("connector");
    let (client, conn) = pg.connect(tls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A fresh database on the TLS server, created and dropped over verified TLS.
struct TlsDb {
    name: String,
}

impl TlsDb {
    async fn create() -> Self {
        let name = format!("chat_tls_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&db_config(&pg_url("postgres", "require"), Some(&ca())))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the TLS PostgreSQL ({}) refused a verified TLS connection: {}. \
                     Run `make test`, which starts it.",
                    required_env("TEST_TLS_PG_URL"),
                    chain(&e)
                )
            });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database over TLS");
        TlsDb { name }
    }

    fn url(&self, sslmode: &str) -> String {
        pg_url(&self.name, sslmode)
    }
}

impl Drop for TlsDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_blocking(async move {
            if let Ok(admin) =
                connect(&db_config(&pg_url("postgres", "require"), Some(&ca()))).await
            {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    }
}

// --------------------------------------------------------------- PostgreSQL --

#[tokio::test]
async fn migrations_run_over_verified_tls_and_the_session_really_is_encrypted() {
    let db = TlsDb::create().await;
    let cfg = db_config(&db.url("require"), Some(&ca()));
    let applied = store::migrate(&cfg.database)
        .await
        .unwrap_or_else(|e| panic!("migrate over TLS: {}", chain(&*e)));
    assert!(!applied.is_empty(), "a fresh database gets every migration");
    assert!(
        store::migrate(&cfg.database).await.unwrap().is_empty(),
        "and a second run has nothing to do"
    );

    let client = connect(&cfg).await.expect("connect over TLS");
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    let (ssl, version): (bool, Option<String>) = (row.get(0), row.get(1));
    assert!(ssl, "pg_stat_ssl says this connection is not encrypted");
    assert!(
        matches!(version.as_deref(), Some("TLSv1.2" | "TLSv1.3")),
        "{version:?}"
    );
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('chat_sessions', 'chat_messages', 'idempotency_keys')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3, "the migrated schema is there");

    // libpq's verify-full is accepted and means the same.
    let strict = db_config(&db.url("verify-full"), Some(&ca()));
    let c = connect(&strict).await.expect("verify-full over TLS");
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test]
async fn the_app_serves_a_chat_exchange_over_a_tls_database_pool() {
    let db = TlsDb::create().await;
    let claude = fake_claude_answering("Over TLS, all good.").await;
    store::migrate(&db_config(&db.url("require"), Some(&ca())).database)
        .await
        .expect("migrate");
    let env = Env::from_pairs([
        ("DATABASE_URL", db.url("require")),
        ("DATABASE_CA_CERT", ca()),
        ("ANTHROPIC_BASE_URL", claude.uri()),
        ("CLAUDE_API_KEY", "sk-ant-test-tls".into()),
    ]);
    let app = std::sync::Arc::new(App::new(Config::from_env(&env).unwrap()).unwrap());
    let r = Reply::collect(
        support_chat::http::send_message(
            &app,
            post_v2(&json_body("Is this encrypted?", None), &[]),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let h = Reply::from(
        support_chat::http::get_history(&app, get_v2(&r.session_id()))
            .await
            .unwrap(),
    );
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(h.body["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn without_the_private_ca_the_certificate_is_rejected_not_bypassed() {
    let cfg = db_config(&pg_url("postgres", "require"), None);
    let err = store::migrate(&cfg.database)
        .await
        .expect_err("an unknown issuer must be refused");
    assert_certificate_error("migrate, webpki roots only", &chain(&*err));
    let err = connect(&cfg)
        .await
        .expect_err("an unknown issuer must be refused");
    assert_certificate_error("connect, webpki roots only", &chain(&err));
    assert!(
        err.as_db_error().is_none(),
        "refused by the client, before any server answer: {}",
        chain(&err)
    );

    // And the app's pool: the request fails as unavailable, it never goes plaintext.
    let claude = fake_claude_answering("unused").await;
    let env = Env::from_pairs([
        ("DATABASE_URL", pg_url("postgres", "require")),
        ("ANTHROPIC_BASE_URL", claude.uri()),
    ]);
    let app = std::sync::Arc::new(App::new(Config::from_env(&env).unwrap()).unwrap());
    let r = Reply::collect(
        support_chat::http::send_message(&app, post_v2(&json_body("hello?", None), &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.raw);
}

#[tokio::test]
async fn with_an_unrelated_ca_the_certificate_is_rejected() {
    let cfg = db_config(&pg_url("postgres", "require"), Some(&wrong_ca()));
    let err = store::migrate(&cfg.database)
        .await
        .expect_err("a certificate from another CA must be refused");
    assert_certificate_error("migrate, wrong CA", &chain(&*err));
    let err = connect(&cfg).await.expect_err("refused");
    assert_certificate_error("connect, wrong CA", &chain(&err));
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_rejected() {
    // Same server and CA, but the name checked is not in the certificate.
    let url = pg_url("postgres", "require").replace("@localhost:", "@db.wrong-name.test:")
        + "&hostaddr=127.0.0.1";
    let err = connect(&db_config(&url, Some(&ca())))
        .await
        .expect_err("a name mismatch must be refused");
    let c = chain(&err);
    eprintln!("host name mismatch: {c}");
    assert!(
        c.contains("NotValidForName") || c.to_lowercase().contains("certificate"),
        "{c}"
    );
}

#[tokio::test]
async fn a_plaintext_connection_is_refused_by_the_tls_only_server() {
    let cfg = db_config(&pg_url("postgres", "disable"), None);
    let err = connect(&cfg)
        .await
        .expect_err("the server accepts TLS only");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected the server's refusal, got: {}", chain(&err)));
    eprintln!("sslmode=disable: {}", chain(&err));
    assert_eq!(db.code().code(), "28000", "{}", chain(&err));
    assert!(db.message().contains("no encryption"), "{}", db.message());
    assert!(store::migrate(&cfg.database).await.is_err());
}

#[tokio::test]
async fn sslmode_prefer_with_an_untrusted_certificate_fails_instead_of_falling_back() {
    // libpq would retry in plaintext; here the certificate error stands.
    let cfg = db_config(&pg_url("postgres", "prefer"), None);
    let err = connect(&cfg).await.expect_err("refused");
    let c = chain(&err);
    assert_certificate_error("sslmode=prefer, webpki roots only", &c);
    assert!(
        err.as_db_error().is_none(),
        "no plaintext attempt reached the server: {c}"
    );
}

// -------------------------------------------------------------------- Redis --

fn redis_config(url: &str, ca: Option<&str>) -> RedisConfig {
    let mut env = Env::from_pairs([
        (
            "DATABASE_URL",
            "postgres://unused@localhost/unused".to_owned(),
        ),
        ("REDIS_URL", url.to_owned()),
        (
            "REDIS_KEY_PREFIX",
            format!("tls-test-{}", uuid::Uuid::new_v4().simple()),
        ),
        ("HISTORY_CACHE_TTL_SECONDS", "60".into()),
        // Generous bounds: these tests are about TLS, not latency.
        ("REDIS_CONNECT_TIMEOUT_MS", "3000".into()),
        ("REDIS_TIMEOUT_MS", "3000".into()),
    ]);
    if let Some(ca) = ca {
        env.set("REDIS_CA_CERT", ca);
    }
    Config::from_env(&env)
        .expect("redis config")
        .redis
        .expect("REDIS_URL set")
}

fn tls_redis_url() -> String {
    let url = required_env("TEST_TLS_REDIS_URL");
    assert!(
        url.starts_with("rediss://"),
        "TEST_TLS_REDIS_URL must be a rediss:// URL"
    );
    url
}

/// A direct connection to the TLS Redis, for looking behind the cache's back.
async fn direct_redis() -> redis::aio::MultiplexedConnection {
    let pem = std::fs::read(ca()).expect("read TEST_TLS_CA");
    redis::Client::build_with_tls(
        tls_redis_url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .expect("direct TLS connection to Redis")
}

#[tokio::test]
async fn redis_over_tls_with_the_private_ca_answers_and_caches() {
    let cfg = redis_config(&tls_redis_url(), Some(&ca()));
    let prefix = cfg.key_prefix.clone();
    let cache = Cache::new(&cfg).expect("cache");
    cache
        .ping()
        .await
        .unwrap_or_else(|e| panic!("ping over TLS: {}", chain(&e)));

    let sid = SessionId::generate();
    assert_eq!(
        cache.lookup(sid).await.expect("lookup"),
        None,
        "nothing is cached yet"
    );
    cache.fill(sid, 7, b"{\"v\":1}").await.expect("fill");
    let hit = cache.lookup(sid).await.expect("lookup").expect("a hit");
    assert_eq!((hit.version, hit.body.as_slice()), (7, &b"{\"v\":1}"[..]));
    let mut direct = direct_redis().await;
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{prefix}:{{{sid}}}:h"))
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(&b"7:{\"v\":1}"[..]),
        "the entry is on the TLS server"
    );

    cache.invalidate(sid).await.expect("invalidate");
    assert_eq!(
        cache.lookup(sid).await.expect("lookup"),
        None,
        "invalidated"
    );

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut direct)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut direct)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn redis_without_the_private_ca_fails_with_a_certificate_error() {
    let cache = Cache::new(&redis_config(&tls_redis_url(), None)).expect("cache");
    let err = cache
        .ping()
        .await
        .expect_err("an unknown issuer must be refused");
    assert_certificate_error(
        "Redis, webpki roots only",
        &format!("{} {err:?}", chain(&err)),
    );
}

#[tokio::test]
async fn redis_with_an_unrelated_ca_fails_with_a_certificate_error() {
    let cache = Cache::new(&redis_config(&tls_redis_url(), Some(&wrong_ca()))).expect("cache");
    let err = cache
        .ping()
        .await
        .expect_err("a certificate from another CA must be refused");
    assert_certificate_error("Redis, wrong CA", &format!("{} {err:?}", chain(&err)));
}

#[tokio::test]
async fn redis_with_a_wrong_password_is_refused() {
    let url = tls_redis_url();
    let (scheme_and_user, host) = url
        .rsplit_once('@')
        .expect("password in TEST_TLS_REDIS_URL");
    let (_, real_password) = scheme_and_user
        .rsplit_once(':')
        .expect("password in TEST_TLS_REDIS_URL");
    let wrong = format!("rediss://:not-the-password@{host}");
    let cache = Cache::new(&redis_config(&wrong, Some(&ca()))).expect("cache");
    let err = cache
        .ping()
        .await
        .expect_err("a wrong password must be refused");
    let shown = format!("{} {err:?}", chain(&err));
    eprintln!("Redis, wrong password: {shown}");
    assert!(
        shown.contains("WRONGPASS") || shown.to_lowercase().contains("auth"),
        "expected an authentication error, got: {shown}"
    );
    assert!(
        !shown.contains(real_password) && !shown.contains("not-the-password"),
        "the error quotes a password: {shown}"
    );
}
