//! The steps users ask for, end to end with real processes: header routes and mirroring through
//! the deployer's proxy in front of real demo replicas.

use std::time::Duration;

use hopngo_e2e::{Part, Releases, Stack, StackOptions, binary, create_as, hopctl_env, scrape_sum, until};
use hopngo_proto::release::{self as pb, ReleasePhase as P};
use hopngo_testkit::db::TestDb;

const CONFIG: &str = r#"
environments:
  - name: staging
    progressDeadline: 60s
services:
  - name: booking
    replicas: 2
    strategy:
      canary:
        steps:
          - setHeaderRoute:
              name: beta-testers
              match:
                - headerName: X-Beta
                  headerValue: {regex: '^(yes|true)$'}
          - setMirrorRoute:
              name: shadow-reads
              percentage: 50
              match:
                - method: {exact: GET}
                  path: {prefix: /api/v1}
          - pause: {}
          - setWeight: 50
          - pause: {}
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
"#;

/// One GET through the proxy at `address` with `headers`: the version that answered.
async fn answered_by(address: &str, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!("GET /api/v1/info HTTP/1.1\r\nHost: {address}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-hopngo-version: ").map(str::to_string))
        .unwrap_or_default()
}

/// Versions that answered `n` requests with `headers`, in order of first answer.
async fn versions(address: &str, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..n {
        let version = answered_by(address, headers).await;
        if !seen.contains(&version) {
            seen.push(version);
        }
    }
    seen
}

