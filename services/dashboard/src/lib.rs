//! The HopNGo web dashboard: a small web server that shows the control plane to people and lets
//! them act on it with their own credentials.

pub mod api;
pub mod assets;
pub mod error;
pub mod pages;
pub mod server;
pub mod session;
