//! A service served in this process on loopback, the way each service's own tests start it: its
//! `run` on a spawned task, told to report the address it bound, stopped through its shutdown
//! token (so the drain runs as under SIGTERM).

use std::{future::Future, net::SocketAddr, time::Duration};

use hopngo_kit::server::Bound;
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A running in-process server.
pub struct InProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its admin (metrics) listener, if its flags turned one on (`--admin-listen 127.0.0.1:0`).
    pub admin: Option<SocketAddr>,
    /// Cancelling it starts the drain (health NOT_SERVING, streams end, in-flight calls finish).
    pub shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// The flags every in-process server gets: a free loopback port, no admin port, its database,
/// a short drain, the tests' credentials ([`crate::access`]: the test issuer's tokens under the
/// test policy, plain HTTP/2 on loopback). `program` is argv[0]; the service's own flags follow.
pub fn server_args(program: &str, database_url: &str, drain: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        program,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        database_url,
        "--drain-timeout",
        drain,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(crate::access::TestAccess::shared().plain_service_args());
    args
}

/// `argv` with `extra` appended; a `--flag value` pair of `extra` replaces the same flag in `argv`
/// (a test's own setting over the defaults of [`server_args`]).
pub fn with_args(mut argv: Vec<String>, extra: &[String]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        if extra[i].starts_with("--")
            && let Some(at) = argv.iter().position(|a| *a == extra[i])
        {
            let value_follows = argv.get(at + 1).is_some_and(|v| !v.starts_with("--"));
            argv.drain(at..at + if value_follows { 2 } else { 1 });
        }
        i += 1;
    }
    argv.extend(extra.iter().cloned());
    argv
}

impl InProcess {
    /// Spawns `serve(shutdown, ready)` (a service's `run` with its arguments bound) and waits, at
    /// most 30 s, for it to report its address.
    pub async fn start<F>(serve: impl FnOnce(CancellationToken, oneshot::Sender<Bound>) -> F) -> InProcess
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let (ready, addr) = oneshot::channel();
        let handle = tokio::spawn(serve(shutdown.clone(), ready));
        let addr = tokio::time::timeout(Duration::from_secs(30), addr)
            .await
            .expect("the server reports its address within 30 s");
        let bound = match addr {
            Ok(bound) => bound,
            // It ended before serving: show why.
            Err(_) => panic!("the server did not start: {:?}", handle.await),
        };
        InProcess { addr: bound.grpc, admin: bound.admin, shutdown, handle }
    }

    /// `http://addr`, for a client to connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and checks it exited cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.expect("the server task joins").expect("the server exits cleanly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tests_own_flags_replace_the_defaults() {
        let argv: Vec<String> = ["prog", "--rate", "1000", "--quiet", "--listen", "x"].map(String::from).to_vec();
        let extra: Vec<String> = ["--rate", "2", "--quiet", "--new", "v"].map(String::from).to_vec();
        assert_eq!(with_args(argv, &extra), ["prog", "--listen", "x", "--rate", "2", "--quiet", "--new", "v"]);
    }
}
