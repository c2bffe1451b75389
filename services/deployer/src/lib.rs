//! The HopNGo deployer: [`grpc`] serves `DeployerService` over a [`backend::Backend`], either
//! [`kubernetes`] (Deployments, Services and HTTPRoutes it owns, or existing Argo Rollouts it
//! drives) or the local backend:
//! - [`demo`]: the demo HTTP service that stands in for HopNGo's services (version, error rate
//!   and latency per version);
//! - [`proxy`]: the weighted reverse proxy in front of a service's tracks, with per-track request
//!   metrics;
//! - [`supervisor`]: runs replica sets as child processes, probes readiness, restarts crashes;
//! - [`leader`]: which replica converges (a database lock locally, a Lease on Kubernetes);
//! - [`replica_metrics`]: the replicas' own metrics, labelled as Prometheus labels pods, on the
//!   admin endpoint;
//! - [`smoke`]: smoke tests against one track of a service behind its proxy (`hopngo-smoke`).

pub mod backend;
pub mod demo;
pub mod error;
pub mod grpc;
pub mod kubernetes;
pub mod leader;
pub mod local;
pub mod proxy;
pub mod replica_metrics;
pub mod server;
pub mod smoke;
pub mod store;
pub mod supervisor;
pub mod traffic;
