//! Which deployer replica converges. One leads; the others stand by (health SERVING, the
//! DeployerService NOT_SERVING and answering UNAVAILABLE) until it is gone, then one of them
//! takes over and re-reads the stored desired states. Two replicas converging at once would fight
//! over the same Deployments (or, locally, the same proxy ports).
//!
//! Locally the leader holds a PostgreSQL session lock: freed the moment the leader's connection
//! ends, so a killed leader is replaced within one retry period. On Kubernetes it holds a
//! `coordination.k8s.io/v1` Lease the way client-go's leader election does: renewed every retry
//! period, given up when it cannot be renewed for two thirds of its duration, and taken by a
//! standby once the record it last saw has not changed for the lease's duration (judged by the
//! standby's own clock, never by the timestamps another machine wrote).

use std::time::{Duration, Instant};

use hopngo_kit::db::SessionLock;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The deployer's session lock (distinct from the scheduler's outbox and the notifier's webhook
/// locks, which may share the database).
const DEPLOYER_LOCK: i64 = 7_218_861_937_330;

/// How replicas elect the one that converges.
#[derive(Clone, Debug, clap::Args)]
pub struct LeaderArgs {
    /// This replica's name in the election (default: the host name and process id; on
    /// Kubernetes give it the pod's name).
    #[arg(long = "leader-identity", env = "HOPNGO_DEPLOYER_LEADER_IDENTITY")]
    pub identity: Option<String>,
    /// Namespace of the Lease (kubernetes backend; default: the client's namespace, in a pod
    /// the deployer's own).
    #[arg(long = "leader-lease-namespace", env = "HOPNGO_DEPLOYER_LEADER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the Lease (kubernetes backend).
    #[arg(long = "leader-lease-name", env = "HOPNGO_DEPLOYER_LEADER_LEASE_NAME", default_value = "hopngo-deployer")]
    pub lease_name: String,
    /// Kubernetes: the Service (without a selector) that reaches the leader. While it leads,
    /// this replica points the Service's EndpointSlice `NAME-leader` at itself, as the API
    /// server does for the `kubernetes` Service: standbys stay ready (rolling updates and
    /// disruption budgets work) and no call reaches them.
    #[arg(long = "leader-service", env = "HOPNGO_DEPLOYER_LEADER_SERVICE", requires = "address")]
    pub service: Option<String>,
    /// This replica's address for that EndpointSlice (in a pod: `status.podIP`).
    #[arg(long = "leader-address", env = "HOPNGO_DEPLOYER_LEADER_ADDRESS")]
    pub address: Option<std::net::IpAddr>,
    /// How long a Lease lasts unrenewed: a standby takes over this long after the last change
    /// of the Lease it saw. The leader steps down when it could not renew for two thirds of it.
    #[arg(long = "leader-lease-duration", env = "HOPNGO_DEPLOYER_LEADER_LEASE_DURATION", default_value = "15s", value_parser = hopngo_kit::args::parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews its Lease (or checks its database lock) and a standby tries
    /// to take over.
    #[arg(long = "leader-retry-period", env = "HOPNGO_DEPLOYER_LEADER_RETRY_PERIOD", default_value = "2s", value_parser = hopngo_kit::args::parse_duration)]
    pub retry_period: Duration,
}

impl LeaderArgs {
    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
            format!("{host}-{}", std::process::id())
        })
    }

    /// How long the leader may fail to renew before it steps down.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// Refuses timings with which a healthy leader could lose its Lease.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err("--leader-lease-duration: must be at least 1s (Leases count whole seconds)".into());
        }
        if self.retry_period.is_zero() || self.retry_period * 2 > self.renew_deadline() {
            return Err(format!(
                "--leader-retry-period: {:?} leaves less than two renewals within two thirds of --leader-lease-duration ({:?})",
                self.retry_period, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// Points the EndpointSlice of `args.service` (when set) at this replica, listening on `port`:
/// one forced server-side apply, so the new leader's slice replaces the old one's.
pub async fn advertise(
    client: &kube::Client,
    namespace: &str,
    args: &LeaderArgs,
    port: u16,
) -> Result<(), kube::Error> {
    let (Some(service), Some(address)) = (&args.service, args.address) else { return Ok(()) };
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let name = format!("{service}-leader");
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": MANAGER,
            },
        },
        "addressType": if address.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{
            "addresses": [address.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": args.identity()},
        }],
        "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
    });
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&slice)).await?;
    tracing::info!(%address, port, endpoint_slice = %name, "the leader's address advertised");
    Ok(())
}

/// The field manager of what the deployer writes.
const MANAGER: &str = "hopngo-deployer";

/// What the leader holds.
pub enum Election {
    /// A PostgreSQL session lock on the deployer's database.
    Database(PgPool),
    /// A Lease in the cluster.
    Lease(Box<Api<Lease>>),
}

