//! The counting rules every store applies: token buckets, calendar quota
//! periods, and the per-(plan, key) counter that decides a request.

mod bucket;
mod counter;
pub(crate) mod period;

#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use bucket::{secs_until, Bucket};
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use counter::quota_state;
pub(crate) use counter::Counter;

/// Retry-After for something that will not refill on its own (a zero rate).
pub(crate) const NEVER_SECS: u64 = 86_400;
