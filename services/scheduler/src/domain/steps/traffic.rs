//! Desired states (which artifact runs on which track, with how much traffic) and the one way a
//! step applies one: once, with the step's idempotency key, then waiting until the deployer
//! reports it converged.

use super::{Next, StepCtx};
use crate::domain::{
    config::routes::Routes,
    effects::{DesiredState, Effects, TargetObservation, Track, TrackState},
    machine::idempotency_key,
    plan::{CanaryScale, ExperimentSpec, Plan, StepAction, TrafficModel},
    release::{Release, StepStatus},
};
use hopngo_proto::transitions::TransitionKind;

fn canary_replicas(r: &Release, weight: u32) -> u32 {
    replicas_for(r.plan.replicas, r.canary_scale, weight)
}

/// The canary's replicas at `weight` beside `stable` replicas, as `scale` says.
fn replicas_for(stable: u32, scale: CanaryScale, weight: u32) -> u32 {
    match scale {
        CanaryScale::Replicas(n) => n,
        CanaryScale::Weight(w) => (stable * w).div_ceil(100),
        CanaryScale::MatchTrafficWeight if weight == 0 => 0,
        CanaryScale::MatchTrafficWeight => (stable * weight).div_ceil(100).max(1),
    }
}

fn track(track: Track, artifact: &str, replicas: u32) -> TrackState {
    TrackState { track, artifact: artifact.to_string(), replicas }
}

fn desired(r: &Release, tracks: Vec<TrackState>, canary_weight: u32) -> DesiredState {
    DesiredState {
        service: r.service.clone(),
        environment: r.environment.clone(),
        tracks,
        canary_weight,
        routes: Routes::default(),
    }
}

/// The track that takes all traffic once a release is done.
fn live_track(r: &Release) -> Track {
    match r.plan.traffic {
        TrafficModel::Canary => Track::Stable,
        TrafficModel::BlueGreen => Track::Active,
    }
}

/// Desired state with the canary at `weight`, with the release's header and mirror routes (a
/// canary with routes runs at least one replica: a route to nothing would be no test at all).
pub fn canary_state(r: &Release, weight: u32) -> DesiredState {
    routed_state(r, weight, &r.routes)
}

/// [`canary_state`] with `routes` instead of the release's.
fn routed_state(r: &Release, weight: u32, routes: &Routes) -> DesiredState {
    let stable = r.stable_artifact.as_deref().unwrap_or(&r.artifact);
    let mut tracks = vec![track(Track::Stable, stable, r.plan.replicas)];
    let canary = canary_replicas(r, weight);
    if canary > 0 || weight > 0 || !routes.is_empty() {
        tracks.push(track(Track::Canary, &r.artifact, canary.max(1)));
    }
    DesiredState { routes: routes.clone(), ..desired(r, tracks, weight) }
}

/// Desired state during an experiment: the canary and a baseline of the stable artifact on
/// fresh replicas, `spec.replicas` each (equal size, equally warm), at `spec.weight` percent
/// each, with the release's routes.
pub fn experiment_state(r: &Release, spec: &ExperimentSpec) -> DesiredState {
    let stable = r.stable_artifact.as_deref().unwrap_or(&r.artifact);
    let tracks = vec![
        track(Track::Stable, stable, r.plan.replicas),
        track(Track::Canary, &r.artifact, spec.replicas),
        track(Track::Baseline, stable, spec.replicas),
    ];
    DesiredState { routes: r.routes.clone(), ..desired(r, tracks, spec.weight) }
}

/// Desired state with only the new artifact (promotion complete).
pub fn final_state(r: &Release) -> DesiredState {
    desired(r, vec![track(live_track(r), &r.artifact, r.plan.replicas)], 0)
}

/// Desired state with only the previous stable artifact (abort).
pub fn rollback_state(r: &Release) -> Option<DesiredState> {
    let stable = r.stable_artifact.as_deref()?;
    Some(desired(r, vec![track(live_track(r), stable, r.plan.replicas)], 0))
}

