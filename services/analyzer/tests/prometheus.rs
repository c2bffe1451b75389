//! Analysis runs against a real Prometheus holding known data: every phase outcome, no data,
//! unreachable and failing queries, range queries, fail-fast, termination, and a run that
//! survives an analyzer restart.

mod common;

use std::time::Duration;

use common::{metric, metric_phase, phase, prometheus, secs, start};
use hopngo_proto::analyzer::{self as pb, metric::Provider};
use hopngo_testkit::{
    db::TestDb,
    prometheus::{Endpoint, Prometheus},
};

const SERIES: &str = "\
# TYPE hopngo_test_error_ratio gauge
hopngo_test_error_ratio{track=\"good\"} 0.001
hopngo_test_error_ratio{track=\"bad\"} 0.2
hopngo_test_error_ratio{track=\"mid\"} 0.03
";

/// Prometheus scraping [`SERIES`], with data already queryable.
async fn prometheus_with_data() -> (Prometheus, Endpoint) {
    let endpoint = Endpoint::start(SERIES).await.unwrap();
    let prom = Prometheus::start(&[endpoint.addr]).await.unwrap();
    let url = format!("{}/api/v1/query?query=hopngo_test_error_ratio", prom.address);
    for _ in 0..100 {
        let body = http_get(&url).await;
        if body.contains("\"bad\"") {
            return (prom, endpoint);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("Prometheus never scraped the test series");
}

async fn http_get(url: &str) -> String {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!("GET {} HTTP/1.0\r\n\r\n", uri.path_and_query().unwrap());
    let _ = stream.write_all(request.as_bytes()).await;
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    body
}

fn every_second(mut m: pb::Metric, count: u32) -> pb::Metric {
    m.interval = secs(1.0);
    m.count = count;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_against_real_prometheus() {
    let (prom, _endpoint) = prometheus_with_data().await;
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let p = |q: &str| prometheus(&prom.address, q);

    let mut good = every_second(metric("error-rate", p("hopngo_test_error_ratio{track=\"{{args.track}}\"}")), 3);
    good.success_condition = "result < 0.01".into();

    let mut bad = every_second(metric("error-rate", p("hopngo_test_error_ratio{track=\"bad\"}")), 5);
    bad.success_condition = "result[0] < 0.01".into();
    bad.failure_limit = Some(1);

    let mut mid = metric("error-rate", p("hopngo_test_error_ratio{track=\"mid\"}"));
    mid.success_condition = "result < 0.01".into();
    mid.failure_condition = "result > 0.05".into();

    let mut nodata = metric("error-rate", p("hopngo_test_error_ratio{track=\"nobody\"}"));
    nodata.success_condition = "result < 0.01".into();
    let mut nodata_fails = nodata.clone();
    nodata_fails.no_data = pb::NoDataPolicy::Failed as i32;

    let mut unreachable = every_second(metric("error-rate", prometheus("http://127.0.0.1:1", "up")), 3);
    unreachable.consecutive_error_limit = Some(1);

    let mut bad_query = every_second(metric("error-rate", p("rate(")), 3);
    bad_query.consecutive_error_limit = Some(0);

    let mut range = metric(
        "error-rate",
        Provider::Prometheus(pb::PrometheusProvider {
            address: prom.address.clone(),
            query: "hopngo_test_error_ratio{track=\"good\"}".into(),
            timeout: secs(5.0),
            range: secs(5.0),
            step: secs(1.0),
        }),
    );
    range.success_condition = "len(result) >= 1 && max(result) < 0.01".into();

    let cases = [
        ("good", good, pb::AnalysisPhase::Successful),
        ("bad", bad, pb::AnalysisPhase::Failed),
        ("mid", mid, pb::AnalysisPhase::Inconclusive),
        ("nodata", nodata, pb::AnalysisPhase::Inconclusive),
        ("nodata-fails", nodata_fails, pb::AnalysisPhase::Failed),
        ("unreachable", unreachable, pb::AnalysisPhase::Error),
        ("bad-query", bad_query, pb::AnalysisPhase::Error),
        ("range", range, pb::AnalysisPhase::Successful),
    ];
    let mut started = Vec::new();
    for (name, m, expected) in cases {
        started.push((name, analyzer.start_run(vec![m], false).await.id, expected));
    }
    for (name, id, expected) in started {
        let run = analyzer.finish(&id, Duration::from_secs(30)).await;
        assert_eq!(phase(&run), expected, "{name}: {run:#?}");
        let m = &run.metrics[0];
        match name {
            "good" => {
                assert_eq!((m.count, m.successful, m.measurements.len()), (3, 3, 3));
                assert_eq!(m.measurements[0].value, "[0.001]");
                assert_eq!(run.args["track"], "good");
            }
            "bad" => {
                assert_eq!((m.count, m.failed), (2, 2), "fails on the measurement that exceeds failureLimit 1");
                assert_eq!(run.message, "metric \"error-rate\" failed: 2 failed measurement(s), limit 1");
                assert_eq!(run.severity, pb::MetricSeverity::Critical as i32);
            }
            "nodata" | "nodata-fails" => {
                assert!(m.measurements[0].no_data, "{name}");
                assert!(m.measurements[0].message.starts_with("no data"), "{name}");
            }
            "unreachable" => {
                assert_eq!(
                    (m.error, m.count),
                    (2, 0),
                    "two errors exceed consecutiveErrorLimit 1; errors use no count"
                );
                assert!(m.measurements[0].message.contains("127.0.0.1:1"), "{:?}", m.measurements[0].message);
                let gap =
                    m.measurements[1].started_at.unwrap().seconds - m.measurements[0].finished_at.unwrap().seconds;
                assert!((0..=2).contains(&gap), "retried after min(interval, 10 s): {gap}s");
            }
            "range" => assert!(m.measurements[0].value.starts_with("[0.001"), "{:?}", m.measurements[0].value),
            "bad-query" => assert!(m.measurements[0].message.contains("bad_data"), "{:?}", m.measurements[0].message),
            _ => {}
        }
        assert_eq!(metric_phase(m), expected, "{name}");
    }
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_terminate_and_restart() {
    let (prom, _endpoint) = prometheus_with_data().await;
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let p = |q: &str| prometheus(&prom.address, q);

    // Fail-fast: the failing metric stops the indefinite one, which counts as successful.
    let mut watch = every_second(metric("latency", p("hopngo_test_error_ratio{track=\"good\"}")), 0);
    watch.success_condition = "result < 0.01".into();
    let mut fails = metric("errors", p("hopngo_test_error_ratio{track=\"bad\"}"));
    fails.success_condition = "result < 0.01".into();
    fails.initial_delay = secs(1.5);
    fails.severity = pb::MetricSeverity::High as i32;
    let mut dry = metric("dry", p("hopngo_test_error_ratio{track=\"bad\"}"));
    dry.success_condition = "result < 0.01".into();
    dry.dry_run = true;
    let run = analyzer.start_run(vec![watch.clone(), fails, dry], true).await;
    let run = analyzer.finish(&run.id, Duration::from_secs(20)).await;
    assert_eq!(phase(&run), pb::AnalysisPhase::Failed);
    assert_eq!(run.severity, pb::MetricSeverity::High as i32, "severity of the failed metric, not the dry run's");
    assert_eq!(metric_phase(&run.metrics[0]), pb::AnalysisPhase::Successful);
    assert!(run.metrics[0].count >= 1);
    assert_eq!(metric_phase(&run.metrics[2]), pb::AnalysisPhase::Failed, "dry-run metrics are measured and reported");

    // Terminate: an open-ended run ends successful with what it measured.
    let run = analyzer.start_run(vec![watch.clone()], true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let terminated = analyzer
        .client
        .clone()
        .terminate_analysis_run(pb::TerminateAnalysisRunRequest { id: run.id.clone(), reason: "release done".into() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(phase(&terminated), pb::AnalysisPhase::Successful);
    assert_eq!(terminated.message, "terminated; no metric failed");
    assert!(terminated.metrics[0].count >= 1);
    let again = analyzer
        .client
        .clone()
        .terminate_analysis_run(pb::TerminateAnalysisRunRequest { id: run.id.clone(), reason: String::new() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(again.completed_at, terminated.completed_at, "terminating twice changes nothing");

    // Restart: a run half measured by one analyzer is finished by the next from its stored state.
    let mut slow = every_second(metric("error-rate", p("hopngo_test_error_ratio{track=\"good\"}")), 4);
    slow.success_condition = "result < 0.01".into();
    let run = analyzer.start_run(vec![slow], false).await;
    let before = loop {
        let got =
            analyzer.client.clone().get_analysis_run(pb::GetAnalysisRunRequest { id: run.id.clone() }).await.unwrap();
        let got = got.into_inner().run.unwrap();
        if got.metrics[0].count >= 2 {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    analyzer.stop().await;
    let analyzer = start(&db).await;
    let after = analyzer.finish(&run.id, Duration::from_secs(20)).await;
    assert_eq!(phase(&after), pb::AnalysisPhase::Successful);
    assert_eq!(after.metrics[0].count, 4, "counted on from {} stored measurements", before.metrics[0].count);
    assert_eq!(after.metrics[0].measurements[0].started_at, before.metrics[0].measurements[0].started_at);

    // List by label, newest first, paged.
    let page = analyzer
        .client
        .clone()
        .list_analysis_runs(pb::ListAnalysisRunsRequest {
            labels: [("test".to_string(), "yes".to_string())].into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.runs.len(), 2);
    assert_eq!(page.runs[0].id, run.id);
    let rest = analyzer
        .client
        .clone()
        .list_analysis_runs(pb::ListAnalysisRunsRequest {
            labels: [("test".to_string(), "yes".to_string())].into(),
            page_size: 2,
            page_token: page.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.runs.len(), 1);
    assert!(rest.next_page_token.is_empty());
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_tries_a_query() {
    let (prom, _endpoint) = prometheus_with_data().await;
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let mut m = metric("try", prometheus(&prom.address, "hopngo_test_error_ratio{track=\"{{args.track}}\"}"));
    m.success_condition = "result < 0.01".into();
    m.interval = secs(5.0);
    m.count = 10;
    let got = analyzer
        .client
        .clone()
        .measure(pb::MeasureRequest { metric: Some(m), args: [("track".to_string(), "bad".to_string())].into() })
        .await
        .unwrap()
        .into_inner()
        .measurement
        .unwrap();
    assert_eq!(pb::AnalysisPhase::try_from(got.phase).unwrap(), pb::AnalysisPhase::Failed);
    assert_eq!(got.value, "[0.2]");
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_providers_says_which_can_be_used() {
    let (prom, endpoint) = prometheus_with_data().await;
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let mut ok =
        metric("prometheus-ok", prometheus(&prom.address, "hopngo_test_error_ratio{track=\"{{args.track}}\"}"));
    ok.success_condition = "result < 0.01".into();
    let mut no_data = metric("prometheus-no-data", prometheus(&prom.address, "hopngo_test_error_ratio{track=\"new\"}"));
    no_data.success_condition = "result < 0.01".into();
    let mut bad_query = metric("prometheus-bad-query", prometheus(&prom.address, "sum(("));
    bad_query.success_condition = "result < 0.01".into();
    let mut down = metric("prometheus-down", prometheus("http://127.0.0.1:1", "up"));
    down.success_condition = "result < 0.01".into();
    let scrape = |name: &str, url: String| {
        let mut m = metric(
            name,
            Provider::Scrape(pb::ScrapeProvider {
                url,
                expression: "hopngo_test_error_ratio".into(),
                window: secs(10.0),
                timeout: secs(2.0),
            }),
        );
        m.success_condition = "result < 1".into();
        m
    };
    let job = |name: &str, program: &str| {
        metric(
            name,
            Provider::Job(pb::JobProvider {
                command: vec![program.into()],
                timeout: secs(5.0),
                env: Default::default(),
            }),
        )
    };
    let request = pb::CheckProvidersRequest {
        metrics: vec![
            ok,
            no_data,
            bad_query,
            down,
            scrape("scrape-ok", format!("http://{}/metrics", endpoint.addr)),
            scrape("scrape-down", "http://127.0.0.1:1/metrics".into()),
            job("job-ok", "true"),
            job("job-missing", "hopngo-no-such-smoke-test"),
        ],
        args: [("track".to_string(), "good".to_string())].into(),
    };
    let checks = analyzer.client.clone().check_providers(request).await.unwrap().into_inner().checks;
    let got: Vec<(&str, bool)> = checks.iter().map(|c| (c.metric.as_str(), c.ok)).collect();
    assert_eq!(
        got,
        vec![
            ("prometheus-ok", true),
            ("prometheus-no-data", true),
            ("prometheus-bad-query", false),
            ("prometheus-down", false),
            ("scrape-ok", true),
            ("scrape-down", false),
            ("job-ok", true),
            ("job-missing", false),
        ],
        "{checks:#?}"
    );
    assert!(checks[2].message.contains("bad_data"), "Prometheus' own reason: {}", checks[2].message);
    assert!(checks[7].message.contains("not found on PATH"), "{}", checks[7].message);
    // Nothing was stored.
    let runs = analyzer.client.clone().list_analysis_runs(pb::ListAnalysisRunsRequest::default()).await.unwrap();
    assert!(runs.into_inner().runs.is_empty());
    analyzer.stop().await;
}
