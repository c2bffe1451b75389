//! Release scenarios against the real scheduler (gRPC on loopback, real PostgreSQL) with recording
//! fakes for the deployer, analyzer, migrator and notifier.

mod common;

use std::time::Duration;

use common::{Harness, as_user, eventually};
use hopngo_proto::{analyzer::AnalysisPhase, release as pb};
use hopngo_testkit::fakes::Behavior;
use pb::ReleasePhase as P;
use tokio_stream::StreamExt as _;

fn promote(id: &str, full: bool) -> pb::PromoteReleaseRequest {
    pb::PromoteReleaseRequest { id: id.into(), full, reason: "test".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_runs_to_succeeded_and_promote_skips_the_pause() {
    let h = Harness::start().await;
    // Runs measure a while (as real ones do) before their verdict.
    h.fakes.analyzer.polls_before_verdict(2);
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(r.strategy, pb::Strategy::Canary as i32);
    assert_eq!(r.steps.len(), 7, "preflight, then the six configured steps");
    let paused = h.wait(&r.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    assert_eq!(paused.canary_weight, 50);
    let target = h.fakes.deployer.target("booking-service", "staging").unwrap();
    assert_eq!(target.canary_weight, 50);
    assert_eq!(target.tracks.len(), 2);
    h.client().promote_release(as_user(promote(&r.id, false), "bob", &[])).await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(done.completion, pb::Completion::Promoted as i32);
    let target = h.fakes.deployer.target("booking-service", "staging").unwrap();
    assert_eq!((target.tracks.len(), target.tracks[0].artifact.as_str(), target.canary_weight), (1, "booking:1.1", 0));
    // Background analysis started at step 1 and was terminated when the release ended.
    let runs = h.fakes.analyzer.runs();
    let background: Vec<_> = runs.iter().filter(|r| r.labels["kind"] == "background").collect();
    assert_eq!(background.len(), 1);
    // Beside it, the stable track measured with the same metrics as dry runs (for comparison),
    // ended with the release too.
    let reference: Vec<_> = runs.iter().filter(|r| r.labels["kind"] == "reference").collect();
    assert_eq!(reference.len(), 1, "{runs:?}");
    assert_eq!((reference[0].args["track"].as_str(), background[0].args["track"].as_str()), ("stable", "canary"));
    assert_eq!(reference[0].dry_run_metrics, reference[0].metrics);
    assert!(!reference[0].metrics.is_empty() && reference[0].terminated);
    assert!(background[0].dry_run_metrics.is_empty());
    let seen: Vec<_> = done.analysis_runs.iter().filter(|a| a.kind == "background").collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].phase, "SUCCESSFUL", "the release shows how the terminated run ended");
    // Every apply used a distinct key, one per step.
    let calls = h.fakes.deployer.calls();
    let keys: std::collections::BTreeSet<_> = calls.iter().map(|c| c.key.clone()).collect();
    assert_eq!(keys.len(), calls.len(), "{calls:?}");
    // Events reach the notifier in order without gaps.
    let id = r.id.clone();
    eventually(10, || {
        let events = h.fakes.notifier.events();
        let id = id.clone();
        async move { events.iter().any(|e| e.release_id == id && e.r#type == "dev.cdevents.service.upgraded.0.3.0") }
    })
    .await;
    let seqs: Vec<u64> =
        h.fakes.notifier.events().iter().filter(|e| e.release_id == r.id).map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let revisions = h
        .client()
        .list_revisions(pb::ListRevisionsRequest { service: "booking-service".into(), environment: "staging".into() })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(revisions.iter().map(|r| (r.revision, r.current)).collect::<Vec<_>>(), vec![(2, true), (1, false)]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_analysis_aborts_and_sets_weight_zero() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.analyzer.verdict("step", AnalysisPhase::Failed);
    let r = h.create("booking-service", "staging", "booking:bad", "alice").await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Aborted as i32, "{}", done.message);
    assert_eq!(done.canary_weight, 0);
    assert!(done.message.contains("traffic back on booking:1.0"), "{}", done.message);
    assert_eq!(done.steps[3].status, pb::StepStatus::Failed as i32);
    let target = h.fakes.deployer.target("booking-service", "staging").unwrap();
    assert_eq!(target.canary_weight, 0);
    assert_eq!(target.tracks.iter().map(|t| t.artifact.as_str()).collect::<Vec<_>>(), vec!["booking:1.0"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconclusive_pauses_then_promote_full_finishes() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.analyzer.verdict("step", AnalysisPhase::Inconclusive);
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    let paused = h.wait(&r.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 3).await;
    assert!(paused.message.contains("inconclusive"), "{}", paused.message);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.get(&r.id).await.phase, P::Paused as i32, "stays paused for a person");
    h.client().promote_release(as_user(promote(&r.id, true), "bob", &[])).await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.completion, pb::Completion::FastPromoted as i32);
    assert!(done.steps[4..].iter().all(|s| s.status == pb::StepStatus::Skipped as i32));
    let err = h.client().promote_release(as_user(promote(&r.id, false), "bob", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "promote of a finished release: {err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_canary_then_retry_then_undo_to_a_revision() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let r2 = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap();
    h.wait_settled(&r2.id, 20).await;
    let r3 = h.create("chat-service", "staging", "chat:3", "alice").await.unwrap();
    h.wait(&r3.id, 20, |r| r.phase == P::Paused as i32).await;
    let aborted = h
        .client()
        .abort_release(as_user(pb::AbortReleaseRequest { id: r3.id.clone(), reason: "bad logs".into() }, "bob", &[]))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(aborted.phase, P::Aborted as i32);
    let settled = h.wait_settled(&r3.id, 20).await;
    assert_eq!(settled.canary_weight, 0);
    assert_eq!(h.fakes.deployer.target("chat-service", "staging").unwrap().tracks[0].artifact, "chat:2");
    let retried = h
        .client()
        .retry_release(as_user(pb::RetryReleaseRequest { id: r3.id.clone(), reason: "fixed".into() }, "bob", &[]))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!((retried.attempt, retried.phase), (2, P::Pending as i32));
    let done = h.wait_settled(&r3.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    let second_attempt_keys =
        h.fakes.deployer.calls().iter().filter(|c| c.key.starts_with(&r3.id) && c.key.ends_with("/2")).count();
    assert!(second_attempt_keys >= 1, "the retry used fresh keys");
    // Undo to revision 1.
    let undo = h
        .client()
        .undo_release(as_user(
            pb::UndoReleaseRequest {
                service: "chat-service".into(),
                environment: "staging".into(),
                to_revision: 1,
                reason: "regression".into(),
            },
            "bob",
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!((undo.artifact.as_str(), undo.undo_of_revision, undo.revision), ("chat:1", 1, 4));
    let done = h.wait_settled(&undo.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32);
    assert_eq!(h.fakes.deployer.target("chat-service", "staging").unwrap().tracks[0].artifact, "chat:1");
    // Undo without a revision goes back to the previous succeeded one (chat:3, revision 3).
    let undo = h
        .client()
        .undo_release(as_user(
            pb::UndoReleaseRequest {
                service: "chat-service".into(),
                environment: "staging".into(),
                to_revision: 0,
                reason: String::new(),
            },
            "bob",
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!((undo.artifact.as_str(), undo.undo_of_revision), ("chat:3", 3));
    let err = h
        .client()
        .undo_release(as_user(
            pb::UndoReleaseRequest {
                service: "chat-service".into(),
                environment: "staging".into(),
                to_revision: 99,
                reason: String::new(),
            },
            "bob",
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_with_pre_and_post_analysis_and_switch_back_on_failure() {
    let h = Harness::start().await;
    h.seed_stable("gateway", "staging", "gw:1").await;
    let r = h.create("gateway", "staging", "gw:2", "alice").await.unwrap();
    assert_eq!(r.strategy, pb::Strategy::BlueGreen as i32);
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    let kinds: Vec<String> = h.fakes.analyzer.runs().iter().map(|r| r.labels["kind"].clone()).collect();
    assert_eq!(kinds, vec!["verify", "prePromotion", "postPromotion"], "the first release ran the smoke analysis too");
    let calls = h.fakes.deployer.calls();
    let gw: Vec<_> = calls.iter().filter(|c| c.target.service == "gateway").map(|c| c.target.clone()).collect();
    // preview beside active, then the switch (old kept on preview), then scale-down.
    let shape = |t: &hopngo_proto::deployer::TargetSpec| {
        t.tracks.iter().map(|t| (t.track, t.artifact.clone())).collect::<Vec<_>>()
    };
    use hopngo_proto::deployer::Track;
    assert_eq!(shape(&gw[1]), vec![(Track::Active as i32, "gw:1".into()), (Track::Preview as i32, "gw:2".into())]);
    assert_eq!(shape(&gw[2]), vec![(Track::Active as i32, "gw:2".into()), (Track::Preview as i32, "gw:1".into())]);
    assert_eq!(shape(&gw[3]), vec![(Track::Active as i32, "gw:2".into())]);

    h.fakes.analyzer.verdict("postPromotion", AnalysisPhase::Failed);
    let r = h.create("gateway", "staging", "gw:3", "alice").await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Aborted as i32);
    assert_eq!(done.completion, pb::Completion::RolledBack as i32, "the switch was undone");
    let t = h.fakes.deployer.target("gateway", "staging").unwrap();
    assert_eq!(shape(&t), vec![(Track::Active as i32, "gw:2".into())]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_needs_upstream_success_and_an_approval_by_someone_else() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let err = h.create("booking-service", "production", "booking:9.9", "alice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("has not succeeded for booking-service in staging"), "{err:?}");
    // The first version went straight to stable in staging: nothing verified it.
    let err = h.create("booking-service", "production", "booking:1.0", "alice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is not verified: its plan has no verify step or analysis"), "{err:?}");
    // A canary whose analysis passed in staging is verified; promote-environment releases it.
    let staged = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&staged.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    h.client().promote_release(as_user(promote(&staged.id, false), "alice", &[])).await.unwrap();
    let staged = h.wait_settled(&staged.id, 20).await;
    assert!(staged.verification.as_ref().unwrap().verified, "{:?}", staged.verification);
    let promote_env = |from: &str| pb::PromoteEnvironmentRequest {
        service: "booking-service".into(),
        from_environment: from.into(),
        to_environment: "production".into(),
        reason: "weekly release".into(),
        ..Default::default()
    };
    let err = h.client().promote_environment(as_user(promote_env("qa"), "alice", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("from_environment: production is promoted from staging"), "{err:?}");
    let promoted = h.client().promote_environment(as_user(promote_env(""), "alice", &[])).await.unwrap().into_inner();
    let r = promoted.release.unwrap();
    assert_eq!((r.environment.as_str(), r.artifact.as_str()), ("production", "booking:1.1"));
    assert_eq!(promoted.source.unwrap().id, staged.id);
    let waiting = h.wait_phase(&r.id, P::AwaitingApproval, 20).await;
    assert_eq!(waiting.pending_approval.as_ref().unwrap().roles, vec!["release-manager"]);
    assert!(h.fakes.deployer.target("booking-service", "production").is_none(), "nothing changes before approval");
    let approve = |user: &str, roles: &[&str]| {
        as_user(pb::ApproveReleaseRequest { id: r.id.clone(), reason: "ok".into() }, user, roles)
    };
    let err = h.client().approve_release(approve("alice", &["release-manager"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "self-approval: {err:?}");
    // Identities compare normalised: ALICE is alice.
    for alice in ["ALICE", " Alice "] {
        let err = h.client().approve_release(approve(alice, &["Release-Manager"])).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "self-approval as {alice:?}: {err:?}");
        assert!(err.message().contains("four-eyes"), "{err:?}");
    }
    let err = h.client().approve_release(approve("carol", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "missing role: {err:?}");
    let err = h
        .client()
        .approve_release(pb::ApproveReleaseRequest { id: r.id.clone(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "anonymous: {err:?}");
    let unchanged = h.get(&r.id).await;
    assert!(unchanged.approvals.is_empty(), "refused approvals are not stored");
    h.client().approve_release(approve("bob", &["release-manager"])).await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(done.approvals[0].user, "bob");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_release_supersedes_the_active_one() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let old = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&old.id, 20, |r| r.canary_weight == 25).await;
    let new = h.create("booking-service", "staging", "booking:1.2", "alice").await.unwrap();
    let old = h.wait_settled(&old.id, 20).await;
    assert_eq!(old.phase, P::Superseded as i32);
    assert_eq!(old.superseded_by, new.id);
    assert_eq!(new.revision, 3);
    h.wait(&new.id, 20, |r| r.canary_weight == 25).await;
    let t = h.fakes.deployer.target("booking-service", "staging").unwrap();
    assert_eq!(t.tracks[1].artifact, "booking:1.2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployer_down_retries_then_aborts_at_the_progress_deadline() {
    let mut h = Harness::start().await;
    let config = common::CONFIG
        .replace("progressDeadline: 20s\n  - name: production", "progressDeadline: 2s\n  - name: production");
    h.apply(&config).await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    h.fakes.deployer_server.down().await;
    let r = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap();
    let waiting = h.wait(&r.id, 10, |r| r.message.contains("waiting for deployer")).await;
    assert_eq!(waiting.phase, P::Progressing as i32);
    let done = h.wait_settled(&r.id, 15).await;
    assert_eq!(done.phase, P::Aborted as i32);
    assert!(done.message.contains("progress deadline exceeded (2s)"), "{}", done.message);
    assert!(done.message.contains("deployer"), "the reason names the dependency: {}", done.message);
    h.fakes.deployer_server.up().await.unwrap();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_analyzer_is_cut_by_the_call_deadline() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.analyzer_server.behave(Behavior::Hang);
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    let waiting = h.wait(&r.id, 20, |r| r.message.contains("waiting for analyzer")).await;
    assert!(waiting.message.contains("Timeout expired"), "the call deadline fired: {}", waiting.message);
    h.fakes.analyzer_server.behave(Behavior::Normal);
    h.wait(&r.id, 20, |r| r.current_step_index >= 3).await;
    // Each analysis run was started once per key even though calls were repeated.
    let runs = h.fakes.analyzer.runs();
    let keys: std::collections::BTreeSet<_> = runs.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), runs.len());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_down_means_events_wait_not_lost() {
    let mut h = Harness::start().await;
    h.fakes.notifier_server.down().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let r = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap();
    h.wait_settled(&r.id, 20).await;
    assert!(h.fakes.notifier.events().is_empty());
    h.fakes.notifier_server.up().await.unwrap();
    eventually(20, || async { h.fakes.notifier.events().iter().filter(|e| e.release_id == r.id).count() >= 5 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = h.fakes.notifier.events();
    let mine: Vec<u64> = events.iter().filter(|e| e.release_id == r.id).map(|e| e.sequence).collect();
    assert_eq!(mine, (1..=mine.len() as u64).collect::<Vec<_>>(), "in order, no gaps");
    assert_eq!(events.last().unwrap().spec_version, "1.0");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_a_snapshot_then_changes_and_ends_when_settled() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let r = h.create("chat-service", "staging", "chat:2", "alice").await.unwrap();
    let mut stream = h.client().watch_release(pb::WatchReleaseRequest { id: r.id.clone() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(item) = stream.next().await {
            seen.push(item.unwrap().release.unwrap());
        }
    })
    .await;
    assert!(collected.is_ok(), "the stream ends by itself");
    assert!(seen.len() >= 3, "snapshot plus changes: {}", seen.len());
    let last = seen.last().unwrap();
    assert!(last.settled && last.phase == P::Succeeded as i32);
    let versions: Vec<u64> = seen.iter().map(|r| r.version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    let err = h.client().watch_release(pb::WatchReleaseRequest { id: uuid_like() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    h.stop().await;
}

fn uuid_like() -> String {
    "0190f0a0-0000-7000-8000-000000000000".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_paginates() {
    let h = Harness::start().await;
    h.seed_stable("chat-service", "staging", "chat:0").await;
    for i in 1..=4 {
        let r = h.create("chat-service", "staging", &format!("chat:{i}"), "alice").await.unwrap();
        if i < 4 {
            // Superseded by the next create.
            assert_eq!(r.revision, i + 1);
        }
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .client()
            .list_releases(pb::ListReleasesRequest {
                service: "chat-service".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.releases.len() <= 2);
        seen.extend(page.releases.into_iter().map(|r| r.revision));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1]);
    let superseded = h
        .client()
        .list_releases(pb::ListReleasesRequest { phases: vec![P::Superseded as i32], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .releases;
    assert!(superseded.iter().all(|r| r.phase == P::Superseded as i32));
    let err = h
        .client()
        .list_releases(pb::ListReleasesRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err =
        h.client().list_releases(pb::ListReleasesRequest { page_size: 501, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_rollback_runs_services_one_after_another() {
    let h = Harness::start().await;
    for (svc, a, b) in [("chat-service", "chat:1", "chat:2"), ("booking-service", "booking:1", "booking:2")] {
        h.seed_stable(svc, "staging", a).await;
        let r = h.create(svc, "staging", b, "alice").await.unwrap();
        h.client().promote_release(as_user(promote(&r.id, true), "alice", &[])).await.unwrap();
        h.wait_settled(&r.id, 20).await;
    }
    let group = h
        .client()
        .rollback_environment(as_user(
            pb::RollbackEnvironmentRequest {
                environment: "staging".into(),
                services: vec![],
                reason: "incident".into(),
                emergency: true,
            },
            "ops",
            &[],
        ))
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let members: Vec<_> = group.releases.iter().map(|r| (r.service.clone(), r.artifact.clone())).collect();
    assert_eq!(members, vec![("booking-service".into(), "booking:1".into()), ("chat-service".into(), "chat:1".into())]);
    assert_eq!(group.releases[1].phase, P::Pending as i32, "the second waits for the first");
    eventually(30, || {
        let mut c = h.client();
        let id = group.id.clone();
        async move {
            let g = c.get_release_group(pb::GetReleaseGroupRequest { id }).await.unwrap().into_inner().group.unwrap();
            g.phase == P::Succeeded as i32
        }
    })
    .await;
    assert_eq!(h.fakes.deployer.target("chat-service", "staging").unwrap().tracks[0].artifact, "chat:1");
    assert_eq!(h.fakes.deployer.target("booking-service", "staging").unwrap().tracks[0].artifact, "booking:1");
    let g = h
        .client()
        .get_release_group(pb::GetReleaseGroupRequest { id: group.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap();
    let first_done = g.releases[0].finished_at.unwrap();
    let second_started = g.releases[1].steps[0].started_at.unwrap();
    assert!(
        (second_started.seconds, second_started.nanos) >= (first_done.seconds, first_done.nanos),
        "one after another"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_step_runs_before_any_traffic_shift_and_a_failed_migration_aborts() {
    let h = Harness::start().await;
    let config = common::CONFIG.replace(
        "        analysis: {templates: [slo], startingStep: 1}\n  - name: gateway",
        "        analysis: {templates: [slo], startingStep: 1}\n    migrations: {database: booking, locations: [db/booking]}\n  - name: gateway",
    );
    assert_ne!(config, common::CONFIG);
    h.apply(&config).await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.migrator.outcome(hopngo_proto::migrator::MigrationPhase::Running);
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    assert_eq!((r.steps[0].name.as_str(), r.steps[1].name.as_str()), ("preflight", "migrate"));
    h.wait(&r.id, 20, |r| r.message.starts_with("migrating")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.fakes.deployer.calls().iter().all(|c| !c.key.starts_with(&r.id)), "no traffic moves while migrating");
    h.fakes.migrator.outcome(hopngo_proto::migrator::MigrationPhase::Succeeded);
    h.wait(&r.id, 20, |r| r.current_step_index >= 3).await;
    let runs = h.fakes.migrator.runs();
    assert_eq!(runs.len(), 2, "seed and release each migrated once: {runs:?}");
    assert!(runs[1].key.starts_with(&format!("{}/1/", r.id)), "keyed by release/step/attempt: {runs:?}");
    assert_eq!(runs[1].database, "booking");
    h.client().abort_release(pb::AbortReleaseRequest { id: r.id.clone(), reason: "next".into() }).await.unwrap();
    h.wait_settled(&r.id, 20).await;

    h.fakes.migrator.outcome(hopngo_proto::migrator::MigrationPhase::Failed);
    let r = h.create("booking-service", "staging", "booking:1.2", "alice").await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Aborted as i32);
    assert!(done.message.contains("migration failed"), "{}", done.message);
    assert!(h.fakes.deployer.calls().iter().all(|c| !c.key.starts_with(&r.id)), "no traffic moved");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_notify_everything_still_completes() {
    let h = Harness::start_with(&["--listen-notify", "false"]).await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&r.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    h.client().promote_release(as_user(promote(&r.id, false), "bob", &[])).await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Succeeded as i32);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_preflight_stops_the_release_before_anything_changes() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    h.fakes.analyzer.provider_unusable("error-rate", "GET http://127.0.0.1:9090/api/v1/query: connection refused");
    let before = h.fakes.deployer.calls().len();
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    let done = h.wait_settled(&r.id, 20).await;
    assert_eq!(done.phase, P::Aborted as i32);
    assert_eq!(
        done.message,
        "aborted: preflight failed: metrics/error-rate: GET http://127.0.0.1:9090/api/v1/query: connection refused"
    );
    assert_eq!(done.steps[0].status, pb::StepStatus::Failed as i32);
    assert_eq!(h.fakes.deployer.calls().len(), before, "nothing reached the deployer");
    assert!(h.fakes.analyzer.runs().iter().all(|run| !run.labels["release"].eq(&r.id)), "no analysis started");
    let failed: Vec<_> = done.preflight_checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect();
    assert_eq!(failed, vec!["metrics/error-rate"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_waits_out_the_soak_time() {
    let h = Harness::start().await;
    let config = common::CONFIG.replace(
        "    approval: {minApprovals: 1, roles: [release-manager]}\n",
        "    approval: {minApprovals: 1, roles: [release-manager]}\n    promotion: {requireVerification: false, soak: 1h}\n",
    );
    assert_ne!(config, common::CONFIG);
    h.apply(&config).await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let err = h.create("chat-service", "production", "chat:1", "alice").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("production needs a soak of 1h (promotable from "), "{err:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauges_count_releases_by_phase_and_the_outbox_backlog() {
    let h = Harness::start_with(&["--admin-listen", "127.0.0.1:0", "--gauge-interval", "100ms"]).await;
    let admin = h.admin.expect("the admin listener is on").to_string();
    let read = |series: &'static str| {
        let admin = admin.clone();
        async move { hopngo_testkit::measure::sample(&hopngo_testkit::measure::scrape(&admin).await, series) }
    };
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&r.id, 20, |r| r.phase == P::Paused as i32 && r.current_step_index == 5).await;
    eventually(10, || async { read("hopngo_scheduler_releases{phase=\"PAUSED\"}").await == Some(1.0) }).await;
    assert_eq!(read("hopngo_scheduler_releases{phase=\"PROGRESSING\"}").await, Some(0.0));
    assert_eq!(read("hopngo_scheduler_releases_overdue").await, Some(0.0));
    eventually(10, || async { read("hopngo_scheduler_outbox_backlog").await == Some(0.0) }).await;
    h.client().promote_release(as_user(promote(&r.id, true), "alice", &[])).await.unwrap();
    h.wait_settled(&r.id, 20).await;
    eventually(10, || async { read("hopngo_scheduler_releases{phase=\"PAUSED\"}").await == Some(0.0) }).await;
    // Steps observed as they end: done before the promotion, and the paused one skipped by it
    // (steps never started have no duration).
    let steps = |kind: &'static str, status: &'static str| {
        let series = format!("hopngo_scheduler_step_duration_seconds_count{{kind=\"{kind}\",status=\"{status}\"}}");
        let admin = admin.clone();
        async move { hopngo_testkit::measure::sample(&hopngo_testkit::measure::scrape(&admin).await, &series) }
    };
    assert!(steps("setWeight", "succeeded").await >= Some(1.0));
    assert_eq!(steps("pause", "skipped").await, Some(1.0), "promote --full skips the pause it was in");
    assert_eq!(read("hopngo_scheduler_abort_seconds_count").await, Some(0.0));
    // An abort: from recorded to settled.
    let aborted = h.create("booking-service", "staging", "booking:1.2", "alice").await.unwrap();
    h.wait(&aborted.id, 20, |r| r.phase == P::Paused as i32).await;
    h.client()
        .abort_release(as_user(
            pb::AbortReleaseRequest { id: aborted.id.clone(), reason: "bad logs".into() },
            "alice",
            &[],
        ))
        .await
        .unwrap();
    h.wait_settled(&aborted.id, 20).await;
    eventually(10, || async { read("hopngo_scheduler_abort_seconds_count").await == Some(1.0) }).await;
    h.stop().await;
}
