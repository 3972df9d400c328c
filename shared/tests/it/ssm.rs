//! Secrets from SSM Parameter Store, through the real `aws-sdk-ssm` client
//! inside `Config::load_from`, against a moto server (`scripts/moto.sh`).
//!
//! The SDK is pointed at moto only through its standard process environment
//! (`AWS_ENDPOINT_URL_SSM`, region, static credentials), exactly as a deployed
//! function would be pointed elsewhere. Changing the environment of a running
//! process is `unsafe` (edition 2024: other threads, here the other tests,
//! may read it through libc at the same time), so nothing does: the ONE
//! `#[test]` below runs itself again, alone, in a child process of this test
//! binary whose environment is set from its start. There it runs every
//! scenario in turn on a fresh current-thread runtime, and reports all
//! failures at the end (one failing scenario does not hide the others).
//!
//! Needs TEST_MOTO_URL (`eval "$(scripts/moto.sh)"`), TEST_PG_ADMIN_URL and
//! TEST_REDIS_URL (`eval "$(scripts/services.sh)"`): `make test` sets them.

use super::support::*;
use secrecy::ExposeSecret;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;
use support_chat::App;
use support_chat::config::{Config, ConfigError, Env};
use support_chat::service::CacheOutcome;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

type Scenario = fn() -> Pin<Box<dyn Future<Output = ()>>>;

/// Set in the child process that runs the scenarios.
const IN_CHILD: &str = "SUPPORT_CHAT_SSM_TEST_CHILD";

#[test]
fn ssm_parameter_store_supplies_secrets_through_the_real_sdk() {
    let moto = required_env("TEST_MOTO_URL", "eval \"$(scripts/moto.sh)\"");
    required_env("TEST_PG_ADMIN_URL", "eval \"$(scripts/services.sh)\"");
    required_env("TEST_REDIS_URL", "eval \"$(scripts/services.sh)\"");
    if std::env::var_os(IN_CHILD).is_none() {
        return run_alone_with_the_sdk_pointed_at(&moto);
    }

    let scenarios: [(&str, Scenario); 5] = [
        (
            "secrets_missing_from_the_environment_are_read_from_ssm_and_the_app_works",
            || Box::pin(secrets_missing_from_the_environment_are_read_from_ssm_and_the_app_works()),
        ),
        ("a_value_in_the_environment_wins_over_ssm", || {
            Box::pin(a_value_in_the_environment_wins_over_ssm())
        }),
        (
            "a_database_url_in_neither_place_is_an_error_naming_it",
            || Box::pin(a_database_url_in_neither_place_is_an_error_naming_it()),
        ),
        (
            "an_invalid_database_url_from_ssm_is_named_but_never_quoted",
            || Box::pin(an_invalid_database_url_from_ssm_is_named_but_never_quoted()),
        ),
        (
            "no_secret_or_message_text_reaches_debug_output_or_logs",
            || Box::pin(no_secret_or_message_text_reaches_debug_output_or_logs()),
        ),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        let started = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario())));
        drop(rt);
        let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
        eprintln!("ssm scenario {name}: {verdict} ({:.2?})", started.elapsed());
        if outcome.is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed SSM scenarios (see the panics above): {failed:?}"
    );
}

fn required_env(name: &str, how: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("{name} is not set: the SSM tests need it ({how}). Run them through `make test`, which sets it up.")
    })
}

/// Runs this test again in a child process of this binary, alone, with the
/// stock SDK configuration chain pointed at moto (fixed test credentials)
/// from the child's start; fails with the child's output when it fails.
fn run_alone_with_the_sdk_pointed_at(moto: &str) {
    // `it::ssm::name` -> `ssm::name`, the test's name inside this binary.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::ssm_parameter_store_supplies_secrets_through_the_real_sdk");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_CHILD, "1")
        .env("AWS_ENDPOINT_URL_SSM", moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    // Nothing from a developer's own AWS setup may redirect or sign for us.
    for var in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        child.env_remove(var);
    }
    let out = child
        .output()
        .expect("run the SSM scenarios in a child process");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest in the child says how many tests ran: exactly this one.
    assert!(
        out.status.success() && output.contains("1 passed"),
        "the SSM scenarios failed in their own process ({}):\n{output}",
        out.status
    );
    eprintln!("{output}");
}

