//! Who may call what, against the real processes over TLS: every RPC of every service with every
//! kind of credential (none, expired, for another audience, from another issuer, unsigned, and
//! valid ones of a viewer, deployer, approver and admin), approvals between proven identities,
//! the internal links closed to people and to other services' certificates, and the issuer
//! rotating its signing key mid-test.

use std::time::Duration;

use hopngo_e2e::{Part, Stack, StackOptions, TestAccess, channel};
use hopngo_kit::{
    authz::{Permission, RPC_PERMISSIONS},
    client::tls_channel,
    tls::{Tls, TlsArgs},
};
use hopngo_proto::{
    deployer::{self as dpb, deployer_service_client::DeployerServiceClient},
    identity::{WhoAmIRequest, identity_service_client::IdentityServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{
    access::{ADMIN_GROUP, AuthedChannel, token, with_credential},
    db::TestDb,
    oidc::{Signing, TestIssuer},
};
use tonic::Code;

const CONFIG: &str = r#"
environments:
  - name: staging
  - name: production
    approval: {minApprovals: 1, roles: [release-manager]}
services:
  - name: booking
    replicas: 1
    strategy:
      canary:
        steps:
          - setWeight: 50
    local:
      command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]
"#;

/// A credential of the matrix: how it is made, and the role it proves (`None`: it proves nobody).
struct Credential {
    name: &'static str,
    token: Option<String>,
    role: Option<&'static str>,
}

fn credentials() -> Vec<Credential> {
    let issuer = TestIssuer::shared();
    let claims = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = issuer.claims("mallory", &[ADMIN_GROUP]);
        change(&mut claims);
        issuer.sign(&claims, Signing::Es256)
    };
    let expired = claims(&|c| {
        let exp = c["exp"].as_u64().unwrap() - 7200;
        c["exp"] = exp.into();
        c["nbf"] = (exp - 3600).into();
        c["iat"] = (exp - 3600).into();
    });
    vec![
        Credential { name: "no token", token: None, role: None },
        Credential { name: "expired", token: Some(expired), role: None },
        Credential { name: "wrong audience", token: Some(claims(&|c| c["aud"] = "other".into())), role: None },
        Credential {
            name: "wrong issuer",
            token: Some(claims(&|c| c["iss"] = "http://127.0.0.1:9".into())),
            role: None,
        },
        Credential {
            name: "alg none",
            token: Some(issuer.sign(&issuer.claims("mallory", &[ADMIN_GROUP]), Signing::None)),
            role: None,
        },
        Credential { name: "viewer", token: Some(token("vera", &["viewers"])), role: Some("viewer") },
        Credential { name: "deployer", token: Some(token("dave", &["deployers"])), role: Some("deployer") },
        Credential { name: "approver", token: Some(token("abby", &["approvers"])), role: Some("approver") },
        Credential { name: "admin", token: Some(token("ada", &[ADMIN_GROUP])), role: Some("admin") },
    ]
}

/// Whether `role` holds `permission` (the built-in roles, as the README documents them).
fn allowed(role: &str, permission: Permission) -> bool {
    match permission {
        Permission::Authenticated => true,
        Permission::View => true,
        Permission::Deploy => matches!(role, "deployer" | "admin"),
        Permission::Approve => matches!(role, "approver" | "admin"),
        Permission::Admin | Permission::Internal => role == "admin",
    }
}

fn part_of(path: &str) -> Part {
    match path.split('.').nth(1) {
        Some("deployer") => Part::Deployer,
        Some("analyzer") => Part::Analyzer,
        Some("migrator") => Part::Migrator,
        Some("notifier") => Part::Notifier,
        _ => Part::Scheduler,
    }
}