async fn canary_requests(stack: &Stack) -> f64 {
    let admin = stack.metrics_url.trim_start_matches("http://").trim_end_matches("/metrics");
    let all = scrape_sum(admin, "hopngo_proxy_requests_total").await.unwrap();
    let body = hopngo_e2e::http_get(admin, "/metrics").await.unwrap();
    let canary: f64 = body
        .lines()
        .filter(|l| l.starts_with("hopngo_proxy_requests_total{") && l.contains("track=\"canary\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(canary <= all);
    canary
}

/// What `hopctl get ID` prints, as alice.
fn hopctl_get(stack: &Stack, id: &str) -> String {
    let shown = std::process::Command::new(binary("hopctl", "hopctl").unwrap())
        .args(["--server", &stack.url(Part::Scheduler), "get", id])
        .envs(hopctl_env("alice", &[]))
        .env_remove("HOPNGO_OUTPUT")
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).into_owned()
}

async fn step_index(releases: &mut Releases, id: &str, index: u32) -> pb::Release {
    until(releases, id, 60, |r| r.phase == P::Paused as i32 && r.current_step_index == index).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_and_mirroring_reach_the_canary_until_the_release_ends() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let mut releases = stack.releases().await;
    let first = create_as(&mut releases, "alice", "booking", "staging", "1.0.0").await;
    until(&mut releases, &first.id, 60, |r| r.settled).await;
    let address = stack.address("booking", "staging").await;

    // After preflight (step 0) and the two routes, the pause. The canary runs beside stable; only beta testers reach it, and it sees a copy of half the
    // reads nobody waits for.
    let r = create_as(&mut releases, "alice", "booking", "staging", "1.1.0").await;
    let paused = step_index(&mut releases, &r.id, 3).await;
    assert_eq!(paused.canary_weight, 0);
    assert_eq!(
        paused.traffic_routes,
        [
            "header beta-testers: X-Beta regex \"^(yes|true)$\"",
            "mirror shadow-reads: 50% of method exact \"GET\" and path prefix \"/api/v1\""
        ]
    );
    let shown = hopctl_get(&stack, &r.id);
    assert!(shown.contains("Route:       header beta-testers: X-Beta regex"), "{shown}");
    assert!(shown.contains("Route:       mirror shadow-reads: 50% of"), "{shown}");
    assert_eq!(versions(&address, 20, &[("X-Beta", "yes")]).await, ["1.1.0"]);
    assert_eq!(versions(&address, 20, &[("X-Beta", "no")]).await, ["1.0.0"]);
    let before = canary_requests(&stack).await;
    assert_eq!(versions(&address, 40, &[]).await, ["1.0.0"], "mirrored answers are discarded");
    let mut copied = 0.0;
    for _ in 0..50 {
        copied = canary_requests(&stack).await - before;
        if copied >= 19.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((19.0..=21.0).contains(&copied), "{copied} of 40 reads copied at 50%");

    // The routes stay with the weight, then go with the abort.
    let promote = pb::PromoteReleaseRequest { id: r.id.clone(), ..Default::default() };
    releases.promote_release(hopngo_e2e::as_user(promote, "alice", &[])).await.unwrap();
    let weighted = step_index(&mut releases, &r.id, 5).await;
    assert_eq!((weighted.canary_weight, weighted.traffic_routes.len()), (50, 2));
    assert_eq!(versions(&address, 20, &[("X-Beta", "true")]).await, ["1.1.0"]);
    let abort = pb::AbortReleaseRequest { id: r.id.clone(), reason: "enough".into() };
    releases.abort_release(hopngo_e2e::as_user(abort, "alice", &[])).await.unwrap();
    let aborted = until(&mut releases, &r.id, 60, |r| r.settled).await;
    assert!(aborted.traffic_routes.is_empty(), "{:?}", aborted.traffic_routes);
    assert_eq!(versions(&address, 20, &[("X-Beta", "yes")]).await, ["1.0.0"], "the route went with the abort");
    let after = canary_requests(&stack).await;
    versions(&address, 20, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(canary_requests(&stack).await, after, "no copies once the canary is gone");
}

const EXPERIMENT: &str = r#"
environments:
  - name: staging
    progressDeadline: 60s
analysisTemplates:
  - name: judge
    metrics:
      - name: error-ratio
        interval: 1s
        provider: {scrape: {url: "{metrics}", window: 2s, expression: {error-ratio}}}
      - name: latency-p90
        interval: 1s
        provider:
          scrape:
            url: "{metrics}"
            window: 2s
            expression: 'quantile(0.9, hopngo_proxy_request_duration_seconds{service="{{args.service}}",environment="{{args.environment}}",track="{{args.track}}"})'
services:
  - name: search
    strategy:
      canary:
        steps:
          - experiment:
              templates: [judge]
              weight: 25
              interval: 5s
              intervals: 2
              groupWeights: {errors: 50, latency: 50}
              metrics:
                error-ratio: {direction: increase, group: errors, critical: true, nanStrategy: replace}
                latency-p90: {direction: increase, group: latency, allowedIncrease: 2}
          - setWeight: 50
          - pause: {}
    local: {command: ["{demo}", --name, search, --version, "{version}", --port, "{port}"]}
"#;

async fn track_requests(stack: &Stack, track: &str) -> f64 {
    let admin = stack.metrics_url.trim_start_matches("http://").trim_end_matches("/metrics");
    let body = hopngo_e2e::http_get(admin, "/metrics").await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("hopngo_proxy_requests_total{") && l.contains(&format!("track=\"{track}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_passes_an_equal_canary_and_aborts_a_worse_one() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, EXPERIMENT, StackOptions::default()).await.unwrap();
    let mut releases = stack.releases().await;
    let first = create_as(&mut releases, "alice", "search", "staging", "1.0.0").await;
    until(&mut releases, &first.id, 60, |r| r.settled).await;
    let address = stack.address("search", "staging").await;
    let _traffic = hopngo_e2e::Traffic::start(&address, 100);

    // An experiment whose metrics do not tell the baseline from the canary is refused, and the
    // config in force stays.
    {
        use hopngo_proto::config::{ApplyConfigRequest, GetConfigRequest, config_service_client::ConfigServiceClient};
        let mut config = ConfigServiceClient::new(hopngo_e2e::channel(&stack.url(Part::Scheduler)));
        let before = config.get_config(GetConfigRequest::default()).await.unwrap().into_inner().version;
        let applied = std::fs::read_to_string(&stack.config_file).unwrap();
        let yaml = applied.replace("track=\"{{args.track}}\"", "track=\"canary\"");
        assert_ne!(yaml, applied, "the test changed the config");
        let refused = config.apply_config(ApplyConfigRequest { yaml }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with(
                "services[0].strategy.canary.steps[0].experiment.templates[0]: metric \"error-ratio\" of template \"judge\" does not use {{args.track}}"
            ),
            "{}",
            refused.message()
        );
        let after = config.get_config(GetConfigRequest::default()).await.unwrap().into_inner().version;
        assert_eq!(after, before, "nothing stored");
    }

    // Equal: 1.1.0 behaves as 1.0.0 does, on fresh replicas of each.
    let good = create_as(&mut releases, "alice", "search", "staging", "1.1.0").await;
    let paused = step_index(&mut releases, &good.id, 3).await;
    let e = &paused.experiments[0];
    assert_eq!((e.verdict.as_str(), e.judged.len(), e.weight), ("pass", 2, 25), "{e:?}");
    assert_eq!((e.baseline_artifact.as_str(), e.canary_artifact.as_str()), ("1.0.0", "1.1.0"));
    let last = &e.judged[1];
    assert!(last.score >= 95.0, "{last:?}");
    for m in &last.metrics {
        assert_eq!(m.classification, "PASS", "{m:?}");
        assert!(m.baseline_count >= 5 && m.canary_count >= 5, "samples of both tracks: {m:?}");
    }
    assert!(track_requests(&stack, "baseline").await > 50.0, "the baseline took its share");
    assert_eq!(paused.canary_weight, 50, "the experiment's baseline went before setWeight 50");
    let shown = hopctl_get(&stack, &good.id);
    assert!(shown.contains("Experiment (step 1): canary 1.1.0 against baseline 1.0.0 at 25% each: pass"), "{shown}");
    assert!(shown.contains("interval 2/2: score 100 (pass)"), "{shown}");
    assert!(shown.contains("latency-p90") && shown.contains("error-ratio"), "{shown}");
    let baseline_before = track_requests(&stack, "baseline").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(track_requests(&stack, "baseline").await, baseline_before, "no baseline after the experiment");
    let promote = pb::PromoteReleaseRequest { id: good.id.clone(), ..Default::default() };
    releases.promote_release(hopngo_e2e::as_user(promote, "alice", &[])).await.unwrap();
    until(&mut releases, &good.id, 60, |r| r.settled && r.phase == P::Succeeded as i32).await;

    // Worse: half its answers are errors and each takes 60 ms longer.
    let bad = create_as(&mut releases, "alice", "search", "staging", "1.2.0+errors=0.5,latency=60ms").await;
    let aborted = until(&mut releases, &bad.id, 60, |r| r.settled).await;
    assert_eq!(aborted.phase, P::Aborted as i32, "{}", aborted.message);
    assert!(aborted.message.contains("(fail)") && aborted.message.contains("below marginal 75"), "{}", aborted.message);
    let e = &aborted.experiments[0];
    assert_eq!(e.verdict, "fail");
    let judged = e.judged.last().unwrap();
    let errors = judged.metrics.iter().find(|m| m.name == "error-ratio").unwrap();
    assert_eq!((errors.classification.as_str(), errors.critical), ("HIGH", true), "{errors:?}");
    assert!(errors.canary_mean > 0.2 && errors.baseline_mean < 0.05, "{errors:?}");
    let latency = judged.metrics.iter().find(|m| m.name == "latency-p90").unwrap();
    assert!(latency.canary_mean > latency.baseline_mean, "{latency:?}");
    assert_eq!(versions(&address, 20, &[]).await, ["1.1.0"], "traffic is back on the stable version");
}

const TRAIN: &str = r#"
environments:
  - name: staging
    progressDeadline: 60s
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        severity: critical
        interval: 1s
        initialDelay: 1s
        failureCondition: result > 0.05
        provider: {scrape: {url: "{metrics}", window: 3s, expression: {error-ratio}}}
services:
  - name: auth
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {duration: 4s}
        analysis: {templates: [slo]}
    local: {command: ["{demo}", --name, auth, --version, "{version}", --port, "{port}"]}
  - name: booking
    dependsOn: [auth]
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {duration: 30s}
        analysis: {templates: [slo]}
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
"#;

/// `hopctl ARGS` as alice, waited for without holding up the test's runtime: (exit code, stdout,
/// stderr).
async fn hopctl(stack: &Stack, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(binary("hopctl", "hopctl").unwrap())
        .args(["--server", &stack.url(Part::Scheduler)])
        .args(args)
        .envs(hopctl_env("alice", &[]))
        .env_remove("HOPNGO_OUTPUT")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_whose_second_member_fails_returns_the_first_to_its_previous_version() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, TRAIN, StackOptions::default()).await.unwrap();
    let mut releases = stack.releases().await;
    for service in ["auth", "booking"] {
        let first = create_as(&mut releases, "alice", service, "staging", "1.0.0").await;
        until(&mut releases, &first.id, 60, |r| r.settled && r.phase == P::Succeeded as i32).await;
    }
    let auth = stack.address("auth", "staging").await;
    let booking = stack.address("booking", "staging").await;
    let _auth_traffic = hopngo_e2e::Traffic::start(&auth, 50);
    let _booking_traffic = hopngo_e2e::Traffic::start(&booking, 50);

    // Bad input is refused with the member's field, and nothing is stored.
    let (code, _, err) =
        hopctl(&stack, &["train", "create", "--env", "staging", "booking=2.0.0", "payments=1.0.0"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("members[1].service: unknown service \"payments\""), "{err}");
    let (code, _, err) = hopctl(
        &stack,
        &["train", "create", "--env", "staging", "booking=2.0.0", "auth=2.0.0", "--depends-on", "auth=booking"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("members[1].depends_on[0]: dependency cycle: booking → auth → booking"), "{err}");
    let listed = releases.list_releases(pb::ListReleasesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.releases.len(), 2, "only the two first releases");

    // booking is asked first but depends on auth: auth 1.1.0 goes first and succeeds, then
    // booking's canary answers half its requests with errors and its analysis aborts it.
    let (code, out, err) = hopctl(
        &stack,
        &[
            "train",
            "create",
            "--env",
            "staging",
            "booking=1.1.0+errors=0.5",
            "auth=1.1.0",
            "--reason",
            "weekly",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let order: Vec<&str> =
        created["releases"].as_array().unwrap().iter().map(|r| r["service"].as_str().unwrap()).collect();
    assert_eq!(order, ["auth", "booking"]);
    assert_eq!(created["dependencies"][1]["dependsOn"][0], "auth");

    // `train get --watch` follows every member until the train has settled; not a success.
    let (code, out, err) = hopctl(&stack, &["train", "get", &id, "--watch"]).await;
    assert_ne!(code, 0, "an aborted train is not a success: {out}");
    assert!(err.contains("auth staging rev 2") && err.contains("booking staging rev 2"), "progress of both: {err}");
    assert!(err.contains("return: auth staging rev 3"), "and of the return: {err}");
    assert!(out.contains("Phase:       ABORTED\n"), "{out}");
    assert!(out.contains("returned to their previous versions, newest member first"), "{out}");

    let g = releases.get_release_group(pb::GetReleaseGroupRequest { id: id.clone() }).await.unwrap().into_inner();
    let g = g.group.unwrap();
    let shape: Vec<(&str, &str, i32)> =
        g.releases.iter().map(|r| (r.service.as_str(), r.artifact.as_str(), r.phase)).collect();
    assert_eq!(
        shape,
        vec![
            ("auth", "1.1.0", P::Succeeded as i32),
            ("booking", "1.1.0+errors=0.5", P::Aborted as i32),
            ("auth", "1.0.0", P::Succeeded as i32),
        ]
    );
    assert!(g.releases[1].message.contains("error-rate"), "aborted by its analysis: {}", g.releases[1].message);
    assert_eq!(g.releases[2].returns_release_id, g.releases[0].id);
    assert!(g.message.ends_with("returned auth to 1.0.0 (SUCCEEDED)"), "{}", g.message);
    // Both services answer from their previous versions again.
    assert_eq!(versions(&auth, 20, &[]).await, ["1.0.0"]);
    assert_eq!(versions(&booking, 20, &[]).await, ["1.0.0"]);
}
