//! Request rates per key: a token bucket for each peer operator on the peer
//! port and for each client on the API port, so that one noisy party is
//! refused its excess while the others are served.
//!
//! Hand-written rather than `governor`: a bucket is a dozen lines, takes the
//! time as an argument (so tests need no clock), and needs no new dependency
//! tree (`governor` brings `quanta`, `dashmap` and a spin lock).
//!
//! The check runs before any decoding of the request: it costs one hash-map
//! lookup under a mutex, held for no I/O.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use crate::limits;

/// A sustained rate and the burst allowed above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, sustained; at least 1.
    pub per_second: u32,
    /// Size of the bucket: requests allowed at once after a quiet period; at least 1.
    pub burst: u32,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests/s (burst {})", self.per_second, self.burst)
    }
}

/// A request over its key's rate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} is over its limit of {rate}; retry later")]
pub struct Limited {
    /// Who (a peer operator, a client id, an address).
    pub key: String,
    /// The limit it exceeded.
    pub rate: Rate,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key, at most [`limits::RATE_BUCKETS_MAX`] of them.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone + fmt::Display> KeyedLimiter<K> {
    /// A limiter giving every key `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate: Rate {
                per_second: rate.per_second.max(1),
                burst: rate.burst.max(1),
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The rate every key gets.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token from `key`'s bucket at `now`, or says it is empty.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let burst = f64::from(self.rate.burst);
        let per_second = f64::from(self.rate.per_second);
        let refill = |bucket: &mut Bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
            bucket.updated = now;
        };
        // A poisoned lock only means another request panicked mid-update of a
        // number: the table is still usable.
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !buckets.contains_key(key) && buckets.len() >= limits::RATE_BUCKETS_MAX {
            // Full buckets carry no state worth keeping: drop them first.
            buckets.retain(|_, bucket| {
                refill(bucket);
                bucket.tokens < burst
            });
            if buckets.len() >= limits::RATE_BUCKETS_MAX {
                // Only reachable with more active keys than the bound (plaintext
                // mode, many addresses): start over rather than grow.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Limited {
                key: key.to_string(),
                rate: self.rate,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(per_second: u32, burst: u32) -> KeyedLimiter<String> {
        KeyedLimiter::new(Rate { per_second, burst })
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = limiter(10, 5);
        let start = Instant::now();
        let a = "a".to_owned();
        for _ in 0..5 {
            assert!(limiter.check(&a, start).is_ok());
        }
        let refused = limiter.check(&a, start).unwrap_err();
        assert_eq!(refused.key, "a");
        assert!(refused.to_string().contains("10 requests/s (burst 5)"));
        // 100 ms later one token is back, and only one.
        let later = start + Duration::from_millis(100);
        assert!(limiter.check(&a, later).is_ok());
        assert!(limiter.check(&a, later).is_err());
        // Long idle refills to the burst, not beyond.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.check(&a, much_later).is_ok());
        }
        assert!(limiter.check(&a, much_later).is_err());
    }

    #[test]
    fn keys_do_not_share_a_bucket() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        assert!(limiter.check(&"a".to_owned(), now).is_ok());
        assert!(limiter.check(&"a".to_owned(), now).is_err());
        assert!(limiter.check(&"b".to_owned(), now).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        for i in 0..limits::RATE_BUCKETS_MAX + 10 {
            let _ = limiter.check(&i.to_string(), now);
        }
        assert!(limiter.buckets.lock().unwrap().len() <= limits::RATE_BUCKETS_MAX);
    }
}
