//! Transient failures (Redis or the broker unreachable): capped, jittered
//! exponential backoff, and a [`Stall`] that says so once per state change,
//! not once per retry.

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Delays between retries: 50 ms doubling up to `max`, with jitter, forever.
#[derive(Debug)]
pub struct Backoff {
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Backoff capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            delays: Self::build(max),
        }
    }

    fn build(max: Duration) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(max.max(Duration::from_millis(50)))
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// After a success: the next failure starts from the shortest delay.
    pub fn reset(&mut self) {
        self.delays = Self::build(self.max);
    }
}

/// Retries `f` until it succeeds, logging the first failure and the
/// recovery (one line each, not one per retry).
pub async fn until_ok<T, E, Fut>(what: &str, max: Duration, mut f: impl FnMut() -> Fut) -> T
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(max);
    let mut failing = false;
    loop {
        match f().await {
            Ok(v) => {
                if failing {
                    tracing::info!("{what}: recovered");
                }
                return v;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "{what} failed; retrying with backoff");
                    failing = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Whether something is stalled and why, logging each change once.
#[derive(Debug, Default)]
pub struct Stall {
    reason: Option<String>,
    failures: u64,
}

impl Stall {
    /// Records a failure; returns whether this started a stall (or changed
    /// its reason), i.e. whether the caller should log it.
    pub fn failed(&mut self, reason: &str) -> bool {
        self.failures += 1;
        if self.reason.as_deref() == Some(reason) {
            return false;
        }
        self.reason = Some(reason.to_owned());
        true
    }

    /// Records a success; returns the number of failures if this ended a
    /// stall.
    pub fn recovered(&mut self) -> Option<u64> {
        self.reason.take()?;
        Some(std::mem::take(&mut self.failures))
    }

    /// The current stall reason.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(400));
        let d: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(d.iter().all(|d| *d <= Duration::from_millis(800)), "{d:?}");
        assert!(
            d.iter().skip(10).all(|d| *d >= Duration::from_millis(400)),
            "{d:?}"
        );
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(200));
    }

    #[test]
    fn a_stall_is_reported_once_per_change() {
        let mut s = Stall::default();
        assert!(s.failed("redis"));
        assert!(!s.failed("redis"));
        assert!(s.failed("dead-letter topic"));
        assert_eq!(s.reason(), Some("dead-letter topic"));
        assert_eq!(s.recovered(), Some(3));
        assert_eq!(s.recovered(), None);
    }
}
