//! The store conformance suite: every `CounterStore` must pass it. A store
//! test calls `run_all` with a fresh store (and nothing else using it).

use std::sync::Arc;

use jiff::civil::Date;
use jiff::Timestamp;
use tower_usage_plans::store::{
    CounterKey, CounterStore, DecisionRequest, QuotaRule, ThrottleRule, Verdict,
};
use tower_usage_plans::{Quota, QuotaPeriod, Throttle};

pub const T0: &str = "2026-11-28T12:00:00Z";

pub fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// A quota of `limit` per `period`, for a plan created long ago.
pub fn rule(limit: u64, period: QuotaPeriod) -> QuotaRule {
    QuotaRule {
        quota: Quota::new(limit, period),
        plan_created: 0,
    }
}

fn quota(limit: u64) -> QuotaRule {
    rule(limit, QuotaPeriod::Day)
}

/// A prefix no other run uses, so runs never see each other's counters.
#[cfg(feature = "redis")]
pub fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{}-{nanos}:", std::process::id())
}

/// A store on the Redis that `scripts/test.sh` started (its URL in `var`),
/// under a prefix of its own.
#[cfg(feature = "redis")]
pub async fn redis_store(var: &str, default: &str) -> tower_usage_plans::store::RedisStore {
    let url = std::env::var(var).unwrap_or_else(|_| default.into());
    tower_usage_plans::store::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("no Redis at {url} (scripts/test.sh starts one): {e}"))
        .with_prefix(unique_prefix())
        // Thousands of commands race here on a loaded machine: a timeout
        // (the gateway's 250 ms budget per call) would leave unknown whether
        // a top-up landed, and exactness is what these tests check.
        .with_timeout(std::time::Duration::from_secs(30))
}

/// A store on `url` under `prefix` (tests share the servers), with the
/// suite's generous timeout.
pub async fn store_at(url: &str, prefix: &str) -> tower_usage_plans::store::RedisStore {
    tower_usage_plans::store::RedisStore::connect(url)
        .await
        .unwrap()
        .with_prefix(prefix)
        .with_timeout(std::time::Duration::from_secs(30))
}

pub async fn decide(
    store: &dyn CounterStore,
    counter: &CounterKey,
    throttle: Option<Throttle>,
    quota: Option<QuotaRule>,
    now: Timestamp,
) -> tower_usage_plans::store::Decision {
    let request = DecisionRequest {
        counter,
        throttle: throttle.map(|throttle| ThrottleRule {
            method: None,
            throttle,
        }),
        quota,
        now: now.into(),
    };
    store.decide(&request).await.unwrap()
}

pub async fn run_all(store: Arc<dyn CounterStore>) {
    quota_is_exact(&*store).await;
    throttle_refills(&*store).await;
    refusals_cost_nothing(&*store).await;
    a_refund_gives_back_the_token_and_the_unit(&*store).await;
    a_refund_after_the_period_leaves_the_new_one_alone(&*store).await;
    set_remaining_and_usage(&*store).await;
    forget_resets(&*store).await;
    history_keeps_a_hundred_days(&*store).await;
    a_new_period_kind_counts_its_days(&*store).await;
    a_first_quota_counts_its_days(&*store).await;
    add_remaining_floors_at_zero(&*store).await;
    concurrent_decisions_are_exact(store.clone()).await;
    concurrent_top_ups_are_exact(store).await;
}

async fn add_remaining_floors_at_zero(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "add");
    let now = at(T0);
    decide(store, &counter, None, Some(quota(5)), now).await;
    let add = |delta| store.add_remaining(&counter, &quota(5), now, delta);
    assert_eq!(add(500).await.unwrap(), [1, 504]);
    assert_eq!(add(-4).await.unwrap(), [1, 500]);
    assert_eq!(add(-1_000).await.unwrap(), [1, 0]);
    assert_eq!(
        decide(store, &counter, None, Some(quota(5)), now)
            .await
            .verdict,
        Verdict::QuotaExceeded
    );
    assert_eq!(add(2).await.unwrap(), [1, 2]);
    assert_eq!(
        add(i64::from(i32::MAX)).await.unwrap(),
        [1, i32::MAX as u64]
    );
    // The next period starts from the limit again.
    let tomorrow = at("2026-11-29T12:00:00Z");
    let d = decide(store, &counter, None, Some(quota(5)), tomorrow).await;
    assert_eq!(d.quota.unwrap().remaining, 4);
}

