//! One trace per release: the five services as real processes export their spans over OTLP to a
//! receiver in the test (the collector's gRPC TraceService), and a release — created through the
//! scheduler's API, migrating, smoke-tested by the analyzer, deployed, its events appended by the
//! notifier — is one trace: every advance of the release continues the request that created it,
//! every call the engine makes carries it to the deployer, analyzer and migrator, and every event
//! carries it to the notifier (CloudEvents' `traceparent` extension), each span's parent a span of
//! the same trace.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use hopngo_e2e::{Stack, StackOptions, create_release, until};
use hopngo_proto::release as pb;
use hopngo_testkit::{
    db::TestDb,
    otlp::{OtlpReceiver, ReceivedSpan},
};

const CONFIG: &str = r#"
environments:
  - name: staging
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        provider: {job: {command: ["{smoke}", --address, "{{args.address}}", --track, "{{args.track}}", --expect-version, "{{args.artifact}}"]}}
services:
  - name: booking
    replicas: 1
    migrations: {database: app}
    strategy:
      canary:
        steps:
          - setCanaryScale: {replicas: 1}
          - verify: {templates: [smoke]}
          - setWeight: 50
          - setWeight: 100
    local:
      command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]
"#;

const SERVICES: [&str; 5] =
    ["hopngo-scheduler", "hopngo-deployer", "hopngo-analyzer", "hopngo-migrator", "hopngo-notifier"];

/// The span each called service must show in the release's trace: its rpc path, or its name.
const EXPECTED: [(&str, &str); 4] = [
    ("hopngo-deployer", "/hopngo.deployer.v1.DeployerService/ApplyTarget"),
    ("hopngo-migrator", "/hopngo.migrator.v1.MigratorService/StartMigration"),
    ("hopngo-analyzer", "/hopngo.analyzer.v1.AnalyzerService/StartAnalysisRun"),
    ("hopngo-notifier", "event appended"),
];

fn attribute<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_release_through_all_five_services() {
    let db = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let scripts = std::env::temp_dir().join(format!("hopngo-e2e-traces-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("V1__bookings.sql"), "CREATE TABLE bookings (id int);\n").unwrap();
    let otlp = OtlpReceiver::start().await;
    let options = StackOptions {
        migrator_args: vec![
            "--target".into(),
            format!("app={}", app.url),
            "--locations".into(),
            format!("app={}", scripts.display()),
        ],
        log: Some("info".into()),
        otlp_endpoint: Some(otlp.endpoint.clone()),
        ..Default::default()
    };
    let stack = Stack::start(&db.url, CONFIG, options).await.unwrap();
    let mut releases = stack.releases().await;
    let first = create_release(&mut releases, "booking", "1.0.0").await;
    until(&mut releases, &first.id, 60, |r| r.settled).await;
    std::fs::write(scripts.join("V2__seats.sql"), "ALTER TABLE bookings ADD COLUMN seats int;\n").unwrap();
    let release = create_release(&mut releases, "booking", "1.1.0").await;
    let done = until(&mut releases, &release.id, 90, |r| r.settled).await;
    assert_eq!(done.phase, pb::ReleasePhase::Succeeded as i32, "{}", done.message);

    // Spans are exported in batches (every few seconds): wait for all five services in the
    // release's trace, with every parent received.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let (trace, spans) = loop {
        let all = otlp.spans();
        let trace = all
            .iter()
            .find(|s| {
                s.service == "hopngo-scheduler"
                    && s.name == "advance"
                    && attribute(s, "release") == Some(release.id.as_str())
            })
            .map(|s| s.trace_id.clone());
        if let Some(trace) = trace {
            let spans: Vec<ReceivedSpan> = all.iter().filter(|s| s.trace_id == trace).cloned().collect();
            let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
            let orphans = spans
                .iter()
                .filter(|s| !s.parent_span_id.is_empty() && !ids.contains(s.parent_span_id.as_str()))
                .count();
            // Each service exports in its own batches: a service's first span can arrive before
            // the one this test looks for, so wait for those too.
            let missing: Vec<&str> = EXPECTED
                .iter()
                .filter(|(service, name)| {
                    !spans.iter().any(|s| s.service == *service && attribute(s, "rpc.path").unwrap_or(&s.name) == *name)
                })
                .map(|(_, name)| *name)
                .collect();
            if services.len() == SERVICES.len() && orphans == 0 && missing.is_empty() {
                break (trace, spans);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trace has spans of {services:?}, {orphans} spans whose parent never arrived, and lacks {missing:?}"
            );
        }
        assert!(tokio::time::Instant::now() < deadline, "no advance span of the release was exported");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let by_id: BTreeMap<&str, &ReceivedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_service = |s: &ReceivedSpan| by_id.get(s.parent_span_id.as_str()).map(|p| p.service.as_str());

    // One root: the scheduler's CreateRelease call (the test's client sent no trace context).
    let roots: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(roots[0].service, "hopngo-scheduler");
    assert_eq!(attribute(roots[0], "rpc.path"), Some("/hopngo.release.v1.ReleaseService/CreateRelease"));
    // Every advance of this release, on whichever tick, is in it, a child of the creation.
    let all = otlp.spans();
    let advances: Vec<&ReceivedSpan> =
        all.iter().filter(|s| s.name == "advance" && attribute(s, "release") == Some(release.id.as_str())).collect();
    assert!(advances.len() >= 3, "{} advances", advances.len());
    assert!(advances.iter().all(|s| s.trace_id == trace && s.parent_span_id == roots[0].span_id), "{advances:?}");
    // The other services' spans hang off the scheduler's.
    for service in &SERVICES[1..] {
        let theirs: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service == *service).collect();
        assert!(!theirs.is_empty(), "{service} has spans in the release's trace");
        let entry_points: Vec<&&ReceivedSpan> = theirs.iter().filter(|s| parent_service(s) != Some(service)).collect();
        assert!(
            entry_points.iter().all(|s| parent_service(s) == Some("hopngo-scheduler")),
            "{service}: its first spans are children of the scheduler's: {entry_points:?}"
        );
    }
    println!(
        "trace {trace}: {} spans — {}",
        spans.len(),
        SERVICES
            .iter()
            .map(|s| format!("{s} {}", spans.iter().filter(|x| x.service == *s).count()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(scripts);
}
