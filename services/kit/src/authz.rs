//! Authorisation: which RPC needs which permission (one table for every service), and the access
//! policy that grants roles to users and groups per environment and service.
//!
//! The authentication layer refuses a call whose caller holds the permission nowhere; handlers that
//! know the environment and service a call touches (the scheduler's) then check that scope with
//! [`Authorizer::check`].

use std::{path::Path, sync::Arc};

use serde::Deserialize;

use crate::{
    auth::Principal,
    identity::{normalise, same_name, valid_group, valid_user},
    reload::Reloading,
};

/// Issuer recorded for control-plane services proven by their TLS certificate.
pub const MTLS_ISSUER: &str = "hopngo:mtls";

/// What an RPC needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Any proven caller (asking who one is).
    Authenticated,
    /// Read releases, runs, configs, events.
    View,
    /// Create, promote, abort, retry and undo releases; acknowledge escalations.
    Deploy,
    /// Approve or reject a release waiting for approval.
    Approve,
    /// Apply configs, manage webhooks, roll back a whole environment.
    Admin,
    /// The control plane's own calls (apply targets, run migrations, publish events): the
    /// scheduler's certificate, or an admin.
    Internal,
}

impl Permission {
    /// The name used in policies and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Authenticated => "authenticated",
            Permission::View => "view",
            Permission::Deploy => "deploy",
            Permission::Approve => "approve",
            Permission::Admin => "admin",
            Permission::Internal => "internal",
        }
    }

    /// The built-in roles granting it.
    fn granted_by(self) -> &'static [&'static str] {
        match self {
            Permission::Authenticated => &[],
            Permission::View => &["viewer", "deployer", "approver", "admin"],
            Permission::Deploy => &["deployer", "admin"],
            Permission::Approve => &["approver", "admin"],
            Permission::Admin | Permission::Internal => &["admin"],
        }
    }
}

/// The one table from RPC to permission. An RPC missing here is refused (fail closed); a test
/// checks every RPC in the descriptors is listed.
pub const RPC_PERMISSIONS: &[(&str, Permission)] = {
    use Permission::*;
    &[
        ("/hopngo.release.v1.ReleaseService/CreateRelease", Deploy),
        ("/hopngo.release.v1.ReleaseService/GetRelease", View),
        ("/hopngo.release.v1.ReleaseService/ListReleases", View),
        ("/hopngo.release.v1.ReleaseService/WatchRelease", View),
        ("/hopngo.release.v1.ReleaseService/PromoteRelease", Deploy),
        ("/hopngo.release.v1.ReleaseService/AbortRelease", Deploy),
        ("/hopngo.release.v1.ReleaseService/RetryRelease", Deploy),
        ("/hopngo.release.v1.ReleaseService/UndoRelease", Deploy),
        ("/hopngo.release.v1.ReleaseService/ApproveRelease", Approve),
        ("/hopngo.release.v1.ReleaseService/RejectRelease", Approve),
        ("/hopngo.release.v1.ReleaseService/ListRevisions", View),
        // Deploy for each service; the emergency form needs admin (checked by the scheduler).
        ("/hopngo.release.v1.ReleaseService/RollbackEnvironment", Deploy),
        ("/hopngo.release.v1.ReleaseService/GetReleaseGroup", View),
        ("/hopngo.release.v1.ReleaseService/CreateTrain", Deploy),
        ("/hopngo.release.v1.ReleaseService/ApproveReleaseGroup", Approve),
        ("/hopngo.release.v1.ReleaseService/RejectReleaseGroup", Approve),
        ("/hopngo.release.v1.ReleaseService/AbortReleaseGroup", Deploy),
        ("/hopngo.release.v1.ReleaseService/PromoteEnvironment", Deploy),
        ("/hopngo.release.v1.ReleaseService/ListAuditEntries", View),
        ("/hopngo.release.v1.ReleaseService/RenderRelease", View),
        ("/hopngo.release.v1.ReleaseService/CreateFreeze", Admin),
        ("/hopngo.release.v1.ReleaseService/ListFreezes", View),
        ("/hopngo.release.v1.ReleaseService/EndFreeze", Admin),
        ("/hopngo.config.v1.ConfigService/ApplyConfig", Admin),
        ("/hopngo.config.v1.ConfigService/GetConfig", View),
        ("/hopngo.config.v1.ConfigService/ValidateConfig", View),
        ("/hopngo.deployer.v1.DeployerService/ApplyTarget", Internal),
        ("/hopngo.deployer.v1.DeployerService/GetTargetStatus", View),
        ("/hopngo.deployer.v1.DeployerService/Preflight", Internal),
        ("/hopngo.deployer.v1.DeployerService/ControlRollout", Internal),
        ("/hopngo.deployer.v1.DeployerService/RenderTarget", View),
        ("/hopngo.analyzer.v1.AnalyzerService/StartAnalysisRun", Internal),
        ("/hopngo.analyzer.v1.AnalyzerService/GetAnalysisRun", View),
        ("/hopngo.analyzer.v1.AnalyzerService/ListAnalysisRuns", View),
        ("/hopngo.analyzer.v1.AnalyzerService/WatchAnalysisRun", View),
        ("/hopngo.analyzer.v1.AnalyzerService/TerminateAnalysisRun", Internal),
        ("/hopngo.analyzer.v1.AnalyzerService/Measure", Internal),
        ("/hopngo.analyzer.v1.AnalyzerService/CheckProviders", Internal),
        ("/hopngo.analyzer.v1.AnalyzerService/Judge", View),
        ("/hopngo.migrator.v1.MigratorService/Info", View),
        ("/hopngo.migrator.v1.MigratorService/Validate", View),
        ("/hopngo.migrator.v1.MigratorService/StartMigration", Internal),
        ("/hopngo.migrator.v1.MigratorService/GetMigrationRun", View),
        ("/hopngo.migrator.v1.MigratorService/WatchMigrationRun", View),
        ("/hopngo.migrator.v1.MigratorService/ListMigrationRuns", View),
        ("/hopngo.notifier.v1.NotifierService/PublishEvents", Internal),
        ("/hopngo.notifier.v1.NotifierService/Subscribe", View),
        ("/hopngo.notifier.v1.NotifierService/CreateWebhook", Admin),
        ("/hopngo.notifier.v1.NotifierService/ListWebhooks", View),
        ("/hopngo.notifier.v1.NotifierService/DeleteWebhook", Admin),
        ("/hopngo.notifier.v1.NotifierService/ListDeliveries", View),
        ("/hopngo.notifier.v1.NotifierService/ReplayWebhook", Admin),
        ("/hopngo.notifier.v1.NotifierService/Acknowledge", Deploy),
        ("/hopngo.notifier.v1.NotifierService/ListEscalations", View),
        ("/hopngo.identity.v1.IdentityService/WhoAmI", Authenticated),
    ]
};

