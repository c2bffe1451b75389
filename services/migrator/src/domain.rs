//! The migrator's pure logic (no sqlx, no tonic): Flyway's versions, file names, checksums,
//! placeholders, the statement splitter, and the info/validate computation. Tested with plain
//! `#[test]`s.

pub mod checksum;
pub mod info;
pub mod naming;
pub mod placeholders;
pub mod sql;
pub mod version;
