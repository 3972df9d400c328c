//! The library both chat Lambda functions link.
//!
//! Data flows one way: an API Gateway event is parsed by [`http`], decided by
//! [`service`], whose I/O goes through [`store`] (PostgreSQL), [`cache`]
//! (Redis) and [`llm`] (Claude); then [`http`] renders the answer.

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
