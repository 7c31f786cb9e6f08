//! Jittered exponential backoff with a cap: every retry loop in Keel waits through one of these, so
//! nothing spins against a down API server or a dead backend, and a fleet does not retry in lockstep.

use std::time::Duration;

use rand::Rng;

/// Delay grows `base * 2^n` up to `cap`; each delay is drawn from `[d/2, d]` ("equal jitter") so it
/// never collapses towards zero the way full jitter can.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next retry; each call doubles the ceiling until the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns = rand::rng().random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// The upper bound of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Called after a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..40 {
            let ceiling = b.ceiling();
            assert!(ceiling >= last_ceiling);
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            last_ceiling = ceiling;
        }
        assert_eq!(b.ceiling(), Duration::from_secs(7));
    }

    #[test]
    fn reset_starts_again_from_base() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
