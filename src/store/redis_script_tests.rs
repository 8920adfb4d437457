//! `redis.lua`'s fast path for a lease's report does what the rest of the
//! script does for it: the same calls, made by the script as shipped and
//! by the script with that path cut out, each on a counter of its own,
//! must answer alike and leave the two counters alike, field for field,
//! whether the fast path takes the call or hands it on.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::*;
use crate::model::Quota;

// A test support file, written for the integration tests.
#[allow(unreachable_pub)]
#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

/// The holder's record of the leases (`h:<16 characters>:<bucket>`).
const RECORD: &str = "h:0123456789abcdef:";

/// The script without its fast path for reports.
fn general_only() -> String {
    let (head, rest) = SCRIPT
        .split_once("-- fast report: begin")
        .expect("the fast path's start");
    let (_, tail) = rest.split_once("-- fast report: end").expect("its end");
    format!("{head}{tail}")
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
}

impl Twins {
    /// Makes the call with both scripts: the answers and the counters
    /// must be alike. The answer's numbers.
    async fn call(&mut self, op: &str, args: &Args, step: &str) -> Vec<i64> {
        let mut answers = Vec::new();
        for (script, key) in self.scripts.iter().zip(&self.keys) {
            let answer: redis::Value = args
                .invocation(script, key, None, op)
                .invoke_async(&mut self.connection)
                .await
                .unwrap();
            answers.push(answer);
        }
        assert_eq!(answers[0], answers[1], "{step}: the answers differ");
        let fast: HashMap<String, String> = self.connection.hgetall(&self.keys[0]).await.unwrap();
        let general: HashMap<String, String> =
            self.connection.hgetall(&self.keys[1]).await.unwrap();
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

    /// A new lease at `ms` (nothing given back).
    async fn lease(&mut self, ms: i64, step: &str) -> Unspent {
        self.calls += 1;
        let mut args = self.args(ms);
        args.known = true;
        args.want = (10_000, 0);
        args.record = RECORD.into();
        args.lease_us = 1_000_000;
        (args.call, args.oldest_open_call) = (self.calls, self.calls);
        let answer = self.call("lease", &args, step).await;
        let (_, start, _, _) = args.period.unwrap();
        let lease = Unspent {
            units: answer[3] as u64,
            granted: answer[3] as u64,
            cap: answer[9] as u64,
            gen: answer[8] as u64,
            period_start: start,
            day: args.day,
            epoch: answer[5] as u64,
            ..Unspent::default()
        };
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
        (call, oldest): (Option<u64>, Option<u64>),
        step: &str,
    ) -> Vec<i64> {
        let call = call.unwrap_or_else(|| {
            self.calls += 1;
            self.calls
        });
        let mut args = self.args(ms);
        args.record = RECORD.into();
        args.unspent = Unspent {
            units: 0,
            admitted: n,
            ..lease
        };
        (args.call, args.oldest_open_call) = (call, oldest.unwrap_or(call));
        self.call("report", &args, step).await
    }
}

const NEW: (Option<u64>, Option<u64>) = (None, None);

#[tokio::test]
async fn a_report_on_the_fast_path_does_what_the_general_path_does() {
    let server = redis_server::Redis::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut twins = Twins {
        scripts: [Script::new(SCRIPT), Script::new(&general_only())],
        keys: ["t:{fast}".into(), "t:{general}".into()],
        connection: client.get_multiplexed_async_connection().await.unwrap(),
        quota: QuotaRule {
            quota: Quota::new(1_000_000, QuotaPeriod::Day),
            plan_created: 0,
        },
        start: Timestamp::now(),
        calls: 0,
    };
    assert_ne!(SCRIPT, general_only(), "the fast path is cut out");

    // A counter, and a lease of it.
    let decide = twins.args(0);
    twins.call("decide", &decide, "decide").await;
    let lease = twins.lease(1, "lease").await;

    // Reports the fast path takes: the record keeps older calls while one
    // is open, then drops them. One sent again answers as the first time.
    twins.report(10, lease, 3, NEW, "a report").await;
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