// ------------------------------------------------------------------ helpers --

/// A unique parameter prefix (moto keeps state for as long as it runs).
fn unique_prefix() -> String {
    format!("/support-chat-test/{}", uuid::Uuid::new_v4().simple())
}

fn token(label: &str) -> String {
    format!("{label}-{}", uuid::Uuid::new_v4().simple())
}

async fn ssm_client() -> aws_sdk_ssm::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_ssm::Client::new(&sdk)
}

/// Stores `params` under `prefix` as SecureString parameters.
async fn put_secure(prefix: &str, params: &[(&str, &str)]) {
    let client = ssm_client().await;
    for (name, value) in params {
        client
            .put_parameter()
            .name(format!("{prefix}/{name}"))
            .value(*value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PutParameter {prefix}/{name} to moto failed: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            });
    }
}

/// The settings a test always gives through the environment (no secrets).
fn base_env(prefix: &str, claude: &MockServer) -> Env {
    Env::from_pairs([
        ("SSM_PARAMETER_PREFIX", prefix.to_owned()),
        ("ANTHROPIC_BASE_URL", claude.uri()),
        ("CLAUDE_ATTEMPT_TIMEOUT_MS", "2000".into()),
        ("CLAUDE_MAX_ATTEMPTS", "1".into()),
        ("REQUEST_BUDGET_MS", "8000".into()),
        ("DATABASE_CONNECT_TIMEOUT_MS", "2000".into()),
    ])
}

/// `url` with `password` in its user info (when it has none yet), and the
/// password the URL finally carries.
fn with_password(url: &str, password: &str) -> (String, String) {
    let start = url.find("://").map(|i| i + 3).expect("a postgres:// URL");
    let rest = &url[start..];
    let at = rest.find('@').filter(|&at| !rest[..at].contains('/'));
    match at {
        Some(at) => match rest[..at].split_once(':') {
            Some((_, existing)) => (url.to_owned(), existing.to_owned()),
            None => (
                format!("{}{}:{password}{}", &url[..start], &rest[..at], &rest[at..]),
                password.to_owned(),
            ),
        },
        None => (
            format!("{}postgres:{password}@{rest}", &url[..start]),
            password.to_owned(),
        ),
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn post(app: &std::sync::Arc<App>, body: &str) -> Reply {
    Reply::collect(
        support_chat::http::send_message(app, post_v2(body, &[]))
            .await
            .unwrap(),
    )
    .await
}

async fn history(app: &App, sid: &str) -> Reply {
    Reply::from(
        support_chat::http::get_history(app, get_v2(sid))
            .await
            .unwrap(),
    )
}

// ---------------------------------------------------------------- scenarios --

async fn secrets_missing_from_the_environment_are_read_from_ssm_and_the_app_works() {
    let db = TestDb::new().await;
    let ns = RedisNs::new();
    let claude = fake_claude_answering("Parcels arrive in 3 to 5 days.").await;
    let prefix = unique_prefix();
    let api_key = token("sk-ant-from-ssm");
    let redis_url = redis_url();
    put_secure(
        &prefix,
        &[
            ("DATABASE_URL", &db.url),
            ("CLAUDE_API_KEY", &api_key),
            ("REDIS_URL", &redis_url),
        ],
    )
    .await;

    let mut env = base_env(&prefix, &claude);
    env.set("REDIS_KEY_PREFIX", ns.prefix.clone());
    for name in ["DATABASE_URL", "CLAUDE_API_KEY", "REDIS_URL"] {
        assert!(env.get(name).is_none(), "{name} must come from SSM only");
    }
    let config = Config::load_from(env).await.expect("config from SSM");
    assert_eq!(config.database_url(), db.url);
    assert_eq!(
        config.claude.api_key.as_ref().map(|k| k.expose_secret()),
        Some(api_key.as_str())
    );
    let redis = config
        .redis
        .as_ref()
        .expect("REDIS_URL from SSM enables Redis");
    assert_eq!(redis.url.expose_secret(), redis_url);
    assert!(
        config.database.ca_cert_pem.is_none(),
        "absent optional parameters stay unset"
    );

    let app = std::sync::Arc::new(App::new(config).expect("app"));
    let r = post(&app, &json_body("How long does shipping take?", None)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body["reply"], "Parcels arrive in 3 to 5 days.",
        "Claude answered, not the fallback"
    );
    let sent = claude.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok()),
        Some(api_key.as_str()),
        "Claude is called with the key from SSM"
    );
    assert_eq!(
        db.messages().await,
        2,
        "the exchange is in the database from SSM's DATABASE_URL"
    );

    // The Redis from SSM serves the history: a miss, then a hit.
    let sid = r.session_id();
    let parsed = support_chat::domain::SessionId::parse(&sid).unwrap();
    let (_, first) = app
        .get_history(parsed, Default::default(), None)
        .await
        .unwrap();
    let (_, second) = app
        .get_history(parsed, Default::default(), None)
        .await
        .unwrap();
    assert_eq!((first, second), (CacheOutcome::Miss, CacheOutcome::Hit));
    assert_eq!(history(&app, &sid).await.status, 200);
}

