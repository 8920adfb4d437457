//! Redis losing its data twice in quick succession: a replica that put a
//! counter back first loses it again before another replica saw it, and
//! that one, put back first the second time from an older copy, draws the
//! same epochs. The first replica's copy still holds what was admitted
//! before: it is put back, once.

use super::*;
use crate::model::Quota;

use super::redis_server;

/// A daily quota period that holds now.
fn today() -> Period {
    let now = Timestamp::now().as_second();
    let start = now - now.rem_euclid(DAY_SECS);
    (QuotaPeriod::Day, start, start + DAY_SECS)
}

/// A replica's recovery (no leases) whose copy of `counter` saw `used`
/// admitted in epoch 1.
fn replica_that_saw(counter: &CounterKey, used: u64) -> Recovery {
    let recovery = Recovery::new("t:");
    recovery.seen.insert(
        counter.clone(),
        Seen {
            period: today(),
            used,
            allow: -1,
            epoch: 1,
            others: 0,
            today: (0, 0),
        },
    );
    recovery
}

/// As [`replica_that_saw`], for a replica whose lease of the counter
/// (epoch 1) admitted `admitted` requests Redis did not hear of yet.
fn leasing_replica_that_saw(counter: &CounterKey, used: u64, admitted: u64) -> Recovery {
    let leases = Arc::new(Leases::new(LeaseConfig::default()));
    let (_, start, end) = today();
    let lease = Lease {
        unspent: Unspent {
            units: 1_000 - admitted,
            granted: 1_000,
            admitted,
            cap: 500,
            gen: 1,
            period_start: start,
            day: start.div_euclid(DAY_SECS),
            epoch: 1,
            ..Unspent::default()
        },
        period_end: end,
        quota: Some(QuotaRule {
            quota: Quota::new(1_000_000, QuotaPeriod::Day),
            plan_created: 0,
        }),
        ..Lease::default()
    };
    leases.keep((counter.clone(), "".into()), lease, false);
    let recovery = replica_that_saw(counter, used);
    recovery.holding(Some(leases))
}

/// The counter's used count as Redis holds it now.
async fn used_in_redis(connection: &mut Connection, counter: &CounterKey) -> u64 {
    field_in_redis(connection, counter, "used").await
}

/// A number field of the counter's hash as Redis holds it now (0: none).
async fn field_in_redis(connection: &mut Connection, counter: &CounterKey, field: &str) -> u64 {
    let value: Option<u64> = connection
        .query(
            redis::cmd("HGET")
                .arg(counter_key("t:", counter))
                .arg(field),
        )
        .await
        .unwrap();
    value.unwrap_or(0)
}

/// Puts back what `recovery` saw, as a restore does.
async fn restore(recovery: &Recovery, connection: &mut Connection) {
    let script = Script::new(SCRIPT);
    let lost = Lost::take(recovery, None);
    put_back(recovery, connection, &script, &lost)
        .await
        .unwrap();
}

/// Empties Redis, as a restart without persistence does.
async fn flush(connection: &mut Connection) {
    let () = connection.query(&redis::cmd("FLUSHALL")).await.unwrap();
}

#[tokio::test]
async fn a_copy_put_back_and_lost_again_is_put_back_over_a_later_first_restore() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "twice-lost");
    // The first replica saw 300 admitted, the second only 100 (its last
    // answer came earlier).
    let (first, second) = (
        replica_that_saw(&counter, 300),
        replica_that_saw(&counter, 100),
    );

    // Redis comes back empty; the first replica puts the counter back.
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 300);

    // Empty again before the second replica heard of it: it puts back
    // first now, from its older copy, with the same epochs.
    flush(&mut connection).await;
    restore(&second, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 100);
    let epochs = |recovery: &Recovery| recovery.seen.get(&counter).unwrap().epoch;
    assert_eq!(
        epochs(&first),
        epochs(&second),
        "the same epochs, drawn twice"
    );

    // The first replica's copy is of a counter Redis lost since: what it
    // saw beyond the second's goes back. (Before: nothing did, 100 of 300.)
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 300);

    // Put back again, by either, it adds nothing more.
    restore(&first, &mut connection).await;
    restore(&second, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 300);
}

