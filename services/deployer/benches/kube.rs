//! Kubernetes backend benchmark (`cargo bench -p hopngo-deployer --bench kube`), against the
//! in-memory API server answering every call after 2 ms (a real API server's round trip):
//!
//! 1. 100 services × 2 environments (namespaces), each with an HTTPRoute: API calls per release
//!    step (first deploy, setWeight 25, setWeight 50, promotion with the old canary's deletion),
//!    counted at the server.
//! 2. Abort: from ApplyTarget(stable only) on a 25 % canary to the server receiving the route's
//!    weight-0 write; one target at a time (the engine acting on one failing measurement), then
//!    all 200 at once. Target: p99 <= 100 ms.
//! 3. Memory: RSS of a `hopngo-deployer --backend kubernetes` process watching 1,000 Deployments
//!    (and their 1,000 pods). Target: <= 128 MiB.
//!
//! `HOPNGO_BENCH_SERVICES` changes the service count (CI runs a small form).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hopngo_delivery::DeliveryConfig;
use hopngo_deployer::{
    backend::{Backend as _, Target, TrackSpec},
    kubernetes::KubeBackend,
    proxy::Track,
};
use hopngo_testkit::{
    kube::{FakeKube, FakeKubeOptions},
    measure::proc_status,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const LATENCY: Duration = Duration::from_millis(2);
const ENVIRONMENTS: [(&str, &str); 2] = [("staging", "hopngo-staging"), ("production", "hopngo-production")];

fn config(services: usize) -> String {
    let mut yaml = String::from("environments:\n");
    for (env, ns) in ENVIRONMENTS {
        yaml.push_str(&format!("  - name: {env}\n    kubernetes: {{namespace: {ns}, gateway: {{name: public}}}}\n"));
    }
    yaml.push_str("services:\n");
    for i in 0..services {
        yaml.push_str(&format!(
            "  - name: svc-{i:03}\n    strategy: {{canary: {{steps: [{{setWeight: 25}}, {{setWeight: 50}}]}}}}\n    kubernetes: {{image: registry.example/svc-{i:03}, route: {{}}, scaleDownDelay: 1s}}\n"
        ));
    }
    yaml
}

fn target(service: &str, environment: &str, tracks: &[(Track, &str)], weight: u32) -> Target {
    Target {
        service: service.into(),
        environment: environment.into(),
        tracks: tracks.iter().map(|(t, a)| TrackSpec { track: *t, artifact: a.to_string(), replicas: 1 }).collect(),
        canary_weight: weight,
        routes: Default::default(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Applies `tracks`/`weight` to every target at once and waits until all converged; returns the
/// API calls the server answered meanwhile, per target.
async fn step(
    backend: &Arc<KubeBackend>,
    fake: &FakeKube,
    names: &[(String, &str)],
    tracks: &[(Track, &str)],
    weight: u32,
) -> f64 {
    let before = fake.calls().len();
    let mut tasks = Vec::new();
    for (service, env) in names {
        let backend = Arc::clone(backend);
        let t = target(service, env, tracks, weight);
        tasks.push(tokio::spawn(async move { backend.apply(&t).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (service, env) in names {
        while !backend.status(service, env).await.is_some_and(|o| o.converged) {
            assert!(Instant::now() < deadline, "{service} in {env} did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    calls_since(fake, before, names.len())
}

/// Calls per target since call number `before`, printed by kind and verb.
fn calls_since(fake: &FakeKube, before: usize, targets: usize) -> f64 {
    let calls = fake.calls();
    let mut by_kind = std::collections::BTreeMap::new();
    for c in &calls[before..] {
        *by_kind.entry(format!("{} {}", c.method, c.plural)).or_insert(0usize) += 1;
    }
    let detail: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {:.2}", *n as f64 / targets as f64)).collect();
    println!("    ({})", detail.join(", "));
    (calls.len() - before) as f64 / targets as f64
}

/// The time from `t0` to the server receiving `service`'s route with no canary weight.
fn weight_zero_write(fake: &FakeKube, ns: &str, service: &str, t0: Instant) -> Option<Duration> {
    fake.calls().into_iter().find_map(|c| {
        let zero = c.plural == "httproutes"
            && c.method == "PATCH"
            && c.namespace.as_deref() == Some(ns)
            && c.name.as_deref() == Some(service)
            && c.at >= t0
            && c.body["spec"]["rules"].as_array().and_then(|r| r.last()).is_some_and(|rule| {
                rule["backendRefs"].as_array().is_some_and(|b| {
                    b.iter().any(|b| b["name"].as_str().is_some_and(|n| n.ends_with("-canary")) && b["weight"] == 0)
                })
            });
        zero.then(|| c.at - t0)
    })
}

async fn abort_latencies(
    backend: &Arc<KubeBackend>,
    fake: &FakeKube,
    names: &[(String, &str)],
    all_at_once: bool,
) -> Vec<Duration> {
    let ns_of = |env: &str| ENVIRONMENTS.iter().find(|(e, _)| *e == env).unwrap().1;
    let mut starts = Vec::new();
    if all_at_once {
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (service, env) in names {
            let backend = Arc::clone(backend);
            let t = target(service, env, &[(Track::Stable, "1.0")], 0);
            tasks.push(tokio::spawn(async move { backend.apply(&t).await.unwrap() }));
            starts.push((service.clone(), *env, t0));
        }
        for t in tasks {
            t.await.unwrap();
        }
    } else {
        for (service, env) in names {
            let t0 = Instant::now();
            backend.apply(&target(service, env, &[(Track::Stable, "1.0")], 0)).await.unwrap();
            starts.push((service.clone(), *env, t0));
        }
    }
    let mut latencies: Vec<Duration> = starts
        .iter()
        .map(|(service, env, t0)| weight_zero_write(fake, ns_of(env), service, *t0).expect("a weight-0 write"))
        .collect();
    latencies.sort();
    latencies
}

fn report(label: &str, latencies: &[Duration]) {
    println!(
        "  {label}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms (target p99 <= 100 ms: {})",
        latencies.len(),
        pct(latencies, 0.5).as_secs_f64() * 1e3,
        pct(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        if pct(latencies, 0.99) <= Duration::from_millis(100) { "met" } else { "MISSED" }
    );
}

async fn steps_and_aborts(services: usize) {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: ENVIRONMENTS.iter().map(|(_, ns)| ns.to_string()).collect(),
        ready_after: Duration::from_millis(20),
        latency: LATENCY,
        history: 100_000,
        ..Default::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("hopngo-bench-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig("default")).unwrap();
    let config = DeliveryConfig::load(&config(services)).unwrap();
    let stop = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let backend = KubeBackend::connect(config, Some(kubeconfig), &registry, stop.clone()).await.unwrap();
    let names: Vec<(String, &str)> =
        (0..services).flat_map(|i| ENVIRONMENTS.iter().map(move |(env, _)| (format!("svc-{i:03}"), *env))).collect();
    println!("{} services × {} environments, {} ms per API call", services, ENVIRONMENTS.len(), LATENCY.as_millis());

    println!("API calls per target and step (counted at the server):");
    let first = step(&backend, &fake, &names, &[(Track::Stable, "1.0")], 0).await;
    println!("  first deploy (Deployment, 3 Services, HTTPRoute): {first:.2}");
    let canary = [(Track::Stable, "1.0"), (Track::Canary, "1.1")];
    let w25 = step(&backend, &fake, &names, &canary, 25).await;
    println!("  setWeight 25 (canary Deployment, then the route once it is ready): {w25:.2}");
    let w50 = step(&backend, &fake, &names, &canary, 50).await;
    println!("  setWeight 50 (the route): {w50:.2}");

    println!("abort of a 25 % canary, ApplyTarget(stable only) → the route's weight-0 write at the server:");
    step(&backend, &fake, &names, &canary, 25).await;
    report("one at a time", &abort_latencies(&backend, &fake, &names, false).await);
    step(&backend, &fake, &names, &canary, 25).await;
    report("all at once", &abort_latencies(&backend, &fake, &names, true).await);

    step(&backend, &fake, &names, &canary, 50).await;
    let before = fake.calls().len();
    step(&backend, &fake, &names, &[(Track::Stable, "1.1")], 0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ns_of = |env: &str| ENVIRONMENTS.iter().find(|(e, _)| *e == env).unwrap().1;
    for (service, env) in &names {
        while fake.object("deployments", ns_of(env), &format!("{service}-canary")).is_some() {
            assert!(Instant::now() < deadline, "the old canary of {service} was not deleted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let promotion = calls_since(&fake, before, names.len());
    println!("  promotion (stable to the new image, route to stable, old canary deleted): {promotion:.2}");
    stop.cancel();
}

async fn memory(deployments: usize) {
    let ns = "hopngo-production";
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec![ns.into()],
        ready_after: Duration::from_millis(1),
        ..Default::default()
    })
    .await;
    let name_of = |i: usize| format!("svc-{:03}-{}", i / 2, if i.is_multiple_of(2) { "stable" } else { "canary" });
    for i in 0..deployments {
        let name = name_of(i);
        fake.create(
            "deployments",
            "hopngo-deployer",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "hopngo-deployer", "hopngo.io/service": format!("svc-{:03}", i / 2)},
                             "annotations": {"hopngo.io/artifact": "1.0"}},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"hopngo.io/track": name}},
                         "template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "hopngo-deployer", "hopngo.io/track": name}},
                                      "spec": {"containers": [{"name": "app", "image": format!("registry.example/{name}:1.0"),
                                               "env": [{"name": "PADDING", "value": "x".repeat(512)}]}]}}},
            }),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = name_of(deployments - 1);
    while fake.object("deployments", ns, &last).is_none_or(|d| d["status"]["readyReplicas"] != 1) {
        assert!(Instant::now() < deadline, "the fake controller did not bring up the pods");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = std::env::temp_dir().join(format!("hopngo-bench-kube-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kubeconfig"), fake.kubeconfig(ns)).unwrap();
    std::fs::write(
        dir.join("delivery.yaml"),
        format!("environments:\n  - name: production\n    kubernetes: {{namespace: {ns}}}\nservices:\n  - name: svc-000\n    strategy: {{canary: {{steps: [{{setWeight: 50}}]}}}}\n    kubernetes: {{image: registry.example/svc-000}}\n"),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hopngo-deployer"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off", "--backend", "kubernetes", "--log", "warn"])
        .arg("--ephemeral-postgres")
        .args(hopngo_testkit::access::TestAccess::shared().plain_service_args())
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--delivery-config")
        .arg(dir.join("delivery.yaml"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt as _;
    // Listening means the watches have listed everything (the caches are filled first).
    while !line.contains("listening") {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(120), stdout.read_line(&mut line)).await;
        assert!(read.is_ok_and(|r| r.is_ok_and(|n| n > 0)), "the deployer did not start");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status(pid, "VmRSS:") as f64 / 1024.0;
    let peak = proc_status(pid, "VmHWM:") as f64 / 1024.0;
    println!(
        "memory: deployer watching {deployments} Deployments and {deployments} pods: RSS {rss:.1} MiB, peak {peak:.1} MiB (target <= 128 MiB: {})",
        if peak <= 128.0 { "met" } else { "MISSED" }
    );
    let _ = child.kill().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let services = std::env::var("HOPNGO_BENCH_SERVICES").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    steps_and_aborts(services).await;
    memory(services * 10).await;
}
