//! Quotas this replica knows are spent, so that a hot key over its quota
//! costs Redis nothing per request (issue 12: "a key whose quota is spent
//! is remembered locally, until its period ends or an admin change
//! arrives").
//!
//! Only Redis's own refusal ("quota exceeded") is remembered, with the
//! quota rule and period it was made under and the shared bucket as the
//! script saw it. While the quota is spent no replica admits the key, so
//! nothing changes the counter but an admin change or a refund. An entry
//! is used only while:
//! - the request's quota rule is the remembered one (a plan change made
//!   here or heard from another replica changes it, or clears every
//!   entry), and its period has not ended;
//! - no UpdateUsage of the counter was heard (every one is announced on
//!   the control channel and forgets the entry before it is acknowledged,
//!   so the admin call returns only after every replica forgot it);
//! - the replica is current ([`Control::is_current`]): it has not missed
//!   an announcement;
//! - it is at most [`REMEMBERED_FOR`] old: a unit another replica refunds
//!   (a request its upstream never saw) is not announced, and becomes
//!   spendable here after that long.
//!
//! [`Control::is_current`]: super::control::Control::is_current

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::{CounterKey, Decision, DecisionRequest, QuotaRule, Verdict};
use crate::limit::{quota_state, Bucket};
use crate::prehashed::Prehashed;

/// The longest a remembered refusal stands without asking Redis again.
pub(crate) const REMEMBERED_FOR: Duration = Duration::from_secs(1);

/// A refusal Redis made for a spent quota.
#[derive(Debug, Clone)]
pub(crate) struct Spent {
    /// The rule it was made under.
    pub(crate) rule: QuotaRule,
    /// The period it was made in (Unix seconds).
    pub(crate) period: (i64, i64),
    /// When (Unix µs).
    pub(crate) at_us: i64,
    /// The method-throttle key of the bucket it was made with, and the
    /// bucket's tokens then: while a quota is spent only a request decided
    /// without the quota spends a token, and this replica forgets the
    /// counter when it decides one (another replica decides one only
    /// while a plan change it announces is on its way).
    pub(crate) method: Option<String>,
    pub(crate) tokens: f64,
}

/// The spent quotas one replica remembers.
#[derive(Debug, Default)]
pub(crate) struct SpentKeys {
    spent: DashMap<CounterKey, Spent, Prehashed>,
    /// How many times entries were forgotten: a refusal Redis made before
    /// a forget, and remembered after it, would outlive the change.
    forgets: AtomicU64,
    /// Whether anything was remembered since everything was last
    /// forgotten: the map is not looked up (its key hashed) until then.
    any: AtomicBool,
}

impl SpentKeys {
    /// The generation to pass to [`remember`](Self::remember): read before
    /// asking Redis.
    pub(crate) fn generation(&self) -> u64 {
        self.forgets.load(Ordering::SeqCst)
    }

    /// Remembers Redis's refusal of `counter`, unless anything was
    /// forgotten since `generation` (under the entry's lock, so that a
    /// forget racing with it removes what it inserts).
    pub(crate) fn remember(&self, counter: &CounterKey, spent: Spent, generation: u64) {
        let entry = self.spent.entry(counter.clone());
        if self.generation() == generation {
            entry.insert(spent);
            self.any.store(true, Ordering::Release);
        }
    }

    /// The refusal `request` gets without asking Redis, if its quota is
    /// remembered as spent (see the module's rules; the caller checks that
    /// the replica is current). The throttle is checked first, as the
    /// script does: the bucket refilled locally since the refusal.
    pub(crate) fn refusal(&self, request: &DecisionRequest<'_>) -> Option<Decision> {
        let rule = request.quota?;
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let now_us = request.now.get() / 1_000;
        let entry = self.spent.get(request.counter)?;
        let spent = entry.value();
        let now_secs = now_us.div_euclid(1_000_000);
        let fresh = now_us.saturating_sub(spent.at_us) < REMEMBERED_FOR.as_micros() as i64
            && now_us >= spent.at_us;
        if spent.rule != rule || now_secs >= spent.period.1 || !fresh {
            let at_us = spent.at_us;
            drop(entry);
            self.spent
                .remove_if(request.counter, |_, now| now.at_us == at_us);
            return None;
        }
        let same_bucket = request.throttle.map(|t| t.method) == Some(spent.method.as_deref());
        if request.throttle.is_some() && !same_bucket {
            return None;
        }
        let throttle = request.throttle.map(|t| {
            let mut bucket = Bucket::with_tokens(spent.tokens, spent.at_us * 1_000);
            bucket.refill(&t.throttle, now_us * 1_000);
            bucket
        });
        let verdict = match &throttle {
            Some(bucket) if !bucket.has_token() => Verdict::Throttled,
            _ => Verdict::QuotaExceeded,
        };
        Some(Decision {
            verdict,
            throttle: request
                .throttle
                .zip(throttle)
                .map(|(t, bucket)| bucket.state(&t.throttle)),
            quota: Some(quota_state(&rule, 0, spent.period, now_secs)),
        })
    }

