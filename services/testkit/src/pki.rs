//! A throwaway certificate authority for tests: the control plane's CA and certificates for its
//! services (Common Name = the service), written as PEM files into a directory.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// A CA that signs service certificates.
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// The files of one certificate.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// The CA that issued it (PEM).
    pub ca: PathBuf,
}

impl CertFiles {
    /// `--tls-cert C --tls-key K --tls-ca A`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

impl TestCa {
    /// A new CA named `name`, writing into `dir` (created).
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(dir.join("ca.pem"), issuer.pem())?;
        Ok(TestCa { dir: dir.to_owned(), issuer })
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `service` (Common Name) valid for loopback names and addresses,
    /// written as `<file_stem>.pem` and `<file_stem>-key.pem` (overwriting: a renewal).
    pub fn issue(&self, service: &str, file_stem: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), service.to_string()])?;
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, service);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file_stem}.pem")),
            key: self.dir.join(format!("{file_stem}-key.pem")),
            ca: self.ca_file(),
        };
        // The key first (readable by its owner only): a reader seeing the new certificate then
        // finds its key.
        write_private(&files.key, key.serialize_pem().as_bytes())?;
        std::fs::write(&files.cert, cert.pem())?;
        Ok(files)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// A channel to `addr` over TLS the way a person's client connects: trusting `ca`, presenting
/// no certificate.
pub fn channel_without_certificate(addr: std::net::SocketAddr, ca: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let connection = hopngo_client::Connection { ca_files: vec![ca.to_owned()], ..Default::default() };
    Ok(connection.channel(&format!("https://{addr}"))?)
}