#[tokio::test]
async fn what_a_lease_admitted_counts_once_when_the_copy_that_held_it_was_lost() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "twice-lost-leased");
    // The first replica saw 100 admitted, and its lease admitted 40 more;
    // the second saw 130 (its last answer came later).
    let first = leasing_replica_that_saw(&counter, 100, 40);
    let second = replica_that_saw(&counter, 130);

    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 140);

    // Lost again; the second puts back first, with the same epochs; then
    // the first: 130 seen, and the 40 its lease admitted. (Its copy's 140
    // taken as seen, 30 of them were lost.)
    flush(&mut connection).await;
    restore(&second, &mut connection).await;
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 170);
}

#[tokio::test]
async fn a_replica_that_puts_back_first_twice_counts_what_its_leases_admitted_once() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "first-twice");
    let first = leasing_replica_that_saw(&counter, 100, 40);
    let second = replica_that_saw(&counter, 130);
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 140);

    // Lost again before the second put it back; the first puts back
    // first again (its copy now holds its lease's 40), then the second:
    // 130 seen, and the 40. (Before: the second's 130 added nothing to
    // the first's 140, and 30 were lost.)
    flush(&mut connection).await;
    restore(&first, &mut connection).await;
    restore(&second, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 170);
}

#[tokio::test]
async fn copies_of_the_same_range_put_back_again_count_nothing_twice() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "both-put-back");
    let first = leasing_replica_that_saw(&counter, 100, 40);
    let second = replica_that_saw(&counter, 130);
    // Both put it back (170: 130 seen, and the lease's 40); the second's
    // copy follows, and counts the first's 40 too.
    restore(&first, &mut connection).await;
    restore(&second, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 170);

    // Lost again: both copies are of the range put back, and the larger
    // (170) holds the 40 already.
    flush(&mut connection).await;
    restore(&first, &mut connection).await;
    restore(&second, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 170);
}

/// A replica's copy of `counter` that saw `used` admitted, all of them
/// today as today's record counted them.
fn replica_that_saw_today(counter: &CounterKey, used: u64) -> Recovery {
    let recovery = replica_that_saw(counter, used);
    let day = today().1.div_euclid(DAY_SECS);
    recovery.saw_today(counter, day, used);
    recovery
}

/// Today's record of admitted requests (GetUsage's used count) as Redis
/// holds it now.
async fn today_in_redis(connection: &mut Connection, counter: &CounterKey) -> u64 {
    let day = today().1.div_euclid(DAY_SECS);
    field_in_redis(connection, counter, &format!("d:{day}:u")).await
}

#[tokio::test]
async fn a_copy_follows_todays_record_as_put_back_not_only_the_used_count() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "record-followed");
    // The second replica heard of 300 admitted today, the first of 100.
    let (first, second) = (
        replica_that_saw_today(&counter, 100),
        replica_that_saw_today(&counter, 300),
    );
    restore(&second, &mut connection).await;
    // The first puts back after it: its copy follows the counter as it is
    // now, 300 used, and 300 on today's record.
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 300);
    assert_eq!(today_in_redis(&mut connection, &counter).await, 300);
    // Redis loses its data again, and only the first replica is left to
    // put it back. (Before: used 300, today's record 100.)
    flush(&mut connection).await;
    restore(&first, &mut connection).await;
    assert_eq!(used_in_redis(&mut connection, &counter).await, 300);
    assert_eq!(today_in_redis(&mut connection, &counter).await, 300);
}

