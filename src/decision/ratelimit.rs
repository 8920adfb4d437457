//! The IETF `draft-ietf-httpapi-ratelimit-headers` structured fields as
//! bytes: the writer of `RateLimit` and `RateLimit-Policy` values, and the
//! policy values themselves, interned. Here, below `registry`, so a plan
//! can hold its policies' values ready (built when the plan is), and the
//! layer writes the same bytes whichever way a value comes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use http::HeaderValue;
use parking_lot::Mutex;

use super::Decision;

/// What `RateLimit-Policy` says. It changes only with a plan's settings
/// (and a month's length), so its values are interned: built once, kept
/// for the life of the process, and cloned per request without an
/// allocation or a reference count. Each thread remembers the last few it
/// used; a process interns at most [`INTERNED_POLICIES`] distinct ones
/// (~100 bytes each) and builds any beyond that per request. A plan holds
/// its own ([`PolicyValues`]), so the layer needs no look-up at all when
/// the store answers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Policy {
    burst: Option<u32>,
    /// Limit and period length in seconds.
    quota: Option<(u64, u64)>,
}

/// Policies a thread remembers; a plan has one, or a few with method
/// throttles or in a month-long quota.
const POLICIES_PER_THREAD: usize = 8;

/// Distinct policies a process keeps: far more than plans' settings ever
/// take, and a bound on what interning can hold (~64 KiB).
const INTERNED_POLICIES: usize = 1024;

/// The process's interned values.
static INTERNED: OnceLock<Mutex<HashMap<Policy, &'static HeaderValue>>> = OnceLock::new();

thread_local! {
    static RECENT_POLICIES: RefCell<Vec<(Policy, HeaderValue)>> =
        RefCell::new(Vec::with_capacity(POLICIES_PER_THREAD));
}

impl Policy {
    /// The policy a decision applied.
    #[inline]
    pub(crate) fn of(decision: &Decision) -> Self {
        Self {
            burst: decision.throttle.map(|t| t.burst_limit),
            quota: decision.quota.map(|q| (q.limit, q.period_secs)),
        }
    }

    /// The value, found in the thread's recent ones, else interned, else
    /// (the process has interned its bound) built; the thread remembers
    /// it either way, so a full table costs no lock per request.
    pub(crate) fn value(self) -> Option<HeaderValue> {
        RECENT_POLICIES.with_borrow_mut(|recent| {
            if let Some((_, value)) = recent.iter().find(|(policy, _)| *policy == self) {
                return Some(value.clone());
            }
            let value = match self.interned() {
                Some(value) => value.clone(),
                None => self.field().value()?,
            };
            if recent.len() == POLICIES_PER_THREAD {
                recent.remove(0);
            }
            recent.push((self, value.clone()));
            Some(value)
        })
    }

    /// The process-wide value, interned on first use while there is room;
    /// `None` for no policy or when the process has interned its bound.
    /// Kept for the life of the process: a clone copies a pointer and a
    /// length (a static `Bytes`), without a reference count.
    pub(crate) fn interned(self) -> Option<&'static HeaderValue> {
        let mut interned = INTERNED.get_or_init(Mutex::default).lock();
        if let Some(value) = interned.get(&self) {
            return Some(value);
        }
        if interned.len() >= INTERNED_POLICIES {
            return None;
        }
        let text: &'static str = Box::leak(self.field().as_str()?.into());
        let value: &'static HeaderValue = Box::leak(Box::new(HeaderValue::from_static(text)));
        interned.insert(self, value);
        Some(value)
    }

    fn field(self) -> Field {
        // Written back to front: the quota's item, then the throttle's.
        let mut field = Field::default();
        if let Some((limit, period_secs)) = self.quota {
            field.item(b"\"quota\";q=", limit, b";w=", period_secs);
        }
        if let Some(burst) = self.burst {
            field.item(b"\"throttle\";q=", burst.into(), b";w=", 1);
        }
        field
    }
}

/// A structured-field list of at most two items, written on the stack
/// without `fmt` machinery, back to front: each number's digits come out
/// last first, so none is counted beforehand, and the names are copied as
/// fixed-size blocks (no `memcpy` calls). Items are added last first.
pub(crate) struct Field {
    buf: [u8; Field::CAPACITY],
    /// Where the written bytes start; they run to the end of `buf`.
    start: usize,
}

impl Default for Field {
    fn default() -> Self {
        Self {
            buf: [0; Field::CAPACITY],
            start: Field::CAPACITY,
        }
    }
}

/// `"00"` to `"99"`, for writing two digits a step.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

