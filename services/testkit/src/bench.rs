//! What the benchmarks share: a service binary started as its own process (so its RSS and CPU
//! are its own), and the analyzer's measurement lateness under many runs.

use std::{path::Path, process::Stdio, time::Duration};

use hopngo_proto::analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient};
use tokio::io::AsyncBufReadExt as _;

use crate::{
    access::{TestAccess, channel},
    measure::{cpu_seconds, histogram_buckets, proc_status, quantile_upper_bound, scrape},
    prometheus::Endpoint,
};

/// A service binary running as a child process (killed when dropped), serving plain HTTP/2 with
/// the tests' token issuer and policy.
pub struct Service {
    /// The child.
    pub child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    /// `http://ADDR` of its gRPC listener.
    pub grpc: String,
    /// `ADDR` of its admin (metrics) listener.
    pub admin: String,
}

impl Service {
    /// Starts `bin` with `args` (plus `--listen`, `--admin-listen` on free loopback ports and the
    /// tests' plain credentials) and waits for its `listening grpc=… admin=…` line.
    pub async fn start(bin: &Path, args: &[String]) -> anyhow::Result<Service> {
        use anyhow::Context as _;
        let mut child = tokio::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .args(TestAccess::shared().plain_service_args())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("pid")?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = loop {
            let line = lines.next_line().await?.with_context(|| format!("{} exited", bin.display()))?;
            if line.contains(" listening grpc=") {
                break line;
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_default().to_string();
        Ok(Service { grpc: format!("http://{}", field("grpc=")), admin: field("admin="), pid, child })
    }

    /// Peak RSS so far, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status(self.pid, "VmHWM:") as f64 / 1024.0
    }
}

/// A page the size of the embedded stack's proxy metrics: 11 services × 2 environments × 2
/// tracks, 5 status classes and 13 latency buckets each.
pub fn proxy_page(requests: u64) -> String {
    let mut page = String::new();
    for s in 0..11 {
        for env in ["staging", "production"] {
            for track in ["stable", "canary"] {
                let labels = format!("service=\"svc-{s}\",environment=\"{env}\",track=\"{track}\"");
                for (class, share) in [("1xx", 0), ("2xx", 99), ("3xx", 0), ("4xx", 0), ("5xx", 1)] {
                    page.push_str(&format!(
                        "hopngo_proxy_requests_total{{{labels},class=\"{class}\"}} {}\n",
                        requests * share / 100
                    ));
                }
                for (i, le) in
                    ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]
                        .iter()
                        .enumerate()
                {
                    page.push_str(&format!(
                        "hopngo_proxy_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}\n",
                        requests * (i as u64 + 1).min(10) / 10
                    ));
                }
            }
        }
    }
    page
}

/// What [`analyzer_lateness`] measured.
pub struct AnalyzerLateness {
    /// Seconds the runs took to start.
    pub setup_secs: f64,
    /// Measurements made in the window.
    pub measurements: f64,
    /// Measurement lateness bounds (histogram buckets), seconds.
    pub p50: f64,
    /// See `p50`.
    pub p99: f64,
    /// The analyzer's peak RSS, MiB.
    pub peak_rss_mib: f64,
    /// Cores the analyzer used in the window.
    pub cpu: f64,
}

/// Starts the analyzer binary `bin` on `database_url`, starts `runs` analysis runs spread over
/// one `interval` (one scrape metric each over a proxy-sized metrics page that changes every
/// second, as traffic would), lets them settle into their rhythm, and reads the analyzer's own
/// lateness histogram over `window`.
pub async fn analyzer_lateness(
    bin: &Path,
    database_url: &str,
    runs: usize,
    interval: Duration,
    window: Duration,
) -> anyhow::Result<AnalyzerLateness> {
    let endpoint = Endpoint::start(&proxy_page(1_000)).await?;
    let config = crate::config::loopback_config(&[]);
    let args = ["--database-url", database_url, "--delivery-config", &config.display().to_string()].map(String::from);
    let analyzer = Service::start(bin, &args).await?;
    let client = AnalyzerServiceClient::new(channel(&analyzer.grpc));
    let setup = std::time::Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..runs {
        let mut client = client.clone();
        let url = endpoint.url("/metrics");
        starts.spawn(async move {
            let metric = apb::Metric {
                name: "error-rate".into(),
                interval: Some(prost_types::Duration { seconds: interval.as_secs() as i64, nanos: 0 }),
                count: 1000,
                success_condition: "result < 0.05".into(),
                no_data: apb::NoDataPolicy::Successful as i32,
                provider: Some(apb::metric::Provider::Scrape(apb::ScrapeProvider {
                    url,
                    expression: format!(
                        "ratio(rate(hopngo_proxy_requests_total{{service=\"svc-{s}\",track=\"canary\",class=\"5xx\"}}), rate(hopngo_proxy_requests_total{{service=\"svc-{s}\",track=\"canary\"}}))",
                        s = i % 11
                    ),
                    window: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
                    timeout: None,
                })),
                ..Default::default()
            };
            let request = apb::StartAnalysisRunRequest {
                metrics: vec![metric],
                idempotency_key: format!("bench-{i}"),
                ..Default::default()
            };
            client.start_analysis_run(request).await.map(|_| ())
        });
        // Spread the starts over one interval, as releases would.
        tokio::time::sleep(interval / runs as u32).await;
    }
    while let Some(started) = starts.join_next().await {
        started??;
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let feeder = tokio::spawn(async move {
        let mut requests = 1_000;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            requests += 500;
            endpoint.set(200, &proxy_page(requests));
        }
    });
    tokio::time::sleep(interval / 2).await;
    let name = "hopngo_analyzer_measurement_lateness_seconds";
    let before = histogram_buckets(&scrape(&analyzer.admin).await, name);
    let cpu_before = cpu_seconds(analyzer.pid);
    tokio::time::sleep(window).await;
    let after = histogram_buckets(&scrape(&analyzer.admin).await, name);
    let cpu = (cpu_seconds(analyzer.pid) - cpu_before) / window.as_secs_f64();
    let (p99, measurements) = quantile_upper_bound(&before, &after, 0.99);
    let (p50, _) = quantile_upper_bound(&before, &after, 0.50);
    feeder.abort();
    Ok(AnalyzerLateness { setup_secs, measurements, p50, p99, peak_rss_mib: analyzer.peak_rss_mib(), cpu })
}
