//! One (plan, key) counter: its buckets, its quota period and its daily
//! history. Pure and deterministic — time is passed in — so every store
//! that keeps counters in process shares it, and the Redis script mirrors it.

use jiff::civil::Date;

use super::bucket::Bucket;
use super::period::{self, DAY_SECS};
use crate::model::QuotaPeriod;
use crate::store::{DayUsage, Decision, DecisionRequest, QuotaRule, QuotaState, Verdict};

/// Days of history kept for GetUsage (at least 90 are promised).
const HISTORY_DAYS: i64 = 100;
const NANOS_PER_SEC: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Period {
    kind: QuotaPeriod,
    start: i64,
    end: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DayRecord {
    day: i64,
    used: u64,
    remaining: u64,
}

/// The state of one (plan, key) counter.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Counter {
    period: Option<Period>,
    /// Admitted in the current period.
    used: u64,
    /// Set by UpdateUsage: the total allowed in the current period.
    allowance: Option<u64>,
    /// The plan bucket (`None`) and per-method buckets. Exactly sized, as
    /// is the history: a counter exists per active key, and bytes add up.
    buckets: Box<[(Option<Box<str>>, Bucket)]>,
    /// Oldest first.
    days: Vec<DayRecord>,
}

impl Counter {
    /// Decides one request; spends a token and a unit of quota only when
    /// both allow it.
    pub(crate) fn decide(&mut self, request: &DecisionRequest<'_>) -> Decision {
        let now_nanos = crate::clock::to_nanos(request.now);
        let now = now_nanos.div_euclid(NANOS_PER_SEC);
        let bucket = request.throttle.map(|rule| {
            let mut bucket = self.bucket(rule.method, &rule.throttle, now_nanos);
            bucket.refill(&rule.throttle, now_nanos);
            (bucket, rule.throttle)
        });
        let throttle_ok = bucket.as_ref().is_none_or(|(b, _)| b.has_token());
        if let Some(rule) = &request.quota {
            self.roll(rule, now);
        }
        let quota_ok = request
            .quota
            .as_ref()
            .is_none_or(|rule| self.remaining(rule) > 0);
        let verdict = match (throttle_ok, quota_ok) {
            (false, _) => Verdict::Throttled,
            (true, false) => Verdict::QuotaExceeded,
            (true, true) => Verdict::Admitted,
        };
        let mut throttle = None;
        if let Some((mut bucket, rule)) = bucket {
            if verdict == Verdict::Admitted {
                bucket.take();
            }
            self.store_bucket(request.throttle.and_then(|r| r.method), bucket);
            throttle = Some(bucket.state(&rule));
        }
        if verdict == Verdict::Admitted {
            self.used += 1;
            let remaining = request
                .quota
                .as_ref()
                .map_or(0, |rule| self.remaining(rule));
            self.record(now, 1, remaining);
        }
        Decision {
            verdict,
            throttle,
            quota: request
                .quota
                .as_ref()
                .map(|rule| self.quota_state(rule, now)),
        }
    }

    /// Sets the remaining quota of the current period.
    pub(crate) fn set_remaining(
        &mut self,
        rule: &QuotaRule,
        now_nanos: i64,
        remaining: u64,
    ) -> DayUsage {
        let now = now_nanos.div_euclid(NANOS_PER_SEC);
        self.roll(rule, now);
        self.allowance = Some(self.used.saturating_add(remaining));
        self.record(now, 0, remaining);
        let today = self.days.last().map_or(0, |d| d.used);
        [today, remaining]
    }

    /// `[used, remaining]` per day from `first` to `last`.
    pub(crate) fn usage(
        &mut self,
        rule: Option<&QuotaRule>,
        now_nanos: i64,
        first: Date,
        last: Date,
    ) -> Vec<DayUsage> {
        let now = now_nanos.div_euclid(NANOS_PER_SEC);
        let today = now.div_euclid(DAY_SECS);
        if let Some(rule) = rule {
            self.roll(rule, now);
        }
        let (first, last) = (period::day_of_date(first), period::day_of_date(last));
        let mut out = Vec::with_capacity(usize::try_from(last - first + 1).unwrap_or(0));
        let mut earlier = self.days.iter().rev().find(|d| d.day < first).copied();
        for day in first..=last {
            let record = self.days.iter().find(|d| d.day == day).copied();
            let used = record.map_or(0, |r| r.used);
            let remaining = match rule {
                None => 0,
                Some(rule) if day == today => self.remaining(rule),
                Some(rule) => match record.or(earlier) {
                    Some(r) if same_period(rule.quota.period, r.day, day) => r.remaining,
                    _ => rule.limit_for_period(period::bounds(rule.quota.period, day * DAY_SECS).0),
                },
            };
            if record.is_some() {
                earlier = record;
            }
            out.push([used, remaining]);
        }
        out
    }

