//! The control plane's Kubernetes manifests (`deploy/control-plane`): both overlays render with
//! `kubectl kustomize`, every object is valid for Kubernetes 1.33 (kubernetes-validate, strict),
//! and everything they name exists: images are the Dockerfile's stages at the workspace's
//! version, every environment variable is read by the service's binary, every ConfigMap key is
//! generated, Secrets are only referenced (and listed in the README), probes reach the plain-text
//! health port and name services the binaries serve. The delivery config they carry loads and
//! is HopNGo's (deploy/hopngo/delivery.yaml) but for where things run; booking's migrations are
//! all there; the deployer's rights stop at the configured namespaces; only the scheduler reaches
//! the internal services.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use hopngo_e2e::binary;
use serde_json::Value;

const SERVICES: [&str; 5] = ["scheduler", "deployer", "analyzer", "migrator", "notifier"];

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `kubectl kustomize deploy/control-plane/overlays/OVERLAY`, as objects.
fn render(overlay: &str) -> Vec<Value> {
    let dir = root().join("deploy/control-plane/overlays").join(overlay);
    let output = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl runs (scripts/test.sh installs it)");
    assert!(output.status.success(), "{overlay}: {}", String::from_utf8_lossy(&output.stderr));
    serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap()).expect("kustomize prints YAML")
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is rendered"))
}

/// The ConfigMap generated as `prefix` (its name carries a content hash).
fn config_map<'a>(objects: &'a [Value], prefix: &str) -> &'a Value {
    let found: Vec<&Value> = of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["name"].as_str().unwrap().strip_prefix(prefix).is_some_and(|r| r.starts_with('-')))
        .collect();
    assert_eq!(found.len(), 1, "one ConfigMap {prefix}");
    found[0]
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("a string: {value}"))
}

/// The environment variables a binary reads (`[env: NAME=...]` in its `--help`).
fn env_of(service: &str) -> BTreeSet<String> {
    let bin = binary(&format!("hopngo-{service}"), &format!("hopngo-{service}")).unwrap();
    let help = std::process::Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().to_string()).collect()
}

