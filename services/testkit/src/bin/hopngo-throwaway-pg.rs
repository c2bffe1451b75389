//! Starts a throwaway PostgreSQL cluster, prints `DATABASE_URL=…` on stdout, and keeps it until
//! stdin closes or SIGTERM/ctrl-c arrives; then stops it and deletes its files. The test script
//! uses it so that every test of a run shares one cluster (each still gets its own database).

use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use tokio::io::AsyncReadExt as _;

/// Starts a throwaway PostgreSQL cluster (system initdb/pg_ctl, as the postgres user when run as
/// root), prints `DATABASE_URL=…`, and removes it when stdin closes or on SIGTERM/ctrl-c.
#[derive(clap::Parser)]
#[command(name = "hopngo-throwaway-pg", version)]
struct Args {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let Args {} = clap::Parser::parse();
    let mut pg = tokio::task::spawn_blocking(|| EphemeralPostgres::start(&PgOptions::default())).await??;
    println!("DATABASE_URL={}", pg.url("postgres"));
    let shutdown = hopngo_kit::shutdown::on_signal();
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = async { while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
    }
    tokio::task::spawn_blocking(move || pg.stop()).await?;
    Ok(())
}
