//! Writes a throwaway CA and a certificate for each named control-plane service into a directory
//! (`ca.pem`, `<name>.pem`, `<name>-key.pem`; keys readable by their owner only). The embedded
//! stack (`scripts/run.sh`) runs on them; production certificates come from the cluster's issuer
//! (cert-manager).

use std::path::PathBuf;

use hopngo_testkit::pki::TestCa;

/// Writes a throwaway CA and service certificates valid for loopback.
#[derive(clap::Parser)]
#[command(name = "hopngo-dev-certificates", version)]
struct Args {
    /// Directory to write into (created).
    #[arg(long, env = "HOPNGO_DEV_CERTIFICATES_DIR")]
    dir: PathBuf,
    /// The services (each certificate's Common Name, which is the identity it proves).
    #[arg(required = true)]
    services: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let Args { dir, services } = clap::Parser::parse();
    if let Some(bad) = services.iter().find(|s| !hopngo_kit::identity::valid_user(s)) {
        anyhow::bail!("{bad:?} is not a service name");
    }
    let ca = TestCa::new(&dir, "hopngo-dev-ca")?;
    for service in &services {
        ca.issue(service, service)?;
    }
    eprintln!("CA and certificates for {} in {}", services.join(", "), dir.display());
    Ok(())
}
