//! One (plan, key) counter: its buckets, its quota period and its daily
//! history. Pure and deterministic — time is passed in — so every store
//! that keeps counters in process shares it, and the Redis script mirrors it.

use jiff::civil::Date;

use super::bucket::Bucket;
use super::period::{self, DAY_SECS};
use crate::decision::{DayUsage, Decision, DecisionRequest, QuotaRule, QuotaState, Verdict};
use crate::model::{QuotaPeriod, MAX_COUNT};

/// Days of history kept for GetUsage (at least 90 are promised).
const HISTORY_DAYS: i64 = 100;
const NANOS_PER_SEC: i64 = 1_000_000_000;
/// More requests than any gateway admits in a period (or a day): 2^53, the
/// largest count a JSON reader keeps exactly.
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
const MAX_USED: u64 = 1 << 53;

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

/// The state of one (plan, key) counter. What every decision touches —
/// period, counts, the plan's bucket, today's record — is inline, so a
/// decision reads and writes one allocation; per-method buckets and
/// earlier days live beside it, exactly sized (a counter exists per active
/// key, and bytes add up). Saved in the shape of [`CounterState`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(from = "CounterState", into = "CounterState")]
pub(crate) struct Counter {
    period: Option<Period>,
    /// Admitted in the current period.
    used: u64,
    /// Set by UpdateUsage: the total allowed in the current period;
    /// [`NO_ALLOWANCE`] when not set.
    allowance: u64,
    /// The plan's bucket.
    bucket: Option<Bucket>,
    /// The latest day's record, the one admissions update.
    latest: Option<DayRecord>,
    /// Per-method buckets.
    method_buckets: Box<[(Box<str>, Bucket)]>,
    /// The days before `latest`, oldest first.
    earlier: Vec<DayRecord>,
}

const NO_ALLOWANCE: u64 = u64::MAX;

impl Default for Counter {
    fn default() -> Self {
        Self {
            period: None,
            used: 0,
            allowance: NO_ALLOWANCE,
            bucket: None,
            latest: None,
            method_buckets: Box::default(),
            earlier: Vec::new(),
        }
    }
}

/// How a counter is saved (state files): its buckets and days as lists.
#[derive(serde::Serialize, serde::Deserialize)]
struct CounterState {
    period: Option<Period>,
    used: u64,
    allowance: Option<u64>,
    /// The plan bucket (`None`) and per-method buckets.
    buckets: Vec<(Option<Box<str>>, Bucket)>,
    /// Oldest first.
    days: Vec<DayRecord>,
}

impl From<CounterState> for Counter {
    fn from(state: CounterState) -> Self {
        let mut counter = Counter::restored(
            state.period.map(|p| (p.kind, p.start, p.end)),
            state.used,
            state.allowance,
            state
                .days
                .into_iter()
                .map(|d| (d.day, d.used, d.remaining))
                .collect(),
        );
        let mut methods = Vec::new();
        for (method, bucket) in state.buckets {
            match method {
                None => counter.bucket = Some(bucket),
                Some(method) => methods.push((method, bucket)),
            }
        }
        counter.method_buckets = methods.into_boxed_slice();
        counter
    }
}

impl From<Counter> for CounterState {
    fn from(counter: Counter) -> Self {
        let allowance = counter.allowance();
        let buckets = counter
            .bucket
            .map(|b| (None, b))
            .into_iter()
            .chain(
                Vec::from(counter.method_buckets)
                    .into_iter()
                    .map(|(m, b)| (Some(m), b)),
            )
            .collect();
        let mut days = counter.earlier;
        days.extend(counter.latest);
        Self {
            period: counter.period,
            used: counter.used,
            allowance,
            buckets,
            days,
        }
    }
}

/// `remaining + delta`, floored at 0 and capped at [`MAX_COUNT`] (what an
/// UpdateUsage `add` leaves; the Redis script does the same).
pub(crate) fn added(remaining: u64, delta: i64) -> u64 {
    let sum = i128::from(remaining) + i128::from(delta);
    u64::try_from(sum.clamp(0, i128::from(MAX_COUNT))).unwrap_or(0)
}

