//! The retry schedule: a pure function of the attempts made and the time.

use std::time::Duration;

/// How deferred messages are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failed attempt; doubled after each further failure.
    pub first: Duration,
    /// The wait never grows beyond this.
    pub max_interval: Duration,
    /// After this long since receipt the message is returned to the sender (DSN).
    pub max_lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(60),
            max_interval: Duration::from_secs(60 * 60),
            max_lifetime: Duration::from_secs(5 * 24 * 60 * 60),
        }
    }
}

/// When to try next (unix seconds), given `attempts` already made; `None` once the
/// message has outlived `max_lifetime` (send a DSN).
///
/// With no attempt made yet the answer is `now`. After `n` failures the wait is
/// `first * 2^(n-1)`, capped at `max_interval` and at least one second (a zero policy
/// must not spin). The last retry is pulled in to the expiry time, so a message always
/// gets one attempt at the end of its lifetime before it is returned.
pub fn next_attempt(
    policy: &RetryPolicy,
    attempts: u32,
    received_at: u64,
    now: u64,
) -> Option<u64> {
    let expires = received_at.saturating_add(policy.max_lifetime.as_secs());
    if now >= expires {
        return None;
    }
    if attempts == 0 {
        return Some(now);
    }
    let first = policy.first.as_secs();
    let cap = policy.max_interval.as_secs();
    let doublings = (attempts - 1).min(63);
    let wait = first.saturating_mul(1u64 << doublings).min(cap).max(1);
    Some(now.saturating_add(wait).min(expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    #[test]
    fn default_schedule_doubles_from_a_minute_to_the_cap() {
        let p = RetryPolicy::default();
        let waits: Vec<u64> = (1..=8).map(|n| next_attempt(&p, n, T0, T0).unwrap() - T0).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(next_attempt(&p, 0, T0, T0 + 5), Some(T0 + 5));
    }

    #[test]
    fn expired_messages_get_no_attempt() {
        let p = RetryPolicy::default();
        let life = p.max_lifetime.as_secs();
        assert_eq!(next_attempt(&p, 3, T0, T0 + life), None);
        assert_eq!(next_attempt(&p, 0, T0, T0 + life + 1), None);
        assert!(next_attempt(&p, 3, T0, T0 + life - 1).is_some());
    }

    #[test]
    fn properties_hold_over_a_grid() {
        let policies = [
            RetryPolicy::default(),
            RetryPolicy {
                first: Duration::ZERO,
                max_interval: Duration::ZERO,
                max_lifetime: Duration::from_secs(100),
            },
            RetryPolicy {
                first: Duration::from_secs(u64::MAX / 4),
                max_interval: Duration::from_secs(u64::MAX),
                max_lifetime: Duration::from_secs(u64::MAX),
            },
            RetryPolicy {
                first: Duration::from_secs(300),
                max_interval: Duration::from_secs(7200),
                max_lifetime: Duration::from_secs(86_400),
            },
        ];
        let mut checked = 0;
        for p in &policies {
            let expires = T0.saturating_add(p.max_lifetime.as_secs());
            for now in [T0, T0 + 1, T0 + 59, T0 + 3_599, T0 + 86_399, T0 + 86_400, T0 + 500_000] {
                let mut prev_wait = 0;
                for attempts in 0..100u32 {
                    let next = next_attempt(p, attempts, T0, now);
                    match next {
                        None => assert!(now >= expires),
                        Some(at) => {
                            assert!(now < expires);
                            assert!(at <= expires, "never scheduled past expiry");
                            if attempts == 0 {
                                assert_eq!(at, now);
                            } else {
                                assert!(at > now, "a retry is always in the future");
                                let wait = at - now;
                                assert!(wait >= prev_wait, "waits never shrink");
                                assert!(wait <= p.max_interval.as_secs().max(1));
                                prev_wait = wait;
                            }
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, policies.len() * 7 * 100);
    }
}
