//! The analyzer in the embedded stack, every piece its own process: a faulty canary of a service
//! behind the deployer's proxy is measured by the analyzer's scrape provider (the SLO template's
//! metrics, read from the proxy's per-track counters) and aborted by the scheduler on its own;
//! traffic returns to stable. Also: the scrape provider against the proxy with a good and a bad
//! version, through `Measure`.

use hopngo_e2e::channel;
use std::{collections::BTreeMap, time::Duration};

use hopngo_deployer::traffic::{Load, run as traffic};
use hopngo_e2e::{Proc, binary, create_booking_release, until};
use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient},
    deployer::{self as dpb, deployer_service_client::DeployerServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{db::TestDb, fakes::Fakes};
use tokio_util::sync::CancellationToken;

fn config(demo: &str, metrics_url: &str) -> String {
    format!(
        r#"environments:
  - name: staging
providers:
  allowedHosts: [127.0.0.1]
analysisTemplates:
  - name: slo
    args:
      - name: metricsUrl
        value: "{metrics_url}"
    metrics:
      - name: error-rate-abort
        severity: critical
        interval: 1s
        initialDelay: 1s
        failureCondition: result > 0.05
        provider:
          scrape:
            url: "{{{{args.metricsUrl}}}}"
            window: 2s
            expression: ratio(rate(hopngo_proxy_requests_total{{service="{{{{args.service}}}}",track="{{{{args.track}}}}",class="5xx"}}), rate(hopngo_proxy_requests_total{{service="{{{{args.service}}}}",track="{{{{args.track}}}}"}}))
services:
  - name: booking
    replicas: 1
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {{}}
        analysis:
          templates: [slo]
          startingStep: 1
    local:
      command: ["{demo}", --name, booking, --version, "{{version}}", --port, "{{port}}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_canary_is_aborted_by_its_analysis() {
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-analysis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = binary("hopngo-demo-service", "hopngo-deployer").unwrap();
    let config_file = dir.join("delivery.yaml");
    // The deployer only reads `local`; the metrics URL is known once its admin port is.
    std::fs::write(&config_file, config(&demo.display().to_string(), "http://unknown/metrics")).unwrap();
    let common = |extra: &[&str]| -> Vec<String> {
        ["--listen", "127.0.0.1:0", "--database-url", &db.url, "--drain-timeout", "1s"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let deployer = Proc::start(
        &binary("hopngo-deployer", "hopngo-deployer").unwrap(),
        &common(&[
            "--admin-listen",
            "127.0.0.1:0",
            "--delivery-config",
            config_file.to_str().unwrap(),
            "--log-dir",
            dir.join("logs").to_str().unwrap(),
        ]),
        &[],
    )
    .await
    .unwrap();
    let metrics_url = format!("http://{}/metrics", deployer.admin);
    std::fs::write(&config_file, config(&demo.display().to_string(), &metrics_url)).unwrap();
    let analyzer = Proc::start(
        &binary("hopngo-analyzer", "hopngo-analyzer").unwrap(),
        &common(&["--admin-listen", "off", "--delivery-config", config_file.to_str().unwrap()]),
        &[],
    )
    .await
    .unwrap();
    let scheduler = Proc::start(
        &binary("hopngo-scheduler", "hopngo-scheduler").unwrap(),
        &common(&[
            "--admin-listen",
            "off",
            "--deployer-url",
            &deployer.grpc,
            "--analyzer-url",
            &analyzer.grpc,
            "--migrator-url",
            &fakes.migrator_server.url(),
            "--notifier-url",
            &fakes.notifier_server.url(),
            "--apply-config",
            config_file.to_str().unwrap(),
        ]),
        &[],
    )
    .await
    .unwrap();
    let mut releases = ReleaseServiceClient::new(channel(&scheduler.grpc));
    let mut deployer_client = DeployerServiceClient::new(channel(&deployer.grpc));

    let first = create_booking_release(&mut releases, "1.0.0").await;
    until(&mut releases, &first.id, 60, |r| r.settled).await;
    let status = deployer_client
        .get_target_status(dpb::GetTargetStatusRequest { service: "booking".into(), environment: "staging".into() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let url = format!("http://{}/api/v1/info", status.address);
    let stop = CancellationToken::new();
    let load = Load {
        url: url.clone(),
        rate: 100,
        duration: Duration::from_secs(120),
        max_requests: 12_000,
        timeout: Duration::from_secs(2),
    };
    let background = tokio::spawn({
        let stop = stop.clone();
        async move { traffic(&load, stop).await }
    });

    // The scrape provider, tried through Measure, on the good stable track.
    let mut analyzer_client = AnalyzerServiceClient::new(channel(&analyzer.grpc));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let error_rate = |track: &str| apb::Metric {
        name: "error-rate".into(),
        success_condition: "result < 0.05".into(),
        provider: Some(apb::metric::Provider::Scrape(apb::ScrapeProvider {
            url: metrics_url.clone(),
            expression: format!(
                r#"ratio(rate(hopngo_proxy_requests_total{{service="booking",track="{track}",class="5xx"}}), rate(hopngo_proxy_requests_total{{service="booking",track="{track}"}}))"#
            ),
            window: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            timeout: None,
        })),
        ..Default::default()
    };
    let measure = |m: apb::Metric| {
        let mut c = analyzer_client.clone();
        async move {
            c.measure(apb::MeasureRequest { metric: Some(m), args: Default::default() })
                .await
                .unwrap()
                .into_inner()
                .measurement
                .unwrap()
        }
    };
    let good = measure(error_rate("stable")).await;
    assert_eq!(apb::AnalysisPhase::try_from(good.phase).unwrap(), apb::AnalysisPhase::Successful, "{good:?}");
    assert_eq!(good.value, "0");

    // A faulty canary: half its answers are errors. Watched from its creation: the time its
    // ABORTED state reaches a watcher is when the abort was committed (plus the notification).
    let faulty = create_booking_release(&mut releases, "2.0.0+errors=0.5").await;
    let abort_seen = tokio::spawn({
        let mut client = releases.clone();
        let id = faulty.id.clone();
        async move {
            let mut stream = client.watch_release(pb::WatchReleaseRequest { id }).await.unwrap().into_inner();
            while let Some(item) = stream.message().await.unwrap() {
                if pb::ReleasePhase::try_from(item.release.unwrap().phase).unwrap() == pb::ReleasePhase::Aborted {
                    return std::time::SystemTime::now();
                }
            }
            panic!("the watch ended without an abort");
        }
    });
    let canary_up = until(&mut releases, &faulty.id, 60, |r| r.canary_weight == 50 || r.settled).await;
    assert_eq!(canary_up.canary_weight, 50, "{canary_up:#?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bad = measure(error_rate("canary")).await;
    if !bad.no_data {
        assert_eq!(apb::AnalysisPhase::try_from(bad.phase).unwrap(), apb::AnalysisPhase::Failed, "{bad:?}");
        let rate: f64 = bad.value.parse().unwrap();
        assert!((0.3..=0.7).contains(&rate), "canary error rate {rate}");
    }
    let aborted = until(&mut releases, &faulty.id, 60, |r| r.settled).await;
    assert_eq!(pb::ReleasePhase::try_from(aborted.phase).unwrap(), pb::ReleasePhase::Aborted, "{aborted:#?}");
    assert!(
        aborted.message.contains("background analysis failed (critical)")
            || aborted.reason.contains("background analysis failed (critical)"),
        "{aborted:#?}"
    );
    let background_run = aborted.analysis_runs.iter().find(|a| a.kind == "background").unwrap();
    let run = analyzer_client
        .get_analysis_run(apb::GetAnalysisRunRequest { id: background_run.run_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(apb::AnalysisPhase::try_from(run.phase).unwrap(), apb::AnalysisPhase::Failed);
    let failing = run.metrics[0].measurements.last().unwrap();
    assert_eq!(apb::AnalysisPhase::try_from(failing.phase).unwrap(), apb::AnalysisPhase::Failed);

    // Time from the failing measurement to the abort.
    let seen = abort_seen.await.unwrap();
    let finished = failing.finished_at.unwrap();
    let finished = std::time::UNIX_EPOCH + Duration::new(finished.seconds as u64, finished.nanos as u32);
    let latency = seen.duration_since(finished).expect("the abort follows the failing measurement");
    eprintln!("failing measurement → abort seen by a watcher: {} ms", latency.as_millis());
    assert!(latency < Duration::from_secs(2), "abort {latency:?} after the failing measurement");
    let events = fakes.notifier.events();
    assert!(
        events.iter().any(|e| e.release_id == faulty.id && e.data.as_ref().is_some_and(|d| d.phase == "ABORTED")),
        "the abort reached the notifier"
    );

    // The same run through hopctl.
    let hopctl = binary("hopctl", "hopctl").unwrap();
    // Measuring directly is for the scheduler and admins.
    let admin = hopngo_e2e::hopctl_env(hopngo_testkit::access::ADMIN_USER, &[hopngo_testkit::access::ADMIN_GROUP]);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&hopctl)
            .arg("--analyzer")
            .arg(&analyzer.grpc)
            .args(args)
            .envs(admin.clone())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, _) = cli(&["analysis", "get", &run.id, "-o", "json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["phase"], "FAILED");
    assert_eq!(json["severity"], "CRITICAL");
    assert_eq!(json["metrics"][0]["name"], "error-rate-abort");
    let (code, stdout, _) = cli(&["analysis", "list", "--release", &faulty.id]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(&run.id) && stdout.contains("FAILED"), "{stdout}");
    let (code, _, stderr) = cli(&["analysis", "watch", &run.id]);
    assert_eq!(code, Some(2), "a failed run exits 2: {stderr}");
    let expression = r#"ratio(rate(hopngo_proxy_requests_total{service="booking",track="stable",class="5xx"}), rate(hopngo_proxy_requests_total{service="booking",track="stable"}))"#;
    let (code, stdout, stderr) = cli(&[
        "analysis",
        "measure",
        "--scrape",
        &metrics_url,
        "--expression",
        expression,
        "--success",
        "result < 0.05",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("Phase:   SUCCESSFUL"), "{stdout}");
    let (code, _, stderr) = cli(&["analysis", "measure", "--scrape", &metrics_url, "--expression", "sum(x)"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.trim(),
        "hopctl: InvalidArgument: metric.scrape.expression: metric \"measure\": \"sum(x)\": unknown function \"sum\" at 0 (rate, increase, quantile, ratio)"
    );

    // Traffic is back on stable: every answer now comes from 1.0.0.
    let back = until(&mut releases, &faulty.id, 10, |r| r.canary_weight == 0).await;
    assert_eq!(back.stable_artifact, "1.0.0");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = traffic(
        &Load { url, rate: 200, duration: Duration::from_secs(5), max_requests: 200, timeout: Duration::from_secs(2) },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let versions: BTreeMap<String, u64> = after.iter().fold(BTreeMap::new(), |mut acc, ((v, _), n)| {
        *acc.entry(v.clone()).or_default() += n;
        acc
    });
    assert_eq!(versions.keys().collect::<Vec<_>>(), vec!["1.0.0"], "{after:?}");
    assert!(after.keys().all(|(_, status)| *status == 200), "{after:?}");

    stop.cancel();
    let _ = background.await;
    let _ = scheduler.terminate(Duration::from_secs(10)).await;
    let _ = analyzer.terminate(Duration::from_secs(10)).await;
    let _ = deployer.terminate(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