impl Counter {
    /// Decides one request; spends a token and a unit of quota only when
    /// both allow it. This is what must happen under the counter's lock;
    /// the headers' arithmetic is left to [`Counted::describe`], after the
    /// lock is released.
    #[inline]
    pub(crate) fn count(&mut self, request: &DecisionRequest<'_>) -> Counted {
        let now_nanos = request.now.get();
        let now = now_nanos.div_euclid(NANOS_PER_SEC);
        if let Some(rule) = &request.quota {
            self.roll(rule, now);
        }
        let remaining = request.quota.as_ref().map(|rule| self.remaining(rule));
        let quota_ok = remaining.is_none_or(|r| r > 0);
        let mut throttle_ok = true;
        let bucket = request.throttle.map(|rule| {
            let bucket = self.bucket_mut(rule.method, &rule.throttle, now_nanos);
            bucket.refill(&rule.throttle, now_nanos);
            throttle_ok = bucket.has_token();
            if throttle_ok && quota_ok {
                bucket.take();
            }
            *bucket
        });
        let verdict = match (throttle_ok, quota_ok) {
            (false, _) => Verdict::Throttled,
            (true, false) => Verdict::QuotaExceeded,
            (true, true) => Verdict::Admitted,
        };
        // Admitted implies a unit was left (or no quota applies).
        let remaining = match remaining {
            Some(r) if verdict == Verdict::Admitted => Some(r - 1),
            r => r,
        };
        if verdict == Verdict::Admitted {
            self.used += 1;
            self.record(now, 1, remaining.unwrap_or(0));
        }
        let period = self.period.map_or((now, now), |p| (p.start, p.end));
        Counted {
            verdict,
            bucket,
            quota: remaining.map(|r| (r, period)),
            now,
        }
    }

