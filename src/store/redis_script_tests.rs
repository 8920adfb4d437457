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

/// Both scripts, on a counter each.
struct Twins {
    scripts: [Script; 2],
    keys: [String; 2],
    connection: redis::aio::MultiplexedConnection,
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
}

/// A lease granted by a "lease" call's `answer` at `now`.
fn granted(answer: &[i64], args: &Args) -> Unspent {
    let (_, start, _, _) = args.period.unwrap();
    Unspent {
        units: answer[3] as u64,
        granted: answer[3] as u64,
        cap: answer[9] as u64,
        gen: answer[8] as u64,
        period_start: start,
        day: args.day,
        epoch: answer[5] as u64,
        ..Unspent::default()
    }
}

#[tokio::test]
async fn a_report_on_the_fast_path_does_what_the_general_path_does() {
    let server = redis_server::Redis::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut twins = Twins {
        scripts: [Script::new(SCRIPT), Script::new(&general_only())],
        keys: ["t:{fast}".into(), "t:{general}".into()],
        connection: client.get_multiplexed_async_connection().await.unwrap(),
    };
    assert_ne!(SCRIPT, general_only(), "the fast path is cut out");
    let quota = QuotaRule {
        quota: Quota::new(1_000_000, QuotaPeriod::Day),
        plan_created: 0,
    };
    let start = Timestamp::now();
    let at = |ms: i64| UnixNanos::from(start + jiff::SignedDuration::from_millis(ms));
    let mut calls = 0;
    let mut next_call = || {
        calls += 1;
        calls
    };

    // A counter, and a lease of it.
    let mut decide = Args::new(at(0), Some(&quota));
    twins.call("decide", &decide, "decide").await;
    decide.known = true;
    let lease_at = |ms: i64, call: u64, given_back: Unspent| {
        let mut args = Args::new(at(ms), Some(&quota));
        args.known = true;
        args.want = (10_000, 0);
        args.record = RECORD.into();
        args.lease_us = 1_000_000;
        args.call = call;
        args.oldest_open_call = call;
        args.unspent = given_back;
        args
    };
    let args = lease_at(1, next_call(), Unspent::default());
    let lease = granted(&twins.call("lease", &args, "lease").await, &args);
    assert!(lease.units > 0, "a lease was granted: {lease:?}");

    let report = |ms: i64, lease: Unspent, n: u64, call: u64, oldest: u64| {
        let mut args = Args::new(at(ms), Some(&quota));
        args.record = RECORD.into();
        args.unspent = Unspent {
            units: 0,
            admitted: n,
            ..lease
        };
        args.call = call;
        args.oldest_open_call = oldest;
        args
    };
    // Reports the fast path takes: the record keeps older calls while one
    // is open, then drops them.
    let first = next_call();
    twins
        .call("report", &report(10, lease, 3, first, first), "a report")
        .await;
    let second = next_call();
    twins
        .call(
            "report",
            &report(20, lease, 5, second, first),
            "a report, one open before it",
        )
        .await;
    // Sent again: both answer what they answered the first time.
    let again = twins
        .call(
            "report",
            &report(30, lease, 5, second, first),
            "a report sent again",
        )
        .await;
    assert_eq!(again[0], 0, "{again:?}");
    let third = next_call();
    let answer = twins
        .call(
            "report",
            &report(40, lease, 7, third, third),
            "a third report",
        )
        .await;
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
    let call = next_call();
    twins
        .call(
            "report",
            &report(50, reclaimed, 2, call, call),
            "a report of a reclaimed lease",
        )
        .await;
    let other_day = Unspent {
        day: lease.day - 1,
        ..lease
    };
    let call = next_call();
    twins
        .call(
            "report",
            &report(60, other_day, 2, call, call),
            "a report of another day",
        )
        .await;

    // UpdateUsage starts a new epoch: a report of the lease before it is
    // handed on, one of a lease of the new epoch is not.
    let mut set = Args::new(at(70), Some(&quota));
    set.set_to = 500_000;
    twins.call("set", &set, "UpdateUsage").await;
    let call = next_call();
    twins
        .call(
            "report",
            &report(80, lease, 4, call, call),
            "a report of the epoch before",
        )
        .await;
    let args = lease_at(90, next_call(), Unspent::default());
    let renewed = granted(
        &twins.call("lease", &args, "a lease of the new epoch").await,
        &args,
    );
    assert!(renewed.epoch > lease.epoch, "{renewed:?} after {lease:?}");
    let call = next_call();
    twins
        .call(
            "report",
            &report(100, renewed, 9, call, call),
            "a report of the new epoch",
        )
        .await;

    // Past the lease's lifetime and the grace: a reclaim is due, which the
    // general path does.
    let late = 1_000 + micros(lease::RECLAIM_GRACE) / 1_000 + 100;
    let call = next_call();
    twins
        .call(
            "report",
            &report(late, renewed, 1, call, call),
            "a report with a reclaim due",
        )
        .await;
    let call = next_call();
    twins
        .call(
            "report",
            &report(late + 10, renewed, 1, call, call),
            "a report after the reclaim",
        )
        .await;
}
