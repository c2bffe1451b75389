//! Releases through the real scheduler, analyzer, migrator and notifier processes, with the
//! deployer on its Kubernetes backend against the in-memory API server: a canary's HTTPRoute
//! weights at each step, the deployer SIGKILLed mid-release and restarted (it re-reads the
//! cluster and writes nothing twice), and a canary whose image cannot be pulled aborting at its
//! progress deadline with that reason, its traffic back on stable; in Argo mode, a release of a
//! service's existing Rollout paused by Argo, promoted through HopNGo, and an abort that takes
//! the Rollout back to the stable image; and HopNGo's SLO template in its Kubernetes form, read
//! from a real Prometheus that scrapes the pods with HopNGo's scrape job, passing a good canary
//! and aborting one that fails half its requests.

use std::time::Duration;

use hopngo_e2e::{Part, Stack, StackOptions, as_user, create_release, hopngo_template, until};
use hopngo_proto::release as pb;
use hopngo_testkit::{
    db::TestDb,
    kube::{FakeKube, FakeKubeOptions, PodFailure},
};
use serde_json::Value;

const NS: &str = "hopngo-staging";

const CONFIG: &str = "
environments:
  - name: staging
    progressDeadline: 4s
    kubernetes: {namespace: hopngo-staging, gateway: {name: public, namespace: gateways}}
services:
  - name: booking
    replicas: 2
    strategy:
      canary:
        steps: [{setWeight: 25}, {pause: {}}, {setWeight: 50}, {pause: {}}]
    kubernetes:
      image: registry.example/hopngo/booking
      route: {hostnames: [booking.example]}
      scaleDownDelay: 1s
";

/// The five services on a throwaway database, the deployer on its Kubernetes backend against
/// `fake` (`name` names its kubeconfig file); the database lives as long as the first value.
async fn stack_on(fake: &FakeKube, config: &str, name: &str) -> (TestDb, Stack) {
    let db = TestDb::create().await.unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("{name}-{}.yaml", std::process::id()));
    std::fs::write(&kubeconfig, fake.kubeconfig(NS)).unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let deployer_args = ["--backend", "kubernetes", "--kubeconfig", &kubeconfig].map(String::from).to_vec();
    let stack = Stack::start(&db.url, config, StackOptions { deployer_args, ..Default::default() }).await.unwrap();
    (db, stack)
}

/// The canary's weight in the route's weighted rule, and whether the header rule is there.
fn canary_weight(fake: &FakeKube) -> (i64, bool) {
    let route = fake.object("httproutes", NS, "booking").expect("the route");
    let rules = route["spec"]["rules"].as_array().unwrap();
    let header = rules.len() == 2;
    let weighted = rules.last().unwrap();
    let canary = weighted["backendRefs"].as_array().unwrap().iter().find(|b| b["name"] == "booking-canary").unwrap();
    (canary["weight"].as_i64().unwrap(), header)
}

fn image(fake: &FakeKube, name: &str) -> Option<String> {
    let d: Value = fake.object("deployments", NS, name)?;
    d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().map(str::to_string)
}

fn applies(fake: &FakeKube) -> usize {
    fake.calls().iter().filter(|c| c.method == "PATCH" || c.method == "DELETE").count()
}

