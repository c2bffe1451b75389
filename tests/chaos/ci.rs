//! The chaos harness in its CI size: every kind of fault (PostgreSQL fast and immediate restarts,
//! a partition, SIGKILLs) against the five real services, every invariant checked after each
//! round and at the end. A person runs the long form: `hopngo-chaos --kills 200`.

#[test]
fn a_short_chaos_run_keeps_every_invariant() {
    let log_dir = std::env::temp_dir().join(format!("hopngo-chaos-ci-{}", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hopngo-chaos"))
        .args(["--kills", "4", "--max-duration", "8m", "--log-dir"])
        .arg(&log_dir)
        .output()
        .expect("running hopngo-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the chaos run found violations (service logs in {})", log_dir.display());
    assert!(stdout.contains("invariant violations: 0"), "it printed its summary");
    assert!(stdout.contains("left running after the harness: 0"));
    let _ = std::fs::remove_dir_all(&log_dir);
}
