//! How services run on Kubernetes: the namespace and gateway of each environment, and per
//! service either what its Deployments need (native mode: the deployer owns the workloads) or
//! the Argo Rollout it already has (Argo mode: the deployer drives the Rollout).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Service, Validator};

/// Longest service name the Kubernetes backend can run: object names are `<service>-preview`
/// and must stay DNS labels (63).
pub const MAX_SERVICE_NAME: usize = 63 - "-preview".len();

/// An environment on Kubernetes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvironmentKubernetes {
    /// Namespace of the environment's services.
    pub namespace: String,
    /// The Gateway the services' HTTPRoutes attach to (services with a `route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
    /// Service account of the pods (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// A Gateway API `parentRef`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayRef {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace (default: the environment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A service's workloads in native mode.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceKubernetes {
    /// Image repository without tag or digest (`registry.example/hopngo/booking`); a release's
    /// artifact is the tag (`1.4.2`) or the digest (`sha256:…`).
    pub image: String,
    /// Port the container listens on (default 8080).
    #[serde(default = "default_container_port")]
    pub container_port: u16,
    /// Port of the Services (default 80).
    #[serde(default = "default_service_port")]
    pub service_port: u16,
    /// HTTP readiness probe (default `GET /healthz`): a pod gets traffic once it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<HttpProbe>,
    /// HTTP liveness probe (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<HttpProbe>,
    /// Container resources (`requests`/`limits` of `cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Container environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Weighted traffic through a Gateway API HTTPRoute named like the service; without it the
    /// canary's share follows its share of replicas behind the service's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteDef>,
    /// How long the old version keeps running after it stopped getting traffic (default 30s,
    /// as Argo's `scaleDownDelaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<super::Dur>,
    /// Where the pods serve their Prometheus metrics: written on the pods as the
    /// `prometheus.io/scrape`, `/path` and `/port` annotations a scrape job keeps and follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsEndpoint>,
}

/// A pod's metrics endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsEndpoint {
    /// Path (default `/metrics`).
    #[serde(default = "default_metrics_path")]
    pub path: String,
    /// Port (default the container port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

fn default_container_port() -> u16 {
    8080
}

fn default_service_port() -> u16 {
    80
}

/// An HTTP probe.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    /// Path (starts with `/`).
    pub path: String,
    /// Seconds between probes (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Failures before the pod is unready (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
}

/// Container resources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Requests by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Limits by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// The service's HTTPRoute.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDef {
    /// Host names the route answers (none: every host of the Gateway's listener).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Path prefix (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// A service HopNGo releases through its existing Argo Rollout.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArgoRolloutRef {
    /// Rollout name (in the environment's namespace).
    pub name: String,
    /// Container whose image a release sets.
    pub container: String,
    /// Image repository without tag or digest; the artifact is the tag or digest.
    pub image: String,
}

/// The image a release of `artifact` runs: `repository:tag`, or `repository@sha256:…` for a
/// digest.
pub fn image_reference(repository: &str, artifact: &str) -> String {
    if artifact.starts_with("sha256:") {
        format!("{repository}@{artifact}")
    } else {
        format!("{repository}:{artifact}")
    }
}

/// Why `artifact` cannot be an image tag or digest, if it cannot.
pub fn image_artifact_problem(artifact: &str) -> Option<String> {
    if let Some(hex) = artifact.strip_prefix("sha256:") {
        return (hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
            .then(|| format!("{artifact:?} is not a sha256 digest (64 lower-case hex digits)"));
    }
    let ok = !artifact.is_empty()
        && artifact.len() <= 128
        && artifact.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && artifact.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    (!ok).then(|| {
        format!("{artifact:?} is not an image tag (letters, digits, '_', '.', '-', at most 128) or digest (sha256:…)")
    })
}

/// Whether `s` is a DNS-1123 label (Kubernetes names of Services, namespaces, …).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (names of Deployments, HTTPRoutes, Rollouts, hosts).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn image_repository_problem(image: &str) -> Option<String> {
    if image.is_empty() || image.len() > 255 {
        return Some("must be 1 to 255 characters".into());
    }
    if image.contains('@') || image.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        return Some(format!("{image:?} has a tag or digest; give the repository only (the artifact is the tag)"));
    }
    if let Some(c) = image.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))) {
        return Some(format!("{image:?} contains {c:?}"));
    }
    if image.starts_with(['/', '.', '-', ':']) || image.ends_with(['/', ':']) || image.contains("//") {
        return Some(format!("{image:?} is not an image repository"));
    }
    None
}