/// 1,000 concurrent `+1`s on a quota of nothing while 2,000 requests race
/// them: whatever the interleaving, exactly 1,000 are admitted in all, and
/// today's usage says so.
async fn concurrent_top_ups_are_exact(store: Arc<dyn CounterStore>) {
    let admitted = concurrent_top_ups(store.clone(), "top-ups").await;
    assert_eq!(admitted, 1_000);
    let day = "2026-11-28".parse::<Date>().unwrap();
    let counter = CounterKey::new("suite-plan", "top-ups");
    let usage = store
        .usage(&counter, Some(&quota(0)), at(T0), day, day)
        .await
        .unwrap();
    assert_eq!(usage, vec![[1_000, 0]]);
}

/// Runs 1,000 concurrent `+1`s on a quota of nothing for `key` while
/// 2,000 requests race them, then admits what is left; answers how many
/// were admitted in all.
#[allow(dead_code)]
pub async fn concurrent_top_ups(store: Arc<dyn CounterStore>, key: &str) -> u64 {
    let counter = CounterKey::new("suite-plan", key);
    let request = {
        let (store, counter) = (store.clone(), counter.clone());
        move || {
            let (store, counter) = (store.clone(), counter.clone());
            async move {
                let d = decide(&*store, &counter, None, Some(quota(0)), at(T0)).await;
                d.verdict == Verdict::Admitted
            }
        }
    };
    let top_up = || {
        let (store, counter) = (store.clone(), counter.clone());
        async move {
            store
                .add_remaining(&counter, &quota(0), at(T0), 1)
                .await
                .unwrap();
        }
    };
    super::race::admitted_while_topping_up((8, 250), request, 1_000, top_up).await
}

/// A plan that moves from DAY to WEEK counts this week's admissions, and
/// back to DAY, today's: the change never admits more than the new quota.
async fn a_new_period_kind_counts_its_days(store: &dyn CounterStore) {
    use QuotaPeriod::{Day, Week};
    let counter = CounterKey::new("suite-plan", "period-change");
    // Five a period, per `period`, at `when`.
    let five_per = |period, when| decide(store, &counter, None, Some(rule(5, period)), at(when));
    // Friday and Saturday (T0) of the week that began Monday 2026-11-23.
    for when in ["2026-11-27T10:00:00Z", "2026-11-27T11:00:00Z", T0, T0] {
        assert_eq!(five_per(Day, when).await.verdict, Verdict::Admitted);
    }
    let later = "2026-11-28T13:00:00Z";
    let week = five_per(Week, later).await;
    assert_eq!(week.verdict, Verdict::Admitted);
    assert_eq!(
        week.quota.unwrap().remaining,
        0,
        "4 of 5 were used this week"
    );
    assert_eq!(five_per(Week, later).await.verdict, Verdict::QuotaExceeded);
    let day = five_per(Day, later).await;
    assert_eq!(day.verdict, Verdict::Admitted);
    assert_eq!(day.quota.unwrap().remaining, 1, "3 of 5 were used today");
}

/// A plan's first quota counts what its key was admitted on the period's
/// days so far, without a quota: a DAY quota of 5 added after 3 requests
/// today admits 2 more. (Before: 5 more, 8 in the day.)
async fn a_first_quota_counts_its_days(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "first-quota");
    for _ in 0..3 {
        let unmetered = decide(store, &counter, None, None, at(T0)).await;
        assert_eq!(unmetered.verdict, Verdict::Admitted);
    }
    let five_a_day = || {
        decide(
            store,
            &counter,
            None,
            Some(rule(5, QuotaPeriod::Day)),
            at(T0),
        )
    };
    let first = five_a_day().await;
    assert_eq!(first.verdict, Verdict::Admitted);
    assert_eq!(first.quota.unwrap().remaining, 1, "3 of 5 were used today");
    assert_eq!(five_a_day().await.verdict, Verdict::Admitted);
    assert_eq!(five_a_day().await.verdict, Verdict::QuotaExceeded);
}

