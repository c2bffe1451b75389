//! DeployerService over the Kubernetes backend, against the in-memory API server (real HTTP,
//! watches, server-side apply with managed fields, simulated Deployment controller), with desired
//! states in real PostgreSQL and gRPC on loopback.

use hopngo_testkit::access::AuthedChannel;
use hopngo_testkit::access::channel;
use std::time::Duration;

use clap::Parser as _;
use hopngo_deployer::server::{Args, run};
use hopngo_proto::deployer::{self as pb, deployer_service_client::DeployerServiceClient};
use hopngo_testkit::{
    db::TestDb,
    kube::{FakeKube, FakeKubeOptions, PodFailure},
    python::validate_objects,
    server::{InProcess, server_args},
};
use serde_json::{Value, json};
use tonic::Code;

const NS: &str = "hopngo-staging";

fn config() -> String {
    format!(
        "environments:
  - name: staging
    kubernetes: {{namespace: {NS}, gateway: {{name: public, namespace: gateways}}}}
  - name: production
services:
  - name: booking
    replicas: 2
    strategy: {{canary: {{steps: [{{setWeight: 25}}, {{setWeight: 50}}]}}}}
    kubernetes:
      image: registry.example/hopngo/booking
      route: {{hostnames: [booking.example]}}
      scaleDownDelay: 1s
      resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
  - name: gateway
    strategy: {{blueGreen: {{}}}}
    kubernetes: {{image: registry.example/hopngo/gateway, scaleDownDelay: 1s}}
  - name: chat
    strategy: {{canary: {{steps: [{{setWeight: 50}}]}}}}
    kubernetes: {{image: registry.example/hopngo/chat}}
  - name: local-only
    strategy: {{canary: {{steps: [{{setWeight: 50}}]}}}}
    local: {{command: [demo]}}
  - name: legacy
    strategy: {{canary: {{steps: []}}}}
    argoRollout: {{name: legacy-rollout, container: app, image: registry.example/hopngo/legacy}}
  - name: ghost
    strategy: {{canary: {{steps: []}}}}
    argoRollout: {{name: ghost, container: app, image: registry.example/hopngo/ghost}}
  - name: wrong
    strategy: {{canary: {{steps: []}}}}
    argoRollout: {{name: legacy-rollout, container: web, image: registry.example/hopngo/legacy}}
"
    )
}

