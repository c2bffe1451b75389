//! Release trains against the real scheduler (gRPC on loopback, real PostgreSQL) with recording
//! fakes for the deployer, analyzer, migrator and notifier.

mod common;

use common::{CONFIG, Harness, as_user, eventually};
use hopngo_proto::{analyzer::AnalysisPhase, release as pb};
use pb::ReleasePhase as P;

fn member(service: &str, artifact: &str, depends_on: &[&str]) -> pb::TrainMember {
    pb::TrainMember {
        service: service.into(),
        artifact: artifact.into(),
        depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
    }
}

fn train(environment: &str, members: Vec<pb::TrainMember>) -> pb::CreateTrainRequest {
    pb::CreateTrainRequest {
        environment: environment.into(),
        members,
        reason: "weekly train".into(),
        ..Default::default()
    }
}

async fn create(h: &Harness, request: pb::CreateTrainRequest, user: &str) -> Result<pb::ReleaseGroup, tonic::Status> {
    Ok(h.client().create_train(as_user(request, user, &[])).await?.into_inner().group.expect("group"))
}

async fn group(h: &Harness, id: &str) -> pb::ReleaseGroup {
    let request = pb::GetReleaseGroupRequest { id: id.into() };
    h.client().get_release_group(request).await.expect("group").into_inner().group.expect("group")
}

async fn settled(h: &Harness, id: &str, secs: u64) -> pb::ReleaseGroup {
    eventually(secs, || async { group(h, id).await.settled }).await;
    group(h, id).await
}

fn services(releases: &[pb::Release]) -> Vec<(String, String, String)> {
    releases
        .iter()
        .map(|r| {
            let phase = P::try_from(r.phase).map(|p| p.as_str_name()).unwrap_or("?");
            (r.service.clone(), r.artifact.clone(), phase.trim_start_matches("RELEASE_PHASE_").to_string())
        })
        .collect()
}

