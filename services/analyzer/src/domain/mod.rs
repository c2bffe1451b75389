//! The analyzer's domain, free of gRPC and SQL: the condition and scrape languages (their own
//! crate, shared with the delivery config's validation), Argo's run semantics, and the judge's
//! statistics.

pub use hopngo_metrics_lang::{condition, lexer, scrape, template};
pub mod judge;
pub mod run;
pub mod stats;
