//! Helpers for end-to-end tests: find the workspace's binaries and run them as real processes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use hopngo_proto::release::{self as pb, release_service_client::ReleaseServiceClient};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Path of a workspace binary built beside the running test (built now if missing).
pub fn binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).context("test binary location")?;
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo).args(["build", "-p", package, "--bin", name]).status()?;
        if !status.success() || !path.exists() {
            bail!("{name} is not built and `cargo build -p {package}` failed");
        }
    }
    Ok(path)
}

/// A running service process; killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// gRPC address.
    pub grpc: String,
    /// Admin address (`off` when disabled).
    pub admin: String,
}

impl Proc {
    /// Starts `bin` with `args` and waits for its `listening grpc=… admin=…` line.
    pub async fn start(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut child = Command::new(bin)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(" listening grpc=") {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        })
        .await
        .context("waiting for the listening line")??
        .context("process exited before listening")?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |key: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string).unwrap_or_default()
        };
        Ok(Proc { grpc: format!("http://{}", field("grpc=")), admin: field("admin="), child })
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then wait up to `grace` for a clean exit; returns the exit status code.
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<Option<i32>> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let exit = tokio::time::timeout(grace, self.child.wait()).await.context("did not exit in time")??;
        Ok(exit.code())
    }
}

/// Reads a counter or gauge from a Prometheus text endpoint (sum over label sets).
pub async fn scrape_sum(admin: &str, metric: &str) -> anyhow::Result<f64> {
    let body = http_get(admin, "/metrics").await?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A plain HTTP/1.1 GET on loopback (no client library needed for the admin endpoint).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").context("HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// A release client of a scheduler on loopback.
pub type Releases = ReleaseServiceClient<tonic::transport::Channel>;

/// Creates a release of booking in staging as user `e2e`.
pub async fn create_booking_release(client: &mut Releases, artifact: &str) -> pb::Release {
    create_release(client, "booking", artifact).await
}

/// Creates a release of `service` in staging as user `e2e`.
pub async fn create_release(client: &mut Releases, service: &str, artifact: &str) -> pb::Release {
    let mut req = tonic::Request::new(pb::CreateReleaseRequest {
        service: service.into(),
        environment: "staging".into(),
        artifact: artifact.into(),
        ..Default::default()
    });
    req.metadata_mut().insert("x-hopngo-user", "e2e".parse().expect("ascii"));
    client.create_release(req).await.expect("create").into_inner().release.expect("release")
}

/// Polls a release until `done` (panics after `secs`).
pub async fn until(client: &mut Releases, id: &str, secs: u64, done: impl Fn(&pb::Release) -> bool) -> pb::Release {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = client
            .get_release(pb::GetReleaseRequest { id: id.into() })
            .await
            .expect("get")
            .into_inner()
            .release
            .expect("release");
        if done(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "release not there in {secs}s: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
