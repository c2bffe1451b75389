//! The notifier's SQL (schema `notifier`): the event log, what it knows of each release (and its
//! escalation), webhooks and their delivery log.
//!
//! Every append takes one transaction-scoped advisory lock, so positions are handed out in commit
//! order with no gaps: a reader that has seen position N has seen everything before it, on any
//! replica.

use hopngo_proto::events::Event;
use prost::Message as _;
use sqlx::{PgPool, Postgres, Row as _, Transaction, postgres::PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{
        escalation::{Ack, Condition, Policy, ReleaseState},
        filter::{EventMeta, Filter, INFO},
    },
    error::NotifierError,
};

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// PostgreSQL schema holding the notifier's tables.
pub const SCHEMA: &str = "notifier";
/// Most events one statement of the retention removes.
pub const PRUNE_BATCH: u32 = 10_000;
/// Advisory lock key serializing appends to the log.
const LOG_LOCK: i64 = 7218861937320;
/// Advisory lock key held by the replica that delivers webhooks and escalates.
pub const DISPATCH_LOCK: i64 = 7218861937321;
/// Advisory lock key held by each statement of the retention, by whatever stores a webhook
/// cursor that can point backwards (create, replay), and shared by a subscriber's catch-up
/// batch: a cursor is checked against the log and stored or read from while no retention
/// statement runs, so none removes events it was promised or is about to read.
pub const RETENTION_LOCK: i64 = 7218861937322;

/// The query behind [`Store::events_after`], on a pool or inside a transaction.
async fn select_events<'e>(
    executor: impl sqlx::Executor<'e, Database = Postgres>,
    after: u64,
    upto: u64,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<LoggedEvent>, NotifierError> {
    let rows = sqlx::query(
        "SELECT position, body FROM events WHERE position > $1 AND position <= $2 \
         AND (cardinality($3::text[]) = 0 OR service = ANY($3)) \
         AND (cardinality($4::text[]) = 0 OR environment = ANY($4)) \
         AND (cardinality($5::text[]) = 0 OR type = ANY($5)) \
         AND severity >= $6 AND ($7 = '' OR release_id = $7) \
         AND (cardinality($8::text[]) = 0 OR escalation_level = ANY($8)) \
         ORDER BY position LIMIT $9",
    )
    .bind(after as i64)
    .bind(upto as i64)
    .bind(&filter.services)
    .bind(&filter.environments)
    .bind(&filter.types)
    .bind(filter.min_severity as i16)
    .bind(&filter.release_id)
    .bind(&filter.escalation_levels)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(logged).collect()
}

/// The query behind [`Store::oldest`], on a pool or inside a transaction.
async fn select_oldest<'e>(executor: impl sqlx::Executor<'e, Database = Postgres>) -> Result<u64, NotifierError> {
    let oldest: i64 = sqlx::query_scalar("SELECT coalesce(min(position), 0) FROM events").fetch_one(executor).await?;
    Ok(oldest as u64)
}

/// Whether a log whose oldest position is `oldest` still holds every event after `cursor`; if
/// not, the oldest position kept.
fn kept_after(oldest: u64, cursor: u64) -> Result<(), u64> {
    if oldest > cursor + 1 { Err(oldest) } else { Ok(()) }
}

/// Now, at the microsecond precision PostgreSQL keeps.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// An event as it sits in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedEvent {
    /// Position (the cursor after it).
    pub position: u64,
    /// The event.
    pub event: Event,
}

/// Extension attribute naming an escalation event's level.
pub const LEVEL_EXTENSION: &str = "escalationlevel";
/// Extension attribute naming an escalation event's condition.
pub const CONDITION_EXTENSION: &str = "escalationcondition";

/// The routing fields of an event.
pub fn meta(e: &Event) -> EventMeta {
    EventMeta {
        release_id: e.release_id.clone(),
        service: e.service.clone(),
        environment: e.environment.clone(),
        event_type: e.r#type.clone(),
        severity: e.severity.max(INFO),
        escalation_level: e.extensions.get(LEVEL_EXTENSION).cloned(),
    }
}

fn timestamp_of(e: &Event) -> OffsetDateTime {
    e.time.as_ref().and_then(crate::domain::instant).unwrap_or_else(now)
}

