//! Abuse limits per authenticated caller, applied by the authentication layer: how fast one
//! identity may change things (a token bucket per identity over the RPCs that are not reads), and
//! how many streams (watches, subscriptions) it may hold open at once. The control plane's own
//! calls (the scheduler's certificate) are not limited: throttling them would stall releases.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tonic::body::Body;

/// Identities with a bucket beyond which idle (full) buckets are swept.
const SWEEP_AT: usize = 10_000;

/// How much one caller may do; every flag also reads an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// Changes (RPCs that are not reads) one caller may make per second, on average; 0 for no limit.
    #[arg(long = "mutation-rate", env = "HOPNGO_MUTATION_RATE", default_value_t = DEFAULT_RATE)]
    pub mutation_rate: f64,
    /// Changes one caller may make at once before the rate applies.
    #[arg(long = "mutation-burst", env = "HOPNGO_MUTATION_BURST", default_value_t = DEFAULT_BURST)]
    pub mutation_burst: u32,
    /// Streams (watches, subscriptions) one caller may hold open at once.
    #[arg(long = "max-streams-per-caller", env = "HOPNGO_MAX_STREAMS_PER_CALLER", default_value_t = DEFAULT_STREAMS)]
    pub max_streams: usize,
}

const DEFAULT_RATE: f64 = 10.0;
const DEFAULT_BURST: u32 = 30;
const DEFAULT_STREAMS: usize = 100;

impl Default for LimitArgs {
    fn default() -> Self {
        LimitArgs { mutation_rate: DEFAULT_RATE, mutation_burst: DEFAULT_BURST, max_streams: DEFAULT_STREAMS }
    }
}

impl LimitArgs {
    /// The limits these flags describe.
    pub fn limits(&self) -> Result<Limits, String> {
        if !self.mutation_rate.is_finite() || self.mutation_rate < 0.0 {
            return Err(format!("--mutation-rate {} is not a rate (0 for no limit)", self.mutation_rate));
        }
        if self.mutation_rate > 0.0 && self.mutation_burst == 0 {
            return Err("--mutation-burst must be at least 1".into());
        }
        if self.max_streams == 0 {
            return Err("--max-streams-per-caller must be at least 1".into());
        }
        let rate =
            (self.mutation_rate > 0.0).then(|| RateLimiter::new(self.mutation_rate, f64::from(self.mutation_burst)));
        Ok(Limits { inner: Arc::new(LimitsInner { rate, streams: StreamCounter::new(self.max_streams) }) })
    }
}

/// The limits of one service. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<LimitsInner>,
}

struct LimitsInner {
    rate: Option<RateLimiter>,
    streams: StreamCounter,
}

impl Default for Limits {
    fn default() -> Self {
        LimitArgs::default().limits().expect("the defaults are valid")
    }
}

impl Limits {
    /// Takes one change for `caller`; the refusal says when to retry.
    pub fn take_change(&self, caller: &str) -> Result<(), String> {
        match &self.inner.rate {
            None => Ok(()),
            Some(rate) => rate.take(caller, Instant::now()).map_err(|wait| {
                format!(
                    "{caller} is making changes faster than {}/s (burst {}); retry in {} ms",
                    rate.per_second,
                    rate.burst,
                    wait.as_millis().max(1)
                )
            }),
        }
    }

    /// Opens a stream for `caller`: the guard closes it when dropped.
    pub fn open_stream(&self, caller: &str) -> Result<StreamGuard, String> {
        self.inner.streams.open(caller)
    }
}

/// Token buckets, one per caller.
struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter { per_second, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token from `caller`'s bucket at `now`, or says how long until one is there.
    fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT && !buckets.contains_key(caller) {
            // A bucket that has refilled is the same as none.
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

/// Open streams per caller.
struct StreamCounter {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamCounter {
    fn new(max: usize) -> StreamCounter {
        StreamCounter { max, open: Arc::default() }
    }

    fn open(&self, caller: &str) -> Result<StreamGuard, String> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(caller.to_string()).or_insert(0);
        if *count >= self.max {
            return Err(format!(
                "{caller} already holds {} open streams (--max-streams-per-caller); close one first",
                self.max
            ));
        }
        *count += 1;
        Ok(StreamGuard { caller: caller.to_string(), open: Arc::clone(&self.open) })
    }
}

/// One open stream; closing it (dropping the guard) frees the caller's slot.
#[derive(Debug)]
pub struct StreamGuard {
    caller: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// A response body that holds a stream's slot until the body is finished or dropped.
pub fn hold_while_streaming(body: Body, guard: StreamGuard) -> Body {
    Body::new(Guarded { inner: body, _guard: guard })
}

struct Guarded {
    inner: Body,
    _guard: StreamGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_the_burst_then_the_rate_and_others_are_unaffected() {
        let limiter = RateLimiter::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take("alice", t0).unwrap();
        }
        let wait = limiter.take("alice", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        limiter.take("bob", t0).expect("bob has his own bucket");
        limiter.take("alice", t0 + Duration::from_millis(500)).expect("one token back after 1/rate");
        assert!(limiter.take("alice", t0 + Duration::from_millis(600)).is_err());
        // Refilled, never beyond the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            limiter.take("alice", later).unwrap();
        }
        assert!(limiter.take("alice", later).is_err());
    }

    #[test]
    fn idle_buckets_are_swept_so_many_callers_do_not_grow_memory_forever() {
        let limiter = RateLimiter::new(100.0, 1.0);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            limiter.take(&format!("u{i}"), t0).unwrap();
        }
        limiter.take("late", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1, "refilled buckets were removed");
    }

    #[test]
    fn streams_are_counted_per_caller_until_closed() {
        let counter = StreamCounter::new(2);
        let a = counter.open("alice").unwrap();
        let _b = counter.open("alice").unwrap();
        assert!(counter.open("alice").unwrap_err().contains("2 open streams"));
        let _c = counter.open("bob").expect("bob counts separately");
        drop(a);
        let _d = counter.open("alice").expect("a closed stream frees its slot");
    }

    #[test]
    fn flags_are_checked() {
        let bad = |args: LimitArgs| args.limits().err().unwrap();
        assert!(bad(LimitArgs { mutation_rate: -1.0, ..LimitArgs::default() }).contains("--mutation-rate"));
        assert!(bad(LimitArgs { mutation_rate: f64::NAN, ..LimitArgs::default() }).contains("--mutation-rate"));
        assert!(bad(LimitArgs { mutation_burst: 0, ..LimitArgs::default() }).contains("--mutation-burst"));
        assert!(bad(LimitArgs { max_streams: 0, ..LimitArgs::default() }).contains("--max-streams"));
        assert!(LimitArgs { mutation_rate: 0.0, mutation_burst: 0, ..LimitArgs::default() }.limits().is_ok());
    }
}
