//! Compiles `proto/hopngo/**` with protox (no system `protoc`) and writes the encoded descriptor
//! set for gRPC reflection, which the protox path does not write by itself.

use std::{env, fs, path::PathBuf};

use prost::Message;

mod check_gen;

const FILES: &[&str] = &[
    "hopngo/events/v1/event.proto",
    "hopngo/release/v1/release.proto",
    "hopngo/release/v1/release_service.proto",
    "hopngo/config/v1/config_service.proto",
    "hopngo/deployer/v1/deployer_service.proto",
    "hopngo/analyzer/v1/analyzer_service.proto",
    "hopngo/migrator/v1/migrator_service.proto",
    "hopngo/notifier/v1/notifier_service.proto",
    "hopngo/identity/v1/identity_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=hopngo");
    println!("cargo:rerun-if-changed=limits.rs");
    println!("cargo:rerun-if-changed=check_gen.rs");
    let fds = protox::compile(FILES, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("hopngo_descriptor.bin"), fds.encode_to_vec())?;
    fs::write(out.join("checks.rs"), check_gen::generate(&fds))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::check::CheckedCodec")
        .compile_fds(fds)?;
    Ok(())
}
