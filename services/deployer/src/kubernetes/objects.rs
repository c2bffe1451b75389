//! The objects the Kubernetes backend applies for one service in one environment, built without
//! I/O from the delivery config, the desired [`Target`] and what already runs:
//! - one Deployment per track slot (`<service>-stable`/`-canary`, blue/green `-active`/`-preview`),
//!   labelled with the service, the slot and the revision;
//! - Services `<service>` (all traffic), one per track (`<service>-stable`, …);
//! - with a route, the HTTPRoute `<service>`: a header rule pinning `x-hopngo-track: canary` to
//!   the canary, and the weighted rule.
//!
//! Blue/green switches by selector: the Services select a revision, and a Deployment keeps the
//! artifact it runs when the roles swap, so the switch moves no pod.

use std::collections::BTreeMap;

use hopngo_delivery::{
    kubernetes::{EnvironmentKubernetes, HttpProbe, ServiceKubernetes, image_reference},
    routes::{Routes, StringMatch},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            Service, ServicePort, ServiceSpec,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::route::{
    BackendRef, Filter, HeaderMatch, HttpRoute, HttpRouteSpec, Match, MirrorBackend, ParentRef, PathMatch,
    RequestMirror, Rule,
};
use crate::{backend::Target, proxy::Track};

/// The one field manager of every apply.
pub const FIELD_MANAGER: &str = "hopngo-deployer";
/// Header that pins a request to the canary (value `canary`).
pub const TRACK_HEADER: &str = "x-hopngo-track";
/// Label: the service.
pub const LABEL_SERVICE: &str = "hopngo.io/service";
/// Label: the environment (a scrape job copies it onto the pods' series).
pub const LABEL_ENVIRONMENT: &str = "hopngo.io/environment";
/// Label: the track slot of a Deployment's pods.
pub const LABEL_TRACK: &str = "hopngo.io/track";
/// Label: the revision (the artifact as a label value).
pub const LABEL_REVISION: &str = "hopngo.io/revision";
/// Annotation: the artifact, unabridged.
pub const ANNOTATION_ARTIFACT: &str = "hopngo.io/artifact";
/// Label selecting everything the deployer manages.
pub const MANAGED: (&str, &str) = ("app.kubernetes.io/managed-by", FIELD_MANAGER);

/// One service in one environment, as the config describes it.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// Service name.
    pub service: &'a str,
    /// Environment name.
    pub environment_name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// The service's Kubernetes settings.
    pub spec: &'a ServiceKubernetes,
    /// The environment's Kubernetes settings.
    pub environment: &'a EnvironmentKubernetes,
}

/// Which track runs in which Deployment, with how many replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The Deployment's slot (its name suffix and `hopngo.io/track`).
    pub slot: Track,
    /// The role the target gives it.
    pub track: Track,
    /// Artifact.
    pub artifact: String,
    /// Replicas.
    pub replicas: u32,
}

