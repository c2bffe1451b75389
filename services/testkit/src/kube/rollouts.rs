//! Just enough of Argo Rollouts' controller for a deployer that drives existing Rollouts through
//! the patches Argo's kubectl plugin sends (`../reference/kubernetes/README.md`): a new
//! `spec.template` (set image) starts the canary steps from 0 with a new `currentPodHash` and a
//! ReplicaSet carrying the next `rollout.argoproj.io/revision`; `setWeight` steps set
//! `status.canary.weights`; `pause` steps add a `CanaryPauseStep` pause condition (timed ones
//! clear themselves, `promote` clears them: `pauseConditions: null`); other steps (analysis,
//! experiments) count as passed; the last step makes the new pods stable. `status.abort` sends
//! the weight back to stable and the phase to Degraded (`RolloutAborted`), `abort: false`
//! retries from step 0, `promoteFull` skips to stable, `currentStepIndex` skips to a step. The
//! phase follows Argo's `CalculateRolloutPhase`: Degraded, Paused, Progressing, Healthy.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::{Shared, Store, follow, kind_index, now, template_hash};

/// Follows Rollout changes until the fake stops.
pub(super) async fn run(shared: Arc<Shared>) {
    follow(&shared, "rollouts", |event| {
        if event.verb == "DELETED" {
            return;
        }
        let name = event.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::time::sleep(shared.ready_after).await;
            if let Some(wake) = reconcile(&shared, &event.namespace, &name) {
                tokio::time::sleep(wake).await;
                reconcile(&shared, &event.namespace, &name);
            }
        });
    })
    .await;
}

fn duration(step: &Value) -> Option<Duration> {
    let d = &step["pause"]["duration"];
    if let Some(secs) = d.as_u64() {
        return Some(Duration::from_secs(secs));
    }
    let text = d.as_str()?;
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}

fn elapsed_since(start: &str) -> Duration {
    let Ok(start) = time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339) else {
        return Duration::ZERO;
    };
    (time::OffsetDateTime::now_utc() - start).try_into().unwrap_or(Duration::ZERO)
}

