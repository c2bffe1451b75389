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
    /// The server address is neither host:port nor a URL.
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

/// An address as people type it, `host:port` (plain HTTP/2) or a URL (`http://host:port`,
/// `https://host`), as the URL a channel connects to.
pub fn endpoint_url(address: &str) -> Result<String, ClientError> {
    let has_scheme = address.contains("://");
    let url = if has_scheme { address.to_string() } else { format!("http://{address}") };
    let hint = "give host:port (127.0.0.1:50051) or a URL (http://host:port)";
    let uri: http::Uri = url.parse().map_err(|e| ClientError::Address(address.into(), format!("{e}; {hint}")))?;
    match (uri.scheme_str(), uri.host(), uri.port_u16()) {
        (Some("http" | "https"), Some(_), Some(_)) => Ok(url),
        (Some("http" | "https"), Some(_), None) if has_scheme => Ok(url),
        (Some(scheme), _, _) if scheme != "http" && scheme != "https" => {
            Err(ClientError::Address(address.into(), format!("the scheme {scheme:?} is not http or https; {hint}")))
        }
        _ => Err(ClientError::Address(address.into(), format!("no port; {hint}"))),
    }
}

fn lazy_channel(address: &str) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(endpoint_url(address)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_people_type_them() {
        assert_eq!(endpoint_url("127.0.0.1:50051").unwrap(), "http://127.0.0.1:50051");
        assert_eq!(endpoint_url("http://scheduler:50051").unwrap(), "http://scheduler:50051");
        assert_eq!(endpoint_url("https://hopngo.example").unwrap(), "https://hopngo.example");
        assert!(endpoint_url("garbage").unwrap_err().to_string().contains("no port; give host:port"));
        assert!(endpoint_url("ftp://x:1").unwrap_err().to_string().contains("not http or https"));
        assert!(endpoint_url("a b:1").is_err());
    }
}
