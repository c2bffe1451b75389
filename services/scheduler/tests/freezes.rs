//! Freezes: an admin freezes an environment and new releases are refused with the freeze's
//! reason; an admin's override (with a reason) passes and is audited; an emergency rollback
//! passes; freeze windows of the config freeze on a schedule; bad freezes are refused whole.

mod common;

use common::{CONFIG, Harness, as_user};
use hopngo_proto::release as pb;
use tonic::Code;

fn create(artifact: &str, override_freeze: bool, reason: &str) -> pb::CreateReleaseRequest {
    pb::CreateReleaseRequest {
        service: "chat-service".into(),
        environment: "staging".into(),
        artifact: artifact.into(),
        reason: reason.into(),
        override_freeze,
        ..Default::default()
    }
}

fn in_an_hour() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_refuses_releases_with_its_reason_until_an_admin_overrides_or_ends_it() {
    let h = Harness::start().await;
    let mut c = h.client();
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let freeze = pb::CreateFreezeRequest {
        environment: "staging".into(),
        end_time: Some(in_an_hour()),
        reason: "incident 42: payments are down".into(),
        ..Default::default()
    };
    // Freezing is an admin's call.
    let err = c.create_freeze(as_user(freeze.clone(), "alice", &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let frozen = c.create_freeze(as_user(freeze, "ops", &[])).await.unwrap().into_inner().freeze.unwrap();
    assert_eq!((frozen.environment.as_str(), frozen.created_by.as_str()), ("staging", "ops"));

    let refused = c.create_release(as_user(create("chat:2", false, ""), "alice", &[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().starts_with("staging is frozen until "), "{refused:?}");
    assert!(refused.message().contains("by ops: incident 42: payments are down"), "{refused:?}");
    // Overriding: not for a deployer, not without a reason.
    let err = c.create_release(as_user(create("chat:2", true, "hotfix"), "alice", &[])).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = c.create_release(as_user(create("chat:2", true, ""), "ops", &[])).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "reason: overriding a freeze needs a reason"));
    let through = c
        .create_release(as_user(create("chat:2", true, "the fix for incident 42"), "ops", &[]))
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    h.wait_settled(&through.id, 20).await;
    let audit = c
        .list_audit_entries(pb::ListAuditEntriesRequest { action: "freeze-overridden".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].actor.as_str(), audit[0].reason.as_str()), ("ops", "the fix for incident 42"));
    assert!(audit[0].message.starts_with("released chat:2 through: staging is frozen until"), "{}", audit[0].message);

    // An emergency rollback passes the freeze.
    let rollback = pb::RollbackEnvironmentRequest {
        environment: "staging".into(),
        services: vec!["chat-service".into()],
        reason: "back to chat:1".into(),
        emergency: true,
    };
    let group = c.rollback_environment(as_user(rollback, "ops", &[])).await.unwrap().into_inner().group.unwrap();
    assert_eq!(group.releases[0].artifact, "chat:1");

    // Anyone who may view sees it; ending it is an admin's call; then releases start again.
    let listed = c
        .list_freezes(as_user(
            pb::ListFreezesRequest { environment: "staging".into(), ..Default::default() },
            "alice",
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.freezes.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), vec![frozen.id.as_str()]);
    let end = || pb::EndFreezeRequest { id: frozen.id.clone(), reason: "incident over".into() };
    assert_eq!(c.end_freeze(as_user(end(), "alice", &[])).await.unwrap_err().code(), Code::PermissionDenied);
    let ended = c.end_freeze(as_user(end(), "ops", &[])).await.unwrap().into_inner().freeze.unwrap();
    assert!(ended.ended_time.is_some());
    assert_eq!((ended.ended_by.as_str(), ended.end_reason.as_str()), ("ops", "incident over"));
    assert_eq!(c.end_freeze(as_user(end(), "ops", &[])).await.unwrap_err().code(), Code::FailedPrecondition);
    let none = c.list_freezes(pb::ListFreezesRequest::default()).await.unwrap().into_inner();
    assert!(none.freezes.is_empty(), "ended freezes only with include_ended");
    let all = c.list_freezes(pb::ListFreezesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert_eq!(all.into_inner().freezes.len(), 1);
    h.wait_settled(&group.releases[0].id, 20).await;
    c.create_release(as_user(create("chat:3", false, ""), "alice", &[])).await.expect("no longer frozen");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_windows_of_the_config_freeze_on_their_schedule_and_bad_freezes_are_refused() {
    let h = Harness::start().await;
    let mut c = h.client();
    // A window that opens every minute for an hour: always open.
    let frozen_config = CONFIG.replacen(
        "  - name: staging\n",
        "  - name: staging\n    freezeWindows:\n      - {schedule: \"* * * * *\", duration: 1h, reason: release freeze}\n",
        1,
    );
    h.apply(&frozen_config).await;
    let refused = c.create_release(as_user(create("chat:1", false, ""), "alice", &[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("by the window * * * * * for 1h (UTC): release freeze"),
        "{}",
        refused.message()
    );
    let listed = c.list_freezes(pb::ListFreezesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.windows.len(), 1);
    assert_eq!(
        (listed.windows[0].environment.as_str(), listed.windows[0].reason.as_str()),
        ("staging", "release freeze")
    );

    // Bad freezes: named field, nothing stored.
    let past = prost_types::Timestamp::from(std::time::SystemTime::now() - std::time::Duration::from_secs(60));
    let cases = [
        (
            pb::CreateFreezeRequest {
                environment: "staging".into(),
                start_time: Some(in_an_hour()),
                end_time: Some(past),
                reason: "x".into(),
            },
            "end_time: ",
        ),
        (
            pb::CreateFreezeRequest {
                environment: "staging".into(),
                end_time: Some(past),
                reason: "x".into(),
                ..Default::default()
            },
            "end_time: ",
        ),
        (
            pb::CreateFreezeRequest {
                environment: "nope".into(),
                end_time: Some(in_an_hour()),
                reason: "x".into(),
                ..Default::default()
            },
            "environment: unknown environment",
        ),
        (
            pb::CreateFreezeRequest {
                environment: "staging".into(),
                end_time: Some(in_an_hour()),
                ..Default::default()
            },
            "reason: ",
        ),
        (
            pb::CreateFreezeRequest { environment: "staging".into(), reason: "x".into(), ..Default::default() },
            "end_time: must be set",
        ),
    ];
    for (request, field) in cases {
        let err = c.create_freeze(as_user(request, "ops", &[])).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    let at = in_an_hour();
    let err = c
        .create_freeze(as_user(
            pb::CreateFreezeRequest {
                environment: "staging".into(),
                start_time: Some(at),
                end_time: Some(at),
                reason: "x".into(),
            },
            "ops",
            &[],
        ))
        .await
        .unwrap_err();
    assert!(err.message().contains("is not after start_time"), "{}", err.message());
    let stored = c.list_freezes(pb::ListFreezesRequest { include_ended: true, ..Default::default() }).await.unwrap();
    assert!(stored.into_inner().freezes.is_empty(), "nothing stored");
    // A window that does not parse is refused with the config.
    let bad = CONFIG.replacen(
        "  - name: staging\n",
        "  - name: staging\n    freezeWindows:\n      - {schedule: \"0 25 * * *\", duration: 8d}\n",
        1,
    );
    let err = h
        .client_config()
        .apply_config(as_user(hopngo_proto::config::ApplyConfigRequest { yaml: bad }, "ops", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("environments[0].freezeWindows[0].schedule: hour: 25"), "{}", err.message());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_into_a_frozen_environment_needs_an_admins_override_too() {
    let h = Harness::start().await;
    let mut c = h.client();
    h.apply(
        "environments:\n  - name: staging\n  - name: production\n    from: staging\n    promotion: {requireVerification: false}\n\
         services:\n  - name: chat-service\n    strategy: {canary: {steps: [{setWeight: 50}]}}\n",
    )
    .await;
    h.seed_stable("chat-service", "staging", "chat:1").await;
    let freeze = pb::CreateFreezeRequest {
        environment: "production".into(),
        end_time: Some(in_an_hour()),
        reason: "quarter close".into(),
        ..Default::default()
    };
    c.create_freeze(as_user(freeze, "ops", &[])).await.unwrap();
    let promote = |override_freeze: bool| pb::PromoteEnvironmentRequest {
        service: "chat-service".into(),
        to_environment: "production".into(),
        reason: "customer fix".into(),
        override_freeze,
        ..Default::default()
    };
    let refused = c.promote_environment(as_user(promote(false), "ops", &[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("by ops: quarter close"), "{refused:?}");
    assert_eq!(
        c.promote_environment(as_user(promote(true), "alice", &[])).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let promoted = c.promote_environment(as_user(promote(true), "ops", &[])).await.unwrap().into_inner();
    assert_eq!(promoted.release.unwrap().environment, "production");
    h.stop().await;
}
