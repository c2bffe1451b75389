//! TLS for the control plane's gRPC links (rustls with ring). Each service has a certificate from
//! the control plane's CA; servers ask for a client certificate and, when one verifies against that
//! CA, know which service calls (its Common Name). People connect without a certificate and prove
//! who they are with a token. Certificate, key and CA files are reloaded when they change, for new
//! connections (cert-manager renews them in place).

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::reload::Reloading;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's certificate; every flag also reads an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// This service's certificate chain (PEM). Without it the service speaks plain HTTP/2, which
    /// is refused on any address but loopback.
    #[arg(long = "tls-cert", env = "HOPNGO_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "tls-key", env = "HOPNGO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that issues the control plane's certificates: peers' certificates must chain
    /// to it, in both directions.
    #[arg(long = "tls-ca", env = "HOPNGO_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS material these flags name, or `None` for plain HTTP/2.
    pub fn load(&self) -> Result<Option<Tls>, String> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Tls::load(cert, key, ca).map(Some),
            _ => Err("--tls-cert, --tls-key and --tls-ca go together".into()),
        }
    }
}

/// Refuses plain HTTP/2 on an address other people can reach.
pub fn check_plaintext_listen(addr: SocketAddr, tls: Option<&Tls>) -> Result<(), String> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {addr} in plain text: give --tls-cert, --tls-key and --tls-ca, or listen on loopback"
        ));
    }
    Ok(())
}

/// The certificate files, loaded and reloaded.
#[derive(Clone)]
pub struct Tls {
    configs: Arc<Reloading<(Arc<ServerConfig>, Arc<ClientConfig>)>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn build(cert: &Path, key: &Path, ca: &Path) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), String> {
    let chain = read_certs(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
        // People call without a certificate and authenticate with a token.
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}

impl Tls {
    /// Loads the certificate chain, key and CA.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, String> {
        let files = (cert.to_owned(), key.to_owned(), ca.to_owned());
        let configs = Reloading::new("TLS certificate", &[cert, key, ca], move || build(&files.0, &files.1, &files.2))?;
        Ok(Tls { configs: Arc::new(configs) })
    }

    fn current(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let configs = self.configs.current();
        (Arc::clone(&configs.0), Arc::clone(&configs.1))
    }

    /// The server side, as of the files now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().0
    }

    /// The client side (this service's certificate, the CA as the only root), as of the files now.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().1
    }

    /// A connector for tonic channels dialling `http://host:port` URIs over TLS with this
    /// certificate (connect bounded to 2 s); each new connection uses the files as they are then.
    pub fn connector(
        &self,
    ) -> impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Error = io::Error,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let tls = self.clone();
        tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            async move {
                let host = uri.host().unwrap_or_default().to_string();
                let port = uri.port_u16().unwrap_or(443);
                let stream = tokio::time::timeout(Duration::from_secs(2), tls.connect(&host, port))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out"))??;
                Ok(hyper_util::rt::TokioIo::new(stream))
            }
        })
    }

    /// Connects to `host:port` over TLS, verifying the server's name against `host`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        TlsConnector::from(self.client_config()).connect(name, tcp).await
    }
}

/// The Common Name of a certificate, which names a control-plane service (`scheduler`).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// What the server knows of a connection; handlers and layers find it in request extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote_addr: Option<SocketAddr>,
    /// The control-plane service whose certificate the caller presented (verified against the CA).
    pub service: Option<String>,
}

/// An accepted connection, plain or TLS.
pub enum Conn {
    /// Plain HTTP/2 (loopback only).
    Plain(TcpStream, PeerInfo),
    /// TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Conn::Plain(_, info) | Conn::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s, _) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener`, doing TLS handshakes (bounded in time, concurrently, so a
/// slow client holds up nobody) when `tls` is given. Ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &tls else {
                let info = PeerInfo { remote_addr: Some(remote), service: None };
                if tx.send(Ok(Conn::Plain(tcp, info))).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let service = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(common_name);
                        let info = PeerInfo { remote_addr: Some(remote), service };
                        let _ = tx.send(Ok(Conn::Tls(Box::new(stream), info))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