/// The artifact as a label value (at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends);
/// a digest keeps its first 56 hex digits.
pub fn revision_label(artifact: &str) -> String {
    let cleaned: String = artifact
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The replica-ratio fallback (no route): the canary gets `ceil(total × weight / 100)` of the
/// `total` replicas, the stable version the rest.
pub fn replica_split(total: u32, weight: u32) -> (u32, u32) {
    let canary = (total * weight.min(100)).div_ceil(100);
    (total - canary, canary)
}

/// Where each track of `target` runs. Canary model: in its own slot. Blue/green: a Deployment
/// already running a track's artifact keeps it (the switch moves no pod); a new artifact takes
/// its track's slot if free, else the other. `running` maps slots to the artifact they run.
/// Without a route (`routed` false), a canary's replicas come from its weight.
pub fn placements(target: &Target, running: &BTreeMap<Track, String>, routed: bool) -> Vec<Placement> {
    let mut placed: Vec<Placement> = Vec::new();
    let blue_green = target.tracks.iter().any(|t| matches!(t.track, Track::Active | Track::Preview));
    for t in &target.tracks {
        let slot = if blue_green {
            let taken = |slot: Track| placed.iter().any(|p| p.slot == slot);
            let sticky = [Track::Active, Track::Preview]
                .into_iter()
                .find(|slot| !taken(*slot) && running.get(slot) == Some(&t.artifact));
            let free = |slot: Track| {
                !taken(slot)
                    && !target
                        .tracks
                        .iter()
                        .any(|o| running.get(&slot) == Some(&o.artifact) && o.artifact != t.artifact)
            };
            sticky
                .or_else(|| [t.track, other_slot(t.track)].into_iter().find(|s| free(*s)))
                .or_else(|| [t.track, other_slot(t.track)].into_iter().find(|s| !taken(*s)))
                .unwrap_or(t.track)
        } else {
            t.track
        };
        placed.push(Placement { slot, track: t.track, artifact: t.artifact.clone(), replicas: t.replicas });
    }
    if !routed && let Some(canary) = placed.iter().position(|p| p.track == Track::Canary) {
        let total = placed.iter().find(|p| p.track == Track::Stable).map_or(0, |p| p.replicas);
        let (stable, canary_replicas) = replica_split(total, target.canary_weight);
        placed[canary].replicas = canary_replicas.max(1);
        if let Some(s) = placed.iter_mut().find(|p| p.track == Track::Stable) {
            s.replicas = stable;
        }
    }
    placed
}

fn other_slot(track: Track) -> Track {
    match track {
        Track::Active => Track::Preview,
        Track::Preview => Track::Active,
        other => other,
    }
}

/// Name of a track's Deployment and Service.
pub fn track_name(service: &str, track: Track) -> String {
    format!("{service}-{}", track.as_str())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn meta(w: &Workload<'_>, name: String, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut l = labels(&[
        ("app.kubernetes.io/name", w.service),
        (LABEL_SERVICE, w.service),
        (LABEL_ENVIRONMENT, w.environment_name),
        MANAGED,
    ]);
    l.extend(labels(extra));
    ObjectMeta { name: Some(name), namespace: Some(w.namespace.to_string()), labels: Some(l), ..Default::default() }
}

fn probe(p: &HttpProbe, port: u16) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(p.path.clone()),
            port: IntOrString::Int(port.into()),
            ..Default::default()
        }),
        period_seconds: Some(p.period_seconds.unwrap_or(5)),
        failure_threshold: Some(p.failure_threshold.unwrap_or(3)),
        ..Default::default()
    }
}

fn quantities(q: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!q.is_empty()).then(|| q.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
}

/// A pod's annotations: its artifact, and where Prometheus scrapes it when the service says.
fn pod_annotations(k: &ServiceKubernetes, artifact: &str) -> BTreeMap<String, String> {
    let mut annotations = labels(&[(ANNOTATION_ARTIFACT, artifact)]);
    if let Some(m) = &k.metrics {
        let port = m.port.unwrap_or(k.container_port).to_string();
        annotations.extend(labels(&[
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/path", &m.path),
            ("prometheus.io/port", &port),
        ]));
    }
    annotations
}

