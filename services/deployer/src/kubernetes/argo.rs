//! Argo mode: the deployer drives a Rollout someone else owns (a GitOps tool, a chart) with the
//! patches Argo's kubectl plugin sends, never a server-side apply: the image of one container
//! (a JSON patch guarded by a `test` of the container's name), `status` merge patches for
//! promote, promote --full, abort and retry, and the pod template of an earlier ReplicaSet for
//! undo --to-revision. What Argo's controller reports is read from the watched Rollout.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{RolloutAction, RolloutObserved};

/// An `argoproj.io/v1alpha1` Rollout, kept as JSON: the deployer reads a few fields and writes
/// patches, so it never round-trips (and so never drops) fields it does not know.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `argoproj.io/v1alpha1`.
    pub api_version: String,
    /// `Rollout`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: Value,
    /// Status.
    #[serde(default)]
    pub status: Value,
}

impl kube::Resource for Rollout {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Rollout".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "argoproj.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "rollouts".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Annotation of a Rollout (and its ReplicaSets) with the revision number.
pub const REVISION: &str = "rollout.argoproj.io/revision";

fn containers(rollout: &Rollout) -> &[Value] {
    rollout.spec["template"]["spec"]["containers"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The index of `container` in the pod template, or why there is none.
pub fn container_index(rollout: &Rollout, container: &str) -> Result<usize, String> {
    let all = containers(rollout);
    all.iter().position(|c| c["name"] == container).ok_or_else(|| {
        let names: Vec<&str> = all.iter().filter_map(|c| c["name"].as_str()).collect();
        format!("has no container {container:?} (containers: {})", names.join(", "))
    })
}

/// The JSON patch setting the image of container `index` (named `container`): it fails
/// instead of changing another container if the list changed meanwhile.
pub fn set_image(index: usize, container: &str, image: &str) -> Value {
    let at = format!("/spec/template/spec/containers/{index}");
    json!([
        {"op": "test", "path": format!("{at}/name"), "value": container},
        {"op": "replace", "path": format!("{at}/image"), "value": image},
    ])
}

/// The merge patches Argo's CLI sends for `action` (all but undo): on the `status`
/// subresource, and on the Rollout itself.
pub fn control_patches(action: RolloutAction, rollout: &Rollout) -> (Option<Value>, Option<Value>) {
    match action {
        RolloutAction::Promote => {
            let unpause = (rollout.spec["paused"] == true).then(|| json!({"spec": {"paused": false}}));
            (Some(json!({"status": {"pauseConditions": null}})), unpause)
        }
        RolloutAction::PromoteFull => (Some(json!({"status": {"promoteFull": true}})), None),
        RolloutAction::Abort => (Some(json!({"status": {"abort": true}})), None),
        RolloutAction::Retry => (Some(json!({"status": {"abort": false}})), None),
        RolloutAction::Undo(_) => (None, None),
    }
}

/// The JSON patch that puts `template` (an earlier ReplicaSet's, without the hash label Argo
/// adds) back as the Rollout's pod template, guarded by the Rollout's resourceVersion.
pub fn undo(rollout: &Rollout, replica_set_template: &Value) -> Value {
    let mut template = replica_set_template.clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove("rollouts-pod-template-hash");
    }
    json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rollout.metadata.resource_version},
        {"op": "replace", "path": "/spec/template", "value": template},
    ])
}

/// What the controller reports, for the released `container`.
pub fn observed(rollout: &Rollout, container: &str) -> RolloutObserved {
    let status = &rollout.status;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let steps = rollout.spec["strategy"]["canary"]["steps"].as_array().map_or(0, Vec::len);
    let index = status["currentStepIndex"].as_u64().unwrap_or(0) as usize;
    let paused = status["pauseConditions"].as_array().is_some_and(|p| !p.is_empty()) || rollout.spec["paused"] == true;
    let step = &rollout.spec["strategy"]["canary"]["steps"][index];
    let untimed_pause = step.get("pause").is_some() && step["pause"].get("duration").is_none_or(Value::is_null);
    let image = containers(rollout).iter().find(|c| c["name"] == container).map(|c| text(&c["image"]));
    RolloutObserved {
        name: rollout.metadata.name.clone().unwrap_or_default(),
        phase: text(&status["phase"]),
        message: text(&status["message"]),
        current_step_index: index as u32,
        step_count: steps as u32,
        canary_weight: status["canary"]["weights"]["canary"]["weight"].as_u64().unwrap_or(0).min(100) as u32,
        stable_hash: text(&status["stableRS"]),
        current_hash: text(&status["currentPodHash"]),
        paused,
        awaiting_promotion: paused && (rollout.spec["paused"] == true || untimed_pause),
        aborted: status["abort"] == true,
        image: image.unwrap_or_default(),
        revision: rollout
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    }
}

