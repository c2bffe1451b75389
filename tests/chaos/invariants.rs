//! What must hold after every round, read from PostgreSQL (the scheduler's releases, events and
//! audit log, the notifier's event log) and from what the webhook receiver got.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgPool, Row as _};

/// How long an unsettled release may go without a transition before it counts as stuck: the
/// environment's progress deadline (after which the scheduler itself must abort it) plus the
/// longest a fault can hold the scheduler back.
pub const STUCK_AFTER_SECS: f64 = 90.0 + 60.0;

/// A release as PostgreSQL has it.
#[derive(Clone, Debug)]
pub struct ReleaseRow {
    pub service: String,
    pub artifact: String,
    pub phase: String,
}

/// Every release, oldest revision first per service.
pub async fn releases(pool: &PgPool) -> sqlx::Result<Vec<ReleaseRow>> {
    let rows = sqlx::query(
        "SELECT r.service, r.artifact, s.phase \
         FROM scheduler.releases r JOIN scheduler.release_state s ON s.release_id = r.id \
         ORDER BY r.service, r.revision",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReleaseRow {
                service: r.try_get("service")?,
                artifact: r.try_get("artifact")?,
                phase: r.try_get("phase")?,
            })
        })
        .collect()
}

/// What one check found: counts for the summary and every violation, one line each.
#[derive(Debug, Default)]
pub struct Findings {
    pub releases: usize,
    pub settled: usize,
    pub transitions: i64,
    pub logged_events: usize,
    pub violations: Vec<String>,
}

