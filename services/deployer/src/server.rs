//! Wiring of the deployer process: database (or a throwaway cluster), delivery config, the
//! backend (local or Kubernetes), restore of the stored desired states, gRPC and admin servers,
//! shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use hopngo_delivery::DeliveryConfig;
use hopngo_kit::{
    admin::{self, Metrics},
    args::{ListenArgs, TelemetryArgs},
    auth::{Security, SecurityArgs},
    pg::DatabaseArgs,
    server::{Bound, GrpcServer},
};
use hopngo_proto::deployer::deployer_service_server::DeployerServiceServer;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::Backend,
    grpc::Deployer,
    kubernetes::KubeBackend,
    leader::{Election, LeaderArgs},
    local::LocalBackend,
    proxy::ProxyMetrics,
    store::Store,
};

/// Deployer settings; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-deployer",
    version,
    about = "HopNGo deployer: converges desired state per service and environment (local backend: processes + weighted proxy; kubernetes backend: Deployments, Services, HTTPRoutes)",
    after_help = "`hopngo-deployer render --help`: print what a release would write to the cluster, without writing it.",
    mut_arg("listen", |a| a.default_value("127.0.0.1:50052").env("HOPNGO_DEPLOYER_LISTEN")),
    mut_arg("admin_listen", |a| a.default_value("127.0.0.1:9465").env("HOPNGO_DEPLOYER_ADMIN_LISTEN"))
)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The database (desired states are kept in schema `deployer`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The delivery config: how each service runs (`services[].local`, `services[].kubernetes`).
    #[arg(long, env = "HOPNGO_DELIVERY_CONFIG")]
    pub delivery_config: PathBuf,
    /// Where services run: child processes behind a weighted proxy, or a Kubernetes cluster.
    #[arg(long, env = "HOPNGO_DEPLOYER_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Kubeconfig of the cluster (kubernetes backend; default: `KUBECONFIG`, `~/.kube/config`,
    /// then the in-cluster service account).
    #[arg(long, env = "HOPNGO_DEPLOYER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Directory for replica logs.
    #[arg(long, env = "HOPNGO_DEPLOYER_LOG_DIR", default_value = ".hopngo/logs")]
    pub log_dir: PathBuf,
    /// Give proxies known ports: the i-th service of the config in its j-th environment listens
    /// on BASE + i × environments + j (default: any free port).
    #[arg(long, env = "HOPNGO_DEPLOYER_PROXY_PORT_BASE")]
    pub proxy_port_base: Option<u16>,
    /// Leader election among replicas.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// `hopngo-deployer render`: what a release would write to the cluster, without writing.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "hopngo-deployer render",
    version,
    about = "Print the objects a release would write to the cluster (YAML, server-side apply bodies or the Rollout's patch), without writing them; unchanged objects are listed as comments"
)]
pub struct RenderArgs {
    /// The delivery config.
    #[arg(long, env = "HOPNGO_DELIVERY_CONFIG")]
    pub delivery_config: PathBuf,
    /// Kubeconfig of the cluster (default: `KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[arg(long, env = "HOPNGO_DEPLOYER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Service.
    pub service: String,
    /// Environment.
    #[arg(long = "env", env = "HOPNGO_ENVIRONMENT")]
    pub environment: String,
    /// The artifact to release (image tag or sha256 digest).
    #[arg(long, env = "HOPNGO_ARTIFACT")]
    pub artifact: String,
    /// Canary weight (0: the artifact straight to stable; blue/green: on preview).
    #[arg(long, env = "HOPNGO_WEIGHT", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub weight: u32,
    /// Replicas of each track.
    #[arg(long, env = "HOPNGO_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub replicas: u32,
}

/// Prints what releasing `args.artifact` would write, next to what the cluster runs now.
pub async fn render(args: RenderArgs) -> anyhow::Result<()> {
    let RenderArgs { delivery_config, kubeconfig, service, environment, artifact, weight, replicas } = args;
    let config = load_config(&delivery_config)?;
    if let Some(reason) = hopngo_delivery::kubernetes::image_artifact_problem(&artifact) {
        anyhow::bail!("--artifact: {reason}");
    }
    let stop = CancellationToken::new();
    let backend = KubeBackend::connect(config, kubeconfig, &prometheus::Registry::new(), stop.clone()).await?;
    let rendered = backend
        .release_target(&service, &environment, &artifact, weight, replicas)
        .and_then(|target| backend.render(&target));
    stop.cancel();
    print!("{}", rendered?);
    Ok(())
}

