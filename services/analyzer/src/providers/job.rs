//! The job provider: runs a command (a smoke test) with a deadline. The value is its exit code;
//! the tail of its output is kept as the measurement's detail. A job still running at its
//! deadline is killed and fails (exit code -1); a job that cannot start is an error.

use std::{process::Stdio, time::Duration};

use tokio::{io::AsyncReadExt as _, process::Command};

use crate::{
    domain::{condition::Value, run::Observation},
    policy::JobRuntime,
};

/// Output kept per job.
const TAIL: usize = 4096;

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim_end().to_string()
}

/// The command line that runs `command` as `runtime` says: as the configured user through
/// `setpriv` (util-linux: new user and group ids, supplementary groups cleared), else as it is.
fn command_line(command: &[String], runtime: &JobRuntime) -> Vec<String> {
    let mut line = Vec::new();
    if let Some(user) = &runtime.user {
        let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
        line.extend(["setpriv", "--reuid", &uid, "--regid", &gid, "--clear-groups", "--"].map(String::from));
    }
    line.extend_from_slice(command);
    line
}

/// Runs the job with only the variables `runtime` passes through from the analyzer's own
/// environment (never its database URL or tokens) plus the job's own.
pub async fn measure(
    command: &[String],
    env: &[(String, String)],
    timeout: Duration,
    runtime: &JobRuntime,
) -> Observation {
    let line = command_line(command, runtime);
    let Some((program, args)) = line.split_first() else {
        return Observation::Error("empty command".into());
    };
    let inherited = runtime.environment.iter().filter_map(|k| std::env::var_os(k).map(|v| (k.clone(), v)));
    let mut child = match Command::new(program)
        .args(args)
        .env_clear()
        .envs(inherited)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout also stops what the command started.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Observation::Error(format!("cannot start {program:?}: {e}")),
    };
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        out.extend_from_slice(&err);
        out
    };
    let waited = tokio::time::timeout(timeout, async {
        let (output, status) = tokio::join!(collect, child.wait());
        (output, status)
    })
    .await;
    match waited {
        Ok((output, Ok(status))) => {
            let code = status.code().map(f64::from).unwrap_or(-1.0);
            let mut detail = tail(&output);
            if status.code().is_none() {
                detail = format!("killed by a signal; {detail}");
            }
            Observation::Value { value: Value::Num(code), detail }
        }
        Ok((_, Err(e))) => Observation::Error(format!("waiting for {program:?}: {e}")),
        Err(_) => {
            // The whole process group: a job's own children go too (and no `kill` program is
            // needed in the image).
            if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Observation::Value {
                value: Value::Num(-1.0),
                detail: format!("still running after {}; killed", hopngo_kit::args::format_duration(timeout)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    async fn measure(command: &[String], env: &[(String, String)], timeout: Duration) -> Observation {
        super::measure(command, env, timeout, &JobRuntime::default()).await
    }

    #[tokio::test]
    async fn the_environment_is_scrubbed() {
        // The test process has variables a job must never see (the analyzer's DATABASE_URL).
        let seen = measure(&sh("env"), &[("EXTRA".into(), "1".into())], Duration::from_secs(5)).await;
        let Observation::Value { detail, .. } = seen else { panic!("{seen:?}") };
        let names: Vec<&str> = detail.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(names.contains(&"EXTRA") && names.contains(&"PATH"), "{names:?}");
        for name in &names {
            assert!(
                ["EXTRA", "PATH", "HOME", "LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_"].contains(name),
                "{name} reached the job: {names:?}"
            );
        }
    }

    #[test]
    fn a_configured_user_runs_the_job_through_setpriv() {
        let runtime = JobRuntime {
            user: Some(crate::policy::JobUser { name: "nobody".into(), uid: 65534, gid: 65534 }),
            ..JobRuntime::default()
        };
        let id = sh("id -u");
        let line = command_line(&id, &runtime);
        assert_eq!(
            line,
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "sh", "-c", "id -u"]
        );
        assert_eq!(command_line(&id, &JobRuntime::default()), ["sh", "-c", "id -u"]);
    }

    #[tokio::test]
    async fn exit_code_output_and_deadline() {
        let ok = measure(&sh("echo smoke ok; echo warn >&2"), &[], Duration::from_secs(5)).await;
        assert_eq!(ok, Observation::Value { value: Value::Num(0.0), detail: "smoke ok\nwarn".into() });
        let failed =
            measure(&sh("echo \"$GREETING\"; exit 3"), &[("GREETING".into(), "hi".into())], Duration::from_secs(5))
                .await;
        assert_eq!(failed, Observation::Value { value: Value::Num(3.0), detail: "hi".into() });
        let started = std::time::Instant::now();
        let slow = measure(&sh("sleep 30"), &[], Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(slow, Observation::Value { value: Value::Num(-1.0), ref detail } if detail.contains("killed"))
        );
        let missing = measure(&["/no/such/program".to_string()], &[], Duration::from_secs(1)).await;
        assert!(matches!(missing, Observation::Error(ref e) if e.contains("cannot start")));
    }
}
