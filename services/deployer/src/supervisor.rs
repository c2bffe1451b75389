//! The local backend's process supervisor: runs each replica set (one artifact of one service in
//! one environment) as child processes from the service's command template, probes their
//! readiness over HTTP, restarts crashed replicas with backoff, and writes their output to log
//! files. Children never outlive the supervisor: each is started under `setpriv --pdeathsig
//! SIGKILL` (so even a SIGKILLed deployer takes them along), and stopping a set or the supervisor
//! sends SIGTERM, then SIGKILL after a grace period.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{process::Command, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Placeholders a command template may use.
pub const PLACEHOLDERS: [&str; 5] = ["{version}", "{port}", "{service}", "{environment}", "{replica}"];
/// How long a replica gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// A replica that ran this long without crashing starts its backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSetSpec {
    /// Service.
    pub service: String,
    /// Environment.
    pub environment: String,
    /// Version (the artifact) substituted for `{version}`.
    pub version: String,
    /// Program and arguments with placeholders.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Path probed for readiness (200 = ready).
    pub readiness_path: String,
    /// Replicas.
    pub replicas: u32,
    /// Replicas of one version are shared by the tracks running it (a blue/green switch moves no
    /// process); a set in a pool of its own is kept apart (an experiment's baseline runs the
    /// stable version on fresh replicas). Empty: the shared set.
    pub pool: String,
}

impl ReplicaSetSpec {
    /// Checks the command template; the error names the offending element.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.first().is_none_or(|p| p.trim().is_empty()) {
            return Err("command: must name a program".into());
        }
        for (i, arg) in self.command.iter().enumerate() {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..]
                    .find('}')
                    .map(|e| start + e + 1)
                    .ok_or_else(|| format!("command[{i}]: unclosed '{{'"))?;
                let placeholder = &rest[start..end];
                if !PLACEHOLDERS.contains(&placeholder) {
                    return Err(format!(
                        "command[{i}]: unknown placeholder {placeholder} (known: {})",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                rest = &rest[end..];
            }
        }
        if !self.readiness_path.starts_with('/') {
            return Err(format!("readiness_path: {:?} must start with '/'", self.readiness_path));
        }
        Ok(())
    }

    fn argv(&self, port: u16, replica: u32) -> Vec<String> {
        self.command
            .iter()
            .map(|a| {
                a.replace("{version}", &self.version)
                    .replace("{port}", &port.to_string())
                    .replace("{service}", &self.service)
                    .replace("{environment}", &self.environment)
                    .replace("{replica}", &replica.to_string())
            })
            .collect()
    }
}

/// Observed state of one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Passing its readiness probe.
    pub ready: bool,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Why it is not ready, if it is not.
    pub message: String,
}

