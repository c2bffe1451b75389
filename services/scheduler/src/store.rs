//! All of the scheduler's SQL. Releases are one row each (state as JSONB plus indexed columns);
//! a transition is one transaction: the row update, its events (the outbox) and its audit rows.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        config::DeliveryConfig,
        events::{self, EventPayload},
        machine::{ENGINE, Transition},
        plan::Plan,
        release::{Phase, Release},
    },
    error::SchedulerError,
};

/// PostgreSQL schema holding the scheduler's tables.
pub const SCHEMA: &str = "scheduler";

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection pool plus the queries.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

/// Plans of releases the engine advanced recently (plans are immutable, so a cached one is never
/// stale). Bounded: emptied when full.
#[derive(Default)]
pub struct PlanCache {
    plans: std::sync::Mutex<HashMap<Uuid, Plan>>,
}

/// Plans kept by a [`PlanCache`] before it starts over.
const PLAN_CACHE_SIZE: usize = 4096;

impl PlanCache {
    fn get(&self, id: Uuid) -> Option<Plan> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn put(&self, id: Uuid, plan: &Plan) {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= PLAN_CACHE_SIZE {
            plans.clear();
        }
        plans.insert(id, plan.clone());
    }
}

/// A stored config version.
pub struct ConfigVersion {
    /// Version.
    pub version: u64,
    /// YAML as applied.
    pub yaml: String,
    /// Parsed.
    pub config: DeliveryConfig,
    /// Who.
    pub applied_by: String,
    /// When.
    pub applied_at: OffsetDateTime,
}

/// What is stable for a service in an environment.
#[derive(Clone, Debug, Default)]
pub struct ServiceEnvironment {
    /// Last revision handed out.
    pub last_revision: u64,
    /// Stable revision.
    pub stable_revision: Option<u64>,
    /// Stable artifact.
    pub stable_artifact: Option<String>,
}

/// Filters of `ListReleases`.
#[derive(Clone, Debug, Default)]
pub struct ReleaseFilter {
    /// Service.
    pub service: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Phases.
    pub phases: Vec<Phase>,
}

/// A page position: the last row's (created_at, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// created_at of the last row, in microseconds since the epoch.
    pub created_micros: i64,
    /// id of the last row.
    pub id: Uuid,
}

/// One unpublished event.
pub struct OutboxEvent {
    /// Row id.
    pub id: i64,
    /// The trace context of the span that wrote it (W3C `traceparent`).
    pub traceparent: Option<String>,
    /// Event id.
    pub event_id: Uuid,
    /// Release.
    pub release_id: Uuid,
    /// Sequence.
    pub sequence: u64,
    /// Type.
    pub event_type: String,
    /// Severity.
    pub severity: String,
    /// Payload.
    pub payload: EventPayload,
    /// Commit time.
    pub created_at: OffsetDateTime,
}

/// A revision row.
pub struct RevisionRow {
    /// Revision number.
    pub revision: u64,
    /// Release.
    pub release: Release,
}

/// What [`Store::release_counts`] counted.
pub struct ReleaseCounts {
    /// Releases not settled, by phase.
    pub by_phase: Vec<(Phase, i64)>,
    /// Of them, due long ago and not advanced.
    pub overdue: i64,
    /// Events not yet published.
    pub outbox_backlog: i64,
}

/// A release group.
pub struct GroupRow {
    /// Id.
    pub id: Uuid,
    /// Environment.
    pub environment: String,
    /// Kind.
    pub kind: String,
    /// Creator.
    pub created_by: String,
    /// Reason.
    pub reason: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// What each member waited for (trains).
    pub dependencies: Vec<crate::domain::train::Dependency>,
    /// The client's key.
    pub request_id: Option<String>,
}

