//! The notifier's rules, free of gRPC and SQL: which events a filter selects, cursors, webhook
//! targets, the CloudEvents / CDEvents / Slack renderings, webhook signatures, and escalation.

pub mod cursor;
pub mod escalation;
pub mod filter;
pub mod render;
pub mod signature;
pub mod target;
