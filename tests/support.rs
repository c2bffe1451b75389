//! Helpers for end-to-end tests: find the workspace's binaries and run them as real processes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use hopngo_proto::release::{self as pb, release_service_client::ReleaseServiceClient};
pub use hopngo_testkit::access::{AuthedChannel, TestAccess, as_user, channel};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Path of a workspace binary built beside the running test (built now if missing).
pub fn binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>; a binary (the chaos harness) is
    // in target/<profile> itself.
    let parent = exe.parent().context("test binary location")?;
    let dir = if parent.ends_with("deps") { parent.parent().context("test binary location")? } else { parent };
    let path = dir.join(name);
    // A benchmark (target/release) builds them every time: a stale release binary from an
    // earlier run would measure old code. Tests rely on `scripts/test.sh` building the workspace.
    let release = dir.file_name().is_some_and(|d| d == "release");
    if release || !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", package, "--bin", name]);
        if release {
            build.arg("--release");
        }
        let status = build.status()?;
        if !status.success() || !path.exists() {
            bail!("{name} is not built and `cargo build -p {package}` failed");
        }
    }
    Ok(path)
}

/// The control plane's services: [`Proc`] starts them with the tests' credentials (TLS with their
/// own certificate, the test issuer's tokens and the test policy) unless the arguments name
/// credentials themselves.
const SERVICES: [&str; 5] = ["scheduler", "deployer", "analyzer", "migrator", "notifier"];
const CREDENTIAL_FLAGS: [&str; 3] = ["--tls-cert", "--oidc-issuer", "--auth-tokens"];

/// A running service process; killed when dropped.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// gRPC address.
    pub grpc: String,
    /// Admin address (`off` when disabled).
    pub admin: String,
    /// Web address of a process that serves pages (the dashboard), `http://…`; empty otherwise.
    pub http: String,
}

impl Proc {
    /// Starts `bin` with `args` and waits for its `listening grpc=… admin=…` line.
    pub async fn start(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> anyhow::Result<Proc> {
        Proc::start_with_stderr(bin, args, envs, Stdio::inherit()).await
    }

    /// [`Proc::start`] with the process's log (stderr) written to `log`.
    pub async fn start_logged(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Proc::start_with_stderr(bin, args, &[], Stdio::from(file)).await
    }

    /// Starts the web dashboard against `stack`, trusting the tests' CA, and waits for its
    /// `listening http=…` line.
    pub async fn dashboard(stack: &Stack) -> anyhow::Result<Proc> {
        let [scheduler, analyzer, migrator, notifier] =
            [Part::Scheduler, Part::Analyzer, Part::Migrator, Part::Notifier].map(|part| stack.url(part));
        Proc::dashboard_for([&scheduler, &analyzer, &migrator, &notifier]).await
    }

    /// Starts the web dashboard against the scheduler, analyzer, migrator and notifier at
    /// `addresses`, trusting the tests' CA.
    pub async fn dashboard_for(addresses: [&str; 4]) -> anyhow::Result<Proc> {
        let bin = binary("hopngo-dashboard", "hopngo-dashboard")?;
        let ca = TestAccess::shared().ca_file().display().to_string();
        let mut args: Vec<String> =
            ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--log", "warn", "--ca-file", &ca]
                .iter()
                .map(|s| s.to_string())
                .collect();
        for (flag, address) in ["--server", "--analyzer", "--migrator", "--notifier"].into_iter().zip(addresses) {
            args.extend([flag.to_string(), address.to_string()]);
        }
        Proc::start_until(&bin, &args, &[], Stdio::inherit(), " listening http=").await
    }

    /// Starts a deployer replica that another one leads, and waits for its `standby grpc=…
    /// admin=…` line (its `listening` line comes once it leads).
    pub async fn start_standby(bin: &Path, args: &[String]) -> anyhow::Result<Proc> {
        Proc::start_until(bin, args, &[], Stdio::inherit(), " standby grpc=").await
    }

    async fn start_with_stderr(
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        stderr: Stdio,
    ) -> anyhow::Result<Proc> {
        Proc::start_until(bin, args, envs, stderr, " listening grpc=").await
    }

    /// [`Proc::start`] through a launcher: `launcher` (a command and its arguments, which must
    /// end by exec-ing the rest of its arguments, as `sh -c '…; exec "$@"' sh` does) is run with
    /// the binary and its arguments appended, so the child is the service itself once it runs.
    pub async fn start_via(launcher: &[String], bin: &Path, args: &[String], stderr: Stdio) -> anyhow::Result<Proc> {
        Proc::start_launched(launcher, bin, args, &[], stderr, " listening grpc=").await
    }

    async fn start_until(
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        stderr: Stdio,
        marker: &str,
    ) -> anyhow::Result<Proc> {
        Proc::start_launched(&[], bin, args, envs, stderr, marker).await
    }

    async fn start_launched(
        launcher: &[String],
        bin: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        stderr: Stdio,
        marker: &str,
    ) -> anyhow::Result<Proc> {
        let mut args = args.to_vec();
        let service = bin.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("hopngo-"));
        if let Some(service) = service.filter(|s| SERVICES.contains(s))
            && !args.iter().any(|a| CREDENTIAL_FLAGS.contains(&a.as_str()))
        {
            args.extend(TestAccess::shared().service_args(service));
        }
        let mut command = match launcher.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(&args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains(marker) {
                    return Ok::<_, std::io::Error>(Some(line));
                }
            }
            Ok(None)
        })
        .await
        .with_context(|| format!("waiting for the line with {marker:?}"))??
        .with_context(|| format!("process exited before printing {marker:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |key: &str| {
            line.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_string).unwrap_or_default()
        };
        let scheme = if args.iter().any(|a| a == "--tls-cert") { "https" } else { "http" };
        let http = Some(field("http=")).filter(|a| !a.is_empty()).map(|a| format!("http://{a}")).unwrap_or_default();
        Ok(Proc { grpc: format!("{scheme}://{}", field("grpc=")), admin: field("admin="), http, child })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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
