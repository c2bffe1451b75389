//! gRPC contracts of the HopNGo delivery control plane (`proto/hopngo/<domain>/v1`), generated at
//! build time. Modules mirror the proto packages.

/// Encoded `FileDescriptorSet` of every HopNGo proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hopngo_descriptor");

#[allow(clippy::all, missing_docs)]
pub mod hopngo {
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("hopngo.events.v1");
        }
    }
    pub mod release {
        pub mod v1 {
            tonic::include_proto!("hopngo.release.v1");
        }
    }
    pub mod config {
        pub mod v1 {
            tonic::include_proto!("hopngo.config.v1");
        }
    }
    pub mod deployer {
        pub mod v1 {
            tonic::include_proto!("hopngo.deployer.v1");
        }
    }
    pub mod analyzer {
        pub mod v1 {
            tonic::include_proto!("hopngo.analyzer.v1");
        }
    }
    pub mod migrator {
        pub mod v1 {
            tonic::include_proto!("hopngo.migrator.v1");
        }
    }
    pub mod notifier {
        pub mod v1 {
            tonic::include_proto!("hopngo.notifier.v1");
        }
    }
    pub mod identity {
        pub mod v1 {
            tonic::include_proto!("hopngo.identity.v1");
        }
    }
}

pub use hopngo::{
    analyzer::v1 as analyzer, config::v1 as config, deployer::v1 as deployer, events::v1 as events,
    identity::v1 as identity, migrator::v1 as migrator, notifier::v1 as notifier, release::v1 as release,
};

pub mod check;
pub mod event_types;
#[path = "../limits.rs"]
pub mod limits;
pub mod transitions;

include!(concat!(env!("OUT_DIR"), "/checks.rs"));