impl Field {
    /// Two items of two names (≤ 13 bytes) and two `u64`s (≤ 20 digits),
    /// with the separator.
    const CAPACITY: usize = 2 * (13 + 20 + 3 + 20) + 2;

    /// Writes a literal (its length known at compile time) before what is
    /// written.
    #[inline(always)]
    fn literal<const N: usize>(&mut self, bytes: &[u8; N]) {
        let Some(at) = self.start.checked_sub(N) else {
            return;
        };
        self.buf[at..at + N].copy_from_slice(bytes);
        self.start = at;
    }

    /// Writes `n` in decimal before what is written: four digits a step
    /// (one 64-bit division, the rest in 32 bits) while it has more, then
    /// two.
    #[inline(always)]
    fn number(&mut self, mut n: u64) {
        while n >= 10_000 {
            let Some(at) = self.start.checked_sub(4) else {
                return;
            };
            let four = (n % 10_000) as u32;
            n /= 10_000;
            let (high, low) = ((four / 100) as usize * 2, (four % 100) as usize * 2);
            self.buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[high..high + 2]);
            self.buf[at + 2..at + 4].copy_from_slice(&DIGIT_PAIRS[low..low + 2]);
            self.start = at;
        }
        loop {
            if n < 10 {
                if let Some(at) = self.start.checked_sub(1) {
                    self.buf[at] = b'0' + n as u8;
                    self.start = at;
                }
                return;
            }
            let Some(at) = self.start.checked_sub(2) else {
                return;
            };
            let pair = (n % 100) as usize * 2;
            self.buf[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
            self.start = at;
            n /= 100;
            if n == 0 {
                return;
            }
        }
    }

    /// Adds `name` `first` `second_name` `second` before the items written
    /// (items are added last first).
    #[inline(always)]
    pub(crate) fn item<const A: usize, const B: usize>(
        &mut self,
        name: &[u8; A],
        first: u64,
        second_name: &[u8; B],
        second: u64,
    ) {
        if self.start < Self::CAPACITY {
            self.literal(b", ");
        }
        self.number(second);
        self.literal(second_name);
        self.number(first);
        self.literal(name);
    }

    fn written(&self) -> &[u8] {
        &self.buf[self.start.min(Self::CAPACITY)..]
    }

    /// The list as a header value, copied once into its own buffer (one
    /// allocation); `None` when empty (no policy, no header).
    pub(crate) fn value(&self) -> Option<HeaderValue> {
        let written = Some(self.written()).filter(|w| !w.is_empty())?;
        HeaderValue::from_bytes(written).ok()
    }

    /// The list written so far; `None` when empty.
    pub(crate) fn as_str(&self) -> Option<&str> {
        let text = std::str::from_utf8(self.written()).ok()?;
        (!text.is_empty()).then_some(text)
    }
}

/// A plan's `RateLimit-Policy` values: a slot for each policy it can
/// apply (each throttle, the plan's and its method throttles', with each
/// length its quota's period can have: a month's four), filled with the
/// interned value the first time a decision applies it. Filled on first
/// use, not when the plan is built, so a plan interns only what it uses
/// (as the per-thread path does) and the process's bound is not spent on
/// months to come. A filled slot is a `&'static` value: cloning it per
/// request copies a pointer and a length.
#[derive(Debug, Default)]
pub(crate) struct PolicyValues(Box<[(Policy, PolicySlot)]>);

/// A plan's value of one policy: unset until a decision applies it, then
/// the interned value (`None` if the process's table was full).
type PolicySlot = OnceLock<Option<&'static HeaderValue>>;

/// Seconds in a day.
const DAY: u64 = 86_400;

impl PolicyValues {
    /// The slots of a plan whose throttles have `bursts` (`None`: no
    /// throttle applies) and whose quota, if any, allows `limit` per
    /// `period`.
    pub(crate) fn new(
        bursts: impl IntoIterator<Item = Option<u32>>,
        quota: Option<(u64, crate::model::QuotaPeriod)>,
    ) -> Self {
        use crate::model::QuotaPeriod;
        let lengths: &[u64] = match quota.map(|(_, period)| period) {
            None => &[0],
            Some(QuotaPeriod::Day) => &[DAY],
            Some(QuotaPeriod::Week) => &[7 * DAY],
            Some(QuotaPeriod::Month) => &[31 * DAY, 30 * DAY, 28 * DAY, 29 * DAY],
        };
        let mut slots: Vec<(Policy, PolicySlot)> = Vec::new();
        for burst in bursts {
            for &length in lengths {
                let policy = Policy {
                    burst,
                    quota: quota.map(|(limit, _)| (limit, length)),
                };
                if !slots.iter().any(|(p, _)| *p == policy) {
                    slots.push((policy, OnceLock::new()));
                }
            }
        }
        Self(slots.into())
    }

