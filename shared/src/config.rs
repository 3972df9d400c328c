//! Configuration, loaded and validated once per cold start.
//!
//! Sources, in order: the process environment, then (when
//! `SSM_PARAMETER_PREFIX` is set) SSM Parameter Store for the secrets the
//! environment does not set, fetched with a single `GetParameters` call with
//! decryption. The SSM client is the stock `aws-sdk-ssm` one, so the SDK's own
//! `AWS_ENDPOINT_URL_SSM` / `AWS_ENDPOINT_URL` overrides point it at an
//! emulator; there is no other switch.
//!
//! Secrets are [`SecretString`]s: `Debug` prints `[REDACTED]`, and errors name
//! a variable, never its value.

use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::Duration;

use crate::knowledge::Knowledge;

/// Names the chat functions may take from SSM, relative to the prefix.
pub const SSM_NAMES: &[&str] = &[
    "DATABASE_URL",
    "CLAUDE_API_KEY",
    "REDIS_URL",
    "DATABASE_CA_CERT",
    "STORE_KNOWLEDGE",
    "HANDOFF_WEBHOOK_URL",
    "HANDOFF_WEBHOOK_SECRET",
];

/// What a function that only talks to the database takes from SSM.
pub const STORE_SSM_NAMES: &[&str] = &["DATABASE_URL", "DATABASE_CA_CERT"];

/// What the handoff notifier takes from SSM: the database and the webhook.
pub const NOTIFIER_SSM_NAMES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_CA_CERT",
    "HANDOFF_WEBHOOK_URL",
    "HANDOFF_WEBHOOK_SECRET",
];

/// `CLAUDE_MODEL`'s default: the current Haiku.
pub const DEFAULT_MODEL: &str = "claude-haiku-5-5";

/// `CLAUDE_MAX_TOKENS`'s default: room for the prompt's one to three short
/// sentences with Haiku 5.5's larger token counts (see the README); the
/// `TruncatedReplies` metric says when it is too small.
pub const DEFAULT_MAX_TOKENS: u32 = 160;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required (set it in the environment or under SSM_PARAMETER_PREFIX)")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("SSM parameters under {prefix} could not be read: {reason}")]
    Ssm { prefix: String, reason: String },
}

fn invalid(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Everything the functions need, typed.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    /// `None`: no cache and no rate limits.
    pub redis: Option<RedisConfig>,
    pub claude: ClaudeConfig,
    pub limits: RateLimitConfig,
    pub handoff: HandoffConfig,
    /// CORS allow-list (`ALLOWED_ORIGINS`).
    pub allowed_origins: Vec<String>,
    /// Used when an invocation carries no Lambda deadline (tests, local runs).
    pub default_request_budget: Duration,
    /// How long an `Idempotency-Key` claim is held by an in-flight request.
    pub idempotency_lease: Duration,
    /// Sessions untouched for longer are deleted by the cleanup function.
    pub session_retention: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`; may carry a password.
    pub url: SecretString,
    /// `DATABASE_CA_CERT`: extra trusted CA(s), PEM (a path, or the PEM text).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// `DATABASE_POOL_SIZE` (default 1): connections per Lambda instance,
    /// which serves one request at a time with one statement at a time.
    pub pool_size: usize,
    /// `DATABASE_CONNECT_TIMEOUT_MS` (default 3000): TCP+TLS+auth, and the wait for a pooled connection.
    pub connect_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_MS` (default 5000): bound on each statement, enforced client-side
    /// (server-side `options` are not accepted by transaction poolers).
    pub statement_timeout: Duration,
    /// `DATABASE_IDLE_CHECK_MS` (default 10000): a connection unused for
    /// longer (say, a frozen function's) is checked with an empty query,
    /// bounded to 500 ms, before its first statement, and replaced if dead.
    pub idle_check: Duration,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`: `redis://` or `rediss://` (TLS), with the password in the URL.
    pub url: SecretString,
    /// `REDIS_CA_CERT`: extra trusted CA, PEM (a path, or the PEM text).
    pub ca_cert_pem: Option<Vec<u8>>,
    /// `REDIS_CONNECT_TIMEOUT_MS` (default 1000).
    pub connect_timeout: Duration,
    /// `REDIS_TIMEOUT_MS` (default 150): bound on each command round trip.
    pub op_timeout: Duration,
    /// `HISTORY_CACHE_TTL_SECONDS` (default 86400).
    pub history_ttl: Duration,
    /// `REDIS_KEY_PREFIX` (default `chat`): lets stages share one database.
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct ClaudeConfig {
    /// `CLAUDE_API_KEY`: without it every reply is the offline fallback.
    pub api_key: Option<SecretString>,
    /// `ANTHROPIC_BASE_URL` (default `https://api.anthropic.com`).
    pub base_url: String,
    /// `CLAUDE_MODEL` (default [`DEFAULT_MODEL`]).
    pub model: String,
    /// `CLAUDE_MAX_TOKENS` (default [`DEFAULT_MAX_TOKENS`]).
    pub max_tokens: u32,
    /// `CLAUDE_ATTEMPT_TIMEOUT_MS` (default 5000): one HTTP attempt.
    pub attempt_timeout: Duration,
    /// `CLAUDE_MAX_ATTEMPTS` (default 3).
    pub max_attempts: u32,
    /// `CLAUDE_RESPONSE_MARGIN_MS` (default 1500): kept from the invocation's
    /// remaining time to store the reply and answer.
    pub response_margin: Duration,
    /// `CLAUDE_CONTEXT_MESSAGES` (default 20): earlier messages sent as context.
    pub context_messages: u32,
    /// `CLAUDE_CONTEXT_CHARS` (default 12000): character budget of the context.
    pub context_chars: usize,
    /// The store facts (`STORE_KNOWLEDGE_PATH`, SSM `STORE_KNOWLEDGE`, or the bundled sample).
    pub knowledge: Knowledge,
}

#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_PER_SESSION_PER_MINUTE` (default 20; 0 = off).
    pub per_session: u32,
    /// `RATE_LIMIT_PER_IP_PER_MINUTE` (default 60; 0 = off).
    pub per_ip: u32,
    /// `RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE` (default 120; 0 = off): `GET`s per client IP.
    pub history_per_ip: u32,
    /// `RATE_LIMIT_WINDOW_SECONDS` (default 60).
    pub window: Duration,
}