/// An ad-hoc freeze of an environment.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct FreezeRow {
    /// Id.
    pub id: Uuid,
    /// Environment.
    pub environment: String,
    /// From.
    pub starts_at: OffsetDateTime,
    /// Until.
    pub ends_at: OffsetDateTime,
    /// Why.
    pub reason: String,
    /// Who froze it.
    pub created_by: String,
    /// When.
    pub created_at: OffsetDateTime,
    /// When it was ended early.
    pub ended_at: Option<OffsetDateTime>,
    /// Who ended it.
    pub ended_by: String,
    /// Why it was ended.
    pub end_reason: String,
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    /// Position in the log (grows with every row).
    pub id: i64,
    /// When it was written.
    pub at: OffsetDateTime,
    /// Who (`scheduler` for the engine).
    pub actor: String,
    /// What: a transition (`promoted`, `approval-recorded`) or a refused request (`approve`).
    pub action: String,
    /// `allowed` or `refused`.
    pub outcome: String,
    /// The release, when there is one.
    pub release_id: Option<Uuid>,
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// The person's reason.
    pub reason: String,
    /// The caller's request id (release creation).
    pub request_id: String,
    /// What happened, or why it was refused.
    pub message: String,
    /// Phase before (transitions).
    pub from_phase: Option<String>,
    /// Phase after (transitions).
    pub to_phase: Option<String>,
    /// Who vouched for the actor (requests): the token's issuer, `hopngo:static-tokens` or
    /// `hopngo:mtls`.
    pub issuer: String,
    /// The issuer's id of the actor.
    pub subject: String,
    /// The groups the actor's credential listed.
    pub groups: Vec<String>,
    /// The RPC called (requests).
    pub rpc: String,
}

/// A request audited by itself rather than as a release's transition: a refused one (nothing
/// changed) or one that changes no release (a config applied).
#[derive(Clone, Debug, Default)]
pub struct AuditedRequest {
    /// Who asked.
    pub actor: String,
    /// The request (`create`, `approve`, `apply-config`, ...).
    pub action: String,
    /// `allowed` or `refused`.
    pub outcome: &'static str,
    /// The release it named, if it named an existing one.
    pub release_id: Option<Uuid>,
    /// Service named.
    pub service: String,
    /// Environment named.
    pub environment: String,
    /// The reason given.
    pub reason: String,
    /// The request id given.
    pub request_id: String,
    /// What it did, or why it was refused (`PermissionDenied: …`).
    pub message: String,
    /// Who vouched for the actor.
    pub issuer: String,
    /// The issuer's id of the actor.
    pub subject: String,
    /// The groups the actor's credential listed.
    pub groups: Vec<String>,
    /// The RPC called.
    pub rpc: String,
}

/// Filters of `ListAuditEntries`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Release.
    pub release_id: Option<Uuid>,
    /// Service.
    pub service: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// Actor (normalised as identities are).
    pub actor: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// `allowed` or `refused`.
    pub outcome: Option<String>,
    /// From this time on.
    pub since: Option<OffsetDateTime>,
    /// Before this time.
    pub until: Option<OffsetDateTime>,
}

/// Columns of the events and audit rows of a batch of transitions.
struct EventBatch {
    event_ids: Vec<Uuid>,
    sequences: Vec<i64>,
    types: Vec<String>,
    names: Vec<String>,
    severities: Vec<String>,
    payloads: Vec<String>,
    actors: Vec<String>,
    froms: Vec<String>,
    tos: Vec<String>,
    messages: Vec<String>,
    reasons: Vec<String>,
}

impl EventBatch {
    fn new(r: &Release, previous: u64, transitions: &[Transition]) -> Result<EventBatch, SchedulerError> {
        let mut b = EventBatch {
            event_ids: Vec::with_capacity(transitions.len()),
            sequences: Vec::with_capacity(transitions.len()),
            types: Vec::with_capacity(transitions.len()),
            names: Vec::with_capacity(transitions.len()),
            severities: Vec::with_capacity(transitions.len()),
            payloads: Vec::with_capacity(transitions.len()),
            actors: Vec::with_capacity(transitions.len()),
            froms: Vec::with_capacity(transitions.len()),
            tos: Vec::with_capacity(transitions.len()),
            messages: Vec::with_capacity(transitions.len()),
            reasons: Vec::with_capacity(transitions.len()),
        };
        for (i, t) in transitions.iter().enumerate() {
            b.event_ids.push(Uuid::now_v7());
            b.sequences.push((previous + 1 + i as u64) as i64);
            b.types.push(events::event_type(t.kind, r).to_string());
            b.names.push(t.kind.as_str().to_string());
            b.severities.push(events::severity(t.kind).as_str().to_string());
            b.payloads.push(
                serde_json::to_string(&events::payload(r, t)).map_err(|e| SchedulerError::Internal(e.to_string()))?,
            );
            b.actors.push(t.actor.clone());
            b.froms.push(t.from.as_str().to_string());
            b.tos.push(t.to.as_str().to_string());
            b.messages.push(t.message.clone());
            // A person's action carries the reason they gave; the engine's carry none.
            b.reasons.push(if t.actor == ENGINE { String::new() } else { r.reason.clone() });
        }
        Ok(b)
    }
}

