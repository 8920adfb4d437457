//! `redis.lua`'s fast paths (a lease's report, a lease renewed, a decision
//! among many, with a quota or a throttle alone) do what the
//! rest of the script does for them: the same calls, made by the script as
//! shipped and by the script with those paths cut out, each on a counter of
//! its own, must answer alike and leave the two counters alike, field for
//! field, whether a fast path takes the call or hands it on.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::*;
use crate::model::Quota;

use super::{day, redis_server};

/// The holder's record of the leases (`h:<16 characters>:<bucket>`).
const RECORD: &str = "h:0123456789abcdef:";

/// The script without its fast paths.
fn general_only() -> String {
    ["report", "lease", "decide"]
        .iter()
        .fold(SCRIPT.to_owned(), |script, path| {
            let (head, rest) = script
                .split_once(&format!("-- fast {path}: begin"))
                .expect("the fast path's start");
            let (_, tail) = rest
                .split_once(&format!("-- fast {path}: end"))
                .expect("its end");
            format!("{head}{tail}")
        })
}

/// The bucket the renewal tests lease tokens of: 7 every 3 seconds (its
/// refills are fractions no decimal writes exactly), a burst of 1,000.
fn throttled(args: &mut Args) {
    args.bucket = "b:".into();
    args.rate = 7.0 / 3.0;
    args.burst = 1_000;
}

/// Both scripts, on a counter each, and the calls made on them.
struct Twins {
    scripts: [Script; 2],
    keys: [String; 2],
    connection: redis::aio::MultiplexedConnection,
    quota: QuotaRule,
    start: Timestamp,
    /// The last call id given.
    calls: u64,
    /// The holder's record the calls name.
    record: &'static str,
    /// Whether the last call took a fast path: the shipped script read no
    /// single field (`HGET`), which every general path does.
    fast: bool,
}

impl Twins {
    /// Makes the call with both scripts: the answers and the counters
    /// must be alike. The answer's numbers.
    async fn call(&mut self, op: &str, args: &Args, step: &str) -> Vec<i64> {
        let mut answers = Vec::new();
        for (script, key) in self.scripts.iter().zip(&self.keys) {
            if answers.is_empty() {
                let () = redis::cmd("CONFIG")
                    .arg("RESETSTAT")
                    .query_async(&mut self.connection)
                    .await
                    .unwrap();
            }
            let answer: redis::Value = args
                .invocation(script, key, None, op)
                .invoke_async(&mut self.connection)
                .await
                .unwrap();
            if answers.is_empty() {
                let stats: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut self.connection)
                    .await
                    .unwrap();
                self.fast = !stats.contains("cmdstat_hget:");
            }
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1], "{step}: the answers differ");
        let [fast, general] = self.counters().await;
        assert_eq!(fast, general, "{step}: the counters differ");
        match answers.swap_remove(0) {
            redis::Value::Array(items) => items
                .into_iter()
                .map(|item| i64::from_redis_value(item).unwrap_or(0))
                .collect(),
            other => vec![i64::from_redis_value(other).unwrap()],
        }
    }

    /// Arguments as of `ms` after the start.
    fn args(&self, ms: i64) -> Args {
        let at = self.start + jiff::SignedDuration::from_millis(ms);
        Args::new(UnixNanos::from(at), Some(&self.quota))
    }

    /// A new lease at `ms` (nothing given back, no bucket).
    async fn lease(&mut self, ms: i64, step: &str) -> Unspent {
        let nothing = (Unspent::default(), 0);
        let (_, lease) = self
            .renew(ms, nothing, ((10_000, 0), false), None, step)
            .await;
        assert!(lease.units > 0, "{step}: a lease was granted: {lease:?}");
        lease
    }

    /// A report at `ms` of `n` requests `lease` admitted, as call `call`
    /// (a new one when `None`), with the holder's oldest open call `oldest`
    /// (the call itself when `None`).
    async fn report(
        &mut self,
        ms: i64,
        lease: Unspent,
        n: u64,
        calls: (Option<u64>, Option<u64>),
        step: &str,
    ) -> Vec<i64> {
        let args = self.report_args(ms, lease, n, calls);
        self.call("report", &args, step).await
    }

    /// The arguments of [`report`](Self::report).
    fn report_args(
        &mut self,
        ms: i64,
        lease: Unspent,
        n: u64,
        (call, oldest): (Option<u64>, Option<u64>),
    ) -> Args {
        let call = call.unwrap_or_else(|| {
            self.calls += 1;
            self.calls
        });
        let mut args = self.args(ms);
        args.record = self.record.into();
        args.unspent = Unspent {
            units: 0,
            admitted: n,
            ..lease
        };
        (args.call, args.oldest_open_call) = (call, oldest.unwrap_or(call));
        args
    }

    /// `op` with `args` by one script (0: as shipped, 1: the general
    /// path) on its counter, unwatched: the answer's numbers.
    async fn alone(&mut self, script: usize, op: &str, args: &Args) -> Vec<i64> {
        args.invocation(&self.scripts[script], &self.keys[script], None, op)
            .invoke_async(&mut self.connection)
            .await
            .unwrap()
    }

    /// Both counters, field for field.
    async fn counters(&mut self) -> [HashMap<String, String>; 2] {
        let fast = self.connection.hgetall(&self.keys[0]).await.unwrap();
        let general = self.connection.hgetall(&self.keys[1]).await.unwrap();
        [fast, general]
    }
}

