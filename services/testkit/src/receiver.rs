//! A webhook receiver on loopback, over plain HTTP or HTTPS (a self-signed certificate made for
//! it): records every request (headers and body), answers with the status the test sets, and can
//! go down (listener and open connections closed, so callers get "connection refused") and come
//! back on the same port.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path.
    pub path: String,
    /// Headers, names lower case.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    // Statuses to answer, in turn; the last one repeats. Empty answers 200.
    statuses: Vec<u16>,
    // The body to answer with ("status N" when unset).
    body: Option<Bytes>,
}

/// The receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn serve(listener: TcpListener, shared: Arc<Mutex<Shared>>, tls: Option<tokio_rustls::TlsAcceptor>) {
    // Connections live in this set: dropping the task closes them too.
    let mut connections = JoinSet::new();
    while let Ok((socket, _)) = listener.accept().await {
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move {
                    let path = req.uri().path().to_string();
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let (status, answer) = {
                        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                        let status = if s.statuses.len() > 1 {
                            s.statuses.remove(0)
                        } else {
                            s.statuses.first().copied().unwrap_or(200)
                        };
                        s.received.push(Received { path, headers, body, at: std::time::Instant::now() });
                        (status, s.body.clone().unwrap_or_else(|| Bytes::from(format!("status {status}"))))
                    };
                    Ok::<_, std::convert::Infallible>(
                        Response::builder().status(status).body(Full::new(answer)).expect("static response"),
                    )
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(socket).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(socket), service).await;
                }
            }
        });
    }
}

impl Receiver {
    /// A plain-HTTP receiver on a free loopback port, answering 200.
    pub async fn start() -> anyhow::Result<Receiver> {
        Receiver::listen(None).await
    }

    /// An HTTPS receiver with a fresh self-signed certificate for `127.0.0.1` and `localhost`
    /// ([`Receiver::ca_pem`] is what a client must trust).
    pub async fn start_tls() -> anyhow::Result<Receiver> {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let pem = certified.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)?;
        Receiver::listen(Some((tokio_rustls::TlsAcceptor::from(Arc::new(config)), pem))).await
    }

    async fn listen(tls: Option<(tokio_rustls::TlsAcceptor, String)>) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let acceptor = tls.as_ref().map(|(a, _)| a.clone());
        let task = Some(tokio::spawn(serve(listener, Arc::clone(&shared), acceptor)));
        Ok(Receiver { addr, shared, tls, task })
    }

    /// The certificate (PEM) of an HTTPS receiver.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|(_, pem)| pem.as_str())
    }

    /// `http://ADDR/PATH`, or `https://` for an HTTPS receiver.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Answers these statuses to the next requests, in turn (the last one repeats).
    pub fn answer(&self, statuses: &[u16]) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).statuses = statuses.to_vec();
    }

    /// Answers every request with `body` from now on.
    pub fn answer_body(&self, body: &str) {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).body = Some(Bytes::from(body.to_string()));
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).received.clone()
    }

    /// Waits until `done` holds for what was received (at most `within`).
    pub async fn until(&self, within: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("receiver: condition not met within {within:?}; got {} requests", got.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Goes down: the listener and every open connection close.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Comes back on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        let acceptor = self.tls.as_ref().map(|(a, _)| a.clone());
        self.task = Some(tokio::spawn(serve(listener, Arc::clone(&self.shared), acceptor)));
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
