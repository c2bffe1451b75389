//! A hostile caller against the real binaries: every service gets requests meant to crash it
//! (nesting that would overflow a recursive parser), to run commands or read files of the
//! caller's choosing, to start replicas for made-up targets, to turn providers into a network
//! scanner, and to smuggle NUL bytes, control characters and megabytes into storage. Each is
//! refused with INVALID_ARGUMENT naming the field, nothing happens, and afterwards every process
//! still serves: checked with a client that is not tonic (Python grpcio, types learned from
//! reflection), which also sees that each port lists exactly what it serves.

use std::time::Duration;

use hopngo_e2e::{Part, Stack, StackOptions, TestAccess, as_user, channel};
use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient, metric::Provider},
    deployer::{self as dpb, deployer_service_client::DeployerServiceClient},
    migrator::{self as mpb, migrator_service_client::MigratorServiceClient},
    notifier::{self as npb, notifier_service_client::NotifierServiceClient},
    release as pb,
};
use hopngo_testkit::db::TestDb;
use hopngo_testkit::python::test_python;
use tonic::Code;

const CONFIG: &str = r#"
environments:
  - name: staging
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        provider: {job: {command: ["{smoke}", --address, "{{args.address}}"]}}
services:
  - name: booking
    replicas: 1
    migrations: {database: app}
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {}
    local:
      command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]
"#;

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    let status = result.expect_err("a hostile request was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(status.message().starts_with(field), "{:?} should name {field}", status.message());
    assert!(status.message().len() <= 2048, "the error echoes the whole input: {} bytes", status.message().len());
}

fn metric(provider: Provider, condition: &str) -> apb::Metric {
    apb::Metric {
        name: "probe".into(),
        success_condition: condition.into(),
        provider: Some(provider),
        ..Default::default()
    }
}

fn scrape(url: &str, expression: &str) -> Provider {
    Provider::Scrape(apb::ScrapeProvider {
        url: url.into(),
        expression: expression.into(),
        window: None,
        timeout: None,
    })
}