/// A report answered "counter gone" (Redis lost its data) whose lease this
/// replica already gave back when it put the counter back: nothing else
/// carries its requests, so it goes out again (the restore counted them as
/// used; landing, they are recorded on today's record). Of a counter this
/// replica never put back (forgotten: its key left the plan), it does not.
#[tokio::test]
async fn a_report_that_found_its_counter_gone_after_its_lease_went_back_is_sent_again() {
    let server = redis_server::Redis::start();
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_leases(LeaseConfig::default());
    let leases = store.leases.clone().unwrap();
    let report = |counter: &CounterKey| {
        let slot = (counter.clone(), "".into());
        Unsure::new(&leases, slot, Lease::default(), CallKind::Report(21))
    };

    let put_back = CounterKey::new("plan", "put-back");
    store.recovery.restored.insert(put_back.clone(), 1);
    let call = report(&put_back);
    let id = call.call;
    store.answered(&leases, call, &[0]);
    let again = leases.take_unsure();
    assert_eq!(again.len(), 1, "sent again");
    assert_eq!((again[0].call, again[0].kind), (id, CallKind::Report(21)));
    assert!(
        leases.oldest_open_call() <= id,
        "still open: Redis keeps its record of it"
    );

    let forgotten = CounterKey::new("plan", "forgotten");
    store.answered(&leases, report(&forgotten), &[0]);
    assert!(leases.take_unsure().is_empty(), "not sent again");
}

/// A lease's report that Redis refused as rolled back (it came back with
/// older data: fewer of this replica's calls applied than answered) is
/// followed once this replica put the counters back: its lease, gone back
/// while the report was on its way, did not carry its requests, so the
/// report goes out again, and today's record counts them. (Followed before
/// the restore, the counter was not put back yet and the report was
/// dropped: today's record stayed short of the used count by what it
/// carried.)
#[tokio::test]
async fn a_report_refused_as_rolled_back_is_sent_again_once_the_counter_is_put_back() {
    let server = redis_server::Redis::start();
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_prefix("t:")
        .with_leases(LeaseConfig::default());
    store.until_leasing().await;
    let counter = CounterKey::new("plan", "rolled-back-report");
    let request = || DecisionRequest {
        counter: &counter,
        throttle: None,
        quota: Some(QuotaRule {
            quota: Quota::new(1_000_000, QuotaPeriod::Day),
            plan_created: 0,
        }),
        now: Timestamp::now().into(),
    };
    // Leases grow as they are spent: admit until one holds requests
    // Redis has not heard of.
    let leases = store.leases.clone().unwrap();
    let mut admitted = 0;
    while leases.unreported() == 0 && admitted < 100_000 {
        let decision = store.decide(&request()).await.unwrap();
        assert_eq!(decision.verdict, Verdict::Admitted);
        admitted += 1;
    }
    // Redis "comes back with older data": its count of this replica's
    // applied calls is gone, the marker is not.
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let () = connection
        .query(redis::cmd("DEL").arg(&store.recovery.writes_key))
        .await
        .unwrap();
    // The lease's report goes out, and the lease expires and goes back
    // while the report is on its way (its requests are in the report).
    let reports = store.calls_to_send(|| leases.take_unreported()).await;
    assert_eq!(reports.len(), 1);
    for (slot, lease) in leases.drain_expired(i64::MAX) {
        leases.lost_with_counter(slot, lease);
    }
    // The report is refused as rolled back, the counters are put back,
    // and the report goes out again with the next round.
    let _ = store.take_back(&leases, reports).await;
    store.give_back_expired_leases().await.unwrap();
    assert_eq!(used_in_redis(&mut connection, &counter).await, admitted);
    assert_eq!(
        today_in_redis(&mut connection, &counter).await,
        admitted,
        "today's record counts every admitted request"
    );
}

/// A replica whose copy of `counter` followed an UpdateUsage (epoch 2)
/// that wrote off every lease out before it as used: `used` counts them
/// whole, `allow` is what the call allowed.
fn replica_that_saw_an_update(counter: &CounterKey, used: u64, allow: i64) -> Recovery {
    let recovery = replica_that_saw(counter, used);
    if let Some(mut seen) = recovery.seen.get_mut(counter) {
        (seen.allow, seen.epoch) = (allow, 2);
    }
    recovery
}