/// Calls `path` with an empty request; the status code it ends with (OK for a stream that
/// started).
async fn call(channel: AuthedChannel, path: &'static str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        panic!("{path}: the service is not reachable: {e}");
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let at = http::uri::PathAndQuery::from_static(path);
    let method = path.rsplit('/').next().unwrap_or_default();
    let result = if method.starts_with("Watch") || method == "Subscribe" {
        grpc.server_streaming(tonic::Request::new(()), at, codec).await.map(drop)
    } else {
        grpc.unary(tonic::Request::new(()), at, codec).await.map(drop)
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_credential_as_the_permission_table_says() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let credentials = credentials();
    let mut wrong = Vec::new();
    let mut calls = 0;
    for (path, permission) in RPC_PERMISSIONS {
        let url = stack.url(part_of(path));
        for credential in &credentials {
            let code = tokio::time::timeout(
                Duration::from_secs(10),
                call(with_credential(&url, credential.token.as_deref()), path),
            )
            .await
            .unwrap_or_else(|_| panic!("{path} as {}: no answer in 10 s", credential.name));
            calls += 1;
            let expected = match credential.role {
                None => "UNAUTHENTICATED",
                Some(role) if allowed(role, *permission) => "past the checks",
                Some(_) => "PERMISSION_DENIED",
            };
            let fine = match expected {
                "UNAUTHENTICATED" => code == Code::Unauthenticated,
                "PERMISSION_DENIED" => code == Code::PermissionDenied,
                _ => !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            };
            if !fine {
                wrong.push(format!("{path} as {}: {code:?}, expected {expected}", credential.name));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {calls} calls answered wrongly:\n{}", wrong.len(), wrong.join("\n"));
    assert_eq!(calls, RPC_PERMISSIONS.len() * credentials.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_compare_proven_identities_and_record_who_vouched_for_them() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let url = stack.url(Part::Scheduler);
    let as_person =
        |user: &str, groups: &[&str]| ReleaseServiceClient::new(with_credential(&url, Some(&token(user, groups))));
    // Rita is a release manager and deploys; she asks for a production release.
    let mut rita = as_person("rita", &["release-manager", "deployers"]);
    let create = pb::CreateReleaseRequest {
        service: "booking".into(),
        environment: "production".into(),
        artifact: "1.0.0".into(),
        ..Default::default()
    };
    let release = rita.create_release(create).await.unwrap().into_inner().release.unwrap();
    assert_eq!(release.created_by, "rita");
    let id = release.id.clone();
    let release = hopngo_e2e::until(&mut stack.releases().await, &id, 60, |r| {
        r.phase == pb::ReleasePhase::AwaitingApproval as i32
    })
    .await;
    assert!(release.pending_approval.is_some());
    let approve = || pb::ApproveReleaseRequest { id: id.clone(), reason: "checked".into() };

    // Her own approval: the four-eyes rule, on the identity her token proves.
    let own = rita.approve_release(approve()).await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied, "{own:?}");
    assert!(own.message().contains("four-eyes"), "{own:?}");
    // Carol deploys but holds no approval role.
    let carol = as_person("carol", &["deployers"]).approve_release(approve()).await.unwrap_err();
    assert_eq!(carol.code(), Code::PermissionDenied, "{carol:?}");
    assert!(carol.message().contains("approve"), "names the missing permission: {carol:?}");
    // Abby approves, but not as a release manager, the role this step names.
    let abby = as_person("abby", &["approvers"]).approve_release(approve()).await.unwrap_err();
    assert_eq!(abby.code(), Code::PermissionDenied, "{abby:?}");
    assert!(abby.message().contains("release-manager"), "{abby:?}");
    // Bob is a release manager: his approval counts, recorded with his token's issuer and subject.
    let approved =
        as_person("bob", &["release-manager"]).approve_release(approve()).await.unwrap().into_inner().release.unwrap();
    let decision = approved.approvals.last().unwrap();
    assert_eq!(
        (decision.user.as_str(), decision.issuer.as_str(), decision.subject.as_str()),
        ("bob", TestIssuer::shared().url(), "sub-bob")
    );
    let done = hopngo_e2e::until(&mut stack.releases().await, &id, 60, |r| r.settled).await;
    assert_eq!(done.phase, pb::ReleasePhase::Succeeded as i32, "{}", done.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_links_take_only_the_schedulers_certificate_and_admins() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let deployer = stack.url(Part::Deployer);
    let apply = || dpb::ApplyTargetRequest { idempotency_key: "direct".into(), ..Default::default() };
    // A person's token, even a deployer's, does not reach the deployer's mutating RPCs directly.
    let person = with_credential(&deployer, Some(&token("dave", &["deployers"])));
    let refused = DeployerServiceClient::new(person).apply_target(apply()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("scheduler's certificate"), "{refused:?}");
    // A client over TLS without a certificate or token proves nobody.
    let anonymous = DeployerServiceClient::new(with_credential(&deployer, None)).apply_target(apply()).await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
    // Another service's certificate (the notifier's, from the same CA) is not the scheduler's.
    let tls_of = |service: &str| {
        let files = TestAccess::shared().certificate(service);
        let args = TlsArgs { tls_cert: Some(files.cert), tls_key: Some(files.key), tls_ca: Some(files.ca) };
        args.load().unwrap().expect("a certificate")
    };
    let notifier: Tls = tls_of("notifier");
    let as_notifier = tls_channel(&deployer, Duration::from_secs(5), &notifier).unwrap();
    let refused = DeployerServiceClient::new(as_notifier).apply_target(apply()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().starts_with("notifier lacks the internal permission"), "{refused:?}");
    // The scheduler's certificate passes the checks (the empty request is then refused as such).
    let scheduler = tls_of("scheduler");
    let as_scheduler = tls_channel(&deployer, Duration::from_secs(5), &scheduler).unwrap();
    let invalid = DeployerServiceClient::new(as_scheduler).apply_target(apply()).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_a_rotated_key_verify_and_the_retired_key_stops_working() {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let url = stack.url(Part::Scheduler);
    let who = |token: String| {
        let channel = with_credential(&url, Some(&token));
        async move { IdentityServiceClient::new(channel).who_am_i(WhoAmIRequest {}).await }
    };
    let issuer = TestIssuer::shared();
    let before = token("vera", &["viewers"]);
    let me = who(before.clone()).await.unwrap().into_inner();
    assert_eq!((me.user.as_str(), me.issuer.as_str(), me.subject.as_str()), ("vera", issuer.url(), "sub-vera"));
    assert_eq!(me.groups, vec!["viewers".to_string()]);
    let grant = me.grants.iter().find(|g| g.service == "booking" && g.environment == "production").unwrap();
    assert_eq!(
        (grant.roles.as_slice(), grant.permissions.as_slice()),
        (&["viewer".to_string()][..], &["view".to_string()][..])
    );

    // The issuer rotates its key and retires the old one, mid-run: a token of the new key makes
    // the scheduler fetch the keys again, and then the old key's tokens no longer verify.
    issuer.rotate(true);
    let after = token("vera", &["viewers"]);
    assert_eq!(who(after.clone()).await.unwrap().into_inner().user, "vera");
    let stale = who(before).await.unwrap_err();
    assert_eq!(stale.code(), Code::Unauthenticated, "{stale:?}");
    assert_eq!(who(after).await.unwrap().into_inner().user, "vera");
    // The channel the rest of the tests use still works: its token is minted with the new key.
    let mut releases = ReleaseServiceClient::new(channel(&url));
    releases.list_releases(pb::ListReleasesRequest::default()).await.unwrap();
}
