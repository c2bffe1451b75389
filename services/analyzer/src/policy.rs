//! What the analyzer may measure, from the delivery config (`--delivery-config`, the file the
//! scheduler's config is applied from): the hosts HTTP providers may reach, the jobs it may run
//! (only commands the config's templates and verify steps declare; a request cannot bring its
//! own), and how jobs run (a scrubbed environment, optionally an unprivileged user). Without a
//! config nothing is reachable and no job runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use hopngo_delivery::{
    DeliveryConfig,
    providers::{DEFAULT_JOB_ENVIRONMENT, DeclaredJob, Host, HostPattern, forbidden},
};

/// The user a job runs as, resolved from the system's user database when the config is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUser {
    /// Name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// How jobs run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRuntime {
    /// Variables of the analyzer's own environment passed through (nothing else is).
    pub environment: Vec<String>,
    /// The unprivileged user, if configured.
    pub user: Option<JobUser>,
}

impl Default for JobRuntime {
    fn default() -> Self {
        JobRuntime { environment: DEFAULT_JOB_ENVIRONMENT.iter().map(|v| v.to_string()).collect(), user: None }
    }
}

/// The rules in force.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    hosts: Vec<HostPattern>,
    jobs: Vec<DeclaredJob>,
    /// How jobs run.
    pub jobs_run: JobRuntime,
    /// Where the rules come from (for messages).
    origin: String,
}

/// Looks a user up in `/etc/passwd` (name or numeric id).
fn lookup_user(passwd: &str, name: &str) -> Option<JobUser> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || (fields[0] != name && fields[2] != name) {
            return None;
        }
        Some(JobUser { name: fields[0].to_string(), uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
    })
}

impl Policy {
    /// The rules of `config` (which has been validated).
    pub fn from_config(config: &DeliveryConfig, origin: &str) -> Result<Policy, String> {
        let hosts = config
            .providers
            .allowed_hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("providers.allowedHosts: {e}"))?;
        let settings = config.providers.jobs.clone().unwrap_or_default();
        let user = match &settings.run_as {
            None => None,
            Some(name) => {
                let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
                Some(
                    lookup_user(&passwd, name)
                        .ok_or_else(|| format!("providers.jobs.runAs: no user {name:?} on this machine"))?,
                )
            }
        };
        let jobs_run =
            JobRuntime { environment: settings.environment.unwrap_or_else(|| JobRuntime::default().environment), user };
        Ok(Policy { hosts, jobs: config.declared_jobs(), jobs_run, origin: origin.to_string() })
    }

    /// Whether a provider may reach `url`'s host.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let host = match url.host() {
            Some(url::Host::Domain(d)) => Host::Name(d),
            Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
            None => return Err("has no host".into()),
        };
        let shown = url.host_str().unwrap_or_default();
        if let Some(why) = forbidden(&host) {
            return Err(format!("{shown} is {why}; providers never reach it"));
        }
        if !self.hosts.iter().any(|p| p.matches(&host)) {
            return Err(format!("{shown} is not an allowed host (providers.allowedHosts of {})", self.origin));
        }
        Ok(())
    }

    /// Whether `command` with `env` (as sent, before `{{args.NAME}}` is substituted) is a job the
    /// config declares.
    pub fn check_job(&self, command: &[String], env: &BTreeMap<String, String>) -> Result<(), String> {
        if self.jobs.iter().any(|j| j.command == command && &j.env == env) {
            return Ok(());
        }
        Err(format!(
            "not a job declared by {} (a job metric of an analysis template or a verify step's job); \
             commands are never taken from a request",
            self.origin
        ))
    }
}

/// The policy of a config file, read again when the file changes (so a config applied with new
/// templates is honoured without a restart); a file that no longer loads leaves the last good
/// policy in force.
pub struct PolicySource {
    path: Option<PathBuf>,
    state: Mutex<(Option<SystemTime>, Arc<Policy>)>,
}

