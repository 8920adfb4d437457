//! Quota periods on the UTC calendar, offsets, UpdateUsage and GetUsage,
//! all with a controlled clock.

mod support;

use std::time::Duration;

use http::StatusCode;
use jiff::civil::Date;
use jiff::Timestamp;
use support::*;
use tower_usage_plans::{
    ManualClock, NewUsagePlan, Quota, QuotaPeriod, UsagePlanLayer, UsagePlans,
};

struct Fixture {
    clock: ManualClock,
    plans: UsagePlans,
    layer: UsagePlanLayer,
    plan_id: String,
    key_id: String,
}

fn fixture(at: &str, quota: Quota) -> Fixture {
    let clock = clock(at);
    let plans = plans_with_clock(&clock);
    let (plan, key_id) = plan_with_key(&plans, NewUsagePlan::new("p").with_quota(quota), KEY);
    Fixture {
        layer: UsagePlanLayer::new(plans.clone()),
        clock,
        plans,
        plan_id: plan.id,
        key_id,
    }
}

impl Fixture {
    /// Sends requests until one is refused; returns how many were admitted.
    async fn admitted_until_refused(&self) -> u64 {
        let mut admitted = 0;
        loop {
            match get(&self.layer, KEY).await.status() {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => return admitted,
                other => panic!("unexpected {other}"),
            }
            assert!(admitted < 10_000, "quota never ran out");
        }
    }

    fn set(&self, at: &str) {
        self.clock.set(at.parse::<Timestamp>().unwrap());
    }

    async fn usage(&self, first: &str, last: &str) -> Vec<[u64; 2]> {
        let first: Date = first.parse().unwrap();
        let last: Date = last.parse().unwrap();
        let usage = self
            .plans
            .usage(&self.plan_id, Some(&self.key_id), first, last)
            .await
            .unwrap();
        usage.values[&self.key_id].clone()
    }
}

#[tokio::test]
async fn day_rolls_over_at_midnight_utc() {
    let f = fixture("2026-11-28T23:59:58Z", Quota::new(3, QuotaPeriod::Day));
    assert_eq!(f.admitted_until_refused().await, 3);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        f.admitted_until_refused().await,
        0,
        "23:59:59 is the same day"
    );
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(
        f.admitted_until_refused().await,
        3,
        "a new day at 00:00 UTC"
    );
}

#[tokio::test]
async fn week_starts_on_monday() {
    // Saturday.
    let f = fixture("2026-11-28T10:00:00Z", Quota::new(2, QuotaPeriod::Week));
    assert_eq!(f.admitted_until_refused().await, 2);
    f.set("2026-11-29T23:59:59Z"); // Sunday
    assert_eq!(f.admitted_until_refused().await, 0);
    f.set("2026-11-30T00:00:00Z"); // Monday
    assert_eq!(f.admitted_until_refused().await, 2);
}

#[tokio::test]
async fn month_end_and_leap_day() {
    let f = fixture("2024-02-28T12:00:00Z", Quota::new(2, QuotaPeriod::Month));
    assert_eq!(f.admitted_until_refused().await, 2);
    f.set("2024-02-29T23:59:59Z");
    assert_eq!(
        f.admitted_until_refused().await,
        0,
        "leap day is still February"
    );
    f.set("2024-03-01T00:00:00Z");
    assert_eq!(f.admitted_until_refused().await, 2);
    f.set("2024-12-31T23:59:59Z");
    assert_eq!(f.admitted_until_refused().await, 2);
    f.set("2025-01-01T00:00:00Z");
    assert_eq!(f.admitted_until_refused().await, 2, "year boundary");
}

#[tokio::test]
async fn offset_applies_to_the_initial_period_only() {
    let f = fixture(
        "2026-11-10T00:00:00Z",
        Quota::new(5, QuotaPeriod::Month).with_offset(3).unwrap(),
    );
    assert_eq!(f.admitted_until_refused().await, 2, "limit 5 less offset 3");
    f.set("2026-12-01T00:00:00Z");
    assert_eq!(f.admitted_until_refused().await, 5);
}