fn load_config(path: &std::path::Path) -> anyhow::Result<DeliveryConfig> {
    let yaml = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    DeliveryConfig::load(&yaml).map_err(|problems| {
        let first = problems.first().map(|p| p.to_string()).unwrap_or_default();
        anyhow::anyhow!("{}: {first}", path.display())
    })
}

/// Where services run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Child processes and a weighted proxy per service and environment.
    Local,
    /// Deployments, Services and HTTPRoutes in a Kubernetes cluster.
    Kubernetes,
}

/// Runs the deployer until `shutdown`. It serves at once, on standby (prints
/// `hopngo-deployer standby grpc=ADDR admin=ADDR`), until it leads; then it converges the stored
/// desired states, serves the API, prints `hopngo-deployer listening grpc=ADDR admin=ADDR` and
/// sends the gRPC address to `ready`. A leader that loses its lock or Lease stops (an error: the
/// process exits, and its supervisor starts it again as a standby).
pub async fn run(args: Args, shutdown: CancellationToken, ready: Option<oneshot::Sender<Bound>>) -> anyhow::Result<()> {
    let Args {
        listen,
        telemetry: _,
        security,
        database,
        delivery_config,
        backend,
        kubeconfig,
        log_dir,
        proxy_port_base,
        leader,
    } = args;
    leader.check().map_err(anyhow::Error::msg)?;
    let security = security.load().map_err(anyhow::Error::msg)?;
    let config = load_config(&delivery_config)?;
    let (url, cluster) = database.resolve().await?;
    let store = Store::connect(&url, 8).await.context("connecting to the database")?;

    let metrics = Metrics::new();
    let backend_stop = CancellationToken::new();
    let replica = Replica::new(listen, security, metrics.clone(), leader, shutdown, ready)?;
    let served = match backend {
        BackendKind::Local => {
            let election = Election::Database(store.pool().clone());
            let (stop, stored) = (backend_stop.clone(), store.clone());
            let leading_backend = Arc::new(std::sync::OnceLock::new());
            let admin_routes = crate::replica_metrics::routes(Arc::clone(&leading_backend));
            replica
                .run(election, store.clone(), &backend_stop, admin_routes, || async move {
                    let backend =
                        LocalBackend::new(config, proxy_port_base, log_dir, ProxyMetrics::new(&metrics.registry), stop)?;
                    let _ = leading_backend.set(Arc::clone(&backend));
                    // Converge what was desired before a restart (or before the previous leader
                    // died), on the same proxy addresses.
                    for stored in stored.targets().await? {
                        let t = &stored.target;
                        if let Some(port) = stored.proxy_port
                            && let Err(err) = backend
                                .bind_proxy(&t.service, &t.environment, SocketAddr::from(([127, 0, 0, 1], port)))
                                .await
                        {
                            tracing::warn!(%err, port, service = %t.service, "the previous proxy port is taken; using another");
                        }
                        restore(backend.as_ref(), t).await;
                    }
                    Ok(backend)
                })
                .await
        }
        BackendKind::Kubernetes => {
            let client = crate::kubernetes::client(kubeconfig).await?;
            let namespace = replica.leader.lease_namespace.clone();
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let election = Election::Lease(Box::new(kube::Api::namespaced(client.clone(), &namespace)));
            let (stop, stored, leader, port) =
                (backend_stop.clone(), store.clone(), replica.leader.clone(), replica.listener.local_addr()?.port());
            replica
                .run(election, store.clone(), &backend_stop, axum::Router::new(), || async move {
                    let backend = KubeBackend::with_client(config, client.clone(), &metrics.registry, stop).await?;
                    // Re-read the cluster: what is already in force is not written again.
                    for stored in stored.targets().await? {
                        restore(backend.as_ref(), &stored.target).await;
                    }
                    crate::leader::advertise(&client, &namespace, &leader, port)
                        .await
                        .context("pointing the leader's EndpointSlice at this replica")?;
                    Ok(backend)
                })
                .await
        }
    };
    backend_stop.cancel();
    store.pool().close().await;
    drop(cluster);
    served
}

