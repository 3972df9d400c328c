//! The library the four Lambda functions link.
//!
//! Data flows one way: an API Gateway event is parsed by [`http`], decided by
//! [`service`], whose I/O goes through [`store`] (PostgreSQL), [`cache`]
//! (Redis), [`llm`] (Claude) and [`notify`] (the handoff webhook); then
//! [`http`] renders the answer. The types follow the same order, with no
//! cycle (checked by `scripts/shape.sh`):
//!
//! - [`domain`], [`error`], [`knowledge`], [`handoff`], [`tls`], [`deadline`],
//!   [`metrics`], [`telemetry`]: values and rules that need nothing else;
//! - [`config`]: settings, from the environment and SSM;
//! - [`store`], [`cache`], [`llm`], [`notify`]: one adapter each, handing
//!   each other only [`domain`] values;
//! - [`service`]: the use cases;
//! - [`http`]: the API Gateway edge.

pub mod cache;
pub mod config;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod handoff;
pub mod http;
pub mod knowledge;
pub mod llm;
pub mod metrics;
pub mod notify;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};
pub use service::App;
