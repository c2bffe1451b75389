//! The HopNGo deployer's local backend data plane, so far:
//! - [`demo`]: the demo HTTP service that stands in for HopNGo's services (version, error rate
//!   and latency per version);
//! - [`proxy`]: the weighted reverse proxy in front of a service's tracks, with per-track request
//!   metrics.

pub mod demo;
pub mod proxy;