/// Brings one Rollout's status to what Argo's controller would report; returns when to look
/// again (a timed pause).
fn reconcile(shared: &Shared, namespace: &str, name: &str) -> Option<Duration> {
    let rollouts = kind_index("rollouts");
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let key = (rollouts, namespace.to_string(), name.to_string());
    let current = store.objects.get(&key).cloned()?;
    let spec = &current.value["spec"];
    let steps: Vec<Value> = spec["strategy"]["canary"]["steps"].as_array().cloned().unwrap_or_default();
    let hash = template_hash(&spec["template"]);
    let mut status = current.value["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let mut wake = None;
    let first = status["stableRS"].as_str().is_none_or(str::is_empty);
    if status["currentPodHash"].as_str() != Some(hash.as_str()) {
        // A new template: a new revision, its ReplicaSet, and the steps from the start.
        let revision = current.value["metadata"]["annotations"]["rollout.argoproj.io/revision"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        replica_set(&mut store, shared, namespace, name, &current.value, &hash, revision);
        let mut value = current.value.clone();
        value["metadata"]["annotations"]["rollout.argoproj.io/revision"] = json!(revision.to_string());
        let managers = current.managers.clone();
        store.commit(&shared.events, key.clone(), value, managers);
        status["currentPodHash"] = json!(hash);
        status["currentStepIndex"] = json!(0);
        status["abort"] = json!(false);
        status["promoteFull"] = json!(false);
        status["pauseConditions"] = Value::Null;
        status["controllerPause"] = json!(false);
        if first {
            status["stableRS"] = json!(hash);
        }
    }
    let stable = status["stableRS"].as_str().unwrap_or_default().to_string();
    let mut index = status["currentStepIndex"].as_u64().unwrap_or(0) as usize;
    let aborted = status["abort"].as_bool() == Some(true);
    let mut canary_weight = 0;
    let mut message = String::new();
    let mut phase = "Healthy";
    if hash != stable && aborted {
        status["abortedAt"] = status.get("abortedAt").cloned().filter(|a| !a.is_null()).unwrap_or(json!(now()));
        phase = "Degraded";
        message = format!("RolloutAborted: Rollout aborted update to revision {hash}");
        status["pauseConditions"] = Value::Null;
        status["controllerPause"] = json!(false);
    } else if hash != stable {
        if status["abortedAt"].is_string() {
            // `abort: false` (retry): the steps start again.
            status["abortedAt"] = Value::Null;
            status["controllerPause"] = json!(false);
            index = 0;
        }
        if status["promoteFull"].as_bool() == Some(true) {
            index = steps.len();
        }
        // The weight the steps passed so far set.
        canary_weight =
            steps[..index.min(steps.len())].iter().filter_map(|s| s["setWeight"].as_u64()).next_back().unwrap_or(0);
        loop {
            let Some(step) = steps.get(index) else {
                // Every step done: the new pods are stable.
                status["stableRS"] = json!(hash);
                status["promoteFull"] = json!(false);
                break;
            };
            if let Some(w) = step["setWeight"].as_u64() {
                canary_weight = w;
                index += 1;
                continue;
            }
            if step.get("pause").is_some() {
                let paused = status["pauseConditions"].as_array().is_some_and(|p| !p.is_empty());
                let by_controller = status["controllerPause"].as_bool() == Some(true);
                if by_controller && !paused {
                    // Promoted (the pause condition was cleared): the step is done.
                    status["controllerPause"] = json!(false);
                    index += 1;
                    continue;
                }
                if !by_controller {
                    status["pauseConditions"] = json!([{"reason": "CanaryPauseStep", "startTime": now()}]);
                    status["controllerPause"] = json!(true);
                }
                if let Some(d) = duration(step) {
                    let started = status["pauseConditions"][0]["startTime"].as_str().unwrap_or_default().to_string();
                    let spent = elapsed_since(&started);
                    if spent >= d {
                        status["pauseConditions"] = Value::Null;
                        status["controllerPause"] = json!(false);
                        index += 1;
                        continue;
                    }
                    wake = Some(d - spent + Duration::from_millis(50));
                }
                phase = "Paused";
                message = "CanaryPauseStep".into();
                break;
            }
            // Analysis, experiments, plugins: passed in this simulation.
            index += 1;
        }
        if status["stableRS"].as_str() != Some(hash.as_str()) && phase != "Paused" {
            phase = "Progressing";
            message = "more replicas need to be updated".into();
        }
    }
    if spec["paused"].as_bool() == Some(true) && phase != "Degraded" {
        phase = "Paused";
        message = "manually paused".into();
    }
    let stable_now = status["stableRS"].as_str().unwrap_or_default().to_string();
    let canary_hash = if stable_now == hash { stable_now.clone() } else { hash.clone() };
    if stable_now == hash {
        canary_weight = 0;
    }
    status["currentStepIndex"] = json!(index.min(steps.len()));
    status["canary"]["weights"] = json!({
        "canary": {"weight": canary_weight, "podTemplateHash": canary_hash, "serviceName": spec["strategy"]["canary"]["canaryService"]},
        "stable": {"weight": 100 - canary_weight, "podTemplateHash": stable_now, "serviceName": spec["strategy"]["canary"]["stableService"]},
    });
    status["phase"] = json!(phase);
    status["message"] = json!(message);
    status["observedGeneration"] = json!(current.value["metadata"]["generation"].as_u64().unwrap_or(1).to_string());
    let replicas = spec["replicas"].as_u64().unwrap_or(1);
    status["replicas"] = json!(replicas);
    status["availableReplicas"] = json!(replicas);
    let conditions = if phase == "Degraded" {
        json!([{"type": "Progressing", "status": "False", "reason": "RolloutAborted", "message": message}])
    } else {
        json!([{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}])
    };
    status["conditions"] = conditions;
    let latest = store.objects.get(&key).cloned()?;
    let mut value = latest.value.clone();
    value["status"] = status;
    store.update(&shared.events, key, &latest, value, "argo-rollouts", true);
    wake
}

/// The ReplicaSet of one revision, as Argo keeps them (what `undo --to-revision` copies from).
fn replica_set(
    store: &mut Store,
    shared: &Shared,
    namespace: &str,
    rollout: &str,
    value: &Value,
    hash: &str,
    revision: u64,
) {
    let replica_sets = kind_index("replicasets");
    let name = format!("{rollout}-{hash}");
    let mut template = value["spec"]["template"].clone();
    template["metadata"]["labels"]["rollouts-pod-template-hash"] = json!(hash);
    let mut selector = value["spec"]["selector"].clone();
    selector["matchLabels"]["rollouts-pod-template-hash"] = json!(hash);
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"rollouts-pod-template-hash": hash},
            "annotations": {"rollout.argoproj.io/revision": revision.to_string()},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": rollout,
                                 "uid": value["metadata"]["uid"], "controller": true}],
        },
        "spec": {"replicas": value["spec"]["replicas"], "selector": selector, "template": template},
    });
    let key = (replica_sets, namespace.to_string(), name);
    let managers = store.objects.get(&key).map(|s| s.managers.clone()).unwrap_or_default();
    store.commit(&shared.events, key, rs, managers);
}
