//! Test support shared by every service's tests and the end-to-end tests:
//! - [`access`]: the tests' credentials (tokens, the test policy, service certificates) and
//!   clients that call with them;
//! - [`config`]: delivery config files for services that read one;
//! - [`db`]: a fresh database per test, on `DATABASE_URL` or on a throwaway cluster started once
//!   per test process;
//! - [`fakes`]: in-test implementations of the deployer, analyzer, migrator and notifier contracts,
//!   served over real gRPC on loopback, that record calls and can be told to fail, hang or be down.
//! - [`hostile`]: property-test inputs for parsers of outside input (a corpus of nasty inputs and
//!   generators around it) and the case count CI runs;
//! - [`measure`]: histograms, peak RSS and CPU time of measured processes (benchmarks);
//! - [`oidc`]: an OIDC issuer (discovery, JWKS, key rotation) minting the tests' tokens;
//! - [`pki`]: a throwaway CA issuing the services' certificates;
//! - [`prometheus`]: a real Prometheus scraping endpoints the test serves, and such endpoints;
//! - [`receiver`]: a webhook receiver that records requests, answers what the test says, and can go
//!   down and come back on the same port;
//! - [`server`]: a service served in the test's process on loopback, stopped through its drain.

pub mod access;
pub mod bench;
pub mod config;
pub mod db;
pub mod fakes;
pub mod hostile;
pub mod kube;
pub mod measure;
pub mod oidc;
pub mod otlp;
pub mod pki;
pub mod prometheus;
pub mod python;
pub mod receiver;
pub mod server;
