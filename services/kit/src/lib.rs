//! Shared kit for every HopNGo service binary.
//!
//! - [`server`]: gRPC server bootstrap with `grpc.health.v1`, reflection (v1 and v1alpha), per-RPC
//!   metrics and W3C trace-context extraction, and graceful drain on shutdown;
//! - [`admin`]: the Prometheus-text `/metrics`, `/healthz`, `/readyz` endpoint;
//! - [`telemetry`]: tracing (env filter, plain/json) with an OTLP exporter when configured;
//! - [`client`]: lazily connected channels that inject trace context, and call deadlines;
//! - [`auth`]: the one layer that authenticates callers (OIDC JWTs, static tokens, control-plane
//!   certificates), checks the RPC's permission and applies the per-caller limits;
//! - [`authz`]: the RPC → permission table and the access policy (roles per environment and service);
//! - [`identity`]: user and group names as compared and stored;
//! - [`limits`]: per-caller abuse limits (changes per second, open streams);
//! - [`error`]: the one domain-error → `tonic::Status` mapping;
//! - [`http`]: the outbound HTTP/1.1 client (deadline per request, capped response size);
//! - [`follow`]: keyset page tokens and following a versioned record (list and watch RPCs);
//! - [`shutdown`]: SIGTERM / ctrl-c → a cancellation token;
//! - [`reload`]: files read again when they change (certificates, tokens, policy);
//! - [`program`]: finding a program on `PATH` as `execvp` would;
//! - [`tls`]: TLS for the gRPC links (reloaded certificates, the caller's service identity);
//! - [`pg`]: a throwaway PostgreSQL cluster from the system binaries (tests and the embedded stack).

pub mod admin;
pub mod args;
pub mod auth;
pub mod authz;
pub mod backoff;
pub mod client;
pub mod db;
pub mod error;
pub mod follow;
pub mod http;
pub mod identity;
pub mod limits;
pub mod pg;
pub mod program;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use auth::{Caller, Principal};
pub use error::ApiError;
