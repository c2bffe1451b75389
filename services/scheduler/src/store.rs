//! All of the scheduler's SQL. Releases are one row each (state as JSONB plus indexed columns);
//! a transition is one transaction: the row update, its events (the outbox) and its audit rows.

use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction, postgres::PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        config::DeliveryConfig,
        events::{self, EventPayload},
        machine::Transition,
        release::{Phase, Release},
    },
    error::SchedulerError,
};

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection pool plus the queries.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
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
}

fn decode(state: serde_json::Value) -> Result<Release, SchedulerError> {
    serde_json::from_value(state).map_err(|e| SchedulerError::Internal(format!("stored release does not decode: {e}")))
}

fn encode(r: &Release) -> Result<serde_json::Value, SchedulerError> {
    serde_json::to_value(r).map_err(|e| SchedulerError::Internal(format!("release does not encode: {e}")))
}

impl Store {
    /// Connects with up to `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, SchedulerError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| SchedulerError::Unavailable(format!("database: {e}")))?;
        Ok(Store { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
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
        let row: Option<(serde_json::Value,)> =
            sqlx::query_as("SELECT state FROM releases WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|(state,)| decode(state)).transpose()
    }

    /// A release, locked for update in `conn`'s transaction.
    pub async fn lock_release(conn: &mut PgConnection, id: Uuid) -> Result<Option<Release>, SchedulerError> {
        let row: Option<(serde_json::Value,)> =
            sqlx::query_as("SELECT state FROM releases WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(conn).await?;
        row.map(|(state,)| decode(state)).transpose()
    }

    /// The release created with `request_id`, if any.
    pub async fn release_by_request(
        conn: &mut PgConnection,
        request_id: &str,
    ) -> Result<Option<Release>, SchedulerError> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as("SELECT state FROM releases WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(conn)
            .await?;
        row.map(|(state,)| decode(state)).transpose()
    }

    /// Claims the most overdue release, skipping rows other workers hold. Returns it with the
    /// database clock's "now" and its scheduled wake time.
    pub async fn claim_due(
        conn: &mut PgConnection,
    ) -> Result<Option<(Release, OffsetDateTime, OffsetDateTime)>, SchedulerError> {
        let row: Option<(serde_json::Value, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
            "SELECT state, next_wake_at, clock_timestamp() FROM releases \
             WHERE next_wake_at <= clock_timestamp() ORDER BY next_wake_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(conn)
        .await?;
        row.map(|(state, due, now)| Ok((decode(state)?, now, due))).transpose()
    }

    /// The database clock.
    pub async fn now(conn: &mut PgConnection) -> Result<OffsetDateTime, SchedulerError> {
        Ok(sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(conn).await?)
    }

    /// Earliest wake time of any release.
    pub async fn next_due(&self) -> Result<Option<OffsetDateTime>, SchedulerError> {
        Ok(sqlx::query_scalar("SELECT min(next_wake_at) FROM releases WHERE next_wake_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Inserts a new release with its first transition.
    pub async fn insert_release(
        conn: &mut PgConnection,
        r: &mut Release,
        request_id: Option<&str>,
        group_position: Option<i32>,
        transitions: &[Transition],
        wake_at: Option<OffsetDateTime>,
    ) -> Result<(), SchedulerError> {
        let previous = r.version;
        r.version += transitions.len() as u64;
        sqlx::query(
            "INSERT INTO releases (id, service, environment, revision, artifact, phase, settled, state, version, \
             next_wake_at, created_by, created_at, updated_at, request_id, group_id, group_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15)",
        )
        .bind(r.id)
        .bind(&r.service)
        .bind(&r.environment)
        .bind(r.revision as i64)
        .bind(&r.artifact)
        .bind(r.phase.as_str())
        .bind(r.settled)
        .bind(encode(r)?)
        .bind(r.version as i64)
        .bind(wake_at)
        .bind(&r.created_by)
        .bind(r.created_at)
        .bind(request_id)
        .bind(r.group_id)
        .bind(group_position)
        .execute(&mut *conn)
        .await?;
        Self::append(conn, r, previous, transitions).await
    }

    /// Stores a release after transitions: the row, its events and audit rows.
    pub async fn save(
        conn: &mut PgConnection,
        r: &mut Release,
        transitions: &[Transition],
        wake_at: Option<OffsetDateTime>,
    ) -> Result<(), SchedulerError> {
        let previous = r.version;
        r.version += transitions.len() as u64;
        sqlx::query(
            "UPDATE releases SET phase = $2, settled = $3, state = $4, version = $5, next_wake_at = $6, updated_at = $7 \
             WHERE id = $1",
        )
        .bind(r.id)
        .bind(r.phase.as_str())
        .bind(r.settled)
        .bind(encode(r)?)
        .bind(r.version as i64)
        .bind(wake_at)
        .bind(r.updated_at)
        .execute(&mut *conn)
        .await?;
        Self::append(conn, r, previous, transitions).await
    }

    async fn append(
        conn: &mut PgConnection,
        r: &Release,
        previous: u64,
        transitions: &[Transition],
    ) -> Result<(), SchedulerError> {
        if transitions.is_empty() {
            return Ok(());
        }
        let n = transitions.len();
        let mut event_ids = Vec::with_capacity(n);
        let mut sequences = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut severities = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut actors = Vec::with_capacity(n);
        let mut froms = Vec::with_capacity(n);
        let mut tos = Vec::with_capacity(n);
        let mut messages = Vec::with_capacity(n);
        for (i, t) in transitions.iter().enumerate() {
            event_ids.push(Uuid::now_v7());
            sequences.push((previous + 1 + i as u64) as i64);
            types.push(events::event_type(t.kind, r).to_string());
            names.push(t.kind.as_str().to_string());
            severities.push(events::severity(t.kind).as_str().to_string());
            payloads.push(
                serde_json::to_value(events::payload(r, t)).map_err(|e| SchedulerError::Internal(e.to_string()))?,
            );
            actors.push(t.actor.clone());
            froms.push(t.from.as_str().to_string());
            tos.push(t.to.as_str().to_string());
            messages.push(t.message.clone());
        }
        sqlx::query(
            "INSERT INTO release_events (event_id, release_id, sequence, type, transition, severity, payload, created_at) \
             SELECT e, $2, s, t, n, v, p, $8 FROM UNNEST($1::uuid[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::jsonb[]) \
             AS x(e, s, t, n, v, p)",
        )
        .bind(&event_ids)
        .bind(r.id)
        .bind(&sequences)
        .bind(&types)
        .bind(&names)
        .bind(&severities)
        .bind(&payloads)
        .bind(r.updated_at)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (release_id, sequence, actor, action, from_phase, to_phase, message, at) \
             SELECT $1, s, a, n, f, t, m, $8 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             AS x(s, a, n, f, t, m)",
        )
        .bind(r.id)
        .bind(&sequences)
        .bind(&actors)
        .bind(&names)
        .bind(&froms)
        .bind(&tos)
        .bind(&messages)
        .bind(r.updated_at)
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
        let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
            "SELECT state FROM releases WHERE service = $1 AND environment = $2 AND NOT settled ORDER BY revision FOR UPDATE",
        )
        .bind(service)
        .bind(environment)
        .fetch_all(conn)
        .await?;
        rows.into_iter().map(|(s,)| decode(s)).collect()
    }

    /// Locks (creating if needed) the per-service-environment row.
    pub async fn lock_service_environment(
        conn: &mut PgConnection,
        service: &str,
        environment: &str,
    ) -> Result<ServiceEnvironment, SchedulerError> {
        sqlx::query("INSERT INTO service_environments (service, environment, last_revision) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
            .bind(service)
            .bind(environment)
            .execute(&mut *conn)
            .await?;
        let (last, stable_revision, stable_artifact): (i64, Option<i64>, Option<String>) = sqlx::query_as(
            "SELECT last_revision, stable_revision, stable_artifact FROM service_environments \
             WHERE service = $1 AND environment = $2 FOR UPDATE",
        )
        .bind(service)
        .bind(environment)
        .fetch_one(conn)
        .await?;
        Ok(ServiceEnvironment {
            last_revision: last as u64,
            stable_revision: stable_revision.map(|v| v as u64),
            stable_artifact,
        })
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

    /// Records a succeeded release as stable.
    pub async fn mark_stable(conn: &mut PgConnection, r: &Release) -> Result<(), SchedulerError> {
        sqlx::query(
            "UPDATE service_environments SET stable_revision = $3, stable_artifact = $4, stable_release = $5 \
             WHERE service = $1 AND environment = $2",
        )
        .bind(&r.service)
        .bind(&r.environment)
        .bind(r.revision as i64)
        .bind(&r.artifact)
        .bind(r.id)
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
        let row: Option<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
            "SELECT last_revision, stable_revision, stable_artifact FROM service_environments WHERE service = $1 AND environment = $2",
        )
        .bind(service)
        .bind(environment)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|(last, rev, artifact)| ServiceEnvironment {
                last_revision: last as u64,
                stable_revision: rev.map(|v| v as u64),
                stable_artifact: artifact,
            })
            .unwrap_or_default())
    }

    /// Whether `artifact` has a succeeded release of `service` in `environment`.
    pub async fn succeeded_in(&self, service: &str, environment: &str, artifact: &str) -> Result<bool, SchedulerError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM releases WHERE service = $1 AND environment = $2 AND artifact = $3 AND phase = 'SUCCEEDED')",
        )
        .bind(service)
        .bind(environment)
        .bind(artifact)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Releases newest first, after `cursor`, at most `limit`.
    pub async fn list(
        &self,
        filter: &ReleaseFilter,
        cursor: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<Release>, SchedulerError> {
        let phases: Vec<String> = filter.phases.iter().map(|p| p.as_str().to_string()).collect();
        let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
            "SELECT state FROM releases \
             WHERE ($1::text IS NULL OR service = $1) AND ($2::text IS NULL OR environment = $2) \
               AND (cardinality($3::text[]) = 0 OR phase = ANY($3)) \
               AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5)) \
             ORDER BY created_at DESC, id DESC LIMIT $6",
        )
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
        rows.into_iter().map(|(s,)| decode(s)).collect()
    }

    /// Every release of a service in an environment, newest first.
    pub async fn revisions(&self, service: &str, environment: &str) -> Result<Vec<RevisionRow>, SchedulerError> {
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT revision, state FROM releases WHERE service = $1 AND environment = $2 ORDER BY revision DESC",
        )
        .bind(service)
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(rev, s)| Ok(RevisionRow { revision: rev as u64, release: decode(s)? })).collect()
    }

