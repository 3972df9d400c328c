//! The handlers called in this process, as the functions call them: one
//! request at a time on a current-thread runtime.

use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use support_chat::App;
use support_chat::config::{Config, Env};
use support_chat::domain::SessionId;
use testkit::claude::REPLY;
use testkit::events::{Event, question};

use crate::Res;
use crate::sampling::{Took, thread_cpu};

/// `POST /api/chat` as a browser on the storefront sends it.
pub fn post(message: &str, session_id: Option<&str>) -> Event {
    Event::send(message, session_id).browser()
}

/// `GET /api/chat/history/{id}` as a browser on the storefront sends it.
pub fn get(session_id: &str) -> Event {
    Event::history(session_id).browser()
}

pub fn app(env: &[(String, String)]) -> Res<Arc<App>> {
    Ok(Arc::new(App::new(Config::from_env(&Env::from_pairs(
        env.to_vec(),
    ))?)?))
}

/// Runs `send_message` and checks it answered with the fake Claude's reply.
pub async fn send(app: &Arc<App>, event: Event) -> Res<(Took, String)> {
    let req = event.request();
    let (t, cpu) = (Instant::now(), thread_cpu());
    let resp = support_chat::http::send_message(app, req).await?;
    let took = Took::since(t, cpu);
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status != 200 || body["reply"] != REPLY {
        return Err(format!("send-message answered {status}: {body}").into());
    }
    let sid = body["sessionId"].as_str().unwrap_or_default().to_owned();
    Ok((took, sid))
}

pub async fn history(app: &App, sid: &str) -> Res<Took> {
    let req = get(sid).request();
    let (t, cpu) = (Instant::now(), thread_cpu());
    let resp = support_chat::http::get_history(app, req).await?;
    let took = Took::since(t, cpu);
    if resp.status() != 200 {
        let body = String::from_utf8_lossy(resp.body().as_ref()).into_owned();
        return Err(format!("get-history answered {}: {body}", resp.status()).into());
    }
    Ok(took)
}

/// Sessions holding 20 messages (10 exchanges).
pub async fn seed_sessions(app: &Arc<App>, n: usize) -> Res<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (_, sid) = send(app, post(&question(i), None)).await?;
        for j in 1..10 {
            send(app, post(&question(i + j), Some(&sid))).await?;
        }
        out.push(sid);
    }
    Ok(out)
}

pub async fn invalidate(app: &App, s: &str) -> Res<()> {
    let sid = SessionId::parse(s).map_err(|e| format!("bad session id {s}: {e}"))?;
    let cache = app.cache().ok_or("no cache configured")?;
    cache
        .invalidate(sid)
        .await
        .map_err(|e| format!("invalidate: {e}"))?;
    Ok(())
}
