//! Domain → `hopngo.migrator.v1` messages.

use hopngo_proto::migrator as pb;
use time::OffsetDateTime;

use crate::{
    domain::{
        info::{Info, InfoSet, State},
        placeholders::redacted,
        version::Version,
    },
    executor::Change,
    store::{Command, Phase, StoredRun},
};

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// Flyway state → contract state.
pub fn state(s: State) -> pb::MigrationState {
    use pb::MigrationState as M;
    match s {
        State::Pending => M::Pending,
        State::AboveTarget => M::AboveTarget,
        State::BelowBaseline => M::BelowBaseline,
        State::BaselineIgnored => M::BaselineIgnored,
        State::Baseline => M::Baseline,
        State::Ignored => M::Ignored,
        State::MissingSuccess => M::Missing,
        State::MissingFailed => M::MissingFailed,
        State::Success => M::Success,
        State::Undone => M::Undone,
        State::Failed => M::Failed,
        State::OutOfOrder => M::OutOfOrder,
        State::FutureSuccess => M::Future,
        State::FutureFailed => M::FutureFailed,
        State::Outdated => M::Outdated,
        State::Superseded => M::Superseded,
        State::Deleted => M::Deleted,
    }
}

/// One entry of an info set; `undo_scripts` are the versions that have a `U` script.
pub fn info(set: &InfoSet, i: &Info, undo_scripts: &std::collections::HashSet<&Version>) -> pb::MigrationInfo {
    let resolved = i.resolved.map(|r| &set.resolved[r]);
    let applied = i.applied.map(|a| &set.applied[a]);
    let mut m = pb::MigrationInfo {
        version: set.version_of(i).map(|v| v.text().to_string()).unwrap_or_default(),
        description: set.description_of(i).to_string(),
        state: state(i.state) as i32,
        state_name: i.state.display_name().to_string(),
        ..Default::default()
    };
    if let Some(r) = resolved {
        m.r#type = r.kind.as_str().to_string();
        m.script = r.script.clone();
        m.checksum = Some(r.checksum);
    }
    let kind = applied.map(|a| a.kind).or(resolved.map(|r| r.kind));
    m.undoable = kind == Some(crate::domain::info::MigrationType::Sql)
        && set.version_of(i).is_some_and(|v| undo_scripts.contains(v));
    if let Some(a) = applied {
        m.r#type = a.kind.as_str().to_string();
        m.script = a.script.clone();
        m.checksum = a.checksum;
        m.installed_rank = Some(a.rank);
        m.installed_on = Some(timestamp(a.installed_on));
        m.installed_by = a.installed_by.clone();
        m.execution_time_ms = a.execution_time;
    }
    m
}

/// What a run did to one migration.
pub fn change(c: &Change) -> pb::MigrationInfo {
    let s = match c.action.as_str() {
        "failed" => State::Failed,
        "undone" => State::Undone,
        "baselined" => State::Baseline,
        "marked missing as deleted" | "removed failed row" => State::Deleted,
        _ => State::Success,
    };
    pb::MigrationInfo {
        version: c.version.clone(),
        description: c.description.clone(),
        r#type: c.kind.clone(),
        script: c.script.clone(),
        checksum: c.checksum,
        installed_rank: (c.rank > 0).then_some(c.rank),
        installed_on: None,
        installed_by: String::new(),
        execution_time_ms: c.execution_time_ms,
        state: state(s) as i32,
        state_name: s.display_name().to_string(),
        action: c.action.clone(),
        transactional: c.transactional,
        undoable: false,
    }
}

/// Command → contract command.
pub fn command(c: Command) -> pb::MigrationCommand {
    match c {
        Command::Migrate => pb::MigrationCommand::Migrate,
        Command::Baseline => pb::MigrationCommand::Baseline,
        Command::Repair => pb::MigrationCommand::Repair,
        Command::Undo => pb::MigrationCommand::Undo,
    }
}

/// A stored run.
pub fn run(r: &StoredRun) -> pb::MigrationRun {
    let phase = match r.phase {
        Phase::Pending => pb::MigrationPhase::Pending,
        Phase::Running => pb::MigrationPhase::Running,
        Phase::Succeeded => pb::MigrationPhase::Succeeded,
        Phase::Failed => pb::MigrationPhase::Failed,
    };
    let q = &r.request;
    pb::MigrationRun {
        id: r.id.to_string(),
        command: command(q.command) as i32,
        phase: phase as i32,
        message: r.message.clone(),
        version_before: r.version_before.clone().unwrap_or_default(),
        version_after: r.version_after.clone().unwrap_or_default(),
        applied: r.changes.iter().map(change).collect(),
        started_at: Some(timestamp(r.started_at)),
        finished_at: r.finished_at.map(timestamp),
        database: q.database.clone(),
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        warnings: r.warnings.clone(),
        target: Some(pb::MigrationTarget {
            database: q.database.clone(),
            locations: q.locations.clone(),
            schema: q.schema.clone(),
            table: q.table.clone(),
            // Values are often credentials: a run shows which placeholders it had, never their values.
            placeholders: redacted(&q.placeholders).into_iter().collect(),
            ignore_migration_patterns: q.ignore.clone().map(|patterns| pb::IgnorePatterns { patterns }),
        }),
        target_version: q.target_version.clone(),
        interrupted: r.interrupted,
    }
}