#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// `HANDOFF_WEBHOOK_URL`: where handoff events are `POST`ed; `None`:
    /// stored, not sent. Secret: Slack and Teams URLs carry a token.
    pub webhook_url: Option<SecretString>,
    /// `HANDOFF_WEBHOOK_SECRET`: signs each body (`X-Signature-256`).
    pub webhook_secret: Option<SecretString>,
    /// `HANDOFF_WEBHOOK_TIMEOUT_MS` (default 1000): one delivery attempt.
    pub timeout: Duration,
}

/// Where configuration values come from: a plain map, so tests can build one
/// without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    pub fn set(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.0.insert(k.into(), v.into());
    }

    pub fn remove(&mut self, k: &str) {
        self.0.remove(k);
    }

    /// A non-empty value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, ConfigError> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| invalid(k, "not a valid number")),
        }
    }

    fn millis(&self, k: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse(k, default_ms)?;
        if ms == 0 {
            return Err(invalid(k, "must be greater than 0"));
        }
        Ok(Duration::from_millis(ms))
    }
}

impl Config {
    /// Loads from the process environment and, if configured, SSM.
    pub async fn load() -> Result<Self, ConfigError> {
        Self::load_from(Env::from_process()).await
    }

    /// Fills what `env` lacks from SSM (when `SSM_PARAMETER_PREFIX` is set), then validates.
    pub async fn load_from(env: Env) -> Result<Self, ConfigError> {
        Self::load_only(env, SSM_NAMES).await
    }