/// The stored release: the mutable state (JSON text: it is opaque to SQL, so PostgreSQL neither
/// parses nor re-serialises it on every transition) plus the plan, written once.
macro_rules! release_doc {
    () => {
        "s.state, r.plan"
    };
}

/// A freeze row's columns, as [`FreezeRow`] reads them.
macro_rules! freeze_columns {
    () => {
        "id, environment, starts_at, ends_at, reason, created_by, created_at, ended_at, ended_by, end_reason"
    };
}

/// The two tables a release lives in.
macro_rules! release_tables {
    () => {
        " FROM releases r JOIN release_state s ON s.release_id = r.id "
    };
}

/// Revision counter and stable release of a service in an environment. The stable release is the
/// newest succeeded one (an older release can no longer succeed once a newer one exists: it was
/// superseded), so it is derived, not stored: the engine never writes this row, and user actions
/// and the engine lock rows in one order (service environment, then release).
macro_rules! service_environment_query {
    ($lock:literal) => {
        concat!(
            "SELECT e.last_revision, st.revision, st.artifact FROM service_environments e \
             LEFT JOIN LATERAL (SELECT r.revision, r.artifact",
            release_tables!(),
            "WHERE r.service = e.service AND r.environment = e.environment AND s.phase = 'SUCCEEDED' \
             ORDER BY r.revision DESC LIMIT 1) st ON true \
             WHERE e.service = $1 AND e.environment = $2",
            $lock
        )
    };
}
const SERVICE_ENVIRONMENT: &str = service_environment_query!("");
const SERVICE_ENVIRONMENT_LOCKED: &str = service_environment_query!(" FOR UPDATE OF e");

fn service_environment(row: Option<(i64, Option<i64>, Option<String>)>) -> ServiceEnvironment {
    row.map(|(last, revision, artifact)| ServiceEnvironment {
        last_revision: last as u64,
        stable_revision: revision.map(|v| v as u64),
        stable_artifact: artifact,
    })
    .unwrap_or_default()
}

/// A stored release as selected by `release_doc!()`.
type Doc = (String, serde_json::Value);

fn decode((state, plan): Doc) -> Result<Release, SchedulerError> {
    let mut release: Release = serde_json::from_str(&state)
        .map_err(|e| SchedulerError::Internal(format!("stored release state does not decode: {e}")))?;
    release.plan = serde_json::from_value(plan)
        .map_err(|e| SchedulerError::Internal(format!("stored plan does not decode: {e}")))?;
    Ok(release)
}

/// The mutable state (the plan is skipped: it has its own column).
fn encode(r: &Release) -> Result<String, SchedulerError> {
    serde_json::to_string(r).map_err(|e| SchedulerError::Internal(format!("release does not encode: {e}")))
}

impl Store {
    /// Connects with up to `max_connections`, in the scheduler's own schema.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, SchedulerError> {
        let pool = hopngo_kit::db::connect(url, SCHEMA, max_connections).await.map_err(|e| match e {
            hopngo_kit::db::DbError::Url(reason) => SchedulerError::invalid("database_url", reason),
            e => SchedulerError::Unavailable(e.to_string()),
        })?;
        Ok(Store { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<(), SchedulerError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| SchedulerError::Internal(format!("schema migration: {e}")))
    }

