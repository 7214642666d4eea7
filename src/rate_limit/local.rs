//! Limits counted in this process: governor's GCRA over a key table of bounded size.
//!
//! The table holds one 8-byte state per key that was seen within its limit's period.
//! Housekeeping drops keys whose state equals a fresh one (governor's
//! `retain_recent`). When the table is full anyway, say under a spray of spoofed
//! addresses, new keys share one overflow key: known clients keep their own budgets
//! and newcomers still get a limit (a shared one) rather than none, and memory stays
//! bounded.

use std::num::NonZeroU32;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{KeyedStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::spec::Limit;

/// The key new clients share once the table is full; no real key has this form.
pub const OVERFLOW_KEY: &str = "\u{0}overflow";

/// A key table that never grows beyond its capacity (plus the overflow key).
#[derive(Debug)]
pub struct BoundedStore {
    map: DashMap<String, InMemoryState>,
    capacity: usize,
}

impl StateStore for BoundedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A known key, the usual case: one lookup, as governor's own table does it.
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let key = if self.map.len() >= self.capacity {
            OVERFLOW_KEY.to_owned()
        } else {
            key.clone()
        };
        let state = self.map.entry(key).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<String> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// `KeyedStateStore` is implemented for every `StateStore` with a hashable key.
const _: fn() = || {
    fn keyed<S: KeyedStateStore<String>>() {}
    keyed::<BoundedStore>();
};

/// One limit's budgets, one per key.
#[derive(Debug)]
pub struct LocalLimit<C: Clock> {
    limiter: RateLimiter<String, BoundedStore, C, StateInformationMiddleware>,
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted; this many more requests would pass right now.
    Allowed { remaining: u32 },
    /// Not counted; the next request passes after this wait.
    Refused { retry_after: Duration },
}

pub fn quota(limit: &Limit) -> Quota {
    // A period of at least a second over at most a million requests: never zero.
    Quota::with_period(limit.interval())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(limit.burst)
}

impl<C: Clock> LocalLimit<C> {
    pub fn new(limit: &Limit, capacity: usize, clock: C) -> Self {
        let store = BoundedStore {
            map: DashMap::new(),
            capacity: capacity.max(1),
        };
        let limiter = RateLimiter::<String, BoundedStore, C, StateInformationMiddleware>::new(
            quota(limit),
            store,
            clock,
        );
        Self { limiter }
    }

    /// Counts a request under `key`, unless it is over the limit.
    pub fn check(&self, key: &String) -> Outcome {
        match self.limiter.check_key(key) {
            Ok(state) => Outcome::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Outcome::Refused {
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Drops keys whose budget is full again; returns how many are left.
    pub fn housekeep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    /// How many keys have a budget now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// Seconds to wait, rounded up (`Retry-After` has whole seconds; RFC 9110 §10.2.3).
pub fn whole_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        seconds + 1
    } else {
        seconds.max(1)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::rate_limit::spec::parse;

    fn limit(text: &str) -> Limit {
        parse(text).expect("valid").remove(0)
    }

    #[test]
    fn a_burst_passes_then_one_per_interval() {
        let clock = FakeRelativeClock::default();
        let local = LocalLimit::new(&limit("3/min per ip"), 100, clock.clone());
        let key = "ip=192.0.2.1".to_owned();
        assert_eq!(local.check(&key), Outcome::Allowed { remaining: 2 });
        assert_eq!(local.check(&key), Outcome::Allowed { remaining: 1 });
        assert_eq!(local.check(&key), Outcome::Allowed { remaining: 0 });
        assert_eq!(
            local.check(&key),
            Outcome::Refused {
                retry_after: Duration::from_secs(20)
            }
        );
        clock.advance(Duration::from_secs(19));
        assert!(
            matches!(local.check(&key), Outcome::Refused { retry_after } if retry_after == Duration::from_secs(1))
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(local.check(&key), Outcome::Allowed { remaining: 0 });
        assert!(matches!(local.check(&key), Outcome::Refused { .. }));
    }

    #[test]
    fn keys_have_separate_budgets() {
        let clock = FakeRelativeClock::default();
        let local = LocalLimit::new(&limit("1/h per user"), 100, clock);
        assert!(matches!(
            local.check(&"user=1".to_owned()),
            Outcome::Allowed { .. }
        ));
        assert!(matches!(
            local.check(&"user=1".to_owned()),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            local.check(&"user=2".to_owned()),
            Outcome::Allowed { .. }
        ));
    }

    #[test]
    fn housekeeping_drops_keys_whose_budget_refilled() {
        let clock = FakeRelativeClock::default();
        let local = LocalLimit::new(&limit("2/10s per ip"), 1000, clock.clone());
        for n in 0..100 {
            local.check(&format!("ip=10.0.0.{n}"));
        }
        assert_eq!(local.keys(), 100);
        assert_eq!(local.housekeep(), 100, "budgets not yet refilled stay");
        clock.advance(Duration::from_secs(10));
        assert_eq!(local.housekeep(), 0);
    }

    #[test]
    fn a_full_table_sends_new_keys_to_one_shared_budget() {
        let clock = FakeRelativeClock::default();
        let local = LocalLimit::new(&limit("2/h per ip"), 3, clock);
        for n in 0..3 {
            assert!(matches!(
                local.check(&format!("ip=10.0.0.{n}")),
                Outcome::Allowed { .. }
            ));
        }
        // Newcomers share the overflow budget of 2; known keys keep theirs.
        assert!(matches!(
            local.check(&"ip=10.0.1.1".to_owned()),
            Outcome::Allowed { .. }
        ));
        assert!(matches!(
            local.check(&"ip=10.0.1.2".to_owned()),
            Outcome::Allowed { .. }
        ));
        assert!(matches!(
            local.check(&"ip=10.0.1.3".to_owned()),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            local.check(&"ip=10.0.0.0".to_owned()),
            Outcome::Allowed { .. }
        ));
        assert_eq!(local.keys(), 4, "three keys and the overflow key");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }
}