    /// Like [`Config::load_from`], asking SSM for `names` only: a function
    /// fetches (and its role may read) just the secrets it uses.
    pub async fn load_only(mut env: Env, names: &[&str]) -> Result<Self, ConfigError> {
        if let Some(prefix) = env.get("SSM_PARAMETER_PREFIX").map(str::to_owned) {
            let wanted: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| env.get(n).is_none())
                .collect();
            if !wanted.is_empty() {
                let found = fetch_ssm(&prefix, &wanted).await?;
                for (name, value) in found {
                    env.set(name, value);
                }
            }
        }
        Self::from_env(&env)
    }

    /// Validates a complete set of values (no I/O but reading CA/knowledge files).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let idempotency_lease = env.millis("IDEMPOTENCY_LEASE_MS", 60_000)?;
        // A claim must outlive the request holding it, or a retry could run
        // the same request twice at once.
        if let Some(timeout) = env.get("FUNCTION_TIMEOUT_SECONDS") {
            let secs: u64 = timeout
                .parse()
                .map_err(|_| invalid("FUNCTION_TIMEOUT_SECONDS", "not a valid number"))?;
            if idempotency_lease <= Duration::from_secs(secs) {
                return Err(invalid(
                    "IDEMPOTENCY_LEASE_MS",
                    "must be longer than the function timeout (FUNCTION_TIMEOUT_SECONDS)",
                ));
            }
        }
        Ok(Config {
            database: DatabaseConfig::from_env(env)?,
            redis: RedisConfig::from_env(env)?,
            claude: ClaudeConfig::from_env(env)?,
            limits: RateLimitConfig::from_env(env)?,
            handoff: HandoffConfig::from_env(env)?,
            allowed_origins: allowed_origins(env),
            default_request_budget: env.millis("REQUEST_BUDGET_MS", 15_000)?,
            idempotency_lease,
            session_retention: Duration::from_secs(
                env.parse::<u64>("SESSION_RETENTION_DAYS", 90)?.max(1) * 86_400,
            ),
        })
    }

    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }
}

impl DatabaseConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env
            .get("DATABASE_URL")
            .ok_or(ConfigError::Missing("DATABASE_URL"))?;
        parse_database_url(url).map_err(|reason| invalid("DATABASE_URL", reason))?;
        let pool_size: usize = env.parse("DATABASE_POOL_SIZE", 1)?;
        if pool_size == 0 {
            return Err(invalid("DATABASE_POOL_SIZE", "must be at least 1"));
        }
        Ok(DatabaseConfig {
            url: SecretString::from(url.to_owned()),
            ca_cert_pem: read_pem(env, "DATABASE_CA_CERT")?,
            pool_size,
            connect_timeout: env.millis("DATABASE_CONNECT_TIMEOUT_MS", 3000)?,
            statement_timeout: env.millis("DATABASE_STATEMENT_TIMEOUT_MS", 5000)?,
            idle_check: env.millis("DATABASE_IDLE_CHECK_MS", 10_000)?,
        })
    }

    /// The connection options the URL describes. libpq's `verify-ca` and
    /// `verify-full` are accepted as `require`, which here always verifies
    /// the certificate chain and host name.
    pub fn connect_options(&self) -> Result<tokio_postgres::Config, String> {
        parse_database_url(self.url.expose_secret())
    }
}

fn parse_database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let normalised = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    normalised
        .parse::<tokio_postgres::Config>()
        // The parser's message can quote the input; say only what is wrong in general.
        .map_err(|_| "not a valid PostgreSQL connection URL".to_owned())
}

impl RedisConfig {
    fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let Some(url) = env.get("REDIS_URL") else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(invalid(
                "REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
        Ok(Some(RedisConfig {
            url: SecretString::from(url.to_owned()),
            ca_cert_pem: read_pem(env, "REDIS_CA_CERT")?,
            connect_timeout: env.millis("REDIS_CONNECT_TIMEOUT_MS", 1000)?,
            op_timeout: env.millis("REDIS_TIMEOUT_MS", 150)?,
            history_ttl: Duration::from_secs(env.parse("HISTORY_CACHE_TTL_SECONDS", 86_400)?),
            key_prefix: env.get("REDIS_KEY_PREFIX").unwrap_or("chat").to_owned(),
        }))
    }
}

impl ClaudeConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let base_url = env
            .get("ANTHROPIC_BASE_URL")
            .unwrap_or("https://api.anthropic.com")
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(invalid("ANTHROPIC_BASE_URL", "must be an http(s) URL"));
        }
        let max_tokens: u32 = env.parse("CLAUDE_MAX_TOKENS", DEFAULT_MAX_TOKENS)?;
        if !(1..=8192).contains(&max_tokens) {
            return Err(invalid("CLAUDE_MAX_TOKENS", "must be 1 to 8192"));
        }
        Ok(ClaudeConfig {
            api_key: env
                .get("CLAUDE_API_KEY")
                .map(|k| SecretString::from(k.to_owned())),
            base_url,
            model: env.get("CLAUDE_MODEL").unwrap_or(DEFAULT_MODEL).to_owned(),
            max_tokens,
            attempt_timeout: env.millis("CLAUDE_ATTEMPT_TIMEOUT_MS", 5000)?,
            max_attempts: env.parse("CLAUDE_MAX_ATTEMPTS", 3u32)?.max(1),
            response_margin: env.millis("CLAUDE_RESPONSE_MARGIN_MS", 1500)?,
            context_messages: env.parse("CLAUDE_CONTEXT_MESSAGES", 20u32)?.min(200),
            context_chars: env.parse("CLAUDE_CONTEXT_CHARS", 12_000usize)?.max(2_000),
            knowledge: knowledge(env)?,
        })
    }
}