fn paused_at(weight: u32) -> impl Fn(&pb::Release) -> bool {
    move |r| r.phase == pb::ReleasePhase::Paused as i32 && r.canary_weight == weight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_on_kubernetes_through_the_scheduler_with_a_killed_deployer_and_a_bad_image() {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec![NS.into()],
        ready_after: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    fake.fail_image("booking:6.6.6", PodFailure::ImagePull);
    // The Gateway the route attaches to (preflight checks it exists).
    fake.create_namespace("gateways");
    fake.create(
        "gateways",
        "platform",
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "public", "namespace": "gateways"},
            "spec": {"gatewayClassName": "envoy", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }),
    );
    let (_db, mut stack) = stack_on(&fake, CONFIG, "hopngo-kube-release").await;
    let mut releases = stack.releases().await;

    let first = create_release(&mut releases, "booking", "1.0").await;
    let first = until(&mut releases, &first.id, 60, |r| r.settled).await;
    assert_eq!(first.phase, pb::ReleasePhase::Succeeded as i32, "{first:#?}");
    assert_eq!(image(&fake, "booking-stable").as_deref(), Some("registry.example/hopngo/booking:1.0"));
    assert_eq!(canary_weight(&fake), (0, false));

    // A person previews the next release through the scheduler's API: nothing is written.
    let before = fake.resource_version();
    let hopctl = hopngo_e2e::binary("hopctl", "hopctl").unwrap();
    let preview = tokio::process::Command::new(hopctl)
        .args(["--server", &stack.url(Part::Scheduler)])
        .envs(hopngo_e2e::hopctl_env("alice", &[]))
        .args(["render", "booking", "--env", "staging", "--artifact", "1.1", "--weight", "25"])
        .env_remove("HOPNGO_OUTPUT")
        .output()
        .await
        .unwrap();
    let yaml = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{yaml}{}", String::from_utf8_lossy(&preview.stderr));
    assert!(
        yaml.contains("# server-side apply as hopngo-deployer: Deployment hopngo-staging/booking-canary"),
        "{yaml}"
    );
    assert!(yaml.contains("image: registry.example/hopngo/booking:1.1"), "{yaml}");
    assert!(yaml.contains("# unchanged: Deployment hopngo-staging/booking-stable"), "{yaml}");
    assert_eq!(fake.writes_since(before), Vec::<String>::new(), "a preview wrote to the cluster");

    let canary = create_release(&mut releases, "booking", "1.1").await;
    until(&mut releases, &canary.id, 60, paused_at(25)).await;
    assert_eq!(canary_weight(&fake), (25, true), "25% at the first pause");
    assert_eq!(image(&fake, "booking-canary").as_deref(), Some("registry.example/hopngo/booking:1.1"));

    // SIGKILL the deployer mid-release: once back, it re-reads the cluster and writes nothing.
    stack.kill9(Part::Deployer).await.unwrap();
    let writes = applies(&fake);
    stack.start_part(Part::Deployer).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(applies(&fake), writes, "the restarted deployer wrote again what was in force");

    let promote = |id: &str| pb::PromoteReleaseRequest { id: id.into(), ..Default::default() };
    let mut releases = stack.releases().await;
    releases.promote_release(as_user(promote(&canary.id), "alice", &[])).await.unwrap();
    until(&mut releases, &canary.id, 60, paused_at(50)).await;
    assert_eq!(canary_weight(&fake), (50, true), "50% at the second pause");
    releases.promote_release(as_user(promote(&canary.id), "alice", &[])).await.unwrap();
    let done = until(&mut releases, &canary.id, 60, |r| r.settled).await;
    assert_eq!(done.phase, pb::ReleasePhase::Succeeded as i32, "{done:#?}");
    assert_eq!(image(&fake, "booking-stable").as_deref(), Some("registry.example/hopngo/booking:1.1"));
    assert_eq!(canary_weight(&fake).0, 0, "all traffic on stable");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while image(&fake, "booking-canary").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the old canary was not scaled down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An image that cannot be pulled: the canary never gets traffic and the release aborts at
    // its progress deadline, saying why.
    let bad = create_release(&mut releases, "booking", "6.6.6").await;
    let aborted = until(&mut releases, &bad.id, 60, |r| r.settled).await;
    assert_eq!(aborted.phase, pb::ReleasePhase::Aborted as i32, "{aborted:#?}");
    assert!(aborted.message.contains("ImagePullBackOff"), "{}", aborted.message);
    assert_eq!(canary_weight(&fake), (0, false), "traffic stayed on stable");
    assert_eq!(image(&fake, "booking-stable").as_deref(), Some("registry.example/hopngo/booking:1.1"));
    drop(stack);
}

const ARGO_CONFIG: &str = "
environments:
  - name: staging
    progressDeadline: 30s
    kubernetes: {namespace: hopngo-staging}
services:
  - name: legacy
    strategy: {canary: {steps: []}}
    argoRollout: {name: legacy-rollout, container: app, image: registry.example/hopngo/legacy}