/// A webhook as stored.
#[derive(Clone, Debug)]
pub struct StoredWebhook {
    /// Id.
    pub id: Uuid,
    /// URL.
    pub url: String,
    /// Format name.
    pub format: String,
    /// Filter.
    pub filter: Filter,
    /// Signing secret.
    pub secret: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last position handled.
    pub cursor: u64,
    /// Delivered count.
    pub delivered: u64,
    /// Dead-lettered count.
    pub dead_lettered: u64,
    /// Replays so far.
    pub generation: u64,
}

/// One delivery attempt.
#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    /// Id.
    pub id: Uuid,
    /// Webhook.
    pub webhook_id: Uuid,
    /// Event.
    pub event_id: String,
    /// Event position.
    pub position: u64,
    /// Attempt from 1.
    pub attempt: u32,
    /// HTTP status or 0.
    pub status_code: u32,
    /// Error or response excerpt.
    pub message: String,
    /// When.
    pub attempted_at: OffsetDateTime,
    /// Succeeded.
    pub delivered: bool,
    /// Given up on.
    pub dead_lettered: bool,
    /// The webhook's generation when it was made.
    pub generation: u64,
}

/// The notifier's store.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

fn release_state(row: &PgRow) -> Result<ReleaseState, NotifierError> {
    let condition: Option<String> = row.try_get("condition")?;
    let since: Option<OffsetDateTime> = row.try_get("condition_since")?;
    let condition = match (condition.as_deref().map(Condition::parse), since) {
        (Some(Some(c)), Some(since)) => Some((c, since)),
        (None, _) => None,
        _ => return Err(NotifierError::Internal(format!("stored condition {condition:?} does not decode"))),
    };
    let by: Option<String> = row.try_get("acknowledged_by")?;
    let at: Option<OffsetDateTime> = row.try_get("acknowledged_at")?;
    Ok(ReleaseState {
        release_id: row.try_get("release_id")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        phase: row.try_get("phase")?,
        last_event_at: row.try_get("last_event_at")?,
        condition,
        levels_notified: row.try_get::<i32, _>("levels_notified")? as usize,
        ack: match (by, at) {
            (Some(by), Some(at)) => Some(Ack { by, at, comment: row.try_get("ack_comment")? }),
            _ => None,
        },
    })
}

fn webhook(row: &PgRow) -> Result<StoredWebhook, NotifierError> {
    let filter: serde_json::Value = row.try_get("filter")?;
    Ok(StoredWebhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        format: row.try_get("format")?,
        filter: serde_json::from_value(filter).map_err(|e| NotifierError::Internal(format!("stored filter: {e}")))?,
        secret: row.try_get("secret")?,
        created_at: row.try_get("created_at")?,
        cursor: row.try_get::<i64, _>("cursor")? as u64,
        delivered: row.try_get::<i64, _>("delivered")? as u64,
        dead_lettered: row.try_get::<i64, _>("dead_lettered")? as u64,
        generation: row.try_get::<i64, _>("generation")? as u64,
    })
}

fn logged(row: &PgRow) -> Result<LoggedEvent, NotifierError> {
    let body: Vec<u8> = row.try_get("body")?;
    Ok(LoggedEvent {
        position: row.try_get::<i64, _>("position")? as u64,
        event: Event::decode(body.as_slice()).map_err(|e| NotifierError::Internal(format!("stored event: {e}")))?,
    })
}

/// A release state plus the body of its latest event (what escalation events repeat).
pub struct TrackedRelease {
    /// State.
    pub state: ReleaseState,
    /// Latest event of the release.
    pub last: Event,
}

impl Store {
    /// Connects (creating and migrating schema `notifier`).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        Ok(Store { pool: hopngo_kit::db::connect_migrated(url, SCHEMA, max_connections, &MIGRATOR).await? })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The newest position (0 for an empty log).
    pub async fn head(&self) -> Result<u64, NotifierError> {
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(&self.pool).await?;
        Ok(head as u64)
    }

    /// The oldest position still in the log (0 for an empty log).
    pub async fn oldest(&self) -> Result<u64, NotifierError> {
        select_oldest(&self.pool).await
    }

    /// Whether the events after `cursor` are all still in the log (none removed by retention);
    /// if not, the oldest position kept.
    pub async fn still_has_after(&self, cursor: u64) -> Result<Result<(), u64>, NotifierError> {
        Ok(kept_after(self.oldest().await?, cursor))
    }

