//! The analyzer's SQL. A run is one row: its resolved specs and its metrics' state as JSON text,
//! rewritten after each round of measurements by the replica holding its lease.

use std::collections::BTreeMap;

use sqlx::{PgPool, Row as _, postgres::PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::run::{MetricSpec, MetricState, Phase, Severity},
    error::AnalyzerError,
};

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// PostgreSQL schema holding the analyzer's tables.
pub const SCHEMA: &str = "analyzer";

/// Now, at the microsecond precision PostgreSQL keeps, so what an API call returns equals what a
/// later read returns.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// A run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    /// Id.
    pub id: Uuid,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Resolved metrics.
    pub specs: Vec<MetricSpec>,
    /// Arguments it was started with.
    pub args: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Per-metric state, in spec order.
    pub states: Vec<MetricState>,
    /// Phase.
    pub phase: Phase,
    /// Why.
    pub message: String,
    /// Worst severity among metrics that did not pass.
    pub severity: Option<Severity>,
    /// The caller terminates it (metrics may be indefinite).
    pub open_ended: bool,
    /// Set once terminated.
    pub terminate_reason: Option<String>,
    /// Start.
    pub started_at: OffsetDateTime,
    /// Completion.
    pub completed_at: Option<OffsetDateTime>,
    /// Next measurement due.
    pub next_due_at: Option<OffsetDateTime>,
    /// Lease length for a round of measurements (longest provider timeout plus slack).
    pub lease_secs: i32,
    /// Bumped on every write.
    pub version: i64,
}

macro_rules! columns {
    () => {
        "id, idempotency_key, spec, labels, args, state, phase, message, severity, open_ended, terminate_reason, \
         started_at, completed_at, next_due_at, lease_secs, version"
    };
}

fn json_err(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("stored run: {e}"))
}

