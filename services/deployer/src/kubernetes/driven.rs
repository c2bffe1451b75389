//! The Kubernetes backend in Argo mode: a service's existing Rollout is driven with Argo's own
//! patches ([`super::argo`]) and its status is read from the watched Rollout.

use std::sync::Arc;

use hopngo_delivery::kubernetes::{ArgoRolloutRef, image_reference};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use serde_json::Value;

use super::{
    KubeBackend, api_error,
    argo::{self, Rollout},
    invalid, meta_version,
    objects::FIELD_MANAGER,
    unavailable,
};
use crate::{
    backend::{BackendError, Observed, RolloutAction, Target, TrackObserved},
    proxy::Track,
};

/// An Argo Rollout runs its own steps: the deployer is only told which artifact to run.
pub(super) fn check(target: &Target) -> Result<(), BackendError> {
    match target.tracks.as_slice() {
        [only] if only.track == Track::Stable && target.canary_weight == 0 => Ok(()),
        _ => Err(invalid(
            "target.tracks",
            "an Argo Rollout runs its own canary steps: give one STABLE track (the artifact) and no canary weight",
        )),
    }
}

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn json_patch(value: Value) -> Result<Patch<()>, BackendError> {
    serde_json::from_value(value).map(Patch::Json).map_err(|e| unavailable("building a JSON patch", e))
}

impl KubeBackend {
    /// The watched Rollout; a missing one may still be created, so the release waits for it.
    fn rollout(&self, namespace: &str, name: &str) -> Result<Arc<Rollout>, BackendError> {
        let store = self
            .caches(namespace)?
            .rollouts
            .as_ref()
            .ok_or_else(|| unavailable("watches", "Rollouts are not watched"))?;
        store.get(&ObjectRef::new(name).within(namespace)).ok_or_else(|| {
            unavailable(
                &format!("Rollout {namespace}/{name}"),
                "not found (is Argo Rollouts installed, the Rollout created?)",
            )
        })
    }

    /// Sets the released container's image to the target's artifact (`kubectl argo rollouts set
    /// image`), unless it already is, or our own patch of it is not in the cache yet.
    pub(super) async fn set_rollout_image(
        &self,
        r: &ArgoRolloutRef,
        namespace: &str,
        target: &Target,
    ) -> Result<(), BackendError> {
        let rollout = self.rollout(namespace, &r.name)?;
        let index = argo::container_index(&rollout, &r.container)
            .map_err(|e| invalid("target.service", format!("Rollout {namespace}/{} {e}", r.name)))?;
        let image = image_reference(&r.image, &target.tracks[0].artifact);
        if argo::observed(&rollout, &r.container).image == image {
            return Ok(());
        }
        let patch = argo::set_image(index, &r.container, &image);
        let key = ("Rollout".to_string(), namespace.to_string(), r.name.clone());
        if self.sent_and_unseen(&key, &patch, meta_version(&rollout.metadata)) {
            return Ok(());
        }
        let api: Api<Rollout> = Api::namespaced(self.client.clone(), namespace);
        let patched = api
            .patch(&r.name, &patch_params(), &json_patch(patch.clone())?)
            .await
            .map_err(|e| api_error(&format!("setting the image of Rollout {namespace}/{}", r.name), e))?;
        self.writes.with_label_values(&["Rollout", "patch"]).inc();
        self.remember(key, patch, meta_version(&patched.metadata));
        Ok(())
    }

    /// The patch setting the target's image on the Rollout would send, as YAML.
    pub(super) fn render_rollout(
        &self,
        r: &ArgoRolloutRef,
        namespace: &str,
        target: &Target,
    ) -> Result<String, BackendError> {
        let rollout = self.rollout(namespace, &r.name)?;
        let index = argo::container_index(&rollout, &r.container)
            .map_err(|e| invalid("target.service", format!("Rollout {namespace}/{} {e}", r.name)))?;
        let image = image_reference(&r.image, &target.tracks[0].artifact);
        if argo::observed(&rollout, &r.container).image == image {
            return Ok(format!("# unchanged: Rollout {namespace}/{} already runs {image}\n", r.name));
        }
        let patch = argo::set_image(index, &r.container, &image);
        let yaml = serde_saphyr::to_string(&patch).map_err(|e| unavailable("rendering", e))?;
        Ok(format!("---\n# JSON patch of Rollout {namespace}/{} (Argo then runs its own steps)\n{yaml}", r.name))
    }