    /// Begins a transaction whose row-lock waits end after `lock_timeout` (a release being
    /// advanced holds its row while the engine talks to other services).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, SchedulerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '15s'").execute(&mut *tx).await?;
        Ok(tx)
    }

    // === config ===

    /// The current (or a given) config version.
    pub async fn config(&self, version: Option<u64>) -> Result<Option<ConfigVersion>, SchedulerError> {
        let row = match version {
            Some(v) => {
                sqlx::query("SELECT version, yaml, document, applied_by, applied_at FROM config_versions WHERE version = $1")
                    .bind(v as i64)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(
                    "SELECT version, yaml, document, applied_by, applied_at FROM config_versions ORDER BY version DESC LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.map(|row| {
            let document: serde_json::Value = row.try_get("document")?;
            let config = serde_json::from_value(document)
                .map_err(|e| SchedulerError::Internal(format!("stored config does not decode: {e}")))?;
            Ok(ConfigVersion {
                version: row.try_get::<i64, _>("version")? as u64,
                yaml: row.try_get("yaml")?,
                config,
                applied_by: row.try_get("applied_by")?,
                applied_at: row.try_get("applied_at")?,
            })
        })
        .transpose()
    }

    /// Stores a config as the next version unless its text equals the current one.
    pub async fn apply_config(
        &self,
        yaml: &str,
        config: &DeliveryConfig,
        applied_by: &str,
    ) -> Result<(u64, bool), SchedulerError> {
        let mut tx = self.begin().await?;
        // Serialises appliers so versions are dense.
        sqlx::query("SELECT pg_advisory_xact_lock(7218861937311)").execute(&mut *tx).await?;
        let current: Option<(i64, String)> =
            sqlx::query_as("SELECT version, yaml FROM config_versions ORDER BY version DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((version, current_yaml)) = &current
            && current_yaml == yaml
        {
            return Ok((*version as u64, false));
        }
        let version = current.map(|(v, _)| v).unwrap_or(0) + 1;
        let document = serde_json::to_value(config).map_err(|e| SchedulerError::Internal(e.to_string()))?;
        sqlx::query("INSERT INTO config_versions (version, yaml, document, applied_by) VALUES ($1, $2, $3, $4)")
            .bind(version)
            .bind(yaml)
            .bind(document)
            .bind(applied_by)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((version as u64, true))
    }

    // === releases ===

    /// A release.
    pub async fn release(&self, id: Uuid) -> Result<Option<Release>, SchedulerError> {
        let row: Option<Doc> = sqlx::query_as(concat!("SELECT ", release_doc!(), release_tables!(), "WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(decode).transpose()
    }

    /// A release, locked for update in `conn`'s transaction.
    pub async fn lock_release(conn: &mut PgConnection, id: Uuid) -> Result<Option<Release>, SchedulerError> {
        let row: Option<Doc> =
            sqlx::query_as(concat!("SELECT ", release_doc!(), release_tables!(), "WHERE r.id = $1 FOR UPDATE OF s"))
                .bind(id)
                .fetch_optional(conn)
                .await?;
        row.map(decode).transpose()
    }

    /// The release created with `request_id`, if any.
    pub async fn release_by_request(
        conn: &mut PgConnection,
        request_id: &str,
    ) -> Result<Option<Release>, SchedulerError> {
        let row: Option<Doc> =
            sqlx::query_as(concat!("SELECT ", release_doc!(), release_tables!(), "WHERE r.request_id = $1"))
                .bind(request_id)
                .fetch_optional(conn)
                .await?;
        row.map(decode).transpose()
    }

    /// Claims the most overdue release, skipping rows other workers hold. Returns it with the
    /// database clock's "now" and its scheduled wake time. Plans never change, so they come from
    /// `plans` when cached there.
    pub async fn claim_due(
        conn: &mut PgConnection,
        plans: &PlanCache,
    ) -> Result<Option<(Release, OffsetDateTime, OffsetDateTime)>, SchedulerError> {
        let row: Option<(Uuid, String, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
            "SELECT release_id, state, next_wake_at, clock_timestamp() FROM release_state \
             WHERE next_wake_at <= clock_timestamp() ORDER BY next_wake_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *conn)
        .await?;
        let Some((id, state, due, now)) = row else { return Ok(None) };
        let mut release: Release = serde_json::from_str(&state)
            .map_err(|e| SchedulerError::Internal(format!("stored release state does not decode: {e}")))?;
        release.plan = match plans.get(id) {
            Some(plan) => plan,
            None => {
                let plan: serde_json::Value = sqlx::query_scalar("SELECT plan FROM releases WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
                let plan: Plan = serde_json::from_value(plan)
                    .map_err(|e| SchedulerError::Internal(format!("stored plan does not decode: {e}")))?;
                plans.put(id, &plan);
                plan
            }
        };
        Ok(Some((release, now, due)))
    }

    /// The database clock.
    pub async fn now(conn: &mut PgConnection) -> Result<OffsetDateTime, SchedulerError> {
        Ok(sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(conn).await?)
    }

    /// Inserts a new release with its first transitions.
    pub async fn insert_release(
        conn: &mut PgConnection,
        r: &mut Release,
        request_id: Option<&str>,
        group_position: Option<i32>,
        transitions: &[Transition],
        wake_at: Option<OffsetDateTime>,
    ) -> Result<(), SchedulerError> {
        // The identity and an empty state first; `save` then writes the state with the first
        // events and audit rows exactly as for any later transition.
        sqlx::query(
            "WITH identity AS ( \
               INSERT INTO releases (id, service, environment, revision, artifact, plan, created_by, created_at, \
                 request_id, group_id, group_position) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id) \
             INSERT INTO release_state (release_id, phase, settled, version, updated_at, state) \
             SELECT id, $12, false, $13, $8, '{}' FROM identity",
        )
        .bind(r.id)
        .bind(&r.service)
        .bind(&r.environment)
        .bind(r.revision as i64)
        .bind(&r.artifact)
        .bind(serde_json::to_value(&r.plan).map_err(|e| SchedulerError::Internal(e.to_string()))?)
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(request_id)
        .bind(r.group_id)
        .bind(group_position)
        .bind(r.phase.as_str())
        .bind(r.version as i64)
        .execute(&mut *conn)
        .await?;
        Self::save(conn, r, transitions, wake_at).await
    }

    /// Stores a release after transitions: the row, its events and its audit rows, in one
    /// statement (one round trip).
    /// Events and audit rows are stamped when they are written, after the calls that made them
    /// true (the step's decisions use the clock it was claimed at), so a `rolled-back` event is
    /// never earlier than the deployer's confirmation.
    pub async fn save(
        conn: &mut PgConnection,
        r: &mut Release,
        transitions: &[Transition],
        wake_at: Option<OffsetDateTime>,
    ) -> Result<(), SchedulerError> {
        let previous = r.version;
        r.version += transitions.len() as u64;
        let batch = EventBatch::new(r, previous, transitions)?;
        sqlx::query(
            "WITH updated AS ( \
               UPDATE release_state SET phase = $2, settled = $3, state = $4, version = $5, next_wake_at = $6, updated_at = $7 \
               WHERE release_id = $1 RETURNING release_id), \
             events AS ( \
               INSERT INTO release_events (event_id, release_id, sequence, type, transition, severity, payload, created_at, \
                 traceparent) \
               SELECT e, $1, s, t, n, v, p, clock_timestamp(), $21 \
               FROM UNNEST($8::uuid[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[]) AS x(e, s, t, n, v, p)) \
             INSERT INTO audit_log (release_id, sequence, actor, action, from_phase, to_phase, message, at, \
               service, environment, reason, request_id) \
             SELECT $1, s, a, n, f, t, m, clock_timestamp(), $19, $20, why, \
               CASE WHEN n = 'created' THEN coalesce((SELECT request_id FROM releases WHERE id = $1), '') ELSE '' END \
             FROM UNNEST($9::bigint[], $14::text[], $11::text[], $15::text[], $16::text[], $17::text[], $18::text[]) \
               AS x(s, a, n, f, t, m, why)",
        )
        .bind(r.id)
        .bind(r.phase.as_str())
        .bind(r.settled)
        .bind(encode(r)?)
        .bind(r.version as i64)
        .bind(wake_at)
        .bind(r.updated_at)
        .bind(&batch.event_ids)
        .bind(&batch.sequences)
        .bind(&batch.types)
        .bind(&batch.names)
        .bind(&batch.severities)
        .bind(&batch.payloads)
        .bind(&batch.actors)
        .bind(&batch.froms)
        .bind(&batch.tos)
        .bind(&batch.messages)
        .bind(&batch.reasons)
        .bind(&r.service)
        .bind(&r.environment)
        // The events continue the trace of the span writing them.
        .bind(hopngo_kit::telemetry::traceparent(&tracing::Span::current()))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Releases of a service and environment the engine has not settled, locked.
    pub async fn lock_unsettled(
        conn: &mut PgConnection,
        service: &str,
        environment: &str,
    ) -> Result<Vec<Release>, SchedulerError> {
        let rows: Vec<Doc> = sqlx::query_as(concat!(
            "SELECT ",
            release_doc!(),
            release_tables!(),
            "WHERE r.service = $1 AND r.environment = $2 AND NOT s.settled ORDER BY r.revision FOR UPDATE OF s"
        ))
        .bind(service)
        .bind(environment)
        .fetch_all(conn)
        .await?;
        rows.into_iter().map(decode).collect()
    }

    /// Locks (creating if needed) the per-service-environment row, which serialises everything
    /// that creates or restarts releases of one service in one environment.
    pub async fn lock_service_environment(
        conn: &mut PgConnection,
        service: &str,
        environment: &str,
    ) -> Result<ServiceEnvironment, SchedulerError> {
        sqlx::query(
            "INSERT INTO service_environments (service, environment, last_revision) VALUES ($1, $2, 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(service)
        .bind(environment)
        .execute(&mut *conn)
        .await?;
        let row: Option<(i64, Option<i64>, Option<String>)> =
            sqlx::query_as(SERVICE_ENVIRONMENT_LOCKED).bind(service).bind(environment).fetch_optional(conn).await?;
        Ok(service_environment(row))
    }

    /// Hands out the next revision.
    pub async fn bump_revision(
        conn: &mut PgConnection,
        service: &str,
        environment: &str,
        revision: u64,
    ) -> Result<(), SchedulerError> {
        sqlx::query("UPDATE service_environments SET last_revision = $3 WHERE service = $1 AND environment = $2")
            .bind(service)
            .bind(environment)
            .bind(revision as i64)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// What is stable for a service in an environment.
    pub async fn service_environment(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<ServiceEnvironment, SchedulerError> {
        let row: Option<(i64, Option<i64>, Option<String>)> =
            sqlx::query_as(SERVICE_ENVIRONMENT).bind(service).bind(environment).fetch_optional(&self.pool).await?;
        Ok(service_environment(row))
    }

    /// The succeeded releases of `artifact` for a service in an environment, newest first.
    pub async fn succeeded_with(
        &self,
        service: &str,
        environment: &str,
        artifact: &str,
    ) -> Result<Vec<Release>, SchedulerError> {
        let rows: Vec<Doc> = sqlx::query_as(concat!(
            "SELECT ",
            release_doc!(),
            release_tables!(),
            "WHERE r.service = $1 AND r.environment = $2 AND r.artifact = $3 AND s.phase = 'SUCCEEDED' \
             ORDER BY r.revision DESC"
        ))
        .bind(service)
        .bind(environment)
        .bind(artifact)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode).collect()
    }

    /// Releases newest first, after `cursor`, at most `limit`.
    pub async fn list(
        &self,
        filter: &ReleaseFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<Release>, SchedulerError> {
        let phases: Vec<String> = filter.phases.iter().map(|p| p.as_str().to_string()).collect();
        let rows: Vec<Doc> = sqlx::query_as(concat!(
            "SELECT ",
            release_doc!(),
            release_tables!(),
            "WHERE ($1::text IS NULL OR r.service = $1) AND ($2::text IS NULL OR r.environment = $2) \
               AND (cardinality($3::text[]) = 0 OR s.phase = ANY($3)) \
               AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4, $5)) \
             ORDER BY r.created_at DESC, r.id DESC LIMIT $6"
        ))
        .bind(&filter.service)
        .bind(&filter.environment)
        .bind(&phases)
        .bind(cursor.map(|c| {
            OffsetDateTime::from_unix_timestamp_nanos(c.created_micros as i128 * 1000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        }))
        .bind(cursor.map(|c| c.id).unwrap_or_else(Uuid::nil))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode).collect()
    }

    /// Records a request (a refused one in a transaction of its own: it wrote nothing).
    pub async fn audit_request(&self, r: &AuditedRequest) -> Result<(), SchedulerError> {
        let mut conn = self.pool.acquire().await?;
        Self::audit_request_in(&mut conn, r).await
    }

    /// Records a request inside the transaction of what it did.
    pub async fn audit_request_in(conn: &mut PgConnection, r: &AuditedRequest) -> Result<(), SchedulerError> {
        sqlx::query(
            "INSERT INTO audit_log (release_id, actor, action, outcome, message, at, service, environment, reason, request_id, \
               issuer, subject, groups, rpc) \
             VALUES ($1, $2, $3, $9, $4, clock_timestamp(), $5, $6, $7, $8, $10, $11, $12, $13)",
        )
        .bind(r.release_id)
        .bind(&r.actor)
        .bind(&r.action)
        .bind(&r.message)
        .bind(&r.service)
        .bind(&r.environment)
        .bind(&r.reason)
        .bind(&r.request_id)
        .bind(r.outcome)
        .bind(&r.issuer)
        .bind(&r.subject)
        .bind(&r.groups)
        .bind(&r.rpc)
        .execute(conn)
        .await?;
        Ok(())
    }

    // === freezes ===

    /// Stores a freeze.
    pub async fn insert_freeze(&self, f: &FreezeRow) -> Result<(), SchedulerError> {
        sqlx::query(
            "INSERT INTO freezes (id, environment, starts_at, ends_at, reason, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(f.id)
        .bind(&f.environment)
        .bind(f.starts_at)
        .bind(f.ends_at)
        .bind(&f.reason)
        .bind(&f.created_by)
        .bind(f.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Freezes, soonest end first: of one environment or all; ended and past ones only with
    /// `include_ended`.
    pub async fn freezes(
        &self,
        environment: Option<&str>,
        include_ended: bool,
    ) -> Result<Vec<FreezeRow>, SchedulerError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            freeze_columns!(),
            " FROM freezes WHERE ($1::text IS NULL OR environment = $1) \
               AND ($2 OR (ended_at IS NULL AND ends_at > now())) \
             ORDER BY ends_at, id LIMIT 1000"
        ))
        .bind(environment)
        .bind(include_ended)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The freezes of `environment` in force now (in the caller's transaction).
    pub async fn freezes_in_force(
        conn: &mut PgConnection,
        environment: &str,
    ) -> Result<Vec<FreezeRow>, SchedulerError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            freeze_columns!(),
            " FROM freezes WHERE environment = $1 AND ended_at IS NULL AND starts_at <= now() AND ends_at > now() \
             ORDER BY ends_at DESC"
        ))
        .bind(environment)
        .fetch_all(conn)
        .await?)
    }

    /// One freeze.
    pub async fn freeze(&self, id: Uuid) -> Result<Option<FreezeRow>, SchedulerError> {
        Ok(sqlx::query_as(concat!("SELECT ", freeze_columns!(), " FROM freezes WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Ends a freeze now; the freeze as ended (none: no such freeze, or it was ended already).
    pub async fn end_freeze(&self, id: Uuid, by: &str, reason: &str) -> Result<Option<FreezeRow>, SchedulerError> {
        Ok(sqlx::query_as(concat!(
            "UPDATE freezes SET ended_at = now(), ended_by = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL \
             RETURNING ",
            freeze_columns!()
        ))
        .bind(id)
        .bind(by)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Audit rows matching `filter`, newest first, before position `before`.
    pub async fn audit(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, SchedulerError> {
        Ok(sqlx::query_as(
            "SELECT id, at, actor, action, outcome, release_id, service, environment, reason, request_id, message, \
                    from_phase, to_phase, issuer, subject, groups, rpc \
             FROM audit_log \
             WHERE ($1::uuid IS NULL OR release_id = $1) AND ($2::text IS NULL OR service = $2) \
               AND ($3::text IS NULL OR environment = $3) AND ($4::text IS NULL OR lower(actor) = $4) \
               AND ($5::text IS NULL OR action = $5) AND ($6::text IS NULL OR outcome = $6) \
               AND ($7::timestamptz IS NULL OR at >= $7) AND ($8::timestamptz IS NULL OR at < $8) \
               AND ($9::bigint IS NULL OR id < $9) \
             ORDER BY id DESC LIMIT $10",
        )
        .bind(filter.release_id)
        .bind(&filter.service)
        .bind(&filter.environment)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.outcome)
        .bind(filter.since)
        .bind(filter.until)
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every release of a service in an environment, newest first.
    pub async fn revisions(&self, service: &str, environment: &str) -> Result<Vec<RevisionRow>, SchedulerError> {
        let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(concat!(
            "SELECT r.revision, ",
            release_doc!(),
            release_tables!(),
            "WHERE r.service = $1 AND r.environment = $2 ORDER BY r.revision DESC"
        ))
        .bind(service)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(rev, state, plan)| Ok(RevisionRow { revision: rev as u64, release: decode((state, plan))? }))
            .collect()
    }

    // === gauges ===

    /// Releases not settled by phase, how many of them are overdue by more than `overdue_after`,
    /// and the outbox backlog.
    pub async fn release_counts(&self, overdue_after: std::time::Duration) -> Result<ReleaseCounts, SchedulerError> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT phase, count(*), count(*) FILTER (WHERE next_wake_at < clock_timestamp() - make_interval(secs => $1)) \
             FROM release_state WHERE NOT settled GROUP BY phase",
        )
        .bind(overdue_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let (outbox_backlog,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM release_events WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(ReleaseCounts {
            by_phase: rows.iter().filter_map(|(p, n, _)| Some((Phase::parse(p)?, *n))).collect(),
            overdue: rows.iter().map(|(_, _, o)| o).sum(),
            outbox_backlog,
        })
    }

    // === groups ===

    /// Inserts a group.
    pub async fn insert_group(conn: &mut PgConnection, g: &GroupRow) -> Result<(), SchedulerError> {
        sqlx::query(
            "INSERT INTO release_groups (id, environment, kind, created_by, reason, created_at, dependencies, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(g.id)
        .bind(&g.environment)
        .bind(&g.kind)
        .bind(&g.created_by)
        .bind(&g.reason)
        .bind(g.created_at)
        .bind(sqlx::types::Json(&g.dependencies))
        .bind(&g.request_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// A group and its members in order.
    pub async fn group(&self, id: Uuid) -> Result<Option<(GroupRow, Vec<Release>)>, SchedulerError> {
        let mut conn = self.pool.acquire().await?;
        Self::group_in(&mut conn, id).await
    }

    /// A group and its members in order, inside the caller's transaction.
    pub async fn group_in(
        conn: &mut PgConnection,
        id: Uuid,
    ) -> Result<Option<(GroupRow, Vec<Release>)>, SchedulerError> {
        let row = sqlx::query(
            "SELECT id, environment, kind, created_by, reason, created_at, dependencies, request_id \
             FROM release_groups WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let group = group_row(&row)?;
        let members: Vec<Doc> = sqlx::query_as(concat!(
            "SELECT ",
            release_doc!(),
            release_tables!(),
            "WHERE r.group_id = $1 ORDER BY r.group_position"
        ))
        .bind(id)
        .fetch_all(conn)
        .await?;
        let members = members.into_iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Some((group, members)))
    }

    /// The group created with `request_id`, if any.
    pub async fn group_by_request(conn: &mut PgConnection, request_id: &str) -> Result<Option<Uuid>, SchedulerError> {
        let id: Option<(Uuid,)> = sqlx::query_as("SELECT id FROM release_groups WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(conn)
            .await?;
        Ok(id.map(|(id,)| id))
    }

    /// The group member after `release` that has not started, locked.
    pub async fn lock_next_member(
        conn: &mut PgConnection,
        release: &Release,
    ) -> Result<Option<Release>, SchedulerError> {
        let Some(group) = release.group_id else { return Ok(None) };
        let row: Option<Doc> = sqlx::query_as(concat!(
            "SELECT ",
            release_doc!(),
            release_tables!(),
            "WHERE r.group_id = $1 \
               AND r.group_position > (SELECT group_position FROM releases WHERE id = $2) \
               AND s.phase = 'PENDING' ORDER BY r.group_position LIMIT 1 FOR UPDATE OF s"
        ))
        .bind(group)
        .bind(release.id)
        .fetch_optional(conn)
        .await?;
        row.map(decode).transpose()
    }

    // === outbox ===

    /// Unpublished events in commit order.
    pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxEvent>, SchedulerError> {
        let rows = sqlx::query(
            "SELECT id, event_id, release_id, sequence, type, severity, payload, created_at, traceparent FROM release_events \
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                let payload: String = row.try_get("payload")?;
                Ok(OutboxEvent {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    release_id: row.try_get("release_id")?,
                    sequence: row.try_get::<i64, _>("sequence")? as u64,
                    event_type: row.try_get("type")?,
                    severity: row.try_get("severity")?,
                    payload: serde_json::from_str(&payload).map_err(|e| SchedulerError::Internal(e.to_string()))?,
                    created_at: row.try_get("created_at")?,
                    traceparent: row.try_get("traceparent")?,
                })
            })
            .collect()
    }

    /// Marks events published.
    pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), SchedulerError> {
        sqlx::query("UPDATE release_events SET published_at = clock_timestamp() WHERE id = ANY($1)")
            .bind(ids)
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn group_row(row: &sqlx::postgres::PgRow) -> Result<GroupRow, SchedulerError> {
    let sqlx::types::Json(dependencies) = row.try_get("dependencies")?;
    Ok(GroupRow {
        id: row.try_get("id")?,
        environment: row.try_get("environment")?,
        kind: row.try_get("kind")?,
        created_by: row.try_get("created_by")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        dependencies,
        request_id: row.try_get("request_id")?,
    })
}
