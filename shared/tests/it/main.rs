//! The integration tests, one binary (one link on a 2-CPU CI): real
//! PostgreSQL and Redis, a fake Claude, API Gateway events in, responses out.

mod cache;
mod chat_api;
mod claude;
mod emf;
mod fuzz;
mod handoff;
mod hardening;
mod harness;
mod paging;
mod pooler;
mod reliability;
mod ssm;
mod streaming;
mod support;
mod tls;
