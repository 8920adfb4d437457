//! The counting rules every store applies: token buckets, calendar quota
//! periods, and the per-(plan, key) counter that decides a request.
//!
//! # The rules
//!
//! This table is the one statement of the rules. [`Counter`] implements it
//! for `MemoryStore`; `src/store/redis.lua` implements it again for
//! `RedisStore`, in one script per call. The store conformance suite
//! (`tests/store_conformance.rs`) and the generated cases
//! (`tests/store_props.rs`) check that both give identical answers.
//!
//! | Call | Rule |
//! |------|------|
//! | decide | 1. With a quota: *roll* the period (below). 2. With a throttle: refill the bucket (the plan's, or the method's own) by `rate × elapsed`, up to the burst; a bucket seen for the first time is full. 3. No whole token: **Throttled**. 4. Else, with a quota and nothing remaining: **QuotaExceeded**. 5. Else **Admitted**: one token and one unit of quota spent, today's record counts one more used and the period's remaining. Without a quota the request counts all the same: the stored period (if any) counts one more used, and today's record keeps remaining 0. A refusal spends nothing. |
//! | remaining | The period's allowance (set by UpdateUsage), or else the quota's limit, less the offset in the period the plan was created in; minus what the period used; never below 0. |
//! | roll | A new period starts when the stored one has ended or its kind (DAY, WEEK, MONTH) differs from the quota's. It is empty, unless the kind changed or none was stored (a plan's first quota): then it counts what today's and the period's earlier daily records say was admitted, so a change never admits more than the new quota. The allowance is cleared. A clock that steps back keeps the current period. |
//! | set_remaining (UpdateUsage) | Roll, then the allowance becomes used + `remaining` (so exactly `remaining` are left this period; the next period starts from the limit again); today's record keeps the new remaining. |
//! | add_remaining | Roll, then set_remaining to remaining + `delta`, floored at 0 and capped at `MAX_COUNT`, in one atomic step. |
//! | refund | Gives back what an admitted decision at the same `now` spent: one token (after a refill, up to the burst), and, while the decision's period (kind and start) is still the stored one, one unit of quota, also in that day's record: one less used, and as remaining the live remaining if it is the latest day recorded, else one more. Never starts a period or a bucket. |
//! | usage | Per UTC day `[used, remaining]`: used is the admitted requests recorded that day (0 if none); remaining is today's live remaining, an earlier day's recorded remaining when it lies in the same period as the last record at or before it, else the untouched limit of that day's period; 0 without a quota. 100 days of records are kept. |
//! | forget | Drops the counter: buckets full and quota untouched again. |
//!
//! A leasing `RedisStore` (`LeaseConfig`) grants a replica slices of quota
//! and tokens to spend locally; leased units count as used until given
//! back, so it never admits more than the table allows, though it may
//! refuse for another reason (tokens out on a lease) until the slices go
//! back. Tokens out on leases count against the burst: the shared bucket
//! refills (and takes back refunded or returned tokens) only up to the
//! burst less them. A replica has at most half of a lease's units
//! (rounded up) admitted and unacknowledged; a lease its replica neither
//! gives back nor reports on is reclaimed a grace after it expires: its
//! units but that half are no longer used (that half stays used,
//! and GetUsage counts it as used), its tokens no longer count against the
//! burst, and given back later it adds nothing back (what it admitted is
//! counted against the half kept). A lease is given back and reported
//! as of when it was granted (its period, its day). A new period kind also counts, as used, the units of
//! leases of the period it replaces (if the two overlap) until they are
//! given back: the requests they admitted are not recorded yet. A request
//! decided without its quota on a counter that has a quota period takes no
//! lease (it must count in that period, and a lease could not say when).

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
