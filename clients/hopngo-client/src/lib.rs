//! Rust client library for the HopNGo control plane: connections that prove who the caller is
//! (a bearer token) over TLS when the address is `https`, and serialisable views of the API's
//! messages (enums as names, times as RFC 3339).

pub mod views;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hopngo_proto::{
    analyzer::analyzer_service_client::AnalyzerServiceClient, config::config_service_client::ConfigServiceClient,
    identity::identity_service_client::IdentityServiceClient, migrator::migrator_service_client::MigratorServiceClient,
    notifier::notifier_service_client::NotifierServiceClient, release::release_service_client::ReleaseServiceClient,
};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Longest token sent (JWTs of common issuers are well under 4 KiB; the servers refuse more
/// than 16 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Whether `token` (trimmed) can be sent: 1-[`MAX_TOKEN_LEN`] printable ASCII characters without
/// spaces; the refusal says what a token must be.
pub fn check_token(token: &str) -> Result<&str, String> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("must be 1-{MAX_TOKEN_LEN} printable ASCII characters without spaces"));
    }
    Ok(token)
}

/// Adds the caller's bearer token to every request.
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
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
    /// The token cannot be sent.
    #[error("the token {0}")]
    Token(String),
    /// The TLS settings cannot be used.
    #[error("{0}")]
    Tls(String),
}

/// A channel whose calls carry the caller's token.
pub type Authed = InterceptedService<Channel, BearerToken>;

/// How to reach the control plane and prove who one is.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Bearer token (an OIDC JWT or a static token).
    pub token: Option<String>,
    /// CA certificates (PEM) trusted for `https` addresses besides the public roots.
    pub ca_files: Vec<PathBuf>,
    /// Accept any server certificate: only for loopback addresses (a local stack with a
    /// throwaway CA), refused otherwise.
    pub insecure_skip_verify: bool,
}

