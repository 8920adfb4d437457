use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Daily usage of a plan's keys: for each key id, one `[used, remaining]`
/// pair per UTC day from `start_date` to `end_date`. AWS `Usage`.
///
/// ```
/// use tower_usage_plans::Usage;
///
/// let usage: Usage = serde_json::from_str(
///     r#"{"usagePlanId":"p","startDate":"2026-01-01","endDate":"2026-01-01","values":{"k":[[3,7]]}}"#,
/// ).unwrap();
/// assert_eq!(usage.values["k"], vec![[3, 7]]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Usage {
    /// The plan.
    pub usage_plan_id: String,
    /// First day, `yyyy-MM-dd`.
    pub start_date: String,
    /// Last day (inclusive), `yyyy-MM-dd`.
    pub end_date: String,
    /// Paging token; present only when more keys follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// Key id → one `[used, remaining]` per day.
    pub values: BTreeMap<String, Vec<[u64; 2]>>,
}