    fn bucket(
        &mut self,
        method: Option<&str>,
        throttle: &crate::model::Throttle,
        now: i64,
    ) -> Bucket {
        self.buckets
            .iter()
            .find(|(m, _)| m.as_deref() == method)
            .map_or_else(|| Bucket::full(throttle, now), |(_, b)| *b)
    }

    fn store_bucket(&mut self, method: Option<&str>, bucket: Bucket) {
        match self
            .buckets
            .iter_mut()
            .find(|(m, _)| m.as_deref() == method)
        {
            Some((_, b)) => *b = bucket,
            None => {
                let mut buckets = std::mem::take(&mut self.buckets).into_vec();
                buckets.reserve_exact(1);
                buckets.push((method.map(Into::into), bucket));
                self.buckets = buckets.into_boxed_slice();
            }
        }
    }

    /// Starts a new period when the current one has ended (or the plan's
    /// period changed); a clock that steps back keeps the current one.
    fn roll(&mut self, rule: &QuotaRule, now: i64) {
        if let Some(p) = self.period {
            if p.kind == rule.quota.period && now < p.end {
                return;
            }
        }
        let (start, end) = period::bounds(rule.quota.period, now);
        self.period = Some(Period {
            kind: rule.quota.period,
            start,
            end,
        });
        self.used = 0;
        self.allowance = None;
    }

    fn remaining(&self, rule: &QuotaRule) -> u64 {
        let start = self.period.map_or(0, |p| p.start);
        let allowed = self
            .allowance
            .unwrap_or_else(|| rule.limit_for_period(start));
        allowed.saturating_sub(self.used)
    }

    fn quota_state(&self, rule: &QuotaRule, now: i64) -> QuotaState {
        let bounds = self.period.map_or((now, now), |p| (p.start, p.end));
        quota_state(rule, self.remaining(rule), bounds, now)
    }

    /// A counter rebuilt from a store's fields: the current period
    /// (`kind, start, end`), its `used` and `allowance`, and the daily
    /// `(day, used, remaining)` records in any order. Buckets are not needed
    /// to answer usage.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn restored(
        period: Option<(QuotaPeriod, i64, i64)>,
        used: u64,
        allowance: Option<u64>,
        mut days: Vec<(i64, u64, u64)>,
    ) -> Self {
        days.sort_unstable_by_key(|d| d.0);
        Self {
            period: period.map(|(kind, start, end)| Period { kind, start, end }),
            used,
            allowance,
            buckets: Box::default(),
            days: days
                .into_iter()
                .map(|(day, used, remaining)| DayRecord {
                    day,
                    used,
                    remaining,
                })
                .collect(),
        }
    }

    fn record(&mut self, now: i64, admitted: u64, remaining: u64) {
        let day = now.div_euclid(DAY_SECS);
        match self.days.last_mut() {
            Some(last) if last.day == day => {
                last.used += admitted;
                last.remaining = remaining;
            }
            Some(last) if last.day > day => {} // the clock stepped back: keep history monotonic
            _ => {
                // Once a day: exact growth keeps idle history small.
                self.days.reserve_exact(1);
                self.days.push(DayRecord {
                    day,
                    used: admitted,
                    remaining,
                });
            }
        }
        let expired = self
            .days
            .iter()
            .take_while(|d| d.day <= day - HISTORY_DAYS)
            .count();
        if expired > 0 {
            self.days.drain(..expired);
        }
    }
}

/// The quota's header state with `remaining` left in the period
/// `[start, end)` at `now` (Unix seconds).
pub(crate) fn quota_state(
    rule: &QuotaRule,
    remaining: u64,
    (start, end): (i64, i64),
    now: i64,
) -> QuotaState {
    QuotaState {
        limit: rule.quota.limit,
        remaining,
        period_secs: u64::try_from(end - start).unwrap_or(0),
        reset_secs: u64::try_from(end - now).unwrap_or(0).max(1),
    }
}

fn same_period(kind: QuotaPeriod, a: i64, b: i64) -> bool {
    period::bounds(kind, a * DAY_SECS).0 == period::bounds(kind, b * DAY_SECS).0
}
