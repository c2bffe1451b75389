//! A gRPC server behind the security layer, over real TLS on loopback: who gets in with which
//! credential (certificate, static token, JWT, none), what the permission table lets them call,
//! and certificates renewed in place.

use std::time::Duration;

use hopngo_kit::{
    admin::Metrics,
    args::ListenArgs,
    auth::{AuthArgs, Principal, SecurityArgs, token_hash},
    authz::RPC_PERMISSIONS,
    client,
    server::GrpcServer,
    tls::{Tls, TlsArgs},
};
use hopngo_proto::deployer::{
    self as dpb,
    deployer_service_client::DeployerServiceClient,
    deployer_service_server::{DeployerService, DeployerServiceServer},
};
use hopngo_testkit::{oidc::TestIssuer, pki::TestCa};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

/// Answers every call with who it was reached as, so the test sees what the layer attached.
struct Echo;

fn reached<T, R>(req: &Request<T>) -> Result<Response<R>, Status> {
    let who = Principal::of(req).expect("the layer attaches the principal");
    Err(Status::already_exists(format!("reached as {} from {}", who.user, who.issuer)))
}

#[tonic::async_trait]
impl DeployerService for Echo {
    async fn apply_target(
        &self,
        req: Request<dpb::ApplyTargetRequest>,
    ) -> Result<Response<dpb::ApplyTargetResponse>, Status> {
        reached(&req)
    }
    async fn get_target_status(
        &self,
        req: Request<dpb::GetTargetStatusRequest>,
    ) -> Result<Response<dpb::GetTargetStatusResponse>, Status> {
        reached(&req)
    }
    async fn preflight(&self, req: Request<dpb::PreflightRequest>) -> Result<Response<dpb::PreflightResponse>, Status> {
        reached(&req)
    }
    async fn control_rollout(
        &self,
        req: Request<dpb::ControlRolloutRequest>,
    ) -> Result<Response<dpb::ControlRolloutResponse>, Status> {
        reached(&req)
    }
    async fn render_target(
        &self,
        req: Request<dpb::RenderTargetRequest>,
    ) -> Result<Response<dpb::RenderTargetResponse>, Status> {
        reached(&req)
    }
}

type Client = DeployerServiceClient<tonic::transport::Channel>;

