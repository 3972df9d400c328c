//! What the bench is told (environment) and what it tells the functions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::Res;

pub fn var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is required (run `make bench`)").into())
}

fn var_or(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|_| format!("{name} must be a number"))?),
        Err(_) => Ok(default),
    }
}

pub struct Settings {
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub work_dir: PathBuf,
    pub warm_iters: usize,
    pub cold_runs: usize,
    pub e2e_iters: usize,
    /// BENCH_STREAM_ITERS: streamed send-messages timed token by token.
    pub stream_iters: usize,
    /// BENCH_ONLY: the phases to run (all when unset).
    only: Option<Vec<String>>,
    /// BENCH_FUNCTION_ENV: `K=V` pairs added to the functions' environment
    /// (for what-if runs, e.g. SSL_CERT_FILE=...).
    extra_env: Vec<(String, String)>,
}

impl Settings {
    pub fn from_env() -> Res<Self> {
        let out = PathBuf::from(
            std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench/results.json".into()),
        );
        let work_dir = out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Settings {
            database_url: var("BENCH_DATABASE_URL")?,
            redis_url: var("BENCH_REDIS_URL")?,
            redis_prefix: std::env::var("BENCH_REDIS_PREFIX")
                .unwrap_or_else(|_| format!("bench-{}", uuid::Uuid::new_v4().simple())),
            bin_dir: PathBuf::from(var("BENCH_BIN_DIR")?),
            out,
            work_dir,
            warm_iters: var_or("BENCH_WARM_ITERS", 1000)?.max(10),
            cold_runs: var_or("BENCH_COLD_RUNS", 40)?.max(3),
            e2e_iters: var_or("BENCH_E2E_ITERS", 1000)?.max(10),
            stream_iters: var_or("BENCH_STREAM_ITERS", 200)?.max(10),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect()),
            extra_env: std::env::var("BENCH_FUNCTION_ENV")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == phase))
    }

    /// The function configuration, as the deployed functions get it (from
    /// SSM there; from the environment here), pointing at the given services.
    pub fn function_env(&self, claude: &str, db: &str, redis: &str) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", db),
            ("REDIS_URL", redis),
            ("REDIS_KEY_PREFIX", self.redis_prefix.as_str()),
            ("ANTHROPIC_BASE_URL", claude),
            ("CLAUDE_API_KEY", "dummy"),
            ("CLAUDE_MODEL", "claude-haiku-4-5"),
            ("ALLOWED_ORIGINS", "https://shop.example.com"),
            ("SESSION_RETENTION_DAYS", "90"),
            ("RUST_LOG", "info"),
            // The bench sends far more than a shopper could: keep the limits
            // (their Redis work is measured) but out of reach.
            ("RATE_LIMIT_PER_SESSION_PER_MINUTE", "100000000"),
            ("RATE_LIMIT_PER_IP_PER_MINUTE", "100000000"),
            ("RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE", "100000000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.extra_env.iter().cloned())
        .collect()
    }
}

/// What the Lambda service sets for a `provided.al2023` function (128 MB, as in template.yaml).
pub fn lambda_env(name: &str, api: SocketAddr) -> Vec<(String, String)> {
    [
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("support-chat-{name}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2025/11/24/[$LATEST]0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/support-chat-{name}"),
        ),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("LAMBDA_TASK_ROOT", "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
        ("_HANDLER", "bootstrap".into()),
        ("TZ", ":UTC".into()),
        ("LANG", "en_US.UTF-8".into()),
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
