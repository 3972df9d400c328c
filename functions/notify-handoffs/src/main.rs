//! Scheduled (EventBridge, every minute): delivers the handoff events the
//! request path could not, with backoff, until delivered or a day old.
//! It reads the database and webhook secrets only.

use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use std::time::Duration;
use support_chat::config::{Config, Env, NOTIFIER_SSM_NAMES};
use support_chat::metrics::Metrics;
use support_chat::notify::Notifier;
use support_chat::service;
use support_chat::store::Store;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let config = Config::load_only(Env::from_process(), NOTIFIER_SSM_NAMES).await?;
    let store = Store::new(&config.database)?;
    let notifier = Notifier::new(&config.handoff)?;
    let metrics = Metrics::stdout("notify-handoffs");
    let (store, notifier, metrics) = (&store, &notifier, &metrics);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let deadline =
            support_chat::deadline::of_invocation(&event.context, Duration::from_secs(60));
        let r = service::deliver_due(store, notifier, deadline).await?;
        metrics.emit(r.metrics());
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