const NEW: (Option<u64>, Option<u64>) = (None, None);

impl Twins {
    /// Two scripts, on counters of their own (named after `name`), with a
    /// daily quota of `limit`.
    async fn start(server: &redis_server::Redis, name: &str, limit: u64) -> Self {
        let client = redis::Client::open(server.url()).unwrap();
        Twins {
            scripts: [Script::new(SCRIPT), Script::new(&general_only())],
            keys: [
                format!("t:{{fast-{name}}}"),
                format!("t:{{general-{name}}}"),
            ],
            connection: client.get_multiplexed_async_connection().await.unwrap(),
            quota: QuotaRule {
                quota: Quota::new(limit, QuotaPeriod::Day),
                plan_created: 0,
            },
            start: Timestamp::now(),
            calls: 0,
            record: RECORD,
            fast: false,
        }
    }

    /// The counter's first decision, at the start, with the bucket.
    async fn first_decision(&mut self) {
        let mut args = self.args(0);
        throttled(&mut args);
        self.call("decide", &args, "decide").await;
    }

    /// A lease taken at `ms` (with the bucket's tokens when `bucket`),
    /// asking for `want`, giving back `back` of which `spent` requests
    /// were admitted (as many units and tokens spent): the answer, and the
    /// new lease (default when none was granted). `call`: the call id to
    /// send again.
    async fn renew(
        &mut self,
        ms: i64,
        (back, spent): (Unspent, u64),
        (want, bucket): ((u64, u64), bool),
        call: Option<u64>,
        step: &str,
    ) -> (Vec<i64>, Unspent) {
        let call = call.unwrap_or_else(|| {
            self.calls += 1;
            self.calls
        });
        let mut args = self.args(ms);
        if bucket {
            throttled(&mut args);
        }
        args.known = true;
        args.want = want;
        args.record = self.record.into();
        args.lease_us = 1_000_000;
        args.unspent = Unspent {
            units: back.units.saturating_sub(spent),
            tokens: back.tokens.saturating_sub(spent),
            admitted: spent,
            ..back
        };
        (args.call, args.oldest_open_call) = (call, call);
        let answer = self.call("lease", &args, step).await;
        let (_, start, _, _) = args.period.unwrap();
        let granted = answer.get(3).is_some_and(|units| *units > 0);
        let lease = match granted {
            true => Unspent {
                units: answer[3] as u64,
                granted: answer[3] as u64,
                tokens: answer[4] as u64,
                granted_tokens: answer[4] as u64,
                cap: answer[9] as u64,
                gen: answer[8] as u64,
                period_start: start,
                day: args.day,
                epoch: answer[5] as u64,
                ..Unspent::default()
            },
            false => Unspent::default(),
        };
        (answer, lease)
    }
}