";

fn rollout(fake: &FakeKube) -> Value {
    fake.object("rollouts", NS, "legacy-rollout").expect("the Rollout")
}

fn rollout_image(fake: &FakeKube) -> String {
    let r = rollout(fake);
    let containers = r["spec"]["template"]["spec"]["containers"].as_array().unwrap().clone();
    let app = containers.iter().find(|c| c["name"] == "app").unwrap();
    app["image"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_argo_rollout_released_promoted_and_aborted_through_the_scheduler() {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec![NS.into()],
        ready_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    fake.create(
        "rollouts",
        "argocd-controller",
        serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "legacy-rollout", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "legacy"}},
                "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [
                    {"name": "app", "image": "registry.example/hopngo/legacy:1.0"}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "1s"}}]}},
            },
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rollout(&fake)["status"]["phase"] != "Healthy" {
        assert!(tokio::time::Instant::now() < deadline, "the fake Argo never reported Healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_db, stack) = stack_on(&fake, ARGO_CONFIG, "hopngo-kube-argo").await;
    let mut releases = stack.releases().await;

    // The version already running: nothing for Argo to do.
    let first = create_release(&mut releases, "legacy", "1.0").await;
    let first = until(&mut releases, &first.id, 60, |r| r.settled).await;
    assert_eq!(first.phase, pb::ReleasePhase::Succeeded as i32, "{first:#?}");

    // A new version: Argo's first pause (20%) pauses the release; HopNGo's promote reaches Argo.
    let next = create_release(&mut releases, "legacy", "2.0").await;
    let paused = until(&mut releases, &next.id, 60, paused_at(20)).await;
    assert!(paused.message.contains("Argo paused the Rollout at step 1/4"), "{}", paused.message);
    assert_eq!(rollout_image(&fake), "registry.example/hopngo/legacy:2.0");
    let promote = pb::PromoteReleaseRequest { id: next.id.clone(), ..Default::default() };
    releases.promote_release(as_user(promote, "alice", &[])).await.unwrap();
    let done = until(&mut releases, &next.id, 60, |r| r.settled).await;
    assert_eq!(done.phase, pb::ReleasePhase::Succeeded as i32, "{done:#?}");
    let status = &rollout(&fake)["status"];
    assert_eq!((status["phase"].as_str(), status["stableRS"] == status["currentPodHash"]), (Some("Healthy"), true));

    // An abort: Argo's abort, then the stable image back; the Rollout ends Healthy on 2.0.
    let bad = create_release(&mut releases, "legacy", "3.0").await;
    until(&mut releases, &bad.id, 60, paused_at(20)).await;
    let abort = pb::AbortReleaseRequest { id: bad.id.clone(), reason: "error budget".into() };
    releases.abort_release(as_user(abort, "alice", &[])).await.unwrap();
    let aborted = until(&mut releases, &bad.id, 60, |r| r.settled).await;
    assert_eq!(aborted.phase, pb::ReleasePhase::Aborted as i32, "{aborted:#?}");
    assert!(aborted.message.starts_with("traffic back on 2.0"), "{}", aborted.message);
    assert_eq!(rollout_image(&fake), "registry.example/hopngo/legacy:2.0");
    assert_eq!(rollout(&fake)["status"]["phase"], "Healthy");
    let patches: Vec<Value> =
        fake.calls().into_iter().filter(|c| c.plural == "rollouts" && c.status).map(|c| c.body).collect();
    assert!(patches.contains(&serde_json::json!({"status": {"pauseConditions": null}})), "promote sent: {patches:?}");
    assert!(patches.contains(&serde_json::json!({"status": {"abort": true}})), "abort sent: {patches:?}");
    drop(stack);
}

/// HopNGo's scrape job (`deploy/hopngo/kubernetes/prometheus-scrape.yaml`) with its Kubernetes
/// discovery replaced by `http_sd` from `discovery`: Debian's Prometheus is built without
/// Kubernetes discovery, and the fake serves its pods with the labels that discovery gives them,
/// so the job's own relabeling is what makes the series.
fn hopngo_scrape_job(discovery: &str) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/hopngo/kubernetes/prometheus-scrape.yaml"
    ))
    .unwrap();
    let file: Value = serde_saphyr::from_str(&text).unwrap();
    let mut job = file["scrape_configs"][0].clone();
    let job_fields = job.as_object_mut().unwrap();
    assert!(job_fields.remove("kubernetes_sd_configs").is_some(), "the job discovers pods on Kubernetes");
    job_fields.insert("http_sd_configs".into(), serde_json::json!([{"url": discovery, "refresh_interval": "1s"}]));
    // YAML reads JSON: the job as one flow mapping.
    format!("  - {job}\n")
}