struct Setup {
    fake: FakeKube,
    db: TestDb,
    dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn setup() -> Setup {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec![NS.into()],
        ready_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-kube-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("delivery.yaml"), config()).unwrap();
    std::fs::write(dir.join("kubeconfig"), fake.kubeconfig(NS)).unwrap();
    Setup { fake, db, dir: tempdir::Dir(dir) }
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

async fn start(s: &Setup) -> (DeployerServiceClient<AuthedChannel>, InProcess) {
    let mut argv = server_args("hopngo-deployer", &s.db.url, "1s");
    let dir = &s.dir.0;
    argv.extend([
        "--delivery-config".into(),
        dir.join("delivery.yaml").to_str().unwrap().into(),
        "--backend".into(),
        "kubernetes".into(),
        "--kubeconfig".into(),
        dir.join("kubeconfig").to_str().unwrap().into(),
    ]);
    let args = Args::parse_from(argv);
    let server = InProcess::start(|shutdown, ready| run(args, shutdown, Some(ready))).await;
    let client = DeployerServiceClient::new(channel(&server.url()));
    (client, server)
}

fn track(track: pb::Track, artifact: &str, replicas: u32) -> pb::TrackSpec {
    pb::TrackSpec { track: track as i32, artifact: artifact.into(), replicas }
}

fn target(service: &str, tracks: Vec<pb::TrackSpec>, weight: u32) -> pb::ApplyTargetRequest {
    pb::ApplyTargetRequest {
        target: Some(pb::TargetSpec {
            service: service.into(),
            environment: "staging".into(),
            tracks,
            canary_weight: weight,
            ..Default::default()
        }),
        idempotency_key: format!("{service}-{weight}-{}", uuid_like()),
    }
}

async fn status(client: &mut DeployerServiceClient<AuthedChannel>, service: &str) -> pb::TargetStatus {
    let request = pb::GetTargetStatusRequest { service: service.into(), environment: "staging".into() };
    client.get_target_status(request).await.unwrap().into_inner().status.unwrap()
}

async fn converged(client: &mut DeployerServiceClient<AuthedChannel>, service: &str) -> pb::TargetStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(client, service).await;
        if s.converged {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{service} did not converge: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The weighted rule's (backend, weight) pairs and whether the canary header rule is there.
fn route_weights(fake: &FakeKube, service: &str) -> (Vec<(String, i64)>, bool) {
    let route = fake.object("httproutes", NS, service).expect("the route exists");
    let rules = route["spec"]["rules"].as_array().unwrap();
    let header = rules.iter().any(|r| r["matches"][0]["headers"][0]["name"] == "x-hopngo-track");
    let weighted = rules.iter().find(|r| r["matches"][0].get("headers").is_none()).unwrap();
    let weights = weighted["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["weight"].as_i64().unwrap()))
        .collect();
    (weights, header)
}

fn image(deployment: &Value) -> &str {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap()
}

fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap().to_string())
        .collect()
}

async fn kube_client(s: &Setup) -> kube::Client {
    let file = kube::config::Kubeconfig::read_from(s.dir.0.join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Every object the deployer applied is valid for the real API server (built-in kinds with
/// kubernetes-validate, the HTTPRoute with the Gateway API CRD's schema); a broken copy is not.
fn assert_written_objects_are_valid(s: &Setup) {
    let applied: Vec<Value> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.method == "PATCH" && c.content_type.starts_with("application/apply-patch"))
        .map(|c| c.body)
        .collect();
    let kinds: std::collections::BTreeSet<&str> = applied.iter().filter_map(|o| o["kind"].as_str()).collect();
    let report = validate_objects(&applied).unwrap_or_else(|report| panic!("{report}"));
    assert!(report.contains(&format!("{} objects, 0 invalid", applied.len())), "{report}");
    let mut broken = applied.clone();
    for object in &mut broken {
        match object["kind"].as_str() {
            Some("HTTPRoute") => object["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(-1),
            Some("Deployment") => object["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!(7),
            _ => object["spec"]["ports"][0]["port"] = json!("eighty"),
        }
    }
    let report = validate_objects(&broken).expect_err("the validator refuses broken objects");
    assert!(report.contains(&format!("{} objects, {} invalid", broken.len(), broken.len())), "{kinds:?}: {report}");
}

#[tokio::test]
async fn canary_weights_are_written_to_the_route_step_by_step_and_a_restart_writes_nothing() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Canary, Stable};

    client.apply_target(target("booking", vec![track(Stable, "1.0", 2)], 0)).await.unwrap();
    let first = converged(&mut client, "booking").await;
    assert_eq!(first.address, format!("booking.{NS}.svc:80"));
    let stable = s.fake.object("deployments", NS, "booking-stable").unwrap();
    assert_eq!(image(&stable), "registry.example/hopngo/booking:1.0");
    assert_eq!(stable["metadata"]["labels"]["hopngo.io/track"], "stable");
    assert_eq!(stable["spec"]["template"]["metadata"]["labels"]["hopngo.io/revision"], "1.0");
    assert_eq!(managers(&stable)[0], "hopngo-deployer");
    for name in ["booking", "booking-stable", "booking-canary"] {
        assert!(s.fake.object("services", NS, name).is_some(), "Service {name}");
    }
    let route = s.fake.object("httproutes", NS, "booking").unwrap();
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(route["spec"]["hostnames"][0], "booking.example");
    assert_eq!(
        route_weights(&s.fake, "booking"),
        (vec![("booking-stable".into(), 100), ("booking-canary".into(), 0)], false)
    );

    // A person's annotation and an autoscaler's replica count, by other field managers.
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(kube_client(&s).await, NS);
    let by = |manager: &str| kube::api::PatchParams { field_manager: Some(manager.into()), ..Default::default() };
    let annotate = json!({"metadata": {"annotations": {"team": "bookings"}}});
    api.patch("booking-stable", &by("kubectl-annotate"), &kube::api::Patch::Merge(&annotate)).await.unwrap();
    let scale = json!({"spec": {"replicas": 3}});
    api.patch("booking-stable", &by("hpa-controller"), &kube::api::Patch::Merge(&scale)).await.unwrap();

    for weight in [25, 50] {
        let calls = s.fake.calls().len();
        client
            .apply_target(target("booking", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1)], weight))
            .await
            .unwrap();
        let st = converged(&mut client, "booking").await;
        assert_eq!(st.canary_weight, weight);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let route_writes = s.fake.calls()[calls..].iter().filter(|c| c.plural == "httproutes").count();
        assert_eq!(route_writes, 1, "one route write per weight change");
        assert_eq!(
            route_weights(&s.fake, "booking"),
            (vec![("booking-stable".into(), 100 - weight as i64), ("booking-canary".into(), weight as i64)], true),
            "weight {weight}"
        );
        let canary = st.tracks.iter().find(|t| t.track == Canary as i32).unwrap();
        assert_eq!(canary.address, format!("booking-canary.{NS}.svc:80"));
        assert_eq!((canary.ready_replicas, canary.failure_reason.as_str()), (1, ""));
    }
    let stable = s.fake.object("deployments", NS, "booking-stable").unwrap();
    assert_eq!(stable["metadata"]["annotations"]["team"], "bookings", "the person's annotation survives");
    assert_eq!(stable["spec"]["replicas"], 3, "the autoscaler's count survives");
    let canary = s.fake.object("deployments", NS, "booking-canary").unwrap();
    assert_eq!(image(&canary), "registry.example/hopngo/booking:1.1");

    // Promotion: stable on 1.1, the canary loses its traffic at once and goes after its delay.
    client.apply_target(target("booking", vec![track(Stable, "1.1", 2)], 0)).await.unwrap();
    converged(&mut client, "booking").await;
    assert_eq!(route_weights(&s.fake, "booking").0[1], ("booking-canary".into(), 0));
    eventually("the old canary is deleted after its delay", || {
        s.fake.object("deployments", NS, "booking-canary").is_none()
    })
    .await;

    // A restart re-reads the cluster and writes nothing.
    server.stop().await;
    let before = s.fake.resource_version();
    let (mut client, server) = start(&s).await;
    let st = converged(&mut client, "booking").await;
    assert_eq!(st.tracks[0].artifact, "1.1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.fake.writes_since(before), Vec::<String>::new(), "a restarted deployer wrote to the cluster");
    server.stop().await;
    assert_written_objects_are_valid(&s);
}

#[tokio::test]
async fn an_experiments_baseline_is_a_deployment_service_and_backend_of_its_own() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Baseline, Canary, Stable};
    let experiment =
        target("booking", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1), track(Baseline, "1.0", 1)], 20);
    client.apply_target(experiment).await.unwrap();
    converged(&mut client, "booking").await;
    let baseline = s.fake.object("deployments", NS, "booking-baseline").unwrap();
    assert_eq!(baseline["spec"]["replicas"], 1, "fresh replicas of their own");
    assert!(baseline["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().ends_with(":1.0"));
    assert_eq!(
        s.fake.object("services", NS, "booking-baseline").unwrap()["spec"]["selector"]["hopngo.io/track"],
        "baseline"
    );
    let route = s.fake.object("httproutes", NS, "booking").unwrap();
    let weighted = route["spec"]["rules"].as_array().unwrap().last().unwrap()["backendRefs"].clone();
    let split: Vec<(String, i64)> = weighted
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["weight"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        split,
        [("booking-stable".to_string(), 60), ("booking-canary".into(), 20), ("booking-baseline".into(), 20)]
    );

    // The experiment ends: the baseline's weight goes at once, its Deployment after the delay.
    client.apply_target(target("booking", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1)], 20)).await.unwrap();
    converged(&mut client, "booking").await;
    let route = s.fake.object("httproutes", NS, "booking").unwrap();
    let weighted = route["spec"]["rules"].as_array().unwrap().last().unwrap()["backendRefs"].clone();
    assert_eq!(weighted.as_array().unwrap().len(), 2);

    // Weights without a route would be replica counts: a baseline needs the route.
    let unrouted =
        target("chat", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1), track(Baseline, "1.0", 1)], 10);
    let err = client.apply_target(unrouted).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("target.tracks: \"chat\" has no kubernetes.route"), "{}", err.message());
    server.stop().await;
    assert_written_objects_are_valid(&s);
}

