//! `hopngo.deployer.v1.DeployerService` over a [`Backend`]: validates desired states (errors name
//! the field), records them with their idempotency key, and reports the observed state.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use hopngo_proto::deployer::{self as pb, deployer_service_server::DeployerService};
use tonic::{Request, Response, Status};

use crate::{
    backend::{Backend, BackendError, Observed, RolloutAction, Target, TrackSpec},
    error::DeployerError,
    proxy::Track,
    store::Store,
};

/// Largest replica count of one track.
pub const MAX_REPLICAS: u32 = 100;

/// The service.
pub struct Deployer<B> {
    backend: Arc<OnceLock<Arc<B>>>,
    store: Store,
}

impl<B: Backend + 'static> Deployer<B> {
    /// A deployer over `backend`, recording desired states in `store`.
    pub fn new(backend: Arc<B>, store: Store) -> Deployer<B> {
        Deployer { backend: Arc::new(OnceLock::from(backend)), store }
    }

    /// A replica standing by: every call is UNAVAILABLE until the backend is given to the
    /// returned cell (once this replica leads and has restored the stored desired states).
    pub fn standby(store: Store) -> (Deployer<B>, Arc<OnceLock<Arc<B>>>) {
        let cell = Arc::new(OnceLock::new());
        (Deployer { backend: Arc::clone(&cell), store }, cell)
    }

    #[allow(clippy::result_large_err)]
    fn backend(&self) -> Result<&B, Status> {
        self.backend.get().map(|b| b.as_ref()).ok_or_else(|| DeployerError::Standby.into())
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Status {
    DeployerError::invalid(field, reason).into()
}

fn track(value: i32, index: usize) -> Result<Track, Status> {
    match pb::Track::try_from(value) {
        Ok(pb::Track::Stable) => Ok(Track::Stable),
        Ok(pb::Track::Canary) => Ok(Track::Canary),
        Ok(pb::Track::Active) => Ok(Track::Active),
        Ok(pb::Track::Preview) => Ok(Track::Preview),
        Ok(pb::Track::Baseline) => Ok(Track::Baseline),
        _ => Err(invalid(
            format!("target.tracks[{index}].track"),
            format!("{value} is not a track (STABLE, CANARY, ACTIVE, PREVIEW, BASELINE)"),
        )),
    }
}

fn proto_track(t: Track) -> pb::Track {
    match t {
        Track::Stable => pb::Track::Stable,
        Track::Canary => pb::Track::Canary,
        Track::Active => pb::Track::Active,
        Track::Preview => pb::Track::Preview,
        Track::Baseline => pb::Track::Baseline,
    }
}

/// Checks a desired state and turns it into the backend's terms.
#[allow(clippy::result_large_err)]
pub fn target(spec: Option<pb::TargetSpec>) -> Result<Target, Status> {
    let spec = spec.ok_or_else(|| invalid("target", "required"))?;
    if spec.service.is_empty() {
        return Err(invalid("target.service", "must not be empty"));
    }
    if spec.environment.is_empty() {
        return Err(invalid("target.environment", "must not be empty"));
    }
    if spec.canary_weight > 100 {
        return Err(invalid("target.canary_weight", format!("{} is not in 0..=100", spec.canary_weight)));
    }
    if spec.tracks.is_empty() {
        return Err(invalid("target.tracks", "at least one track is required"));
    }
    let mut tracks: Vec<TrackSpec> = Vec::new();
    for (i, t) in spec.tracks.iter().enumerate() {
        let track = track(t.track, i)?;
        if let Some(reason) = hopngo_delivery::artifact_problem(&t.artifact) {
            return Err(invalid(format!("target.tracks[{i}].artifact"), reason));
        }
        if t.replicas > MAX_REPLICAS {
            return Err(invalid(
                format!("target.tracks[{i}].replicas"),
                format!("{} is not in 0..={MAX_REPLICAS}", t.replicas),
            ));
        }
        if tracks.iter().any(|x| x.track == track) {
            return Err(invalid(format!("target.tracks[{i}].track"), format!("{} is listed twice", track.as_str())));
        }
        tracks.push(TrackSpec { track, artifact: t.artifact.clone(), replicas: t.replicas });
    }
    let has = |t: Track| tracks.iter().any(|x| x.track == t);
    let canary_model = has(Track::Stable) || has(Track::Canary) || has(Track::Baseline);
    let blue_green = has(Track::Active) || has(Track::Preview);
    if canary_model && blue_green {
        return Err(invalid("target.tracks", "STABLE/CANARY/BASELINE and ACTIVE/PREVIEW cannot be mixed"));
    }
    if has(Track::Canary) && !has(Track::Stable) {
        return Err(invalid("target.tracks", "a CANARY track needs a STABLE track"));
    }
    if has(Track::Baseline) && !has(Track::Canary) {
        return Err(invalid("target.tracks", "a BASELINE track needs a CANARY track to be compared with"));
    }
    if has(Track::Baseline) && spec.canary_weight > 50 {
        return Err(invalid(
            "target.canary_weight",
            format!("{} is more than 50: the BASELINE track takes as much again", spec.canary_weight),
        ));
    }
    if has(Track::Preview) && !has(Track::Active) {
        return Err(invalid("target.tracks", "a PREVIEW track needs an ACTIVE track"));
    }
    if spec.canary_weight > 0 && !has(Track::Canary) {
        return Err(invalid("target.canary_weight", format!("{} needs a CANARY track", spec.canary_weight)));
    }
    let routes = hopngo_delivery::routes::from_proto(&spec.header_routes, &spec.mirror_routes)
        .map_err(|(field, reason)| invalid(field, reason))?;
    if !routes.is_empty() && !has(Track::Canary) {
        let field = if routes.headers.is_empty() { "target.mirror_routes" } else { "target.header_routes" };
        return Err(invalid(field, "routes send requests to the CANARY track: the target has none"));
    }
    Ok(Target {
        service: spec.service,
        environment: spec.environment,
        tracks,
        canary_weight: spec.canary_weight,
        routes,
    })
}

fn status(
    service: &str,
    environment: &str,
    observed: Option<Observed>,
    key: Option<String>,
    address: Option<String>,
) -> pb::TargetStatus {
    let observed = observed.unwrap_or_default();
    pb::TargetStatus {
        service: service.to_string(),
        environment: environment.to_string(),
        tracks: observed
            .tracks
            .iter()
            .map(|t| pb::TrackStatus {
                track: t.track.map(proto_track).unwrap_or(pb::Track::Unspecified) as i32,
                artifact: t.artifact.clone(),
                desired_replicas: t.desired,
                ready_replicas: t.ready,
                message: t.message.clone(),
                restarts: t.restarts,
                failure_reason: t.reason.clone(),
                address: t.address.clone(),
            })
            .collect(),
        canary_weight: observed.canary_weight,
        converged: observed.converged,
        idempotency_key: key.unwrap_or_default(),
        message: observed.message,
        address: address.unwrap_or_default(),
        rollout: observed.rollout.map(|o| pb::RolloutStatus {
            name: o.name,
            phase: o.phase,
            message: o.message,
            current_step_index: o.current_step_index,
            step_count: o.step_count,
            canary_weight: o.canary_weight,
            stable_hash: o.stable_hash,
            current_hash: o.current_hash,
            paused: o.paused,
            aborted: o.aborted,
            image: o.image,
            revision: o.revision,
            awaiting_promotion: o.awaiting_promotion,
        }),
    }
}

/// A refused service or environment name, with the field named as in the request (no `target.`).
fn names_error(e: BackendError) -> Status {
    match e {
        BackendError::Invalid { field, reason } => invalid(field.trim_start_matches("target."), reason),
        other => DeployerError::from(other).into(),
    }
}

/// The action of a `ControlRollout` request.
#[allow(clippy::result_large_err)]
fn rollout_action(action: i32, to_revision: u64) -> Result<RolloutAction, Status> {
    let action = match pb::RolloutAction::try_from(action) {
        Ok(pb::RolloutAction::Promote) => RolloutAction::Promote,
        Ok(pb::RolloutAction::PromoteFull) => RolloutAction::PromoteFull,
        Ok(pb::RolloutAction::Abort) => RolloutAction::Abort,
        Ok(pb::RolloutAction::Retry) => RolloutAction::Retry,
        Ok(pb::RolloutAction::Undo) if to_revision == 0 => {
            return Err(invalid("to_revision", "UNDO needs the revision to go back to"));
        }
        Ok(pb::RolloutAction::Undo) => RolloutAction::Undo(to_revision),
        _ => {
            return Err(invalid(
                "action",
                format!("{action} is not an action (PROMOTE, PROMOTE_FULL, ABORT, RETRY, UNDO)"),
            ));
        }
    };
    if to_revision != 0 && !matches!(action, RolloutAction::Undo(_)) {
        return Err(invalid("to_revision", "only UNDO takes a revision"));
    }
    Ok(action)
}

#[tonic::async_trait]
impl<B: Backend + 'static> DeployerService for Deployer<B> {
    async fn apply_target(
        &self,
        req: Request<pb::ApplyTargetRequest>,
    ) -> Result<Response<pb::ApplyTargetResponse>, Status> {
        let backend = self.backend()?;
        let r = req.into_inner();
        let target = target(r.target)?;
        // Refused before anything is recorded.
        backend.check(&target).map_err(DeployerError::from)?;
        let changed = self.store.put(&target, &r.idempotency_key).await.map_err(DeployerError::from)?;
        backend.apply(&target).await.map_err(DeployerError::from)?;
        if let Some(addr) =
            backend.address(&target.service, &target.environment).await.and_then(|a| a.parse::<SocketAddr>().ok())
        {
            // A socket address (the local proxy's) survives restarts, so clients and metrics keep
            // pointing at it; a Kubernetes Service's name is stable by itself.
            self.store
                .set_proxy_port(&target.service, &target.environment, addr.port())
                .await
                .map_err(DeployerError::from)?;
        }
        let observed = backend.status(&target.service, &target.environment).await;
        let key = self.store.key(&target.service, &target.environment).await.map_err(DeployerError::from)?;
        let address = backend.address(&target.service, &target.environment).await;
        Ok(Response::new(pb::ApplyTargetResponse {
            changed,
            status: Some(status(&target.service, &target.environment, observed, key, address)),
        }))
    }

    async fn get_target_status(
        &self,
        req: Request<pb::GetTargetStatusRequest>,
    ) -> Result<Response<pb::GetTargetStatusResponse>, Status> {
        let backend = self.backend()?;
        let r = req.into_inner();
        if r.service.is_empty() {
            return Err(invalid("service", "must not be empty"));
        }
        if r.environment.is_empty() {
            return Err(invalid("environment", "must not be empty"));
        }
        let observed = backend.status(&r.service, &r.environment).await;
        let Some(observed) = observed else {
            return Err(
                DeployerError::NotFound(format!("no desired state for {} in {}", r.service, r.environment)).into()
            );
        };
        let key = self.store.key(&r.service, &r.environment).await.map_err(DeployerError::from)?;
        let address = backend.address(&r.service, &r.environment).await;
        Ok(Response::new(pb::GetTargetStatusResponse {
            status: Some(status(&r.service, &r.environment, Some(observed), key, address)),
        }))
    }

    async fn render_target(
        &self,
        req: Request<pb::RenderTargetRequest>,
    ) -> Result<Response<pb::RenderTargetResponse>, Status> {
        let backend = self.backend()?;
        let target = target(req.into_inner().target)?;
        let yaml = backend.render(&target).map_err(DeployerError::from)?;
        Ok(Response::new(pb::RenderTargetResponse { yaml }))
    }

    async fn control_rollout(
        &self,
        req: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::ControlRolloutResponse>, Status> {
        let backend = self.backend()?;
        let r = req.into_inner();
        let action = rollout_action(r.action, r.to_revision)?;
        backend.check_names(&r.service, &r.environment).map_err(names_error)?;
        backend.control(&r.service, &r.environment, action).await.map_err(DeployerError::from)?;
        let observed = backend.status(&r.service, &r.environment).await;
        let key = self.store.key(&r.service, &r.environment).await.map_err(DeployerError::from)?;
        let address = backend.address(&r.service, &r.environment).await;
        Ok(Response::new(pb::ControlRolloutResponse {
            status: Some(status(&r.service, &r.environment, observed, key, address)),
        }))
    }

    async fn preflight(&self, req: Request<pb::PreflightRequest>) -> Result<Response<pb::PreflightResponse>, Status> {
        let backend = self.backend()?;
        let r = req.into_inner();
        // The same names as a target's (field names as in ApplyTarget, without `target.`).
        backend.check_names(&r.service, &r.environment).map_err(names_error)?;
        let checks = backend.preflight(&r.service, &r.environment).await;
        Ok(Response::new(pb::PreflightResponse {
            ok: checks.iter().all(|(_, ok, _)| *ok),
            checks: checks.into_iter().map(|(name, ok, message)| pb::PreflightCheck { name, ok, message }).collect(),
        }))
    }
}
