//! The audit log: every transition with who caused it and why, every refused request, readable
//! with filters and pages, and append-only even for the scheduler's own database role.

mod common;

use common::{Harness, as_user};
use hopngo_proto::{
    config::{ApplyConfigRequest, config_service_client::ConfigServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{
    access::{self, with_credential},
    oidc::TestIssuer,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_and_every_refusal_is_audited_and_the_log_is_append_only() {
    let h = Harness::start().await;
    let mut c = h.client();
    let create = pb::CreateReleaseRequest {
        service: "chat-service".into(),
        environment: "staging".into(),
        artifact: "chat:1".into(),
        request_id: "req-42".into(),
        reason: "first chat".into(),
        ..Default::default()
    };
    let r = c.create_release(as_user(create, "alice", &[])).await.unwrap().into_inner().release.unwrap();
    // Refused: an approval nobody asked for, a release that does not exist, an unknown service.
    let approve = pb::ApproveReleaseRequest { id: r.id.clone(), reason: "looks fine".into() };
    let err = c.approve_release(as_user(approve, "bob", &["release-manager"])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let missing = uuid::Uuid::now_v7().to_string();
    let abort = pb::AbortReleaseRequest { id: missing.clone(), reason: "oops".into() };
    assert_eq!(c.abort_release(as_user(abort, "mallory", &[])).await.unwrap_err().code(), Code::NotFound);
    let bad = pb::CreateReleaseRequest {
        service: "nope".into(),
        environment: "staging".into(),
        artifact: "x:1".into(),
        ..Default::default()
    };
    assert_eq!(c.create_release(as_user(bad, "mallory", &[])).await.unwrap_err().code(), Code::InvalidArgument);
    h.wait(&r.id, 20, |r| r.settled).await;

    let all = c.list_audit_entries(pb::ListAuditEntriesRequest::default()).await.unwrap().into_inner().entries;
    let created = all.iter().find(|e| e.action == "created").expect("the creation is audited");
    assert_eq!(
        (created.actor.as_str(), created.reason.as_str(), created.request_id.as_str(), created.service.as_str()),
        ("alice", "first chat", "req-42", "chat-service")
    );
    assert_eq!(created.outcome, pb::AuditOutcome::Allowed as i32);
    assert!(all.iter().any(|e| e.actor == "scheduler" && e.action == "weight-changed"), "the engine's steps too");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    let refused = c
        .list_audit_entries(pb::ListAuditEntriesRequest {
            outcome: pb::AuditOutcome::Refused as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let summary: Vec<(&str, &str, &str)> =
        refused.iter().map(|e| (e.actor.as_str(), e.action.as_str(), e.release_id.as_str())).collect();
    assert_eq!(summary, vec![("mallory", "create", ""), ("mallory", "abort", ""), ("bob", "approve", r.id.as_str())]);
    assert!(refused[0].message.starts_with("InvalidArgument: service: unknown service"), "{}", refused[0].message);
    assert!(refused[1].message.starts_with("NotFound: "), "{}", refused[1].message);
    assert_eq!((refused[2].reason.as_str(), refused[2].service.as_str()), ("looks fine", "chat-service"));
    assert!(refused[2].message.starts_with("FailedPrecondition: "), "{}", refused[2].message);

    // Filters: actor (compared as identities are), action, release, time range; pages.
    let by = |actor: &str| pb::ListAuditEntriesRequest { actor: actor.into(), ..Default::default() };
    let mallory = c.list_audit_entries(by("MALLORY")).await.unwrap().into_inner().entries;
    assert_eq!(mallory.len(), 2);
    let of_release = c
        .list_audit_entries(pb::ListAuditEntriesRequest { release_id: r.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(of_release.iter().all(|e| e.release_id == r.id) && of_release.len() >= 4);
    let future = prost_types::Timestamp { seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 3600, nanos: 0 };
    let none = c
        .list_audit_entries(pb::ListAuditEntriesRequest { start_time: Some(future), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(none.entries.is_empty());
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_audit_entries(pb::ListAuditEntriesRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.extend(page.entries.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, all.iter().map(|e| e.id).collect::<Vec<_>>(), "pages cover the log once, in order");
    let err = c
        .list_audit_entries(pb::ListAuditEntriesRequest { release_id: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Append-only, for the scheduler's own role (and even a superuser).
    let pool = sqlx::PgPool::connect(&h.db.url).await.unwrap();
    for statement in [
        "UPDATE scheduler.audit_log SET actor = 'nobody'",
        "DELETE FROM scheduler.audit_log",
        "TRUNCATE scheduler.audit_log",
    ] {
        let err = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{statement}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.audit_log").fetch_one(&pool).await.unwrap();
    assert_eq!(count as usize, all.len());
    pool.close().await;

    // Requests carry who their credential proved: the request itself, with issuer, subject,
    // groups and RPC.
    let asked = all.iter().find(|e| e.action == "create" && e.actor == "alice").expect("the request is audited");
    assert_eq!(asked.outcome, pb::AuditOutcome::Allowed as i32);
    assert_eq!(
        (asked.issuer.as_str(), asked.subject.as_str(), asked.rpc.as_str()),
        (TestIssuer::shared().url(), "sub-alice", "/hopngo.release.v1.ReleaseService/CreateRelease")
    );
    assert_eq!(asked.groups, vec!["deployers".to_string()]);
    assert_eq!(refused[2].subject, "sub-bob", "refusals too");

    // Calls the authentication layer refuses before any handler are audited as well: one without
    // a token, and a viewer applying a config.
    let url = format!("http://{}", h.addr);
    let mut anonymous = ReleaseServiceClient::new(with_credential(&url, None));
    let err = anonymous.list_releases(pb::ListReleasesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let viewer = with_credential(&url, Some(&access::token("vera", &["viewers"])));
    let apply = ApplyConfigRequest { yaml: common::CONFIG.into() };
    let err = ConfigServiceClient::new(viewer).apply_config(apply).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let refused = |actor: &str| {
        let mut c = h.client();
        let actor = actor.to_string();
        async move {
            let request =
                pb::ListAuditEntriesRequest { outcome: pb::AuditOutcome::Refused as i32, actor, ..Default::default() };
            c.list_audit_entries(request).await.unwrap().into_inner().entries
        }
    };
    common::eventually(10, || async { !refused("unauthenticated@127.0.0.1").await.is_empty() }).await;
    let entry = &refused("unauthenticated@127.0.0.1").await[0];
    assert_eq!(
        (entry.action.as_str(), entry.rpc.as_str(), entry.message.as_str()),
        (
            "ListReleases",
            "/hopngo.release.v1.ReleaseService/ListReleases",
            "Unauthenticated: no credentials: send `authorization: Bearer <token>`"
        )
    );
    common::eventually(10, || async { !refused("vera").await.is_empty() }).await;
    let entry = &refused("vera").await[0];
    assert_eq!(
        (entry.action.as_str(), entry.issuer.as_str(), entry.subject.as_str()),
        ("ApplyConfig", TestIssuer::shared().url(), "sub-vera")
    );
    assert_eq!(entry.groups, vec!["viewers".to_string()]);
    assert!(entry.message.starts_with("PermissionDenied: vera lacks the admin permission"), "{}", entry.message);
    h.stop().await;
}
