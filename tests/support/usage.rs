//! What GetUsage says of one key today.

use jiff::tz::TimeZone;
use tower_usage_plans::UsagePlans;

/// Today's `[used, remaining]` of `key_id` in `plan_id` (today by the
/// registry's clock, in UTC), as GetUsage reports it.
pub async fn usage_today(plans: &UsagePlans, plan_id: &str, key_id: &str) -> [u64; 2] {
    let today = plans.clock().now().to_zoned(TimeZone::UTC).date();
    let usage = plans
        .usage(plan_id, Some(key_id), today, today)
        .await
        .unwrap();
    let days = &usage.values[key_id];
    assert_eq!(days.len(), 1, "one day asked, one day answered: {days:?}");
    days[0]
}