/// The invariants that hold at any moment, even mid-fault:
/// - no transition lost or applied twice: a release's state version, its number of events, its
///   highest event sequence and its number of audit rows are one number, and its sequences are
///   1..=n;
/// - every unsettled release has moved within [`STUCK_AFTER_SECS`];
/// - the notifier's log holds each release's events gapless and in order (1..=k, k at most the
///   scheduler's count), each under the scheduler's event id;
/// - the webhook receiver got no event the log does not have.
///
/// With `settled_now`, the end state too: every release settled, every event in the log, and
/// every logged event delivered to the webhook.
pub async fn check(pool: &PgPool, delivered: &BTreeSet<String>, settled_now: bool) -> sqlx::Result<Findings> {
    let mut findings = Findings::default();
    // One snapshot for every query: the scheduler commits a release before its events reach the
    // notifier's log, so in one snapshot a logged event's release is always there (read
    // separately, a release created in between would look missing).
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT r.id::text AS id, r.service, s.phase, s.settled, s.version, \
                count(e.sequence) AS events, coalesce(max(e.sequence), 0) AS last, \
                coalesce(array_agg(e.sequence ORDER BY e.sequence) FILTER (WHERE e.sequence IS NOT NULL), '{}') AS sequences, \
                (SELECT count(*) FROM scheduler.audit_log a WHERE a.release_id = r.id) AS audit, \
                extract(epoch FROM now() - coalesce(max(e.created_at), r.created_at))::float8 AS idle \
         FROM scheduler.releases r JOIN scheduler.release_state s ON s.release_id = r.id \
         LEFT JOIN scheduler.release_events e ON e.release_id = r.id \
         GROUP BY r.id, r.service, s.phase, s.settled, s.version",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut versions = BTreeMap::new();
    for row in &rows {
        let id: String = row.try_get("id")?;
        let service: String = row.try_get("service")?;
        let phase: String = row.try_get("phase")?;
        let settled: bool = row.try_get("settled")?;
        let version: i64 = row.try_get("version")?;
        let events: i64 = row.try_get("events")?;
        let last: i64 = row.try_get("last")?;
        let sequences: Vec<i64> = row.try_get("sequences")?;
        let audit: i64 = row.try_get("audit")?;
        let idle: f64 = row.try_get("idle")?;
        findings.releases += 1;
        findings.transitions += version;
        if settled {
            findings.settled += 1;
        }
        let who = format!("release {id} ({service}, {phase})");
        if version != events || version != last || version != audit {
            findings.violations.push(format!(
                "{who}: state version {version}, {events} events (last sequence {last}), {audit} audit rows"
            ));
        }
        if sequences != (1..=sequences.len() as i64).collect::<Vec<_>>() {
            findings.violations.push(format!("{who}: event sequences {sequences:?} have a gap or a repeat"));
        }
        if !settled && idle > STUCK_AFTER_SECS {
            findings.violations.push(format!("{who}: no transition for {idle:.0}s and not settled"));
        }
        if settled_now && !settled {
            findings.violations.push(format!("{who}: not settled at the end"));
        }
        versions.insert(id, version);
    }

    // The notifier's log: the scheduler's events (sequence > 0), in log order per release.
    let logged = sqlx::query(
        "SELECT n.release_id, array_agg(n.sequence ORDER BY n.position) AS sequences, \
                count(*) FILTER (WHERE e.event_id IS NULL OR e.event_id::text <> n.event_id) AS foreign_ids \
         FROM notifier.events n \
         LEFT JOIN scheduler.release_events e ON e.release_id::text = n.release_id AND e.sequence = n.sequence \
         WHERE n.sequence > 0 GROUP BY n.release_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut in_log = BTreeMap::new();
    for row in &logged {
        let release: String = row.try_get("release_id")?;
        let sequences: Vec<i64> = row.try_get("sequences")?;
        let foreign: i64 = row.try_get("foreign_ids")?;
        if sequences != (1..=sequences.len() as i64).collect::<Vec<_>>() {
            findings.violations.push(format!("event log of {release}: sequences {sequences:?} not 1..n in order"));
        }
        if foreign > 0 {
            findings.violations.push(format!("event log of {release}: {foreign} events not under the scheduler's id"));
        }
        match versions.get(&release) {
            Some(&v) if sequences.len() as i64 > v => findings
                .violations
                .push(format!("event log of {release}: {} events, the scheduler made {v}", sequences.len())),
            None => findings.violations.push(format!("event log of {release}: no such release in the scheduler")),
            _ => {}
        }
        in_log.insert(release, sequences.len() as i64);
    }
    if settled_now {
        for (release, version) in &versions {
            let logged = in_log.get(release).copied().unwrap_or(0);
            if logged != *version {
                findings.violations.push(format!("event log of {release}: {logged} of its {version} events"));
            }
        }
    }

    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM notifier.events").fetch_all(&mut *tx).await?;
    tx.commit().await?;
    findings.logged_events = ids.len();
    let ids: BTreeSet<String> = ids.into_iter().collect();
    let unknown: Vec<&String> = delivered.difference(&ids).collect();
    if !unknown.is_empty() {
        findings
            .violations
            .push(format!("webhook: {} deliveries of events not in the log: {unknown:?}", unknown.len()));
    }
    if settled_now {
        let missing: Vec<&String> = ids.difference(delivered).collect();
        if !missing.is_empty() {
            findings.violations.push(format!("webhook: {} logged events never delivered: {missing:?}", missing.len()));
        }
    }
    Ok(findings)
}

/// The migrated database: each version in the history once and successful, and exactly the
/// versions recorded have their table (a migration applied but not recorded, or recorded but
/// not applied, shows as a difference).
pub async fn migrations(app: &PgPool) -> sqlx::Result<Vec<String>> {
    let mut violations = Vec::new();
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('flyway_schema_history')::text").fetch_one(app).await?;
    if exists.is_none() {
        return Ok(violations);
    }
    let history = sqlx::query(
        "SELECT version, count(*) AS times, bool_and(success) AS ok FROM flyway_schema_history \
         WHERE version IS NOT NULL GROUP BY version",
    )
    .fetch_all(app)
    .await?;
    let mut recorded = BTreeSet::new();
    for row in &history {
        let version: String = row.try_get("version")?;
        let times: i64 = row.try_get("times")?;
        let ok: bool = row.try_get("ok")?;
        if times > 1 {
            violations.push(format!("migration {version}: recorded {times} times"));
        }
        if !ok {
            violations.push(format!("migration {version}: recorded as failed"));
        }
        recorded.insert(version);
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT substr(tablename, 6) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'step\\_%'",
    )
    .fetch_all(app)
    .await?;
    let tables: BTreeSet<String> = tables.into_iter().collect();
    if tables != recorded {
        violations.push(format!("migrations recorded {recorded:?} but tables present for {tables:?}"));
    }
    Ok(violations)
}

/// The version a service's traffic must be on: the artifact of its newest succeeded release
/// (`releases` is in revision order; an aborted one after it leaves it in place).
pub fn expected_version(releases: &[ReleaseRow], service: &str) -> Option<String> {
    releases.iter().rev().find(|r| r.service == service && r.phase == "SUCCEEDED").map(|r| r.artifact.clone())
}
