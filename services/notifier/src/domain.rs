//! The notifier's rules, free of gRPC and SQL: which events a filter selects, cursors, webhook
//! targets, the CloudEvents / CDEvents / Slack renderings, webhook signatures, and escalation.

pub mod cursor;
pub mod escalation;
pub mod filter;
pub mod render;
pub mod signature;
pub mod target;

/// The instant a protobuf timestamp names (None when out of range).
pub fn instant(t: &prost_types::Timestamp) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(t.seconds as i128 * 1_000_000_000 + t.nanos as i128).ok()
}
