//! What a track's Deployment and pods say about it, without I/O: ready when the controller has
//! seen the latest spec (`observedGeneration` ≥ `generation`) and the updated, ready and
//! available replicas reach the desired count on the wanted artifact; otherwise why not, in the
//! words a person acts on (`ImagePullBackOff: …`, `CrashLoopBackOff`, failing readiness).

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use serde_json::Value;

use super::objects::{ANNOTATION_ARTIFACT, Placement};

/// One track as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackView {
    /// Replicas wanted (the Deployment's own count, which an HPA may set).
    pub desired: u32,
    /// Ready replicas on the wanted artifact.
    pub ready: u32,
    /// Everything desired is up on the wanted artifact.
    pub converged: bool,
    /// Container restarts across the track's pods.
    pub restarts: u32,
    /// The last failure a pod reports (`ImagePullBackOff`, `CrashLoopBackOff`, `Unready`).
    pub reason: String,
    /// What is not converged, for a person.
    pub message: String,
}

/// The artifact a Deployment runs (its annotation).
pub fn artifact_of(d: &Deployment) -> Option<&str> {
    d.metadata.annotations.as_ref()?.get(ANNOTATION_ARTIFACT).map(String::as_str)
}

/// The view of one placement from its Deployment (if any) and the pods of its slot.
pub fn track_view(p: &Placement, deployment: Option<&Deployment>, pods: &[&Pod]) -> TrackView {
    let Some(d) = deployment else {
        return TrackView {
            desired: p.replicas,
            message: format!("{} Deployment not created yet", p.slot.as_str()),
            ..Default::default()
        };
    };
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let on_artifact = artifact_of(d) == Some(p.artifact.as_str());
    let updated = status.updated_replicas.unwrap_or(0).max(0) as u32;
    let ready = status.ready_replicas.unwrap_or(0).max(0) as u32;
    let available = status.available_replicas.unwrap_or(0).max(0) as u32;
    let total = status.replicas.unwrap_or(0).max(0) as u32;
    let converged =
        observed && on_artifact && updated >= spec_replicas && available >= spec_replicas && total == spec_replicas;
    let (restarts, reason, detail) = pod_trouble(pods);
    let ready_now = if observed && on_artifact { ready.min(updated) } else { 0 };
    let message = if converged {
        String::new()
    } else {
        let mut m = format!("{} {ready_now}/{spec_replicas} ready", p.track.as_str());
        if !observed || !on_artifact {
            m.push_str(" (rolling out)");
        }
        if !detail.is_empty() {
            m.push_str(&format!(" ({detail})"));
        }
        m
    };
    TrackView { desired: spec_replicas, ready: ready_now, converged, restarts, reason, message }
}

/// Restarts, the reason of the first failing container, and its message.
fn pod_trouble(pods: &[&Pod]) -> (u32, String, String) {
    let mut restarts = 0u32;
    let mut trouble: Option<(String, String)> = None;
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        for c in status.container_statuses.iter().flatten() {
            restarts = restarts.saturating_add(c.restart_count.max(0) as u32);
            if trouble.is_some() || c.ready {
                continue;
            }
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            if let Some(w) = waiting.filter(|w| w.reason.is_some()) {
                let reason = w.reason.clone().unwrap_or_default();
                let message = w.message.clone().unwrap_or_default();
                trouble =
                    Some((reason.clone(), if message.is_empty() { reason } else { format!("{reason}: {message}") }));
            } else if c.state.as_ref().is_some_and(|s| s.running.is_some()) {
                trouble = Some(("Unready".into(), format!("container {} is running but failing readiness", c.name)));
            }
        }
    }
    let (reason, message) = trouble.unwrap_or_default();
    (restarts, reason, message)
}

/// Whether every field of `desired` has the same value in `observed` (which may have more: server
/// defaults, other managers' labels). Quantities are skipped: the server rewrites them (`0.5` →
/// `500m`).
pub fn covers(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, v)| {
            k == "resources" || o.get(k).is_some_and(|ov| covers(v, ov)) || (v.is_null() && !o.contains_key(k))
        }),
        (Value::Array(d), Value::Array(o)) => d.len() == o.len() && d.iter().zip(o).all(|(a, b)| covers(a, b)),
        (d, o) => d == o,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proxy::Track;

    fn placement() -> Placement {
        Placement { slot: Track::Canary, track: Track::Canary, artifact: "1.1".into(), replicas: 2 }
    }

    fn deployment(generation: i64, observed: i64, artifact: &str, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "booking-canary", "generation": generation, "annotations": {ANNOTATION_ARTIFACT: artifact}},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": 2, "updatedReplicas": 2,
                       "readyReplicas": ready, "availableReplicas": ready},
        }))
        .unwrap()
    }

    fn pod(container: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [container]}}))
            .unwrap()
    }

    #[test]
    fn a_track_is_ready_once_the_controller_saw_the_latest_spec() {
        let p = placement();
        assert!(track_view(&p, Some(&deployment(3, 3, "1.1", 2)), &[]).converged);
        let stale = track_view(&p, Some(&deployment(4, 3, "1.1", 2)), &[]);
        assert!(!stale.converged);
        assert_eq!(stale.ready, 0, "replicas counted before the controller saw the change are the old ones");
        assert!(!track_view(&p, Some(&deployment(3, 3, "1.0", 2)), &[]).converged, "another artifact");
        let missing = track_view(&p, None, &[]);
        assert!(missing.message.contains("not created"));
    }

    #[test]
    fn failures_are_named_as_kubernetes_names_them() {
        let p = placement();
        let pull = pod(json!({"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}));
        let crash = pod(json!({"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}}));
        let view = track_view(&p, Some(&deployment(3, 3, "1.1", 0)), &[&pull, &crash]);
        assert_eq!((view.reason.as_str(), view.restarts), ("ImagePullBackOff", 4));
        assert!(
            view.message.contains("canary 0/2 ready (ImagePullBackOff: Back-off pulling image"),
            "{}",
            view.message
        );
        let unready = pod(json!({"name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"running": {}}}));
        assert_eq!(track_view(&p, Some(&deployment(3, 3, "1.1", 1)), &[&unready]).reason, "Unready");
    }

    #[test]
    fn covered_means_every_desired_field_is_in_force() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"image": "a:1", "resources": {"cpu": "0.5"}}]}}});
        let observed = json!({"spec": {"replicas": 2, "paused": false,
            "template": {"containers": [{"image": "a:1", "imagePullPolicy": "IfNotPresent", "resources": {"cpu": "500m"}}]}}});
        assert!(covers(&desired, &observed));
        assert!(!covers(&json!({"spec": {"replicas": 3}}), &observed));
        assert!(!covers(&json!({"spec": {"template": {"containers": [{}, {}]}}}), &observed));
    }
}