#[tokio::test]
async fn update_usage_sets_remaining_for_this_period_only() {
    let f = fixture("2026-11-28T08:00:00Z", Quota::new(5, QuotaPeriod::Day));
    assert_eq!(get(&f.layer, KEY).await.status(), StatusCode::OK);

    // Above the limit.
    let usage = f
        .plans
        .set_remaining(&f.plan_id, &f.key_id, 10)
        .await
        .unwrap();
    assert_eq!(usage.values[&f.key_id], vec![[1, 10]]);
    assert_eq!(
        (usage.start_date.as_str(), usage.end_date.as_str()),
        ("2026-11-28", "2026-11-28")
    );
    assert_eq!(f.admitted_until_refused().await, 10);

    // To zero.
    f.plans
        .set_remaining(&f.plan_id, &f.key_id, 3)
        .await
        .unwrap();
    f.plans
        .set_remaining(&f.plan_id, &f.key_id, 0)
        .await
        .unwrap();
    assert_eq!(f.admitted_until_refused().await, 0);

    // The next period starts from the limit again.
    f.set("2026-11-29T00:00:00Z");
    assert_eq!(f.admitted_until_refused().await, 5);
}

#[tokio::test]
async fn update_usage_errors_change_nothing() {
    let f = fixture("2026-11-28T08:00:00Z", Quota::new(5, QuotaPeriod::Day));
    let other = f
        .plans
        .create_usage_plan(
            NewUsagePlan::new("other").with_api_stage(tower_usage_plans::ApiStage::new("x", "y")),
        )
        .unwrap();
    let no_quota = f
        .plans
        .create_usage_plan(
            NewUsagePlan::new("nq").with_api_stage(tower_usage_plans::ApiStage::new("z", "z")),
        )
        .unwrap();
    // The fixture's plan covers every stage: the key cannot join another plan.
    let err = f
        .plans
        .add_key_to_plan(&no_quota.id, &f.key_id)
        .unwrap_err();
    assert_eq!(err.kind(), tower_usage_plans::ErrorKind::Conflict);
    let second = f
        .plans
        .create_api_key(
            tower_usage_plans::NewApiKey::new("k2")
                .with_value("second-key-0123456789")
                .with_enabled(true),
        )
        .unwrap();
    f.plans.add_key_to_plan(&no_quota.id, &second.id).unwrap();
    use tower_usage_plans::ErrorKind::*;
    for (plan, key, kind) in [
        ("nope", f.key_id.as_str(), NotFound),
        (f.plan_id.as_str(), "nope", NotFound),
        (other.id.as_str(), f.key_id.as_str(), NotFound),
        (no_quota.id.as_str(), second.id.as_str(), BadRequest),
    ] {
        assert_eq!(
            f.plans
                .set_remaining(plan, key, 1)
                .await
                .unwrap_err()
                .kind(),
            kind
        );
    }
    assert_eq!(f.admitted_until_refused().await, 5);
}

#[tokio::test]
async fn get_usage_reports_used_and_remaining_per_day() {
    let f = fixture("2026-11-26T10:00:00Z", Quota::new(10, QuotaPeriod::Week));
    for _ in 0..3 {
        get(&f.layer, KEY).await;
    }
    f.set("2026-11-28T10:00:00Z");
    for _ in 0..2 {
        get(&f.layer, KEY).await;
    }
    assert_eq!(
        f.usage("2026-11-25", "2026-11-29").await,
        vec![[0, 10], [3, 7], [0, 7], [2, 5], [0, 5]],
        "days before use show the full quota; quiet days carry the remaining"
    );
    f.set("2026-12-01T10:00:00Z");
    get(&f.layer, KEY).await;
    assert_eq!(
        f.usage("2026-11-29", "2026-12-02").await,
        vec![[0, 5], [0, 10], [1, 9], [0, 9]],
        "a new week starts from the limit"
    );
    let err = f
        .plans
        .usage(
            &f.plan_id,
            None,
            "2026-12-02".parse().unwrap(),
            "2026-12-01".parse().unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tower_usage_plans::ErrorKind::BadRequest);
}

#[tokio::test]
async fn history_keeps_at_least_ninety_days() {
    let f = fixture("2026-01-01T10:00:00Z", Quota::new(100, QuotaPeriod::Day));
    get(&f.layer, KEY).await;
    f.set("2026-03-31T10:00:00Z"); // 89 days later
    get(&f.layer, KEY).await;
    let days = f.usage("2026-01-01", "2026-03-31").await;
    assert_eq!(days.len(), 90);
    assert_eq!(days[0], [1, 99]);
    assert_eq!(days[89], [1, 99]);
}