#[tokio::test]
async fn header_and_mirror_routes_are_rules_of_the_route_while_the_canary_runs() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Canary, Stable};
    let string = |kind: pb::string_match::Kind| Some(pb::StringMatch { kind: Some(kind) });
    let mut routed = target("booking", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1)], 0);
    let spec = routed.target.as_mut().unwrap();
    spec.header_routes = vec![pb::HeaderRoute {
        name: "beta".into(),
        matches: vec![pb::HeaderMatch {
            name: "x-beta".into(),
            value: string(pb::string_match::Kind::Prefix("y.".into())),
        }],
    }];
    spec.mirror_routes = vec![pb::MirrorRoute {
        name: "shadow".into(),
        percentage: 20,
        matches: vec![pb::RequestMatch {
            method: "GET".into(),
            path: string(pb::string_match::Kind::Prefix("/api".into())),
            headers: Vec::new(),
        }],
    }];
    client.apply_target(routed.clone()).await.unwrap();
    converged(&mut client, "booking").await;
    let route = s.fake.object("httproutes", NS, "booking").unwrap();
    let rules = route["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "track header, header route, mirror, weighted: {rules:#?}");
    assert_eq!(
        rules[1]["matches"][0]["headers"][0],
        json!({"type": "RegularExpression", "name": "x-beta", "value": "^y\\..*"}),
        "Gateway API has no header prefix: an anchored expression"
    );
    assert_eq!(rules[1]["backendRefs"][0]["name"], "booking-canary");
    assert_eq!(rules[2]["matches"][0]["method"], "GET");
    assert_eq!(
        rules[2]["filters"][0],
        json!({"type": "RequestMirror", "requestMirror": {
            "backendRef": {"group": "", "kind": "Service", "name": "booking-canary", "port": 80}, "percent": 20}})
    );
    assert_eq!(
        rules[2]["backendRefs"].as_array().unwrap().iter().map(|b| b["weight"].as_i64().unwrap()).collect::<Vec<_>>(),
        [100, 0],
        "a mirrored request is answered as any other"
    );

    // The release ends: no routes, the rules go with them.
    client.apply_target(target("booking", vec![track(Stable, "1.1", 2)], 0)).await.unwrap();
    converged(&mut client, "booking").await;
    let route = s.fake.object("httproutes", NS, "booking").unwrap();
    assert_eq!(route["spec"]["rules"].as_array().unwrap().len(), 1);

    // A service without a route has nowhere to put them.
    let mut unrouted = target("chat", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1)], 0);
    unrouted.target.as_mut().unwrap().header_routes = routed.target.as_ref().unwrap().header_routes.clone();
    let err = client.apply_target(unrouted).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("target.header_routes: \"chat\" has no kubernetes.route"), "{}", err.message());
    server.stop().await;
    assert_written_objects_are_valid(&s);
}

