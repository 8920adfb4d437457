//! The counting rules every store applies: token buckets, calendar quota
//! periods, and the per-(plan, key) counter that decides a request.

mod bucket;
mod counter;
pub(crate) mod period;

pub(crate) use counter::Counter;

/// Retry-After for something that will not refill on its own (a zero rate).
pub(crate) const NEVER_SECS: u64 = 86_400;