#[tokio::test]
async fn a_renewal_on_the_fast_path_does_what_the_general_path_does() {
    let server = redis_server::Redis::start();
    let mut twins = Twins::start(&server, "renewals", 1_000_000).await;
    let none = (Unspent::default(), 0);
    twins.first_decision().await;
    // What the leases ask for: units and tokens, with the bucket.
    let (hot, warm) = (((10_000, 400), true), ((10_000, 100), true));
    let (more, bare) = (((20_000, 300), true), ((100, 0), false));
    let small_ask = ((1_000, 10), true);
    let (_, first) = twins.renew(1, none, hot, None, "a first lease").await;
    assert!(first.units > 0 && first.tokens > 0, "{first:?}");
    assert!(!twins.fast, "nothing given back: the general path");

    // Renewals the fast path takes: spent in part, spent out, none spent;
    // one whose record keeps another lease of the holder's (not emptied);
    // one with the clock a little behind the bucket's.
    let (_, second) = twins
        .renew(500, (first, 50), hot, None, "spent in part")
        .await;
    assert!(twins.fast, "spent in part: the fast path");
    let (answer, third) = twins
        .renew(900, (second, 200), more, None, "spent more")
        .await;
    assert_eq!(answer[0], 0, "admitted: {answer:?}");
    assert!(twins.fast, "spent more: the fast path");
    let (_, extra) = twins
        .renew(910, none, ((5, 5), true), None, "another lease beside it")
        .await;
    let (_, fourth) = twins
        .renew(950, (third, 0), warm, None, "none spent, one kept")
        .await;
    assert!(twins.fast, "none spent: the fast path");
    let (_, fifth) = twins
        .renew(940, (fourth, 3), warm, None, "the clock behind")
        .await;
    assert!(twins.fast, "the clock behind: the fast path");
    twins
        .renew(960, (extra, 5), warm, None, "the other one back")
        .await;
    assert!(twins.fast, "the other lease: the fast path");

    // Sent again: not applied twice.
    let again = Some(twins.calls);
    let (answer, _) = twins
        .renew(970, (extra, 5), warm, again, "sent again")
        .await;
    assert_eq!(answer[0], 5, "settled as applied: {answer:?}");

    // Handed on: no token wanted (none granted), a generation Redis does
    // not know (reclaimed), a lease near the end of the quota.
    twins
        .renew(
            980,
            (fifth, 1),
            ((10_000, 0), true),
            None,
            "no token wanted",
        )
        .await;
    assert!(!twins.fast, "no grant: handed on");
    let (_, sixth) = twins.renew(985, none, warm, None, "a new lease").await;
    let reclaimed = Unspent {
        gen: sixth.gen + 7,
        ..sixth
    };
    twins
        .renew(990, (reclaimed, 1), warm, None, "an unknown generation")
        .await;
    assert!(!twins.fast, "reclaimed: handed on");
    let (_, unthrottled) = twins
        .renew(995, none, bare, None, "a lease without the bucket")
        .await;
    let (_, plain) = twins
        .renew(1_000, (unthrottled, 2), bare, None, "renewed without it")
        .await;
    assert!(twins.fast, "without a bucket: the fast path");

    // UpdateUsage starts a new epoch: the lease before it is handed on.
    let mut set = twins.args(1_010);
    set.set_to = 9;
    twins.call("set", &set, "UpdateUsage").await;
    let (_, small) = twins
        .renew(1_020, (plain, 1), bare, None, "the epoch before's")
        .await;
    assert!(!twins.fast, "another epoch: handed on");
    assert_eq!(small.units, 1, "an eighth of what remains: {small:?}");
    twins
        .renew(1_030, (small, 0), bare, None, "near the limit")
        .await;
    assert!(!twins.fast, "no slice left to grant: handed on");

    // Past the lifetime and the grace: a reclaim is due.
    let late = 3_000 + micros(lease::RECLAIM_GRACE) / 1_000;
    twins
        .renew(
            late,
            (sixth, 1),
            ((10_000, 50), true),
            None,
            "with a reclaim due",
        )
        .await;
    assert!(!twins.fast, "a reclaim due: handed on");

    // A counter of its own: a renewal with the clock behind the lease it
    // gives back expires first, so Redis may reclaim it sooner ('hx').
    let mut twins = Twins::start(&server, "behind", 1_000_000).await;
    twins.first_decision().await;
    let (_, lease) = twins.renew(100, none, small_ask, None, "a lease").await;
    twins
        .renew(50, (lease, 1), small_ask, None, "renewed, the clock behind")
        .await;
    assert!(twins.fast, "the clock behind: the fast path");
}

#[tokio::test]
async fn a_renewal_with_a_reclaim_due_takes_the_fast_path_unless_one_is_reclaimable() {
    day::clear_of_midnight();
    let server = redis_server::Redis::start();
    let mut twins = Twins::start(&server, "due", 1_000_000).await;
    let none = (Unspent::default(), 0);
    let ask = ((10_000, 100), true);
    twins.first_decision().await;
    // A reclaim is due from 1,350 ms (the first lease's expiry and grace).
    let (_, first) = twins.renew(100, none, ask, None, "a lease").await;
    let (_, second) = twins.renew(500, (first, 5), ask, None, "renewed").await;
    assert!(twins.fast, "renewed: the fast path");
    // Another holder's lease, live until 1,950 ms; another of this
    // holder's, which keeps its record live until 1,860 ms.
    const OTHER: &str = "h:fedcba9876543210:";
    twins.record = OTHER;
    let (_, theirs) = twins.renew(700, none, ask, None, "another holder's").await;
    twins.record = RECORD;
    let (_, beside) = twins.renew(610, none, ask, None, "one beside it").await;
    twins
        .renew(1_400, (second, 5), ask, None, "a reclaim due, none to make")
        .await;
    assert!(twins.fast, "nothing to reclaim: the fast path");
    // The other holder renews (live until 3,050 ms); this holder's record
    // (the lease renewed at 1,400 ms) expires at 2,400 ms.
    twins.record = OTHER;
    twins
        .renew(1_800, (theirs, 1), ask, None, "theirs renewed")
        .await;
    twins.record = RECORD;
    let (_, again) = twins
        .renew(2_700, (beside, 1), ask, None, "its own record to reclaim")
        .await;
    assert!(!twins.fast, "its own record to reclaim: handed on");
    twins
        .renew(
            3_200,
            (again, 1),
            ask,
            None,
            "the other holder's to reclaim",
        )
        .await;
    assert!(!twins.fast, "a record to reclaim: handed on");
}