#[tokio::test]
async fn blue_green_switches_and_switches_back_by_selector_without_moving_a_pod() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Active, Preview};
    let selector =
        |name: &str| s.fake.object("services", NS, name).unwrap()["spec"]["selector"]["hopngo.io/revision"].clone();

    client.apply_target(target("gateway", vec![track(Active, "1.0", 1)], 0)).await.unwrap();
    converged(&mut client, "gateway").await;
    client.apply_target(target("gateway", vec![track(Active, "1.0", 1), track(Preview, "2.0", 1)], 0)).await.unwrap();
    converged(&mut client, "gateway").await;
    assert_eq!((selector("gateway-active"), selector("gateway-preview")), (json!("1.0"), json!("2.0")));
    let preview = s.fake.object("deployments", NS, "gateway-preview").unwrap();

    // The switch changes selectors only: the Deployment running 2.0 is untouched.
    client.apply_target(target("gateway", vec![track(Active, "2.0", 1), track(Preview, "1.0", 1)], 0)).await.unwrap();
    converged(&mut client, "gateway").await;
    assert_eq!(
        (selector("gateway"), selector("gateway-active"), selector("gateway-preview")),
        (json!("2.0"), json!("2.0"), json!("1.0"))
    );
    let after = s.fake.object("deployments", NS, "gateway-preview").unwrap();
    assert_eq!(after["metadata"]["resourceVersion"], preview["metadata"]["resourceVersion"], "no pod moved");

    // And back.
    client.apply_target(target("gateway", vec![track(Active, "1.0", 1), track(Preview, "2.0", 1)], 0)).await.unwrap();
    converged(&mut client, "gateway").await;
    assert_eq!(selector("gateway-active"), json!("1.0"));
    assert_eq!(
        image(&s.fake.object("deployments", NS, "gateway-active").unwrap()),
        "registry.example/hopngo/gateway:1.0"
    );
    server.stop().await;
    assert_written_objects_are_valid(&s);
}