struct Replica {
    status: Arc<Mutex<ReplicaStatus>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Replica {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Runs replica sets.
pub struct Supervisor {
    log_dir: PathBuf,
    sets: tokio::sync::Mutex<BTreeMap<String, (ReplicaSetSpec, Vec<Replica>)>>,
    probe: Client<HttpConnector, Empty<Bytes>>,
}

/// Key of a replica set: service, environment, version and pool (see [`ReplicaSetSpec::pool`]).
pub fn set_key(service: &str, environment: &str, version: &str, pool: &str) -> String {
    match pool {
        "" => format!("{service}/{environment}/{version}"),
        pool => format!("{service}/{environment}/{version}#{pool}"),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn file_name(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

impl Supervisor {
    /// A supervisor writing replica logs under `log_dir`.
    pub fn new(log_dir: PathBuf) -> std::io::Result<Supervisor> {
        std::fs::create_dir_all(&log_dir)?;
        Ok(Supervisor { log_dir, sets: Default::default(), probe: Client::builder(TokioExecutor::new()).build_http() })
    }

    /// Makes the set run `spec.replicas` replicas: starts missing ones, stops extra ones (the
    /// newest first). Replicas already running are kept (level-based).
    pub async fn ensure(&self, spec: ReplicaSetSpec) -> Result<(), String> {
        spec.validate()?;
        let key = set_key(&spec.service, &spec.environment, &spec.version, &spec.pool);
        let mut sets = self.sets.lock().await;
        let (current, replicas) = sets.entry(key).or_insert_with(|| (spec.clone(), Vec::new()));
        *current = spec.clone();
        while replicas.len() > spec.replicas as usize {
            if let Some(r) = replicas.pop() {
                r.stop().await;
            }
        }
        while replicas.len() < spec.replicas as usize {
            let index = replicas.len() as u32;
            replicas.push(self.start(spec.clone(), index).map_err(|e| format!("allocating a port: {e}"))?);
        }
        Ok(())
    }

    /// Stops and forgets a set.
    pub async fn remove(&self, key: &str) {
        let set = self.sets.lock().await.remove(key);
        if let Some((_, replicas)) = set {
            for r in replicas {
                r.stop().await;
            }
        }
    }

    /// Keys of the sets running.
    pub async fn keys(&self) -> Vec<String> {
        self.sets.lock().await.keys().cloned().collect()
    }

    /// Status of each replica of a set (empty when unknown).
    pub async fn status(&self, key: &str) -> Vec<ReplicaStatus> {
        let sets = self.sets.lock().await;
        sets.get(key)
            .map(|(_, replicas)| {
                replicas.iter().map(|r| r.status.lock().unwrap_or_else(|e| e.into_inner()).clone()).collect()
            })
            .unwrap_or_default()
    }

    /// Stops everything.
    pub async fn shutdown(&self) {
        let sets = std::mem::take(&mut *self.sets.lock().await);
        for (_, (_, replicas)) in sets {
            for r in replicas {
                r.stop().await;
            }
        }
    }

    fn start(&self, spec: ReplicaSetSpec, index: u32) -> std::io::Result<Replica> {
        let port = free_port()?;
        let status = Arc::new(Mutex::new(ReplicaStatus { port, message: "starting".into(), ..Default::default() }));
        let stop = CancellationToken::new();
        let pool = if spec.pool.is_empty() { String::new() } else { format!("-{}", file_name(&spec.pool)) };
        let log = self.log_dir.join(format!(
            "{}-{}-{}{pool}-{index}.log",
            file_name(&spec.service),
            file_name(&spec.environment),
            file_name(&spec.version)
        ));
        let task = tokio::spawn(run_replica(spec, index, port, log, status.clone(), stop.clone(), self.probe.clone()));
        Ok(Replica { status, stop, task })
    }
}

fn set(status: &Mutex<ReplicaStatus>, f: impl FnOnce(&mut ReplicaStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

async fn run_replica(
    spec: ReplicaSetSpec,
    index: u32,
    port: u16,
    log: PathBuf,
    status: Arc<Mutex<ReplicaStatus>>,
    stop: CancellationToken,
    probe: Client<HttpConnector, Empty<Bytes>>,
) {
    let argv = spec.argv(port, index);
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let started = tokio::time::Instant::now();
        let outcome = run_once(&spec, &argv, port, &log, &status, &stop, &probe).await;
        set(&status, |s| {
            s.ready = false;
            s.pid = None;
        });
        let Some(why) = outcome else { return };
        if started.elapsed() >= STABLE_AFTER {
            failures = 0;
        }
        failures += 1;
        let delay = hopngo_kit::backoff::delay(failures, Duration::from_millis(200), Duration::from_secs(10));
        tracing::warn!(service = %spec.service, version = %spec.version, replica = index, %why, ?delay, "replica down; restarting");
        set(&status, |s| s.message = format!("{why}; restarting in {} ms", delay.as_millis()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        set(&status, |s| s.restarts += 1);
    }
}

/// Runs the process once. `None` when stopped on purpose, else why it ended.
async fn run_once(
    spec: &ReplicaSetSpec,
    argv: &[String],
    port: u16,
    log: &PathBuf,
    status: &Mutex<ReplicaStatus>,
    stop: &CancellationToken,
    probe: &Client<HttpConnector, Empty<Bytes>>,
) -> Option<String> {
    let file = match std::fs::OpenOptions::new().create(true).append(true).open(log) {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot open log {}: {e}", log.display())),
    };
    let stderr = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return Some(format!("cannot open log {}: {e}", log.display())),
    };
    let mut child = match Command::new("setpriv")
        .args(["--pdeathsig", "SIGKILL", "--"])
        .args(argv)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Some(format!("failed to start {:?}: {e}", argv[0])),
    };
    set(status, |s| {
        s.pid = child.id();
        s.message = "waiting for readiness".into();
    });
    let url: http::Uri =
        match format!("http://{}{}", SocketAddr::from(([127, 0, 0, 1], port)), spec.readiness_path).parse() {
            Ok(u) => u,
            Err(e) => return Some(format!("readiness URL: {e}")),
        };
    let mut probe_timer = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                return None;
            }
            exit = child.wait() => {
                let why = match exit {
                    Ok(status) => match status.code() {
                        // setpriv exits 127 (or 126) when it cannot run the program.
                        Some(127) | Some(126) => format!("failed to start {:?} (see {})", argv[0], log.display()),
                        _ => format!("exited with {status}"),
                    },
                    Err(e) => format!("wait failed: {e}"),
                };
                return Some(why);
            }
            _ = probe_timer.tick() => {
                let req = http::Request::get(url.clone()).body(Empty::new()).expect("static request");
                let ready = matches!(
                    tokio::time::timeout(Duration::from_secs(1), probe.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success()
                );
                set(status, |s| {
                    s.ready = ready;
                    s.message = if ready { String::new() } else { format!("not ready: GET {} did not answer 200", spec.readiness_path) };
                });
            }
        }
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> ReplicaSetSpec {
        ReplicaSetSpec {
            service: "booking".into(),
            environment: "staging".into(),
            version: "1.2.3".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            readiness_path: "/healthz".into(),
            replicas: 1,
            pool: String::new(),
        }
    }

    #[test]
    fn templates_are_checked_and_filled_in() {
        let s = spec(&["svc", "--version", "{version}", "--port={port}", "{service}-{replica}"]);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.argv(8080, 2), vec!["svc", "--version", "1.2.3", "--port=8080", "booking-2"]);
        assert_eq!(spec(&[]).validate(), Err("command: must name a program".into()));
        assert!(
            spec(&["svc", "{colour}"]).validate().unwrap_err().starts_with("command[1]: unknown placeholder {colour}")
        );
        assert_eq!(spec(&["svc", "{port"]).validate(), Err("command[1]: unclosed '{'".into()));
    }
}