/// A resource quantity as Kubernetes reads it (`100m`, `1.5`, `128Mi`, `1e3`).
fn is_quantity(q: &str) -> bool {
    let digits_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number = number.strip_prefix(['+', '-']).unwrap_or(number);
    let number_ok = !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok =
        matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
            });
    number_ok && suffix_ok && q.len() <= 64
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

impl Validator {
    /// A URL path a pod serves: starts with `/`, printable ASCII.
    fn http_path(&mut self, path: &str, value: &str) {
        if !value.starts_with('/') || value.len() > 1024 || value.chars().any(|c| !c.is_ascii_graphic()) {
            self.problem(path, format!("{value:?} is not a path (starts with '/')"));
        }
    }

    pub(super) fn kubernetes_environment(&mut self, path: &str, k: &EnvironmentKubernetes) {
        if !is_dns_label(&k.namespace) {
            self.problem(format!("{path}.namespace"), format!("{:?} is not a namespace name (DNS label)", k.namespace));
        }
        if let Some(gateway) = &k.gateway {
            if !is_dns_subdomain(&gateway.name) {
                self.problem(format!("{path}.gateway.name"), format!("{:?} is not a Gateway name", gateway.name));
            }
            if let Some(ns) = gateway.namespace.as_deref().filter(|ns| !is_dns_label(ns)) {
                self.problem(format!("{path}.gateway.namespace"), format!("{ns:?} is not a namespace name"));
            }
            if let Some(section) = gateway.section_name.as_deref().filter(|s| !is_dns_subdomain(s)) {
                self.problem(format!("{path}.gateway.sectionName"), format!("{section:?} is not a listener name"));
            }
        }
        if let Some(sa) = k.service_account.as_deref().filter(|sa| !is_dns_subdomain(sa)) {
            self.problem(format!("{path}.serviceAccount"), format!("{sa:?} is not a service account name"));
        }
    }

    /// The Rollout's own strategy shifts the traffic: HopNGo's steps around it are gates.
    fn argo_strategy(&mut self, path: &str, strategy: &super::Strategy) {
        if strategy.blue_green.is_some() {
            self.problem(
                format!("{path}.blueGreen"),
                "an argoRollout service follows its Rollout's own strategy: write canary steps for what runs around it (approval, migrate, pause, verify)",
            );
        }
        for (i, step) in strategy.canary.iter().flat_map(|c| c.steps.iter()).enumerate() {
            if matches!(
                step.step,
                super::StepDef::SetWeight(_)
                    | super::StepDef::SetCanaryScale(_)
                    | super::StepDef::SetHeaderRoute(_)
                    | super::StepDef::SetMirrorRoute(_)
                    | super::StepDef::Experiment(_)
            ) {
                self.problem(
                    format!("{path}.canary.steps[{i}]"),
                    "an argoRollout service's traffic follows its Rollout's own steps; set weights in the Rollout",
                );
            }
        }
    }