/// A person's TLS connection: trusts the CA, presents no certificate.
fn person(addr: std::net::SocketAddr, ca: &std::path::Path) -> Client {
    DeployerServiceClient::new(hopngo_testkit::pki::channel_without_certificate(addr, ca).unwrap())
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn outcome(result: Result<Response<dpb::GetTargetStatusResponse>, Status>) -> (Code, String) {
    let status = result.expect_err("Echo never answers OK");
    (status.code(), status.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_tokens_and_the_permission_table_decide_who_gets_in() {
    let dir = std::env::temp_dir().join(format!("hopngo-secured-{}", uuid::Uuid::now_v7().simple()));
    let ca = TestCa::new(&dir, "hopngo test CA").unwrap();
    let deployer_cert = ca.issue("deployer", "deployer").unwrap();
    let scheduler_cert = ca.issue("scheduler", "scheduler").unwrap();
    let stranger_ca = TestCa::new(&dir.join("stranger"), "someone else's CA").unwrap();
    let stranger_cert = stranger_ca.issue("scheduler", "scheduler").unwrap();
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - {{sha256: {}, user: vera, groups: [viewers]}}\n  - {{sha256: {}, user: root, groups: [hopngo:admins]}}\n  - {{sha256: {}, user: nobody}}\n",
            token_hash("vera-token"),
            token_hash("root-token"),
            token_hash("nobody-token")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("policy.yaml"), "bindings:\n  - {subjects: [group:viewers], roles: [viewer]}\n").unwrap();
    let issuer = TestIssuer::start();
    let security = SecurityArgs {
        auth: AuthArgs {
            tokens_file: Some(dir.join("tokens.yaml")),
            oidc_issuer: Some(issuer.url().into()),
            oidc_clock_skew: Duration::from_secs(30),
            policy_file: Some(dir.join("policy.yaml")),
            ..AuthArgs::default()
        },
        tls: TlsArgs {
            tls_cert: Some(deployer_cert.cert.clone()),
            tls_key: Some(deployer_cert.key.clone()),
            tls_ca: Some(deployer_cert.ca.clone()),
        },
        limits: Default::default(),
    }
    .load()
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        GrpcServer::new(Duration::from_secs(1)).secure(&security).add_service(DeployerServiceServer::new(Echo)).serve(
            listener,
            Metrics::new(),
            shutdown.clone(),
        ),
    );

    // The scheduler, by its certificate: internal RPCs reach the handler as `scheduler`.
    let scheduler_tls = Tls::load(&scheduler_cert.cert, &scheduler_cert.key, &scheduler_cert.ca).unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let mut scheduler =
        DeployerServiceClient::new(client::tls_channel(&url, Duration::from_secs(5), &scheduler_tls).unwrap());
    let status = scheduler.apply_target(dpb::ApplyTargetRequest::default()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::AlreadyExists, "reached as scheduler from hopngo:mtls"));

    // People: no credentials, a viewer's token, an admin's token, a JWT, an expired JWT.
    let mut people = person(addr, &ca.ca_file());
    let (code, message) = outcome(people.get_target_status(dpb::GetTargetStatusRequest::default()).await).await;
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let (code, message) =
        outcome(people.get_target_status(with_token(dpb::GetTargetStatusRequest::default(), "vera-token")).await).await;
    assert_eq!((code, message.as_str()), (Code::AlreadyExists, "reached as vera from hopngo:static-tokens"));
    let denied = people.apply_target(with_token(dpb::ApplyTargetRequest::default(), "vera-token")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("lacks the internal permission"), "{}", denied.message());
    let nobody =
        people.get_target_status(with_token(dpb::GetTargetStatusRequest::default(), "nobody-token")).await.unwrap_err();
    assert_eq!(nobody.code(), Code::PermissionDenied, "authenticated but granted nothing");
    let admin = people.apply_target(with_token(dpb::ApplyTargetRequest::default(), "root-token")).await.unwrap_err();
    assert_eq!((admin.code(), admin.message()), (Code::AlreadyExists, "reached as root from hopngo:static-tokens"));
    let jwt = issuer.token("Vera@Example.com", &["viewers"]);
    let (code, message) =
        outcome(people.get_target_status(with_token(dpb::GetTargetStatusRequest::default(), &jwt)).await).await;
    assert_eq!((code, message), (Code::AlreadyExists, format!("reached as vera@example.com from {}", issuer.url())));
    let mut expired = issuer.claims("vera@example.com", &["viewers"]);
    expired["exp"] = (expired["iat"].as_u64().unwrap() - 3600).into();
    let expired = issuer.sign(&expired, hopngo_testkit::oidc::Signing::Es256);
    let (code, message) =
        outcome(people.get_target_status(with_token(dpb::GetTargetStatusRequest::default(), &expired)).await).await;
    assert_eq!((code, message.as_str()), (Code::Unauthenticated, "the token has expired"));

    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy(),
    );
    assert!(health.check(tonic_health::pb::HealthCheckRequest::default()).await.is_err(), "plain text is not served");

    // A certificate from another CA does not get a connection at all (with TLS 1.3 the client
    // learns it when the server closes the connection after the handshake).
    let stranger = Tls::load(&stranger_cert.cert, &stranger_cert.key, &ca.ca_file()).unwrap();
    let mut impostor =
        DeployerServiceClient::new(client::tls_channel(&url, Duration::from_secs(5), &stranger).unwrap());
    let refused = impostor.apply_target(dpb::ApplyTargetRequest::default()).await.unwrap_err();
    // Depending on timing the client sees the alert, a reset or a closed connection; never an
    // answer from the server.
    assert!(matches!(refused.code(), Code::Unavailable | Code::Cancelled | Code::Unknown), "{refused:?}");
    assert!(std::error::Error::source(&refused).is_some(), "a transport failure: {refused:?}");

    // A renewed certificate is used for new connections without a restart: the scheduler's
    // files now hold a certificate for another name, which may not call internal RPCs.
    ca.issue("migrator", "scheduler").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut renewed =
        DeployerServiceClient::new(client::tls_channel(&url, Duration::from_secs(5), &scheduler_tls).unwrap());
    let status = renewed.apply_target(dpb::ApplyTargetRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().starts_with("migrator lacks"), "{}", status.message());

    shutdown.cancel();
    server.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_rpc_of_every_service_is_in_the_permission_table() {
    let set = prost_types::FileDescriptorSet::decode(hopngo_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    rpcs.sort();
    let mut table: Vec<String> = RPC_PERMISSIONS.iter().map(|(path, _)| path.to_string()).collect();
    table.sort();
    assert_eq!(rpcs, table);
    let mut streaming = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in service.method.iter().filter(|m| m.server_streaming()) {
                streaming.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    streaming.sort();
    let mut listed: Vec<String> = hopngo_kit::authz::STREAMING_RPCS.iter().map(|p| p.to_string()).collect();
    listed.sort();
    assert_eq!(streaming, listed);
}

#[test]
fn plain_text_is_refused_beyond_loopback() {
    let public: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
    assert!(hopngo_kit::tls::check_plaintext_listen(public, None).unwrap_err().contains("plain text"));
    assert!(hopngo_kit::tls::check_plaintext_listen("127.0.0.1:1".parse().unwrap(), None).is_ok());
    let nothing = SecurityArgs::default().load();
    assert!(nothing.err().unwrap().contains("no way to authenticate callers"));
}

#[tokio::test]
async fn the_health_port_answers_probes_in_plain_text_with_the_gate_and_serves_nothing_else() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let dir = std::env::temp_dir().join(format!("hopngo-kit-health-{}", std::process::id()));
    let ca = TestCa::new(&dir, "hopngo test CA").unwrap();
    let cert = ca.issue("deployer", "deployer").unwrap();
    let security = SecurityArgs {
        tls: TlsArgs {
            tls_cert: Some(cert.cert.clone()),
            tls_key: Some(cert.key.clone()),
            tls_ca: Some(cert.ca.clone()),
        },
        ..SecurityArgs::default()
    }
    .load()
    .unwrap();
    let health_addr: std::net::SocketAddr = hopngo_testkit::measure::free_loopback_addr().parse().unwrap();
    let listen = ListenArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "off".into(),
        drain_timeout: Duration::from_secs(1),
        health_listen: Some(health_addr),
        shutdown_delay: Duration::from_millis(300),
    };
    let listener = tokio::net::TcpListener::bind(listen.listen).await.unwrap();
    let (gate, gated) = tokio::sync::watch::channel(false);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        GrpcServer::for_listen(&listen)
            .secure(&security)
            .serving_when(gated)
            .add_service(DeployerServiceServer::new(Echo))
            .serve(listener, Metrics::new(), shutdown.clone()),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}")).unwrap().connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_string();
        async move {
            for _ in 0..100 {
                if let Ok(r) = health.check(HealthCheckRequest { service: service.clone() }).await {
                    return r.into_inner().status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the health port never answered");
        }
    };
    const DEPLOYER: &str = "hopngo.deployer.v1.DeployerService";
    assert_eq!(status("").await, ServingStatus::Serving as i32, "alive");
    assert_eq!(status(DEPLOYER).await, ServingStatus::NotServing as i32, "gated: not ready");
    gate.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status(DEPLOYER).await, ServingStatus::Serving as i32, "the gate opened");
    // Nothing but health on that port, however the caller asks.
    let refused = DeployerServiceClient::new(channel).get_target_status(dpb::GetTargetStatusRequest::default()).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unimplemented);
    // At SIGTERM the probes see NOT_SERVING at once, during the shutdown delay.
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status;
    assert_eq!(during, ServingStatus::NotServing as i32);
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