/// This replica leads until [`Leadership::lost`] is cancelled or it releases.
pub struct Leadership {
    lost: CancellationToken,
    release: CancellationToken,
    keeper: JoinHandle<()>,
}

impl Leadership {
    /// Cancelled when this replica may no longer lead (another may have taken over).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Gives leadership up at once (a standby takes over without waiting for the lease).
    pub async fn release(self) {
        self.release.cancel();
        let _ = self.keeper.await;
    }
}

impl Election {
    /// Waits until this replica leads; `None` when `stop` comes first.
    pub async fn lead(self, args: &LeaderArgs, stop: &CancellationToken) -> Option<Leadership> {
        let identity = args.identity();
        let (lost, release) = (CancellationToken::new(), CancellationToken::new());
        let keeper = match self {
            Election::Database(pool) => {
                let lock = loop {
                    match SessionLock::try_take(&pool, DEPLOYER_LOCK).await {
                        Ok(Some(lock)) => break lock,
                        Ok(None) => {}
                        Err(err) => tracing::warn!(%err, "leader election: the database lock cannot be tried"),
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(args.retry_period) => {}
                    }
                };
                tracing::info!(%identity, "leading (database lock)");
                tokio::spawn(keep_lock(lock, args.clone(), lost.clone(), release.clone()))
            }
            Election::Lease(api) => {
                let mut lease = LeaseHolder::new(*api, args, identity.clone());
                loop {
                    match lease.try_acquire_or_renew().await {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(%err, lease = %args.lease_name, "leader election: the Lease cannot be read or written")
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(args.retry_period) => {}
                    }
                }
                tracing::info!(%identity, lease = %args.lease_name, "leading (Lease)");
                tokio::spawn(keep_lease(lease, args.clone(), lost.clone(), release.clone()))
            }
        };
        Some(Leadership { lost, release, keeper })
    }
}

async fn keep_lock(mut lock: SessionLock, args: LeaderArgs, lost: CancellationToken, release: CancellationToken) {
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            _ = tokio::time::sleep(args.retry_period) => {}
        }
        match tokio::time::timeout(args.renew_deadline(), lock.check()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(%err, "leader election: the database lock's connection failed");
                lost.cancel();
                return;
            }
            Err(_) => {
                tracing::error!("leader election: the database lock's connection stopped answering");
                lost.cancel();
                return;
            }
        }
    }
    lock.release().await;
}

async fn keep_lease(mut lease: LeaseHolder, args: LeaderArgs, lost: CancellationToken, release: CancellationToken) {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = release.cancelled() => break,
            _ = tokio::time::sleep(args.retry_period) => {}
        }
        let left = args.renew_deadline().saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, lease.try_acquire_or_renew()).await {
            Ok(Ok(true)) => renewed = Instant::now(),
            Ok(Ok(false)) => {
                tracing::error!(lease = %args.lease_name, "leader election: another replica holds the Lease");
                lost.cancel();
                return;
            }
            Ok(Err(err)) if renewed.elapsed() < args.renew_deadline() => {
                tracing::warn!(%err, "leader election: the Lease was not renewed; trying again");
            }
            Ok(Err(_)) | Err(_) => {
                tracing::error!(lease = %args.lease_name, "leader election: the Lease could not be renewed in time");
                lost.cancel();
                return;
            }
        }
    }
    lease.release().await;
}

/// One replica's view of the Lease.
struct LeaseHolder {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease's resourceVersion as last seen, and when it was first seen (this clock).
    observed: Option<(String, Instant)>,
}

impl LeaseHolder {
    fn new(api: Api<Lease>, args: &LeaderArgs, identity: String) -> LeaseHolder {
        LeaseHolder { api, name: args.lease_name.clone(), identity, duration: args.lease_duration, observed: None }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn observe(&mut self, version: Option<String>) {
        let version = version.unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != version) {
            self.observed = Some((version, Instant::now()));
        }
    }

    /// Takes the Lease when it is free or expired, renews it when held; false when another
    /// replica holds it (or won the race to write it).
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.metadata.resource_version);
                    Ok(true)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        self.observe(lease.metadata.resource_version.clone());
        let current = lease.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.identity.as_str());
        let duration = Duration::from_secs(current.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let expired = holder.is_none() || self.observed.as_ref().is_none_or(|(_, since)| since.elapsed() >= duration);
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0);
        lease.spec = Some(if mine {
            self.spec(current.acquire_time, transitions)
        } else {
            self.spec(None, transitions.saturating_add(1))
        });
        // The resourceVersion read makes the write conditional: two standbys cannot both win.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(written.metadata.resource_version);
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Marks the Lease free (no holder, one second left), as client-go does on release, so a
    /// standby need not wait out the duration.
    async fn release(self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        if let Err(err) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
            tracing::warn!(%err, "leader election: the Lease was not released; standbys wait for it to expire");
        }
    }
}
