//! The analyzer's domain, free of gRPC and SQL: the condition and scrape languages, Argo's run
//! semantics, and the judge's statistics.

pub mod condition;
pub mod judge;
pub mod lexer;
pub mod run;
pub mod scrape;
pub mod stats;
pub mod template;