/// What a release of `artifact` would ask of the deployer at `weight` beside `stable` (what runs
/// now, if anything), for a person to preview: the canary at that weight (its replicas following
/// it), blue/green's preview (switched at 100), an Argo Rollout's image, or the artifact alone.
pub fn preview_state(
    plan: &Plan,
    service: &str,
    environment: &str,
    stable: Option<&str>,
    artifact: &str,
    weight: u32,
) -> DesiredState {
    let n = plan.replicas;
    let argo = plan.steps.iter().any(|s| matches!(s.action, StepAction::ArgoRollout { .. }));
    let live = if plan.traffic == TrafficModel::BlueGreen { Track::Active } else { Track::Stable };
    let (tracks, canary_weight) = match stable.filter(|s| *s != artifact && !argo) {
        None => (vec![track(live, artifact, n)], 0),
        Some(old) if plan.traffic == TrafficModel::BlueGreen && weight >= 100 => {
            (vec![track(Track::Active, artifact, n), track(Track::Preview, old, n)], 0)
        }
        Some(old) if plan.traffic == TrafficModel::BlueGreen => {
            (vec![track(Track::Active, old, n), track(Track::Preview, artifact, n)], 0)
        }
        Some(old) if weight == 0 => (vec![track(Track::Stable, old, n)], 0),
        Some(old) => {
            let canary = replicas_for(n, CanaryScale::MatchTrafficWeight, weight.min(100));
            (vec![track(Track::Stable, old, n), track(Track::Canary, artifact, canary)], weight.min(100))
        }
    };
    DesiredState {
        service: service.into(),
        environment: environment.into(),
        tracks,
        canary_weight,
        routes: Routes::default(),
    }
}

/// Applies the canary at its weight with `routes` (a header or mirror route step's result) and
/// records them on the release once applied.
pub async fn converge_routes<E: Effects>(cx: &mut StepCtx<'_, E>, routes: Routes) -> Next {
    let state = routed_state(cx.r, cx.r.canary_weight, &routes);
    converge(cx, state, |r| r.routes = routes).await
}

/// Blue/green: the new version on preview, or (`switched`) on active with the old on preview.
pub fn blue_green_state(r: &Release, switched: bool, preview_replicas: u32) -> DesiredState {
    let stable = r.stable_artifact.as_deref().unwrap_or(&r.artifact);
    let tracks = if switched {
        vec![track(Track::Active, &r.artifact, r.plan.replicas), track(Track::Preview, stable, r.plan.replicas)]
    } else {
        vec![track(Track::Active, stable, r.plan.replicas), track(Track::Preview, &r.artifact, preview_replicas)]
    };
    desired(r, tracks, 0)
}

/// Applies `state` once per cursor under `key` (`on_applied` records what it changed; a weight
/// change becomes a transition). `Err` is what the caller returns: a retry of a failure that may
/// pass, or an abort saying the deployer `refused` it (`failed_step`: the current step is why).
pub async fn apply_once<E: Effects>(
    cx: &mut StepCtx<'_, E>,
    key: &str,
    state: &DesiredState,
    refused: &str,
    failed_step: bool,
    on_applied: impl FnOnce(&mut Release),
) -> Result<(), Next> {
    if cx.r.cursor.applied {
        return Ok(());
    }
    match cx.fx.apply_target(key, state).await {
        Ok(()) => {
            let r = &mut *cx.r;
            r.failures = 0;
            r.cursor.applied = true;
            r.traffic_touched = true;
            let before = r.canary_weight;
            on_applied(r);
            if r.canary_weight != before {
                let from = r.phase;
                let message = format!("traffic to {}: {}%", r.artifact, r.canary_weight);
                cx.record(TransitionKind::WeightChanged, from, message);
            }
            Ok(())
        }
        Err(err) => {
            if err.uncertain {
                cx.r.traffic_touched = true;
            }
            if err.retryable {
                return Err(cx.retry_later(&err));
            }
            Err(cx.abort(&format!("deployer refused {refused}: {err}"), failed_step))
        }
    }
}

/// What the deployer reports for the release's service; `Err` as for [`apply_once`].
pub async fn observe<E: Effects>(cx: &mut StepCtx<'_, E>, failed_step: bool) -> Result<TargetObservation, Next> {
    match cx.fx.target_status(&cx.r.service, &cx.r.environment).await {
        Ok(obs) => Ok(obs),
        Err(err) if err.retryable => Err(cx.retry_later(&err)),
        Err(err) => Err(cx.abort(&format!("deployer status: {err}"), failed_step)),
    }
}

/// Applies `state` once (with the step's key; `on_applied` records what it changed), then waits
/// until the deployer reports it converged, and completes the step.
pub async fn converge<E: Effects>(
    cx: &mut StepCtx<'_, E>,
    state: DesiredState,
    on_applied: impl FnOnce(&mut Release),
) -> Next {
    let key = idempotency_key(cx.r, &cx.r.step_index.to_string());
    if let Err(next) = apply_once(cx, &key, &state, "the desired state", true, on_applied).await {
        return next;
    }
    match observe(cx, true).await {
        Err(next) => next,
        Ok(obs) if obs.converged && obs.canary_weight == state.canary_weight => {
            if !obs.address.is_empty() {
                cx.r.address = obs.address;
            }
            cx.complete(StepStatus::Succeeded, "")
        }
        Ok(obs) => {
            cx.r.failures = 0;
            cx.r.message = format!("converging: {}", obs.message);
            cx.poll_later()
        }
    }
}
