//! The CLI as a user runs it: the hopctl binary against a scheduler process (and the recording
//! fakes for the other services).

use std::{path::PathBuf, process::Output};

use hopngo_e2e::{Proc, TestAccess, binary, hopctl_env};
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

/// `hopctl` with nothing from the test's environment but `envs`.
fn hopctl_with(envs: &[(&str, &str)], args: &[&str]) -> Output {
    std::process::Command::new(binary("hopctl", "hopctl").unwrap())
        .env_clear()
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_token_is_made_stored_by_login_and_shown_by_whoami() {
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-cli-login-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // An admin makes a token for a CI bot: the token on stdout, its tokens-file entry on stderr.
    let made = tokio::task::spawn_blocking(|| {
        hopctl_with(&[], &["token", "new", "--user", "ci-bot", "--groups", "deployers"])
    })
    .await
    .unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let token = stdout(&made).trim().to_string();
    assert_eq!(token.len(), 43);
    assert!(!stderr(&made).contains(&token), "the entry holds the hash, not the token");
    std::fs::write(dir.join("tokens.yaml"), format!("tokens:\n{}", stderr(&made))).unwrap();
    std::fs::write(dir.join("ci.token"), &token).unwrap();

    let access = TestAccess::shared();
    let args: Vec<String> =
        ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &db.url, "--log", "warn"]
            .iter()
            .map(|s| s.to_string())
            .chain(fakes.endpoint_args())
            .chain(["--auth-tokens".to_string(), dir.join("tokens.yaml").display().to_string()])
            .chain(access.service_args("scheduler"))
            .collect();
    let proc = Proc::start(&binary("hopngo-scheduler", "hopngo-scheduler").unwrap(), &args, &[]).await.unwrap();
    assert!(proc.grpc.starts_with("https://"), "{}", proc.grpc);
    let ca = access.ca_file().display().to_string();
    let config_dir = dir.join("config").display().to_string();
    let env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("HOPNGO_SERVER", proc.grpc.clone()),
            ("HOPNGO_CA_FILE", ca.clone()),
            ("HOPNGO_CONFIG_DIR", config_dir.clone()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let run = |env: Vec<(&'static str, String)>, args: &'static [&'static str]| async move {
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            hopctl_with(&env, args)
        })
        .await
        .unwrap()
    };
    // WhoAmI reports grants for the applied config's services.
    let good = dir.join("good.yaml");
    std::fs::write(&good, CONFIG).unwrap();
    let admin = hopngo_testkit::access::token("root", &[hopngo_testkit::access::ADMIN_GROUP]);
    let apply = std::process::Command::new(binary("hopctl", "hopctl").unwrap())
        .env_clear()
        .envs(env(&[("HOPNGO_TOKEN", admin)]))
        .args(["config", "apply", "-f", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(apply.status.success(), "{}", stderr(&apply));

    // Without a token: refused, and told how to give one.
    let out = run(env(&[]), &["list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unauthenticated: no credentials"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hopctl login"), "{}", stderr(&out));
    // A wrong token is not stored.
    std::fs::write(dir.join("wrong.token"), "not-the-token").unwrap();
    let wrong = dir.join("wrong.token").display().to_string();
    let out = run(env(&[("HOPNGO_TOKEN_FILE", wrong)]), &["login"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown token"), "{}", stderr(&out));
    assert!(!dir.join("config/token").exists());
    // The right one is, readable by its owner only, and used from then on.
    let file = dir.join("ci.token").display().to_string();
    let out = run(env(&[("HOPNGO_TOKEN_FILE", file)]), &["login"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("logged in as ci-bot (hopngo:static-tokens)"), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("config/token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = run(env(&[]), &["whoami", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let me: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((me["user"].as_str(), me["issuer"].as_str()), (Some("ci-bot"), Some("hopngo:static-tokens")));
    assert_eq!(me["groups"], serde_json::json!(["deployers"]));
    assert_eq!(
        me["grants"],
        serde_json::json!([{"environment": "staging", "service": "chat-service", "roles": ["deployer"], "permissions": ["view", "deploy"]}])
    );
    let out = run(env(&[]), &["whoami"]).await;
    assert!(stdout(&out).starts_with("user:    ci-bot\n"), "{}", stdout(&out));

    // TLS: the server's certificate is checked; skipping that is allowed on loopback only.
    let untrusted = vec![("HOPNGO_SERVER", proc.grpc.clone()), ("HOPNGO_CONFIG_DIR", config_dir.clone())];
    let out = run(untrusted.clone(), &["whoami"]).await;
    assert_eq!(out.status.code(), Some(1), "an unknown CA: {}", stdout(&out));
    let out = run(untrusted, &["--insecure-skip-verify", "whoami", "-o", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let remote = vec![("HOPNGO_SERVER", "https://scheduler.example:50051".to_string())];
    let out = run(remote, &["--insecure-skip-verify", "whoami"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("only loopback addresses may skip verifying"), "{}", stderr(&out));

    let out = run(env(&[]), &["logout"]).await;
    assert!(out.status.success());
    assert!(!dir.join("config/token").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_freezes_an_environment_and_overrides_the_freeze_for_one_release() {
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-cli-freeze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let args: Vec<String> =
        ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &db.url, "--log", "warn"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--poll-interval".to_string(),
                "50ms".to_string(),
                "--apply-config".to_string(),
                config.display().to_string(),
            ])
            .chain(fakes.endpoint_args())
            .collect();
    let proc = Proc::start(&binary("hopngo-scheduler", "hopngo-scheduler").unwrap(), &args, &[]).await.unwrap();
    let run = |user: &'static str, args: Vec<&str>| {
        let server = proc.grpc.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(binary("hopctl", "hopctl").unwrap())
                    .env_clear()
                    .envs(hopctl_env(user, &[]))
                    .args(["--server", &server])
                    .args(args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run(
        "ops",
        vec!["freeze", "create", "--env", "staging", "--for", "2h", "--reason", "sales weekend", "-o", "json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let freeze: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = freeze["freezes"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(freeze["freezes"][0]["reason"], "sales weekend");

    let create = vec!["release", "create", "chat-service", "--env", "staging", "--artifact", "chat:1"];
    let out = run("alice", create.clone()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("hopctl: FailedPrecondition: staging is frozen until "), "{}", stderr(&out));
    assert!(stderr(&out).contains("by ops: sales weekend"), "{}", stderr(&out));
    let mut through = create.clone();
    through.extend(["--override-freeze", "--reason", "security fix", "-o", "json"]);
    let out = run("ops", through).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("alice", vec!["freeze", "list"]).await;
    assert!(stdout(&out).contains("sales weekend"), "{}", stdout(&out));
    let out = run("ops", vec!["audit", "--action", "freeze-overridden", "-o", "json"]).await;
    let audit: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((audit[0]["actor"].as_str(), audit[0]["reason"].as_str()), (Some("ops"), Some("security fix")));
    let out = run("ops", vec!["freeze", "end", &id, "--reason", "sale over"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run("alice", vec!["freeze", "list"]).await;
    assert_eq!(stdout(&out).trim(), "no freeze in force or coming");
    let _ = std::fs::remove_dir_all(dir);
}
