//! The API's edges: bad input names the metric and field; idempotent starts; the web and job
//! providers against real endpoints and processes; the judge over gRPC.

mod common;

use std::time::Duration;

use common::{metric, metric_phase, phase, prometheus, secs, start};
use hopngo_proto::analyzer::{self as pb, metric::Provider};
use hopngo_testkit::{db::TestDb, prometheus::Endpoint};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_metric_and_field() {
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let ok = || {
        let mut m = metric("error-rate", prometheus("http://127.0.0.1:9090", "up"));
        m.success_condition = "result < 0.01".into();
        m
    };
    let mut cases: Vec<(pb::Metric, &str, &str)> = Vec::new();
    let mut m = ok();
    m.success_condition = "result <".into();
    cases.push((m, "metrics[0].success_condition", "metric \"error-rate\": \"result <\": unexpected end of input"));
    let mut m = ok();
    m.failure_condition = "reslt > 1".into();
    cases.push((m, "metrics[0].failure_condition", "unknown name \"reslt\""));
    let mut m = ok();
    m.provider = None;
    cases.push((m, "metrics[0].provider", "exactly one of prometheus, scrape, web, job"));
    let mut m = ok();
    m.interval = Some(prost_types::Duration { seconds: -5, nanos: 0 });
    cases.push((m, "metrics[0].interval", "must not be negative"));
    let mut m = ok();
    m.interval = secs(10.0);
    m.count = 0;
    cases.push((m, "metrics[0].count", "only an open-ended run"));
    let mut m = ok();
    m.count = 3;
    cases.push((m, "metrics[0].count", "3 measurements need an interval"));
    let mut m = ok();
    m.failure_limit = Some(-2);
    cases.push((m, "metrics[0].failure_limit", "-2 is below -1"));
    let mut m = ok();
    m.provider = Some(prometheus("http://127.0.0.1:9090", "x{a=\"{{args.nope}}\"}"));
    cases.push((m, "metrics[0].prometheus.query", "unknown argument \"nope\""));
    let mut m = ok();
    m.provider = Some(prometheus("ftp://example", "up"));
    cases.push((m, "metrics[0].prometheus.address", "is not http"));
    let mut m = ok();
    m.provider = Some(Provider::Scrape(pb::ScrapeProvider {
        url: "http://127.0.0.1:9465/metrics".into(),
        expression: "sum(x)".into(),
        window: None,
        timeout: None,
    }));
    cases.push((m, "metrics[0].scrape.expression", "unknown function \"sum\""));
    let mut m = ok();
    m.provider = Some(Provider::Job(pb::JobProvider { command: vec![], timeout: None, env: Default::default() }));
    cases.push((m, "metrics[0].job.command", "must name a program"));
    // Hostile: nesting that would overflow a recursive parser, commands of the caller's choosing,
    // providers pointed at metadata services or hosts the config does not allow, unbounded counts.
    let mut m = ok();
    m.success_condition = format!("{}result{} < 1", "(".repeat(1000), ")".repeat(1000));
    cases.push((m, "metrics[0].success_condition", "nested more than 100 levels deep"));
    let mut m = ok();
    m.failure_condition = format!("{}true", "!".repeat(5000));
    cases.push((m, "metrics[0].failure_condition", "nested more than 100 levels deep"));
    let mut m = ok();
    m.provider = Some(Provider::Scrape(pb::ScrapeProvider {
        url: "http://127.0.0.1:9465/metrics".into(),
        expression: format!("{}x{}", "ratio(".repeat(500), ", 1)".repeat(500)),
        window: None,
        timeout: None,
    }));
    cases.push((m, "metrics[0].scrape.expression", "nested more than 100 levels deep"));
    for command in [vec!["id"], vec!["cat", "/etc/shadow"], vec!["env"], vec!["sh", "-c", "echo 2 of 9 failed; exit 1"]]
    {
        let mut m = ok();
        m.provider = Some(Provider::Job(pb::JobProvider {
            command: command.iter().map(|c| c.to_string()).collect(),
            timeout: None,
            env: Default::default(),
        }));
        cases.push((m, "metrics[0].job.command", "commands are never taken from a request"));
    }
    for (address, reason) in [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]:9090", "link-local"),
        ("http://metadata.google.internal", "cloud metadata"),
        ("http://10.1.2.3:9090", "not an allowed host"),
        ("https://example.com", "not an allowed host"),
    ] {
        let mut m = ok();
        m.provider = Some(prometheus(address, "up"));
        cases.push((m, "metrics[0].prometheus.address", reason));
        let mut m = ok();
        m.provider = Some(Provider::Web(pb::WebProvider {
            url: format!("{address}/x"),
            json_path: "$.ok".into(),
            ..Default::default()
        }));
        cases.push((m, "metrics[0].web.url", reason));
    }
    let mut m = ok();
    m.interval = secs(1.0);
    m.count = u32::MAX;
    cases.push((m, "metrics[0].count", "4294967295 is more than 86400 measurements"));
    let mut m = ok();
    m.measurement_retention = u32::MAX;
    cases.push((m, "metrics[0].measurement_retention", "is more than 1000"));
    let mut m = ok();
    m.severity = 999;
    cases.push((m, "metrics[0].severity", "999 is not a MetricSeverity"));
    let mut m = ok();
    m.name = "x".repeat(1 << 20);
    cases.push((m, "metrics[0].name", "at most 256 are allowed"));
    for (m, field, reason) in cases {
        let err = analyzer
            .client
            .clone()
            .start_analysis_run(pb::StartAnalysisRunRequest {
                metrics: vec![ok(), m].into_iter().skip(1).collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}: ")), "{field}: {}", err.message());
        assert!(err.message().contains(reason), "{field}: {}", err.message());
    }
    let err = analyzer
        .client
        .clone()
        .start_analysis_run(pb::StartAnalysisRunRequest { metrics: vec![ok(), ok()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "metrics[1].name: \"error-rate\" is used twice");
    let err =
        analyzer.client.clone().get_analysis_run(pb::GetAnalysisRunRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "id: \"nope\" is not a run id"));
    let err = analyzer
        .client
        .clone()
        .get_analysis_run(pb::GetAnalysisRunRequest { id: uuid::Uuid::now_v7().to_string() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analyzer.runs").fetch_one(&mut conn).await.unwrap();
    assert_eq!(rows, 0, "nothing stored for refused requests");
    // Measure and CheckProviders refuse the same; CheckProviders says nothing about files that
    // are not declared jobs (a program that exists and one that does not get the same answer).
    let job = |program: &str| {
        metric(
            "probe",
            Provider::Job(pb::JobProvider { command: vec![program.into()], timeout: None, env: Default::default() }),
        )
    };
    let mut answers = Vec::new();
    for program in ["/etc/passwd", "/no/such/file"] {
        let err = analyzer
            .client
            .clone()
            .check_providers(pb::CheckProvidersRequest { metrics: vec![job(program)], ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        answers.push(err.message().replace(program, "PROGRAM"));
        let err = analyzer
            .client
            .clone()
            .measure(pb::MeasureRequest { metric: Some(job(program)), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert_eq!(answers[0], answers[1]);
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_start() {
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let mut m = metric(
        "smoke",
        Provider::Job(pb::JobProvider { command: vec!["true".into()], timeout: secs(5.0), env: Default::default() }),
    );
    m.initial_delay = secs(60.0);
    let request = pb::StartAnalysisRunRequest {
        metrics: vec![m.clone()],
        idempotency_key: "release-1/step-2/1".into(),
        ..Default::default()
    };
    let first = analyzer.client.clone().start_analysis_run(request.clone()).await.unwrap().into_inner().run.unwrap();
    let second = analyzer.client.clone().start_analysis_run(request.clone()).await.unwrap().into_inner().run.unwrap();
    assert_eq!(first.id, second.id);
    let mut different = request;
    different.metrics[0].initial_delay = secs(30.0);
    let err = analyzer.client.clone().start_analysis_run(different).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("idempotency_key: "), "{}", err.message());
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_and_job_providers() {
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let endpoint = Endpoint::start(r#"{"data": {"ok": true, "p95": 0.31}}"#).await.unwrap();
    let web = |path: &str, cond: &str| {
        let mut m = metric(
            "health",
            Provider::Web(pb::WebProvider {
                url: endpoint.url("/status?service={{args.track}}"),
                method: String::new(),
                headers: [("x-token".to_string(), "t".to_string())].into(),
                body: String::new(),
                json_path: path.into(),
                timeout: secs(2.0),
            }),
        );
        m.success_condition = cond.into();
        m
    };
    let ok = analyzer.start_run(vec![web("$.data.ok", "result == true")], false).await;
    let slow = analyzer.start_run(vec![web("$.data.p95", "result < 0.25")], false).await;
    let missing = analyzer.start_run(vec![web("$.data.p99", "result < 0.25")], false).await;
    let job = |script: &str| {
        metric(
            "smoke",
            Provider::Job(pb::JobProvider {
                command: vec!["sh".into(), "-c".into(), script.into()],
                timeout: secs(2.0),
                env: [("TARGET".to_string(), "{{args.track}}".to_string())].into(),
            }),
        )
    };
    let passes = analyzer.start_run(vec![job("echo smoke tests passed for $TARGET")], false).await;
    let fails = analyzer.start_run(vec![job("echo 2 of 9 failed; exit 1")], false).await;
    let hangs = analyzer.start_run(vec![job("sleep 30")], false).await;
    let expect = [
        (ok, pb::AnalysisPhase::Successful, "true"),
        (slow, pb::AnalysisPhase::Failed, "0.31"),
        (missing, pb::AnalysisPhase::Inconclusive, ""),
        (passes, pb::AnalysisPhase::Successful, "0"),
        (fails, pb::AnalysisPhase::Failed, "1"),
        (hangs, pb::AnalysisPhase::Failed, "-1"),
    ];
    for (run, expected, value) in expect {
        let run = analyzer.finish(&run.id, Duration::from_secs(15)).await;
        assert_eq!(phase(&run), expected, "{run:#?}");
        assert_eq!(metric_phase(&run.metrics[0]), expected);
        assert_eq!(run.metrics[0].measurements[0].value, value);
    }
    let passes =
        analyzer.client.clone().list_analysis_runs(pb::ListAnalysisRunsRequest::default()).await.unwrap().into_inner();
    let messages: Vec<&str> = passes.runs.iter().map(|r| r.metrics[0].measurements[0].message.as_str()).collect();
    assert!(messages.contains(&"smoke tests passed for good"), "job output kept: {messages:?}");
    assert!(messages.iter().any(|m| m.contains("still running after 2s; killed")), "{messages:?}");
    assert!(messages.contains(&"no data: $.data.p99 not in the response"), "{messages:?}");

    // The endpoint failing is an error measurement, not a failure.
    endpoint.set(503, "down");
    let mut m = web("$.data.ok", "result == true");
    m.consecutive_error_limit = Some(0);
    let run = analyzer.start_run(vec![m], false).await;
    let run = analyzer.finish(&run.id, Duration::from_secs(15)).await;
    assert_eq!(phase(&run), pb::AnalysisPhase::Error);
    assert!(run.metrics[0].measurements[0].message.contains("HTTP 503"), "{:?}", run.metrics[0].measurements[0]);

    // https is spoken, and the certificate is checked: a self-signed one is an error measurement.
    let tls = hopngo_testkit::receiver::Receiver::start_tls().await.unwrap();
    let mut m = metric(
        "health",
        Provider::Web(pb::WebProvider {
            url: tls.url("/status"),
            method: String::new(),
            headers: Default::default(),
            body: String::new(),
            json_path: "$.ok".into(),
            timeout: secs(2.0),
        }),
    );
    m.consecutive_error_limit = Some(0);
    let run = analyzer.start_run(vec![m], false).await;
    let run = analyzer.finish(&run.id, Duration::from_secs(15)).await;
    assert_eq!(phase(&run), pb::AnalysisPhase::Error);
    let message = run.metrics[0].measurements[0].message.to_lowercase();
    assert!(message.contains("certificate"), "{message}");
    assert!(tls.received().is_empty(), "nothing is sent to an untrusted server");
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_returns_the_statistics() {
    let db = TestDb::create().await.unwrap();
    let analyzer = start(&db).await;
    let control: Vec<f64> = (0..30).map(|i| 100.0 + (i % 7) as f64).collect();
    let slow: Vec<f64> = control.iter().map(|x| x * 1.4).collect();
    let request = pb::JudgeRequest {
        metrics: vec![
            pb::JudgeMetric {
                name: "latency".into(),
                control: control.clone(),
                experiment: slow,
                direction: pb::JudgeDirection::Increase as i32,
                group: "latency".into(),
                ..Default::default()
            },
            pb::JudgeMetric {
                name: "errors".into(),
                control: control.clone(),
                experiment: control.clone(),
                group: "errors".into(),
                ..Default::default()
            },
        ],
        group_weights: [("errors".to_string(), 60.0)].into(),
        ..Default::default()
    };
    let j = analyzer.client.clone().judge(request).await.unwrap().into_inner();
    assert_eq!((j.score, j.verdict.as_str()), (60.0, "fail"));
    let latency = &j.metrics[0];
    assert_eq!(pb::JudgeClassification::try_from(latency.classification).unwrap(), pb::JudgeClassification::High);
    assert!(latency.p_value < 1e-6 && latency.ci_lower > 0.0 && latency.u == 900.0, "{latency:?}");
    assert!((latency.mean_ratio - 1.4).abs() < 1e-12);
    assert_eq!(latency.control.unwrap().count, 30);
    assert_eq!(j.group_scores["errors"], 100.0);

    let err = analyzer
        .client
        .clone()
        .judge(pb::JudgeRequest {
            metrics: vec![pb::JudgeMetric {
                name: "x".into(),
                control: vec![1.0],
                experiment: vec![f64::INFINITY],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("metrics[0].experiment: "), "{}", err.message());
    analyzer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_rates_never_reach_back_before_the_run() {
    use hopngo_analyzer::{
        domain::{condition::Value, run::Observation},
        policy::{Policy, PolicySource},
        providers::Providers,
    };
    let page = |errors: u32, ok: u32| {
        format!("req{{track=\"canary\",class=\"5xx\"}} {errors}\nreq{{track=\"canary\",class=\"2xx\"}} {ok}\n")
    };
    let endpoint = Endpoint::start(&page(100, 100)).await.unwrap();
    let provider = hopngo_analyzer::domain::run::Provider::Scrape {
        url: endpoint.url("/metrics"),
        expression: r#"ratio(increase(req{class="5xx"}), increase(req))"#.into(),
        window: Duration::from_secs(60),
        timeout: Duration::from_secs(2),
    };
    let providers = Providers::new(std::sync::Arc::new(PolicySource::fixed(Policy::default())));
    // An earlier canary on the same track: 50 errors.
    providers.prime(&provider, std::time::Instant::now()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    endpoint.set(200, &page(150, 300));
    // This run starts now; its canary has no errors.
    let since = std::time::Instant::now();
    providers.prime(&provider, since).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.set(200, &page(150, 400));
    let value = |o: Observation| match o {
        Observation::Value { value: Value::Num(v), .. } => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(value(providers.measure(&provider, Some(since)).await), 0.0, "only what happened since the run started");
    let unbounded = value(providers.measure(&provider, None).await);
    assert!((unbounded - 50.0 / 350.0).abs() < 1e-12, "the whole history: {unbounded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_the_configured_user_with_only_the_allowed_environment() {
    let as_root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let db = TestDb::create().await.unwrap();
    let config = std::env::temp_dir().join(format!("hopngo-analyzer-runas-{}.yaml", uuid::Uuid::now_v7().simple()));
    let run_as = if as_root { "    runAs: nobody\n" } else { "" };
    std::fs::write(
        &config,
        format!(
            "environments: [{{name: staging}}]\nproviders:\n  allowedHosts: [127.0.0.1]\n  jobs:\n{run_as}    environment: [PATH]\n\
             analysisTemplates:\n  - name: t\n    metrics:\n      - name: whoami\n        provider: {{job: {{command: [sh, -c, 'id -u; env']}}}}\n\
             services:\n  - name: test\n    strategy: {{canary: {{steps: [{{setWeight: 100}}]}}}}\n"
        ),
    )
    .unwrap();
    // The analyzer's own environment has secrets a job must never see.
    assert!(std::env::var_os("PATH").is_some());
    let analyzer = common::start_with(&db, &config).await;
    let job = metric(
        "whoami",
        Provider::Job(pb::JobProvider {
            command: vec!["sh".into(), "-c".into(), "id -u; env".into()],
            timeout: secs(5.0),
            env: Default::default(),
        }),
    );
    let measured = analyzer
        .client
        .clone()
        .measure(pb::MeasureRequest { metric: Some(job), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let output = measured.measurement.unwrap().message;
    let mut lines = output.lines();
    let uid = lines.next().unwrap();
    if as_root {
        assert_eq!(uid, "65534", "ran as nobody: {output}");
    }
    let names: Vec<&str> = lines.filter_map(|l| l.split('=').next()).collect();
    assert!(names.contains(&"PATH"), "{output}");
    for name in names {
        assert!(["PATH", "PWD", "SHLVL", "_"].contains(&name), "{name} reached the job: {output}");
    }
    analyzer.stop().await;
    let _ = std::fs::remove_file(config);
}
