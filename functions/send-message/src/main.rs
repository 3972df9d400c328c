//! `POST /api/chat`: store the shopper's message, ask Claude, store and
//! return the reply: JSON, or Server-Sent Events when the client asks
//! (`Accept: text/event-stream`). Runs under the streaming runner, so a
//! stream reaches the client as it is written.

use lambda_http::{Error, service_fn};
use std::sync::Arc;
use support_chat::metrics::Metrics;
use support_chat::{App, http};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    // Shared with the task that completes a streamed reply.
    let app = Arc::new(
        App::from_env()
            .await?
            .with_metrics(Metrics::stdout("send-message")),
    );
    app.warm_up_in_background();
    lambda_http::run_with_streaming_response(service_fn(|req| http::send_message(&app, req))).await
}
