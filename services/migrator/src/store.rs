//! The migrator's own SQL (schema `migrator`): one row per run, rewritten as it progresses by the
//! replica holding its lease.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row as _, postgres::PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{error::MigratorError, executor::Change};

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// PostgreSQL schema holding the migrator's tables.
pub const SCHEMA: &str = "migrator";

/// Now, at the microsecond precision PostgreSQL keeps.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Apply pending migrations.
    Migrate,
    /// Mark the database as being at a version.
    Baseline,
    /// Fix the history.
    Repair,
    /// Reverse applied migrations.
    Undo,
}

/// A run's request, as stored (a repeat of its idempotency key must match it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Database name.
    pub database: String,
    /// Locations (resolved: the database's defaults when the caller gave none).
    pub locations: Vec<String>,
    /// History schema.
    pub schema: String,
    /// History table.
    pub table: String,
    /// Placeholder values.
    pub placeholders: BTreeMap<String, String>,
    /// Ignore patterns given by the caller.
    pub ignore: Option<Vec<String>>,
    /// Command.
    pub command: Command,
    /// Target version as given.
    pub target_version: String,
    /// Allow out-of-order migrations.
    pub out_of_order: bool,
    /// Undo everything.
    pub undo_all: bool,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the lock (or a replica to take it).
    Pending,
    /// Holding the lock, working.
    Running,
    /// Done.
    Succeeded,
    /// Stopped on an error.
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Succeeded => "SUCCEEDED",
            Phase::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "PENDING" => Phase::Pending,
            "RUNNING" => Phase::Running,
            "SUCCEEDED" => Phase::Succeeded,
            "FAILED" => Phase::Failed,
            _ => return None,
        })
    }
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    /// Id.
    pub id: Uuid,
    /// Caller's key.
    pub idempotency_key: Option<String>,
    /// Request.
    pub request: RunRequest,
    /// Phase.
    pub phase: Phase,
    /// Summary or error.
    pub message: String,
    /// Schema version before.
    pub version_before: Option<String>,
    /// Schema version after.
    pub version_after: Option<String>,
    /// What it changed so far.
    pub changes: Vec<Change>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// A non-transactional migration under way.
    pub in_progress: Option<Change>,
    /// Ended by a crash during a non-transactional migration.
    pub interrupted: bool,
    /// Start.
    pub started_at: OffsetDateTime,
    /// End.
    pub finished_at: Option<OffsetDateTime>,
    /// Bumped on every write.
    pub version: i64,
}

macro_rules! columns {
    () => {
        "id, idempotency_key, request, phase, message, version_before, version_after, changes, warnings, in_progress, \
         interrupted, started_at, finished_at, version"
    };
}

fn json_err(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("stored run: {e}"))
}