async fn restore(backend: &impl Backend, t: &crate::backend::Target) {
    if let Err(err) = backend.apply(t).await {
        tracing::warn!(%err, service = %t.service, environment = %t.environment, "stored desired state not applied");
    }
}

/// One deployer process: its server, and its place in the election.
struct Replica {
    listener: tokio::net::TcpListener,
    listen: ListenArgs,
    security: Security,
    metrics: Metrics,
    leader: LeaderArgs,
    leading: prometheus::IntGauge,
    shutdown: CancellationToken,
    ready: Option<oneshot::Sender<Bound>>,
}

impl Replica {
    fn new(
        listen: ListenArgs,
        security: Security,
        metrics: Metrics,
        leader: LeaderArgs,
        shutdown: CancellationToken,
        ready: Option<oneshot::Sender<Bound>>,
    ) -> anyhow::Result<Replica> {
        let listener =
            std::net::TcpListener::bind(listen.listen).with_context(|| format!("binding {}", listen.listen))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let leading = prometheus::IntGauge::new(
            "hopngo_deployer_leader",
            "1 while this replica leads (converges and serves the API), 0 on standby",
        )?;
        metrics.registry.register(Box::new(leading.clone()))?;
        Ok(Replica { listener, listen, security, metrics, leader, leading, shutdown, ready })
    }

    /// Serves on standby, leads once elected (`start` builds the backend and restores the stored
    /// desired states), and ends at shutdown or when leadership is lost.
    async fn run<B, F, Fut>(
        self,
        election: Election,
        store: Store,
        backend_stop: &CancellationToken,
        admin_routes: axum::Router,
        start: F,
    ) -> anyhow::Result<()>
    where
        B: Backend + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Arc<B>>>,
    {
        let Replica { listener, listen, security, metrics, leader, leading, shutdown, ready } = self;
        let grpc_addr = listener.local_addr()?;
        let admin_addr = match listen.admin_addr()? {
            Some(addr) => Some(admin::spawn_with(addr, metrics.clone(), admin_routes, backend_stop.clone()).await?),
            None => None,
        };
        let addresses =
            format!("grpc={grpc_addr} admin={}", admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()));
        println!("hopngo-deployer standby {addresses} identity={}", leader.identity());
        let (deployer, cell) = Deployer::<B>::standby(store);
        let (gate, gated) = tokio::sync::watch::channel(false);
        let server = GrpcServer::for_listen(&listen)
            .secure(&security)
            .serving_when(gated)
            .add_service(DeployerServiceServer::new(deployer))
            .serve(listener, metrics, shutdown.clone());
        let lead = async {
            let Some(leadership) = election.lead(&leader, &shutdown).await else { return Ok(None) };
            let backend = match start().await {
                Ok(backend) => backend,
                Err(err) => {
                    leadership.release().await;
                    shutdown.cancel();
                    return Err(err);
                }
            };
            let _ = cell.set(Arc::clone(&backend));
            let _ = gate.send(true);
            leading.set(1);
            println!("hopngo-deployer listening {addresses}");
            if let Some(ready) = ready {
                let _ = ready.send(Bound { grpc: grpc_addr, admin: admin_addr });
            }
            let lost = tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = leadership.lost().cancelled() => true,
            };
            if lost {
                // Whoever leads now converges; this replica stops serving and ends.
                let _ = gate.send(false);
                leading.set(0);
                shutdown.cancel();
            }
            Ok(Some((backend, leadership, lost)))
        };
        let (served, led) = tokio::join!(server, lead);
        let led = led?;
        if let Some((backend, leadership, lost)) = led {
            // Replicas stop before the lock is given up, so the next leader finds the proxy ports free.
            backend.stop().await;
            leadership.release().await;
            if lost {
                anyhow::bail!("lost leadership: another deployer replica may be converging");
            }
        }
        served
    }
}
