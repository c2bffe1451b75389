//! HopNGo's runbook end to end, one test per procedure: every service its own process on loopback
//! (deployer with real demo replicas behind its proxies, analyzer, migrator, notifier,
//! scheduler), real PostgreSQL, real HTTP traffic. Outcomes are read from the API, from the
//! traffic itself (which version answered) and from a subscriber of the event log.

use std::{collections::BTreeMap, time::Duration};

use hopngo_e2e::{
    Releases, Stack, StackOptions, Subscriber, Traffic, answers, as_user, create_as, hopngo_template, http_get, until,
};
use hopngo_proto::{
    event_types as types,
    release::{self as pb, ReleasePhase as P},
};
use hopngo_testkit::db::TestDb;

/// HopNGo's strategies with short waits: canary with smoke tests on one replica before traffic,
/// 25 → 50 → 100 with the SLO's critical error-rate check in the background; blue/green with
/// smoke tests of the preview; production promoted from staging with a release manager's approval.
fn config(severity: &str) -> String {
    r#"
environments:
  - name: staging
    progressDeadline: 60s
  - name: production
    from: staging
    progressDeadline: 60s
    promotion: {requireVerification: true}
    approval: {minApprovals: 1, roles: [release-manager]}
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke-tests
        provider:
          job:
            command: ["{smoke}", --address, "{{args.address}}", --track, "{{args.track}}", --expect-version, "{{args.artifact}}"]
            timeout: 20s
  - name: slo
    metrics:
      - name: error-rate
        severity: SEVERITY
        interval: 1s
        initialDelay: 1s
        failureCondition: result > 0.05
        provider: {scrape: {url: "{metrics}", window: 3s, expression: {error-ratio}}}
services:
  - name: auth
    strategy: &canary
      canary:
        steps:
          - setCanaryScale: {replicas: 1}
          - verify: {templates: [smoke]}
          - setWeight: 25
          - setCanaryScale: {matchTrafficWeight: true}
          - pause: {duration: 2s}
          - setWeight: 50
          - pause: {duration: 3s}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 4}
    local: {command: ["{demo}", --name, auth, --version, "{version}", --port, "{port}"]}
  - name: booking
    replicas: 2
    dependsOn: [auth]
    strategy: *canary
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
  - name: gateway
    replicas: 2
    strategy:
      blueGreen:
        prePromotionAnalysis: {templates: [smoke]}
        scaleDownDelay: 1s
    local: {command: ["{demo}", --name, gateway, --version, "{version}", --port, "{port}"]}
"#
    .replace("SEVERITY", severity)
}

async fn start(scheduler_args: &[&str]) -> (TestDb, Stack, Subscriber, Releases) {
    let options =
        StackOptions { scheduler_args: scheduler_args.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    start_with(&config("critical"), options).await
}

async fn start_with(config: &str, options: StackOptions) -> (TestDb, Stack, Subscriber, Releases) {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, config, options).await.unwrap();
    let subscriber = stack.subscribe().await;
    let releases = stack.releases().await;
    (db, stack, subscriber, releases)
}

async fn create(releases: &mut Releases, service: &str, environment: &str, artifact: &str) -> pb::Release {
    create_as(releases, "alice", service, environment, artifact).await
}

async fn settled(releases: &mut Releases, id: &str) -> pb::Release {
    until(releases, id, 90, |r| r.settled).await
}

/// A release created, then watched until settled; panics unless it ends in `phase`.
async fn release(releases: &mut Releases, service: &str, environment: &str, artifact: &str, phase: P) -> pb::Release {
    let r = create(releases, service, environment, artifact).await;
    let done = settled(releases, &r.id).await;
    assert_eq!(done.phase, phase as i32, "{service} {artifact} in {environment}: {}", done.message);
    done
}

fn promote_env(service: &str) -> pb::PromoteEnvironmentRequest {
    pb::PromoteEnvironmentRequest {
        service: service.into(),
        from_environment: "staging".into(),
        to_environment: "production".into(),
        reason: "runbook".into(),
        ..Default::default()
    }
}

