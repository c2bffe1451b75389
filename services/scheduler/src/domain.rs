//! Domain logic, free of gRPC and SQL: the delivery config, the plan compiler, releases and their
//! state machine, and the effects the engine needs from other services.

pub use hopngo_delivery as config;
pub mod decision;
pub mod effects;
pub mod events;
pub mod freeze;
pub mod machine;
pub mod plan;
pub mod release;
pub mod steps;
pub mod train;
