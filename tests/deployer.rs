//! The deployer binary as a real process: replicas die with it even on SIGKILL (no orphans), and
//! a restarted deployer brings the desired state back without duplicates.

use hopngo_e2e::AuthedChannel;
use hopngo_e2e::channel;
use std::time::Duration;

use hopngo_e2e::{Proc, binary, demo_pids};
use hopngo_proto::deployer::{self as pb, deployer_service_client::DeployerServiceClient};
use hopngo_testkit::db::TestDb;

async fn converged(client: &mut DeployerServiceClient<AuthedChannel>) -> pb::TargetStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get_target_status(pb::GetTargetStatusRequest { service: "booking".into(), environment: "staging".into() })
            .await
        {
            let status = r.into_inner().status.unwrap();
            if status.converged {
                return status;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "not converged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_die_with_a_killed_deployer_and_come_back_once() {
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-deployer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = binary("hopngo-demo-service", "hopngo-deployer").unwrap();
    let config = dir.join("delivery.yaml");
    std::fs::write(
        &config,
        format!(
            "environments:\n  - name: staging\nservices:\n  - name: booking\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n    local:\n      command: [\"{}\", --name, booking, --version, \"{{version}}\", --port, \"{{port}}\"]\n",
            demo.display()
        ),
    )
    .unwrap();
    let bin = binary("hopngo-deployer", "hopngo-deployer").unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--delivery-config",
        config.to_str().unwrap(),
        "--log-dir",
        dir.join("logs").to_str().unwrap(),
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let proc = Proc::start(&bin, &args, &[]).await.unwrap();
    let mut client = DeployerServiceClient::new(channel(&proc.grpc));
    let target = pb::TargetSpec {
        service: "booking".into(),
        environment: "staging".into(),
        tracks: vec![pb::TrackSpec { track: pb::Track::Stable as i32, artifact: "3.0.0-e2e".into(), replicas: 2 }],
        canary_weight: 0,
        ..Default::default()
    };
    client
        .apply_target(pb::ApplyTargetRequest { target: Some(target.clone()), idempotency_key: "k1".into() })
        .await
        .unwrap();
    converged(&mut client).await;
    assert_eq!(demo_pids("3.0.0-e2e").len(), 2);

    proc.kill9().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !demo_pids("3.0.0-e2e").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas outlived a SIGKILLed deployer: {:?}",
            demo_pids("3.0.0-e2e")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let proc = Proc::start(&bin, &args, &[]).await.unwrap();
    let mut client = DeployerServiceClient::new(channel(&proc.grpc));
    let status = converged(&mut client).await;
    assert_eq!(status.idempotency_key, "k1");
    let again = client
        .apply_target(pb::ApplyTargetRequest { target: Some(target), idempotency_key: "k1".into() })
        .await
        .unwrap();
    assert!(!again.into_inner().changed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(demo_pids("3.0.0-e2e").len(), 2, "two replicas, not four");
    let code = proc.terminate(Duration::from_secs(15)).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(demo_pids("3.0.0-e2e").is_empty(), "a clean shutdown stops the replicas");
    let _ = std::fs::remove_dir_all(dir);
}