/// The workspace's version (the images' tag).
fn workspace_version() -> String {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let package = manifest.split("[workspace.package]").nth(1).unwrap();
    let line = package.lines().find(|l| l.trim_start().starts_with("version")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// HopNGo's delivery config without what differs between backends: where services run, the
/// environments' cluster settings, the hosts the analyzer may reach, the migrations' path.
fn portable(config: &str) -> Value {
    let mut value: Value = serde_saphyr::from_str(config).unwrap();
    value.as_object_mut().unwrap().remove("providers");
    for environment in value["environments"].as_array_mut().unwrap() {
        environment.as_object_mut().unwrap().remove("kubernetes");
    }
    for service in value["services"].as_array_mut().unwrap() {
        let service = service.as_object_mut().unwrap();
        service.remove("local");
        service.remove("kubernetes");
        if let Some(migrations) = service.get_mut("migrations").and_then(Value::as_object_mut) {
            migrations.remove("locations");
        }
    }
    value
}

#[test]
fn both_overlays_render_valid_objects_that_reference_only_what_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let version = workspace_version();
    let served: BTreeSet<&str> = hopngo_kit::authz::RPC_PERMISSIONS
        .iter()
        .map(|(path, _)| path.trim_start_matches('/').split('/').next().unwrap())
        .chain(["grpc.health.v1.Health"])
        .collect();
    for overlay in ["staging", "production"] {
        let objects = render(overlay);
        hopngo_testkit::python::validate_objects(&objects)
            .unwrap_or_else(|report| panic!("{overlay}: objects the API server would refuse:\n{report}"));

        let config_maps: BTreeMap<&str, &Value> =
            of_kind(&objects, "ConfigMap").into_iter().map(|c| (text(&c["metadata"]["name"]), &c["data"])).collect();
        let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let deployments = of_kind(&objects, "Deployment");
        assert_eq!(deployments.len(), 5, "{overlay}: one Deployment per service");
        for service in SERVICES {
            let name = format!("hopngo-{service}");
            let deployment = named(&objects, "Deployment", &name);
            let at = format!("{overlay}: {name}");
            let expected_replicas = if service == "scheduler" { 3 } else { 2 };
            assert_eq!(deployment["spec"]["replicas"], expected_replicas, "{at}");
            let pod = &deployment["spec"]["template"]["spec"];
            assert_eq!(pod["serviceAccountName"], name.as_str(), "{at}");
            assert_eq!(
                pod["automountServiceAccountToken"],
                service == "deployer",
                "{at}: only the deployer has a token"
            );
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{at}");
            let spread: Vec<&str> =
                pod["topologySpreadConstraints"].as_array().unwrap().iter().map(|c| text(&c["topologyKey"])).collect();
            assert_eq!(spread, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"], "{at}");
            if overlay == "production" {
                assert!(
                    pod["topologySpreadConstraints"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|c| c["whenUnsatisfiable"] == "DoNotSchedule"),
                    "{at}"
                );
            }
            let containers = pod["containers"].as_array().unwrap();
            assert_eq!(containers.len(), 1, "{at}");
            let container = &containers[0];

            // The image is the Dockerfile's stage for this service, tagged with the workspace version.
            assert_eq!(container["image"], format!("registry.example/hopngo/{service}:{version}").as_str(), "{at}");
            assert!(dockerfile.contains(&format!(" AS {service}\n")), "{at}: the Dockerfile has a stage {service}");
            let security = &container["securityContext"];
            assert_eq!(
                (
                    &security["readOnlyRootFilesystem"],
                    &security["allowPrivilegeEscalation"],
                    &security["capabilities"]["drop"]
                ),
                (&Value::Bool(true), &Value::Bool(false), &serde_json::json!(["ALL"])),
                "{at}"
            );
            for key in ["requests", "limits"] {
                assert!(container["resources"][key]["memory"].is_string(), "{at}: memory {key}");
            }

            // Every variable is one the binary reads; values are never secrets.
            let known = env_of(service);
            let mut env = BTreeMap::new();
            for var in container["env"].as_array().unwrap() {
                let var_name = text(&var["name"]);
                assert!(known.contains(var_name), "{at}: {var_name} is not read by hopngo-{service}");
                if let Some(value) = var["value"].as_str() {
                    assert!(
                        !value.contains("postgres://") && !value.contains('@'),
                        "{at}: {var_name} inlines a secret"
                    );
                    env.insert(var_name.to_string(), value.to_string());
                }
                let from = &var["valueFrom"];
                if let Some(reference) = from.get("secretKeyRef") {
                    secrets.entry(text(&reference["name"]).into()).or_default().insert(text(&reference["key"]).into());
                }
                if let Some(reference) = from.get("configMapKeyRef") {
                    let data = config_maps[text(&reference["name"])];
                    assert!(data.get(text(&reference["key"])).is_some(), "{at}: {var_name} names a missing key");
                }
            }

            // Volumes: generated ConfigMaps, the service's TLS Secret; mounted where the flags say.
            let mounts: BTreeMap<&str, &str> = container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (text(&m["name"]), text(&m["mountPath"])))
                .collect();
            for volume in pod["volumes"].as_array().unwrap() {
                let volume_name = text(&volume["name"]);
                assert!(mounts.contains_key(volume_name), "{at}: volume {volume_name} is mounted");
                if let Some(map) = volume.get("configMap") {
                    assert!(config_maps.contains_key(text(&map["name"])), "{at}: {volume_name} is generated");
                }
                if let Some(secret) = volume.get("secret") {
                    assert_eq!(secret["secretName"], format!("{name}-tls").as_str(), "{at}");
                    secrets
                        .entry(format!("{name}-tls"))
                        .or_default()
                        .extend(["tls.crt", "tls.key", "ca.crt"].map(String::from));
                }
            }
            for (flag, file) in
                [("HOPNGO_TLS_CERT", "tls.crt"), ("HOPNGO_TLS_KEY", "tls.key"), ("HOPNGO_TLS_CA", "ca.crt")]
            {
                assert_eq!(env[flag], format!("{}/{file}", mounts["tls"]), "{at}");
            }
            for flag in ["HOPNGO_DELIVERY_CONFIG", "HOPNGO_APPLY_CONFIG"] {
                if let Some(path) = env.get(flag) {
                    assert_eq!(path, &format!("{}/delivery.yaml", mounts["config"]), "{at}: {flag}");
                }
            }
            if let Some(path) = env.get("HOPNGO_POLICY") {
                assert_eq!(path, &format!("{}/policy.yaml", mounts["policy"]), "{at}");
            }

            // Probes: gRPC on the plain-text health port, naming services the binary serves.
            let health_port: u64 = env["HOPNGO_HEALTH_LISTEN"].rsplit(':').next().unwrap().parse().unwrap();
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let grpc = &container[probe]["grpc"];
                assert_eq!(grpc["port"], health_port, "{at}: {probe}");
                if let Some(name) = grpc["service"].as_str() {
                    assert!(served.contains(name), "{at}: {probe} names {name}, which nothing serves");
                }
            }
            let ports: BTreeMap<&str, u64> = container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (text(&p["name"]), p["containerPort"].as_u64().unwrap()))
                .collect();
            assert_eq!(ports["health"], health_port, "{at}");

            // A disruption budget and a Service for each.
            let budget = named(&objects, "PodDisruptionBudget", &name);
            assert_eq!(
                budget["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
                "{at}"
            );
            let service_object = named(&objects, "Service", &name);
            let grpc_port = service_object["spec"]["ports"][0]["port"].as_u64().unwrap();
            assert_eq!(grpc_port, ports["grpc"], "{at}: the Service's port is the container's");
            if service == "deployer" {
                assert!(service_object["spec"].get("selector").is_none(), "{at}: the leader writes its endpoints");
                assert_eq!(env["HOPNGO_DEPLOYER_LEADER_SERVICE"], name, "{at}");
            }
        }

        // Secrets: referenced by name, each documented with its keys in the README.
        let expected: BTreeSet<String> = ["hopngo-database", "hopngo-oidc", "hopngo-migration-targets"]
            .into_iter()
            .map(String::from)
            .chain(SERVICES.iter().map(|s| format!("hopngo-{s}-tls")))
            .collect();
        assert_eq!(secrets.keys().cloned().collect::<BTreeSet<_>>(), expected, "{overlay}");
        assert!(of_kind(&objects, "Secret").is_empty(), "{overlay}: no Secret is written in the manifests");
        for (secret, keys) in &secrets {
            let documented =
                secret.ends_with("-tls") && readme.contains("hopngo-SERVICE-tls") || readme.contains(secret.as_str());
            assert!(documented, "{overlay}: the README names the Secret {secret}");
            if !secret.ends_with("-tls") {
                for key in keys {
                    assert!(readme.contains(&format!("`{key}`")), "{overlay}: the README names {secret}'s key {key}");
                }
            }
        }

        // The delivery config: valid, and HopNGo's.
        let delivery = text(&config_map(&objects, "hopngo-delivery-config")["data"]["delivery.yaml"]);
        let config = hopngo_delivery::DeliveryConfig::load(delivery)
            .unwrap_or_else(|problems| panic!("{overlay}: the delivery config: {problems:?}"));
        let local = std::fs::read_to_string(root().join("deploy/hopngo/delivery.yaml")).unwrap();
        assert_eq!(portable(delivery), portable(&local), "{overlay}: the cluster's config is HopNGo's");
        let namespaces: BTreeSet<String> = config
            .environments
            .iter()
            .map(|e| e.kubernetes.as_ref().expect("every environment is on the cluster").namespace.clone())
            .collect();

        // Booking's migrations: every script, mounted where the config's locations say.
        let migrations = &config_map(&objects, "hopngo-booking-migrations")["data"];
        let dir = root().join("deploy/hopngo/migrations/booking");
        let mut scripts = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(text(&migrations[file]), std::fs::read_to_string(&path).unwrap(), "{overlay}: {file}");
            scripts += 1;
        }
        assert_eq!(migrations.as_object().unwrap().len(), scripts, "{overlay}: only booking's scripts");
        let booking = config.services.iter().find(|s| s.name == "booking-service").unwrap();
        let location = &booking.migrations.as_ref().unwrap().locations[0];
        let migrator = &named(&objects, "Deployment", "hopngo-migrator")["spec"]["template"]["spec"]["containers"][0];
        assert!(
            migrator["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == location.as_str()),
            "{overlay}: the migrator mounts {location}"
        );

        // The deployer's rights: the Lease and its EndpointSlice at home, the applications only
        // in the config's namespaces, the Gateway's read only; nobody else has any, nothing is
        // cluster-wide.
        assert!(of_kind(&objects, "ClusterRoleBinding").is_empty(), "{overlay}");
        let bindings = of_kind(&objects, "RoleBinding");
        for binding in &bindings {
            let subjects = binding["subjects"].as_array().unwrap();
            assert!(subjects.iter().all(|s| s["name"] == "hopngo-deployer"), "{overlay}: only the deployer is bound");
        }
        let application_namespaces: BTreeSet<String> = bindings
            .iter()
            .filter(|b| b["roleRef"]["name"] == "hopngo-deployer-applications")
            .map(|b| text(&b["metadata"]["namespace"]).to_string())
            .collect();
        assert_eq!(
            application_namespaces, namespaces,
            "{overlay}: the deployer may act exactly where the config deploys"
        );
        let home = named(&objects, "Role", "hopngo-deployer-leader");
        let kinds: BTreeSet<&str> = home["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap().iter().map(text))
            .collect();
        assert_eq!(kinds, BTreeSet::from(["leases", "endpointslices"]), "{overlay}");

        // Network: nothing but what a policy allows; the internal services only from the scheduler.
        let policies = of_kind(&objects, "NetworkPolicy");
        assert!(
            policies
                .iter()
                .any(|p| p["spec"]["podSelector"] == serde_json::json!({}) && p["spec"].get("ingress").is_none()),
            "{overlay}: default deny"
        );
        let internal = named(&objects, "NetworkPolicy", "hopngo-internal-from-scheduler");
        assert_eq!(
            internal["spec"]["ingress"][0]["from"],
            serde_json::json!([{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "hopngo-scheduler"}}}]),
            "{overlay}"
        );
        let covered: BTreeSet<&str> = internal["spec"]["podSelector"]["matchExpressions"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        assert_eq!(covered, BTreeSet::from(["hopngo-deployer", "hopngo-analyzer", "hopngo-migrator"]), "{overlay}");
        let public = named(&objects, "NetworkPolicy", "hopngo-scheduler-from-gateway");
        assert_eq!(
            public["spec"]["ingress"][0]["ports"],
            serde_json::json!([{"port": "grpc", "protocol": "TCP"}]),
            "{overlay}"
        );
    }
}

#[test]
fn the_overlays_differ_where_they_say() {
    let settings = |objects: &[Value]| config_map(objects, "hopngo-settings")["data"]["log"].clone();
    let staging = render("staging");
    let production = render("production");
    assert!(text(&settings(&staging)).contains("hopngo_scheduler=debug"));
    assert_eq!(settings(&production), "info");
    let memory = |objects: &[Value], name: &str| {
        named(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            .clone()
    };
    assert_eq!(memory(&production, "hopngo-scheduler"), "512Mi");
    assert_eq!(memory(&staging, "hopngo-scheduler"), "256Mi");
}

#[test]
fn the_examples_are_objects_for_namespace_hopngo() {
    let dir = root().join("deploy/control-plane/examples");
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let objects: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for object in objects {
            assert_eq!(object["metadata"]["namespace"], "hopngo", "{}", path.display());
            kinds.insert(format!("{} {}", text(&object["apiVersion"]), text(&object["kind"])));
        }
    }
    assert!(kinds.contains("postgresql.cnpg.io/v1 Cluster"), "{kinds:?}");
    assert!(kinds.contains("cert-manager.io/v1 Certificate"), "{kinds:?}");
}
