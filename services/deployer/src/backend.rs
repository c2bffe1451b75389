//! What a deployer backend converges, in domain terms (no tonic, no sqlx): the local backend
//! (processes and a weighted proxy) and the Kubernetes backend implement it.

use std::future::Future;

use hopngo_delivery::routes::Routes;

use crate::proxy::Track;

/// Desired state of one track.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackSpec {
    /// Track.
    pub track: Track,
    /// Artifact (the version the command template gets).
    pub artifact: String,
    /// Replicas.
    pub replicas: u32,
}

/// Desired state of one service in one environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Tracks, at most one entry per track.
    pub tracks: Vec<TrackSpec>,
    /// Percentage of traffic for the canary track.
    pub canary_weight: u32,
    /// Header and mirror routes to the canary track.
    #[serde(default, skip_serializing_if = "Routes::is_empty")]
    pub routes: Routes,
}

impl Target {
    /// A target with nothing running (a proxy bound before its first apply, a preflight).
    pub fn empty(service: &str, environment: &str) -> Target {
        Target {
            service: service.into(),
            environment: environment.into(),
            tracks: Vec::new(),
            canary_weight: 0,
            routes: Routes::default(),
        }
    }
}

/// Observed state of one track.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackObserved {
    /// Track.
    pub track: Option<Track>,
    /// Artifact.
    pub artifact: String,
    /// Replicas wanted.
    pub desired: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Why not ready.
    pub message: String,
    /// Restarts of the track's containers.
    pub restarts: u32,
    /// The last failure reason (`ImagePullBackOff`, `CrashLoopBackOff`, `Unready`), if failing.
    pub reason: String,
    /// Where the track alone is reachable (its Service), if anywhere.
    pub address: String,
}

/// Observed state of one service in one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Tracks.
    pub tracks: Vec<TrackObserved>,
    /// Canary weight in force at the router.
    pub canary_weight: u32,
    /// Everything desired is ready and in force.
    pub converged: bool,
    /// What is not converged yet.
    pub message: String,
    /// The Argo Rollout's own status (Argo mode).
    pub rollout: Option<RolloutObserved>,
}

/// What Argo's controller reports about a Rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutObserved {
    /// Rollout name.
    pub name: String,
    /// Healthy, Progressing, Paused, Degraded.
    pub phase: String,
    /// Argo's message.
    pub message: String,
    /// Current canary step.
    pub current_step_index: u32,
    /// Canary steps.
    pub step_count: u32,
    /// Canary traffic share.
    pub canary_weight: u32,
    /// Stable ReplicaSet's pod template hash.
    pub stable_hash: String,
    /// The spec's pod template hash.
    pub current_hash: String,
    /// Paused by a step or by hand.
    pub paused: bool,
    /// The update was aborted.
    pub aborted: bool,
    /// Image of the released container.
    pub image: String,
    /// `rollout.argoproj.io/revision`.
    pub revision: u64,
    /// Paused until someone promotes (a pause step without a duration, or by hand).
    pub awaiting_promotion: bool,
}

/// What `ControlRollout` does, as Argo's CLI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// `promote`.
    Promote,
    /// `promote --full`.
    PromoteFull,
    /// `abort`.
    Abort,
    /// `retry rollout`.
    Retry,
    /// `undo --to-revision N`.
    Undo(u64),
}

/// A failed apply.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The target cannot be run as asked; `field` names what is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field path.
        field: String,
        /// Reason.
        reason: String,
    },
    /// The backend cannot act right now.
    #[error("{0}")]
    Unavailable(String),
}

/// The service and environment of a target, when the delivery config declares both (the error
/// names the field, as in `ApplyTarget`).
pub fn declared<'c>(
    config: &'c hopngo_delivery::DeliveryConfig,
    service: &str,
    environment: &str,
) -> Result<(&'c hopngo_delivery::Service, &'c hopngo_delivery::Environment), BackendError> {
    let unknown = |field: &str, what: &str, name: &str| BackendError::Invalid {
        field: field.into(),
        reason: format!("unknown {what} {} (not in the delivery config)", hopngo_proto::check::shown(name)),
    };
    let s = config.service(service).ok_or_else(|| unknown("target.service", "service", service))?;
    let e = config.environment(environment).ok_or_else(|| unknown("target.environment", "environment", environment))?;
    Ok((s, e))
}

/// A deployer backend.
pub trait Backend: Send + Sync {
    /// Whether `service` and `environment` are ones the delivery config declares.
    fn check_names(&self, service: &str, environment: &str) -> Result<(), BackendError>;
    /// Whether the backend can run `target` at all (checked before it is recorded).
    fn check(&self, target: &Target) -> Result<(), BackendError>;
    /// Where the service's traffic enters (the proxy's `ip:port`, a Kubernetes Service's
    /// `name.namespace.svc:port`), once applied.
    fn address(&self, service: &str, environment: &str) -> impl Future<Output = Option<String>> + Send;
    /// Starts converging `target` (level-based: the same target twice changes nothing).
    fn apply(&self, target: &Target) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Observed state, `None` for a target never applied.
    fn status(&self, service: &str, environment: &str) -> impl Future<Output = Option<Observed>> + Send;
    /// Checks that the backend can run a service in an environment: (check, ok, detail).
    fn preflight(&self, service: &str, environment: &str) -> impl Future<Output = Vec<(String, bool, String)>> + Send;
    /// What applying `target` would write, as YAML, without writing.
    fn render(&self, target: &Target) -> Result<String, BackendError>;
    /// Stops what the backend runs by itself (the local backend's replicas); a cluster's objects
    /// stay as they are.
    fn stop(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Acts on the service's Argo Rollout (Argo mode only).
    fn control(
        &self,
        service: &str,
        environment: &str,
        action: RolloutAction,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}