/// The Deployment of one placement. `replicas` is left out when another manager (an HPA) owns
/// the count, so its value survives the apply.
pub fn deployment(w: &Workload<'_>, p: &Placement, replicas_owned_elsewhere: bool) -> Deployment {
    let slot = p.slot.as_str();
    let revision = revision_label(&p.artifact);
    let selector = labels(&[(LABEL_SERVICE, w.service), (LABEL_TRACK, slot)]);
    let mut pod_labels = selector.clone();
    pod_labels.extend(labels(&[
        ("app.kubernetes.io/name", w.service),
        (LABEL_ENVIRONMENT, w.environment_name),
        (LABEL_REVISION, &revision),
        MANAGED,
    ]));
    let k = w.spec;
    let readiness = k.readiness_probe.clone().unwrap_or(HttpProbe {
        path: "/healthz".into(),
        period_seconds: None,
        failure_threshold: None,
    });
    let container = Container {
        name: "app".into(),
        image: Some(image_reference(&k.image, &p.artifact)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: k.container_port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: (!k.env.is_empty()).then(|| {
            k.env
                .iter()
                .map(|(n, v)| EnvVar { name: n.clone(), value: Some(v.clone()), ..Default::default() })
                .collect()
        }),
        readiness_probe: Some(probe(&readiness, k.container_port)),
        liveness_probe: k.liveness_probe.as_ref().map(|l| probe(l, k.container_port)),
        resources: (!k.resources.requests.is_empty() || !k.resources.limits.is_empty()).then(|| ResourceRequirements {
            requests: quantities(&k.resources.requests),
            limits: quantities(&k.resources.limits),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut metadata = meta(w, track_name(w.service, p.slot), &[(LABEL_TRACK, slot), (LABEL_REVISION, &revision)]);
    metadata.annotations = Some(labels(&[(ANNOTATION_ARTIFACT, &p.artifact)]));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: (!replicas_owned_elsewhere).then_some(p.replicas as i32),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            // New pods come up before old ones go: a track never loses capacity.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations(k, &p.artifact)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    service_account_name: w.environment.service_account.clone(),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A Service named `name` selecting `selector` (plus the service label).
pub fn service(w: &Workload<'_>, name: String, selector: &[(&str, &str)]) -> Service {
    let mut select = labels(&[(LABEL_SERVICE, w.service)]);
    select.extend(labels(selector));
    Service {
        metadata: meta(w, name, &[]),
        spec: Some(ServiceSpec {
            selector: Some(select),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: w.spec.service_port.into(),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Services of the canary model: `<service>` selects every pod of the service (the
/// replica-ratio split for callers that bypass the route), one per track.
pub fn canary_services(w: &Workload<'_>) -> Vec<Service> {
    let mut services = vec![service(w, w.service.to_string(), &[])];
    for track in [Track::Stable, Track::Canary, Track::Baseline] {
        services.push(service(w, track_name(w.service, track), &[(LABEL_TRACK, track.as_str())]));
    }
    services
}

/// The Services of blue/green: `<service>` and `<service>-active` select the active revision,
/// `<service>-preview` the preview's (none: the active's).
pub fn blue_green_services(w: &Workload<'_>, active: &str, preview: Option<&str>) -> Vec<Service> {
    let active = revision_label(active);
    let preview = preview.map(revision_label).unwrap_or_else(|| active.clone());
    vec![
        service(w, w.service.to_string(), &[(LABEL_REVISION, &active)]),
        service(w, track_name(w.service, Track::Active), &[(LABEL_REVISION, &active)]),
        service(w, track_name(w.service, Track::Preview), &[(LABEL_REVISION, &preview)]),
    ]
}

/// A header match in Gateway API's terms: its matches are exact or regular expressions, so a
/// prefix becomes an anchored expression.
fn gateway_header(name: &str, value: &StringMatch) -> HeaderMatch {
    let (kind, value) = match value {
        StringMatch::Exact(v) => ("Exact", v.clone()),
        StringMatch::Prefix(v) => ("RegularExpression", format!("^{}.*", regex::escape(v))),
        StringMatch::Regex(v) => ("RegularExpression", v.clone()),
    };
    HeaderMatch { kind: kind.into(), name: name.into(), value }
}

fn gateway_path(value: &StringMatch) -> PathMatch {
    let (kind, value) = match value {
        StringMatch::Exact(v) => ("Exact", v),
        StringMatch::Prefix(v) => ("PathPrefix", v),
        StringMatch::Regex(v) => ("RegularExpression", v),
    };
    PathMatch { kind: kind.into(), value: value.clone() }
}

/// The weights of a canary-model route: the canary's share while it is up, and as much again
/// for an experiment's baseline while it is up.
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    /// The canary's share, 0..=100.
    pub canary: u32,
    /// The canary has ready replicas.
    pub canary_up: bool,
    /// An experiment's baseline has ready replicas.
    pub baseline_up: bool,
}

/// The HTTPRoute of a canary-model service with a route, sending the canary its weight (and an
/// experiment's baseline as much); while the canary is up, also every request with
/// `x-hopngo-track: canary` and those `routes`' header routes match, and mirror rules copying
/// their share to the canary. `None` without a route.
pub fn route(w: &Workload<'_>, weights: Weights, routes: &Routes) -> Option<HttpRoute> {
    let canary_up = weights.canary_up;
    let route = w.spec.route.as_ref()?;
    let gateway = w.environment.gateway.as_ref()?;
    let backend = |track: Track, weight: u32| BackendRef {
        group: String::new(),
        kind: "Service".into(),
        name: track_name(w.service, track),
        port: w.spec.service_port.into(),
        weight: weight as i32,
    };
    let path = PathMatch { kind: "PathPrefix".into(), value: route.path_prefix.clone().unwrap_or_else(|| "/".into()) };
    let weight = if canary_up { weights.canary.min(100) } else { 0 };
    let mut weighted = vec![backend(Track::Stable, 100 - weight), backend(Track::Canary, weight)];
    if weights.baseline_up && canary_up {
        let baseline = weight.min(100 - weight);
        weighted[0].weight -= baseline as i32;
        weighted.push(backend(Track::Baseline, baseline));
    }
    let mut rules = Vec::new();
    if canary_up {
        let to_canary = |headers: Vec<HeaderMatch>| Rule {
            matches: vec![Match { path: Some(path.clone()), headers, method: None }],
            backend_refs: vec![backend(Track::Canary, 1)],
            filters: Vec::new(),
        };
        rules.push(to_canary(vec![HeaderMatch {
            kind: "Exact".into(),
            name: TRACK_HEADER.into(),
            value: "canary".into(),
        }]));
        for r in &routes.headers {
            rules.push(to_canary(r.matches.iter().map(|m| gateway_header(&m.header_name, &m.header_value)).collect()));
        }
        for r in &routes.mirrors {
            let matches = r
                .matches
                .iter()
                .map(|m| Match {
                    path: Some(m.path.as_ref().map(gateway_path).unwrap_or_else(|| path.clone())),
                    headers: m.headers.iter().map(|(name, value)| gateway_header(name, value)).collect(),
                    method: m.method.as_ref().map(|m| m.value().to_string()),
                })
                .collect();
            let mirror = RequestMirror {
                backend_ref: MirrorBackend {
                    group: String::new(),
                    kind: "Service".into(),
                    name: track_name(w.service, Track::Canary),
                    port: w.spec.service_port.into(),
                },
                percent: Some(r.percentage as i32),
            };
            rules.push(Rule {
                matches,
                backend_refs: weighted.clone(),
                filters: vec![Filter { kind: "RequestMirror".into(), request_mirror: Some(mirror) }],
            });
        }
    }
    rules.push(Rule {
        matches: vec![Match { path: Some(path), headers: Vec::new(), method: None }],
        backend_refs: weighted,
        filters: Vec::new(),
    });
    let metadata = meta(w, w.service.to_string(), &[]);
    Some(HttpRoute {
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        metadata,
        spec: HttpRouteSpec {
            parent_refs: vec![ParentRef {
                group: "gateway.networking.k8s.io".into(),
                kind: "Gateway".into(),
                name: gateway.name.clone(),
                namespace: gateway.namespace.clone(),
                section_name: gateway.section_name.clone(),
            }],
            hostnames: route.hostnames.clone(),
            rules,
        },
    })
}

/// The canary weight a route sends (its weighted rule's canary backend), if it has one.
pub fn routed_weight(route: &HttpRoute, service: &str) -> Option<u32> {
    let canary = track_name(service, Track::Canary);
    let rule = route
        .spec
        .rules
        .iter()
        .find(|r| r.filters.is_empty() && r.matches.iter().all(|m| m.headers.is_empty() && m.method.is_none()))?;
    let total: i32 = rule.backend_refs.iter().map(|b| b.weight.max(0)).sum();
    let to_canary: i32 = rule.backend_refs.iter().filter(|b| b.name == canary).map(|b| b.weight.max(0)).sum();
    (total > 0).then(|| (to_canary * 100 / total) as u32).or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::TrackSpec;

    fn target(tracks: &[(Track, &str, u32)], weight: u32) -> Target {
        Target {
            service: "booking".into(),
            environment: "staging".into(),
            tracks: tracks
                .iter()
                .map(|(t, a, r)| TrackSpec { track: *t, artifact: a.to_string(), replicas: *r })
                .collect(),
            canary_weight: weight,
            routes: Routes::default(),
        }
    }

    fn config() -> (ServiceKubernetes, EnvironmentKubernetes) {
        let yaml = "image: r.example/hopngo/booking\nroute: {hostnames: [booking.example]}\nresources: {requests: {cpu: 100m}}\nenv: {MODE: fast}\n";
        let spec: ServiceKubernetes = serde_saphyr::from_str(yaml).unwrap();
        let env: EnvironmentKubernetes =
            serde_saphyr::from_str("namespace: hopngo-staging\ngateway: {name: public, namespace: gateways}\n")
                .unwrap();
        (spec, env)
    }

    #[test]
    fn weight_becomes_replicas_without_a_route() {
        assert_eq!(replica_split(4, 25), (3, 1));
        assert_eq!(replica_split(4, 30), (2, 2));
        assert_eq!(replica_split(3, 100), (0, 3));
        assert_eq!(replica_split(10, 0), (10, 0));
        let t = target(&[(Track::Stable, "1.0", 4), (Track::Canary, "1.1", 1)], 50);
        let p = placements(&t, &BTreeMap::new(), false);
        assert_eq!((p[0].replicas, p[1].replicas), (2, 2));
        // With a route the target's counts stand.
        let p = placements(&t, &BTreeMap::new(), true);
        assert_eq!((p[0].replicas, p[1].replicas), (4, 1));
    }

    #[test]
    fn blue_green_keeps_each_artifact_where_it_runs() {
        let before = target(&[(Track::Active, "1.0", 2), (Track::Preview, "1.1", 2)], 0);
        let p = placements(&before, &BTreeMap::from([(Track::Active, "1.0".to_string())]), true);
        assert_eq!((p[0].slot, p[1].slot), (Track::Active, Track::Preview));
        // The switch: 1.1 becomes active but stays in the preview slot; no pod moves.
        let running = BTreeMap::from([(Track::Active, "1.0".to_string()), (Track::Preview, "1.1".to_string())]);
        let switched = target(&[(Track::Active, "1.1", 2), (Track::Preview, "1.0", 2)], 0);
        let p = placements(&switched, &running, true);
        assert_eq!((p[0].slot, p[0].track, p[1].slot), (Track::Preview, Track::Active, Track::Active));
        // The next release's preview takes the free slot, not the one running the active version.
        let next = target(&[(Track::Active, "1.1", 2), (Track::Preview, "1.2", 2)], 0);
        let p = placements(&next, &BTreeMap::from([(Track::Preview, "1.1".to_string())]), true);
        assert_eq!((p[0].slot, p[1].slot), (Track::Preview, Track::Active));
    }

    #[test]
    fn objects_carry_labels_image_and_weights() {
        let (spec, env) = config();
        let w = Workload {
            service: "booking",
            environment_name: "staging",
            namespace: "hopngo-staging",
            spec: &spec,
            environment: &env,
        };
        let p = Placement { slot: Track::Canary, track: Track::Canary, artifact: "1.1".into(), replicas: 2 };
        let d = deployment(&w, &p, false);
        assert_eq!(d.metadata.name.as_deref(), Some("booking-canary"));
        let spec_d = d.spec.as_ref().unwrap();
        assert_eq!(spec_d.replicas, Some(2));
        let pod = spec_d.template.metadata.as_ref().unwrap();
        let labels = pod.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_TRACK], "canary");
        assert_eq!(labels[LABEL_REVISION], "1.1");
        assert_eq!(labels[LABEL_ENVIRONMENT], "staging", "a scrape job copies it onto the pods' series");
        assert!(!pod.annotations.as_ref().unwrap().contains_key("prometheus.io/scrape"), "no metrics declared");
        let with_metrics = ServiceKubernetes {
            metrics: Some(hopngo_delivery::kubernetes::MetricsEndpoint { path: "/stats".into(), port: None }),
            ..spec.clone()
        };
        let d_metrics = deployment(&Workload { spec: &with_metrics, ..w }, &p, false);
        let annotations = d_metrics.spec.unwrap().template.metadata.unwrap().annotations.unwrap();
        let scrape: Vec<&str> = ["prometheus.io/scrape", "prometheus.io/path", "prometheus.io/port"]
            .iter()
            .map(|k| annotations[*k].as_str())
            .collect();
        assert_eq!(scrape, ["true", "/stats", &spec.container_port.to_string()]);
        let c = &spec_d.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("r.example/hopngo/booking:1.1"));
        assert_eq!(deployment(&w, &p, true).spec.unwrap().replicas, None, "an HPA's count is left alone");

        let up = |canary| Weights { canary, canary_up: true, baseline_up: false };
        let r = route(&w, up(25), &Routes::default()).unwrap();
        assert_eq!(r.spec.rules.len(), 2);
        assert_eq!(r.spec.rules[0].matches[0].headers[0].name, TRACK_HEADER);
        let weights: Vec<i32> = r.spec.rules[1].backend_refs.iter().map(|b| b.weight).collect();
        assert_eq!(weights, vec![75, 25]);
        assert_eq!(routed_weight(&r, "booking"), Some(25));

        let routes: Routes = serde_saphyr::from_str(
            "headers:\n  - name: beta\n    match:\n      - {headerName: x-beta, headerValue: {prefix: 'a.b'}}\n      - {headerName: x-region, headerValue: {regex: '^eu-'}}\nmirrors:\n  - name: reads\n    percentage: 30\n    match:\n      - {method: {exact: GET}, path: {prefix: /api}}\n      - headers: {x-shadow: {exact: '1'}}\n",
        )
        .unwrap();
        let r = route(&w, up(10), &routes).unwrap();
        assert_eq!(r.spec.rules.len(), 4, "track header, header route, mirror, weighted");
        let header_rule = &r.spec.rules[1];
        let kinds: Vec<(&str, &str)> =
            header_rule.matches[0].headers.iter().map(|h| (h.kind.as_str(), h.value.as_str())).collect();
        assert_eq!(kinds, [("RegularExpression", "^a\\.b.*"), ("RegularExpression", "^eu-")]);
        assert_eq!(header_rule.backend_refs.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["booking-canary"]);
        let mirror = &r.spec.rules[2];
        assert_eq!(mirror.matches.len(), 2, "one match per block: any of them");
        assert_eq!(mirror.matches[0].method.as_deref(), Some("GET"));
        assert_eq!(mirror.matches[0].path.as_ref().unwrap().value, "/api");
        assert_eq!(mirror.matches[1].path.as_ref().unwrap().value, "/", "no path: the route's prefix");
        let copy = mirror.filters[0].request_mirror.as_ref().unwrap();
        assert_eq!((copy.backend_ref.name.as_str(), copy.percent), ("booking-canary", Some(30)));
        assert_eq!(mirror.backend_refs.iter().map(|b| b.weight).collect::<Vec<_>>(), [90, 10], "answered as weighted");
        assert_eq!(routed_weight(&r, "booking"), Some(10), "the weight is read from the plain rule");
        assert_eq!(
            route(&w, Weights { canary_up: false, ..up(10) }, &routes).unwrap().spec.rules.len(),
            1,
            "no canary up: no routes to it"
        );

        let down = route(&w, Weights { canary_up: false, ..up(25) }, &Routes::default()).unwrap();
        assert_eq!(down.spec.rules.len(), 1, "no header rule to a canary that is not up");
        assert_eq!(routed_weight(&down, "booking"), Some(0));

        // An experiment: the baseline takes as much as the canary, from the stable share, once
        // both are up.
        let experiment = route(&w, Weights { baseline_up: true, ..up(20) }, &Routes::default()).unwrap();
        let split: Vec<(&str, i32)> =
            experiment.spec.rules[1].backend_refs.iter().map(|b| (b.name.as_str(), b.weight)).collect();
        assert_eq!(split, [("booking-stable", 60), ("booking-canary", 20), ("booking-baseline", 20)]);
        assert_eq!(routed_weight(&experiment, "booking"), Some(20));
        let waiting = route(&w, Weights { baseline_up: true, canary_up: false, canary: 20 }, &Routes::default());
        assert_eq!(waiting.unwrap().spec.rules[0].backend_refs.len(), 2, "no baseline traffic before the canary's");
        assert_eq!(revision_label(&format!("sha256:{}", "ab".repeat(32))).len(), 63);
        assert_eq!(revision_label("_1.0_"), "1.0");
    }
}
