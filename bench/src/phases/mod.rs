//! The measurements, one module a phase, each adding its rows to the report.
//! Phases run in this order; BENCH_ONLY picks some by name.

pub mod baselines;
pub mod cold;
pub mod e2e;
pub mod round_trips;
pub mod sizes;
pub mod stream;
pub mod warm;

pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}
