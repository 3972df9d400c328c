//! What every measurement phase needs, made once by `measure`.

use std::sync::Arc;
use support_chat::App;
use testkit::claude::FakeClaude;
use tokio::runtime::Handle;

use crate::settings::Settings;

/// Sessions of 20 messages each, seeded before measuring.
pub struct Sessions {
    /// 50 sessions that warm send-message requests continue.
    pub a: Vec<String>,
    /// 10 sessions whose history is read (cache hits and misses).
    pub b: Vec<String>,
    /// 50 sessions the end-to-end send-message run continues.
    pub c: Vec<String>,
}

pub struct Ctx<'a> {
    pub s: &'a Settings,
    /// The runtime the fake Claude, the Runtime APIs and the proxies run on
    /// (a thread of its own, like remote services).
    pub infra: &'a Handle,
    pub claude: &'a FakeClaude,
    /// The functions' environment, pointing at the real services.
    pub env: Vec<(String, String)>,
    /// An app on `env`, connections made.
    pub app: Arc<App>,
    pub sessions: Sessions,
}
