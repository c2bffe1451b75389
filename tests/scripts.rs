//! The set-up scripts touch only what they installed: installing Prometheus never stops another
//! Prometheus running on the machine (it used to `pkill -x prometheus`).

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn installing_prometheus_leaves_other_prometheus_processes_alone() {
    let dir = std::env::temp_dir().join(format!("hopngo-scripts-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Someone else's Prometheus: a process of that name.
    let decoy = dir.join("prometheus");
    std::fs::copy("/bin/sleep", &decoy).unwrap();
    let mut other = Command::new(&decoy).arg("60").spawn().unwrap();
    // A package manager that records what it was asked and whether services were forbidden to
    // start (policy-rc.d answering 101) while it ran.
    let policy = dir.join("policy-rc.d");
    let record = dir.join("apt.log");
    write_executable(
        &bin.join("apt-get"),
        &format!(
            "#!/bin/sh\necho \"$*\" >> {log}\nif [ -x {policy} ]; then {policy}; echo \"policy $?\" >> {log}; fi\n",
            log = record.display(),
            policy = policy.display()
        ),
    );
    for tool in ["chmod", "rm", "cmp", "cat"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
    }
    let status = Command::new("/bin/bash")
        .arg("-c")
        .arg(". scripts/lib.sh && ensure_prometheus")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        // No prometheus on this PATH: the install path runs.
        .env("PATH", &bin)
        .env("HOPNGO_POLICY_RC_D", &policy)
        .status()
        .unwrap();
    assert!(status.success());
    let asked = std::fs::read_to_string(&record).unwrap();
    assert!(asked.contains("install -y -qq --no-install-recommends prometheus"), "{asked}");
    assert!(asked.contains("policy 101"), "services were forbidden to start during the install: {asked}");
    assert!(!policy.exists(), "the policy it wrote is removed again");
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.try_wait().unwrap().is_none(), "another Prometheus was stopped");
    other.kill().unwrap();
    let _ = other.wait();
    let _ = std::fs::remove_dir_all(dir);
}