fn from_row(row: &PgRow) -> Result<StoredRun, sqlx::Error> {
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let labels: serde_json::Value = row.try_get("labels")?;
    let args: serde_json::Value = row.try_get("args")?;
    let phase: String = row.try_get("phase")?;
    let severity: Option<String> = row.try_get("severity")?;
    Ok(StoredRun {
        id: row.try_get("id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        specs: serde_json::from_str(&spec).map_err(json_err)?,
        args: serde_json::from_value(args).map_err(json_err)?,
        labels: serde_json::from_value(labels).map_err(json_err)?,
        states: serde_json::from_str(&state).map_err(json_err)?,
        phase: Phase::parse(&phase).ok_or_else(|| sqlx::Error::Protocol(format!("stored phase {phase:?}")))?,
        message: row.try_get("message")?,
        severity: severity.as_deref().and_then(Severity::parse),
        open_ended: row.try_get("open_ended")?,
        terminate_reason: row.try_get("terminate_reason")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        next_due_at: row.try_get("next_due_at")?,
        lease_secs: row.try_get("lease_secs")?,
        version: row.try_get("version")?,
    })
}

/// Runs in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects in the analyzer's own schema and applies its migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        Ok(Store { pool: hopngo_kit::db::connect_migrated(url, SCHEMA, max_connections, &MIGRATOR).await? })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts a new run; when its idempotency key is taken, returns the run holding it instead.
    pub async fn insert(&self, run: &StoredRun) -> Result<(StoredRun, bool), AnalyzerError> {
        let spec = serde_json::to_string(&run.specs).map_err(|e| AnalyzerError::Internal(e.to_string()))?;
        let state = serde_json::to_string(&run.states).map_err(|e| AnalyzerError::Internal(e.to_string()))?;
        let inserted = sqlx::query(concat!(
            "INSERT INTO runs (id, idempotency_key, spec, labels, args, state, phase, message, severity, open_ended, \
               started_at, next_due_at, lease_secs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
            columns!(),
            ""
        ))
        .bind(run.id)
        .bind(&run.idempotency_key)
        .bind(spec)
        .bind(serde_json::to_value(&run.labels).unwrap_or_default())
        .bind(serde_json::to_value(&run.args).unwrap_or_default())
        .bind(state)
        .bind(run.phase.as_str())
        .bind(&run.message)
        .bind(run.severity.map(Severity::as_str))
        .bind(run.open_ended)
        .bind(run.started_at)
        .bind(run.next_due_at)
        .bind(run.lease_secs)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok((from_row(&row)?, true));
        }
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE idempotency_key = $1"))
            .bind(&run.idempotency_key)
            .fetch_one(&self.pool)
            .await?;
        Ok((from_row(&row)?, false))
    }

    /// One run.
    pub async fn get(&self, id: Uuid) -> Result<StoredRun, AnalyzerError> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| AnalyzerError::NotFound(format!("analysis run {id} not found")))?;
        Ok(from_row(&row)?)
    }

    /// The version of a run (cheap change detection for watchers).
    pub async fn version(&self, id: Uuid) -> Result<Option<i64>, AnalyzerError> {
        Ok(sqlx::query_scalar("SELECT version FROM runs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?)
    }

    /// Runs carrying all `labels`, newest first, after the keyset position `after`.
    pub async fn list(
        &self,
        labels: &BTreeMap<String, String>,
        limit: i64,
        after: Option<(OffsetDateTime, Uuid)>,
    ) -> Result<Vec<StoredRun>, AnalyzerError> {
        let (after_time, after_id) = after.unzip();
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM runs WHERE labels @> $1 \
               AND ($2::timestamptz IS NULL OR (started_at, id) < ($2, $3)) \
             ORDER BY started_at DESC, id DESC LIMIT $4"
        ))
        .bind(serde_json::to_value(labels).unwrap_or_default())
        .bind(after_time)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// Leases up to `limit` runs that are due and not leased by a live replica.
    pub async fn claim_due(&self, owner: Uuid, limit: i64) -> Result<Vec<StoredRun>, AnalyzerError> {
        let rows = sqlx::query(concat!(
            "UPDATE runs SET lease_owner = $1, lease_until = now() + make_interval(secs => lease_secs) \
             WHERE id IN (SELECT id FROM runs WHERE next_due_at <= now() \
                            AND (lease_until IS NULL OR lease_until < now()) \
                          ORDER BY next_due_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING ",
            columns!(),
            ""
        ))
        .bind(owner)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    /// When the next run is due (not leased), if any.
    pub async fn next_due(&self) -> Result<Option<OffsetDateTime>, AnalyzerError> {
        Ok(sqlx::query_scalar(
            "SELECT min(greatest(next_due_at, coalesce(lease_until, next_due_at))) FROM runs WHERE next_due_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Writes a round of measurements and releases the lease. False when the lease was lost or the
    /// run completed meanwhile (terminated): the round is then discarded.
    pub async fn save_round(&self, owner: Uuid, run: &StoredRun) -> Result<bool, AnalyzerError> {
        Ok(write(&self.pool, run, Some(owner)).await?.is_some())
    }

    /// Changes a run under its row lock (terminate): `change` gets the current run and returns
    /// false to leave it as it is.
    pub async fn update(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut StoredRun) -> bool,
    ) -> Result<StoredRun, AnalyzerError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM runs WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| AnalyzerError::NotFound(format!("analysis run {id} not found")))?;
        let mut run = from_row(&row)?;
        if !change(&mut run) {
            return Ok(run);
        }
        run.version =
            write(&mut *tx, &run, None).await?.ok_or_else(|| AnalyzerError::Internal("run vanished".into()))?;
        tx.commit().await?;
        Ok(run)
    }
}

/// Writes a run's measured state and releases any lease; with `lease_owner`, only while that
/// replica still holds the lease and the run is not complete. Returns the new version.
async fn write<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    run: &StoredRun,
    lease_owner: Option<Uuid>,
) -> Result<Option<i64>, AnalyzerError> {
    let state = serde_json::to_string(&run.states).map_err(|e| AnalyzerError::Internal(e.to_string()))?;
    Ok(sqlx::query_scalar(
        "UPDATE runs SET state = $3, phase = $4, message = $5, severity = $6, completed_at = $7, next_due_at = $8, \
           terminate_reason = $9, lease_owner = NULL, lease_until = NULL, version = version + 1 \
         WHERE id = $1 AND ($2::uuid IS NULL OR (lease_owner = $2 AND completed_at IS NULL)) RETURNING version",
    )
    .bind(run.id)
    .bind(lease_owner)
    .bind(state)
    .bind(run.phase.as_str())
    .bind(&run.message)
    .bind(run.severity.map(Severity::as_str))
    .bind(run.completed_at)
    .bind(run.next_due_at)
    .bind(&run.terminate_reason)
    .fetch_optional(executor)
    .await?)
}
