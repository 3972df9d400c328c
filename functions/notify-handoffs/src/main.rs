//! Scheduled (EventBridge, every minute): delivers the handoff events the
//! request path could not, with backoff, until delivered or a day old.
//! It reads the database and webhook secrets only.

use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support_chat::config::{Config, Env, NOTIFIER_SSM_NAMES};
use support_chat::notify::Notifier;
use support_chat::service;
use support_chat::store::Store;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let config = Config::load_only(Env::from_process(), NOTIFIER_SSM_NAMES).await?;
    let store = Store::new(&config.database)?;
    let notifier = Notifier::new(&config.handoff)?;
    let (store, notifier) = (&store, &notifier);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let deadline = deadline(&event.context);
        let r = service::deliver_due(store, notifier, deadline).await?;
        tracing::info!(
            sent = r.sent,
            failed = r.failed,
            pending = r.pending,
            oldest_pending_s = r.oldest_pending.as_secs(),
            "handoff notifications"
        );
        Ok::<_, Error>(json!({ "sent": r.sent, "failed": r.failed, "pending": r.pending }))
    }))
    .await
}

/// The invocation's deadline (a minute when the runtime gives none).
fn deadline(ctx: &lambda_runtime::Context) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = ctx.deadline.saturating_sub(now_ms);
    Instant::now() + Duration::from_millis(if left == 0 { 60_000 } else { left })
}
