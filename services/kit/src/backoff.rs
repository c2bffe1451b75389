//! Exponential backoff with full jitter, for retrying calls to dependencies.

use std::time::Duration;

use rand::Rng;

/// Delay before retry number `failures` (1 for the first retry): `base * 2^(failures-1)` capped at
/// `max`, then a uniformly random share of it ("full jitter") so replicas don't retry in step.
pub fn delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    let millis = ceiling.as_millis().max(1) as u64;
    // Never less than half the ceiling: a retry storm of near-zero delays helps nobody.
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for _ in 0..100 {
            let first = delay(1, base, max);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let fourth = delay(4, base, max);
            assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
            let late = delay(30, base, max);
            assert!(late >= Duration::from_millis(2500) && late <= max);
        }
    }
}