pub type Releases = ReleaseServiceClient<AuthedChannel>;

/// The environment that makes `hopctl` call the tests' services as `user` in `groups` (and
/// `deployers`): a token of the test issuer, and the test CA trusted.
pub fn hopctl_env(user: &str, groups: &[&str]) -> [(&'static str, String); 2] {
    [
        ("HOPNGO_TOKEN", hopngo_testkit::access::caller_token(user, groups)),
        ("HOPNGO_CA_FILE", TestAccess::shared().ca_file().display().to_string()),
    ]
}

/// Creates a release of booking in staging as user `e2e`.
pub async fn create_booking_release(client: &mut Releases, artifact: &str) -> pb::Release {
    create_release(client, "booking", artifact).await
}

/// Creates a release of `service` in staging as user `e2e`.
pub async fn create_release(client: &mut Releases, service: &str, artifact: &str) -> pb::Release {
    create_as(client, "e2e", service, "staging", artifact).await
}

/// Creates a release as `user`.
pub async fn create_as(
    client: &mut Releases,
    user: &str,
    service: &str,
    environment: &str,
    artifact: &str,
) -> pb::Release {
    let request = pb::CreateReleaseRequest {
        service: service.into(),
        environment: environment.into(),
        artifact: artifact.into(),
        ..Default::default()
    };
    client.create_release(as_user(request, user, &[])).await.expect("create").into_inner().release.expect("release")
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

/// A port that was free a moment ago (for processes that must come back on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One of the stack's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// hopngo-deployer.
    Deployer,
    /// hopngo-analyzer.
    Analyzer,
    /// hopngo-migrator.
    Migrator,
    /// hopngo-notifier.
    Notifier,
    /// hopngo-scheduler.
    Scheduler,
}

impl Part {
    /// Every part, in the order a stack starts them.
    pub const ALL: [Part; 5] = [Part::Deployer, Part::Analyzer, Part::Migrator, Part::Notifier, Part::Scheduler];

    /// The service's short name (`scheduler`).
    pub fn name(self) -> &'static str {
        self.binary().0.trim_start_matches("hopngo-")
    }

    fn binary(self) -> (&'static str, &'static str) {
        match self {
            Part::Deployer => ("hopngo-deployer", "hopngo-deployer"),
            Part::Analyzer => ("hopngo-analyzer", "hopngo-analyzer"),
            Part::Migrator => ("hopngo-migrator", "hopngo-migrator"),
            Part::Notifier => ("hopngo-notifier", "hopngo-notifier"),
            Part::Scheduler => ("hopngo-scheduler", "hopngo-scheduler"),
        }
    }
}

