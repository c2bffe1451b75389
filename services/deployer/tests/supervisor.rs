//! The process supervisor with real processes (the demo service binary) and real HTTP probes.

use std::{collections::BTreeMap, path::Path, time::Duration};

use hopngo_deployer::supervisor::{ReplicaSetSpec, ReplicaStatus, Supervisor, set_key};

fn spec(version: &str, replicas: u32) -> ReplicaSetSpec {
    ReplicaSetSpec {
        service: "booking".into(),
        environment: "staging".into(),
        version: version.into(),
        command: [
            env!("CARGO_BIN_EXE_hopngo-demo-service"),
            "--name",
            "{service}",
            "--version",
            "{version}",
            "--port",
            "{port}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: BTreeMap::new(),
        readiness_path: "/healthz".into(),
        replicas,
        pool: String::new(),
    }
}

async fn wait_for(
    sup: &Supervisor,
    key: &str,
    secs: u64,
    pred: impl Fn(&[ReplicaStatus]) -> bool,
) -> Vec<ReplicaStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = sup.status(key).await;
        if pred(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reached in {secs}s: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

async fn version_at(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().find_map(|l| l.strip_prefix("x-hopngo-version: ")).unwrap_or_default().to_string()
}

fn log_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hopngo-supervisor-{name}-{}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_replicas_restarts_a_killed_one_and_stops_them_all() {
    let dir = log_dir("run");
    let sup = Supervisor::new(dir.clone()).unwrap();
    sup.ensure(spec("1.4.2", 2)).await.unwrap();
    let key = set_key("booking", "staging", "1.4.2", "");
    let ready = wait_for(&sup, &key, 20, |s| s.len() == 2 && s.iter().all(|r| r.ready)).await;
    for r in &ready {
        assert_eq!(version_at(r.port).await, "1.4.2");
    }
    assert_ne!(ready[0].port, ready[1].port);

    // A killed replica is reported not ready, then restarted on the same port.
    let victim = ready[0].clone();
    std::process::Command::new("kill").args(["-KILL", &victim.pid.unwrap().to_string()]).status().unwrap();
    wait_for(&sup, &key, 10, |s| !s[0].ready).await;
    let back = wait_for(&sup, &key, 20, |s| s[0].ready && s[0].restarts >= 1).await;
    assert_eq!(back[0].port, victim.port);
    assert_ne!(back[0].pid, victim.pid);
    assert!(back[1].ready && back[1].pid == ready[1].pid, "the other replica was left alone");

    // Level-based: ensuring the same spec again changes nothing.
    sup.ensure(spec("1.4.2", 2)).await.unwrap();
    assert_eq!(
        sup.status(&key).await.iter().map(|r| r.pid).collect::<Vec<_>>(),
        back.iter().map(|r| r.pid).collect::<Vec<_>>()
    );

    // Scale down stops the newest replica.
    sup.ensure(spec("1.4.2", 1)).await.unwrap();
    assert!(!alive(back[1].pid.unwrap()));
    assert_eq!(sup.status(&key).await.len(), 1);

    let log = std::fs::read_to_string(dir.join("booking-staging-1.4.2-0.log")).unwrap();
    assert!(log.contains("hopngo-demo-service listening"), "output is captured: {log}");

    let pid = sup.status(&key).await[0].pid.unwrap();
    sup.shutdown().await;
    assert!(!alive(pid), "shutdown stops every replica");
    assert!(sup.keys().await.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_cannot_start_says_why_and_slow_starters_become_ready_later() {
    let dir = log_dir("fail");
    let sup = Supervisor::new(dir.clone()).unwrap();
    let mut broken = spec("1.0.0", 1);
    broken.command[0] = "/nonexistent/hopngo-service".into();
    sup.ensure(broken).await.unwrap();
    let status =
        wait_for(&sup, &set_key("booking", "staging", "1.0.0", ""), 10, |s| s[0].message.contains("failed to start"))
            .await;
    assert!(!status[0].ready);
    assert!(status[0].message.contains("/nonexistent/hopngo-service"), "{}", status[0].message);

    let mut bad_template = spec("1.0.0", 1);
    bad_template.command.push("{colour}".into());
    assert!(sup.ensure(bad_template).await.unwrap_err().contains("unknown placeholder {colour}"));

    sup.ensure(spec("2.0.0+startup=1s", 1)).await.unwrap();
    let key = set_key("booking", "staging", "2.0.0+startup=1s", "");
    let early = wait_for(&sup, &key, 10, |s| s[0].pid.is_some()).await;
    assert!(!early[0].ready, "not ready during its start-up time");
    wait_for(&sup, &key, 10, |s| s[0].ready).await;
    sup.remove(&key).await;
    assert!(!alive(early[0].pid.unwrap()));
    sup.shutdown().await;
    assert!(Path::new(&dir).exists());
    let _ = std::fs::remove_dir_all(dir);
}