#[tokio::test]
async fn without_a_route_the_canary_share_is_its_share_of_replicas() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Canary, Stable};
    let replicas = |name: &str| s.fake.object("deployments", NS, name).map(|d| d["spec"]["replicas"].as_i64().unwrap());
    client.apply_target(target("chat", vec![track(Stable, "1.0", 4)], 0)).await.unwrap();
    converged(&mut client, "chat").await;
    client.apply_target(target("chat", vec![track(Stable, "1.0", 4), track(Canary, "1.1", 1)], 25)).await.unwrap();
    let st = converged(&mut client, "chat").await;
    assert_eq!((replicas("chat-stable"), replicas("chat-canary")), (Some(3), Some(1)), "ceil(4 × 25%) = 1 of 4");
    assert_eq!(st.canary_weight, 25);
    let all = s.fake.object("services", NS, "chat").unwrap();
    assert_eq!(all["spec"]["selector"], json!({"hopngo.io/service": "chat"}), "the Service selects both tracks");
    assert!(s.fake.object("httproutes", NS, "chat").is_none());
    client.apply_target(target("chat", vec![track(Stable, "1.0", 4), track(Canary, "1.1", 1)], 50)).await.unwrap();
    converged(&mut client, "chat").await;
    assert_eq!((replicas("chat-stable"), replicas("chat-canary")), (Some(2), Some(2)));
    // Abort: stable back to all replicas first; the canary goes once stable is ready.
    client.apply_target(target("chat", vec![track(Stable, "1.0", 4)], 0)).await.unwrap();
    converged(&mut client, "chat").await;
    eventually("the canary is deleted", || replicas("chat-canary").is_none()).await;
    assert_eq!(replicas("chat-stable"), Some(4));
    server.stop().await;
    assert_written_objects_are_valid(&s);
}