/// Stands in for the kubelets: serves each pod in `targets` (the fake's pods, as discovery
/// sees them) at its address, `podIP:containerPort`, with the demo service in the version its
/// image tag names; tags ending `-bad` answer half their API requests with 500, tags ending
/// `-nobook` fail 90 % of their bookings (answering 200).
async fn run_pods(
    targets: &Value,
    served: &mut std::collections::BTreeSet<String>,
    stop: &tokio_util::sync::CancellationToken,
) {
    for group in targets.as_array().unwrap() {
        let address = group["targets"][0].as_str().unwrap().to_string();
        if served.contains(&address) {
            continue;
        }
        let image = group["labels"]["__meta_kubernetes_pod_container_image"].as_str().unwrap();
        let version = image.rsplit_once(':').unwrap().1;
        let behaviour = hopngo_deployer::demo::Behaviour {
            error_rate: if version.ends_with("-bad") { 0.5 } else { 0.0 },
            business_failures: if version.ends_with("-nobook") { 0.9 } else { 0.0 },
            ..Default::default()
        };
        hopngo_deployer::demo::spawn(address.parse().unwrap(), "booking", version, behaviour, stop.child_token())
            .await
            .unwrap();
        served.insert(address);
    }
}

/// One booking to every served pod (as the `booking` Service spreads them).
async fn request_every_pod(served: &std::collections::BTreeSet<String>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for address in served {
        if let Ok(mut s) = tokio::net::TcpStream::connect(address).await {
            let _ = s.write_all(b"POST /api/v1/bookings HTTP/1.1\r\nhost: booking\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
        }
    }
}

/// Prometheus' answer to an instant query, as (labels, value) pairs.
async fn prometheus_query(address: &str, query: &str) -> Vec<(Value, f64)> {
    let url = format!("{address}/api/v1/query");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", &url, "--data-urlencode", &format!("query={query}")])
        .output()
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["metric"].clone(), r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopngo_slo_and_booking_completion_on_kubernetes_read_per_track_series_from_prometheus_and_abort_bad_canaries()
{
    // Pods get loopback addresses, so what serves them is reachable; all listen on one port.
    let fake = std::sync::Arc::new(
        FakeKube::start_with(FakeKubeOptions {
            namespaces: vec![NS.into()],
            pod_network: "127.0.86.0".parse().unwrap(),
            ..Default::default()
        })
        .await,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let discovery = hopngo_testkit::prometheus::Endpoint::start_typed("[]", "application/json").await.unwrap();
    let prometheus =
        hopngo_testkit::prometheus::Prometheus::start_scraping(&hopngo_scrape_job(&discovery.url("/"))).await.unwrap();

    // HopNGo's SLO and booking completion templates as they are, but for this Prometheus and a
    // window of a few scrapes.
    let [slo, completion] = ["slo", "booking-completion"].map(|name| {
        let mut template = hopngo_template(name, "kubernetes");
        for arg in template["args"].as_array_mut().unwrap() {
            match arg["name"].as_str().unwrap() {
                "prometheusAddress" => arg["value"] = prometheus.address.clone().into(),
                "rateWindow" => arg["value"] = "5s".into(),
                _ => {}
            }
        }
        template
    });
    let config = format!(
        "
environments:
  - name: staging
    progressDeadline: 60s
    kubernetes: {{namespace: {NS}}}
providers:
  allowedHosts: [127.0.0.1]
analysisTemplates:
  - {slo}
  - {completion}
services:
  - name: booking
    replicas: 2
    strategy:
      canary:
        steps: [{{setWeight: 50}}, {{pause: {{duration: 16s}}}}]
        # A version failing half its requests fails half its bookings too: the immediate abort
        # is left to the error rate (HopNGo's 0.9 would race it).
        analysis: {{templates: [slo, booking-completion], args: {{abortBelow: '0.3'}}}}
    kubernetes:
      image: registry.example/hopngo/booking
      containerPort: {port}
      metrics: {{path: /metrics}}
"
    );
    let (_db, stack) = stack_on(&fake, &config, "hopngo-kube-slo").await;
    let mut releases = stack.releases().await;

    // The kubelets and the callers, until the test ends: the discovery answers with the fake's
    // pods, new pods are served as they appear, and every pod gets about 40 requests a second.
    let stop = tokio_util::sync::CancellationToken::new();
    let pods = tokio::spawn({
        let (stop, fake) = (stop.clone(), std::sync::Arc::clone(&fake));
        async move {
            let mut served = std::collections::BTreeSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.is_cancelled() {
                tick.tick().await;
                let targets = fake.prometheus_pod_targets();
                discovery.set(200, &targets.to_string());
                run_pods(&targets, &mut served, &stop).await;
                request_every_pod(&served).await;
            }
        }
    });

    let first = create_release(&mut releases, "booking", "1.0").await;
    let first = until(&mut releases, &first.id, 60, |r| r.settled).await;
    assert_eq!(first.phase, pb::ReleasePhase::Succeeded as i32, "{first:#?}");

    // A good canary: the background analysis measures its track and the release goes on.
    let good = create_release(&mut releases, "booking", "1.1").await;
    let good = until(&mut releases, &good.id, 90, |r| r.settled).await;
    assert_eq!(good.phase, pb::ReleasePhase::Succeeded as i32, "{good:#?}");
    let background = good.analysis_runs.iter().find(|a| a.kind == "background").expect("the SLO ran");
    assert_eq!(background.phase, "SUCCESSFUL", "{background:#?}");

    // A canary that fails half its requests: the critical error rate, measured on the canary's
    // series only, aborts it; the stable version's series stayed clean.
    let bad = create_release(&mut releases, "booking", "1.2-bad").await;
    let aborted = until(&mut releases, &bad.id, 90, |r| r.settled).await;
    assert_eq!(aborted.phase, pb::ReleasePhase::Aborted as i32, "{aborted:#?}");
    assert!(aborted.message.contains("background analysis failed (critical)"), "{}", aborted.message);
    let background = aborted.analysis_runs.iter().find(|a| a.kind == "background").unwrap();
    assert!(background.message.contains("error-rate-abort"), "{background:#?}");

    // A canary whose bookings mostly fail while every answer is a fast 200: the SLO sees
    // nothing, the booking completion rate from Prometheus aborts it.
    let unbooked = create_release(&mut releases, "booking", "1.3-nobook").await;
    let aborted = until(&mut releases, &unbooked.id, 90, |r| r.settled).await;
    assert_eq!(aborted.phase, pb::ReleasePhase::Aborted as i32, "{aborted:#?}");
    let background = aborted.analysis_runs.iter().find(|a| a.kind == "background").unwrap();
    assert!(background.message.contains("booking-completion-abort"), "{background:#?}");
    assert!(!background.message.contains("error-rate"), "{background:#?}");

    let by_track = prometheus_query(
        &prometheus.address,
        r#"sum by (track, revision) (increase(http_server_request_duration_seconds_count{service="booking",environment="staging",http_response_status_code="500"}[5m]))"#,
    )
    .await;
    let errors = |track: &str, revision: &str| {
        by_track.iter().find(|(l, _)| l["track"] == track && l["revision"] == revision).map(|(_, v)| *v)
    };
    assert!(errors("canary", "1.2-bad").is_some_and(|e| e > 0.0), "{by_track:?}\n{}", prometheus.log());
    assert!(errors("stable", "1.1").is_none_or(|e| e == 0.0), "{by_track:?}");
    stop.cancel();
    pods.await.unwrap();
    drop(stack);
}