    /// Starts a transaction in which no retention statement runs, and checks that the events
    /// after `cursor` are still in the log (Err: the oldest position kept). `shared` for readers,
    /// which need not wait for each other.
    async fn begin_holding(
        &self,
        cursor: u64,
        shared: bool,
    ) -> Result<Result<Transaction<'static, Postgres>, u64>, NotifierError> {
        let mut tx = self.pool.begin().await?;
        let lock = if shared { "SELECT pg_advisory_xact_lock_shared($1)" } else { "SELECT pg_advisory_xact_lock($1)" };
        sqlx::query(lock).bind(RETENTION_LOCK).execute(&mut *tx).await?;
        let oldest = select_oldest(&mut *tx).await?;
        Ok(kept_after(oldest, cursor).map(|()| tx))
    }

    /// Removes what the retention lets go: a prefix of the log received before `before` (never
    /// the newest event, so positions go on from where they were, and never one a webhook still
    /// has to handle), delivery attempts before it, and releases that ended before it and need
    /// nobody. Returns (events, deliveries, releases) removed.
    ///
    /// Events go oldest first, at most `batch` per statement: a long backlog (the first prune
    /// after a retention was shortened) is many short transactions, never one that holds a
    /// million rows' locks and WAL, and the log is a gapless suffix after each of them.
    pub async fn prune(&self, before: OffsetDateTime, batch: u32) -> Result<(u64, u64, u64), NotifierError> {
        // The log only grows, so its part of the bound is read once. Webhook cursors are read by
        // every statement, under the retention lock: creating or replaying a webhook can move one
        // back between batches, and does so only while no statement runs.
        let by_age: i64 = sqlx::query_scalar(
            "SELECT least( \
               (SELECT max(position) - 1 FROM events), \
               (SELECT coalesce(max(position), 0) FROM events WHERE received_at < $1))",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        let batch = i64::from(batch.max(1));
        let mut events = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(RETENTION_LOCK).execute(&mut *tx).await?;
            let removed = sqlx::query(
                "DELETE FROM events WHERE position IN (SELECT position FROM events \
                   WHERE position <= least($1, (SELECT coalesce(min(cursor), 9223372036854775807) FROM webhooks)) \
                   ORDER BY position LIMIT $2)",
            )
            .bind(by_age)
            .bind(batch)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            events += removed;
            if removed < batch as u64 {
                break;
            }
        }
        let deliveries = sqlx::query("DELETE FROM deliveries WHERE attempted_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let releases = sqlx::query(
            "DELETE FROM releases WHERE last_event_at < $1 AND phase IN ('SUCCEEDED', 'SUPERSEDED', 'ABORTED', 'FAILED') \
             AND (condition IS NULL OR acknowledged_at IS NOT NULL)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((events, deliveries, releases))
    }

    /// Takes the log lock and appends the events not in the log yet, in order.
    async fn insert(
        tx: &mut Transaction<'static, Postgres>,
        events: Vec<Event>,
    ) -> Result<(Vec<LoggedEvent>, u32), NotifierError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(LOG_LOCK).execute(&mut **tx).await?;
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let known: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(&mut **tx).await?;
        let mut seen: std::collections::HashSet<String> = known.into_iter().collect();
        let mut fresh = Vec::new();
        let mut duplicates = 0;
        for event in events {
            if seen.insert(event.id.clone()) {
                fresh.push(LoggedEvent { position: head as u64 + fresh.len() as u64 + 1, event });
            } else {
                duplicates += 1;
            }
        }
        if fresh.is_empty() {
            return Ok((fresh, duplicates));
        }
        let column = |f: fn(&LoggedEvent) -> String| fresh.iter().map(f).collect::<Vec<_>>();
        let positions: Vec<i64> = fresh.iter().map(|l| l.position as i64).collect();
        let sequences: Vec<i64> = fresh.iter().map(|l| l.event.sequence as i64).collect();
        let severities: Vec<i16> = fresh.iter().map(|l| l.event.severity.max(INFO) as i16).collect();
        let levels: Vec<Option<String>> =
            fresh.iter().map(|l| l.event.extensions.get(LEVEL_EXTENSION).cloned()).collect();
        let times: Vec<OffsetDateTime> = fresh.iter().map(|l| timestamp_of(&l.event)).collect();
        let bodies: Vec<Vec<u8>> = fresh.iter().map(|l| l.event.encode_to_vec()).collect();
        sqlx::query(
            "INSERT INTO events (position, event_id, release_id, sequence, service, environment, type, severity, \
             escalation_level, time, body) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
             $7::text[], $8::smallint[], $9::text[], $10::timestamptz[], $11::bytea[])",
        )
        .bind(&positions)
        .bind(column(|l| l.event.id.clone()))
        .bind(column(|l| l.event.release_id.clone()))
        .bind(&sequences)
        .bind(column(|l| l.event.service.clone()))
        .bind(column(|l| l.event.environment.clone()))
        .bind(column(|l| l.event.r#type.clone()))
        .bind(&severities)
        .bind(&levels)
        .bind(&times)
        .bind(&bodies)
        .execute(&mut **tx)
        .await?;
        Ok((fresh, duplicates))
    }

    async fn save_state(
        tx: &mut Transaction<'static, Postgres>,
        s: &ReleaseState,
        last: &Event,
    ) -> Result<(), NotifierError> {
        sqlx::query(
            "INSERT INTO releases (release_id, service, environment, phase, last_event_at, last_body, condition, \
             condition_since, levels_notified, acknowledged_by, acknowledged_at, ack_comment) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (release_id) DO UPDATE SET phase = $4, last_event_at = $5, last_body = $6, condition = $7, \
             condition_since = $8, levels_notified = $9, acknowledged_by = $10, acknowledged_at = $11, ack_comment = $12",
        )
        .bind(&s.release_id)
        .bind(&s.service)
        .bind(&s.environment)
        .bind(&s.phase)
        .bind(s.last_event_at)
        .bind(last.encode_to_vec())
        .bind(s.condition.map(|(c, _)| c.as_str()))
        .bind(s.condition.map(|(_, since)| since))
        .bind(s.levels_notified as i32)
        .bind(s.ack.as_ref().map(|a| a.by.clone()))
        .bind(s.ack.as_ref().map(|a| a.at))
        .bind(s.ack.as_ref().map(|a| a.comment.clone()).unwrap_or_default())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn load_state(
        tx: &mut Transaction<'static, Postgres>,
        release_id: &str,
    ) -> Result<Option<TrackedRelease>, NotifierError> {
        let row = sqlx::query("SELECT * FROM releases WHERE release_id = $1 FOR UPDATE")
            .bind(release_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|row| {
            let body: Vec<u8> = row.try_get("last_body")?;
            Ok(TrackedRelease {
                state: release_state(&row)?,
                last: Event::decode(body.as_slice())
                    .map_err(|e| NotifierError::Internal(format!("stored event: {e}")))?,
            })
        })
        .transpose()
    }

    /// Appends published events (skipping ids already in the log) and updates what is known of
    /// their releases, in one transaction. Returns the new events and the duplicate count.
    pub async fn publish(&self, events: Vec<Event>, policy: &Policy) -> Result<(Vec<LoggedEvent>, u32), NotifierError> {
        let mut tx = self.pool.begin().await?;
        let (fresh, duplicates) = Self::insert(&mut tx, events).await?;
        let mut releases: Vec<&str> = fresh.iter().map(|l| l.event.release_id.as_str()).collect();
        releases.sort_unstable();
        releases.dedup();
        for release_id in releases {
            let mut tracked = Self::load_state(&mut tx, release_id).await?;
            for l in fresh.iter().filter(|l| l.event.release_id == release_id) {
                let e = &l.event;
                let Some(d) = &e.data else { continue };
                let prev = tracked.take().map(|t| t.state);
                let state = ReleaseState::observe(
                    prev,
                    policy,
                    (release_id, &e.service, &e.environment),
                    &d.phase,
                    timestamp_of(e),
                );
                tracked = Some(TrackedRelease { state, last: e.clone() });
            }
            if let Some(t) = &tracked {
                Self::save_state(&mut tx, &t.state, &t.last).await?;
            }
        }
        tx.commit().await?;
        Ok((fresh, duplicates))
    }

    /// Releases the escalator must look at: an open, unacknowledged condition with levels left,
    /// or running (so they may become stuck).
    pub async fn watched_releases(&self, levels: usize) -> Result<Vec<ReleaseState>, NotifierError> {
        let rows = sqlx::query(
            "SELECT * FROM releases WHERE acknowledged_at IS NULL AND phase NOT IN ('SUCCEEDED', 'SUPERSEDED') \
             AND ((condition IS NOT NULL AND levels_notified < $1) OR (condition IS NULL AND phase IN ('PENDING', 'PROGRESSING', 'PAUSED'))) \
             ORDER BY last_event_at",
        )
        .bind(levels as i32)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_state).collect()
    }

    /// Re-reads a release under lock and applies `change` to it; when `change` returns events,
    /// they are appended and the new state saved, in one transaction. A release whose state moved
    /// meanwhile is simply looked at again by `change`.
    pub async fn update_release<F>(
        &self,
        release_id: &str,
        change: F,
    ) -> Result<Option<(ReleaseState, Vec<LoggedEvent>)>, NotifierError>
    where
        F: FnOnce(TrackedRelease) -> Result<Option<(ReleaseState, Vec<Event>)>, NotifierError>,
    {
        let mut tx = self.pool.begin().await?;
        let Some(tracked) = Self::load_state(&mut tx, release_id).await? else {
            return Err(NotifierError::NotFound(format!("release {release_id}: no event of it reached the notifier")));
        };
        let last = tracked.last.clone();
        let Some((state, events)) = change(tracked)? else { return Ok(None) };
        let (fresh, _) = Self::insert(&mut tx, events).await?;
        Self::save_state(&mut tx, &state, &last).await?;
        tx.commit().await?;
        Ok(Some((state, fresh)))
    }

    /// A release's state.
    pub async fn release(&self, release_id: &str) -> Result<Option<ReleaseState>, NotifierError> {
        let row = sqlx::query("SELECT * FROM releases WHERE release_id = $1")
            .bind(release_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(release_state).transpose()
    }

    /// Releases whose condition has been escalated at least once and nobody has acknowledged.
    pub async fn open_escalations(&self) -> Result<i64, NotifierError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM releases WHERE condition IS NOT NULL AND acknowledged_at IS NULL AND levels_notified > 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Releases with an open condition, oldest first.
    pub async fn escalations(&self, include_acknowledged: bool) -> Result<Vec<ReleaseState>, NotifierError> {
        let rows = sqlx::query(
            "SELECT * FROM releases WHERE condition IS NOT NULL AND ($1 OR acknowledged_at IS NULL) ORDER BY condition_since, release_id",
        )
        .bind(include_acknowledged)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_state).collect()
    }

    /// Events after `after` up to `upto` that match `filter`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: u64,
        upto: u64,
        filter: &Filter,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>, NotifierError> {
        select_events(&self.pool, after, upto, filter, limit).await
    }

    /// [`Store::events_after`] for a reader whose cursor the retention does not hold (a
    /// subscriber): checked and read while no retention statement runs, so a batch never starts
    /// past events removed between the check and the read. Err: the oldest position kept.
    pub async fn events_kept_after(
        &self,
        after: u64,
        upto: u64,
        filter: &Filter,
        limit: i64,
    ) -> Result<Result<Vec<LoggedEvent>, u64>, NotifierError> {
        let mut tx = match self.begin_holding(after, true).await? {
            Ok(tx) => tx,
            Err(oldest) => return Ok(Err(oldest)),
        };
        let events = select_events(&mut *tx, after, upto, filter, limit).await?;
        tx.commit().await?;
        Ok(Ok(events))
    }

    /// Stores a webhook, unless the retention removed events after its cursor (Err: the oldest
    /// position kept).
    pub async fn create_webhook(&self, w: &StoredWebhook) -> Result<Result<(), u64>, NotifierError> {
        let mut tx = match self.begin_holding(w.cursor, false).await? {
            Ok(tx) => tx,
            Err(oldest) => return Ok(Err(oldest)),
        };
        sqlx::query(
            "INSERT INTO webhooks (id, url, format, filter, secret, created_at, cursor) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(w.id)
        .bind(&w.url)
        .bind(&w.format)
        .bind(serde_json::to_value(&w.filter).map_err(|e| NotifierError::Internal(e.to_string()))?)
        .bind(&w.secret)
        .bind(w.created_at)
        .bind(w.cursor as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Every webhook, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<StoredWebhook>, NotifierError> {
        let rows = sqlx::query("SELECT * FROM webhooks ORDER BY created_at, id").fetch_all(&self.pool).await?;
        rows.iter().map(webhook).collect()
    }

    /// One webhook.
    pub async fn webhook(&self, id: Uuid) -> Result<Option<StoredWebhook>, NotifierError> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(webhook).transpose()
    }

    /// Deletes a webhook and its delivery log; false when there was none.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, NotifierError> {
        Ok(sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Records a delivery attempt; a final one (delivered or dead-lettered) also moves the
    /// webhook's cursor past the event, in the same transaction — unless the webhook was replayed
    /// meanwhile (another generation): then false, and the cursor stays where the replay put it.
    pub async fn record_delivery(&self, d: &DeliveryRecord) -> Result<bool, NotifierError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deliveries (id, webhook_id, event_id, position, attempt, status_code, message, attempted_at, \
             delivered, dead_lettered, generation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(d.id)
        .bind(d.webhook_id)
        .bind(&d.event_id)
        .bind(d.position as i64)
        .bind(d.attempt as i32)
        .bind(d.status_code as i32)
        .bind(&d.message)
        .bind(d.attempted_at)
        .bind(d.delivered)
        .bind(d.dead_lettered)
        .bind(d.generation as i64)
        .execute(&mut *tx)
        .await?;
        let mut current = true;
        if d.delivered || d.dead_lettered {
            current = sqlx::query(
                "UPDATE webhooks SET cursor = greatest(cursor, $2), delivered = delivered + $3, \
                 dead_lettered = dead_lettered + $4 WHERE id = $1 AND generation = $5",
            )
            .bind(d.webhook_id)
            .bind(d.position as i64)
            .bind(d.delivered as i64)
            .bind(d.dead_lettered as i64)
            .bind(d.generation as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        }
        tx.commit().await?;
        Ok(current)
    }

    /// Moves a webhook's cursor back (or forward) to `cursor` and starts a new generation; None
    /// when there is no such webhook, Err (the oldest position kept) when the retention removed
    /// events after `cursor`.
    pub async fn replay_webhook(
        &self,
        id: Uuid,
        cursor: u64,
    ) -> Result<Result<Option<StoredWebhook>, u64>, NotifierError> {
        let mut tx = match self.begin_holding(cursor, false).await? {
            Ok(tx) => tx,
            Err(oldest) => return Ok(Err(oldest)),
        };
        let row = sqlx::query("UPDATE webhooks SET cursor = $2, generation = generation + 1 WHERE id = $1 RETURNING *")
            .bind(id)
            .bind(cursor as i64)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(row.as_ref().map(webhook).transpose()?))
    }

    /// Moves a webhook's cursor over events its filter skips (within one generation).
    pub async fn advance_webhook(&self, id: Uuid, generation: u64, position: u64) -> Result<(), NotifierError> {
        sqlx::query("UPDATE webhooks SET cursor = greatest(cursor, $2) WHERE id = $1 AND generation = $3")
            .bind(id)
            .bind(position as i64)
            .bind(generation as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A page of a webhook's deliveries, newest first.
    pub async fn deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<(OffsetDateTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, NotifierError> {
        let (at, id) = before.map(|(a, i)| (Some(a), Some(i))).unwrap_or((None, None));
        let rows = sqlx::query(
            "SELECT * FROM deliveries WHERE webhook_id = $1 AND ($2::timestamptz IS NULL OR (attempted_at, id) < ($2, $3)) \
             ORDER BY attempted_at DESC, id DESC LIMIT $4",
        )
        .bind(webhook_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    id: r.try_get("id")?,
                    webhook_id: r.try_get("webhook_id")?,
                    event_id: r.try_get("event_id")?,
                    position: r.try_get::<i64, _>("position")? as u64,
                    attempt: r.try_get::<i32, _>("attempt")? as u32,
                    status_code: r.try_get::<i32, _>("status_code")? as u32,
                    message: r.try_get("message")?,
                    attempted_at: r.try_get("attempted_at")?,
                    delivered: r.try_get("delivered")?,
                    dead_lettered: r.try_get("dead_lettered")?,
                    generation: r.try_get::<i64, _>("generation")? as u64,
                })
            })
            .collect()
    }
}

impl Store {
    /// Attempts recorded for one event of a webhook in one generation.
    pub async fn attempts(&self, webhook_id: Uuid, generation: u64, position: u64) -> Result<u32, NotifierError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND generation = $2 AND position = $3",
        )
        .bind(webhook_id)
        .bind(generation as i64)
        .bind(position as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u32)
    }
}
