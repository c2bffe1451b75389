//! The CLI as a user runs it: the hopctl binary against a scheduler process (and the recording
//! fakes for the other services).

use std::{path::PathBuf, process::Output};

use hopngo_e2e::{Proc, binary, hopctl_env};
use hopngo_testkit::{db::TestDb, fakes::Fakes};

const CONFIG: &str = "environments:\n  - name: staging\nservices:\n  - name: chat-service\n    strategy:\n      canary:\n        steps:\n          - setWeight: 50\n          - pause: {duration: 1s}\n";

/// Alice deploys; `ops` (an admin) applies configs.
fn hopctl(server: &str, args: &[&str]) -> Output {
    let user = if args.first() == Some(&"config") { "ops" } else { "alice" };
    let bin = binary("hopctl", "hopctl").unwrap();
    std::process::Command::new(bin)
        .args(["--server", server])
        .args(args)
        .envs(hopctl_env(user, &[]))
        .env_remove("HOPNGO_OUTPUT")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopctl_drives_a_release_and_fails_with_one_line() {
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good: PathBuf = dir.join("good.yaml");
    let bad: PathBuf = dir.join("bad.yaml");
    std::fs::write(&good, CONFIG).unwrap();
    std::fs::write(&bad, CONFIG.replace("setWeight: 50", "setWeight: 130")).unwrap();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--poll-interval",
        "50ms",
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(fakes.endpoint_args())
    // Plain HTTP/2 on loopback, so that host:port (http) reaches it too.
    .chain(hopngo_testkit::access::TestAccess::shared().plain_service_args())
    .collect();
    let proc = Proc::start(&binary("hopngo-scheduler", "hopngo-scheduler").unwrap(), &args, &[]).await.unwrap();
    let server = proc.grpc.clone();
    let run = |args: Vec<String>| {
        let server = server.clone();
        async move {
            tokio::task::spawn_blocking(move || hopctl(&server, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let out = run(s(&["config", "validate", "-f", bad.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim(), "services[0].strategy.canary.steps[0].setWeight: 130 is not in 0..=100");
    let out = run(s(&["config", "apply", "-f", bad.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "one line: {}", stderr(&out));
    assert!(stderr(&out).starts_with("hopctl: InvalidArgument: services[0].strategy.canary.steps[0].setWeight"));
    let out = run(s(&["config", "apply", "-f", good.to_str().unwrap(), "-o", "json"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let applied: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(applied["version"], 1);

    for artifact in ["chat:1", "chat:2"] {
        let out =
            run(s(&["release", "create", "chat-service", "--env", "staging", "--artifact", artifact, "-o", "json"]))
                .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let release: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(release["createdBy"], "alice");
        let id = release["id"].as_str().unwrap().to_string();
        let out = run(s(&["get", &id, "--watch", "-o", "json"])).await;
        assert_eq!(out.status.code(), Some(0), "watch exits 0 on success: {}", stderr(&out));
        let last: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(last["phase"], "SUCCEEDED");
        if artifact == "chat:2" {
            // The canary takes over a second; the watch shows it moving, one line per change.
            assert!(stderr(&out).lines().count() >= 2, "progress lines on stderr: {}", stderr(&out));
            assert!(stderr(&out).contains("weight 50%"), "{}", stderr(&out));
        }
    }
    let out = run(s(&["history", "chat-service", "--env", "staging", "-o", "yaml"])).await;
    assert!(out.status.success());
    assert!(stdout(&out).contains("revision: 2"), "{}", stdout(&out));
    let out = run(s(&["list"])).await;
    assert!(stdout(&out).lines().next().unwrap().contains("SERVICE"), "table header");
    assert_eq!(stdout(&out).lines().count(), 3);

    let out = run(s(&["get", "0190f0a0-0000-7000-8000-000000000000"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), "hopctl: NotFound: release 0190f0a0-0000-7000-8000-000000000000 does not exist");
    let out = tokio::task::spawn_blocking(|| hopctl("http://127.0.0.1:1", &["list"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(
        stderr(&out).starts_with("hopctl: cannot reach the scheduler at http://127.0.0.1:1: tcp connect error"),
        "names the address: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--server"), "suggests the fix: {}", stderr(&out));
    // host:port works as well as a URL; an address that is neither says so.
    let bare = server.trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || hopctl(&bare, &["list"])).await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tokio::task::spawn_blocking(|| hopctl("garbage", &["list"])).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "hopctl: server address \"garbage\" is not valid: no port; give host:port (127.0.0.1:50051) or a URL (http://host:port)"
    );
    // An unknown service has no history: an error, not an empty table.
    let out = run(s(&["history", "nope", "--env", "staging"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).starts_with("hopctl: InvalidArgument: service: unknown service \"nope\""), "{}", stderr(&out));
    // A reader that goes away (`hopctl list -o yaml | head -0`) ends hopctl quietly.
    let server_for_pipe = server.clone();
    let piped = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(binary("hopctl", "hopctl").unwrap())
            .args(["--server", &server_for_pipe, "list", "-o", "yaml"])
            .envs(hopctl_env("alice", &[]))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", stderr(&piped));
    assert!(stderr(&piped).is_empty(), "no panic, no message: {}", stderr(&piped));
    let _ = std::fs::remove_dir_all(dir);
}