fn later_or_same(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> bool {
    (a.seconds, a.nanos) >= (b.seconds, b.nanos)
}

fn stable(h: &Harness, service: &str) -> String {
    let target = h.fakes.deployer.target(service, "staging").expect("target");
    target.tracks.iter().map(|t| t.artifact.clone()).collect::<Vec<_>>().join(",")
}

/// booking-service depends on chat-service in the config; the request puts gateway between them.
fn config_with_dependencies() -> String {
    CONFIG.replacen("    replicas: 2\n", "    replicas: 2\n    dependsOn: [chat-service]\n", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_member_ends_the_train_and_the_members_before_it_return_newest_first() {
    let h = Harness::start().await;
    h.apply(&config_with_dependencies()).await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    h.seed_stable("gateway", "staging", "gw:1").await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.analyzer.verdict("step", AnalysisPhase::Failed);
    let asked = train(
        "staging",
        vec![
            member("booking-service", "booking:1.1", &["gateway"]),
            member("gateway", "gw:2", &[]),
            member("chat-service", "chat:2", &[]),
        ],
    );
    let g = create(&h, asked, "alice").await.unwrap();
    assert_eq!(g.kind, "train");
    // gateway and chat-service in the order asked; booking after both (config and request).
    assert_eq!(
        services(&g.releases),
        vec![
            ("gateway".into(), "gw:2".into(), "PENDING".into()),
            ("chat-service".into(), "chat:2".into(), "PENDING".into()),
            ("booking-service".into(), "booking:1.1".into(), "PENDING".into()),
        ]
    );
    let booking_deps = g.dependencies.iter().find(|d| d.service == "booking-service").unwrap();
    assert_eq!(booking_deps.depends_on, vec!["gateway", "chat-service"]);
    assert!(g.releases.iter().all(|r| r.release_group_id == g.id));

    let g = settled(&h, &g.id, 60).await;
    assert_eq!(g.phase, P::Aborted as i32, "{}", g.message);
    assert_eq!(
        services(&g.releases),
        vec![
            ("gateway".into(), "gw:2".into(), "SUCCEEDED".into()),
            ("chat-service".into(), "chat:2".into(), "SUCCEEDED".into()),
            ("booking-service".into(), "booking:1.1".into(), "ABORTED".into()),
            ("chat-service".into(), "chat:1".into(), "SUCCEEDED".into()),
            ("gateway".into(), "gw:1".into(), "SUCCEEDED".into()),
        ],
        "the two released members went back, newest first"
    );
    let (members, returns) = g.releases.split_at(3);
    assert_eq!(returns[0].returns_release_id, members[1].id);
    assert_eq!(returns[1].returns_release_id, members[0].id);
    assert!(returns.iter().all(|r| r.undo_of_revision == 1 && r.strategy == pb::Strategy::Initial as i32));
    // One after another: each member after the one before it succeeded, the returns after the
    // failed member was back on its stable version, the second return after the first.
    let finished = |r: &pb::Release| r.finished_at.unwrap();
    let started = |r: &pb::Release| r.steps[0].started_at.unwrap();
    assert!(later_or_same(&started(&members[1]), &finished(&members[0])));
    assert!(later_or_same(&started(&members[2]), &finished(&members[1])));
    assert!(later_or_same(&started(&returns[0]), &finished(&members[2])));
    assert!(later_or_same(&started(&returns[1]), &finished(&returns[0])));
    assert!(g.message.starts_with("booking-service booking:1.1 ended ABORTED"), "{}", g.message);
    assert!(
        g.message.ends_with("returned chat-service to chat:1 (SUCCEEDED), gateway to gw:1 (SUCCEEDED)"),
        "{}",
        g.message
    );
    assert_eq!(stable(&h, "booking-service"), "booking:1.0");
    assert_eq!(stable(&h, "chat-service"), "chat:1");
    // The blue/green gateway is back on its previous version, as its active track.
    assert_eq!(stable(&h, "gateway"), "gw:1");
    // A member of an ended train is not retried on its own.
    let retry = pb::RetryReleaseRequest { id: members[2].id.clone(), reason: "again".into() };
    let err = h.client().retry_release(as_user(retry, "alice", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_train_stops_the_running_member_and_returns_the_released_ones() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let mut asked =
        train("staging", vec![member("chat-service", "chat:2", &[]), member("booking-service", "booking:1.1", &[])]);
    asked.request_id = "train-42".into();
    let g = create(&h, asked.clone(), "alice").await.unwrap();
    // The same request again is the same train; the key with other members is a mistake.
    let again = create(&h, asked.clone(), "alice").await.unwrap();
    assert_eq!(again.id, g.id);
    asked.members[1].artifact = "booking:1.2".into();
    let err = create(&h, asked, "alice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("request_id: already used for a different train"), "{err:?}");
    // booking's canary stops at its `pause: {}` for a person.
    let booking = g.releases[1].id.clone();
    h.wait(&booking, 30, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    let running = group(&h, &g.id).await;
    assert_eq!(running.phase, P::Paused as i32);
    assert!(running.message.starts_with("2/2: booking-service booking:1.1:"), "{}", running.message);
    let abort = pb::AbortReleaseGroupRequest { id: g.id.clone(), reason: "payment incident".into() };
    h.client().abort_release_group(as_user(abort.clone(), "ops", &[])).await.unwrap();
    let g = settled(&h, &g.id, 30).await;
    assert_eq!(
        services(&g.releases),
        vec![
            ("chat-service".into(), "chat:2".into(), "SUCCEEDED".into()),
            ("booking-service".into(), "booking:1.1".into(), "ABORTED".into()),
            ("chat-service".into(), "chat:1".into(), "SUCCEEDED".into()),
        ]
    );
    assert!(g.releases[1].message.contains("payment incident"), "{}", g.releases[1].message);
    assert_eq!(stable(&h, "chat-service"), "chat:1");
    assert_eq!(stable(&h, "booking-service"), "booking:1.0");
    let err = h.client().abort_release_group(as_user(abort, "ops", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "an ended train: {err:?}");
    assert!(err.message().contains("has ended (ABORTED)"), "{err:?}");
    // Audited as group actions.
    let entries = h
        .client()
        .list_audit_entries(pb::ListAuditEntriesRequest { action: "abort-group".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(entries.len(), 2, "one allowed, one refused: {entries:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_approval_lets_every_member_of_a_production_train_through() {
    let h = Harness::start().await;
    // What production takes must have succeeded, verified, in staging.
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.seed_stable("gateway", "staging", "gw:1").await;
    let staged = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&staged.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    let promote = pb::PromoteReleaseRequest { id: staged.id.clone(), full: false, reason: "ok".into() };
    h.client().promote_release(as_user(promote, "alice", &[])).await.unwrap();
    h.wait_settled(&staged.id, 20).await;
    let asked =
        train("production", vec![member("booking-service", "booking:1.1", &[]), member("gateway", "gw:2", &[])]);
    let err = create(&h, asked, "alice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("members[1] (gateway): "), "{err:?}");
    let gw = h.create("gateway", "staging", "gw:2", "alice").await.unwrap();
    assert_eq!(h.wait_settled(&gw.id, 30).await.phase, P::Succeeded as i32);

    let asked =
        train("production", vec![member("booking-service", "booking:1.1", &[]), member("gateway", "gw:2", &[])]);
    let g = create(&h, asked, "alice").await.unwrap();
    h.wait_phase(&g.releases[0].id, P::AwaitingApproval, 20).await;
    assert_eq!(group(&h, &g.id).await.phase, P::AwaitingApproval as i32);
    let approve = |user: &str, roles: &[&str]| {
        as_user(pb::ApproveReleaseGroupRequest { id: g.id.clone(), reason: "train ok".into() }, user, roles)
    };
    let err = h.client().approve_release_group(approve("alice", &["release-manager"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "the train's creator: {err:?}");
    assert!(err.message().contains("four-eyes"), "{err:?}");
    let err = h.client().approve_release_group(approve("carol", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "no approver role: {err:?}");
    assert!(group(&h, &g.id).await.releases.iter().all(|r| r.approvals.is_empty()), "refusals record nothing");
    let approved = h.client().approve_release_group(approve("bob", &["release-manager"])).await.unwrap().into_inner();
    let members = approved.group.unwrap().releases;
    assert!(members.iter().all(|r| r.approvals.iter().any(|a| a.user == "bob" && a.approved)), "{members:?}");
    let g = settled(&h, &g.id, 60).await;
    assert_eq!(g.phase, P::Succeeded as i32, "{}", g.message);
    // The second member never waited: its gate was decided when the train was approved.
    let second = &g.releases[1];
    let gate = &second.steps[0];
    assert_eq!(gate.name, "approval");
    let opened = gate.started_at.unwrap();
    let passed = gate.finished_at.unwrap();
    assert!(passed.seconds - opened.seconds <= 1, "{gate:?}");
    let err = h.client().approve_release_group(approve("dave", &["release-manager"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "nothing left to approve: {err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_train_ends_before_anything_changes() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let staged = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&staged.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    let promote = pb::PromoteReleaseRequest { id: staged.id.clone(), full: false, reason: "ok".into() };
    h.client().promote_release(as_user(promote, "alice", &[])).await.unwrap();
    h.wait_settled(&staged.id, 20).await;
    let g =
        create(&h, train("production", vec![member("booking-service", "booking:1.1", &[])]), "alice").await.unwrap();
    h.wait_phase(&g.releases[0].id, P::AwaitingApproval, 20).await;
    let reject = |reason: &str| {
        as_user(pb::RejectReleaseGroupRequest { id: g.id.clone(), reason: reason.into() }, "bob", &["release-manager"])
    };
    let err = h.client().reject_release_group(reject("")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    h.client().reject_release_group(reject("not this week")).await.unwrap();
    let g = settled(&h, &g.id, 20).await;
    assert_eq!(g.phase, P::Aborted as i32);
    assert!(g.message.contains("rejected by bob: not this week"), "{}", g.message);
    assert!(h.fakes.deployer.target("booking-service", "production").is_none(), "nothing changed");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_with_a_cycle_or_an_unknown_service_is_refused_and_nothing_is_stored() {
    let h = Harness::start().await;
    h.apply(&config_with_dependencies()).await;
    let cases: Vec<(pb::CreateTrainRequest, &str)> = vec![
        (
            train(
                "staging",
                vec![
                    member("booking-service", "booking:2", &[]),
                    member("chat-service", "chat:2", &["booking-service"]),
                ],
            ),
            "members[1].depends_on[0]: dependency cycle: booking-service → chat-service → booking-service",
        ),
        (
            train("staging", vec![member("chat-service", "chat:2", &[]), member("payments", "pay:1", &[])]),
            "members[1].service: unknown service \"payments\" (known: booking-service, gateway, chat-service)",
        ),
        (
            train("staging", vec![member("chat-service", "chat:2", &["gateway"])]),
            "members[0].depends_on[0]: \"gateway\" is not a member of this train",
        ),
        (train("staging", vec![member("chat-service", "chat 2", &[])]), "members[0].artifact: \"chat 2\" contains ' '"),
        (train("qa", vec![member("chat-service", "chat:2", &[])]), "environment: unknown environment \"qa\""),
        (train("staging", vec![]), "members: a train needs at least one member"),
    ];
    for (request, expected) in cases {
        let err = create(&h, request, "alice").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(expected), "{:?} does not start with {expected:?}", err.message());
    }
    let listed = h.client().list_releases(pb::ListReleasesRequest::default()).await.unwrap().into_inner();
    assert!(listed.releases.is_empty(), "nothing stored: {:?}", listed.releases);
    h.stop().await;
}
