//! Exponential backoff with jitter, shared by the strategies and the membership.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: each failure doubles the delay, from `initial` up to `max`, and
/// each delay is spread by ±`jitter` (a fraction, 0.0–1.0) so that many nodes that fail
/// together do not retry together. A success resets it.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// A backoff from `initial` to `max` with ±20 % jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: 0.2,
            failures: 0,
        }
    }

    /// Sets the jitter fraction (clamped to 0.0–1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        if self.jitter == 0.0 {
            return base;
        }
        let f = rng.gen_range((1.0 - self.jitter)..=(1.0 + self.jitter));
        base.mul_f64(f).min(self.max.mul_f64(1.0 + self.jitter))
    }

    /// How many failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures: the next delay is `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter(0.0);
        let d: Vec<u128> = (0..6).map(|_| b.next_delay(&mut rng).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(&mut rng), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            let d = b.next_delay(&mut rng);
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
    }
}