async fn quota_is_exact(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "quota-exact");
    for i in 0..3 {
        let d = decide(store, &counter, None, Some(quota(3)), at(T0)).await;
        assert_eq!(d.verdict, Verdict::Admitted);
        assert_eq!(d.quota.unwrap().remaining, 2 - i);
    }
    let d = decide(store, &counter, None, Some(quota(3)), at(T0)).await;
    assert_eq!(d.verdict, Verdict::QuotaExceeded);
    assert_eq!(d.quota.unwrap().reset_secs, 12 * 3600);
    let next_day = decide(
        store,
        &counter,
        None,
        Some(quota(3)),
        at("2026-11-29T00:00:00Z"),
    )
    .await;
    assert_eq!(next_day.verdict, Verdict::Admitted);
}

async fn throttle_refills(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "throttle");
    let throttle = Some(Throttle::new(1.0, 2).unwrap());
    let now = at(T0);
    assert_eq!(
        decide(store, &counter, throttle, None, now).await.verdict,
        Verdict::Admitted
    );
    assert_eq!(
        decide(store, &counter, throttle, None, now).await.verdict,
        Verdict::Admitted
    );
    let refused = decide(store, &counter, throttle, None, now).await;
    assert_eq!(refused.verdict, Verdict::Throttled);
    assert_eq!(refused.throttle.unwrap().retry_after_secs, 1);
    let later = at("2026-11-28T12:00:01Z");
    assert_eq!(
        decide(store, &counter, throttle, None, later).await.verdict,
        Verdict::Admitted
    );
}

async fn refusals_cost_nothing(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "free-refusals");
    let throttle = Some(Throttle::new(1.0, 1).unwrap());
    let now = at(T0);
    assert_eq!(
        decide(store, &counter, throttle, Some(quota(2)), now)
            .await
            .verdict,
        Verdict::Admitted
    );
    let throttled = decide(store, &counter, throttle, Some(quota(2)), now).await;
    assert_eq!(
        (throttled.verdict, throttled.quota.unwrap().remaining),
        (Verdict::Throttled, 1)
    );
    let later = at("2026-11-28T12:00:01Z");
    assert_eq!(
        decide(store, &counter, throttle, Some(quota(2)), later)
            .await
            .verdict,
        Verdict::Admitted
    );
    let much_later = at("2026-11-28T12:00:05Z");
    let exceeded = decide(store, &counter, throttle, Some(quota(2)), much_later).await;
    assert_eq!(
        (exceeded.verdict, exceeded.throttle.unwrap().tokens),
        (Verdict::QuotaExceeded, 1)
    );
}

/// The request of `decide`, with a method throttle when `method` is set.
fn request<'a>(
    counter: &'a CounterKey,
    method: Option<&'a str>,
    throttle: Throttle,
    quota: QuotaRule,
    now: Timestamp,
) -> DecisionRequest<'a> {
    DecisionRequest {
        counter,
        throttle: Some(ThrottleRule { method, throttle }),
        quota: Some(quota),
        now: now.into(),
    }
}

/// A refunded admission costs nothing: the bucket has its token again,
/// the quota its unit, and today's usage does not count it — for the
/// plan's bucket and a method's alike.
async fn a_refund_gives_back_the_token_and_the_unit(store: &dyn CounterStore) {
    let day = |s: &str| s.parse::<Date>().unwrap();
    // A throttle that never refills within the test: burst 1, a token a day.
    let throttle = Throttle::new(1.0 / 86_400.0, 1).unwrap();
    for (name, method) in [("refund-plan", None), ("refund-method", Some("/foo/GET"))] {
        let counter = CounterKey::new("suite-plan", name);
        let now = at(T0);
        let admitted = request(&counter, method, throttle, quota(2), now);
        let d = store.decide(&admitted).await.unwrap();
        assert_eq!(d.verdict, Verdict::Admitted, "{name}");
        let refused = store.decide(&admitted).await.unwrap();
        assert_eq!(refused.verdict, Verdict::Throttled, "{name}");
        store.refund(&admitted).await.unwrap();
        let usage = store
            .usage(
                &counter,
                Some(&quota(2)),
                now,
                day("2026-11-28"),
                day("2026-11-28"),
            )
            .await
            .unwrap();
        assert_eq!(usage, vec![[0, 2]], "{name}: nothing used after the refund");
        // The token is back (and no more than the burst: one).
        let again = request(
            &counter,
            method,
            throttle,
            quota(2),
            at("2026-11-28T12:00:01Z"),
        );
        let d = store.decide(&again).await.unwrap();
        assert_eq!(
            (d.verdict, d.quota.unwrap().remaining),
            (Verdict::Admitted, 1),
            "{name}"
        );
        // Refunds never fill the bucket past its burst.
        store.refund(&again).await.unwrap();
        store.refund(&again).await.unwrap();
        let d = store.decide(&again).await.unwrap();
        assert_eq!(d.verdict, Verdict::Admitted, "{name}");
        assert_eq!(d.throttle.unwrap().tokens, 0, "{name}: capped at the burst");
        assert_eq!(
            store.decide(&again).await.unwrap().verdict,
            Verdict::Throttled,
            "{name}: one token, the burst"
        );
    }
}