/// The whole control plane as real processes on loopback, each on a fixed port so it can be
/// killed and come back where the others expect it. The delivery config may name `{demo}` and
/// `{smoke}` (the demo service and smoke-test binaries), `{metrics}` (the deployer's proxy
/// metrics endpoint) and `{error-ratio}` (the SLO's error-ratio expression over it).
pub struct Stack {
    /// Working directory (config, replica logs).
    pub dir: PathBuf,
    /// The delivery config file.
    pub config_file: PathBuf,
    /// The deployer's metrics endpoint (`http://…/metrics`).
    pub metrics_url: String,
    procs: std::collections::BTreeMap<Part, (Vec<String>, Option<Proc>)>,
    urls: std::collections::BTreeMap<Part, String>,
    launchers: std::collections::BTreeMap<Part, Vec<String>>,
    stderr_dir: Option<PathBuf>,
}

/// What a stack runs with.
#[derive(Default)]
pub struct StackOptions {
    /// Scheduler arguments beyond the addresses (`--high-severity-grace 2s`, ...).
    pub scheduler_args: Vec<String>,
    /// Migrator arguments (`--target NAME=URL`, `--locations NAME=DIR`, ...).
    pub migrator_args: Vec<String>,
    /// Deployer arguments (`--backend kubernetes --kubeconfig FILE`, ...).
    pub deployer_args: Vec<String>,
    /// Notifier arguments (`--webhook-backoff 100ms`, ...).
    pub notifier_args: Vec<String>,
    /// Every part's log filter (default `warn`).
    pub log: Option<String>,
    /// Where every part exports its spans (`--otlp-endpoint`).
    pub otlp_endpoint: Option<String>,
    /// How a part is launched (see [`Proc::start_via`]); directly when absent.
    pub launchers: std::collections::BTreeMap<Part, Vec<String>>,
    /// Where each part's log (stderr) goes, appended to `PART.log` over its restarts; the test's
    /// own stderr when unset.
    pub log_dir: Option<PathBuf>,
}

impl Stack {
    /// Starts the five services on `database_url` with the delivery config `config`.
    pub async fn start(database_url: &str, config: &str, options: StackOptions) -> anyhow::Result<Stack> {
        // A port found free can be taken by another test's process before ours binds it: then
        // the whole stack starts again on other ports.
        let mut attempt = 1;
        loop {
            match Stack::try_start(database_url, config, &options).await {
                Err(e) if attempt < 3 && e.to_string().contains("exited before printing") => attempt += 1,
                result => return result,
            }
        }
    }

