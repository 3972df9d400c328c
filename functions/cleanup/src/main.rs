//! Scheduled (EventBridge) retention cleanup: deletes sessions idle for longer
//! than `SESSION_RETENTION_DAYS` and idempotency records older than 24 h.
//! It needs the database only: it reads no other secret and builds no other client.

use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use std::time::Duration;
use support_chat::config::{Config, Env, STORE_SSM_NAMES};
use support_chat::metrics::Metrics;
use support_chat::service;
use support_chat::store::Store;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let config = Config::load_only(Env::from_process(), STORE_SSM_NAMES).await?;
    let store = Store::new(&config.database)?;
    let metrics = Metrics::stdout("cleanup");
    let (store, config, metrics) = (&store, &config, &metrics);
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        let deadline =
            support_chat::deadline::of_invocation(&event.context, Duration::from_secs(60));
        let (sessions, keys) = service::cleanup(store, config, deadline).await?;
        metrics.emit(service::cleanup_metrics(sessions, keys));
        tracing::info!(
            sessions_deleted = sessions,
            idempotency_keys_deleted = keys,
            "cleanup done"
        );
        Ok::<_, Error>(json!({ "sessionsDeleted": sessions, "idempotencyKeysDeleted": keys }))
    }))
    .await
}
