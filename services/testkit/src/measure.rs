//! What benchmarks read from the processes they measure: Prometheus histograms from an admin
//! endpoint, peak RSS and CPU time from `/proc`.

/// Cumulative buckets `(le, count)` of histogram `name` in a Prometheus text page.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which fraction `q` of the observations made between two scrapes lie,
/// and how many observations that was.
pub fn quantile_upper_bound(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let counts: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map(|(_, c)| *c).unwrap_or(0.0)))
        .collect();
    let total = counts.last().map(|(_, c)| *c).unwrap_or(0.0);
    let target = total * q;
    let bound = counts.iter().find(|(_, c)| *c >= target).map(|(le, _)| *le).unwrap_or(f64::INFINITY);
    (bound, total)
}

/// A `/proc/PID/status` value in kB (`VmHWM:` is the peak RSS).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) used by process `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The value of the sample written exactly `series` (name and labels as exposed) in a scrape.
pub fn sample(scraped: &str, series: &str) -> Option<f64> {
    scraped.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback address with a port nobody listens on now (for a server's admin listener).
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("bound").to_string()
}

/// The text of `http://ADMIN/metrics`.
pub async fn scrape(admin: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