#[tokio::test]
async fn what_a_lease_admitted_before_an_update_usage_counts_once() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let counter = CounterKey::new("plan", "updated-then-lost");
    for update_first in [true, false] {
        flush(&mut connection).await;
        // One replica's lease (epoch 1, 1,000 units) admitted 30 requests
        // Redis did not hear of; UpdateUsage through the other (epoch 2)
        // then wrote the whole lease off as used and allowed 50 more.
        // Redis lost its data before the lease went back.
        let leasing = leasing_replica_that_saw(&counter, 100, 30);
        let updating = replica_that_saw_an_update(&counter, 1_100, 1_150);
        let order = match update_first {
            true => [&updating, &leasing],
            false => [&leasing, &updating],
        };
        for replica in order {
            restore(replica, &mut connection).await;
        }
        // The lease's 30 are in the 1,100 already. (Added again, the 50
        // the call allowed were 20: up to all of them in a test where
        // the leases were larger.)
        assert_eq!(
            (
                used_in_redis(&mut connection, &counter).await,
                field_in_redis(&mut connection, &counter, "allow").await
            ),
            (1_100, 1_150),
            "UpdateUsage's copy put back {}",
            if update_first { "first" } else { "second" }
        );
    }
    // A third copy of the later epoch that saw 20 more, put back last: the
    // lease's 30 are taken off once, not again from its 20. (They were,
    // with the first fix: 1,100.)
    flush(&mut connection).await;
    let leasing = leasing_replica_that_saw(&counter, 100, 30);
    let updating = replica_that_saw_an_update(&counter, 1_100, 1_150);
    let later = replica_that_saw_an_update(&counter, 1_120, 1_150);
    for replica in [&leasing, &updating, &later] {
        restore(replica, &mut connection).await;
    }
    assert_eq!(used_in_redis(&mut connection, &counter).await, 1_120);
}

#[tokio::test]
async fn a_replica_that_put_back_for_a_restore_takes_its_marker_as_known() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let recovery = Recovery::new("t:");
    // Two replicas found the same loss at once and each announced its next
    // marker; this one put back for both, adopted its own, then the
    // other's (its message came last). Its own was set.
    for announced in ["mine", "theirs"] {
        recovery.put_back_under(announced);
        recovery.adopt(announced.to_owned());
    }
    let set = |marker: &str| redis::cmd("SET").arg("t:{ctl}:marker").arg(marker).clone();
    let () = connection.query(&set("mine")).await.unwrap();
    assert!(
        matches!(
            recovery.marker(&mut connection).await.unwrap(),
            Marker::Known
        ),
        "a restore it took part in (put back again, the counters made since \
         came back in a new range of epochs)"
    );
    assert_eq!(recovery.known_marker().as_deref(), Some("mine"));
    // A marker set by a restore it had no part in: it puts back.
    let () = connection.query(&set("another")).await.unwrap();
    assert!(matches!(
        recovery.marker(&mut connection).await.unwrap(),
        Marker::Replaced(_)
    ));
}

#[tokio::test]
async fn a_round_finds_redis_gone_back_by_every_replicas_count() {
    let server = redis_server::Redis::start();
    let mut connection = Connection::open(&server.url()).await.unwrap();
    let recovery = Recovery::new("t:");
    let set = |field: &str, value: &str| {
        redis::cmd("HSET")
            .arg("t:{ctl}:writes")
            .arg(field)
            .arg(value)
            .clone()
    };
    let () = connection
        .query(redis::cmd("SET").arg("t:{ctl}:marker").arg("1-a"))
        .await
        .unwrap();
    assert!(matches!(
        recovery.marker(&mut connection).await.unwrap(),
        Marker::Known
    ));
    // The replicas' calls under the marker: this one remembers the count.
    let _: i64 = connection.query(&set("*:1-a", "10")).await.unwrap();
    assert!(matches!(
        recovery.marker(&mut connection).await.unwrap(),
        Marker::Known
    ));
    assert_eq!(recovery.watch().all, 10);
    // Fewer there, none of this replica's own calls lost: Redis went back.
    let _: i64 = connection.query(&set("*:1-a", "4")).await.unwrap();
    assert!(matches!(
        recovery.marker(&mut connection).await.unwrap(),
        Marker::RolledBack(marker) if marker == "1-a"
    ));
}