/// Promotes what is stable in staging to production, approved by bob; returns the settled release.
async fn to_production(releases: &mut Releases, service: &str) -> pb::Release {
    let r = releases.promote_environment(as_user(promote_env(service), "alice", &[])).await.unwrap().into_inner();
    let id = r.release.unwrap().id;
    until(releases, &id, 30, |r| r.phase == P::AwaitingApproval as i32).await;
    let approve = pb::ApproveReleaseRequest { id: id.clone(), reason: "ok".into() };
    releases.approve_release(as_user(approve, "bob", &["release-manager"])).await.unwrap();
    settled(releases, &id).await
}

fn only(version: &str, n: u64) -> BTreeMap<(String, u16), u64> {
    BTreeMap::from([((version.to_string(), 200), n)])
}

fn types_of(events: &[hopngo_proto::events::Event]) -> Vec<&str> {
    events.iter().map(|e| e.r#type.as_str()).collect()
}

/// Every release's events reached the subscriber once each, in order, without gaps (the
/// scheduler's: the notifier's own escalation events carry no sequence).
fn assert_complete(subscriber: &Subscriber, release: &pb::Release) {
    let seqs: Vec<u64> = subscriber.of(&release.id).iter().map(|e| e.sequence).filter(|s| *s > 0).collect();
    assert_eq!(seqs, (1..=release.version).collect::<Vec<_>>(), "events of {} {}", release.service, release.artifact);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_from_staging_to_production_needs_verification_and_a_second_person() {
    // Booking's schema: each environment migrates its own database with the same scripts.
    let (staging_db, production_db) = (TestDb::create().await.unwrap(), TestDb::create().await.unwrap());
    let scripts = std::env::temp_dir().join(format!("hopngo-e2e-runbook-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("V1__create_bookings.sql"), "CREATE TABLE bookings (id bigint PRIMARY KEY);\n")
        .unwrap();
    let config = config("critical").replace(
        "    dependsOn: [auth]\n",
        &format!(
            "    dependsOn: [auth]\n    migrations: {{database: booking-staging, locations: [\"{}\"]}}\n    \
             environments: {{production: {{migrations: {{database: booking-production}}}}}}\n",
            scripts.display()
        ),
    );
    let migrator_args = ["booking-staging", "booking-production"]
        .into_iter()
        .zip([&staging_db.url, &production_db.url])
        .flat_map(|(name, url)| {
            [
                "--target".to_string(),
                format!("{name}={url}"),
                "--locations".to_string(),
                format!("{name}={}", scripts.display()),
            ]
        })
        .collect();
    let (_db, stack, subscriber, mut releases) =
        start_with(&config, StackOptions { migrator_args, ..Default::default() }).await;
    let applied = |url: String| async move {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
        let history: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('flyway_schema_history')::text").fetch_one(&mut conn).await.unwrap();
        if history.is_none() {
            return Vec::new();
        }
        sqlx::query_scalar::<_, String>("SELECT version FROM flyway_schema_history ORDER BY installed_rank")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };

    release(&mut releases, "auth", "staging", "1.0.0", P::Succeeded).await;
    let first = release(&mut releases, "booking", "staging", "1.0.0", P::Succeeded).await;
    let kinds: Vec<&str> = first.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(kinds, ["preflight", "migrate", "deployStable", "verify"], "a first release is smoke-tested too");
    assert!(first.verification.as_ref().unwrap().verified);
    assert_eq!(applied(staging_db.url.clone()).await, ["1"]);
    assert_eq!(
        applied(production_db.url.clone()).await,
        Vec::<String>::new(),
        "staging's release leaves production alone"
    );
    to_production(&mut releases, "auth").await;
    let prod = to_production(&mut releases, "booking").await;
    assert_eq!(prod.phase, P::Succeeded as i32, "{}", prod.message);
    assert!(
        prod.steps.iter().any(|s| s.name == "migrate" && s.summary.contains("booking-production")),
        "{:?}",
        prod.steps
    );
    assert_eq!(applied(production_db.url.clone()).await, ["1"], "production ran what staging ran");

    // A good canary in staging, under traffic.
    let staging_traffic = Traffic::start(&stack.address("booking", "staging").await, 20);
    let good = release(&mut releases, "booking", "staging", "1.1.0", P::Succeeded).await;
    assert!(good.verification.as_ref().unwrap().verified, "{:?}", good.verification);
    let kinds: Vec<(&str, &str)> = good.analysis_runs.iter().map(|a| (a.kind.as_str(), a.phase.as_str())).collect();
    // Beside the background analysis, the stable track measured for comparison (dry runs).
    assert_eq!(kinds, [("verify", "SUCCESSFUL"), ("background", "SUCCESSFUL"), ("reference", "SUCCESSFUL")]);
    drop(staging_traffic);

    // One that skipped its checks cannot go to production.
    let skipped = create(&mut releases, "booking", "staging", "1.2.0").await;
    // Migrations are never skipped: --full is refused until the migrate step is done.
    until(&mut releases, &skipped.id, 30, |r| r.current_step_index > 1).await;
    let full = pb::PromoteReleaseRequest { id: skipped.id.clone(), full: true, reason: "hotfix".into() };
    releases.promote_release(as_user(full, "alice", &[])).await.unwrap();
    assert_eq!(settled(&mut releases, &skipped.id).await.phase, P::Succeeded as i32);
    let err = releases.promote_environment(as_user(promote_env("booking"), "alice", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("1.2.0 succeeded for booking in staging"), "{err:?}");
    assert!(err.message().contains("not verified: it was promoted with --full"), "{err:?}");

    // The verified one can, in one step, approved by someone other than the requester.
    let request = pb::PromoteEnvironmentRequest { artifact: "1.1.0".into(), ..promote_env("booking") };
    let promoted = releases.promote_environment(as_user(request, "alice", &[])).await.unwrap().into_inner();
    let r = promoted.release.unwrap();
    assert_eq!(promoted.source.unwrap().id, good.id);
    let production = stack.address("booking", "production").await;
    let traffic = Traffic::start(&production, 20);
    let waiting = until(&mut releases, &r.id, 30, |r| r.phase == P::AwaitingApproval as i32).await;
    assert_eq!(waiting.steps[0].name, "approval");
    let approve = |user: &str| {
        as_user(pb::ApproveReleaseRequest { id: r.id.clone(), reason: "ok".into() }, user, &["release-manager"])
    };
    let err = releases.approve_release(approve("alice")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "four eyes: {err:?}");
    assert_eq!(answers(&production, 50).await, only("1.0.0", 50), "nothing changes before the approval");
    releases.approve_release(approve("bob")).await.unwrap();
    let done = settled(&mut releases, &r.id).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(answers(&production, 100).await, only("1.1.0", 100));
    // While it ran, production answered from both versions, never with an error.
    let seen = traffic.seen();
    assert!(seen.iter().all(|(_, status)| *status == 200), "{seen:?}");
    assert!(seen.iter().any(|(v, _)| v == "1.0.0") && seen.iter().any(|(v, _)| v == "1.1.0"));

    // The subscriber saw the whole production release: approval asked, closed, upgraded.
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::SERVICE_UPGRADED)).await;
    let events = subscriber.of(&r.id);
    let seen_types = types_of(&events);
    for t in [types::APPROVAL_CREATED, types::APPROVAL_CLOSED, types::CANARY_WEIGHT_CHANGED, types::SERVICE_UPGRADED] {
        assert!(seen_types.contains(&t), "{t} missing from {seen_types:?}");
    }
    assert_complete(&subscriber, &done);
    let _ = std::fs::remove_dir_all(&scripts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_stops_a_release_whose_dependency_is_not_running() {
    let (_db, stack, subscriber, mut releases) = start(&[]).await;
    release(&mut releases, "auth", "staging", "1.0.0", P::Succeeded).await;
    let ok = release(&mut releases, "booking", "staging", "1.0.0", P::Succeeded).await;
    let checks: Vec<(&str, bool)> = ok.preflight_checks.iter().map(|c| (c.name.as_str(), c.ok)).collect();
    assert_eq!(
        checks,
        [
            ("backend/command", true),
            ("backend/setpriv", true),
            ("metrics/smoke-tests", true),
            ("dependency/auth", true)
        ]
    );
    // auth has not been released to production: booking must not go there.
    let r = releases.promote_environment(as_user(promote_env("booking"), "alice", &[])).await.unwrap().into_inner();
    let id = r.release.unwrap().id;
    until(&mut releases, &id, 30, |r| r.phase == P::AwaitingApproval as i32).await;
    let approve = pb::ApproveReleaseRequest { id: id.clone(), reason: "ok".into() };
    releases.approve_release(as_user(approve, "bob", &["release-manager"])).await.unwrap();
    let done = settled(&mut releases, &id).await;
    assert_eq!(done.phase, P::Aborted as i32);
    assert_eq!(done.message, "aborted: preflight failed: dependency/auth: not deployed in production");
    assert_eq!(stack.address("booking", "production").await, "", "the deployer was never asked");
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == id && e.r#type == types::RELEASE_ABORTED)).await;
    let aborted = subscriber.of(&id).into_iter().find(|e| e.r#type == types::RELEASE_ABORTED).unwrap();
    assert!(aborted.data.unwrap().message.contains("dependency/auth: not deployed in production"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_all_traffic_at_once_after_the_preview_passes() {
    let (_db, stack, subscriber, mut releases) = start(&[]).await;
    release(&mut releases, "gateway", "staging", "1.0.0", P::Succeeded).await;
    let address = stack.address("gateway", "staging").await;
    let traffic = Traffic::start(&address, 50);
    let r = create(&mut releases, "gateway", "staging", "1.1.0").await;
    let done = settled(&mut releases, &r.id).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(done.analysis_runs[0].kind, "prePromotion");
    assert_eq!(done.analysis_runs[0].phase, "SUCCESSFUL", "the smoke tests ran against the preview");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // In the order sent: only 1.0.0, then only 1.1.0 — no error, no mix, no going back.
    let seen = traffic.seen();
    drop(traffic);
    assert!(seen.iter().all(|(_, status)| *status == 200), "{seen:?}");
    let switch = seen.iter().position(|(v, _)| v == "1.1.0").expect("the new version answered");
    assert!(switch > 0, "the old version answered first");
    assert!(seen[..switch].iter().all(|(v, _)| v == "1.0.0"), "{seen:?}");
    assert!(seen[switch..].iter().all(|(v, _)| v == "1.1.0"), "all traffic moved at once: {seen:?}");
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::SERVICE_UPGRADED)).await;
    assert_complete(&subscriber, &done);
    assert_eq!(answers(&address, 100).await, only("1.1.0", 100));
}

/// HopNGo's booking templates in their local form (waits shortened): the booking completion and
/// payment processing rates the replicas count themselves, read through the deployer's
/// `/metrics/replicas`, beside the SLO read from the proxy.
fn business_config() -> String {
    let [completion, payment] = ["booking-completion", "payment-processing"].map(|name| {
        let mut template = hopngo_template(name, "local");
        for metric in template["metrics"].as_array_mut().unwrap() {
            metric["interval"] = "1s".into();
            metric["initialDelay"] = "2s".into();
            metric["provider"]["scrape"]["window"] = "3s".into();
        }
        for arg in template["args"].as_array_mut().unwrap() {
            if arg["name"] == "replicaMetricsUrl" {
                arg["value"] = "{metrics}/replicas".into();
            }
        }
        template
    });
    format!(
        r#"
environments:
  - name: staging
    progressDeadline: 60s
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        interval: 1s
        initialDelay: 2s
        failureCondition: result > 0.05
        provider: {{scrape: {{url: "{{metrics}}", window: 3s, expression: {{error-ratio}}}}}}
  - {completion}
  - {payment}
services:
  - name: booking-service
    replicas: 2
    strategy:
      canary:
        steps: [{{setWeight: 25}}, {{pause: {{duration: 8s}}}}, {{setWeight: 50}}, {{pause: {{duration: 3s}}}}, {{setWeight: 100}}]
        analysis: {{templates: [slo, booking-completion, payment-processing], startingStep: 1}}
    local: {{command: ["{{demo}}", --name, booking-service, --version, "{{version}}", --port, "{{port}}"]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_metrics_counted_by_the_replicas_abort_a_canary_whose_every_answer_is_a_fast_200() {
    let (_db, stack, _subscriber, mut releases) = start_with(&business_config(), StackOptions::default()).await;
    release(&mut releases, "booking-service", "staging", "1.0.0", P::Succeeded).await;
    let address = stack.address("booking-service", "staging").await;
    let traffic: Vec<Traffic> = ["/api/v1/info", "/api/v1/bookings", "/api/v1/payments"]
        .into_iter()
        .map(|path| Traffic::on(&address, path, 30))
        .collect();

    // A good version: its bookings and payments all succeed; the analysis passes.
    let good = release(&mut releases, "booking-service", "staging", "1.1.0", P::Succeeded).await;
    let background = good.analysis_runs.iter().find(|a| a.kind == "background").expect("the analysis ran");
    assert_eq!(background.phase, "SUCCESSFUL", "{background:#?}");

    // The replicas' own counters, labelled as Prometheus labels pods.
    let admin = stack.metrics_url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    let page = http_get(&admin, "/metrics/replicas?service=booking-service&environment=staging").await.unwrap();
    let booked = page
        .lines()
        .filter(|l| {
            l.starts_with("hopngo_business_operations_total{")
                && l.contains(r#"operation="booking""#)
                && l.contains(r#"outcome="success""#)
                && l.contains(r#"revision="1.1.0""#)
                && l.contains(r#"track="stable""#)
        })
        .count();
    assert_eq!(
        booked, 2,
        "one series per replica of 1.1.0:
{page}"
    );
    assert_eq!(page.lines().filter(|l| l.starts_with("up{") && l.ends_with(" 1")).count(), 2, "{page}");
    let refused = http_get(&admin, "/metrics/replicas?target=http://169.254.169.254/").await.unwrap_err();
    assert!(refused.to_string().contains("400"), "{refused}");

    // Half its bookings fail, answered 200 all the same: the SLO sees nothing, the booking
    // completion rate aborts it and traffic goes back to 1.1.0.
    let unbooked = "1.2.0+businessFailures=0.5";
    let r = release(&mut releases, "booking-service", "staging", unbooked, P::Aborted).await;
    assert!(r.message.contains("background analysis failed (critical)"), "{}", r.message);
    let background = r.analysis_runs.iter().find(|a| a.kind == "background").unwrap();
    assert!(background.message.contains("booking-completion-abort"), "{background:#?}");
    assert!(!background.message.contains("error-rate"), "{background:#?}");
    for t in &traffic {
        assert!(t.seen().iter().all(|(_, status)| *status == 200), "every answer was a 200");
        assert!(t.seen().iter().any(|(version, _)| version == unbooked), "the canary took traffic");
    }
    drop(traffic);
    assert_eq!(answers(&address, 50).await, only("1.1.0", 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_matrix_critical_aborts_high_waits_out_its_grace_medium_pauses_low_notifies() {
    let (_db, stack, subscriber, mut releases) = start(&["--high-severity-grace", "4s"]).await;
    release(&mut releases, "auth", "staging", "1.0.0", P::Succeeded).await;
    let address = stack.address("auth", "staging").await;
    let _traffic = Traffic::start(&address, 40);
    // Passes its smoke tests (its first 20 API answers are good), then half its answers fail.
    let faulty = |n: u32| format!("1.{n}.0+errors=0.5,errorsAfter=20");

    // Critical: aborted at the first failing measurement; traffic back on 1.0.0.
    let r = release(&mut releases, "auth", "staging", &faulty(1), P::Aborted).await;
    assert!(r.message.contains("background analysis failed (critical)"), "{}", r.message);
    assert_eq!(answers(&address, 50).await, only("1.0.0", 50));
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::SERVICE_ROLLEDBACK)).await;
    let events = subscriber.of(&r.id);
    let failed_at = events
        .iter()
        .position(|e| e.r#type == types::ANALYSIS_COMPLETED && e.data.as_ref().unwrap().message.contains("FAILED"))
        .unwrap();
    assert_eq!(events[failed_at + 1].r#type, types::RELEASE_ABORTED, "nothing in between: aborted at once");

    // High: traffic held for the grace period, measured again, aborted because it still fails.
    stack.apply(&config("high")).await.unwrap();
    let r = create(&mut releases, "auth", "staging", &faulty(2)).await;
    let held = until(&mut releases, &r.id, 60, |r| r.message.contains("holding traffic")).await;
    let weight = held.canary_weight;
    assert!(weight > 0, "held where it was");
    let done = settled(&mut releases, &r.id).await;
    // Settled in the API before the subscriber has the last events: wait for the abort's.
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::RELEASE_ABORTED)).await;
    let events = subscriber.of(&r.id);
    let story: Vec<String> = events.iter().map(|e| e.data.as_ref().unwrap().message.clone()).collect();
    assert_eq!(done.phase, P::Aborted as i32, "{story:#?}");
    let first = events.iter().find(|e| e.data.as_ref().unwrap().message.contains("holding traffic")).unwrap();
    let aborted = events.iter().find(|e| e.r#type == types::RELEASE_ABORTED).unwrap();
    let held_for = aborted.time.unwrap().seconds - first.time.unwrap().seconds;
    assert!(held_for >= 3, "aborted only after the grace period ({held_for} s)");
    assert_eq!(answers(&address, 50).await, only("1.0.0", 50));

    // Medium: paused for a person, traffic where it was.
    stack.apply(&config("medium")).await.unwrap();
    let r = create(&mut releases, "auth", "staging", &faulty(3)).await;
    let paused = until(&mut releases, &r.id, 60, |r| r.phase == P::Paused as i32 && r.message.contains("failed")).await;
    assert!(paused.message.contains("promote to continue or abort"), "{}", paused.message);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = releases.get_release(pb::GetReleaseRequest { id: r.id.clone() }).await.unwrap().into_inner();
    let still = still.release.unwrap();
    assert_eq!((still.phase, still.canary_weight), (P::Paused as i32, paused.canary_weight), "waits for a person");
    let abort = pb::AbortReleaseRequest { id: r.id.clone(), reason: "bad".into() };
    releases.abort_release(as_user(abort, "bob", &[])).await.unwrap();
    settled(&mut releases, &r.id).await;

    // Low: the failure is an event; the release goes on.
    stack.apply(&config("low")).await.unwrap();
    let r = release(&mut releases, "auth", "staging", &faulty(4), P::Succeeded).await;
    subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::SERVICE_UPGRADED)).await;
    let events = subscriber.of(&r.id);
    assert!(
        events.iter().any(|e| e.data.as_ref().unwrap().message.ends_with("notify only")),
        "{:?}",
        events.iter().map(|e| e.data.as_ref().unwrap().message.clone()).collect::<Vec<_>>()
    );
    assert!(r.verification.unwrap().verified, "a low-severity failure does not break the SLO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_rollback_returns_services_one_after_another_and_the_emergency_form_all_at_once() {
    let (_db, stack, subscriber, mut releases) = start(&[]).await;
    for (service, version) in [("auth", "1.0.0"), ("booking", "1.0.0"), ("gateway", "1.0.0")] {
        release(&mut releases, service, "staging", version, P::Succeeded).await;
    }
    // Canaries without traffic have no data: their analysis would stop them for a person.
    let mut traffic = Vec::new();
    for service in ["auth", "booking"] {
        traffic.push(Traffic::start(&stack.address(service, "staging").await, 20));
    }
    for service in ["auth", "booking", "gateway"] {
        release(&mut releases, service, "staging", "1.1.0", P::Succeeded).await;
    }
    let group = rollback(&mut releases, &["booking", "auth"], false).await;
    let order: Vec<&str> = group.releases.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(order, ["booking", "auth"], "in the order asked");
    let group = wait_group(&stack, &group.id).await;
    assert_eq!(group.phase, P::Succeeded as i32);
    let (first, second) = (&group.releases[0], &group.releases[1]);
    assert!(first.steps.iter().any(|s| s.name == "verify"), "each goes through its own strategy");
    let first_done = first.finished_at.unwrap();
    let second_started = second.steps[0].started_at.unwrap();
    assert!((second_started.seconds, second_started.nanos) >= (first_done.seconds, first_done.nanos));
    for service in ["booking", "auth"] {
        assert_eq!(answers(&stack.address(service, "staging").await, 40).await, only("1.0.0", 40), "{service}");
    }
    assert_eq!(answers(&stack.address("gateway", "staging").await, 40).await, only("1.1.0", 40), "not listed");

    // Emergency: every service with an earlier revision, straight back, still one after another.
    let group = rollback(&mut releases, &[], true).await;
    assert_eq!(group.kind, "emergency-rollback");
    let group = wait_group(&stack, &group.id).await;
    assert_eq!(group.phase, P::Succeeded as i32);
    for r in &group.releases {
        let steps: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(steps, ["deployStable"], "{}: no steps, no analysis", r.service);
    }
    let expected = [("auth", "1.1.0"), ("booking", "1.1.0"), ("gateway", "1.0.0")];
    for (service, version) in expected {
        assert_eq!(answers(&stack.address(service, "staging").await, 40).await, only(version, 40), "{service}");
    }
    for r in &group.releases {
        subscriber.until(10, |e| e.iter().any(|e| e.release_id == r.id && e.r#type == types::SERVICE_ROLLEDBACK)).await;
        assert_complete(&subscriber, r);
    }
}

async fn rollback(releases: &mut Releases, services: &[&str], emergency: bool) -> pb::ReleaseGroup {
    let request = pb::RollbackEnvironmentRequest {
        environment: "staging".into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        reason: "incident".into(),
        emergency,
    };
    // The emergency form skips the environment's gates: an admin's call.
    let user = if emergency { "ops" } else { "alice" };
    releases.rollback_environment(as_user(request, user, &[])).await.unwrap().into_inner().group.unwrap()
}

async fn wait_group(stack: &Stack, id: &str) -> pb::ReleaseGroup {
    let mut releases = stack.releases().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let g = releases
            .get_release_group(pb::GetReleaseGroupRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .group
            .unwrap();
        if g.settled {
            return g;
        }
        assert!(tokio::time::Instant::now() < deadline, "group not done: {g:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_waits_for_its_maintenance_window_unless_a_person_goes_now() {
    let (_db, stack, _subscriber, mut releases) = start(&[]).await;
    release(&mut releases, "auth", "staging", "1.0.0", P::Succeeded).await;
    // A window that opens two hours from now (UTC) and lasts a minute.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 7200;
    let (hour, minute) = ((secs / 3600) % 24, (secs / 60) % 60);
    let windowed = config("critical").replace(
        "    promotion: {requireVerification: true}\n",
        &format!(
            "    promotion: {{requireVerification: true}}\n    maintenanceWindows: [{{schedule: \"{minute} {hour} * * *\", duration: 1m}}]\n"
        ),
    );
    stack.apply(&windowed).await.unwrap();
    let r = releases.promote_environment(as_user(promote_env("auth"), "alice", &[])).await.unwrap().into_inner();
    let id = r.release.unwrap().id;
    until(&mut releases, &id, 30, |r| r.phase == P::AwaitingApproval as i32).await;
    let approve = pb::ApproveReleaseRequest { id: id.clone(), reason: "ok".into() };
    releases.approve_release(as_user(approve, "bob", &["release-manager"])).await.unwrap();
    let waiting = until(&mut releases, &id, 30, |r| r.phase == P::Paused as i32).await;
    assert_eq!(waiting.steps[1].name, "maintenanceWindow");
    assert!(waiting.message.starts_with("waiting for the maintenance window opening at "), "{}", waiting.message);
    assert!(waiting.progress_deadline_at.is_none(), "waiting for a window is not lack of progress");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.address("auth", "production").await, "", "nothing changes outside the window");
    // Someone decides it cannot wait.
    let now = pb::PromoteReleaseRequest { id: id.clone(), full: false, reason: "security fix".into() };
    releases.promote_release(as_user(now, "bob", &[])).await.unwrap();
    let done = settled(&mut releases, &id).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(done.steps[1].status, pb::StepStatus::Skipped as i32);
    assert_eq!(answers(&stack.address("auth", "production").await, 20).await, only("1.0.0", 20));
}
