//! The HopNGo scheduler: the public release API, the delivery config, and the durable release
//! engine. See `ARCHITECTURE.md` at the repository root for how the pieces fit.

pub mod app;
pub mod convert;
pub mod creation;
pub mod deps;
pub mod domain;
pub mod engine;
pub mod error;
pub mod gauges;
pub mod grpc;
pub mod outbox;
pub mod refusals;
pub mod server;
pub mod signals;
pub mod store;
pub mod watcher;