/// A refund of a decision made in a period that has ended since gives no
/// unit to the new period.
async fn a_refund_after_the_period_leaves_the_new_one_alone(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "refund-late");
    let throttle = Throttle::new(100.0, 100).unwrap();
    let yesterday = request(
        &counter,
        None,
        throttle,
        quota(1),
        at("2026-11-27T23:59:59Z"),
    );
    assert_eq!(
        store.decide(&yesterday).await.unwrap().verdict,
        Verdict::Admitted
    );
    let today = request(&counter, None, throttle, quota(1), at(T0));
    assert_eq!(
        store.decide(&today).await.unwrap().verdict,
        Verdict::Admitted
    );
    store.refund(&yesterday).await.unwrap();
    assert_eq!(
        store.decide(&today).await.unwrap().verdict,
        Verdict::QuotaExceeded
    );
}

async fn set_remaining_and_usage(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "usage");
    let now = at(T0);
    decide(store, &counter, None, Some(quota(5)), now).await;
    assert_eq!(
        store
            .set_remaining(&counter, &quota(5), now, 7)
            .await
            .unwrap(),
        [1, 7]
    );
    assert_eq!(
        decide(store, &counter, None, Some(quota(5)), now)
            .await
            .quota
            .unwrap()
            .remaining,
        6
    );
    let day = |s: &str| s.parse::<Date>().unwrap();
    let usage = store
        .usage(
            &counter,
            Some(&quota(5)),
            now,
            day("2026-11-27"),
            day("2026-11-29"),
        )
        .await
        .unwrap();
    assert_eq!(usage, vec![[0, 5], [2, 6], [0, 5]]);
    let unknown = CounterKey::new("suite-plan", "never-used");
    let usage = store
        .usage(
            &unknown,
            Some(&quota(5)),
            now,
            day("2026-11-28"),
            day("2026-11-28"),
        )
        .await
        .unwrap();
    assert_eq!(usage, vec![[0, 5]]);
}

async fn forget_resets(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "forget");
    decide(store, &counter, None, Some(quota(1)), at(T0)).await;
    store.forget(&counter).await.unwrap();
    assert_eq!(
        decide(store, &counter, None, Some(quota(1)), at(T0))
            .await
            .verdict,
        Verdict::Admitted
    );
}

async fn concurrent_decisions_are_exact(store: Arc<dyn CounterStore>) {
    let counter = CounterKey::new("suite-plan", "concurrent");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..250 {
                    let d = decide(&*store, &counter, None, Some(quota(1000)), at(T0)).await;
                    admitted += u64::from(d.verdict == Verdict::Admitted);
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    // 2,000 attempts on a quota of 1,000.
    assert_eq!(total, 1000);
}

async fn history_keeps_a_hundred_days(store: &dyn CounterStore) {
    let counter = CounterKey::new("suite-plan", "history");
    let day = |s: &str| s.parse::<Date>().unwrap();
    for when in [
        "2026-01-01T12:00:00Z",
        "2026-03-02T12:00:00Z",
        "2026-05-01T12:00:00Z",
    ] {
        decide(store, &counter, None, Some(quota(5)), at(when)).await;
    }
    let now = at("2026-05-01T12:00:00Z");
    let usage = |d: &'static str| store.usage(&counter, Some(&quota(5)), now, day(d), day(d));
    // 2026-01-01 is 120 days back: dropped. 2026-03-02 is 60 days back: kept.
    assert_eq!(usage("2026-01-01").await.unwrap(), vec![[0, 5]]);
    assert_eq!(usage("2026-03-02").await.unwrap(), vec![[1, 4]]);
    assert_eq!(usage("2026-05-01").await.unwrap(), vec![[1, 4]]);
}