/// The RPCs that answer with a stream (counted against a caller's open streams); a test checks
/// the list against the descriptors.
pub const STREAMING_RPCS: &[&str] = &[
    "/hopngo.release.v1.ReleaseService/WatchRelease",
    "/hopngo.analyzer.v1.AnalyzerService/WatchAnalysisRun",
    "/hopngo.migrator.v1.MigratorService/WatchMigrationRun",
    "/hopngo.notifier.v1.NotifierService/Subscribe",
];

/// Whether `permission` changes something (limited per caller), rather than reading.
pub fn is_change(permission: Permission) -> bool {
    !matches!(permission, Permission::View | Permission::Authenticated)
}

/// The permission `path` (`/package.Service/Method`) needs; `None` for an RPC nobody may call.
pub fn required(path: &str) -> Option<Permission> {
    RPC_PERMISSIONS.iter().find(|(p, _)| *p == path).map(|(_, permission)| *permission)
}

/// The method name of a gRPC path, for messages.
pub fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What a call touches; `None` parts are unknown (checked as "anywhere").
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// Environment.
    pub environment: Option<&'a str>,
    /// Service.
    pub service: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// One service in one environment.
    pub fn of(service: &'a str, environment: &'a str) -> Scope<'a> {
        Scope { environment: Some(environment), service: Some(service) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    bindings: Vec<RawBinding>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    subjects: Vec<String>,
    roles: Vec<String>,
    #[serde(default = "everything")]
    environments: Vec<String>,
    #[serde(default = "everything")]
    services: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
}

#[derive(Clone, Debug)]
struct Binding {
    subjects: Vec<Subject>,
    roles: Vec<String>,
    environments: Vec<String>,
    services: Vec<String>,
}

/// Roles granted to users and groups, per environment and service.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    bindings: Vec<Binding>,
}

/// `*` matches any run of characters; everything else matches itself (case-insensitively).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

