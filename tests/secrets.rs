//! Secrets never come back: a migration's placeholder values (often credentials) and a webhook's
//! secret appear in no answer of the real migrator and notifier processes, and in no line of
//! their logs, even at debug level and when a script fails on the secret.

use hopngo_e2e::channel;
use std::time::Duration;

use hopngo_e2e::{Proc, binary};
use hopngo_proto::{
    migrator::{self as mpb, migrator_service_client::MigratorServiceClient},
    notifier::{self as npb, notifier_service_client::NotifierServiceClient},
};
use hopngo_testkit::db::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_values_and_webhook_secrets_appear_in_no_answer_and_no_log() {
    let db = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-secrets-{}", std::process::id()));
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let webhook_secret = format!("my-webhook-secret-{}", uuid::Uuid::now_v7().simple());
    // The first script uses the secret; the second fails with it quoted in PostgreSQL's error.
    std::fs::write(
        scripts.join("V1__role.sql"),
        "CREATE TABLE creds (v text);\nINSERT INTO creds VALUES ('${password}');\n",
    )
    .unwrap();
    std::fs::write(scripts.join("V2__broken.sql"), "SELECT '${password}'::int;\n").unwrap();
    let common = |extra: &[&str]| -> Vec<String> {
        ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &db.url, "--log", "debug"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let target = format!("app={}", app.url);
    let locations = format!("app={}", scripts.display());
    let migrator_log = dir.join("migrator.log");
    let migrator = Proc::start_logged(
        &binary("hopngo-migrator", "hopngo-migrator").unwrap(),
        &common(&["--target", &target, "--locations", &locations]),
        &migrator_log,
    )
    .await
    .unwrap();
    let notifier_log = dir.join("notifier.log");
    let notifier =
        Proc::start_logged(&binary("hopngo-notifier", "hopngo-notifier").unwrap(), &common(&[]), &notifier_log)
            .await
            .unwrap();

    let mut answers = Vec::new();
    let mut m = MigratorServiceClient::new(channel(&migrator.grpc));
    let target = Some(mpb::MigrationTarget {
        database: "app".into(),
        placeholders: [("password".to_string(), password.clone())].into(),
        ..Default::default()
    });
    answers.push(format!("{:?}", m.info(mpb::InfoRequest { target: target.clone() }).await));
    answers
        .push(format!("{:?}", m.validate(mpb::ValidateRequest { target: target.clone(), ..Default::default() }).await));
    let started = m
        .start_migration(mpb::StartMigrationRequest {
            target,
            command: mpb::MigrationCommand::Migrate as i32,
            idempotency_key: "secrets-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    answers.push(format!("{started:?}"));
    let id = started.run.unwrap().id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let run = m
            .get_migration_run(mpb::GetMigrationRunRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if run.phase == mpb::MigrationPhase::Failed as i32 || run.phase == mpb::MigrationPhase::Succeeded as i32 {
            break run;
        }
        assert!(tokio::time::Instant::now() < deadline, "{run:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished.phase, mpb::MigrationPhase::Failed as i32, "V2 fails: {finished:?}");
    assert!(finished.message.contains("***"), "the failing statement is quoted, redacted: {}", finished.message);
    assert_eq!(finished.target.as_ref().unwrap().placeholders["password"], "***", "names kept, values hidden");
    answers.push(format!("{finished:?}"));
    answers.push(format!("{:?}", m.list_migration_runs(mpb::ListMigrationRunsRequest::default()).await));
    let mut watch = m.watch_migration_run(mpb::WatchMigrationRunRequest { id }).await.unwrap().into_inner();
    answers.push(format!("{:?}", watch.message().await));
    // The secret was used: the first script stored it.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT v FROM creds").fetch_one(&mut conn).await.unwrap();
    assert_eq!(stored, password);

    let mut n = NotifierServiceClient::new(channel(&notifier.grpc));
    let created = n
        .create_webhook(npb::CreateWebhookRequest {
            url: "http://127.0.0.1:9/hook".into(),
            secret: webhook_secret.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    answers.push(format!("{created:?}"));
    answers.push(format!("{:?}", n.list_webhooks(npb::ListWebhooksRequest {}).await));
    let generated = n
        .create_webhook(npb::CreateWebhookRequest { url: "http://127.0.0.1:9/other".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap()
        .secret;
    assert!(generated.starts_with("whsec_"), "a generated secret is shown once, at creation");
    let listed = format!("{:?}", n.list_webhooks(npb::ListWebhooksRequest {}).await);
    assert!(!listed.contains(&generated), "and never again");

    drop((migrator, notifier));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = [std::fs::read_to_string(&migrator_log).unwrap(), std::fs::read_to_string(&notifier_log).unwrap()];
    assert!(logs[0].lines().count() > 3, "the migrator logged at debug level: {}", logs[0]);
    for text in answers.iter().chain(&logs) {
        assert!(!text.contains(&password), "the placeholder value leaked: {text}");
        assert!(!text.contains(&webhook_secret), "the webhook secret leaked: {text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