    async fn try_start(database_url: &str, config: &str, options: &StackOptions) -> anyhow::Result<Stack> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hopngo-e2e-stack-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (deployer_port, analyzer_port, migrator_port, notifier_port, scheduler_port) =
            (free_port(), free_port(), free_port(), free_port(), free_port());
        let metrics_port = free_port();
        let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
        let config = resolve(config, &metrics_url)?;
        let config_file = dir.join("delivery.yaml");
        std::fs::write(&config_file, &config)?;
        // Every part serves TLS with its own certificate and accepts the test issuer's tokens
        // ([`Proc`] adds the credentials), so the others are reached over https.
        let common = |listen: u16| -> Vec<String> {
            let listen = format!("127.0.0.1:{listen}");
            let log = options.log.as_deref().unwrap_or("warn");
            let mut args: Vec<String> =
                ["--listen", &listen, "--database-url", database_url, "--drain-timeout", "1s", "--log", log]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            if let Some(endpoint) = &options.otlp_endpoint {
                args.extend(["--otlp-endpoint".to_string(), endpoint.clone()]);
            }
            args
        };
        let url = |port: u16| format!("https://127.0.0.1:{port}");
        let mut procs = std::collections::BTreeMap::new();
        let mut deployer = common(deployer_port);
        deployer.extend([
            "--admin-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--delivery-config".into(),
            config_file.display().to_string(),
            "--log-dir".into(),
            dir.join("logs").display().to_string(),
        ]);
        deployer.extend(options.deployer_args.iter().cloned());
        procs.insert(Part::Deployer, (deployer, None));
        let mut analyzer = common(analyzer_port);
        analyzer.extend([
            "--admin-listen".into(),
            "off".into(),
            "--delivery-config".into(),
            config_file.display().to_string(),
        ]);
        procs.insert(Part::Analyzer, (analyzer, None));
        let mut migrator = common(migrator_port);
        migrator.extend(["--admin-listen".into(), "off".into()]);
        migrator.extend(options.migrator_args.iter().cloned());
        procs.insert(Part::Migrator, (migrator, None));
        let mut notifier = common(notifier_port);
        notifier.extend(["--admin-listen".into(), "off".into()]);
        notifier.extend(options.notifier_args.iter().cloned());
        procs.insert(Part::Notifier, (notifier, None));
        // A fixed port too, so its clients find it again after a restart.
        let mut scheduler = common(scheduler_port);
        scheduler.extend([
            "--admin-listen".into(),
            "off".into(),
            "--deployer-url".into(),
            url(deployer_port),
            "--analyzer-url".into(),
            url(analyzer_port),
            "--migrator-url".into(),
            url(migrator_port),
            "--notifier-url".into(),
            url(notifier_port),
            "--call-timeout".into(),
            "2s".into(),
            "--apply-config".into(),
            config_file.display().to_string(),
        ]);
        scheduler.extend(options.scheduler_args.iter().cloned());
        procs.insert(Part::Scheduler, (scheduler, None));
        let urls = [
            (Part::Deployer, deployer_port),
            (Part::Analyzer, analyzer_port),
            (Part::Migrator, migrator_port),
            (Part::Notifier, notifier_port),
            (Part::Scheduler, scheduler_port),
        ]
        .into_iter()
        .map(|(part, port)| (part, url(port)))
        .collect();
        let mut stack = Stack {
            dir,
            config_file,
            metrics_url,
            procs,
            urls,
            launchers: options.launchers.clone(),
            stderr_dir: options.log_dir.clone(),
        };
        for part in Part::ALL {
            stack.start_part(part).await?;
        }
        Ok(stack)
    }

    /// Applies another delivery config (with the same placeholders as [`Stack::start`]).
    pub async fn apply(&self, config: &str) -> anyhow::Result<()> {
        use hopngo_proto::config::{ApplyConfigRequest, config_service_client::ConfigServiceClient};
        let yaml = resolve(config, &self.metrics_url)?;
        // As in production, the file the analyzer reads is the one applied.
        std::fs::write(&self.config_file, &yaml)?;
        let mut client = ConfigServiceClient::new(channel(&self.url(Part::Scheduler)));
        client.apply_config(ApplyConfigRequest { yaml }).await?;
        Ok(())
    }

    /// Starts a part (again) with its arguments.
    pub async fn start_part(&mut self, part: Part) -> anyhow::Result<()> {
        let (name, package) = part.binary();
        let bin = binary(name, package)?;
        let entry = self.procs.get_mut(&part).context("unknown part")?;
        let stderr = match &self.stderr_dir {
            Some(dir) => {
                let log = dir.join(format!("{}.log", part.name()));
                Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(&log)?)
            }
            None => Stdio::inherit(),
        };
        let launcher = self.launchers.get(&part).map(Vec::as_slice).unwrap_or_default();
        entry.1 = Some(Proc::start_via(launcher, &bin, &entry.0, stderr).await?);
        Ok(())
    }

    /// The process id of a running part.
    pub fn pid(&self, part: Part) -> Option<u32> {
        self.procs.get(&part).and_then(|e| e.1.as_ref()).and_then(Proc::pid)
    }

    /// Whether a part's process has ended by itself since it was started (it is then
    /// forgotten, as after [`Stack::kill9`]).
    pub fn exited(&mut self, part: Part) -> Option<std::process::ExitStatus> {
        let entry = self.procs.get_mut(&part)?;
        let status = entry.1.as_mut()?.child.try_wait().ok()??;
        entry.1 = None;
        Some(status)
    }

    /// Whether a part has a process (started and neither killed nor exited).
    pub fn running(&self, part: Part) -> bool {
        self.procs.get(&part).is_some_and(|e| e.1.is_some())
    }

    /// SIGTERMs a part and waits up to `grace` for it to exit; its exit code.
    pub async fn terminate(&mut self, part: Part, grace: Duration) -> anyhow::Result<Option<i32>> {
        let proc = self.procs.get_mut(&part).and_then(|e| e.1.take()).context("not running")?;
        proc.terminate(grace).await
    }

    /// SIGKILLs a part.
    pub async fn kill9(&mut self, part: Part) -> anyhow::Result<()> {
        let proc = self.procs.get_mut(&part).and_then(|e| e.1.take()).context("not running")?;
        proc.kill9().await
    }

    /// gRPC address of a part (where it listens whenever it runs).
    pub fn url(&self, part: Part) -> String {
        self.urls.get(&part).cloned().unwrap_or_default()
    }

    /// A release client.
    pub async fn releases(&self) -> Releases {
        ReleaseServiceClient::new(channel(&self.url(Part::Scheduler)))
    }

    /// Where a service's traffic enters in an environment (its proxy); empty when the deployer
    /// has never been asked to run it there.
    pub async fn address(&self, service: &str, environment: &str) -> String {
        use hopngo_proto::deployer::{GetTargetStatusRequest, deployer_service_client::DeployerServiceClient};
        let mut deployer = DeployerServiceClient::new(channel(&self.url(Part::Deployer)));
        let request = GetTargetStatusRequest { service: service.into(), environment: environment.into() };
        match deployer.get_target_status(request).await {
            Ok(r) => r.into_inner().status.unwrap_or_default().address,
            Err(status) if status.code() == tonic::Code::NotFound => String::new(),
            Err(status) => panic!("deployer: {status:?}"),
        }
    }

    /// A subscriber of every release event (a real gRPC stream from the notifier).
    pub async fn subscribe(&self) -> Subscriber {
        Subscriber::start(&self.url(Part::Notifier)).await
    }
}

