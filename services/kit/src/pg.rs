//! A throwaway PostgreSQL cluster from the system server binaries (`initdb`, `pg_ctl`), for tests
//! and the embedded stack. PostgreSQL refuses to run as root, so as root every server command
//! runs through `runuser -u postgres`. A watchdog stops the cluster and removes its files if the
//! owning process dies without cleaning up (kill -9), so nothing is left behind.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// A running throwaway cluster; stopped and deleted on drop.
pub struct EphemeralPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    stopped: bool,
    // The server options it was started with, to start it again the same way.
    settings: String,
}

/// How [`EphemeralPostgres::restart`] shuts the server down (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Disconnects clients, checkpoints, then stops.
    Fast,
    /// Stops at once, like a crash: the next start replays the WAL.
    Immediate,
}

/// Options for [`EphemeralPostgres::start`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Keep `fsync`/`synchronous_commit` on (benchmarks); off by default for speed.
    pub durable: bool,
    /// `max_connections`.
    pub max_connections: u32,
    /// Extra server settings (`name`, `value`), e.g. `shared_preload_libraries`.
    pub settings: Vec<(String, String)>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { durable: false, max_connections: 400, settings: Vec::new() }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Directory holding `initdb` and `pg_ctl`: `HOPNGO_PG_BIN`, else `pg_config --bindir` when it has
/// `initdb`, else the newest `/usr/lib/postgresql/<v>/bin`, else whatever `PATH` finds.
fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("HOPNGO_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    let out = Command::new("sh").args(["-c", "command -v initdb"]).output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match Path::new(&path).parent() {
        Some(dir) if !path.is_empty() => Ok(dir.to_path_buf()),
        _ => bail!("PostgreSQL server binaries not found (install the `postgresql` package or set HOPNGO_PG_BIN)"),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EphemeralPostgres {
    /// Creates and starts a cluster in a new temporary directory.
    pub fn start(options: &PgOptions) -> anyhow::Result<Self> {
        let bin = find_bindir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("hopngo-pg-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pg = EphemeralPostgres { dir, bin, port: 0, as_postgres, stopped: false, settings: String::new() };
        if as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&pg.dir))?;
        }
        run(pg.server_command("initdb").arg("-D").arg(pg.dir.join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]))
        .context("initdb")?;
        pg.spawn_watchdog()?;
        // A port can be taken between probing and binding; try a few.
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            let mut settings = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={}",
                pg.port,
                pg.dir.display(),
                options.max_connections
            );
            if !options.durable {
                settings.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            for (name, value) in &options.settings {
                settings.push_str(&format!(" -c {name}={value}"));
            }
            pg.settings = settings;
            match pg.server_start() {
                Ok(()) => return Ok(pg),
                Err(err) => last_err = Some(err),
            }
        }
        let log = std::fs::read_to_string(pg.dir.join("postgres.log")).unwrap_or_default();
        Err(last_err.expect("at least one attempt")).context(format!("pg_ctl start failed; log:\n{log}"))
    }

    /// Port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (`mode`), leaves it down for `down` (blocking), and starts it again on
    /// the same port with the same settings: every client connection is broken, as by a
    /// database failover or restart.
    pub fn restart(&mut self, mode: Shutdown, down: std::time::Duration) -> anyhow::Result<()> {
        let mode = match mode {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        run(self.server_command("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", mode, "-w", "stop"]))
            .context("pg_ctl stop")?;
        std::thread::sleep(down);
        self.server_start().context("pg_ctl start")
    }

    fn server_start(&self) -> anyhow::Result<()> {
        run(self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &self.settings, "start"]))
    }

    /// Stops the cluster and removes its files.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ =
            run(self.server_command("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "fast", "-w", "stop"]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn server_command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A detached shell that waits for this process to end, then stops the cluster and deletes it.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- '{}' -D '{}' -m immediate stop", pg_ctl.display(), data.display())
        } else {
            format!("'{}' -D '{}' -m immediate stop", pg_ctl.display(), data.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; if [ -d '{data}' ]; then {stop} >/dev/null 2>&1; rm -rf '{dir}'; fi",
            pid = std::process::id(),
            data = data.display(),
            dir = self.dir.display(),
        );
        // Its own process group: killing the owner's group (Ctrl-C, a timeout) must not take the
        // watchdog with it.
        Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the PostgreSQL watchdog")?;
        Ok(())
    }
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where a service's database is: a URL, or a throwaway cluster it starts itself.
#[derive(Clone, Debug, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Start a throwaway PostgreSQL cluster (system binaries) instead of using --database-url;
    /// it is deleted on exit.
    #[arg(long, env = "HOPNGO_EPHEMERAL_POSTGRES")]
    pub ephemeral_postgres: bool,
}

impl DatabaseArgs {
    /// The URL to connect to, and the cluster to keep alive while it is used (if one was started).
    pub async fn resolve(self) -> anyhow::Result<(String, Option<EphemeralPostgres>)> {
        match (self.database_url, self.ephemeral_postgres) {
            (Some(url), _) => Ok((url, None)),
            (None, true) => {
                let pg = tokio::task::spawn_blocking(|| EphemeralPostgres::start(&PgOptions::default())).await??;
                tracing::info!(url = %pg.url("postgres"), "started a throwaway PostgreSQL");
                Ok((pg.url("postgres"), Some(pg)))
            }
            (None, false) => bail!("no database: set --database-url (DATABASE_URL) or --ephemeral-postgres"),
        }
    }
}