fn load(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let config = DeliveryConfig::load(&text).map_err(|problems| {
        let first = problems.first().map(|p| format!("{}: {}", p.path, p.message)).unwrap_or_default();
        format!("{}: {first}", path.display())
    })?;
    Policy::from_config(&config, &path.display().to_string())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl PolicySource {
    /// Loads `path` (an error if it does not load); `None`: nothing is allowed.
    pub fn open(path: Option<PathBuf>) -> Result<PolicySource, String> {
        let (stamp, policy) = match &path {
            Some(p) => (modified(p), load(p)?),
            None => (None, Policy { origin: "no delivery config (--delivery-config)".into(), ..Policy::default() }),
        };
        Ok(PolicySource { path, state: Mutex::new((stamp, Arc::new(policy))) })
    }

    /// A fixed policy (tests).
    pub fn fixed(policy: Policy) -> PolicySource {
        PolicySource { path: None, state: Mutex::new((None, Arc::new(policy))) }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.path {
            let stamp = modified(path);
            if stamp != state.0 {
                state.0 = stamp;
                match load(path) {
                    Ok(policy) => {
                        tracing::info!(file = %path.display(), "delivery config read again");
                        state.1 = Arc::new(policy);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery config does not load; the previous one stays in force")
                    }
                }
            }
        }
        Arc::clone(&state.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
environments: [{name: staging}]
providers:
  allowedHosts: [127.0.0.1, "*.monitoring.svc"]
  jobs: {environment: [PATH]}
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        provider: {job: {command: [hopngo-smoke, --address, "{{args.address}}"], env: {MODE: quick}}}
services:
  - name: booking
    strategy:
      canary:
        steps:
          - verify: {job: {command: ["true"]}}
          - setWeight: 100
"#;

    fn policy() -> Policy {
        Policy::from_config(&DeliveryConfig::load(CONFIG).unwrap(), "test config").unwrap()
    }

    #[test]
    fn only_declared_jobs_run() {
        let p = policy();
        let smoke: Vec<String> = ["hopngo-smoke", "--address", "{{args.address}}"].map(String::from).to_vec();
        let env: BTreeMap<String, String> = [("MODE".to_string(), "quick".to_string())].into();
        assert!(p.check_job(&smoke, &env).is_ok());
        assert!(p.check_job(&["true".to_string()], &BTreeMap::new()).is_ok(), "a verify step's job");
        assert!(p.check_job(&smoke, &BTreeMap::new()).is_err(), "same command, other environment");
        let id = ["id".to_string()];
        assert!(p.check_job(&id, &BTreeMap::new()).unwrap_err().contains("never taken from a request"));
        assert_eq!(p.jobs_run.environment, vec!["PATH"]);
    }

    #[test]
    fn hosts() {
        let p = policy();
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(p.check_url(&url("http://127.0.0.1:9090/")).is_ok());
        assert!(p.check_url(&url("http://prom.monitoring.svc/")).is_ok());
        assert!(p.check_url(&url("http://10.0.0.1/")).unwrap_err().contains("not an allowed host"));
        assert!(p.check_url(&url("http://169.254.169.254/latest/")).unwrap_err().contains("link-local"));
        assert!(p.check_url(&url("http://[fe80::1]/")).unwrap_err().contains("link-local"));
        assert!(p.check_url(&url("http://metadata.google.internal/")).unwrap_err().contains("metadata"));
        let nothing = PolicySource::open(None).unwrap().current();
        assert!(nothing.check_url(&url("http://127.0.0.1/")).is_err());
        assert!(nothing.check_job(&["true".to_string()], &BTreeMap::new()).is_err());
    }

    #[test]
    fn users_come_from_the_user_database() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(lookup_user(passwd, "nobody"), Some(JobUser { name: "nobody".into(), uid: 65534, gid: 65534 }));
        assert_eq!(lookup_user(passwd, "65534").map(|u| u.name), Some("nobody".into()));
        assert_eq!(lookup_user(passwd, "ghost"), None);
    }
}