/// The SLO's error ratio of the track under analysis, from the proxy's counters, as a quoted YAML
/// scalar (what `{error-ratio}` in a stack's config stands for).
const ERROR_RATIO: &str = "'ratio(rate(hopngo_proxy_requests_total{service=\"{{args.service}}\",environment=\"{{args.environment}}\",track=\"{{args.track}}\",class=\"5xx\"}), rate(hopngo_proxy_requests_total{service=\"{{args.service}}\",environment=\"{{args.environment}}\",track=\"{{args.track}}\"}))'";

/// The config with the test binaries and metrics URL filled in; providers may reach loopback
/// (the proxies' metrics) unless the config says otherwise.
fn resolve(config: &str, metrics_url: &str) -> anyhow::Result<String> {
    let config = if config.contains("\nproviders:") {
        config.to_string()
    } else {
        format!("{config}\nproviders:\n  allowedHosts: [127.0.0.1, localhost]\n")
    };
    Ok(config
        .replace("{demo}", &binary("hopngo-demo-service", "hopngo-deployer")?.display().to_string())
        .replace("{smoke}", &binary("hopngo-smoke", "hopngo-deployer")?.display().to_string())
        .replace("{metrics}", metrics_url)
        .replace("{error-ratio}", ERROR_RATIO))
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Processes die with their handles (kill_on_drop); their replicas with the deployer.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Events received by a subscriber, resumed from its cursor whenever the stream breaks (a
/// notifier restart), as a platform service would.
pub struct Subscriber {
    events: std::sync::Arc<std::sync::Mutex<Vec<hopngo_proto::events::Event>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Subscriber {
    async fn start(notifier: &str) -> Subscriber {
        use hopngo_proto::notifier::{self as npb, notifier_service_client::NotifierServiceClient};
        use tokio_stream::StreamExt as _;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (seen, stopped, url) = (events.clone(), stop.clone(), notifier.to_string());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut cursor: Option<String> = None;
            while !stopped.is_cancelled() {
                let mut client = NotifierServiceClient::new(channel(&url));
                let start = match &cursor {
                    Some(c) => npb::subscribe_request::Start::AfterCursor(c.clone()),
                    None => npb::subscribe_request::Start::FromBeginning(true),
                };
                let request =
                    npb::SubscribeRequest { start: Some(start), subscriber: "e2e".into(), ..Default::default() };
                let Ok(response) = client.subscribe(request).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                let mut stream = response.into_inner();
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => return,
                        item = stream.next() => match item {
                            Some(Ok(item)) => {
                                if let Some(npb::subscribe_response::Item::Event(e)) = item.item {
                                    seen.lock().expect("events").push(e);
                                }
                                cursor = Some(item.cursor);
                            }
                            _ => break,
                        },
                    }
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        Subscriber { events, stop }
    }

    /// Every event so far, in the order received.
    pub fn events(&self) -> Vec<hopngo_proto::events::Event> {
        self.events.lock().expect("events").clone()
    }

    /// The events of one release, in the order received.
    pub fn of(&self, release: &str) -> Vec<hopngo_proto::events::Event> {
        self.events().into_iter().filter(|e| e.release_id == release).collect()
    }

    /// Waits until `done` holds for the events (panics after `secs`).
    pub async fn until(&self, secs: u64, done: impl Fn(&[hopngo_proto::events::Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !done(&self.events()) {
            assert!(tokio::time::Instant::now() < deadline, "subscriber: not there in {secs}s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Who answered `n` requests to `address` (optionally pinned to a track): (version, status) → count.
pub async fn answers(address: &str, n: u64) -> std::collections::BTreeMap<(String, u16), u64> {
    let load = hopngo_deployer::traffic::Load {
        url: format!("http://{address}/api/v1/info"),
        rate: 200,
        duration: Duration::from_secs(30),
        max_requests: n,
        timeout: Duration::from_secs(2),
    };
    hopngo_deployer::traffic::run(&load, tokio_util::sync::CancellationToken::new()).await.expect("traffic")
}

/// Steady traffic into a proxy until stopped; every answer's version and status, by send time.
pub struct Traffic {
    stop: tokio_util::sync::CancellationToken,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(std::time::SystemTime, String, u16)>>>,
}

impl Traffic {
    /// Requests `/api/v1/info`.
    pub fn start(address: &str, per_second: u64) -> Traffic {
        Traffic::on(address, "/api/v1/info", per_second)
    }

    /// Requests `path` (a business operation's, `/api/v1/bookings`).
    pub fn on(address: &str, path: &str, per_second: u64) -> Traffic {
        let stop = tokio_util::sync::CancellationToken::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (url, stopped, log) = (format!("http://{address}{path}"), stop.clone(), seen.clone());
        tokio::spawn(async move {
            let http = hopngo_kit::http::HttpClient::default();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
            while !stopped.is_cancelled() {
                tick.tick().await;
                let (http, url, log) = (http.clone(), url.clone(), log.clone());
                tokio::spawn(async move {
                    let sent = std::time::SystemTime::now();
                    let (version, status) = match http.send("GET", &url, &[], "", Duration::from_secs(2)).await {
                        Ok(r) => (
                            r.headers
                                .get("x-hopngo-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string(),
                            r.status,
                        ),
                        Err(_) => (String::new(), 0),
                    };
                    log.lock().expect("traffic").push((sent, version, status));
                });
            }
        });
        Traffic { stop, seen }
    }

    /// When the last request answered by `version` was sent.
    pub fn last_sent(&self, version: &str) -> Option<std::time::SystemTime> {
        self.seen.lock().expect("traffic").iter().filter(|(_, v, _)| v == version).map(|(t, _, _)| *t).max()
    }

    /// (version, status) of every answer, in the order the requests were sent.
    pub fn seen(&self) -> Vec<(String, u16)> {
        let mut seen = self.seen.lock().expect("traffic").clone();
        seen.sort_by_key(|(sent, _, _)| *sent);
        seen.into_iter().map(|(_, v, s)| (v, s)).collect()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One form (`backend`: `local` or `kubernetes`) of one of HopNGo's analysis templates, as
/// `deploy/hopngo/delivery.yaml` has it.
pub fn hopngo_template(name: &str, backend: &str) -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/hopngo/delivery.yaml");
    let config: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let templates = config["analysisTemplates"].as_array().unwrap();
    templates
        .iter()
        .find(|t| t["name"] == name && t["backend"] == backend)
        .cloned()
        .unwrap_or_else(|| panic!("HopNGo's {name} template has a {backend} form"))
}

/// The live (not zombie) `hopngo-demo-service` processes whose command line contains `marker`
/// (an artifact): the replicas a deployer runs.
pub fn demo_pids(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        if cmdline.contains("hopngo-demo-service") && cmdline.contains(marker) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// A `release.step.completed` event of `release` numbered `sequence` (its id is
/// `RELEASE-SEQUENCE`, so publishing it again is a duplicate), with `message`.
pub fn step_event(release: &str, sequence: u64, message: String) -> hopngo_proto::events::Event {
    hopngo_proto::events::Event {
        id: format!("{release}-{sequence}"),
        source: "/hopngo/scheduler".into(),
        spec_version: "1.0".into(),
        r#type: hopngo_proto::event_types::RELEASE_STEP_COMPLETED.into(),
        subject: release.into(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        release_id: release.into(),
        sequence,
        service: "booking-service".into(),
        environment: "staging".into(),
        severity: 1,
        data: Some(hopngo_proto::events::ReleaseEventData {
            revision: 2,
            artifact: "registry.example/booking:1.1.0".into(),
            phase: "PROGRESSING".into(),
            transition: "step-completed".into(),
            message,
            ..Default::default()
        }),
        extensions: Default::default(),
    }
}