/// The store facts: a file, the SSM parameter's text, or the bundled sample.
fn knowledge(env: &Env) -> Result<Knowledge, ConfigError> {
    match (env.get("STORE_KNOWLEDGE_PATH"), env.get("STORE_KNOWLEDGE")) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid("STORE_KNOWLEDGE_PATH", format!("cannot read the file: {e}"))
            })?;
            Knowledge::parse(&text).map_err(|r| invalid("STORE_KNOWLEDGE_PATH", r))
        }
        (None, Some(text)) => Knowledge::parse(text).map_err(|r| invalid("STORE_KNOWLEDGE", r)),
        (None, None) => Ok(Knowledge::bundled()),
    }
}

impl RateLimitConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(RateLimitConfig {
            per_session: env.parse("RATE_LIMIT_PER_SESSION_PER_MINUTE", 20)?,
            per_ip: env.parse("RATE_LIMIT_PER_IP_PER_MINUTE", 60)?,
            history_per_ip: env.parse("RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE", 120)?,
            window: Duration::from_secs(env.parse("RATE_LIMIT_WINDOW_SECONDS", 60u64)?.max(1)),
        })
    }
}

impl HandoffConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let webhook_url = match env.get("HANDOFF_WEBHOOK_URL") {
            None => None,
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => {
                Some(SecretString::from(u.to_owned()))
            }
            // Say what is wrong without repeating the value: it may hold a token.
            Some(_) => return Err(invalid("HANDOFF_WEBHOOK_URL", "must be an http(s) URL")),
        };
        Ok(HandoffConfig {
            webhook_url,
            webhook_secret: env
                .get("HANDOFF_WEBHOOK_SECRET")
                .map(|s| SecretString::from(s.to_owned())),
            timeout: env.millis("HANDOFF_WEBHOOK_TIMEOUT_MS", 1000)?,
        })
    }
}

/// `ALLOWED_ORIGINS`: comma-separated, trailing slashes ignored.
fn allowed_origins(env: &Env) -> Vec<String> {
    env.get("ALLOWED_ORIGINS")
        .map(|v| {
            v.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// A PEM value given either inline or as a file path.
fn read_pem(env: &Env, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(v) = env.get(name) else {
        return Ok(None);
    };
    let pem = if v.starts_with("-----BEGIN") {
        v.as_bytes().to_vec()
    } else {
        std::fs::read(v).map_err(|e| invalid(name, format!("cannot read the file: {e}")))?
    };
    if crate::tls::parse_certs(&pem)
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        return Err(invalid(name, "holds no PEM certificate"));
    }
    Ok(Some(pem))
}

/// One `GetParameters` call (with decryption) for `names` under `prefix`.
/// Missing optional parameters are simply absent from the result; a missing
/// `DATABASE_URL` is reported by validation, by name.
async fn fetch_ssm(prefix: &str, names: &[&str]) -> Result<Vec<(String, String)>, ConfigError> {
    let prefix = prefix.trim_end_matches('/');
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(3))
        .operation_timeout(Duration::from_secs(8))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let client = aws_sdk_ssm::Client::new(&sdk);
    let full: Vec<String> = names.iter().map(|n| format!("{prefix}/{n}")).collect();
    let out = client
        .get_parameters()
        .set_names(Some(full))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| ConfigError::Ssm {
            prefix: prefix.to_owned(),
            // The SDK's error display names the operation and service cause, not values.
            reason: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string(),
        })?;
    let mut found = Vec::new();
    for p in out.parameters() {
        let (Some(name), Some(value)) = (p.name(), p.value()) else {
            continue;
        };
        if let Some(short) = name.strip_prefix(prefix).map(|n| n.trim_start_matches('/')) {
            found.push((short.to_owned(), value.to_owned()));
        }
    }
    let missing: Vec<&str> = out
        .invalid_parameters()
        .iter()
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            ?missing,
            "SSM parameters not found (optional ones are left unset)"
        );
    }
    Ok(found)
}
