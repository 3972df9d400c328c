//! Scheduled (EventBridge) retention cleanup: deletes sessions idle for longer
//! than `SESSION_RETENTION_DAYS` and idempotency records older than 24 h.

use lambda_http::lambda_runtime::{self, Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use support_chat::App;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let app: &'static App = Box::leak(Box::new(App::from_env().await?));
    lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
        let (sessions, keys) = app.cleanup().await?;
        tracing::info!(
            sessions_deleted = sessions,
            idempotency_keys_deleted = keys,
            "cleanup done"
        );
        Ok::<_, Error>(json!({ "sessionsDeleted": sessions, "idempotencyKeysDeleted": keys }))
    }))
    .await
}