    /// The value of the policy `decision` applied, if the plan has a slot
    /// for it and the process could intern it: byte for byte the value
    /// [`Policy::value`] gives.
    #[inline]
    pub(crate) fn of(&self, decision: &Decision) -> Option<&'static HeaderValue> {
        let policy = Policy::of(decision);
        let (_, slot) = self.0.iter().find(|(p, _)| *p == policy)?;
        match slot.get() {
            Some(value) => *value,
            None => fill(slot, policy),
        }
    }
}

/// Fills a plan's slot for `policy` (once; its first decision).
#[cold]
#[inline(never)]
fn fill(slot: &PolicySlot, policy: Policy) -> Option<&'static HeaderValue> {
    *slot.get_or_init(|| policy.interned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{QuotaState, ThrottleState, Verdict};
    use crate::model::QuotaPeriod;

    #[test]
    fn numbers_are_written_in_full() {
        for n in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1000,
            86_400,
            1 << 53,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..20).map(|p| 10u64.pow(p) - 1))
        .chain((0..20).map(|p| 10u64.pow(p)))
        {
            let mut field = Field::default();
            field.item(b"\"quota\";r=", n, b";t=", u64::MAX - n);
            assert_eq!(
                field.as_str(),
                Some(format!("\"quota\";r={n};t={}", u64::MAX - n).as_str())
            );
        }
    }

    fn decision(burst: Option<u32>, quota: Option<(u64, u64)>) -> Decision {
        Decision {
            verdict: Verdict::Admitted,
            throttle: burst.map(|burst_limit| ThrottleState {
                burst_limit,
                tokens: 0,
                next_token_secs: 1,
                retry_after_secs: 0,
            }),
            quota: quota.map(|(limit, period_secs)| QuotaState {
                limit,
                remaining: 0,
                period_secs,
                reset_secs: 1,
            }),
        }
    }

    fn is_interned(policy: Policy) -> bool {
        INTERNED
            .get()
            .is_some_and(|interned| interned.lock().contains_key(&policy))
    }

    /// A plan interns a policy when a decision first applies it, not when
    /// it is built: a month-long quota does not spend the process's bound
    /// on the lengths of months to come.
    #[test]
    fn a_plan_interns_only_what_it_applies() {
        // Numbers no other test uses: the table is the process's.
        let (burst, limit) = (7_777, 987_654_321);
        let values = PolicyValues::new([Some(burst)], Some((limit, QuotaPeriod::Month)));
        let policy = |days: u64| Policy {
            burst: Some(burst),
            quota: Some((limit, days * DAY)),
        };
        assert!((28..=31).all(|days| !is_interned(policy(days))));
        let applied = decision(Some(burst), Some((limit, 30 * DAY)));
        assert!(values.of(&applied).is_some());
        assert!(is_interned(policy(30)));
        assert!([28, 29, 31]
            .into_iter()
            .all(|days| !is_interned(policy(days))));
    }

    /// A plan's ready values are the values the layer would otherwise
    /// build, for every throttle it has and each length of a month; a
    /// policy it does not have is not found (the layer builds it).
    #[test]
    fn a_plans_values_are_the_policies_values() {
        let values = PolicyValues::new([Some(20), Some(5)], Some((1000, QuotaPeriod::Month)));
        for burst in [20, 5] {
            for days in 28..=31 {
                let decision = decision(Some(burst), Some((1000, days * DAY)));
                let ready = values.of(&decision).expect("ready");
                assert_eq!(Some(ready.clone()), Policy::of(&decision).value());
                assert_eq!(
                    ready,
                    &format!(
                        "\"throttle\";q={burst};w=1, \"quota\";q=1000;w={}",
                        days * DAY
                    )
                );
            }
        }
        assert!(values
            .of(&decision(Some(6), Some((1000, 30 * DAY))))
            .is_none());
        assert!(values
            .of(&decision(Some(5), Some((999, 30 * DAY))))
            .is_none());
        assert!(values.of(&decision(Some(5), None)).is_none());

        let values = PolicyValues::new([None], Some((7, QuotaPeriod::Week)));
        assert_eq!(
            values.of(&decision(None, Some((7, 7 * DAY)))).unwrap(),
            "\"quota\";q=7;w=604800"
        );
        let values = PolicyValues::new([Some(3)], None);
        assert_eq!(
            values.of(&decision(Some(3), None)).unwrap(),
            "\"throttle\";q=3;w=1"
        );
        // No throttle and no quota: no policy, no value.
        assert!(PolicyValues::new([None], None)
            .of(&decision(None, None))
            .is_none());
    }
}