/// A lease whose holder was alive but late (Redis stalled past the lease's
/// expiry and grace, and a decision reclaimed it first) gives back what
/// the bucket has not refilled of its unspent tokens since the reclaim, by
/// the bucket's own clock: right after it, all (written off, they cost a
/// throttle-only key minutes of refusals after a stall); later, less the
/// refill (given back whole, they would pass the burst); after a report
/// (which gives none back) still, with the return.
#[tokio::test]
async fn a_reclaimed_lease_given_back_late_returns_what_the_bucket_has_not_refilled() {
    day::clear_of_midnight();
    let server = redis_server::Redis::start();
    let bucket = |fields: &HashMap<String, String>| -> f64 { fields["b::t"].parse().unwrap() };
    // (When the bucket's clock is moved on before the give-back, a report
    // first or not, and the tokens expected back, less at most one to
    // rounding.)
    for (moved_to_ms, report_first, back) in [(None, false, 400.0), (Some(8_000), true, 386.0)] {
        let name = format!("late-{moved_to_ms:?}");
        let mut twins = Twins::start(&server, &name, 1_000_000).await;
        let none = (Unspent::default(), 0);
        twins.first_decision().await;
        // A lease of 400 of the bucket's ~1,000 tokens, expired at
        // 1,100 ms, reclaimable from 1,350 ms.
        let (_, lease) = twins
            .renew(100, none, ((10_000, 400), true), None, "a lease")
            .await;
        assert_eq!(lease.tokens, 400, "{lease:?}");
        twins
            .call("decide", &decision(&twins, 2_000), "reclaims")
            .await;
        let reclaimed = bucket(&twins.counters().await[0]);
        assert!(reclaimed < 700.0, "{reclaimed}");
        // Another request moves the bucket's clock on: 6 s of refill at
        // 7/3 a second, 14 tokens, are not given back (by the report's
        // time, a second later, it would be 16).
        if let Some(ms) = moved_to_ms {
            twins
                .call("decide", &decision(&twins, ms), "a refill")
                .await;
        }
        if report_first {
            let mut args = twins.report_args(moved_to_ms.unwrap_or(0) + 1_000, lease, 0, NEW);
            throttled(&mut args);
            twins.call("report", &args, "a report of it").await;
        }
        // Given back whole, none spent, as of its grant.
        let mut args = twins.args(100);
        throttled(&mut args);
        args.known = true;
        args.record = twins.record.into();
        args.unspent = lease;
        twins.calls += 1;
        (args.call, args.oldest_open_call) = (twins.calls, twins.calls);
        let before_return = bucket(&twins.counters().await[0]);
        twins.call("return", &args, "given back late").await;
        let returned = bucket(&twins.counters().await[0]) - before_return;
        assert!(
            (back - 1.0..=back).contains(&returned),
            "{name}: {returned} back"
        );
        // The next day, the bucket has refilled their room many times
        // over: the reclaim's mark goes.
        let mark = |fields: &HashMap<String, String>| fields.keys().any(|f| f.starts_with("hz:"));
        assert!(mark(&twins.counters().await[0]), "{name}: marked");
        twins
            .call("decide", &decision(&twins, 86_400_000), "the next day")
            .await;
        assert!(
            !mark(&twins.counters().await[0]),
            "{name}: the mark is gone"
        );
    }
}

