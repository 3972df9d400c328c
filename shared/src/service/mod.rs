//! The use cases, with no HTTP in them: sending a message (whole or
//! streamed), reading history, delivering handoffs, and the retention
//! cleanup. Each function binary builds only the part it uses: the chat
//! functions an [`App`], the scheduled ones a [`Store`] (and a [`Notifier`]).

mod history;
mod notify;
mod send;

pub use history::CacheOutcome;
pub use notify::{NotifyReport, deliver_due};
pub use send::{Pending, SendMessage, SendOutcome, Started};

use std::time::{Duration, Instant};
use tracing::{info, warn};

use crate::cache::{Cache, Subject};
use crate::config::{Config, ConfigError};
use crate::error::{Error, Result};
use crate::llm::Claude;
use crate::metrics::{Doc, Metrics};
use crate::notify::Notifier;
use crate::store::Store;

/// How long idempotency records are kept.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Everything a chat function needs, built once per cold start.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    store: Store,
    cache: Option<Cache>,
    claude: Claude,
    notifier: Notifier,
    metrics: Metrics,
}

fn bad(name: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        reason,
    }
}

impl App {
    /// Loads the configuration (environment, then SSM) and builds the clients.
    pub async fn from_env() -> std::result::Result<Self, crate::error::BoxError> {
        let config = Config::load().await?;
        Ok(Self::new(config)?)
    }

    /// Builds the clients. Nothing connects yet: the first request (or
    /// [`App::warm_up_in_background`]) does.
    pub fn new(config: Config) -> std::result::Result<Self, ConfigError> {
        let store = Store::new(&config.database).map_err(|e| bad("DATABASE_URL", e.to_string()))?;
        let cache = match &config.redis {
            Some(r) => Some(
                Cache::new(r)
                    .map_err(|_| bad("REDIS_URL", "cannot build a Redis client from it".into()))?,
            ),
            None => None,
        };
        let claude =
            Claude::new(&config.claude).map_err(|e| bad("ANTHROPIC_BASE_URL", e.to_string()))?;
        let notifier = Notifier::new(&config.handoff)
            .map_err(|_| bad("HANDOFF_WEBHOOK_URL", "cannot build a client for it".into()))?;
        Ok(App {
            config,
            store,
            cache,
            claude,
            notifier,
            metrics: Metrics::off(),
        })
    }

    /// Emits its CloudWatch metrics through `metrics` (off by default).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Opens the database and Redis connections while the runtime waits for
    /// the first event, so the first request does not pay for them.
    pub fn warm_up_in_background(&self) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.warm_up().await {
                warn!(error = %e, "database warm-up failed; the first request will retry");
            }
        });
        if let Some(cache) = self.cache.clone() {
            tokio::spawn(async move {
                if let Err(e) = cache.ping().await {
                    warn!(error = %e, "redis warm-up failed; the first request will retry");
                }
            });
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// Charges the rate limits (one Redis round trip); `RateLimited` when one
    /// is exceeded. Without Redis there are no limits; when Redis fails the
    /// request is allowed (fail open), and the log says why.
    async fn charge(&self, charges: &[(Subject<'_>, u32)]) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        match cache.check_limits(charges, self.config.limits.window).await {
            Ok(None) => Ok(()),
            Ok(Some(retry_after)) => {
                info!(retry_after_s = retry_after.as_secs(), "rate limited");
                Err(Error::RateLimited { retry_after })
            }
            Err(e) if crate::cache::is_out_of_memory(&e) => {
                warn!(error = %e, "rate limits are off: Redis refuses writes (out of memory); allowing the request");
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "rate limit check failed; allowing the request (fail open)");
                Ok(())
            }
        }
    }

    /// The retention cleanup, on this app's store.
    pub async fn cleanup(&self) -> Result<(i64, i64)> {
        let deadline = Instant::now() + self.config.default_request_budget;
        cleanup(&self.store, &self.config, deadline).await
    }
}

/// The cleanup run's EMF document.
pub fn cleanup_metrics(sessions: i64, keys: i64) -> Doc {
    Doc::default()
        .count("SessionsDeleted", sessions.unsigned_abs())
        .count("IdempotencyKeysDeleted", keys.unsigned_abs())
}

/// Rows per cleanup statement: small enough to finish far inside the
/// statement timeout even when every row cascades.
const CLEANUP_BATCH: i64 = 500;

/// Deletes what the retention policy says to: sessions idle for longer than
/// `SESSION_RETENTION_DAYS`, idempotency records older than 24 h. Batch
/// after batch while `deadline` allows, so a backlog shrinks every run.
pub async fn cleanup(store: &Store, config: &Config, deadline: Instant) -> Result<(i64, i64)> {
    let (mut sessions, mut keys) = (0, 0);
    let margin = config
        .database
        .statement_timeout
        .min(Duration::from_secs(2));
    loop {
        let (s, k) = store
            .delete_expired(config.session_retention, KEY_TTL, CLEANUP_BATCH)
            .await?;
        sessions += s;
        keys += k;
        let done = s < CLEANUP_BATCH && k < CLEANUP_BATCH;
        if done || deadline.saturating_duration_since(Instant::now()) < margin {
            return Ok((sessions, keys));
        }
    }
}