async fn a_value_in_the_environment_wins_over_ssm() {
    let db = TestDb::new().await;
    let claude = fake_claude_answering("From the environment's database.").await;
    let prefix = unique_prefix();
    let ssm_key = token("sk-ant-ssm");
    put_secure(
        &prefix,
        &[
            (
                "DATABASE_URL",
                "postgres://ssm_user:ssm-pass@ssm-db.invalid:5432/ssm_db?sslmode=require",
            ),
            ("CLAUDE_API_KEY", &ssm_key),
        ],
    )
    .await;

    let mut env = base_env(&prefix, &claude);
    env.set("DATABASE_URL", db.url.clone());
    let config = Config::load_from(env.clone()).await.expect("config");
    assert_eq!(
        config.database_url(),
        db.url,
        "the environment's DATABASE_URL wins"
    );
    assert_eq!(
        config.claude.api_key.as_ref().map(|k| k.expose_secret()),
        Some(ssm_key.as_str()),
        "what the environment lacks still comes from SSM"
    );
    assert!(config.redis.is_none(), "no REDIS_URL anywhere: no Redis");

    let app = std::sync::Arc::new(App::new(config).expect("app"));
    let r = post(
        &app,
        &json_body("Is this stored where the environment says?", None),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(db.messages().await, 2);

    let env_key = token("sk-ant-env");
    env.set("CLAUDE_API_KEY", env_key.clone());
    let config = Config::load_from(env).await.expect("config");
    assert_eq!(
        config.claude.api_key.as_ref().map(|k| k.expose_secret()),
        Some(env_key.as_str())
    );
}

async fn a_database_url_in_neither_place_is_an_error_naming_it() {
    let claude = MockServer::start().await;
    let prefix = unique_prefix();
    put_secure(&prefix, &[("CLAUDE_API_KEY", &token("sk-ant-only"))]).await;

    let err = Config::load_from(base_env(&prefix, &claude))
        .await
        .expect_err("DATABASE_URL is required");
    assert!(
        matches!(err, ConfigError::Missing("DATABASE_URL")),
        "{err:?}"
    );
    assert!(err.to_string().contains("DATABASE_URL"), "{err}");

    // An empty prefix (no parameters at all) is the same error, not an SSM failure.
    let err = Config::load_from(base_env(&unique_prefix(), &claude))
        .await
        .expect_err("required");
    assert!(
        matches!(err, ConfigError::Missing("DATABASE_URL")),
        "{err:?}"
    );
}

async fn an_invalid_database_url_from_ssm_is_named_but_never_quoted() {
    let claude = MockServer::start().await;
    let prefix = unique_prefix();
    let password = "s3cr3t-P4ss";
    put_secure(
        &prefix,
        &[("DATABASE_URL", &format!("postgres://user:{password}@[bad"))],
    )
    .await;

    let err = Config::load_from(base_env(&prefix, &claude))
        .await
        .expect_err("an invalid URL is refused");
    let (display, debug) = (err.to_string(), format!("{err:?}"));
    assert!(display.contains("DATABASE_URL"), "{display}");
    assert!(
        matches!(&err, ConfigError::Invalid { name, .. } if name == "DATABASE_URL"),
        "{debug}"
    );
    for shown in [&display, &debug] {
        assert!(
            !shown.contains(password),
            "the error quotes the secret: {shown}"
        );
        assert!(
            !shown.contains("[bad"),
            "the error quotes the value: {shown}"
        );
    }
}

async fn no_secret_or_message_text_reaches_debug_output_or_logs() {
    let db = TestDb::new().await;
    let logs = LogBuffer::default();
    let guard = logs.capture();

    // Claude refuses the key: every reply is the fallback.
    let claude = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "type": "error",
            "error": { "type": "authentication_error", "message": "invalid x-api-key" }
        })))
        .mount(&claude)
        .await;

    let prefix = unique_prefix();
    let api_key = token("sk-ant-api03-secret");
    let (db_url, db_password) = with_password(&db.url, &token("pg-pw"));
    let redis_password = token("redis-pw");
    // Redis is unreachable: its errors get logged too, and must not quote the URL.
    let redis_url = format!("redis://:{redis_password}@127.0.0.1:{}", closed_port());
    put_secure(
        &prefix,
        &[
            ("DATABASE_URL", &db_url),
            ("CLAUDE_API_KEY", &api_key),
            ("REDIS_URL", &redis_url),
        ],
    )
    .await;
    let message = format!(
        "privacy probe {} where is my parcel",
        uuid::Uuid::new_v4().simple()
    );
    let mut secrets = vec![
        api_key.clone(),
        db_password.clone(),
        redis_password.clone(),
        message.clone(),
    ];

    // A working database, a failing Claude, a failing Redis.
    let mut env = base_env(&prefix, &claude);
    env.set("REDIS_CONNECT_TIMEOUT_MS", "300");
    let config = Config::load_from(env.clone())
        .await
        .expect("config from SSM");
    assert_eq!(config.database_url(), db_url);
    let app = std::sync::Arc::new(App::new(config.clone()).expect("app"));
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{app:?}"),
    ] {
        for secret in &secrets {
            assert!(
                !shown.contains(secret.as_str()),
                "Debug output shows a secret ({secret}): {shown}"
            );
        }
        assert!(
            shown.contains("REDACTED"),
            "secrets are shown as redacted: {shown}"
        );
    }
    let r = post(&app, &json_body(&message, None)).await;
    assert_eq!(r.status, 200, "the fallback answers: {}", r.raw);
    let sid = r.session_id();
    assert_eq!(history(&app, &sid).await.status, 200);
    assert_eq!(
        claude.received_requests().await.unwrap().len(),
        1,
        "Claude was asked (and refused)"
    );

    // A failing database (nothing listens), with its own password.
    let down_password = token("pg-down-pw");
    secrets.push(down_password.clone());
    env.set(
        "DATABASE_URL",
        format!(
            "postgres://chat:{down_password}@127.0.0.1:{}/chat?sslmode=disable",
            closed_port()
        ),
    );
    env.set("DATABASE_CONNECT_TIMEOUT_MS", "500");
    let down =
        std::sync::Arc::new(App::new(Config::load_from(env).await.expect("config")).expect("app"));
    assert!(!format!("{down:?}").contains(&down_password));
    let r = post(&down, &json_body(&message, Some(&sid))).await;
    assert_eq!(r.status, 503, "{}", r.raw);
    assert_eq!(history(&down, &sid).await.status, 503);
    for secret in &secrets {
        assert!(
            !r.raw.contains(secret.as_str()),
            "the response body shows a secret"
        );
    }
    drop(guard);

    let text = logs.text();
    assert!(
        text.contains("reply ready"),
        "the capture works (exchange logged):\n{text}"
    );
    assert!(
        text.contains("request failed"),
        "the database failure was logged:\n{text}"
    );
    assert!(
        text.contains("rate limit check failed"),
        "the Redis failure was logged:\n{text}"
    );
    let leaks: Vec<&str> = text
        .lines()
        .filter(|line| secrets.iter().any(|s| line.contains(s.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets or message text in the logs:\n{}",
        leaks.join("\n")
    );
    eprintln!(
        "  (checked {} log lines, {} bytes)",
        text.lines().count(),
        text.len()
    );
}