    pub(super) fn kubernetes_service(&mut self, path: &str, service: &Service, gateways: bool) {
        if let Some(argo) = &service.argo_rollout {
            let apath = format!("{path}.argoRollout");
            if service.kubernetes.is_some() {
                self.problem(
                    apath.clone(),
                    "a service runs either on Deployments the deployer owns (kubernetes) or on its Argo Rollout, not both",
                );
            }
            if !is_dns_subdomain(&argo.name) {
                self.problem(format!("{apath}.name"), format!("{:?} is not a Rollout name", argo.name));
            }
            if !is_dns_label(&argo.container) {
                self.problem(format!("{apath}.container"), format!("{:?} is not a container name", argo.container));
            }
            if let Some(problem) = image_repository_problem(&argo.image) {
                self.problem(format!("{apath}.image"), problem);
            }
            let overrides = service
                .environments
                .iter()
                .filter_map(|(env, o)| o.strategy.as_ref().map(|s| (format!("{path}.environments.{env}.strategy"), s)));
            for (spath, strategy) in std::iter::once((format!("{path}.strategy"), &service.strategy)).chain(overrides) {
                self.argo_strategy(&spath, strategy);
            }
        }
        let Some(k) = &service.kubernetes else { return };
        if service.name.len() > MAX_SERVICE_NAME {
            self.problem(
                format!("{path}.name"),
                format!("at most {MAX_SERVICE_NAME} characters on Kubernetes (object names add \"-preview\")"),
            );
        }
        let kpath = format!("{path}.kubernetes");
        if k.route.is_none() {
            let overrides = service
                .environments
                .iter()
                .filter_map(|(env, o)| o.strategy.as_ref().map(|s| (format!("{path}.environments.{env}.strategy"), s)));
            for (spath, strategy) in std::iter::once((format!("{path}.strategy"), &service.strategy)).chain(overrides) {
                for (i, step) in strategy.canary.iter().flat_map(|c| c.steps.iter()).enumerate() {
                    if matches!(step.step, super::StepDef::SetHeaderRoute(_) | super::StepDef::SetMirrorRoute(_)) {
                        self.problem(
                            format!("{spath}.canary.steps[{i}]"),
                            "header and mirror routes need kubernetes.route: the service's HTTPRoute carries them",
                        );
                    }
                    if matches!(step.step, super::StepDef::Experiment(_)) {
                        self.problem(
                            format!("{spath}.canary.steps[{i}]"),
                            "an experiment needs kubernetes.route: the baseline's and the canary's weights are the \
                             HTTPRoute's",
                        );
                    }
                }
            }
        }
        if let Some(problem) = image_repository_problem(&k.image) {
            self.problem(format!("{kpath}.image"), problem);
        }
        for (field, port) in [("containerPort", k.container_port), ("servicePort", k.service_port)] {
            if port == 0 {
                self.problem(format!("{kpath}.{field}"), "must be in 1..=65535");
            }
        }
        if let Some(m) = &k.metrics {
            self.http_path(&format!("{kpath}.metrics.path"), &m.path);
            if m.port == Some(0) {
                self.problem(format!("{kpath}.metrics.port"), "must be in 1..=65535");
            }
        }
        for (field, probe) in [("readinessProbe", &k.readiness_probe), ("livenessProbe", &k.liveness_probe)] {
            let Some(probe) = probe else { continue };
            self.http_path(&format!("{kpath}.{field}.path"), &probe.path);
            if let Some(p) = probe.period_seconds {
                self.range(&format!("{kpath}.{field}.periodSeconds"), p.into(), 1, 3600);
            }
            if let Some(f) = probe.failure_threshold {
                self.range(&format!("{kpath}.{field}.failureThreshold"), f.into(), 1, 100);
            }
        }
        for (kind, quantities) in [("requests", &k.resources.requests), ("limits", &k.resources.limits)] {
            for (name, quantity) in quantities {
                let qpath = format!("{kpath}.resources.{kind}.{name}");
                if !matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage") {
                    self.problem(qpath, "known resources: cpu, memory, ephemeral-storage");
                } else if !is_quantity(quantity) {
                    self.problem(qpath, format!("{quantity:?} is not a quantity (100m, 0.5, 256Mi)"));
                }
            }
        }
        for (name, value) in &k.env {
            if !is_env_name(name) {
                self.problem(format!("{kpath}.env"), format!("{name:?} is not a variable name"));
            } else if value.len() > 32 * 1024 || value.contains('\0') {
                self.problem(format!("{kpath}.env.{name}"), "at most 32 KiB, no NUL");
            }
        }
        if let Some(route) = &k.route {
            if !gateways {
                self.problem(
                    format!("{kpath}.route"),
                    "needs a gateway: every environment on Kubernetes needs kubernetes.gateway (the route's parent)",
                );
            }
            for (i, host) in route.hostnames.iter().enumerate() {
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if !is_dns_subdomain(bare) {
                    self.problem(format!("{kpath}.route.hostnames[{i}]"), format!("{host:?} is not a host name"));
                }
            }
            if let Some(prefix) = &route.path_prefix
                && (!prefix.starts_with('/') || prefix.len() > 1024 || prefix.chars().any(|c| !c.is_ascii_graphic()))
            {
                self.problem(
                    format!("{kpath}.route.pathPrefix"),
                    format!("{prefix:?} is not a path (starts with '/')"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_repository_plus_tag_or_digest() {
        assert_eq!(image_reference("r.example/hopngo/booking", "1.4.2"), "r.example/hopngo/booking:1.4.2");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(image_reference("booking", &digest), format!("booking@{digest}"));
        assert_eq!(image_artifact_problem("1.4.2"), None);
        assert_eq!(image_artifact_problem(&digest), None);
        assert!(image_artifact_problem("sha256:abc").unwrap().contains("not a sha256 digest"));
        assert!(image_artifact_problem("1.4.2/x").unwrap().contains("not an image tag"));
        assert!(image_artifact_problem(".hidden").is_some());
        assert_eq!(image_repository_problem("registry.example:5000/hopngo/booking"), None);
        assert!(image_repository_problem("booking:1.0").unwrap().contains("tag or digest"));
        assert!(image_repository_problem("booking@sha256:00").unwrap().contains("tag or digest"));
        assert!(image_repository_problem("book ing").unwrap().contains("' '"));
    }

    #[test]
    fn quantities_are_read_like_kubernetes() {
        for ok in ["100m", "0.5", "1", "256Mi", "1Gi", "1e3", "2E+2"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "10 Mi", "1Q", "1e", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