fn job(command: &[&str]) -> Provider {
    Provider::Job(apb::JobProvider {
        command: command.iter().map(|c| c.to_string()).collect(),
        timeout: None,
        env: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_every_process_still_serves() {
    let db = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let scripts = std::env::temp_dir().join(format!("hopngo-e2e-hostile-{}", std::process::id()));
    let elsewhere = std::env::temp_dir().join(format!("hopngo-e2e-hostile-x-{}", std::process::id()));
    for dir in [&scripts, &elsewhere] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(scripts.join("V1__bookings.sql"), "CREATE TABLE bookings (id int);\n").unwrap();
    std::fs::write(elsewhere.join("V2__evil.sql"), "CREATE TABLE evil (id int);\n").unwrap();
    let _ = std::fs::remove_file(scripts.join("escape"));
    std::os::unix::fs::symlink(&elsewhere, scripts.join("escape")).unwrap();
    let migrator_args =
        vec!["--target".into(), format!("app={}", app.url), "--locations".into(), format!("app={}", scripts.display())];
    let stack = Stack::start(&db.url, CONFIG, StackOptions { migrator_args, ..Default::default() }).await.unwrap();
    let pwned = std::env::temp_dir().join(format!("hopngo-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&pwned);

    // Analyzer: parsers that recursed without bound, commands of the caller's choosing, providers
    // aimed at metadata services and hosts the config does not allow.
    let mut analyzer = AnalyzerServiceClient::new(channel(&stack.url(Part::Analyzer)));
    let metrics = stack.metrics_url.clone();
    let measure = |m: apb::Metric| apb::MeasureRequest { metric: Some(m), ..Default::default() };
    let deep_condition = format!("{}result{} < 1", "(".repeat(1000), ")".repeat(1000));
    refused(
        analyzer.measure(measure(metric(scrape(&metrics, "1"), &deep_condition))).await,
        "metric.success_condition",
    );
    let nots = format!("{}true", "!".repeat(100_000));
    refused(analyzer.measure(measure(metric(scrape(&metrics, "1"), &nots))).await, "metric.success_condition");
    let ratios = format!("{}x{}", "ratio(".repeat(500), ", 1)".repeat(500));
    refused(analyzer.measure(measure(metric(scrape(&metrics, &ratios), ""))).await, "metric.scrape.expression");
    let touch = format!("touch {}", pwned.display());
    for command in [vec!["id"], vec!["cat", "/etc/shadow"], vec!["env"], vec!["sh", "-c", touch.as_str()]] {
        refused(analyzer.measure(measure(metric(job(&command), ""))).await, "metric.job.command");
        let start = apb::StartAnalysisRunRequest { metrics: vec![metric(job(&command), "")], ..Default::default() };
        refused(analyzer.start_analysis_run(start).await, "metrics[0].job.command");
    }
    let check = apb::CheckProvidersRequest { metrics: vec![metric(job(&["/etc/passwd"]), "")], ..Default::default() };
    refused(analyzer.check_providers(check).await, "metrics[0].job.command");
    for url in ["http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/", "http://10.9.8.7:9090/"]
    {
        refused(analyzer.measure(measure(metric(scrape(url, "1"), ""))).await, "metric.scrape.url");
    }

    // Migrator: scripts only from the configured locations.
    let mut migrator = MigratorServiceClient::new(channel(&stack.url(Part::Migrator)));
    let escape = scripts.join("escape").display().to_string();
    let filesystem = format!("filesystem:{}", elsewhere.display());
    let outside = elsewhere.display().to_string();
    for location in [outside.as_str(), filesystem.as_str(), escape.as_str(), "/etc", "/tmp"] {
        let target = Some(mpb::MigrationTarget {
            database: "app".into(),
            locations: vec![location.to_string()],
            ..Default::default()
        });
        refused(
            migrator.validate(mpb::ValidateRequest { target: target.clone(), ..Default::default() }).await,
            "target.locations[0]",
        );
        let start =
            mpb::StartMigrationRequest { target, command: mpb::MigrationCommand::Migrate as i32, ..Default::default() };
        refused(migrator.start_migration(start).await, "target.locations[0]");
    }
    let mut bad_version = mpb::StartMigrationRequest {
        target: Some(mpb::MigrationTarget { database: "app".into(), ..Default::default() }),
        command: mpb::MigrationCommand::Migrate as i32,
        ..Default::default()
    };
    bad_version.target_version = "-1".into();
    refused(migrator.start_migration(bad_version).await, "target_version");

    // Deployer: artifacts that read as options, megabytes, made-up environments.
    let mut deployer = DeployerServiceClient::new(channel(&stack.url(Part::Deployer)));
    let apply = |environment: &str, artifact: &str| dpb::ApplyTargetRequest {
        target: Some(dpb::TargetSpec {
            service: "booking".into(),
            environment: environment.into(),
            tracks: vec![dpb::TrackSpec { track: dpb::Track::Stable as i32, artifact: artifact.into(), replicas: 1 }],
            canary_weight: 0,
            ..Default::default()
        }),
        idempotency_key: "hostile".into(),
    };
    // Header routes: a broken expression, one that compiles to an automaton too big to run per
    // request, one longer than the contract allows, and a route with no canary to go to.
    let routed = |regex: &str, canary: bool| {
        let mut request = apply("staging", "1.0.0");
        let target = request.target.as_mut().unwrap();
        if canary {
            target.tracks.push(dpb::TrackSpec {
                track: dpb::Track::Canary as i32,
                artifact: "1.1.0".into(),
                replicas: 1,
            });
        }
        target.header_routes = vec![dpb::HeaderRoute {
            name: "beta".into(),
            matches: vec![dpb::HeaderMatch {
                name: "x-beta".into(),
                value: Some(dpb::StringMatch { kind: Some(dpb::string_match::Kind::Regex(regex.into())) }),
            }],
        }];
        request
    };
    let regex_field = "target.header_routes[0].matches[0].value.regex";
    refused(deployer.apply_target(routed("(beta", true)).await, regex_field);
    refused(deployer.apply_target(routed("[a-z]{1000}{1000}", true)).await, regex_field);
    refused(deployer.apply_target(routed(&"a".repeat(5000), true)).await, regex_field);
    refused(deployer.apply_target(routed("^beta$", false)).await, "target.header_routes");
    // An experiment's baseline with no canary to compare with, or taking more than half.
    let with_baseline = |canary: bool, weight: u32| {
        let mut request = apply("staging", "1.0.0");
        let target = request.target.as_mut().unwrap();
        let track = |track: dpb::Track, artifact: &str| dpb::TrackSpec {
            track: track as i32,
            artifact: artifact.into(),
            replicas: 1,
        };
        if canary {
            target.tracks.push(track(dpb::Track::Canary, "1.1.0"));
        }
        target.tracks.push(track(dpb::Track::Baseline, "1.0.0"));
        target.canary_weight = weight;
        request
    };
    refused(deployer.apply_target(with_baseline(false, 0)).await, "target.tracks");
    refused(deployer.apply_target(with_baseline(true, 60)).await, "target.canary_weight");
    refused(deployer.apply_target(apply("staging", "--help")).await, "target.tracks[0].artifact");
    refused(deployer.apply_target(apply("staging", &"1".repeat(1 << 20))).await, "target.tracks[0].artifact");
    refused(deployer.apply_target(apply("staging", "1.0\u{202E}")).await, "target.tracks[0].artifact");
    refused(deployer.apply_target(apply("moon", "1.0.0")).await, "target.environment");
    let status = deployer
        .get_target_status(dpb::GetTargetStatusRequest { service: "booking".into(), environment: "moon".into() })
        .await;
    assert_eq!(status.unwrap_err().code(), Code::NotFound, "no replica was started for the moon");

    // Scheduler and notifier: NUL bytes, control characters and megabytes never reach storage.
    let mut releases = stack.releases().await;
    let create = |artifact: &str, reason: &str, request_id: &str| {
        as_user(
            pb::CreateReleaseRequest {
                service: "booking".into(),
                environment: "staging".into(),
                artifact: artifact.into(),
                request_id: request_id.into(),
                reason: reason.into(),
                ..Default::default()
            },
            "mallory",
            &[],
        )
    };
    refused(releases.create_release(create("1.0.0", "because\0", "")).await, "reason");
    refused(releases.create_release(create("1.0.0", "\u{1b}[2J", "")).await, "reason");
    refused(releases.create_release(create("1.0.0", &"r".repeat(1 << 20), "")).await, "reason");
    refused(releases.create_release(create("1.0.0", "", &"k".repeat(1 << 20))).await, "request_id");
    refused(releases.create_release(create("1.0.\u{202E}1", "", "")).await, "artifact");
    let list = pb::ListReleasesRequest { service: "booking\0".into(), ..Default::default() };
    refused(releases.list_releases(list).await, "service");
    let mut notifier = NotifierServiceClient::new(channel(&stack.url(Part::Notifier)));
    let event = hopngo_proto::events::Event { id: "x\0".into(), ..Default::default() };
    refused(notifier.publish_events(npb::PublishEventsRequest { events: vec![event] }).await, "events[0].id");
    let webhook = npb::CreateWebhookRequest { url: format!("https://{}", "a".repeat(1 << 20)), ..Default::default() };
    refused(notifier.create_webhook(webhook).await, "url");
    // Trains: too many members or dependencies, NUL and bidi in names, a dependency on itself.
    let train = |members: Vec<pb::TrainMember>| {
        as_user(pb::CreateTrainRequest { environment: "staging".into(), members, ..Default::default() }, "alice", &[])
    };
    let member = |service: &str, artifact: &str, depends_on: Vec<String>| pb::TrainMember {
        service: service.into(),
        artifact: artifact.into(),
        depends_on,
    };
    let crowd: Vec<pb::TrainMember> = (0..51).map(|i| member(&format!("s{i}"), "1.0.0", vec![])).collect();
    refused(releases.create_train(train(crowd)).await, "members");
    refused(
        releases.create_train(train(vec![member("booking", "1.0.0", vec!["x".into(); 51])])).await,
        "members[0].depends_on",
    );
    refused(releases.create_train(train(vec![member("booking\0", "1.0.0", vec![])])).await, "members[0].service");
    refused(releases.create_train(train(vec![member("booking", "1.0\u{202E}", vec![])])).await, "members[0].artifact");
    refused(
        releases.create_train(train(vec![member("booking", "1.0.0", vec!["booking".into()])])).await,
        "members[0].depends_on[0]",
    );
    let approve = pb::ApproveReleaseGroupRequest { id: "../../etc".into(), reason: "\u{1b}[2J".into() };
    refused(releases.approve_release_group(as_user(approve, "bob", &["approvers"])).await, "reason");
    let listed = releases.list_releases(pb::ListReleasesRequest::default()).await.unwrap().into_inner();
    assert!(listed.releases.is_empty(), "nothing was stored: {:?}", listed.releases);
    assert!(!pwned.exists(), "a command of the caller's choosing ran");

    // Every process still serves; a foreign client sees exactly what each port serves, healthy,
    // and gets the same refusal for a NUL byte.
    // Over TLS, with a bearer token; health and reflection answer without one, the API does not.
    let address = |part: Part| stack.url(part).trim_start_matches("https://").to_string();
    let create =
        serde_json::json!({"service": "booking", "environment": "staging", "artifact": "1.0.0", "reason": "a\u{0}b"});
    let spec = serde_json::json!({
        "ca_file": TestAccess::shared().ca_file(),
        "token": hopngo_testkit::access::caller_token("alice", &[]),
        "targets": [
            {"address": address(Part::Scheduler), "calls": [
                {"method": "hopngo.release.v1.ReleaseService/CreateRelease", "request": create},
                {"method": "hopngo.release.v1.ReleaseService/CreateRelease", "request": create, "anonymous": true},
            ]},
            {"address": address(Part::Deployer)},
            {"address": address(Part::Analyzer)},
            {"address": address(Part::Migrator)},
            {"address": address(Part::Notifier)},
        ]
    });
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(test_python())
            .arg("tests/python/foreign_client.py")
            .arg(spec.to_string())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output(),
    )
    .await
    .expect("the foreign client finished")
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let probes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let plumbing =
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
    let expected: [&[&str]; 5] = [
        &["hopngo.config.v1.ConfigService", "hopngo.identity.v1.IdentityService", "hopngo.release.v1.ReleaseService"],
        &["hopngo.deployer.v1.DeployerService"],
        &["hopngo.analyzer.v1.AnalyzerService"],
        &["hopngo.migrator.v1.MigratorService"],
        &["hopngo.notifier.v1.NotifierService"],
    ];
    for (probe, own) in probes.as_array().unwrap().iter().zip(expected) {
        let mut want: Vec<&str> = own.iter().chain(plumbing.iter()).copied().collect();
        want.sort_unstable();
        let listed: Vec<&str> = probe["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(listed, want, "{probe}");
        for name in listed {
            assert_eq!(probe["health"][name], "SERVING", "{name} on {}", probe["address"]);
        }
    }
    let call = &probes[0]["calls"][0];
    assert_eq!(call["code"], "INVALID_ARGUMENT", "{call}");
    assert!(call["message"].as_str().unwrap().starts_with("reason: contains a NUL byte"), "{call}");
    let anonymous = &probes[0]["calls"][1];
    assert_eq!(anonymous["code"], "UNAUTHENTICATED", "{anonymous}");

    drop(stack);
    let _ = std::fs::remove_dir_all(&scripts);
    let _ = std::fs::remove_dir_all(&elsewhere);
}