    /// What Argo reports, in the contract's terms: converged once the Rollout is Healthy on
    /// the target's image.
    pub(super) fn rollout_status(&self, r: &ArgoRolloutRef, namespace: &str, target: &Target) -> Option<Observed> {
        let artifact = target.tracks.first()?.artifact.clone();
        let rollout = match self.rollout(namespace, &r.name) {
            Ok(rollout) => rollout,
            Err(e) => return Some(Observed { message: e.to_string(), ..Default::default() }),
        };
        let o = argo::observed(&rollout, &r.container);
        let settled = argo::settled_on(&rollout, &o, &image_reference(&r.image, &artifact));
        let count = |v: &Value| v.as_u64().unwrap_or(0) as u32;
        let message = if settled {
            String::new()
        } else {
            let detail = if o.message.is_empty() { String::new() } else { format!(": {}", o.message) };
            format!(
                "Rollout {} is {}{detail} (step {}/{}, canary {}%)",
                o.name, o.phase, o.current_step_index, o.step_count, o.canary_weight
            )
        };
        Some(Observed {
            tracks: vec![TrackObserved {
                track: Some(Track::Stable),
                artifact,
                desired: count(&rollout.spec["replicas"]),
                ready: count(&rollout.status["availableReplicas"]),
                message: message.clone(),
                ..Default::default()
            }],
            canary_weight: if settled { 0 } else { o.canary_weight },
            converged: settled,
            message,
            rollout: Some(o),
        })
    }

    /// Promote, promote --full, abort, retry or undo, with the patches Argo's CLI sends.
    pub(super) async fn control_rollout(
        &self,
        r: &ArgoRolloutRef,
        namespace: &str,
        action: RolloutAction,
    ) -> Result<(), BackendError> {
        let rollout = self.rollout(namespace, &r.name)?;
        let api: Api<Rollout> = Api::namespaced(self.client.clone(), namespace);
        let context = format!("Rollout {namespace}/{}", r.name);
        if let RolloutAction::Undo(revision) = action {
            let template = self.revision_template(namespace, &r.name, revision).await?;
            api.patch(&r.name, &patch_params(), &json_patch(argo::undo(&rollout, &template))?)
                .await
                .map_err(|e| api_error(&format!("undoing {context} to revision {revision}"), e))?;
            self.writes.with_label_values(&["Rollout", "patch"]).inc();
            return Ok(());
        }
        let (status, spec) = argo::control_patches(action, &rollout);
        if let Some(spec) = spec {
            api.patch(&r.name, &patch_params(), &Patch::Merge(&spec)).await.map_err(|e| api_error(&context, e))?;
            self.writes.with_label_values(&["Rollout", "patch"]).inc();
        }
        if let Some(status) = status {
            // As Argo's CLI: the status subresource, else the Rollout itself (old CRDs).
            match api.patch_status(&r.name, &patch_params(), &Patch::Merge(&status)).await {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    api.patch(&r.name, &patch_params(), &Patch::Merge(&status))
                        .await
                        .map_err(|e| api_error(&context, e))?;
                }
                other => {
                    other.map_err(|e| api_error(&context, e))?;
                }
            }
            self.writes.with_label_values(&["Rollout", "patch"]).inc();
        }
        Ok(())
    }

    /// The pod template of the Rollout's ReplicaSet of `revision`.
    async fn revision_template(&self, namespace: &str, rollout: &str, revision: u64) -> Result<Value, BackendError> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        let sets = api
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error(&format!("listing ReplicaSets in {namespace}"), e))?;
        let mut revisions = Vec::new();
        for rs in sets.items {
            let owned = rs.metadata.owner_references.iter().flatten().any(|o| o.kind == "Rollout" && o.name == rollout);
            let Some(n) = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(argo::REVISION))
                .and_then(|r| r.parse::<u64>().ok())
                .filter(|_| owned)
            else {
                continue;
            };
            if n == revision {
                let template = rs.spec.map(|s| s.template).unwrap_or_default();
                return serde_json::to_value(template).map_err(|e| unavailable("reading the ReplicaSet", e));
            }
            revisions.push(n);
        }
        revisions.sort_unstable();
        let kept: Vec<String> = revisions.iter().map(u64::to_string).collect();
        Err(invalid(
            "to_revision",
            format!("Rollout {namespace}/{rollout} has no revision {revision} (kept: {})", kept.join(", ")),
        ))
    }

    /// The Rollout exists and has the released container.
    pub(super) fn rollout_preflight(&self, r: &ArgoRolloutRef, namespace: &str) -> Vec<(String, bool, String)> {
        match self.rollout(namespace, &r.name) {
            Err(e) => vec![("rollout".into(), false, e.to_string())],
            Ok(rollout) => {
                let container = match argo::container_index(&rollout, &r.container) {
                    Ok(_) => ("container".into(), true, format!("{} is in the pod template", r.container)),
                    Err(e) => ("container".into(), false, format!("Rollout {namespace}/{} {e}", r.name)),
                };
                let o = argo::observed(&rollout, &r.container);
                vec![("rollout".into(), true, format!("{namespace}/{} is {}", r.name, o.phase)), container]
            }
        }
    }
}