    /// Gives back what an admitted decision of `request` spent: its token
    /// (up to the burst) and, while the decision's quota period is still
    /// the current one, its unit of quota, also in that day's record. A
    /// period that has ended since is left alone.
    pub(crate) fn refund(&mut self, request: &DecisionRequest<'_>) {
        let now_nanos = request.now.get();
        let now = now_nanos.div_euclid(NANOS_PER_SEC);
        if let (Some(rule), Some(p)) = (&request.quota, self.period) {
            if p.kind == rule.quota.period && p.start <= now && now < p.end && self.used > 0 {
                self.used -= 1;
                let day = now.div_euclid(DAY_SECS);
                let remaining = self.remaining(rule);
                let is_latest = self.latest.is_some_and(|d| d.day == day);
                let record = match &mut self.latest {
                    Some(latest) if latest.day == day => Some(latest),
                    _ => self.earlier.iter_mut().find(|d| d.day == day),
                };
                if let Some(record) = record {
                    record.used = record.used.saturating_sub(1);
                    record.remaining = if is_latest {
                        remaining
                    } else {
                        record.remaining.saturating_add(1)
                    };
                }
            }
        }
        if let Some(rule) = request.throttle {
            let bucket = match rule.method {
                None => self.bucket.as_mut(),
                Some(method) => self
                    .method_buckets
                    .iter_mut()
                    .find(|(m, _)| **m == *method)
                    .map(|(_, b)| b),
            };
            if let Some(bucket) = bucket {
                bucket.give_back(&rule.throttle, now_nanos);
            }
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
        // Capped below the "not set" mark (remaining is at most i32::MAX).
        self.allowance = self.used.saturating_add(remaining).min(NO_ALLOWANCE - 1);
        self.record(now, 0, remaining);
        let today = self.latest.map_or(0, |d| d.used);
        [today, remaining]
    }

    /// Adds `delta` to the remaining quota of the current period (negative
    /// subtracts), floored at 0 and capped at [`MAX_COUNT`]; one step under
    /// the counter's lock, so no admission slips between the read and the
    /// write.
    pub(crate) fn add_remaining(
        &mut self,
        rule: &QuotaRule,
        now_nanos: i64,
        delta: i64,
    ) -> DayUsage {
        self.roll(rule, now_nanos.div_euclid(NANOS_PER_SEC));
        let target = added(self.remaining(rule), delta);
        self.set_remaining(rule, now_nanos, target)
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
        let mut earlier = self.days().rev().find(|d| d.day < first).copied();
        for day in first..=last {
            let record = self.days().find(|d| d.day == day).copied();
            let used = record.map_or(0, |r| r.used);
            let remaining = match rule {
                None => 0,
                Some(rule) if day == today => self.remaining(rule),
                Some(rule) => match record.or(earlier) {
                    Some(r) if same_period(rule.quota.period, r.day, day) => r.remaining,
                    _ => untouched_limit(rule, day),
                },
            };
            if record.is_some() {
                earlier = record;
            }
            out.push([used, remaining]);
        }
        out
    }

    /// Every daily record, oldest first.
    fn days(&self) -> impl DoubleEndedIterator<Item = &DayRecord> {
        self.earlier.iter().chain(&self.latest)
    }

    fn allowance(&self) -> Option<u64> {
        (self.allowance != NO_ALLOWANCE).then_some(self.allowance)
    }

    /// The bucket of the plan (`method: None`) or of one method; a new one
    /// is full.
    fn bucket_mut(
        &mut self,
        method: Option<&str>,
        throttle: &crate::model::Throttle,
        now: i64,
    ) -> &mut Bucket {
        let Some(method) = method else {
            return self
                .bucket
                .get_or_insert_with(|| Bucket::full(throttle, now));
        };
        let at = match self.method_buckets.iter().position(|(m, _)| **m == *method) {
            Some(at) => at,
            None => {
                let mut buckets = std::mem::take(&mut self.method_buckets).into_vec();
                buckets.reserve_exact(1);
                buckets.push((method.into(), Bucket::full(throttle, now)));
                self.method_buckets = buckets.into_boxed_slice();
                self.method_buckets.len() - 1
            }
        };
        &mut self.method_buckets[at].1
    }

    /// Starts a new period when the current one has ended (or the plan's
    /// period changed); a clock that steps back keeps the current one.
    #[inline]
    fn roll(&mut self, rule: &QuotaRule, now: i64) {
        if let Some(p) = self.period {
            if p.kind == rule.quota.period && now < p.end {
                return;
            }
        }
        self.start_period(rule, now);
    }

    /// Once a period: kept out of the decision's straight line. A period
    /// that ended leaves a new one empty; a plan whose period changed
    /// (DAY to WEEK, say), or that has its first quota, counts what was
    /// admitted on the new period's days so far, so the change never admits
    /// more than the new quota allows.
    #[cold]
    fn start_period(&mut self, rule: &QuotaRule, now: i64) {
        let (start, end) = period::bounds(rule.quota.period, now);
        let changed_kind = self.period.is_none_or(|p| p.kind != rule.quota.period);
        let (first, today) = (start.div_euclid(DAY_SECS), now.div_euclid(DAY_SECS));
        self.used = if changed_kind {
            self.days()
                .filter(|d| (first..=today).contains(&d.day))
                .map(|d| d.used)
                .sum()
        } else {
            0
        };
        self.period = Some(Period {
            kind: rule.quota.period,
            start,
            end,
        });
        self.allowance = NO_ALLOWANCE;
    }

    fn remaining(&self, rule: &QuotaRule) -> u64 {
        let start = self.period.map_or(0, |p| p.start);
        let allowed = self
            .allowance()
            .unwrap_or_else(|| rule.limit_for_period(start));
        allowed.saturating_sub(self.used)
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
        let mut earlier: Vec<DayRecord> = days
            .into_iter()
            .map(|(day, used, remaining)| DayRecord {
                day,
                used,
                remaining,
            })
            .collect();
        let latest = earlier.pop();
        earlier.shrink_to_fit();
        Self {
            period: period.map(|(kind, start, end)| Period { kind, start, end }),
            used,
            allowance: allowance.map_or(NO_ALLOWANCE, |a| a.min(NO_ALLOWANCE - 1)),
            bucket: None,
            latest,
            method_buckets: Box::default(),
            earlier,
        }
    }

    /// Checks a restored counter against what the model can produce, up to
    /// the clock `latest` (Unix nanoseconds): a calendar period that has
    /// started, an UpdateUsage allowance within [`MAX_COUNT`] of `used`,
    /// daily records no later than today, and buckets that
    /// [`Bucket::check`] accepts (`burst` gives the burst limit of the
    /// plan's bucket, `None`, or of a method's, when known). The error
    /// names the field, as the state file spells it.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn check(
        &self,
        burst: impl Fn(Option<&str>) -> Option<u32>,
        latest: i64,
    ) -> Result<(), String> {
        let latest_secs = latest.div_euclid(NANOS_PER_SEC);
        if let Some(p) = self.period {
            if p.start > latest_secs {
                return Err(format!(
                    "period.start {} (Unix seconds) is in the future",
                    p.start
                ));
            }
            if period::bounds(p.kind, p.start) != (p.start, p.end) {
                return Err(format!(
                    "period {{start {}, end {}}} is not a {} period of the UTC calendar",
                    p.start,
                    p.end,
                    p.kind.as_str()
                ));
            }
        }
        if self.used > MAX_USED {
            return Err(format!("used {} is above {MAX_USED}", self.used));
        }
        if let Some(allowance) = self.allowance() {
            if allowance.saturating_sub(self.used) > MAX_COUNT {
                return Err(format!(
                    "allowance {allowance} leaves {} requests, more than UpdateUsage can set \
                     ({MAX_COUNT})",
                    allowance.saturating_sub(self.used)
                ));
            }
        }
        let today = latest_secs.div_euclid(DAY_SECS);
        let mut previous = None;
        for (i, d) in self.days().enumerate() {
            if previous == Some(d.day) {
                return Err(format!("days: day {} appears twice", d.day));
            }
            previous = Some(d.day);
            if d.day > today {
                return Err(format!("days[{i}].day {} is in the future", d.day));
            }
            if d.used > MAX_USED {
                return Err(format!("days[{i}].used {} is above {MAX_USED}", d.used));
            }
            if d.remaining > MAX_COUNT {
                return Err(format!(
                    "days[{i}].remaining {} is above {MAX_COUNT}",
                    d.remaining
                ));
            }
        }
        let buckets = self
            .bucket
            .iter()
            .map(|b| (None, b))
            .chain(self.method_buckets.iter().map(|(m, b)| (Some(&**m), b)));
        for (i, (method, bucket)) in buckets.enumerate() {
            bucket
                .check(burst(method), latest)
                .map_err(|e| format!("buckets[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Caps every bucket at its throttle's current burst limit (`burst`, as
    /// for [`check`](Self::check)): what a refill does, done before saving.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn clamp_buckets(&mut self, burst: impl Fn(Option<&str>) -> Option<u32>) {
        if let (Some(bucket), Some(limit)) = (self.bucket.as_mut(), burst(None)) {
            bucket.clamp(limit);
        }
        for (method, bucket) in self.method_buckets.iter_mut() {
            if let Some(limit) = burst(Some(method)) {
                bucket.clamp(limit);
            }
        }
    }

    fn record(&mut self, now: i64, admitted: u64, remaining: u64) {
        let day = now.div_euclid(DAY_SECS);
        match &mut self.latest {
            Some(last) if last.day == day => {
                last.used += admitted;
                last.remaining = remaining;
                return;
            }
            Some(last) if last.day > day => return, // the clock stepped back: keep history monotonic
            _ => {}
        }
        self.start_day(day, admitted, remaining);
    }

    /// Once a day: kept out of the decision's straight line.
    #[cold]
    fn start_day(&mut self, day: i64, admitted: u64, remaining: u64) {
        let today = DayRecord {
            day,
            used: admitted,
            remaining,
        };
        if let Some(previous) = self.latest.replace(today) {
            // Once a day: exact growth keeps idle history small.
            self.earlier.reserve_exact(1);
            self.earlier.push(previous);
        }
        let expired = self
            .earlier
            .iter()
            .take_while(|d| d.day <= day - HISTORY_DAYS)
            .count();
        if expired > 0 {
            self.earlier.drain(..expired);
        }
    }
}

/// A counted decision, copied out of the counter: the verdict, the bucket
/// after it, and the quota left in the period `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    verdict: Verdict,
    bucket: Option<Bucket>,
    quota: Option<(u64, (i64, i64))>,
    /// Unix seconds.
    now: i64,
}

impl Counted {
    /// The decision with the states the headers report.
    #[inline]
    pub(crate) fn describe(self, request: &DecisionRequest<'_>) -> Decision {
        Decision {
            verdict: self.verdict,
            throttle: request
                .throttle
                .zip(self.bucket)
                .map(|(rule, bucket)| bucket.state(&rule.throttle)),
            quota: request
                .quota
                .as_ref()
                .zip(self.quota)
                .map(|(rule, (remaining, period))| quota_state(rule, remaining, period, self.now)),
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

/// What the period of `day` allows with nothing used: the limit, less the
/// offset in the period the plan was created in (not in the ones before).
fn untouched_limit(rule: &QuotaRule, day: i64) -> u64 {
    let (start, end) = period::bounds(rule.quota.period, day * DAY_SECS);
    if end <= rule.plan_created {
        rule.quota.limit
    } else {
        rule.limit_for_period(start)
    }
}

fn same_period(kind: QuotaPeriod, a: i64, b: i64) -> bool {
    period::bounds(kind, a * DAY_SECS).0 == period::bounds(kind, b * DAY_SECS).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{CounterKey, ThrottleRule};
    use crate::model::{Quota, Throttle};

    const DAY: i64 = DAY_SECS * NANOS_PER_SEC;

    fn admit(counter: &mut Counter, method: Option<&str>, at_nanos: i64) -> Verdict {
        let key = CounterKey::new("p", "k");
        let request = DecisionRequest {
            counter: &key,
            throttle: Some(ThrottleRule {
                method,
                throttle: Throttle::new(1.0, 5).unwrap(),
            }),
            quota: Some(QuotaRule {
                quota: Quota::new(100, QuotaPeriod::Month),
                plan_created: 0,
            }),
            now: crate::UnixNanos::new(at_nanos),
        };
        counter.count(&request).describe(&request).verdict
    }

    #[test]
    fn saved_in_the_list_shape_and_restored_whole() {
        let mut counter = Counter::default();
        let start = 20_000 * DAY; // a day in 2024
        assert_eq!(admit(&mut counter, None, start), Verdict::Admitted);
        assert_eq!(
            admit(&mut counter, Some("/pets/GET"), start),
            Verdict::Admitted
        );
        assert_eq!(admit(&mut counter, None, start + DAY), Verdict::Admitted);
        counter.set_remaining(
            &QuotaRule {
                quota: Quota::new(100, QuotaPeriod::Month),
                plan_created: 0,
            },
            start + DAY,
            40,
        );

        let saved = serde_json::to_value(&counter).unwrap();
        assert_eq!(saved["used"], 3);
        assert_eq!(saved["allowance"], 43);
        assert_eq!(saved["buckets"].as_array().unwrap().len(), 2);
        assert_eq!(saved["buckets"][0][0], serde_json::Value::Null);
        assert_eq!(saved["buckets"][1][0], "/pets/GET");
        let days = saved["days"].as_array().unwrap();
        assert_eq!(days.len(), 2);
        assert_eq!((&days[0]["used"], &days[1]["used"]), (&2.into(), &1.into()));

        let restored: Counter = serde_json::from_value(saved.clone()).unwrap();
        assert_eq!(serde_json::to_value(&restored).unwrap(), saved);
    }

    #[test]
    fn offset_only_in_the_period_the_plan_was_created_in() {
        let created = "2026-11-28T12:00:00Z".parse::<jiff::Timestamp>().unwrap();
        let rule = QuotaRule {
            quota: Quota::new(10, QuotaPeriod::Month).with_offset(3).unwrap(),
            plan_created: created.as_second(),
        };
        let date = |s: &str| s.parse::<Date>().unwrap();
        let usage = Counter::default().usage(
            Some(&rule),
            crate::clock::to_nanos(created),
            date("2026-10-31"),
            date("2026-12-01"),
        );
        assert_eq!(usage[0], [0, 10], "October: before the plan existed");
        assert_eq!(usage[1], [0, 7], "November: the plan's first period");
        assert_eq!(usage[31], [0, 10], "December");
    }

    #[test]
    fn history_keeps_a_hundred_days() {
        let mut counter = Counter::default();
        for day in 0..150 {
            admit(&mut counter, None, (20_000 + day) * DAY);
        }
        assert_eq!(counter.days().count(), HISTORY_DAYS as usize);
        assert_eq!(counter.days().next().unwrap().day, 20_050);
        assert_eq!(counter.latest.unwrap().day, 20_149);
    }
}