#[tokio::test]
async fn a_canary_that_cannot_pull_its_image_gets_no_traffic_and_says_why() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Canary, Stable};
    s.fake.fail_image("booking:6.6.6", PodFailure::ImagePull);
    client.apply_target(target("booking", vec![track(Stable, "1.0", 2)], 0)).await.unwrap();
    converged(&mut client, "booking").await;
    client.apply_target(target("booking", vec![track(Stable, "1.0", 2), track(Canary, "6.6.6", 1)], 25)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let canary = loop {
        let st = status(&mut client, "booking").await;
        let canary = st.tracks.iter().find(|t| t.track == Canary as i32).cloned().unwrap();
        if !canary.failure_reason.is_empty() {
            assert!(!st.converged);
            assert!(st.message.contains("ImagePullBackOff"), "{}", st.message);
            break canary;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failure reported: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(canary.failure_reason, "ImagePullBackOff");
    assert!(canary.message.contains("registry.example/hopngo/booking:6.6.6"), "{}", canary.message);
    let (weights, header) = route_weights(&s.fake, "booking");
    assert_eq!((weights[1].1, header), (0, false), "an unready canary gets no traffic");

    // Abort: back to stable only; the route stays on stable, the broken canary goes.
    client.apply_target(target("booking", vec![track(Stable, "1.0", 2)], 0)).await.unwrap();
    converged(&mut client, "booking").await;
    eventually("the broken canary is deleted", || s.fake.object("deployments", NS, "booking-canary").is_none()).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_input_and_a_forbidden_cluster_are_named() {
    let s = setup().await;
    let (mut client, server) = start(&s).await;
    use pb::Track::Stable;
    let refused = |r: Result<tonic::Response<pb::ApplyTargetResponse>, tonic::Status>| r.unwrap_err();

    let e = refused(client.apply_target(target("booking", vec![track(Stable, "1.0/evil", 1)], 0)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("target.tracks[0].artifact:"), "{}", e.message());
    let e = refused(client.apply_target(target("local-only", vec![track(Stable, "1.0", 1)], 0)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("services.local-only.kubernetes is missing"), "{}", e.message());
    let mut production = target("booking", vec![track(Stable, "1.0", 1)], 0);
    production.target.as_mut().unwrap().environment = "production".into();
    let e = refused(client.apply_target(production).await);
    assert!(e.message().contains("environments.production.kubernetes is missing"), "{}", e.message());

    s.fake.forbid("patch", "deployments");
    let e = refused(client.apply_target(target("chat", vec![track(Stable, "1.0", 1)], 0)).await);
    assert_eq!(e.code(), Code::Unavailable, "RBAC can be fixed while the release waits");
    assert!(e.message().contains("applying Deployment hopngo-staging/chat-stable: forbidden"), "{}", e.message());
    assert!(s.fake.object("deployments", NS, "chat-stable").is_none());
    let preflight = client
        .preflight(pb::PreflightRequest { service: "chat".into(), environment: "staging".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(preflight.ok, "Services may still be written: {preflight:?}");

    // A route whose Gateway does not exist would carry no traffic: preflight says which.
    let booking = || pb::PreflightRequest { service: "booking".into(), environment: "staging".into() };
    let preflight = client.preflight(booking()).await.unwrap().into_inner();
    let gateway = preflight.checks.iter().find(|c| c.name == "gateway").expect("a gateway check");
    assert!(!preflight.ok && !gateway.ok, "{preflight:?}");
    assert_eq!(
        gateway.message,
        "Gateway gateways/public (environments.staging.kubernetes.gateway) does not exist: the route would carry no traffic"
    );
    create_gateway(&s.fake);
    let preflight = client.preflight(booking()).await.unwrap().into_inner();
    assert!(preflight.ok, "{preflight:?}");
    server.stop().await;
}

/// The Gateway `gateways/public` the config's routes attach to, as a platform team creates it.
fn create_gateway(fake: &FakeKube) {
    fake.create_namespace("gateways");
    fake.create(
        "gateways",
        "platform",
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "public", "namespace": "gateways"},
            "spec": {"gatewayClassName": "envoy", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
        }),
    );
}

/// A Rollout as a GitOps tool would have created it.
async fn create_rollout(s: &Setup) {
    let rollout = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "legacy-rollout", "namespace": NS, "annotations": {"owner": "team-legacy"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "legacy"}},
            "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [
                {"name": "proxy", "image": "envoy:1.30"},
                {"name": "app", "image": "registry.example/hopngo/legacy:1.0"}]}},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]}},
        },
    });
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        kube_client(s).await,
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
            "rollouts",
        ),
    );
    let params = kube::api::PatchParams::apply("argocd-controller");
    api.patch("legacy-rollout", &params, &kube::api::Patch::Apply(&rollout)).await.unwrap();
    eventually("Argo reports the first revision Healthy", || {
        s.fake.object("rollouts", NS, "legacy-rollout").is_some_and(|r| r["status"]["phase"] == "Healthy")
    })
    .await;
}