#[tokio::test]
async fn a_report_on_the_fast_path_does_what_the_general_path_does() {
    let server = redis_server::Redis::start();
    let mut twins = Twins::start(&server, "reports", 1_000_000).await;
    assert_ne!(SCRIPT, general_only(), "the fast path is cut out");

    // A counter, and a lease of it.
    let decide = twins.args(0);
    twins.call("decide", &decide, "decide").await;
    let lease = twins.lease(1, "lease").await;

    // Reports the fast path takes: the record keeps older calls while one
    // is open, then drops them. One sent again answers as the first time.
    twins.report(10, lease, 3, NEW, "a report").await;
    assert!(twins.fast, "a report: the fast path");
    let first = twins.calls;
    let open = (None, Some(first));
    twins
        .report(20, lease, 5, open, "a report, one open before it")
        .await;
    let again = (Some(twins.calls), Some(first));
    let answer = twins
        .report(30, lease, 5, again, "a report sent again")
        .await;
    assert_eq!(answer[0], 0, "{answer:?}");
    let answer = twins.report(40, lease, 7, NEW, "a third report").await;
    assert_eq!(
        answer[2] as u64,
        lease.units - 15,
        "leased less the reports: {answer:?}"
    );

    // Handed on: a lease of a generation Redis does not know (reclaimed),
    // and one whose day has no record.
    let reclaimed = Unspent {
        gen: lease.gen + 1,
        ..lease
    };
    twins
        .report(50, reclaimed, 2, NEW, "a reclaimed lease's")
        .await;
    let other_day = Unspent {
        day: lease.day - 1,
        ..lease
    };
    twins.report(60, other_day, 2, NEW, "another day's").await;

    // UpdateUsage starts a new epoch: a report of the lease before it is
    // handed on, one of a lease of the new epoch is not.
    let mut set = twins.args(70);
    set.set_to = 500_000;
    twins.call("set", &set, "UpdateUsage").await;
    twins.report(80, lease, 4, NEW, "the epoch before's").await;
    let renewed = twins.lease(90, "a lease of the new epoch").await;
    assert!(renewed.epoch > lease.epoch, "{renewed:?} after {lease:?}");
    twins.report(100, renewed, 9, NEW, "the new epoch's").await;

    // Past the lease's lifetime and the grace: a reclaim is due, which the
    // general path does; a report of the lease it reclaimed is handed on.
    let late = 1_000 + micros(lease::RECLAIM_GRACE) / 1_000 + 100;
    twins
        .report(late, renewed, 1, NEW, "with a reclaim due")
        .await;
    twins
        .report(late + 10, renewed, 1, NEW, "after the reclaim")
        .await;
}

/// Reports of `reports` (each a counter's twins and a report's arguments)
/// sent together by the shipped script, then alone those it hands back, and
/// each alone by the general path: the answers (the first call's as
/// well) and the counters must be alike. Which went together.
async fn reports_together(reports: &mut [(&mut Twins, Args)], step: &str) -> Vec<bool> {
    let answers = sent_together(reports).await;
    assert_eq!(answers.len(), reports.len(), "{step}: an answer each");
    let mut together = Vec::new();
    for ((twins, args), answer) in reports.iter_mut().zip(answers) {
        together.push(!answer.is_empty());
        let answer = match answer.is_empty() {
            true => twins.alone(0, "report", args).await,
            false => answer,
        };
        let general = twins.alone(1, "report", args).await;
        assert_eq!(answer, general, "{step}: the answers differ");
        let [fast, general] = twins.counters().await;
        assert_eq!(fast, general, "{step}: the counters differ");
    }
    together
}

