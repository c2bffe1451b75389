//! Bad input gets the right code with the field and reason, and stores nothing.

mod common;

use common::{Harness, as_user};
use hopngo_proto::{
    config::{ApplyConfigRequest, ValidateConfigRequest, config_service_client::ConfigServiceClient},
    release as pb,
};
use hopngo_testkit::access::channel;
use tonic::Code;

async fn count_releases(h: &Harness) -> i64 {
    let pool = sqlx::PgPool::connect(&h.db.url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.releases").fetch_one(&pool).await.unwrap();
    let e: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.release_events").fetch_one(&pool).await.unwrap();
    pool.close().await;
    n + e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_release_refuses_bad_requests_and_stores_nothing() {
    let h = Harness::start().await;
    let before = count_releases(&h).await;
    let cases = [
        ("nope", "staging", "x:1", Code::InvalidArgument, "service: unknown service \"nope\""),
        ("booking-service", "qa", "x:1", Code::InvalidArgument, "environment: unknown environment \"qa\""),
        ("booking-service", "staging", "", Code::InvalidArgument, "artifact: must not be empty"),
        ("booking-service", "staging", "booking 1.0", Code::InvalidArgument, "artifact: \"booking 1.0\" contains ' '"),
        ("booking-service", "staging", "-rf", Code::InvalidArgument, "artifact: \"-rf\" is not an image reference"),
        ("", "staging", "x:1", Code::InvalidArgument, "service: must not be empty"),
    ];
    for (service, env, artifact, code, message) in cases {
        let err = h.create(service, env, artifact, "alice").await.unwrap_err();
        assert_eq!(err.code(), code, "{service}/{env}/{artifact}: {err:?}");
        assert!(err.message().starts_with(message), "{:?} should start with {message:?}", err.message());
    }
    let long = "a".repeat(600);
    let err = h.create("booking-service", "staging", &long, "alice").await.unwrap_err();
    assert!(err.message().starts_with("artifact: is 600 bytes long; at most 512"), "{err:?}");
    let err = h.client().get_release(pb::GetReleaseRequest { id: "not-a-uuid".into() }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "id: \"not-a-uuid\" is not a release id (UUID)"));
    assert_eq!(count_releases(&h).await, before, "nothing stored");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_path() {
    let h = Harness::start().await;
    let mut config = ConfigServiceClient::new(channel(&format!("http://{}", h.addr)));
    let current = config.get_config(hopngo_proto::config::GetConfigRequest { version: 0 }).await.unwrap().into_inner();
    let cases = [
        (
            common::CONFIG.replacen("setWeight: 50\n", "setWeight: 130\n", 1),
            "services[0].strategy.canary.steps[3].setWeight: 130 is not in 0..=100",
        ),
        (
            common::CONFIG.replacen("- setWeight: 50\n", "- setWeight: 20\n", 1),
            "services[0].strategy.canary.steps[3].setWeight: 20 is lower than the previous weight 25; weights must not decrease",
        ),
        (
            common::CONFIG.replace(
                "analysis: {templates: [slo], startingStep: 1}",
                "analysis: {templates: [latency], startingStep: 1}",
            ),
            "services[0].strategy.canary.analysis.templates[0]: unknown analysis template \"latency\"",
        ),
        (
            common::CONFIG.replace("- setWeight: 25\n", "- name: a\n            setWeight: 25\n").replacen(
                "- setWeight: 50\n",
                "- name: a\n            setWeight: 50\n",
                1,
            ),
            "services[0].strategy.canary.steps[3].name: duplicate step name \"a\"",
        ),
        (
            // A typo in a template is found at apply time, not when a release first measures.
            common::CONFIG.replace("successCondition: result < 0.01", "successCondition: reslt < 0.01"),
            "analysisTemplates[0].metrics[0].successCondition: unknown name \"reslt\" at 0 (conditions see `result` and the functions default, len, isNaN, isInf, abs, min, max, sum, avg, asFloat, asInt)",
        ),
    ];
    for (yaml, expected) in cases {
        let err =
            config.apply_config(as_user(ApplyConfigRequest { yaml: yaml.clone() }, "ops", &[])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), expected);
        let v = config.validate_config(ValidateConfigRequest { yaml }).await.unwrap().into_inner();
        assert!(!v.valid);
        assert_eq!(format!("{}: {}", v.problems[0].path, v.problems[0].message), expected);
    }
    let err = config.apply_config(ApplyConfigRequest { yaml: "  ".into() }).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "yaml: must not be empty"));
    let after = config.get_config(hopngo_proto::config::GetConfigRequest { version: 0 }).await.unwrap().into_inner();
    assert_eq!(after.version, current.version, "no version stored for a bad document");
    let same = config
        .apply_config(as_user(ApplyConfigRequest { yaml: common::CONFIG.into() }, "ops", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(!same.changed, "re-applying the same document stores nothing");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_in_the_wrong_state_are_refused() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let r = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    let before = done.version;
    let id = r.id.clone();
    let err =
        h.client().abort_release(pb::AbortReleaseRequest { id: id.clone(), reason: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err =
        h.client().retry_release(pb::RetryReleaseRequest { id: id.clone(), reason: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = h
        .client()
        .approve_release(as_user(
            pb::ApproveReleaseRequest { id: id.clone(), reason: String::new() },
            "bob",
            &["release-manager"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = h
        .client()
        .reject_release(as_user(
            pb::RejectReleaseRequest { id: id.clone(), reason: String::new() },
            "bob",
            &["release-manager"],
        ))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "reason: a rejection needs a reason"));
    let err = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "already stable: {err:?}");
    let mut bad_user = tonic::Request::new(pb::AbortReleaseRequest { id: id.clone(), reason: String::new() });
    bad_user.metadata_mut().insert("authorization", "Bearer not a token".parse().unwrap());
    assert_eq!(h.client().abort_release(bad_user).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(h.get(&id).await.version, before, "nothing changed");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_returns_the_first_release_even_when_concurrent() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let request = |artifact: &str| {
        as_user(
            pb::CreateReleaseRequest {
                service: "chat-service".into(),
                environment: "staging".into(),
                artifact: artifact.into(),
                request_id: "deploy-42".into(),
                ..Default::default()
            },
            "ci",
            &[],
        )
    };
    let (mut a, mut b) = (h.client(), h.client());
    let (first, second) = tokio::join!(a.create_release(request("chat:2")), b.create_release(request("chat:2")));
    let (first, second) = (first.unwrap().into_inner().release.unwrap(), second.unwrap().into_inner().release.unwrap());
    assert_eq!(first.id, second.id, "one release for one request id");
    let err = h.client().create_release(request("chat:3")).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "request_id: already used for a different release")
    );
    let revisions = h
        .client()
        .list_revisions(pb::ListRevisionsRequest { service: "chat-service".into(), environment: "staging".into() })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(revisions.len(), 2, "the seed and one release");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_errors_not_empty_answers() {
    let h = Harness::start().await;
    let before = count_releases(&h).await;
    let err = h
        .client()
        .list_revisions(pb::ListRevisionsRequest { service: "nope".into(), environment: "staging".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("service: unknown service \"nope\""), "{err:?}");
    let err = h
        .client()
        .list_revisions(pb::ListRevisionsRequest { service: "booking-service".into(), environment: "moon".into() })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("environment: unknown environment \"moon\""), "{err:?}");
    let known = h
        .client()
        .list_revisions(pb::ListRevisionsRequest { service: "booking-service".into(), environment: "staging".into() })
        .await
        .unwrap();
    assert!(known.into_inner().revisions.is_empty(), "a known service without releases has an empty history");
    let rollback = |services: &[&str]| {
        as_user(
            pb::RollbackEnvironmentRequest {
                environment: "staging".into(),
                services: services.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            "alice",
            &[],
        )
    };
    let err = h.client().rollback_environment(rollback(&["booking-service", "booking-service"])).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "services[1]: \"booking-service\" is listed twice")
    );
    let err = h.client().rollback_environment(rollback(&["booking-service", "nope"])).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "services[1]: unknown service \"nope\""));
    assert_eq!(count_releases(&h).await, before, "nothing stored");
    h.stop().await;
}