    // === groups ===

    /// Inserts a group.
    pub async fn insert_group(conn: &mut PgConnection, g: &GroupRow) -> Result<(), SchedulerError> {
        sqlx::query("INSERT INTO release_groups (id, environment, kind, created_by, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(g.id)
            .bind(&g.environment)
            .bind(&g.kind)
            .bind(&g.created_by)
            .bind(&g.reason)
            .bind(g.created_at)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// A group and its members in order.
    pub async fn group(&self, id: Uuid) -> Result<Option<(GroupRow, Vec<Release>)>, SchedulerError> {
        let row: Option<(Uuid, String, String, String, String, OffsetDateTime)> = sqlx::query_as(
            "SELECT id, environment, kind, created_by, reason, created_at FROM release_groups WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((id, environment, kind, created_by, reason, created_at)) = row else { return Ok(None) };
        let members: Vec<(serde_json::Value,)> =
            sqlx::query_as("SELECT state FROM releases WHERE group_id = $1 ORDER BY group_position")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let members = members.into_iter().map(|(s,)| decode(s)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some((GroupRow { id, environment, kind, created_by, reason, created_at }, members)))
    }

    /// The group member after `release` that has not started, locked.
    pub async fn lock_next_member(
        conn: &mut PgConnection,
        release: &Release,
    ) -> Result<Option<Release>, SchedulerError> {
        let Some(group) = release.group_id else { return Ok(None) };
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT state FROM releases WHERE group_id = $1 \
             AND group_position > (SELECT group_position FROM releases WHERE id = $2) \
             AND phase = 'PENDING' ORDER BY group_position LIMIT 1 FOR UPDATE",
        )
        .bind(group)
        .bind(release.id)
        .fetch_optional(conn)
        .await?;
        row.map(|(s,)| decode(s)).transpose()
    }

    // === outbox ===

    /// Unpublished events in commit order.
    pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxEvent>, SchedulerError> {
        let rows = sqlx::query(
            "SELECT id, event_id, release_id, sequence, type, severity, payload, created_at FROM release_events \
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                let payload: serde_json::Value = row.try_get("payload")?;
                Ok(OutboxEvent {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    release_id: row.try_get("release_id")?,
                    sequence: row.try_get::<i64, _>("sequence")? as u64,
                    event_type: row.try_get("type")?,
                    severity: row.try_get("severity")?,
                    payload: serde_json::from_value(payload).map_err(|e| SchedulerError::Internal(e.to_string()))?,
                    created_at: row.try_get("created_at")?,
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