/// The shipped script's answers to a `"reports"` call of `reports`,
/// watched as on one server (Redis applied none of the replica's calls it
/// did not answer).
async fn sent_together(reports: &mut [(&mut Twins, Args)]) -> Vec<Vec<i64>> {
    let recovery = Recovery::new("t:");
    let watch = Watch {
        marker: Arc::from("m"),
        field: Arc::from("replica:m"),
        answered: 0,
        all: 0,
    };
    let batch: Vec<reports::Report> = reports
        .iter()
        .map(|(twins, args)| reports::Report {
            key: twins.keys[0].clone(),
            args: args.clone(),
        })
        .collect();
    let mut connection = reports[0].0.connection.clone();
    reports::invocation(&reports[0].0.scripts[0], &batch, &recovery, &watch)
        .invoke_async(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn reports_sent_together_do_what_each_does_alone() {
    let server = redis_server::Redis::start();
    let mut counters = Vec::new();
    for name in ["one", "two", "three"] {
        let mut twins = Twins::start(&server, &format!("together-{name}"), 1_000_000).await;
        let decide = twins.args(0);
        twins.call("decide", &decide, "decide").await;
        let lease = twins.lease(1, "lease").await;
        counters.push((twins, lease));
    }
    let [(one, lease_one), (two, lease_two), (three, lease_three)] = &mut counters[..] else {
        unreachable!()
    };

    // The common reports, one of each counter's lease (each its call 2,
    // as a replica sends them: the holder's oldest open call shared).
    let oldest = (None, Some(2));
    let reports = [
        one.report_args(10, *lease_one, 3, oldest),
        two.report_args(11, *lease_two, 1, oldest),
        // More than a second after the first: a clock of its own.
        three.report_args(1_200, *lease_three, 7, oldest),
    ];
    let sent_again = reports[0].clone();
    let [a, b, c] = reports;
    let together = reports_together(&mut [(one, a), (two, b), (three, c)], "three reports").await;
    assert_eq!(together, [true, true, true]);

    // Handed back, to go alone: one sent again (applied once), one of a
    // lease Redis reclaimed; the common one after them still goes.
    let reclaimed = Unspent {
        gen: lease_two.gen + 1,
        ..*lease_two
    };
    let b = two.report_args(20, reclaimed, 2, oldest);
    let c = three.report_args(1_210, *lease_three, 4, oldest);
    let together = reports_together(
        &mut [(one, sent_again), (two, b), (three, c)],
        "one sent again, one reclaimed",
    )
    .await;
    assert_eq!(together, [false, false, true]);

    // A replica's copy ahead of the counter (Redis went back to older
    // data): that report is refused (6) and the ones after it handed
    // back, nothing written.
    let before = [one.counters().await, three.counters().await];
    let first = two.report_args(1_220, *lease_two, 1, oldest);
    let mut ahead = one.report_args(1_230, *lease_one, 1, oldest);
    ahead.seen = Some(Seen {
        period: ahead.stored_period().unwrap(),
        used: 1_000_000,
        allow: -1,
        epoch: lease_one.epoch,
        others: 0,
        today: (0, 0),
    });
    let next = three.report_args(1_240, *lease_three, 1, oldest);
    let answers = sent_together(&mut [(two, first), (one, ahead), (three, next)]).await;
    assert_eq!(answers[0][0], 0, "the first applied: {answers:?}");
    assert_eq!(answers[1..], [vec![ROLLED_BACK], vec![]]);
    assert_eq!(before, [one.counters().await, three.counters().await]);
}

/// Decisions of `decisions` (each a counter's twins and a decision's
/// arguments) made together by the shipped script, then alone those it
/// hands back, and each alone by the general path: the answers and the
/// counters must be alike. Which went together, and each verdict.
async fn decisions_together(decisions: &mut [(&mut Twins, Args)], step: &str) -> Vec<(bool, i64)> {
    let answers = decided_together(decisions).await;
    assert_eq!(answers.len(), decisions.len(), "{step}: an answer each");
    let mut together = Vec::new();
    for ((twins, args), answer) in decisions.iter_mut().zip(answers) {
        let went = answer != redis::Value::Array(vec![]);
        let answer = match went {
            false => args
                .invocation(&twins.scripts[0], &twins.keys[0], None, "decide")
                .invoke_async(&mut twins.connection)
                .await
                .unwrap(),
            true => answer,
        };
        together.push((went, verdict(&answer)));
        let general: redis::Value = args
            .invocation(&twins.scripts[1], &twins.keys[1], None, "decide")
            .invoke_async(&mut twins.connection)
            .await
            .unwrap();
        assert_eq!(answer, general, "{step}: the answers differ");
        let [fast, general] = twins.counters().await;
        assert_eq!(fast, general, "{step}: the counters differ");
    }
    together
}

/// The shipped script's answers to a `"decides"` call of `decisions`,
/// watched as on one server, its marker there.
async fn decided_together(decisions: &mut [(&mut Twins, Args)]) -> Vec<redis::Value> {
    let recovery = Recovery::new("t:");
    let watch = Watch {
        marker: Arc::from("m"),
        field: Arc::from("replica:m"),
        answered: 0,
        all: 0,
    };
    let mut connection = decisions[0].0.connection.clone();
    let () = connection.set(&recovery.marker_key, "m").await.unwrap();
    let batch: Vec<(&str, &Args)> = decisions
        .iter()
        .map(|(twins, args)| (twins.keys[0].as_str(), args))
        .collect();
    decides::invocation(&decisions[0].0.scripts[0], &batch, &recovery, &watch)
        .invoke_async(&mut connection)
        .await
        .unwrap()
}

/// A decision's verdict (its answer's first number).
fn verdict(answer: &redis::Value) -> i64 {
    match answer {
        redis::Value::Array(items) => i64::from_redis_value_ref(&items[0]).unwrap(),
        other => panic!("not a decision's answer: {other:?}"),
    }
}

/// A decision at `ms` of `twins`' counter, with the bucket.
fn decision(twins: &Twins, ms: i64) -> Args {
    let mut args = twins.args(ms);
    throttled(&mut args);
    args.known = true;
    args
}

#[tokio::test]
async fn decisions_made_together_do_what_each_does_alone() {
    day::clear_of_midnight();
    let server = redis_server::Redis::start();
    let mut counters = Vec::new();
    for (name, limit) in [("one", 1_000_000), ("two", 2), ("three", 1_000_000)] {
        let mut twins = Twins::start(&server, &format!("decided-{name}"), limit).await;
        twins.first_decision().await;
        counters.push(twins);
    }
    let [one, two, three] = &mut counters[..] else {
        unreachable!()
    };

    // The common decisions: admitted, each refilling its bucket, one a
    // second later with a clock of its own; then the second counter's
    // quota (2) runs out: refused (2), its bucket still written.
    let (a, b, c) = (decision(one, 10), decision(two, 11), decision(three, 1_200));
    let together =
        decisions_together(&mut [(one, a), (two, b), (three, c)], "three admitted").await;
    assert_eq!(together, [(true, 0), (true, 0), (true, 0)]);
    let (a, b) = (decision(one, 20), decision(two, 21));
    let together = decisions_together(&mut [(one, a), (two, b)], "quota spent").await;
    assert_eq!(together, [(true, 0), (true, 2)]);

    // Throttled (1): a bucket emptied.
    let mut empty = decision(three, 1_300);
    empty.burst = 1;
    empty.rate = 0.001;
    let mut next = empty.clone();
    (next.now_us, next.now) = (empty.now_us + 1, empty.now);
    let a = decision(one, 30);
    let together = decisions_together(&mut [(three, empty), (one, a)], "bucket of one").await;
    assert_eq!(together, [(true, 0), (true, 0)]);
    let together = decisions_together(&mut [(three, next)], "bucket emptied").await;
    assert_eq!(together, [(true, 1)]);

    // Handed back, nothing written: a counter never decided, and one on a
    // new day (a new period); the common one after them still goes.
    let mut fresh = Twins::start(&server, "decided-fresh", 1_000_000).await;
    let new_day = decision(one, 86_400_000);
    let (mut f, c) = (decision(&fresh, 40), decision(three, 2_000));
    f.known = false;
    let together = decisions_together(
        &mut [(&mut fresh, f), (one, new_day), (three, c)],
        "fresh and a new day",
    )
    .await;
    assert_eq!(together, [(false, 0), (false, 0), (true, 0)]);
    let fresh_then = decision(&fresh, 60);
    let together = decisions_together(&mut [(&mut fresh, fresh_then)], "then common").await;
    assert_eq!(together, [(true, 0)]);

    // A replica's copy ahead of the counter (Redis went back to older
    // data): refused (6), nothing written; the others still go.
    let before = three.counters().await;
    let mut ahead = decision(three, 2_100);
    ahead.seen = Some(Seen {
        period: ahead.stored_period().unwrap(),
        used: 1_000_000,
        allow: -1,
        epoch: 1,
        others: 0,
        today: (0, 0),
    });
    let f = decision(&fresh, 50);
    let answers = decided_together(&mut [(three, ahead), (&mut fresh, f)]).await;
    assert_eq!(verdict(&answers[0]), ROLLED_BACK, "{answers:?}");
    assert_ne!(answers[1], redis::Value::Array(vec![]), "the next went");
    assert_eq!(before, three.counters().await);

    // No expiry set by the common decision: the call that started today's
    // record set the counter's, which outlives the history kept.
    let ttl: i64 = three.connection.ttl(&three.keys[0]).await.unwrap();
    assert!(ttl > 100 * DAY_SECS, "{ttl} s");
}

/// A decision at `ms` of `twins`' counter by a plan with the bucket and no
/// quota; `known`: the replica saw the counter before.
fn throttle_only(twins: &Twins, ms: i64, known: bool) -> Args {
    Args {
        period: None,
        known,
        ..decision(twins, ms)
    }
}

#[tokio::test]
async fn a_throttle_without_a_quota_decided_together_does_what_it_does_alone() {
    let server = redis_server::Redis::start();
    let mut one = Twins::start(&server, "throttle-one", 1).await;
    let mut two = Twins::start(&server, "throttle-two", 1).await;
    let mut metered = Twins::start(&server, "throttle-metered", 1_000_000).await;

    // A counter never decided goes alone (it starts today's record).
    let (a, b) = (throttle_only(&one, 0, false), throttle_only(&two, 1, false));
    let together = decisions_together(&mut [(&mut one, a), (&mut two, b)], "first").await;
    assert_eq!(together, [(false, 0), (false, 0)]);

    // Then together, beside a decision with a quota: admitted, whatever
    // the twins' quota (1) says, as it is not the plan's.
    metered.first_decision().await;
    for round in 0..3 {
        let ms = 10 + round * 10;
        let (a, b, c) = (
            throttle_only(&one, ms, true),
            throttle_only(&two, ms + 1, true),
            decision(&metered, ms + 2),
        );
        let together = decisions_together(
            &mut [(&mut one, a), (&mut metered, c), (&mut two, b)],
            &format!("round {round}"),
        )
        .await;
        assert_eq!(together, [(true, 0), (true, 0), (true, 0)], "round {round}");
    }

    // Throttled (1): a bucket of one emptied.
    let mut empty = throttle_only(&one, 100, true);
    (empty.burst, empty.rate) = (1, 0.001);
    let mut next = empty.clone();
    next.now_us += 1;
    let together = decisions_together(&mut [(&mut one, empty)], "bucket of one").await;
    assert_eq!(together, [(true, 0)]);
    let together = decisions_together(&mut [(&mut one, next)], "bucket emptied").await;
    assert_eq!(together, [(true, 1)]);

    // A counter with a quota period (its plan had a quota) counts each
    // request in it, together too.
    let before = metered.counters().await[0]["used"].clone();
    let unmetered = throttle_only(&metered, 200, true);
    let together = decisions_together(&mut [(&mut metered, unmetered)], "had a quota").await;
    assert_eq!(together, [(true, 0)]);
    let after = &metered.counters().await[0]["used"];
    assert_eq!(after.parse::<u64>(), before.parse::<u64>().map(|n| n + 1));
}

/// Redis's answer to the settle of call `id` (watched as `decided_together`).
async fn settled(connection: &mut redis::aio::MultiplexedConnection, id: u64) -> String {
    let recovery = Recovery::new("t:");
    let script = Script::new(decides::SETTLE);
    let mut settle = script.key(&recovery.writes_key);
    settle
        .arg("replica:m:d")
        .arg(id)
        .arg(Timestamp::now().as_second());
    settle.invoke_async(connection).await.unwrap()
}

#[tokio::test]
async fn an_unanswered_call_of_decisions_settles_to_what_it_admitted_or_to_nothing() {
    let server = redis_server::Redis::start();
    let mut one = Twins::start(&server, "settled-one", 1_000_000).await;
    let mut two = Twins::start(&server, "settled-two", 1).await;
    one.first_decision().await;
    two.first_decision().await;
    let mut connection = one.connection.clone();

    // Call 5 admits the first decision; the second finds its quota spent.
    let (mut a, b) = (decision(&one, 10), decision(&two, 11));
    (a.call, a.oldest_open_call) = (5, 5);
    let answers = decided_together(&mut [(&mut one, a), (&mut two, b)]).await;
    assert_eq!((verdict(&answers[0]), verdict(&answers[1])), (0, 2));
    assert_eq!(settled(&mut connection, 5).await, "1");
    assert_eq!(settled(&mut connection, 5).await, "1", "asked again");

    // Call 6 settled before it runs: void, and it decides nothing then.
    assert_eq!(settled(&mut connection, 6).await, "v");
    let before = [one.counters().await, two.counters().await];
    let mut late = decision(&one, 20);
    (late.call, late.oldest_open_call) = (6, 6);
    let answers = decided_together(&mut [(&mut one, late)]).await;
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(before, [one.counters().await, two.counters().await]);
    assert_eq!(settled(&mut connection, 6).await, "v", "asked again");

    // Calls answered (older than the oldest open) are forgotten; a void
    // one is kept (it may still come).
    let mut next = decision(&one, 30);
    (next.call, next.oldest_open_call) = (7, 7);
    decided_together(&mut [(&mut one, next)]).await;
    let calls: String = connection
        .hget(Recovery::new("t:").writes_key, "replica:m:d")
        .await
        .unwrap();
    assert!(!calls.contains(",5:") && calls.contains(",6:v:"), "{calls}");
    assert!(calls.contains(",7:1:"), "{calls}");
}

/// A call names how many of every replica's calls under the marker its
/// replica last read applied (`Watch::all`): Redis holding fewer went
/// back, though it lost none of this replica's calls (the replicas whose
/// calls it lost find it on their next call; meanwhile this one's reports
/// were counted on the older data, and lost to the put back). Refused
/// (6), as by a replica's own count.
#[tokio::test]
async fn a_call_finds_redis_gone_back_by_every_replicas_count() {
    let server = redis_server::Redis::start();
    let mut one = Twins::start(&server, "all-calls", 1_000_000).await;
    one.first_decision().await;
    let recovery = Recovery::new("t:");
    let mut connection = one.connection.clone();
    let () = connection.set(&recovery.marker_key, "m").await.unwrap();
    // Other replicas' calls: Redis applied 10 under the marker.
    let () = connection
        .hset(&recovery.writes_key, "*:m", 10)
        .await
        .unwrap();
    let decide = |ms: i64, all: u64| {
        let args = decision(&one, ms);
        let key = one.keys[0].clone();
        let script = one.scripts[0].clone();
        let (recovery, mut connection) = (&recovery, one.connection.clone());
        async move {
            let watch = Watch {
                marker: Arc::from("m"),
                field: Arc::from("replica:m"),
                answered: 0,
                all,
            };
            let answers: Vec<redis::Value> =
                decides::invocation(&script, &[(key.as_str(), &args)], recovery, &watch)
                    .invoke_async(&mut connection)
                    .await
                    .unwrap();
            verdict(&answers[0])
        }
    };
    let all = |mut connection: redis::aio::MultiplexedConnection| async move {
        let all: u64 = connection.hget("t:{ctl}:writes", "*:m").await.unwrap();
        all
    };
    // Read 10 applied, 10 there: decided, and counted (11).
    assert_eq!(decide(10, 10).await, 0);
    assert_eq!(all(one.connection.clone()).await, 11);
    // Read 12 applied, 11 there: Redis went back past other replicas'
    // calls. (Decided, it was counted on the older data.)
    assert_eq!(decide(20, 12).await, 6);
    assert_eq!(all(one.connection.clone()).await, 12);
}
