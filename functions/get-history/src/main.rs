//! `GET /api/chat/history/{sessionId}`: the conversation, paged, oldest first.

use lambda_http::{Error, service_fn};
use support_chat::metrics::Metrics;
use support_chat::{App, http};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let app = App::from_env()
        .await?
        .with_metrics(Metrics::stdout("get-history"));
    app.warm_up_in_background();
    lambda_http::run(service_fn(|req| http::get_history(&app, req))).await
}
