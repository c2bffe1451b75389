//! The HopNGo analyzer: analysis runs measured by providers (Prometheus, a scraped endpoint,
//! HTTP JSON, a command), judged with Argo Rollouts' semantics, stored in PostgreSQL; and a
//! Kayenta-style judge that compares a canary's sample with a baseline's.

pub mod convert;
pub mod domain;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod policy;
pub mod providers;
pub mod server;
pub mod store;