fn from_row(row: &PgRow) -> Result<StoredRun, sqlx::Error> {
    let request: String = row.try_get("request")?;
    let changes: String = row.try_get("changes")?;
    let warnings: String = row.try_get("warnings")?;
    let in_progress: Option<String> = row.try_get("in_progress")?;
    let phase: String = row.try_get("phase")?;
    Ok(StoredRun {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request: serde_json::from_str(&request).map_err(json_err)?,
        phase: Phase::parse(&phase).ok_or_else(|| sqlx::Error::Protocol(format!("stored phase {phase:?}")))?,
        message: row.try_get("message")?,
        version_before: row.try_get("version_before")?,
        version_after: row.try_get("version_after")?,
        changes: serde_json::from_str(&changes).map_err(json_err)?,
        warnings: serde_json::from_str(&warnings).map_err(json_err)?,
        in_progress: in_progress.map(|p| serde_json::from_str(&p)).transpose().map_err(json_err)?,
        interrupted: row.try_get("interrupted")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        version: row.try_get("version")?,
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<String, MigratorError> {
    serde_json::to_string(value).map_err(|e| MigratorError::Internal(e.to_string()))
}

/// Runs in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects in the migrator's own schema and applies its migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        Ok(Store { pool: hopngo_kit::db::connect_migrated(url, SCHEMA, max_connections, &MIGRATOR).await? })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts a new run; when its idempotency key is taken, returns the run holding it.
    pub async fn insert(&self, run: &StoredRun) -> Result<(StoredRun, bool), MigratorError> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO runs (id, idempotency_key, database, request, phase, message, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
            columns!()
        ))
        .bind(run.id)
        .bind(&run.idempotency_key)
        .bind(&run.request.database)
        .bind(to_json(&run.request)?)
        .bind(run.phase.as_str())
        .bind(&run.message)
        .bind(run.started_at)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok((from_row(&row)?, true));
        }
        let existing = self.by_key(run.idempotency_key.as_deref().unwrap_or_default()).await?;
        existing
            .map(|r| (r, false))
            .ok_or_else(|| MigratorError::Internal("idempotency key conflict without a run".into()))
    }

    /// The run holding an idempotency key.
    pub async fn by_key(&self, key: &str) -> Result<Option<StoredRun>, MigratorError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE idempotency_key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// One run.
    pub async fn get(&self, id: Uuid) -> Result<StoredRun, MigratorError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| MigratorError::NotFound(format!("migration run {id} not found")))?;
        Ok(from_row(&row)?)
    }

    /// A run's version (change detection for watchers).
    pub async fn version(&self, id: Uuid) -> Result<Option<i64>, MigratorError> {
        Ok(sqlx::query_scalar("SELECT version FROM runs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Runs (of one database, when given), newest first, after a keyset position.
    pub async fn list(
        &self,
        database: Option<&str>,
        limit: i64,
        after: Option<(OffsetDateTime, Uuid)>,
    ) -> Result<Vec<StoredRun>, MigratorError> {
        let (after_time, after_id) = after.unzip();
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM runs WHERE ($1::text IS NULL OR database = $1) \
               AND ($2::timestamptz IS NULL OR (started_at, id) < ($2, $3)) \
             ORDER BY started_at DESC, id DESC LIMIT $4"
        ))
        .bind(database)
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Takes (or renews) the lease on an unfinished run; `None` when another replica holds it or
    /// it has finished.
    pub async fn claim(&self, id: Uuid, owner: Uuid, lease_secs: i64) -> Result<Option<StoredRun>, MigratorError> {
        let row = sqlx::query(concat!(
            "UPDATE runs SET lease_owner = $2, lease_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND finished_at IS NULL AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < now()) \
             RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_secs as f64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(from_row).transpose()?)
    }

    /// Unfinished runs nobody holds (a crashed replica's, or never taken).
    pub async fn orphans(&self) -> Result<Vec<Uuid>, MigratorError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM runs WHERE finished_at IS NULL AND (lease_owner IS NULL OR lease_until < now()) ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Writes a run's progress while `owner` holds its lease. False when the lease was lost.
    pub async fn save(&self, run: &StoredRun, owner: Uuid) -> Result<bool, MigratorError> {
        let in_progress = run.in_progress.as_ref().map(to_json).transpose()?;
        let done = run.finished_at.is_some();
        let updated = sqlx::query(
            "UPDATE runs SET phase = $3, message = $4, version_before = $5, version_after = $6, changes = $7, warnings = $8, \
               in_progress = $9, interrupted = $10, finished_at = $11, version = version + 1, \
               lease_owner = CASE WHEN $12 THEN NULL ELSE lease_owner END, lease_until = CASE WHEN $12 THEN NULL ELSE lease_until END \
             WHERE id = $1 AND lease_owner = $2 AND finished_at IS NULL",
        )
        .bind(run.id)
        .bind(owner)
        .bind(run.phase.as_str())
        .bind(&run.message)
        .bind(&run.version_before)
        .bind(&run.version_after)
        .bind(to_json(&run.changes)?)
        .bind(to_json(&run.warnings)?)
        .bind(in_progress)
        .bind(run.interrupted)
        .bind(run.finished_at)
        .bind(done)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }
}
