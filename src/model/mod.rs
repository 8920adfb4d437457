//! The usage-plan resources, with serde names that match the AWS wire format.

mod key;
mod plan;
mod quota;
mod tags;
mod throttle;
mod usage;

pub(crate) use key::validate_key_value;
pub use key::{ApiKey, NewApiKey, StageKey, UsagePlanKey, MAX_KEY_VALUE_LEN, MIN_KEY_VALUE_LEN};
pub use plan::{ApiStage, NewUsagePlan, UsagePlan};
pub use quota::{Quota, QuotaPeriod};
#[cfg(feature = "admin")]
pub(crate) use throttle::by_method as throttle_by_method;
pub use throttle::Throttle;
pub use usage::Usage;

/// The largest limit, offset, burst or remaining count: AWS's `Integer`
/// (32-bit signed), which the Smithy SDKs read these fields as.
///
/// ```
/// use tower_usage_plans::{NewUsagePlan, Quota, QuotaPeriod, UsagePlans, MAX_COUNT};
///
/// let plans = UsagePlans::new();
/// assert!(plans.create_usage_plan(NewUsagePlan::new("a").with_quota(Quota::new(MAX_COUNT, QuotaPeriod::Day))).is_ok());
/// assert!(Quota::new(1, QuotaPeriod::Day).with_offset(MAX_COUNT + 1).is_err());
/// ```
pub const MAX_COUNT: u64 = i32::MAX as u64;
