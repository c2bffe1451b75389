//! The test suite's in-memory Kubernetes API server speaks the real protocol: the official Python
//! client drives it (create, conflicts, merge patch, server-side apply with conflicts and force,
//! the status subresource, watch with bookmarks, 410 Gone, the simulated controllers' pods and
//! their failures, RBAC's 403, a Rollout driven with Argo's own patches), and the same facts are
//! checked here on the fake's own view of the objects.

use std::{process::Command, time::Duration};

use hopngo_testkit::{
    kube::{FakeKube, FakeKubeOptions, PodFailure},
    python::{script, test_python},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_works_against_the_fake_api_server() {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec!["staging".into()],
        bookmark_every: Duration::from_millis(200),
        ..FakeKubeOptions::default()
    })
    .await;
    fake.fail_image(":broken", PodFailure::ImagePull);
    fake.forbid("delete", "services");
    let dir = std::env::temp_dir().join(format!("hopngo-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig("staging")).unwrap();
    let script = script("kube_client.py");
    let python = test_python();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(&kubeconfig).arg("staging").output()),
    )
    .await
    .expect("the Python client finishes")
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("watch from an expired resourceVersion: 410 Gone"), "{stdout}");
    assert!(stdout.contains("RBAC: 403 Forbidden"), "{stdout}");

    // What the client saw is what the fake holds.
    let stable = fake.object("deployments", "staging", "booking-stable").expect("kept");
    assert_eq!(stable["spec"]["template"]["spec"]["containers"][0]["image"], "booking:3");
    assert_eq!(stable["metadata"]["annotations"]["owner"], "team-a");
    let managers: Vec<&str> =
        stable["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"hopngo-deployer") && managers.contains(&"kubectl-annotate"), "{managers:?}");
    assert!(!managers.contains(&"hpa"), "force took the replicas from the autoscaler: {managers:?}");
    assert!(fake.object("deployments", "staging", "booking-canary").is_none(), "deleted");
    let web = fake.object("deployments", "staging", "web").expect("kept");
    assert_eq!(web["status"]["readyReplicas"].as_u64(), Some(2));
    assert_eq!(web["status"]["observedGeneration"], web["metadata"]["generation"], "the controller saw the JSON patch");
    assert_eq!(web["spec"]["template"]["spec"]["containers"][0]["image"], "web:2");
    let status_owner = web["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subresource"] == "status")
        .map(|m| m["manager"].clone());
    assert_eq!(status_owner, Some("kube-controller-manager".into()), "the controller owns the status it writes");
    let rollout = fake.object("rollouts", "staging", "booking").expect("kept");
    assert_eq!(rollout["metadata"]["annotations"]["rollout.argoproj.io/revision"], "4", "undo made revision 4");
    assert_eq!(
        (rollout["status"]["phase"].as_str(), rollout["status"]["currentStepIndex"].as_u64()),
        (Some("Paused"), Some(1))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