async fn control(
    client: &mut DeployerServiceClient<AuthedChannel>,
    service: &str,
    action: pb::RolloutAction,
    to_revision: u64,
) -> Result<pb::TargetStatus, tonic::Status> {
    let request = pb::ControlRolloutRequest {
        service: service.into(),
        environment: "staging".into(),
        action: action as i32,
        to_revision,
    };
    client.control_rollout(request).await.map(|r| r.into_inner().status.unwrap())
}

/// Waits until the Rollout's status satisfies `done`.
async fn rollout_until(
    client: &mut DeployerServiceClient<AuthedChannel>,
    what: &str,
    done: impl Fn(&pb::RolloutStatus) -> bool,
) -> pb::TargetStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(client, "legacy").await;
        if st.rollout.as_ref().is_some_and(&done) {
            return st;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn argo_mode_sets_the_image_and_drives_the_rollout_with_argo_s_own_patches() {
    let s = setup().await;
    create_rollout(&s).await;
    let (mut client, server) = start(&s).await;
    use pb::RolloutAction::{Abort, Promote, PromoteFull, Retry, Undo};
    let app_image = |s: &Setup| {
        let r = s.fake.object("rollouts", NS, "legacy-rollout").unwrap();
        let containers = r["spec"]["template"]["spec"]["containers"].clone();
        (containers[0]["image"].as_str().unwrap().to_string(), containers[1]["image"].as_str().unwrap().to_string())
    };

    client.apply_target(target("legacy", vec![track(pb::Track::Stable, "2.0", 3)], 0)).await.unwrap();
    assert_eq!(
        app_image(&s),
        ("envoy:1.30".into(), "registry.example/hopngo/legacy:2.0".into()),
        "only the app container"
    );
    let st =
        rollout_until(&mut client, "paused at the first pause", |r| r.phase == "Paused" && r.current_step_index == 1)
            .await;
    let r = st.rollout.as_ref().unwrap();
    assert_eq!((r.canary_weight, r.step_count, r.paused, r.revision), (20, 4, true, 2));
    assert!(!st.converged);
    assert!(
        st.message.contains("Rollout legacy-rollout is Paused: CanaryPauseStep (step 1/4, canary 20%)"),
        "{}",
        st.message
    );
    let rollout = s.fake.object("rollouts", NS, "legacy-rollout").unwrap();
    assert_eq!(rollout["metadata"]["annotations"]["owner"], "team-legacy", "the owner's fields are untouched");

    control(&mut client, "legacy", Promote, 0).await.unwrap();
    rollout_until(&mut client, "at 60%", |r| r.phase == "Paused" && r.current_step_index == 3 && r.canary_weight == 60)
        .await;
    control(&mut client, "legacy", Abort, 0).await.unwrap();
    rollout_until(&mut client, "aborted", |r| r.phase == "Degraded" && r.aborted && r.canary_weight == 0).await;
    control(&mut client, "legacy", Retry, 0).await.unwrap();
    rollout_until(&mut client, "retried from the start", |r| r.phase == "Paused" && r.current_step_index == 1).await;
    control(&mut client, "legacy", PromoteFull, 0).await.unwrap();
    let st = rollout_until(&mut client, "fully promoted", |r| r.phase == "Healthy").await;
    assert!(st.converged, "{st:?}");
    assert_eq!(st.canary_weight, 0);

    // Undo to revision 1: its ReplicaSet's template comes back as revision 3 (the ReplicaSet is
    // the same one, renumbered, as Argo does).
    control(&mut client, "legacy", Undo, 1).await.unwrap();
    let st = rollout_until(&mut client, "undone", |r| r.revision == 3).await;
    assert_eq!(st.rollout.unwrap().image, "registry.example/hopngo/legacy:1.0");
    assert_eq!(app_image(&s).1, "registry.example/hopngo/legacy:1.0");

    // Bad input names the field or the object.
    let e = control(&mut client, "legacy", Undo, 9).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("to_revision: Rollout hopngo-staging/legacy-rollout has no revision 9 (kept: 2, 3)"),
        "{}",
        e.message()
    );
    let e = control(&mut client, "legacy", Undo, 0).await.unwrap_err();
    assert_eq!(e.message(), "to_revision: UNDO needs the revision to go back to");
    let e = control(&mut client, "booking", Promote, 0).await.unwrap_err();
    assert!(e.message().contains("has no argoRollout"), "{}", e.message());
    let canary = vec![track(pb::Track::Stable, "2.0", 3), track(pb::Track::Canary, "2.1", 1)];
    let e = client.apply_target(target("legacy", canary, 10)).await.unwrap_err();
    assert!(e.message().starts_with("target.tracks: an Argo Rollout runs its own canary steps"), "{}", e.message());
    let e = client.apply_target(target("ghost", vec![track(pb::Track::Stable, "1.0", 1)], 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "a Rollout may still be created: the release waits");
    assert!(e.message().contains("Rollout hopngo-staging/ghost: not found"), "{}", e.message());
    let e = client.apply_target(target("wrong", vec![track(pb::Track::Stable, "1.0", 1)], 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("has no container \"web\" (containers: proxy, app)"), "{}", e.message());
    server.stop().await;

    // The Rollout as the deployer left it is still valid for its CRD.
    let mut rollout = s.fake.object("rollouts", NS, "legacy-rollout").unwrap();
    rollout.as_object_mut().unwrap().remove("status");
    validate_objects(&[rollout]).unwrap_or_else(|report| panic!("{report}"));
}

#[tokio::test]
async fn render_shows_what_an_apply_would_write_and_writes_nothing() {
    let s = setup().await;
    create_rollout(&s).await;
    let (mut client, server) = start(&s).await;
    use pb::Track::{Canary, Stable};
    client.apply_target(target("booking", vec![track(Stable, "1.0", 2)], 0)).await.unwrap();
    converged(&mut client, "booking").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = s.fake.resource_version();

    let render = |spec: pb::ApplyTargetRequest| pb::RenderTargetRequest { target: spec.target };
    let canary = target("booking", vec![track(Stable, "1.0", 2), track(Canary, "1.1", 1)], 25);
    let yaml = client.render_target(render(canary)).await.unwrap().into_inner().yaml;
    assert!(
        yaml.contains("# server-side apply as hopngo-deployer: Deployment hopngo-staging/booking-canary"),
        "{yaml}"
    );
    assert!(yaml.contains("image: registry.example/hopngo/booking:1.1"), "{yaml}");
    assert!(yaml.contains("# unchanged: Deployment hopngo-staging/booking-stable"), "{yaml}");
    assert!(yaml.contains("# unchanged: HTTPRoute hopngo-staging/booking"), "the canary is not up yet: {yaml}");
    let legacy = target("legacy", vec![track(Stable, "2.0", 3)], 0);
    let yaml = client.render_target(render(legacy)).await.unwrap().into_inner().yaml;
    assert!(yaml.contains("# JSON patch of Rollout hopngo-staging/legacy-rollout"), "{yaml}");
    assert!(yaml.contains("/spec/template/spec/containers/1/image"), "{yaml}");
    let e = client.render_target(render(target("booking", vec![track(Stable, "x y", 1)], 0))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    server.stop().await;

    // The command a person runs reads the cluster itself.
    let dir = &s.dir.0;
    // Asynchronously: the fake API server answers on this test's runtime.
    let run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_hopngo-deployer"))
            .arg("render")
            .args(args)
            .arg("--delivery-config")
            .arg(dir.join("delivery.yaml"))
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .output()
    };
    let out =
        run(&["booking", "--env", "staging", "--artifact", "1.1", "--weight", "50", "--replicas", "2"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Deployment hopngo-staging/booking-canary"), "{stdout}");
    let out = run(&["booking", "--env", "staging", "--artifact", "1.1/evil"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("hopngo-deployer render: --artifact: ") && stderr.lines().count() == 1, "{stderr}");
    assert_eq!(s.fake.writes_since(before), Vec::<String>::new(), "rendering wrote to the cluster");
}
