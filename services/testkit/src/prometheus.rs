//! A real Prometheus (the `prometheus` binary; Debian package `prometheus`) scraping endpoints
//! the test serves, every second, from a throwaway data directory; and [`Endpoint`], a minimal
//! HTTP server whose answer the test sets (a metrics page, a JSON document).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// An HTTP endpoint answering every request with the current status and body.
pub struct Endpoint {
    /// Address it listens on.
    pub addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Serves `body` (as `text/plain`) with status 200 on a free loopback port.
    pub async fn start(body: &str) -> anyhow::Result<Endpoint> {
        Endpoint::start_typed(body, "text/plain").await
    }

    /// Serves `body` as `content_type` with status 200 on a free loopback port.
    pub async fn start_typed(body: &str, content_type: &'static str) -> anyhow::Result<Endpoint> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new((200, body.to_string())));
        let shared = answer.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Endpoint { addr, answer, task })
    }

    /// Changes the answer.
    pub fn set(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = (status, body.to_string());
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running Prometheus; killed and its data removed on drop.
pub struct Prometheus {
    /// Base URL of its HTTP API.
    pub address: String,
    child: Child,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port, path `/metrics`) every second and waits
    /// until it is ready.
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Prometheus> {
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        Prometheus::start_scraping(&format!("  - job_name: test\n    static_configs:\n      - targets: [{list}]\n"))
            .await
    }

    /// Starts Prometheus with `scrape_configs` (the YAML list, items indented by two spaces),
    /// scraping and evaluating every second, and waits until it is ready.
    pub async fn start_scraping(scrape_configs: &str) -> anyhow::Result<Prometheus> {
        let dir = std::env::temp_dir().join(format!("hopngo-prometheus-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let config =
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}");
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("prometheus.log"))?))
            .spawn()
            .context("starting `prometheus` (install the Debian package `prometheus`; .ci/run does)")?;
        let mut prometheus = Prometheus { address: format!("http://127.0.0.1:{port}"), child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").await;
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer).await;
                if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                    return Ok(prometheus);
                }
            }
            if let Some(status) = prometheus.child.try_wait()? {
                anyhow::bail!("prometheus exited ({status}); log: {}", prometheus.log());
            }
            anyhow::ensure!(Instant::now() < deadline, "prometheus not ready after 30 s; log: {}", prometheus.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Prometheus {
    /// What Prometheus logged so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