fn valid_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 64
        && role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty() && pattern.len() <= 253 && pattern.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl Policy {
    /// Parses and validates a policy file:
    ///
    /// ```yaml
    /// bindings:
    ///   - subjects: [group:release-managers, user:bob@example.com]
    ///     roles: [approver, release-manager]
    ///     environments: [production]   # default ["*"]
    ///     services: ["*"]              # default ["*"]
    /// ```
    pub fn parse(yaml: &str) -> Result<Policy, String> {
        if yaml.len() > 1 << 20 {
            return Err("the policy is larger than 1 MiB".into());
        }
        let file: PolicyFile = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        if file.bindings.len() > 10_000 {
            return Err("bindings: more than 10000".into());
        }
        let mut bindings = Vec::new();
        for (i, raw) in file.bindings.into_iter().enumerate() {
            let at = format!("bindings[{i}]");
            if raw.subjects.is_empty() {
                return Err(format!("{at}.subjects: empty (give user:NAME or group:NAME)"));
            }
            let mut subjects = Vec::new();
            for subject in &raw.subjects {
                let parsed = match subject.split_once(':') {
                    Some(("user", name)) if valid_user(&name.replace('*', "x")) => Subject::User(normalise(name)),
                    Some(("group", name)) if valid_group(name) => Subject::Group(normalise(name)),
                    _ => return Err(format!("{at}.subjects: {subject:?} is not user:NAME or group:NAME")),
                };
                subjects.push(parsed);
            }
            if raw.roles.is_empty() {
                return Err(format!("{at}.roles: empty"));
            }
            if let Some(bad) = raw.roles.iter().find(|r| !valid_role(r)) {
                return Err(format!(
                    "{at}.roles: {bad:?} is not a role (viewer, deployer, approver, admin, or an approval role of a-z 0-9 -)"
                ));
            }
            for (field, patterns) in [("environments", &raw.environments), ("services", &raw.services)] {
                if patterns.is_empty() {
                    return Err(format!("{at}.{field}: empty (use [\"*\"] for all)"));
                }
                if let Some(bad) = patterns.iter().find(|p| !valid_pattern(p)) {
                    return Err(format!("{at}.{field}: {bad:?} is not a name or pattern"));
                }
            }
            bindings.push(Binding {
                subjects,
                roles: raw.roles,
                environments: raw.environments,
                services: raw.services,
            });
        }
        Ok(Policy { bindings })
    }

    fn binds(binding: &Binding, id: &Principal) -> bool {
        binding.subjects.iter().any(|subject| match subject {
            Subject::User(pattern) => glob_match(pattern, &id.user),
            Subject::Group(pattern) => id.groups.iter().any(|g| glob_match(pattern, g)),
        })
    }

    fn covers(patterns: &[String], name: Option<&str>) -> bool {
        match name {
            Some(name) => patterns.iter().any(|p| glob_match(p, name)),
            // Unknown scope: any binding counts (the handler checks the real scope later).
            None => true,
        }
    }

    /// The roles `id` holds for `scope`, built-in and approval roles alike, each once.
    pub fn roles(&self, id: &Principal, scope: Scope<'_>) -> Vec<String> {
        let mut roles: Vec<String> = Vec::new();
        for binding in &self.bindings {
            if Self::binds(binding, id)
                && Self::covers(&binding.environments, scope.environment)
                && Self::covers(&binding.services, scope.service)
            {
                for role in &binding.roles {
                    if !roles.contains(role) {
                        roles.push(role.clone());
                    }
                }
            }
        }
        roles
    }
}

/// Checks permissions: the policy (reloaded when its file changes), the admin group that holds
/// every permission everywhere (so a broken policy cannot lock the operators out), and the name of
/// the scheduler's certificate.
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<AuthorizerInner>,
}

struct AuthorizerInner {
    /// `None`: no policy file, nobody holds a role by policy.
    policy: Option<Reloading<Policy>>,
    admin_group: String,
    scheduler: String,
}

