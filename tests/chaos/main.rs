//! The chaos harness (`hopngo-chaos`): the five services as real processes on one throwaway
//! PostgreSQL, releases in flight under traffic, and at random moments a service killed with
//! SIGKILL, PostgreSQL restarted (fast or immediate shutdown), or a service cut off the network
//! for a few seconds. After every round the invariants of `invariants.rs` are checked; at the end
//! every release must be settled, every event logged and delivered, traffic on the version each
//! service's final phase says, and nothing left running.
//!
//! Run it as root (a person: `cargo run -p hopngo-e2e --bin hopngo-chaos -- --kills 200`; CI runs
//! `--kills 3` from the `chaos` test). It isolates itself: it re-runs itself in a network
//! namespace of its own (`unshare --net`, loopback only), so every port is private and a
//! partition is an `iptables` rule inside that namespace dropping everything the service's
//! processes send (each service runs in its own cgroup, matched with `-m cgroup --path`). The
//! namespace vanishes with the harness; the cgroups are checked empty and removed by the outer
//! process, which is how "nothing left running" is proved.

mod invariants;
mod rounds;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// What a chaos run does.
#[derive(Parser, Clone, Debug)]
#[command(name = "hopngo-chaos", about = "Kill, restart and partition the control plane; check it loses nothing")]
pub struct Options {
    /// Stop after this many SIGKILLs (PostgreSQL restarts and partitions come between them).
    #[arg(long, env = "HOPNGO_CHAOS_KILLS", default_value_t = 3)]
    pub kills: u32,
    /// Seed of the fault schedule (random when absent; printed so a run can be repeated).
    #[arg(long, env = "HOPNGO_CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Services under release at once.
    #[arg(long, env = "HOPNGO_CHAOS_SERVICES", default_value_t = 3)]
    pub services: usize,
    /// Give up (and fail) after this long, whatever is left to do.
    #[arg(long, env = "HOPNGO_CHAOS_MAX_DURATION", value_parser = hopngo_kit::args::parse_duration, default_value = "75m")]
    pub max_duration: Duration,
    /// Where the services' logs go (kept after the run); a temporary directory when absent.
    #[arg(long, env = "HOPNGO_CHAOS_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
}

/// Set in the harness that runs inside the namespace: the cgroup directory it places services in.
const INSIDE: &str = "HOPNGO_CHAOS_CGROUP";

fn main() -> ExitCode {
    let options = Options::parse();
    let result = match std::env::var_os(INSIDE) {
        Some(cgroup) => inside(options, PathBuf::from(cgroup)),
        None => outside(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hopngo-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the unified (v2) cgroup hierarchy is mounted.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .context("no cgroup2 hierarchy is mounted (partitions match a service's cgroup)")
}

fn require(program: &str, why: &str) -> anyhow::Result<()> {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        bail!("`{program}` is not installed ({why})");
    }
    Ok(())
}

/// The outer process: sets up the cgroups, runs the harness in a new network namespace, and
/// afterwards proves nothing it started is still running.
fn outside() -> anyhow::Result<bool> {
    if !rustix::process::geteuid().is_root() {
        bail!("must run as root (it makes a network namespace, cgroups and iptables rules)");
    }
    require("unshare", "util-linux: the harness runs in its own network namespace")?;
    require("iptables", "partitions are iptables rules inside that namespace")?;
    let root = cgroup2_root()?;
    let name = format!("hopngo-chaos-{}", std::process::id());
    let cgroup = root.join(&name);
    std::fs::create_dir(&cgroup).with_context(|| format!("creating the cgroup {}", cgroup.display()))?;
    let harness = cgroup.join("harness");
    std::fs::create_dir(&harness)?;
    let exe = std::env::current_exe()?;
    // The harness joins its cgroup before it becomes itself, so everything it starts (PostgreSQL
    // included) is accounted there.
    let status = std::process::Command::new("sh")
        .args(["-c", "echo $$ > \"$0\"/cgroup.procs && exec unshare --net -- \"$@\""])
        .arg(&harness)
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, &cgroup)
        .status()
        .context("starting the harness")?;
    let left = leftovers(&cgroup, Duration::from_secs(15));
    for (pid, cmdline) in &left {
        eprintln!("hopngo-chaos: VIOLATION: still running after the harness: {pid} {cmdline}");
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    std::thread::sleep(Duration::from_millis(200));
    remove_cgroups(&cgroup);
    println!("left running after the harness: {}", left.len());
    Ok(status.success() && left.is_empty())
}

/// The processes still in `cgroup` (any level) once `within` has passed or none are left.
fn leftovers(cgroup: &Path, within: Duration) -> Vec<(u32, String)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut pids = Vec::new();
        let mut dirs = vec![cgroup.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        if pids.is_empty() || std::time::Instant::now() >= deadline {
            return pids
                .into_iter()
                .map(|pid| {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string())
                })
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remove_cgroups(cgroup: &Path) {
    for entry in std::fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroups(&entry.path());
        }
    }
    if let Err(e) = std::fs::remove_dir(cgroup) {
        eprintln!("hopngo-chaos: removing the cgroup {}: {e}", cgroup.display());
    }
}

/// The harness proper, inside its network namespace.
fn inside(options: Options, cgroup: PathBuf) -> anyhow::Result<bool> {
    let status = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status()?;
    if !status.success() {
        bail!("ip link set lo up failed");
    }
    let root = cgroup2_root()?;
    let relative = cgroup.strip_prefix(&root).context("the cgroup is under the cgroup2 root")?.to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(rounds::run(options, cgroup, relative))
}
