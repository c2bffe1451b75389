//! The HopNGo migrator: Flyway-compatible migrations on PostgreSQL. It reads and writes
//! `flyway_schema_history` exactly as Flyway does, takes Flyway's advisory lock, and runs
//! migrate, baseline, repair and undo as stored runs that callers start and watch.

pub mod convert;
pub mod domain;
pub mod engine;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod history;
pub mod scripts;
pub mod server;
pub mod store;