impl Authorizer {
    /// An authorizer reading `file` (no file: only the admin group and the scheduler may act).
    pub fn load(file: Option<&Path>, admin_group: &str, scheduler: &str) -> Result<Authorizer, String> {
        if !valid_group(admin_group) {
            return Err(format!("--admin-group {admin_group:?} is not a group name"));
        }
        let policy = match file {
            None => None,
            Some(path) => {
                let file = path.to_owned();
                Some(Reloading::new("access policy", &[path], move || {
                    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
                    Policy::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
                })?)
            }
        };
        Ok(Authorizer {
            inner: Arc::new(AuthorizerInner {
                policy,
                admin_group: normalise(admin_group),
                scheduler: normalise(scheduler),
            }),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match &self.inner.policy {
            Some(policy) => policy.current(),
            None => Arc::new(Policy::default()),
        }
    }

    /// Whether `id` is the scheduler, proven by its certificate.
    pub fn is_scheduler(&self, id: &Principal) -> bool {
        id.issuer == MTLS_ISSUER && same_name(&id.user, &self.inner.scheduler)
    }

    /// Whether `id` is in the admin group.
    pub fn is_admin_group(&self, id: &Principal) -> bool {
        id.in_group(&self.inner.admin_group)
    }

    /// The roles `id` holds for `scope` (admins hold `admin`).
    pub fn roles(&self, id: &Principal, scope: Scope<'_>) -> Vec<String> {
        let mut roles = self.policy().roles(id, scope);
        if self.is_admin_group(id) && !roles.iter().any(|r| r == "admin") {
            roles.push("admin".into());
        }
        roles
    }

    /// Whether `id` may use `permission` in `scope`; the refusal names what is missing.
    pub fn check(&self, id: &Principal, permission: Permission, scope: Scope<'_>) -> Result<(), String> {
        // The scheduler acts for the people it authenticated and authorised itself.
        if self.is_scheduler(id) || permission == Permission::Authenticated {
            return Ok(());
        }
        let roles = self.roles(id, scope);
        if permission.granted_by().iter().any(|granted| roles.iter().any(|r| r == granted)) {
            return Ok(());
        }
        let needs = match permission {
            Permission::Internal => "the scheduler's certificate or the admin role".to_string(),
            other => format!("one of the roles {}", other.granted_by().join(", ")),
        };
        let place = match (scope.service, scope.environment) {
            (Some(service), Some(environment)) => format!(" for {service} in {environment}"),
            (None, Some(environment)) => format!(" in {environment}"),
            (Some(service), None) => format!(" for {service}"),
            (None, None) => String::new(),
        };
        Err(format!("{} lacks the {} permission{place}: it needs {needs}", id.user, permission.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(user: &str, groups: &[&str]) -> Principal {
        Principal {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            issuer: "https://issuer".into(),
            subject: user.into(),
        }
    }

    const POLICY: &str = "bindings:
  - subjects: [group:developers]
    roles: [deployer]
    environments: [staging, dev-*]
  - subjects: [group:release-managers, user:bob]
    roles: [approver, release-manager]
    environments: [production]
  - subjects: [user:*@example.com]
    roles: [viewer]
";

    #[test]
    fn roles_follow_subject_environment_and_service() {
        let policy = Policy::parse(POLICY).unwrap();
        let alice = person("alice@example.com", &["developers"]);
        assert_eq!(policy.roles(&alice, Scope::of("booking", "staging")), vec!["deployer", "viewer"]);
        assert_eq!(policy.roles(&alice, Scope::of("booking", "dev-7")), vec!["deployer", "viewer"]);
        assert_eq!(policy.roles(&alice, Scope::of("booking", "production")), vec!["viewer"]);
        let bob = person("bob", &[]);
        assert_eq!(policy.roles(&bob, Scope::of("booking", "production")), vec!["approver", "release-manager"]);
        assert!(policy.roles(&bob, Scope::of("booking", "staging")).is_empty());
        assert_eq!(policy.roles(&bob, Scope::default()), vec!["approver", "release-manager"]);
    }

    #[test]
    fn checks_name_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("hopngo-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policy.yaml");
        std::fs::write(&file, POLICY).unwrap();
        let authz = Authorizer::load(Some(&file), "hopngo:admins", "scheduler").unwrap();
        let alice = person("alice@example.com", &["developers"]);
        assert!(authz.check(&alice, Permission::Deploy, Scope::of("booking", "staging")).is_ok());
        let refusal = authz.check(&alice, Permission::Deploy, Scope::of("booking", "production")).unwrap_err();
        assert_eq!(
            refusal,
            "alice@example.com lacks the deploy permission for booking in production: it needs one of the roles deployer, admin"
        );
        assert!(authz.check(&alice, Permission::Internal, Scope::default()).unwrap_err().contains("certificate"));
        let admin = person("root", &["hopngo:admins"]);
        assert!(authz.check(&admin, Permission::Internal, Scope::default()).is_ok());
        let scheduler = Principal {
            user: "scheduler".into(),
            groups: vec![],
            issuer: MTLS_ISSUER.into(),
            subject: "scheduler".into(),
        };
        assert!(authz.check(&scheduler, Permission::Internal, Scope::default()).is_ok());
        // A person cannot be the scheduler by name alone.
        assert!(authz.check(&person("scheduler", &[]), Permission::Internal, Scope::default()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_policies_are_refused_with_the_place() {
        assert!(
            Policy::parse("bindings:\n  - {subjects: [alice], roles: [viewer]}\n").unwrap_err().contains("user:NAME")
        );
        assert!(
            Policy::parse("bindings:\n  - {subjects: [user:a], roles: []}\n").unwrap_err().contains("roles: empty")
        );
        assert!(
            Policy::parse("bindings:\n  - {subjects: [user:a], roles: [Admin]}\n").unwrap_err().contains("not a role")
        );
        assert!(
            Policy::parse("bindings:\n  - {subjects: [user:a], roles: [viewer], environments: []}\n")
                .unwrap_err()
                .contains("environments: empty")
        );
        assert!(Policy::parse("bindings:\n  - {subjects: [user:a], roles: [viewer], extra: 1}\n").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "") && glob_match("dev-*", "dev-7") && glob_match("*@example.com", "a@Example.com"));
        assert!(!glob_match("dev-*", "prod") && !glob_match("a*b", "ac") && glob_match("a*b*c", "axxbyyc"));
    }
}
