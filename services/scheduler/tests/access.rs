//! Roles per environment: a deployer of staging releases there, and neither changes nor sees
//! production (single reads refused, lists and the audit log without production's rows).

mod common;

use common::Harness;
use hopngo_proto::release::{self as pb, release_service_client::ReleaseServiceClient};
use hopngo_testkit::access::{token, with_credential};
use tonic::Code;

/// Two environments without a promotion policy between them.
const CONFIG: &str = "environments:\n  - name: staging\n  - name: production\nservices:\n  - name: chat-service\n    strategy: {canary: {steps: [{setWeight: 50}]}}\n  - name: gateway\n    strategy: {canary: {steps: [{setWeight: 50}]}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_of_staging_neither_changes_nor_sees_production() {
    let h = Harness::start().await;
    h.apply(CONFIG).await;
    let staging = h.create("chat-service", "staging", "chat:1", "ops").await.unwrap();
    let production = h.create("chat-service", "production", "chat:1", "ops").await.unwrap();
    let mut sam = ReleaseServiceClient::new(with_credential(
        &format!("http://{}", h.addr),
        Some(&token("sam", &["staging-deployers"])),
    ));
    let create = |environment: &str| pb::CreateReleaseRequest {
        service: "gateway".into(),
        environment: environment.into(),
        artifact: "gw:1".into(),
        ..Default::default()
    };
    sam.create_release(create("staging")).await.expect("sam deploys to staging");
    let err = sam.create_release(create("production")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "sam lacks the deploy permission for gateway in production: it needs one of the roles deployer, admin"
    );
    let abort = pb::AbortReleaseRequest { id: production.id.clone(), reason: "not mine".into() };
    assert_eq!(sam.abort_release(abort).await.unwrap_err().code(), Code::PermissionDenied);

    // Reads: a production release is refused, lists leave it out.
    let get = |id: &str| pb::GetReleaseRequest { id: id.into() };
    sam.get_release(get(&staging.id)).await.expect("staging is visible");
    let err = sam.get_release(get(&production.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("sam lacks the view permission for chat-service in production"), "{err:?}");
    let watch = sam.watch_release(pb::WatchReleaseRequest { id: production.id.clone() }).await;
    assert_eq!(watch.unwrap_err().code(), Code::PermissionDenied);
    let revisions = pb::ListRevisionsRequest { service: "chat-service".into(), environment: "production".into() };
    assert_eq!(sam.list_revisions(revisions).await.unwrap_err().code(), Code::PermissionDenied);
    let listed = sam.list_releases(pb::ListReleasesRequest::default()).await.unwrap().into_inner().releases;
    assert!(!listed.is_empty() && listed.iter().all(|r| r.environment == "staging"), "{listed:?}");
    let everything = h.client().list_releases(pb::ListReleasesRequest::default()).await.unwrap().into_inner().releases;
    assert!(everything.iter().any(|r| r.environment == "production"), "an admin sees production");
    let audit = sam.list_audit_entries(pb::ListAuditEntriesRequest::default()).await.unwrap().into_inner().entries;
    assert!(audit.iter().any(|e| e.environment == "staging"));
    assert!(audit.iter().all(|e| e.environment != "production"), "no production rows for sam");
    h.stop().await;
}
