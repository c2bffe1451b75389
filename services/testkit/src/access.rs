//! The tests' credentials: services accept the shared [`TestIssuer`]'s tokens under one test
//! policy and, when they serve TLS, hold certificates from one test CA; clients call as a person
//! with a bearer token ([`as_user`], or by default [`ADMIN_USER`] of the admin group).
//!
//! The test policy grants roles by group: `deployers`, `viewers`, `approvers` and
//! `release-manager` hold what their names say (`release-manager` also approves); `ops` is an
//! admin by policy and [`ADMIN_USER`] through the admin group, which the default credential
//! carries. The tests' callers ([`as_user`], [`caller_token`]) are in `deployers`; [`token`]
//! gives exactly the groups asked for.

use std::{path::PathBuf, sync::OnceLock};

use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{
    oidc::TestIssuer,
    pki::{CertFiles, TestCa, channel_without_certificate},
};

/// The user a client calls as when a request names nobody.
pub const ADMIN_USER: &str = "e2e";
/// The services' default admin group.
pub const ADMIN_GROUP: &str = "hopngo:admins";

/// The tests' access policy.
pub const POLICY: &str = "bindings:
  - subjects: [group:deployers]
    roles: [deployer]
  - subjects: [group:viewers]
    roles: [viewer]
  - subjects: [group:staging-deployers]
    roles: [deployer]
    environments: [staging]
  - subjects: [group:approvers]
    roles: [approver]
  - subjects: [group:release-manager]
    roles: [approver, release-manager]
  - subjects: [user:ops]
    roles: [admin]
";

/// Credentials of this test process: the CA and the policy file (the issuer is
/// [`TestIssuer::shared`]).
pub struct TestAccess {
    ca: TestCa,
    policy: PathBuf,
}

impl TestAccess {
    /// The credentials shared by every test of this process.
    pub fn shared() -> &'static TestAccess {
        static SHARED: OnceLock<TestAccess> = OnceLock::new();
        SHARED.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("hopngo-test-access-{}", uuid::Uuid::now_v7().simple()));
            let ca = TestCa::new(&dir, "hopngo-test-ca").expect("the test CA");
            let policy = dir.join("policy.yaml");
            std::fs::write(&policy, POLICY).expect("write the test policy");
            TestAccess { ca, policy }
        })
    }

    /// The CA that issued the services' certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.ca.ca_file()
    }

    /// A certificate for `service` (its Common Name).
    pub fn certificate(&self, service: &str) -> CertFiles {
        self.ca.issue(service, service).expect("issue a test certificate")
    }

    /// Flags for a service accepting the test issuer's tokens under the test policy, serving
    /// plain HTTP/2 on loopback. Tests make changes far faster than people do, so each caller
    /// may make 1,000 a second (`tests` of the limits set their own).
    pub fn plain_service_args(&self) -> Vec<String> {
        let mut args = TestIssuer::shared().service_args();
        args.extend(["--policy".to_string(), self.policy.display().to_string()]);
        args.extend(["--mutation-rate", "1000", "--mutation-burst", "1000"].map(String::from));
        args
    }

    /// [`TestAccess::plain_service_args`] plus TLS with a certificate for `service`, which is also
    /// how it proves itself to the services it calls.
    pub fn service_args(&self, service: &str) -> Vec<String> {
        let mut args = self.plain_service_args();
        args.extend(self.certificate(service).args());
        args
    }
}

/// A bearer token of the test issuer for `user` in exactly `groups`.
pub fn token(user: &str, groups: &[&str]) -> String {
    TestIssuer::shared().token(user, groups)
}

/// The group every test caller is in: it deploys everywhere.
pub const DEPLOYERS: &str = "deployers";

/// A bearer token for `user` in `groups` and [`DEPLOYERS`].
pub fn caller_token(user: &str, groups: &[&str]) -> String {
    let mut all = groups.to_vec();
    all.push(DEPLOYERS);
    token(user, &all)
}

fn bearer(token: &str) -> AsciiMetadataValue {
    MetadataValue::try_from(format!("Bearer {token}")).expect("tokens are ASCII")
}

/// `message` sent as `user` in `groups` and [`DEPLOYERS`] (a token of the test issuer).
pub fn as_user<T>(message: T, user: &str, groups: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(&caller_token(user, groups)));
    request
}

/// Adds the default credential to requests that carry none.
#[derive(Clone)]
pub struct DefaultCredential(Option<AsciiMetadataValue>);

impl Interceptor for DefaultCredential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a default credential.
pub type AuthedChannel = InterceptedService<Channel, DefaultCredential>;

/// A lazily connecting channel to `url` (`http://` on loopback, or `https://` trusting the test
/// CA) whose calls go as [`ADMIN_USER`] unless they name someone ([`as_user`]).
pub fn channel(url: &str) -> AuthedChannel {
    with_credential(url, Some(&token(ADMIN_USER, &[ADMIN_GROUP])))
}

/// [`channel`] whose calls carry `token`, or nothing.
pub fn with_credential(url: &str, token: Option<&str>) -> AuthedChannel {
    let channel = match url.strip_prefix("https://") {
        Some(rest) => {
            let addr = rest.trim_end_matches('/').parse().expect("https URLs of tests are ip:port");
            channel_without_certificate(addr, &TestAccess::shared().ca_file()).expect("a TLS channel")
        }
        None => Channel::from_shared(url.to_string()).expect("a URL").connect_lazy(),
    };
    InterceptedService::new(channel, DefaultCredential(token.map(bearer)))
}
