//! The HopNGo notifier: the ordered, replayable log of release events, gRPC subscriptions that
//! resume from a cursor, signed webhooks (CloudEvents binary and structured, Slack) with retries
//! and dead letters, and escalation of releases nobody attends to.

pub mod clock;
pub mod convert;
pub mod domain;
pub mod error;
pub mod escalator;
pub mod grpc;
pub mod log;
pub mod metrics;
pub mod server;
pub mod store;
pub mod subscribe;
pub mod webhooks;
