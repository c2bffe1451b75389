//! Rust client library for the HopNGo control plane: a connection that carries the caller's
//! identity, and serialisable views of the API's messages (enums as names, times as RFC 3339).

pub mod views;

use std::time::Duration;

use hopngo_proto::{
    analyzer::analyzer_service_client::AnalyzerServiceClient, config::config_service_client::ConfigServiceClient,
    migrator::migrator_service_client::MigratorServiceClient, notifier::notifier_service_client::NotifierServiceClient,
    release::release_service_client::ReleaseServiceClient,
};
use tonic::{
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Metadata key of the user name (what the servers' identity interceptor reads).
pub const USER_HEADER: &str = "x-hopngo-user";
/// Metadata key of the comma-separated roles.
pub const ROLES_HEADER: &str = "x-hopngo-roles";

/// Adds the caller's identity to every request.
#[derive(Clone, Debug, Default)]
pub struct IdentityInterceptor {
    user: Option<MetadataValue<tonic::metadata::Ascii>>,
    roles: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Interceptor for IdentityInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(user) = &self.user {
            req.metadata_mut().insert(USER_HEADER, user.clone());
        }
        if let Some(roles) = &self.roles {
            req.metadata_mut().insert(ROLES_HEADER, roles.clone());
        }
        Ok(req)
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not a URL.
    #[error("server address {0:?} is not valid: {1}")]
    Address(String, String),
    /// The identity cannot be sent as metadata.
    #[error("{0} {1:?} cannot be sent (ASCII only)")]
    Identity(&'static str, String),
}

/// A channel with identity.
pub type Authed = InterceptedService<Channel, IdentityInterceptor>;

/// Clients of the control plane's public services.
#[derive(Clone)]
pub struct Clients {
    /// `hopngo.release.v1.ReleaseService` (scheduler).
    pub releases: ReleaseServiceClient<Authed>,
    /// `hopngo.config.v1.ConfigService` (scheduler).
    pub config: ConfigServiceClient<Authed>,
    /// `hopngo.analyzer.v1.AnalyzerService` (analyzer).
    pub analyzer: AnalyzerServiceClient<Authed>,
    /// `hopngo.migrator.v1.MigratorService` (migrator).
    pub migrator: MigratorServiceClient<Authed>,
    /// `hopngo.notifier.v1.NotifierService` (notifier).
    pub notifier: NotifierServiceClient<Authed>,
}

/// Where the services are.
#[derive(Clone, Debug)]
pub struct Addresses<'a> {
    /// Scheduler.
    pub scheduler: &'a str,
    /// Analyzer.
    pub analyzer: &'a str,
    /// Migrator.
    pub migrator: &'a str,
    /// Notifier.
    pub notifier: &'a str,
}

fn lazy_channel(address: &str) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| ClientError::Address(address.into(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

impl Clients {
    /// Connects lazily to the services at `addresses` as `user` with `roles`.
    pub fn connect(addresses: &Addresses<'_>, user: Option<&str>, roles: &[String]) -> Result<Clients, ClientError> {
        let channel = lazy_channel(addresses.scheduler)?;
        let analyzer_channel = lazy_channel(addresses.analyzer)?;
        let migrator_channel = lazy_channel(addresses.migrator)?;
        let notifier_channel = lazy_channel(addresses.notifier)?;
        let user = user.map(|u| u.parse().map_err(|_| ClientError::Identity("user", u.to_string()))).transpose()?;
        let roles = if roles.is_empty() {
            None
        } else {
            let joined = roles.join(",");
            Some(joined.parse().map_err(|_| ClientError::Identity("roles", joined.clone()))?)
        };
        let interceptor = IdentityInterceptor { user, roles };
        Ok(Clients {
            releases: ReleaseServiceClient::with_interceptor(channel.clone(), interceptor.clone()),
            config: ConfigServiceClient::with_interceptor(channel, interceptor.clone()),
            analyzer: AnalyzerServiceClient::with_interceptor(analyzer_channel, interceptor.clone()),
            migrator: MigratorServiceClient::with_interceptor(migrator_channel, interceptor.clone()),
            notifier: NotifierServiceClient::with_interceptor(notifier_channel, interceptor),
        })
    }
}
