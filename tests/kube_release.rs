//! Releases through the real scheduler, analyzer, migrator and notifier processes, with the
//! deployer on its Kubernetes backend against the in-memory API server: a canary's HTTPRoute
//! weights at each step, the deployer SIGKILLed mid-release and restarted (it re-reads the
//! cluster and writes nothing twice), and a canary whose image cannot be pulled aborting at its
//! progress deadline with that reason, its traffic back on stable.

use std::time::Duration;

use hopngo_e2e::{Part, Stack, StackOptions, as_user, create_release, until};
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
    let db = TestDb::create().await.unwrap();
    let kubeconfig = std::env::temp_dir().join(format!("hopngo-kube-release-{}.yaml", std::process::id()));
    std::fs::write(&kubeconfig, fake.kubeconfig(NS)).unwrap();
    let options = StackOptions {
        deployer_args: vec![
            "--backend".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ],
        ..Default::default()
    };
    let mut stack = Stack::start(&db.url, CONFIG, options).await.unwrap();
    let mut releases = stack.releases().await;

    let first = create_release(&mut releases, "booking", "1.0").await;
    let first = until(&mut releases, &first.id, 60, |r| r.settled).await;
    assert_eq!(first.phase, pb::ReleasePhase::Succeeded as i32, "{first:#?}");
    assert_eq!(image(&fake, "booking-stable").as_deref(), Some("registry.example/hopngo/booking:1.0"));
    assert_eq!(canary_weight(&fake), (0, false));

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