/// Whether the Rollout runs `image` fully: Healthy, the spec's pods are the stable ones, and the
/// controller saw the latest spec.
pub fn settled_on(rollout: &Rollout, o: &RolloutObserved, image: &str) -> bool {
    let generation = rollout.metadata.generation.unwrap_or(0);
    // Argo reports observedGeneration as a string.
    let seen = match &rollout.status["observedGeneration"] {
        Value::String(s) => s.parse::<i64>().unwrap_or(0),
        v => v.as_i64().unwrap_or(0),
    };
    o.image == image
        && o.phase == "Healthy"
        && !o.stable_hash.is_empty()
        && o.stable_hash == o.current_hash
        && seen >= generation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(status: Value) -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "booking", "generation": 2, "resourceVersion": "41",
                         "annotations": {REVISION: "3"}},
            "spec": {"strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
                     "template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:1"},
                                                          {"name": "app", "image": "booking:1.0"}]}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_status_is_mapped_as_argo_reports_it() {
        let r = rollout(json!({"phase": "Paused", "message": "CanaryPauseStep", "currentStepIndex": 1,
            "stableRS": "aaa", "currentPodHash": "bbb", "observedGeneration": "2",
            "pauseConditions": [{"reason": "CanaryPauseStep"}],
            "canary": {"weights": {"canary": {"weight": 20}, "stable": {"weight": 80}}}}));
        let o = observed(&r, "app");
        assert_eq!((o.phase.as_str(), o.current_step_index, o.step_count, o.canary_weight), ("Paused", 1, 2, 20));
        assert!(o.paused && o.awaiting_promotion && !o.aborted, "a pause step without a duration waits for a person");
        assert_eq!((o.image.as_str(), o.revision), ("booking:1.0", 3));
        assert!(!settled_on(&r, &o, "booking:1.0"), "mid-update");
        let healthy =
            rollout(json!({"phase": "Healthy", "stableRS": "bbb", "currentPodHash": "bbb", "observedGeneration": "2"}));
        assert!(settled_on(&healthy, &observed(&healthy, "app"), "booking:1.0"));
        assert!(!settled_on(&healthy, &observed(&healthy, "app"), "booking:1.1"));
    }

    #[test]
    fn patches_are_the_ones_argo_s_cli_sends() {
        let r = rollout(json!({}));
        assert_eq!(container_index(&r, "app"), Ok(1));
        assert_eq!(container_index(&r, "web").unwrap_err(), "has no container \"web\" (containers: sidecar, app)");
        assert_eq!(
            set_image(1, "app", "booking:1.1")[1],
            json!({"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "booking:1.1"})
        );
        assert_eq!(
            control_patches(RolloutAction::Promote, &r),
            (Some(json!({"status": {"pauseConditions": null}})), None)
        );
        assert_eq!(control_patches(RolloutAction::Abort, &r).0, Some(json!({"status": {"abort": true}})));
        assert_eq!(control_patches(RolloutAction::Retry, &r).0, Some(json!({"status": {"abort": false}})));
        assert_eq!(control_patches(RolloutAction::PromoteFull, &r).0, Some(json!({"status": {"promoteFull": true}})));
        let mut paused = r.clone();
        paused.spec["paused"] = json!(true);
        assert_eq!(control_patches(RolloutAction::Promote, &paused).1, Some(json!({"spec": {"paused": false}})));
        let template = json!({"metadata": {"labels": {"app": "booking", "rollouts-pod-template-hash": "aaa"}}});
        let patch = undo(&r, &template);
        assert_eq!(patch[0]["value"], "41");
        assert_eq!(patch[1]["value"]["metadata"]["labels"], json!({"app": "booking"}));
    }
}
