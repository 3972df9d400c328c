//! `POST /api/chat`: store the shopper's message, ask Claude, store and return the reply.

use lambda_http::{Error, service_fn};
use support_chat::{App, http};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    support_chat::telemetry::init();
    let app: &'static App = Box::leak(Box::new(App::from_env().await?));
    app.warm_up_in_background();
    lambda_http::run(service_fn(move |req| http::send_message(app, req))).await
}
