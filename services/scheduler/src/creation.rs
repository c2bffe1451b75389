//! The one way a release comes to exist, whoever asks for it (a person through the API's use
//! cases, or the engine returning an ended train's members): the plan compiled from the config,
//! older unsettled releases of the service superseded, the next revision, the `created`
//! transition. Checks of who may ask and when are the caller's.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    domain::{
        config::Problem,
        machine::{self, Transition, TransitionKind},
        plan::{self, PlanMode},
        release::{NewRelease, Phase, Release},
    },
    error::SchedulerError,
    store::{ConfigVersion, ServiceEnvironment, Store},
};

/// A release to store.
pub struct NewReleaseIn<'a> {
    /// Service.
    pub service: &'a str,
    /// Environment.
    pub environment: &'a str,
    /// Artifact.
    pub artifact: &'a str,
    /// Why.
    pub reason: &'a str,
    /// The client's key.
    pub request_id: Option<&'a str>,
    /// For an undo: the revision returned to.
    pub undo_of_revision: Option<u64>,
    /// Group and position in it.
    pub group: Option<(Uuid, i32)>,
    /// The train member this release returns to its previous version.
    pub returns_release: Option<Uuid>,
    /// Which plan.
    pub mode: PlanMode,
    /// Whoever asked (the engine's name for returns).
    pub actor: &'a str,
    /// Due now (else it waits for its turn in its group).
    pub start_now: bool,
}

/// A config problem as the caller sees it: INVALID_ARGUMENT at its path.
pub fn problem_to_error(p: Problem) -> SchedulerError {
    SchedulerError::invalid(if p.path.is_empty() { "yaml".to_string() } else { p.path }, p.message)
}

/// Stores `n` inside the caller's transaction; `se` is the service environment, locked by the
/// caller. Ids of the releases changed go to `changed`.
pub async fn insert(
    conn: &mut PgConnection,
    current: &ConfigVersion,
    se: &ServiceEnvironment,
    n: NewReleaseIn<'_>,
    changed: &mut Vec<Uuid>,
) -> Result<Release, SchedulerError> {
    let plan = plan::compile(&current.config, n.service, n.environment, n.mode).map_err(problem_to_error)?;
    let now = Store::now(conn).await?;
    let id = Uuid::now_v7();
    for mut old in Store::lock_unsettled(conn, n.service, n.environment).await? {
        let transitions = machine::supersede(&mut old, id, n.actor, now);
        old.updated_at = now;
        let wake = (!old.settled).then_some(now);
        Store::save(conn, &mut old, &transitions, wake).await?;
        changed.push(old.id);
    }
    let revision = se.last_revision + 1;
    Store::bump_revision(conn, n.service, n.environment, revision).await?;
    let mut release = Release::new(NewRelease {
        id,
        service: n.service.to_string(),
        environment: n.environment.to_string(),
        revision,
        artifact: n.artifact.to_string(),
        created_by: n.actor.to_string(),
        now,
        config_version: current.version,
        plan,
        stable_artifact: se.stable_artifact.clone(),
        undo_of_revision: n.undo_of_revision,
        group_id: n.group.map(|(g, _)| g),
        returns_release: n.returns_release,
        reason: n.reason.to_string(),
    });
    // The request creating it (or the engine's advance creating a train's return) starts the
    // release's trace.
    release.trace_parent = hopngo_kit::telemetry::traceparent(&tracing::Span::current());
    let message = match n.undo_of_revision {
        Some(rev) => format!("undo to revision {rev} ({}): {}", n.artifact, n.reason),
        None => {
            format!("{} → {}: {}", se.stable_artifact.as_deref().unwrap_or("(nothing)"), n.artifact, n.reason)
        }
    };
    let created = Transition {
        kind: TransitionKind::Created,
        actor: n.actor.to_string(),
        from: Phase::Pending,
        to: Phase::Pending,
        step_index: 0,
        canary_weight: 0,
        message,
    };
    Store::insert_release(
        conn,
        &mut release,
        n.request_id,
        n.group.map(|(_, p)| p),
        &[created],
        n.start_now.then_some(now),
    )
    .await?;
    changed.push(release.id);
    Ok(release)
}
