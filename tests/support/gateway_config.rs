//! The configuration most in-process gateway tests start from: one key in
//! one plan, listeners on ephemeral ports, the echo upstream.
#![allow(dead_code)]

use tower_usage_plans::gateway::{FilePlan, GatewayConfig};
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod};

/// The enabled key `key` (named "tester") in `plan`, its only key;
/// listeners on ephemeral ports; everything else as
/// `GatewayConfig::default()` has it (the echo upstream).
pub fn one_key(key: &str, plan: NewUsagePlan) -> GatewayConfig {
    GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        keys: vec![NewApiKey::new("tester").with_value(key).with_enabled(true)],
        plans: vec![FilePlan {
            plan,
            keys: vec!["tester".into()],
        }],
        ..GatewayConfig::default()
    }
}

/// A plan named "testing" with a daily quota of `limit`.
pub fn daily_quota(limit: u64) -> NewUsagePlan {
    NewUsagePlan::new("testing").with_quota(Quota::new(limit, QuotaPeriod::Day))
}
