//! The run: start everything, keep releases in flight under traffic, inject one fault per round,
//! check the invariants after each, then settle, check the end state and stop everything.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hopngo_e2e::{Part, Stack, StackOptions, answers, as_user, channel};
use hopngo_kit::pg::{EphemeralPostgres, PgOptions, Shutdown};
use hopngo_proto::{
    notifier::{CreateWebhookRequest, notifier_service_client::NotifierServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::receiver::Receiver;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::{
    Options,
    invariants::{self, Findings},
};

/// The first port of the deployer's proxies: service i's traffic enters at PROXY_BASE + i (the
/// namespace is the harness's own, so any port is free).
const PROXY_BASE: u16 = 21000;

/// Canaries with pauses and background analysis on the proxies' error ratio. A measurement with
/// no data (a deployer restart takes the replicas down with it) is inconclusive, and many are
/// allowed: the harness checks the control plane loses nothing, not the SLO's judgement. The
/// first service migrates the database `chaos-app` from `scripts` before each canary.
fn config(services: usize, scripts: &std::path::Path) -> String {
    let mut yaml = String::from(
        "environments:
  - name: staging
    progressDeadline: 90s
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        severity: critical
        interval: 1s
        initialDelay: 1s
        failureCondition: result > 0.05
        inconclusiveLimit: 100
        provider: {scrape: {url: \"{metrics}\", window: 3s, expression: {error-ratio}}}
services:
",
    );
    for i in 0..services {
        yaml.push_str(&format!(
            "  - name: svc-{i}
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {{duration: 3s}}
          - setWeight: 50
          - pause: {{duration: 5s}}
          - setWeight: 100
        analysis: {{templates: [slo], startingStep: 1}}
    local: {{command: [\"{{demo}}\", --name, svc-{i}, --version, \"{{version}}\", --port, \"{{port}}\"]}}
"
        ));
        if i == 0 {
            yaml.push_str(&format!(
                "    migrations: {{database: chaos-app, locations: [\"{}\"]}}\n",
                scripts.display()
            ));
        }
    }
    yaml
}

/// The next migration of the first service: a table of its own (applied twice, it would fail)
/// and half a second of work, so a migrator killed mid-run is killed mid-migration.
fn write_migration(scripts: &std::path::Path, n: u32) -> std::io::Result<()> {
    let sql = format!("CREATE TABLE step_{n} (id bigint PRIMARY KEY);\nSELECT pg_sleep(0.5);\n");
    std::fs::write(scripts.join(format!("V{n}__step_{n}.sql")), sql)
}

/// xorshift64*: a seeded schedule that a run can repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }

    fn part(&mut self) -> Part {
        Part::ALL[self.below(Part::ALL.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(Part),
    Postgres(Shutdown),
    Partition(Part),
}

/// What happened, for the summary.
#[derive(Default)]
struct Tally {
    kills: BTreeMap<Part, u32>,
    postgres: BTreeMap<&'static str, u32>,
    partitions: BTreeMap<Part, u32>,
    exits: BTreeMap<Part, u32>,
    violations: Vec<String>,
}

fn per_part(counts: &BTreeMap<Part, u32>) -> String {
    let total: u32 = counts.values().sum();
    let each: Vec<String> = Part::ALL.iter().map(|p| format!("{} {}", p.name(), counts.get(p).unwrap_or(&0))).collect();
    format!("{total} ({})", each.join(", "))
}

/// The processes under test and what the harness holds of them.
struct World {
    stack: Stack,
    pg: EphemeralPostgres,
    cgroup_path: PathBuf,
    tally: Tally,
}

impl World {
    /// Notes parts that ended by themselves, and (with `restart`) starts every missing part
    /// again, as a supervisor (Kubernetes) would.
    async fn supervise(&mut self, restart: bool) {
        for part in Part::ALL {
            if let Some(status) = self.stack.exited(part) {
                *self.tally.exits.entry(part).or_default() += 1;
                println!("  {} exited by itself ({status})", part.name());
            }
            if restart && !self.stack.running(part) {
                for attempt in 1..=5 {
                    match self.stack.start_part(part).await {
                        Ok(()) => break,
                        Err(e) if attempt == 5 => {
                            self.tally.violations.push(format!("{} did not start again: {e:#}", part.name()))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            }
        }
    }

    /// Lets the system run for `how_long`, supervising.
    async fn calm(&mut self, how_long: Duration, restart: bool) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            self.supervise(restart).await;
            tokio::time::sleep(Duration::from_millis(200).min(until.saturating_duration_since(Instant::now()))).await;
        }
        self.supervise(restart).await;
    }

    fn iptables(&self, action: &str, part: Part) -> anyhow::Result<()> {
        let path = self.cgroup_path.join(part.name());
        let status = std::process::Command::new("iptables")
            .args([action, "OUTPUT", "-m", "cgroup", "--path"])
            .arg(&path)
            .args(["-j", "DROP"])
            .status()?;
        anyhow::ensure!(status.success(), "iptables {action} for {} failed", part.name());
        Ok(())
    }

    async fn inject(&mut self, fault: Fault, rng: &mut Rng) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(part) => {
                if self.stack.running(part) {
                    self.stack.kill9(part).await?;
                }
                *self.tally.kills.entry(part).or_default() += 1;
                tokio::time::sleep(rng.millis(0, 1000)).await;
                self.supervise(true).await;
            }
            Fault::Postgres(mode) => {
                let down = rng.millis(200, 2000);
                // Blocking (pg_ctl): the drivers and the traffic go on meanwhile on the runtime's other threads.
                tokio::task::block_in_place(|| self.pg.restart(mode, down))?;
                let name = if mode == Shutdown::Fast { "fast" } else { "immediate" };
                *self.tally.postgres.entry(name).or_default() += 1;
            }
            Fault::Partition(part) => {
                self.iptables("-I", part)?;
                *self.tally.partitions.entry(part).or_default() += 1;
                // Cut off, a part cannot start again: exits are noted now, restarts come after.
                self.calm(rng.millis(2000, 5000), false).await;
                self.iptables("-D", part)?;
            }
        }
        Ok(())
    }
}

/// One service's stream of releases: each created with a request id (so a retry after a lost
/// answer is the same release) and followed until settled; a third of them are faulty.
async fn drive(
    service: String,
    scheduler: String,
    scripts: Option<PathBuf>,
    seed: u64,
    stop: CancellationToken,
    created: Arc<AtomicU32>,
) {
    let mut rng = Rng(seed | 1);
    for n in 2.. {
        if stop.is_cancelled() {
            return;
        }
        if let Some(scripts) = &scripts
            && let Err(e) = write_migration(scripts, n)
        {
            println!("  writing migration {n}: {e}");
            return;
        }
        let artifact = if rng.below(3) == 0 { format!("1.{n}.0+errors=0.5") } else { format!("1.{n}.0") };
        if release(&service, &scheduler, &artifact, &stop).await.is_none() {
            return;
        }
        created.fetch_add(1, Ordering::Relaxed);
    }
}

/// Creates a release and waits until it settles (calls fail while the scheduler is down or cut
/// off; they are repeated). None when stopped first.
async fn release(service: &str, scheduler: &str, artifact: &str, stop: &CancellationToken) -> Option<pb::Release> {
    let request = pb::CreateReleaseRequest {
        service: service.into(),
        environment: "staging".into(),
        artifact: artifact.into(),
        request_id: format!("chaos-{service}-{artifact}"),
        ..Default::default()
    };
    let mut last_error = String::new();
    let id = loop {
        let mut client = ReleaseServiceClient::new(channel(scheduler));
        let call = client.create_release(as_user(request.clone(), "chaos", &[]));
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(r)) => break r.into_inner().release?.id,
            Ok(Err(status)) if status.code() != tonic::Code::Unavailable && status.message() != last_error => {
                last_error = status.message().to_string();
                println!("  creating {service} {artifact}: {:?} {last_error}", status.code());
            }
            _ => {}
        }
        if stop.is_cancelled() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    loop {
        let mut client = ReleaseServiceClient::new(channel(scheduler));
        let call = client.get_release(pb::GetReleaseRequest { id: id.clone() });
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), call).await
            && let Some(r) = r.into_inner().release
            && r.settled
        {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// [`invariants::check`] and [`invariants::migrations`], repeated while PostgreSQL cannot answer
/// (it may be restarting).
async fn check(
    pool: &sqlx::PgPool,
    app: &sqlx::PgPool,
    receiver: &Receiver,
    settled_now: bool,
) -> anyhow::Result<Findings> {
    let mut attempt = 0;
    loop {
        let delivered: BTreeSet<String> =
            receiver.received().iter().map(|r| r.header("webhook-id").to_string()).collect();
        let checked = async {
            let mut findings = invariants::check(pool, &delivered, settled_now).await?;
            findings.violations.extend(invariants::migrations(app).await?);
            Ok::<_, sqlx::Error>(findings)
        };
        match checked.await {
            Ok(findings) => return Ok(findings),
            Err(e) if attempt < 40 => {
                attempt += 1;
                if attempt == 1 {
                    println!("  checking: {e} (again)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("reading the invariants from PostgreSQL"),
        }
    }
}

/// Removes the newest event from the notifier's log and counts one transition twice in a
/// release's state; true when the checks report both.
async fn plant_and_catch(pool: &sqlx::PgPool, app: &sqlx::PgPool, receiver: &Receiver) -> anyhow::Result<bool> {
    let lost: String = sqlx::query_scalar(
        "DELETE FROM notifier.events WHERE position = (SELECT max(position) FROM notifier.events WHERE sequence > 0) \
         RETURNING release_id",
    )
    .fetch_one(pool)
    .await?;
    let repeated: String = sqlx::query_scalar(
        "UPDATE scheduler.release_state SET version = version + 1 \
         WHERE release_id = (SELECT min(release_id::text)::uuid FROM scheduler.release_state) RETURNING release_id::text",
    )
    .fetch_one(pool)
    .await?;
    let findings = check(pool, app, receiver, true).await?;
    let names = |id: &str, what: &str| findings.violations.iter().any(|v| v.contains(id) && v.contains(what));
    Ok(names(&lost, "event log of") && names(&repeated, "state version"))
}

/// TCP listening sockets in this namespace that this process does not own.
fn foreign_listeners() -> Vec<String> {
    let own: BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let mut foreign = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address st … inode (10th field); 0A is LISTEN.
            if f.len() > 9 && f[3] == "0A" && !own.contains(f[9]) {
                let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
                foreign.push(format!("port {port}"));
            }
        }
    }
    foreign
}

pub async fn run(options: Options, cgroup: PathBuf, cgroup_path: PathBuf) -> anyhow::Result<bool> {
    let started = Instant::now();
    let deadline = started + options.max_duration;
    let seed = options.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        nanos.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    println!(
        "hopngo-chaos: seed {seed}, until {} SIGKILLs, {} services, at most {}s",
        options.kills,
        options.services,
        options.max_duration.as_secs()
    );
    let mut rng = Rng(seed | 1);
    let mut launchers = BTreeMap::new();
    for part in Part::ALL {
        let dir = cgroup.join(part.name());
        std::fs::create_dir_all(&dir)?;
        let join = "echo $$ > \"$0\"/cgroup.procs && exec \"$@\"";
        launchers.insert(part, vec!["sh".into(), "-c".into(), join.into(), dir.display().to_string()]);
    }
    let log_dir = options.log_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("hopngo-chaos-logs"));
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir)?;
    let scripts = log_dir.join("migrations");
    std::fs::create_dir_all(&scripts)?;
    write_migration(&scripts, 1)?;
    println!("  service logs: {}", log_dir.display());

    let pg = tokio::task::spawn_blocking(|| EphemeralPostgres::start(&PgOptions::default())).await??;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE DATABASE chaos").execute(&mut admin).await?;
    sqlx::query("CREATE DATABASE chaos_app").execute(&mut admin).await?;
    drop(admin);
    let url = pg.url("chaos");
    let app_url = pg.url("chaos_app");
    let stack_options = StackOptions {
        launchers,
        log_dir: Some(log_dir),
        deployer_args: vec!["--proxy-port-base".into(), PROXY_BASE.to_string()],
        migrator_args: vec![
            "--target".into(),
            format!("chaos-app={app_url}"),
            "--locations".into(),
            format!("chaos-app={}", scripts.display()),
        ],
        notifier_args: ["--webhook-backoff", "200ms", "--webhook-backoff-max", "2s"].map(String::from).to_vec(),
        ..Default::default()
    };
    let stack = Stack::start(&url, &config(options.services, &scripts), stack_options).await?;
    let mut world = World { stack, pg, cgroup_path, tally: Tally::default() };
    let pool = PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(5)).connect(&url).await?;
    let app = PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(5)).connect(&app_url).await?;

    let receiver = Receiver::start().await?;
    let webhook = CreateWebhookRequest { url: receiver.url("/events"), ..Default::default() };
    NotifierServiceClient::new(channel(&world.stack.url(Part::Notifier))).create_webhook(webhook).await?;

    let services: Vec<String> = (0..options.services).map(|i| format!("svc-{i}")).collect();
    let scheduler = world.stack.url(Part::Scheduler);
    let never = CancellationToken::new();
    for service in &services {
        release(service, &scheduler, "1.1.0", &never).await;
    }
    let traffic = CancellationToken::new();
    let mut loads = Vec::new();
    for i in 0..services.len() {
        let load = hopngo_deployer::traffic::Load {
            url: format!("http://127.0.0.1:{}/api/v1/info", PROXY_BASE + i as u16),
            rate: 10,
            duration: options.max_duration,
            max_requests: u64::MAX / 2,
            timeout: Duration::from_secs(2),
        };
        let stop = traffic.clone();
        loads.push(tokio::spawn(async move { hopngo_deployer::traffic::run(&load, stop).await }));
    }
    let creating = CancellationToken::new();
    let created = Arc::new(AtomicU32::new(0));
    let drivers: Vec<_> = services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let seed = rng.next();
            let scripts = (i == 0).then(|| scripts.clone());
            tokio::spawn(drive(s.clone(), scheduler.clone(), scripts, seed, creating.clone(), created.clone()))
        })
        .collect();

    // Every kind of fault at least once, even in the smallest run; then at random, mostly kills.
    let victim = rng.part();
    let mut opening =
        vec![Fault::Postgres(Shutdown::Fast), Fault::Partition(victim), Fault::Postgres(Shutdown::Immediate)]
            .into_iter();
    let mut kills = 0;
    let mut round = 0;
    while kills < options.kills {
        if Instant::now() >= deadline {
            world.tally.violations.push(format!("ran out of time after {kills} SIGKILLs"));
            break;
        }
        round += 1;
        let fault = opening.next().unwrap_or_else(|| match rng.below(10) {
            0 => Fault::Postgres(if rng.below(2) == 0 { Shutdown::Fast } else { Shutdown::Immediate }),
            1 | 2 => Fault::Partition(rng.part()),
            _ => Fault::Kill(rng.part()),
        });
        if matches!(fault, Fault::Kill(_)) {
            kills += 1;
        }
        let at = started.elapsed().as_secs_f64();
        world.inject(fault, &mut rng).await.with_context(|| format!("round {round}: {fault:?}"))?;
        let pause = rng.millis(1000, 4000);
        world.calm(pause, true).await;
        let findings = check(&pool, &app, &receiver, false).await?;
        println!(
            "round {round} at {at:.0}s: {fault:?}; {} releases ({} settled), {} transitions, {} events logged, {} violations",
            findings.releases,
            findings.settled,
            findings.transitions,
            findings.logged_events,
            findings.violations.len()
        );
        for v in &findings.violations {
            println!("  VIOLATION (round {round}): {v}");
        }
        world.tally.violations.extend(findings.violations.into_iter().map(|v| format!("round {round}: {v}")));
    }

    // The end: no new releases; the ones in flight finish; then the end state is checked.
    creating.cancel();
    let settle_by = Instant::now() + Duration::from_secs(240);
    for driver in drivers {
        while !driver.is_finished() && Instant::now() < settle_by {
            world.calm(Duration::from_millis(500), true).await;
        }
        if !driver.is_finished() {
            driver.abort();
        }
    }
    let mut end = check(&pool, &app, &receiver, true).await?;
    let drain_by = Instant::now() + Duration::from_secs(60);
    while !end.violations.is_empty() && Instant::now() < drain_by {
        world.calm(Duration::from_secs(1), true).await;
        end = check(&pool, &app, &receiver, true).await?;
    }
    for v in &end.violations {
        println!("  VIOLATION (end): {v}");
    }
    world.tally.violations.extend(end.violations.iter().map(|v| format!("end: {v}")));

    let releases = invariants::releases(&pool).await?;
    let migrated: i64 =
        sqlx::query_scalar("SELECT count(*) FROM flyway_schema_history WHERE version IS NOT NULL AND success")
            .fetch_one(&app)
            .await?;
    for (i, service) in services.iter().enumerate() {
        let Some(expected) = invariants::expected_version(&releases, service) else {
            world.tally.violations.push(format!("{service}: no succeeded release"));
            continue;
        };
        let seen = answers(&format!("127.0.0.1:{}", PROXY_BASE + i as u16), 20).await;
        let versions: BTreeSet<&String> = seen.keys().map(|(version, _)| version).collect();
        if versions.len() != 1 || !versions.contains(&expected) {
            let v = format!("{service}: traffic answered by {seen:?}, its final phase says {expected}");
            println!("  VIOLATION (end): {v}");
            world.tally.violations.push(v);
        }
    }
    traffic.cancel();
    // What the users saw: answers by status (0: no answer, as while the deployer, which runs the
    // replicas and proxies, restarts).
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for load in loads {
        if let Ok(Ok(tally)) = load.await {
            for ((_, status), n) in tally {
                *statuses.entry(status).or_default() += n;
            }
        }
    }

    for part in Part::ALL.into_iter().rev() {
        if !world.stack.running(part) {
            continue;
        }
        match world.stack.terminate(part, Duration::from_secs(20)).await {
            Ok(Some(0)) => {}
            other => world.tally.violations.push(format!("{} on SIGTERM: {other:?}, not a clean exit", part.name())),
        }
    }
    // The checks can fail: plant a lost event and a doubly applied transition in the stopped
    // system's records, and each must be caught.
    match plant_and_catch(&pool, &app, &receiver).await {
        Ok(caught) if caught => {
            println!("  self-check: a removed log event and a repeated transition were both caught")
        }
        Ok(_) => world.tally.violations.push("self-check: a planted fault went unnoticed by the checks".into()),
        Err(e) => world.tally.violations.push(format!("self-check: {e:#}")),
    }
    pool.close().await;
    app.close().await;
    let World { stack, mut pg, tally, .. } = world;
    drop(stack);
    tokio::task::block_in_place(|| pg.stop());
    let mut tally = tally;
    for listener in foreign_listeners() {
        tally.violations.push(format!("still listening after the harness stopped everything: {listener}"));
    }

    let phases = |phase: &str| releases.iter().filter(|r| r.phase == phase).count();
    // A good canary can be aborted by errors the faults cause (its replicas die with the
    // deployer); a faulty one can get through while the analyzer is down. Neither breaks an
    // invariant, but both are worth seeing.
    let faulty = |r: &&invariants::ReleaseRow| r.artifact.contains("+errors=");
    let good_aborted = releases.iter().filter(|r| !faulty(r) && r.phase == "ABORTED").count();
    let faulty_succeeded = releases.iter().filter(|r| faulty(r) && r.phase == "SUCCEEDED").count();
    let distinct: BTreeSet<String> = receiver.received().iter().map(|r| r.header("webhook-id").to_string()).collect();
    println!("chaos summary (seed {seed}, {round} rounds, {:.0}s):", started.elapsed().as_secs_f64());
    println!("  SIGKILLs: {}", per_part(&tally.kills));
    println!(
        "  PostgreSQL restarts: {} (fast {}, immediate {})",
        tally.postgres.values().sum::<u32>(),
        tally.postgres.get("fast").unwrap_or(&0),
        tally.postgres.get("immediate").unwrap_or(&0)
    );
    println!("  partitions: {}", per_part(&tally.partitions));
    println!("  exits by themselves: {}", per_part(&tally.exits));
    println!(
        "  releases: {} ({} under faults; {} succeeded, {} aborted), {} transitions, {} events logged",
        releases.len(),
        created.load(Ordering::Relaxed),
        phases("SUCCEEDED"),
        phases("ABORTED"),
        end.transitions,
        end.logged_events
    );
    println!("  migrations applied (each once, a new script per release of svc-0): {migrated}");
    println!(
        "  verdicts: {} faulty releases, {faulty_succeeded} of them succeeded; {good_aborted} good ones aborted",
        releases.iter().filter(faulty).count()
    );
    println!(
        "  webhook: {} deliveries of {} distinct events (repeats the receiver dropped: {})",
        receiver.received().len(),
        distinct.len(),
        receiver.received().len() - distinct.len()
    );
    let requests: u64 = statuses.values().sum();
    let by_status: Vec<String> = statuses.iter().map(|(status, n)| format!("{status}: {n}")).collect();
    println!("  traffic: {requests} requests ({})", by_status.join(", "));
    println!("  invariant violations: {}", tally.violations.len());
    for v in &tally.violations {
        println!("    {v}");
    }
    Ok(tally.violations.is_empty())
}
