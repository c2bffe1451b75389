//! Just enough of the controllers for a deployer to converge against: a Deployment's pods come up
//! `ready_after` its change (one Pod per replica, labelled and annotated from the template plus
//! `pod-template-hash`, owned by the Deployment, with an address from the pod network), its status reports observedGeneration and
//! updated/ready/available replicas; a container whose image the test marked as failing stays
//! waiting (`ImagePullBackOff`, or `CrashLoopBackOff` with restarts) and the Deployment is not
//! available. A deleted Deployment's pods go with it.

use std::{collections::BTreeSet, sync::Arc};

use serde_json::{Value, json};

use super::{Manager, Shared, fields, follow, kind_index, now, template_hash};

/// How a pod of a marked image fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodFailure {
    /// The image cannot be pulled.
    ImagePull,
    /// The container starts and exits, again and again.
    CrashLoop,
}

impl PodFailure {
    fn reason(self) -> &'static str {
        match self {
            PodFailure::ImagePull => "ImagePullBackOff",
            PodFailure::CrashLoop => "CrashLoopBackOff",
        }
    }
}

/// Follows Deployment changes until the fake stops.
pub(super) async fn run(shared: Arc<Shared>) {
    follow(&shared, "deployments", |event| {
        let name = event.object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if event.verb == "DELETED" {
            delete_pods(&shared, &event.namespace, &name);
            return;
        }
        let generation = event.object["metadata"]["generation"].as_u64();
        if event.object["status"]["observedGeneration"].as_u64() == generation {
            return;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::time::sleep(shared.ready_after).await;
            reconcile(&shared, &event.namespace, &name);
        });
    })
    .await;
}

fn owned_by(pod: &Value, deployment: &str) -> bool {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Deployment" && r["name"] == deployment))
}

fn delete_pods(shared: &Shared, namespace: &str, deployment: &str) {
    let pods = kind_index("pods");
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let doomed: Vec<(usize, String, String)> = store
        .objects
        .iter()
        .filter(|((k, ns, _), s)| *k == pods && ns == namespace && owned_by(&s.value, deployment))
        .map(|(key, _)| key.clone())
        .collect();
    for key in doomed {
        store.remove(&shared.events, &key);
    }
}

/// Brings a Deployment's pods and status to its latest spec.
fn reconcile(shared: &Shared, namespace: &str, name: &str) {
    let deployments = kind_index("deployments");
    let pods = kind_index("pods");
    let failures = shared.failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let key = (deployments, namespace.to_string(), name.to_string());
    let Some(deployment) = store.objects.get(&key).cloned() else { return };
    let spec = &deployment.value["spec"];
    let replicas = spec["replicas"].as_u64().unwrap_or(1);
    let template = &spec["template"];
    let hash = template_hash(template);
    let containers: Vec<Value> = template["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let failing = containers.iter().find_map(|c| {
        let image = c["image"].as_str().unwrap_or_default();
        failures.iter().find(|(needle, _)| image.contains(needle.as_str())).map(|(_, f)| (c["name"].clone(), *f))
    });

    // Old pods (another template, or beyond the replica count) go.
    let wanted: BTreeSet<String> = (0..replicas).map(|i| format!("{name}-{hash}-{i}")).collect();
    let stale: Vec<(usize, String, String)> = store
        .objects
        .iter()
        .filter(|((k, ns, pod), s)| *k == pods && ns == namespace && owned_by(&s.value, name) && !wanted.contains(pod))
        .map(|(key, _)| key.clone())
        .collect();
    for key in stale {
        store.remove(&shared.events, &key);
    }

    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["pod-template-hash"] = json!(hash);
    for pod_name in &wanted {
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| match &failing {
                Some((failing_name, failure)) if *failing_name == c["name"] => json!({
                    "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                    "restartCount": if *failure == PodFailure::CrashLoop { 3 } else { 0 },
                    "state": {"waiting": {"reason": failure.reason(), "message": format!("{} for {}", failure.reason(), c["image"].as_str().unwrap_or_default())}},
                }),
                _ => json!({"name": c["name"], "image": c["image"], "ready": true, "restartCount": 0,
                            "imageID": format!("fake.registry/{}", c["image"].as_str().unwrap_or_default()),
                            "state": {"running": {"startedAt": now()}}}),
            })
            .collect();
        let ready = failing.is_none();
        let pod_key = (pods, namespace.to_string(), pod_name.clone());
        let existing = store.objects.get(&pod_key);
        let address = match existing.and_then(|s| s.value["status"]["podIP"].as_str()) {
            Some(known) => known.to_string(),
            None => shared.next_pod_address().to_string(),
        };
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod_name, "namespace": namespace, "labels": labels,
                "annotations": template["metadata"]["annotations"].as_object().cloned().unwrap_or_default(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                     "uid": deployment.value["metadata"]["uid"], "controller": true}],
            },
            "spec": template["spec"],
            "status": {
                "phase": if ready { "Running" } else { "Pending" },
                "podIP": address, "podIPs": [{"ip": address}], "hostIP": "192.0.2.1",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": statuses,
            },
        });
        let managers = store.objects.get(&pod_key).map(|s| s.managers.clone()).unwrap_or_else(|| controller(&pod));
        store.commit(&shared.events, pod_key, pod, managers);
    }

    let ready = if failing.is_none() { replicas } else { 0 };
    let available = ready == replicas;
    let mut value = deployment.value.clone();
    value["status"] = json!({
        "observedGeneration": deployment.value["metadata"]["generation"],
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
        "availableReplicas": ready, "unavailableReplicas": replicas - ready,
        "conditions": [
            {"type": "Available", "status": if available { "True" } else { "False" },
             "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }},
            {"type": "Progressing", "status": "True",
             "reason": if available { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }},
        ],
    });
    store.update(&shared.events, key, &deployment, value, "kube-controller-manager", true);
}

fn controller(pod: &Value) -> Vec<Manager> {
    vec![Manager {
        name: "kube-controller-manager".into(),
        operation: "Update",
        subresource: false,
        fields: fields::leaves(pod, None, Some("status")),
        time: now(),
    }]
}