/// Clients of the control plane's public services.
#[derive(Clone)]
pub struct Clients {
    /// `hopngo.release.v1.ReleaseService` (scheduler).
    pub releases: ReleaseServiceClient<Authed>,
    /// `hopngo.config.v1.ConfigService` (scheduler).
    pub config: ConfigServiceClient<Authed>,
    /// `hopngo.identity.v1.IdentityService` (scheduler).
    pub identity: IdentityServiceClient<Authed>,
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

/// Whether `host` (as in a URL) names this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Connection {
    /// A lazily connecting channel to `address`: TLS for `https` (the server verified against
    /// the public roots and `ca_files`), plain HTTP/2 for `http`. A token is never sent in plain
    /// text beyond loopback.
    pub fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let url = endpoint_url(address)?;
        let uri: http::Uri = url.parse().map_err(|e| ClientError::Address(address.into(), format!("{e}")))?;
        let host = uri.host().unwrap_or_default().to_string();
        let bad = |e: tonic::transport::Error| ClientError::Address(address.into(), e.to_string());
        if uri.scheme_str() == Some("http") {
            if self.token.is_some() && !is_loopback(&host) {
                return Err(ClientError::Tls(format!(
                    "{address}: a token is sent only over https beyond loopback (use https://{})",
                    uri.authority().map(|a| a.as_str()).unwrap_or_default()
                )));
            }
            return Ok(Endpoint::from_shared(url)
                .map_err(bad)?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect_lazy());
        }
        if self.insecure_skip_verify && !is_loopback(&host) {
            return Err(ClientError::Tls(format!(
                "--insecure-skip-verify is refused for {host}: only loopback addresses may skip verifying the server"
            )));
        }
        let config = Arc::new(self.tls_config()?);
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|e| ClientError::Address(address.into(), e.to_string()))?;
        let connector = tower::service_fn(move |_: http::Uri| {
            let (config, server_name, host) = (config.clone(), server_name.clone(), host.clone());
            async move {
                let tcp =
                    tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        // tonic speaks plain HTTP/2 over the connector's TLS stream.
        let plain = format!("http://{}", uri.authority().map(|a| a.as_str()).unwrap_or_default());
        Ok(Endpoint::from_shared(plain)
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector))
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut config = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for file in &self.ca_files {
                for cert in read_certificates(file)? {
                    roots.add(cert).map_err(|e| ClientError::Tls(format!("{}: {e}", file.display())))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// `channel` with this connection's token on every call.
    pub fn authed(&self, address: &str) -> Result<Authed, ClientError> {
        let token = self.token.as_deref().map(bearer).transpose()?;
        Ok(InterceptedService::new(self.channel(address)?, BearerToken(token)))
    }
}

fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect())
        .map_err(|e| ClientError::Tls(format!("{}: not a PEM certificate file: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!("{}: no certificate in it", file.display())));
    }
    Ok(certs)
}

/// Accepts any server certificate (loopback only, see [`Connection::insecure_skip_verify`]);
/// handshake signatures are still checked.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Channels to the services, without a token: shared by callers that each bring their own (a
/// web dashboard calling for the person signed in), so no call opens a connection of its own.
#[derive(Clone, Debug)]
pub struct Channels {
    scheduler: Channel,
    analyzer: Channel,
    migrator: Channel,
    notifier: Channel,
}

impl Channels {
    /// Lazily connecting channels to `addresses` with `connection`'s TLS settings (its token, if
    /// any, is not used: [`Channels::clients`] takes one per caller).
    pub fn connect(addresses: &Addresses<'_>, connection: &Connection) -> Result<Channels, ClientError> {
        // A channel that will carry tokens is checked as one that carries a token now.
        let checked = Connection { token: Some("checked".into()), ..connection.clone() };
        Ok(Channels {
            scheduler: checked.channel(addresses.scheduler)?,
            analyzer: checked.channel(addresses.analyzer)?,
            migrator: checked.channel(addresses.migrator)?,
            notifier: checked.channel(addresses.notifier)?,
        })
    }

    /// Clients whose calls carry `token` (checked as [`check_token`] does).
    pub fn clients(&self, token: &str) -> Result<Clients, ClientError> {
        let token = bearer(token)?;
        let authed = |channel: &Channel| InterceptedService::new(channel.clone(), BearerToken(Some(token.clone())));
        Ok(Clients::over(
            authed(&self.scheduler),
            authed(&self.analyzer),
            authed(&self.migrator),
            authed(&self.notifier),
        ))
    }
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, ClientError> {
    let token = check_token(token).map_err(ClientError::Token)?;
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ClientError::Token("cannot be sent as a header".into()))
}

/// Everything known about one release: the record, its events from the notifier's log (in log
/// order) and its analysis runs (what `hopctl timeline` and the dashboard's release page show).
#[derive(Clone, Debug)]
pub struct ReleaseStory {
    /// The release.
    pub release: hopngo_proto::release::Release,
    /// Its events.
    pub events: Vec<hopngo_proto::events::Event>,
    /// Its analysis runs, in the release's order.
    pub runs: Vec<hopngo_proto::analyzer::AnalysisRun>,
}

impl Clients {
    /// Connects lazily to the services at `addresses` through `connection`.
    pub fn connect(addresses: &Addresses<'_>, connection: &Connection) -> Result<Clients, ClientError> {
        Ok(Clients::over(
            connection.authed(addresses.scheduler)?,
            connection.authed(addresses.analyzer)?,
            connection.authed(addresses.migrator)?,
            connection.authed(addresses.notifier)?,
        ))
    }

    fn over(scheduler: Authed, analyzer: Authed, migrator: Authed, notifier: Authed) -> Clients {
        Clients {
            releases: ReleaseServiceClient::new(scheduler.clone()),
            config: ConfigServiceClient::new(scheduler.clone()),
            identity: IdentityServiceClient::new(scheduler),
            analyzer: AnalyzerServiceClient::new(analyzer),
            migrator: MigratorServiceClient::new(migrator),
            notifier: NotifierServiceClient::new(notifier),
        }
    }

    /// The events of the notifier's log that `filter` selects from `start` up to the newest
    /// one now, with their cursors.
    pub async fn events_to_head(
        &self,
        filter: hopngo_proto::notifier::EventFilter,
        start: hopngo_proto::notifier::subscribe_request::Start,
        subscriber: &str,
    ) -> Result<Vec<(String, hopngo_proto::events::Event)>, tonic::Status> {
        use hopngo_proto::notifier as npb;
        let request = npb::SubscribeRequest {
            filter: Some(filter),
            start: Some(start),
            subscriber: subscriber.into(),
            stop_at_head: true,
        };
        let mut stream = self.notifier.clone().subscribe(request).await?.into_inner();
        let mut events = Vec::new();
        while let Some(item) = stream.message().await? {
            if let Some(npb::subscribe_response::Item::Event(e)) = item.item {
                events.push((item.cursor, e));
            }
        }
        Ok(events)
    }

    /// The release `id` with its events and analysis runs.
    pub async fn release_story(&self, id: &str) -> Result<ReleaseStory, tonic::Status> {
        use hopngo_proto::{analyzer as apb, notifier as npb, release as pb};
        let release = self
            .releases
            .clone()
            .get_release(pb::GetReleaseRequest { id: id.into() })
            .await?
            .into_inner()
            .release
            .ok_or_else(|| tonic::Status::internal("the scheduler answered without a release"))?;
        let filter = npb::EventFilter { release_id: id.into(), ..Default::default() };
        let start = npb::subscribe_request::Start::FromBeginning(true);
        let events = self.events_to_head(filter, start, "release story").await?.into_iter().map(|(_, e)| e).collect();
        let mut runs = Vec::new();
        for a in &release.analysis_runs {
            let run =
                self.analyzer.clone().get_analysis_run(apb::GetAnalysisRunRequest { id: a.run_id.clone() }).await?;
            runs.extend(run.into_inner().run);
        }
        Ok(ReleaseStory { release, events, runs })
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

    #[tokio::test]
    async fn secrets_stay_off_plain_links_and_verification_is_skipped_only_on_loopback() {
        let with_token = Connection { token: Some("t0ken".into()), ..Connection::default() };
        assert!(with_token.channel("http://127.0.0.1:50051").is_ok());
        assert!(with_token.channel("http://[::1]:50051").is_ok());
        let err = with_token.channel("http://scheduler.example:50051").unwrap_err().to_string();
        assert!(err.contains("only over https"), "{err}");
        let insecure = Connection { insecure_skip_verify: true, ..Connection::default() };
        assert!(insecure.channel("https://localhost:50051").is_ok());
        let err = insecure.channel("https://scheduler.example:443").unwrap_err().to_string();
        assert!(err.contains("only loopback"), "{err}");
        let bad = Connection { token: Some("a b".into()), ..Connection::default() };
        assert!(bad.authed("127.0.0.1:1").unwrap_err().to_string().contains("printable ASCII"));
        let missing = Connection { ca_files: vec!["/nonexistent/ca.pem".into()], ..Connection::default() };
        assert!(missing.channel("https://127.0.0.1:1").unwrap_err().to_string().contains("/nonexistent/ca.pem"));
    }
}