    /// Forgets `counter` if it is remembered: for what a decision of this
    /// replica changes (a token spent without the quota). Nothing shared is
    /// written while it is not, so it costs a decision one atomic load.
    pub(crate) fn forget_if_remembered(&self, counter: &CounterKey) {
        if self.any.load(Ordering::Acquire) && self.spent.contains_key(counter) {
            self.forget(counter);
        }
    }

    pub(crate) fn forget(&self, counter: &CounterKey) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.spent.remove(counter);
    }

    pub(crate) fn forget_all(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.spent.clear();
        // Nothing remembered before the new generation survives the clear.
        self.any.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Quota, QuotaPeriod, Throttle};

    fn rule(limit: u64) -> QuotaRule {
        QuotaRule {
            quota: Quota::new(limit, QuotaPeriod::Day),
            plan_created: 0,
        }
    }

    const NOW_US: i64 = 1_796_393_511_000_000;

    fn request<'a>(
        counter: &'a CounterKey,
        throttle: Option<crate::store::ThrottleRule<'a>>,
        limit: u64,
        now_us: i64,
    ) -> DecisionRequest<'a> {
        DecisionRequest {
            counter,
            throttle,
            quota: Some(rule(limit)),
            now: crate::clock::UnixNanos::new(now_us * 1_000),
        }
    }

    fn remembered(keys: &SpentKeys, counter: &CounterKey, tokens: f64) {
        let day = NOW_US / 1_000_000 / 86_400 * 86_400;
        keys.remember(
            counter,
            Spent {
                rule: rule(3),
                period: (day, day + 86_400),
                at_us: NOW_US,
                method: None,
                tokens,
            },
            keys.generation(),
        );
    }

    #[test]
    fn a_remembered_refusal_stands_only_under_its_rule_period_and_age() {
        let (keys, counter) = (SpentKeys::default(), CounterKey::new("p", "k"));
        remembered(&keys, &counter, 5.0);
        let refusal = keys
            .refusal(&request(&counter, None, 3, NOW_US + 10))
            .unwrap();
        assert_eq!(refusal.verdict, Verdict::QuotaExceeded);
        assert_eq!(refusal.quota.unwrap().remaining, 0);
        // Another limit (the plan changed): ask Redis, and forget it.
        assert!(keys.refusal(&request(&counter, None, 4, NOW_US)).is_none());
        assert!(keys.refusal(&request(&counter, None, 3, NOW_US)).is_none());
        // Too old.
        remembered(&keys, &counter, 5.0);
        let late = NOW_US + REMEMBERED_FOR.as_micros() as i64;
        assert!(keys.refusal(&request(&counter, None, 3, late)).is_none());
        // Forgotten by an admin change.
        remembered(&keys, &counter, 5.0);
        keys.forget(&counter);
        assert!(keys.refusal(&request(&counter, None, 3, NOW_US)).is_none());
    }

    #[test]
    fn a_refusal_made_before_a_forget_is_not_remembered_after_it() {
        let (keys, counter) = (SpentKeys::default(), CounterKey::new("p", "k"));
        let asked = keys.generation();
        keys.forget_all();
        let day = NOW_US / 1_000_000 / 86_400 * 86_400;
        let spent = Spent {
            rule: rule(3),
            period: (day, day + 86_400),
            at_us: NOW_US,
            method: None,
            tokens: 0.0,
        };
        keys.remember(&counter, spent, asked);
        assert!(keys.refusal(&request(&counter, None, 3, NOW_US)).is_none());
    }

    #[test]
    fn an_empty_bucket_refuses_as_the_throttle_until_it_refills() {
        let (keys, counter) = (SpentKeys::default(), CounterKey::new("p", "k"));
        let throttle = Throttle::new(10.0, 5).unwrap();
        let rule = crate::store::ThrottleRule {
            throttle,
            method: None,
        };
        remembered(&keys, &counter, 0.5);
        let at = |us| keys.refusal(&request(&counter, Some(rule), 3, NOW_US + us));
        assert_eq!(at(0).unwrap().verdict, Verdict::Throttled);
        // 0.05 s at 10/s: one more token.
        assert_eq!(at(50_000).unwrap().verdict, Verdict::QuotaExceeded);
    }
}
