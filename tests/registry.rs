//! The Rust API refuses bad input with typed errors and changes nothing.

use tower_usage_plans::{
    ApiStage, ErrorKind, NewApiKey, NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlans,
};

fn kind<T: std::fmt::Debug>(result: tower_usage_plans::Result<T>) -> ErrorKind {
    result.unwrap_err().kind()
}

#[test]
fn bad_plans_are_refused() {
    let plans = UsagePlans::new();
    assert!(Throttle::new(f64::NAN, 1).is_err());
    assert!(Throttle::new(-1.0, 1).is_err());
    assert!(Throttle::new(f64::INFINITY, 1).is_err());
    let nan = Throttle::completed(Some(f64::NAN), Some(1));
    assert_eq!(
        kind(plans.create_usage_plan(NewUsagePlan::new("p").with_throttle(nan))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(plans.create_usage_plan(NewUsagePlan::new(" "))),
        ErrorKind::BadRequest
    );
    // An offset above the limit is fine (AWS accepts it); above AWS's
    // 32-bit Integer it is not.
    let mut offset = Quota::new(1, QuotaPeriod::Day);
    offset.offset = 1 << 31;
    assert_eq!(
        kind(plans.create_usage_plan(NewUsagePlan::new("p").with_quota(offset))),
        ErrorKind::BadRequest
    );
    let bad_method =
        ApiStage::new("a", "s").with_method_throttle("pets/GET", Throttle::new(1.0, 1).unwrap());
    assert_eq!(
        kind(plans.create_usage_plan(NewUsagePlan::new("p").with_api_stage(bad_method))),
        ErrorKind::BadRequest
    );
    let twice = NewUsagePlan::new("p")
        .with_api_stage(ApiStage::new("a", "s"))
        .with_api_stage(ApiStage::new("a", "s"));
    assert_eq!(kind(plans.create_usage_plan(twice)), ErrorKind::BadRequest);
    assert!(plans.usage_plans().is_empty(), "nothing was created");
}

#[test]
fn negative_limits_do_not_deserialize() {
    assert!(serde_json::from_str::<Quota>(r#"{"limit":-1,"period":"DAY"}"#).is_err());
    assert!(serde_json::from_str::<Throttle>(r#"{"burstLimit":-1,"rateLimit":1}"#).is_err());
    assert!(serde_json::from_str::<Quota>(r#"{"limit":1,"period":"YEAR"}"#).is_err());
}

#[test]
fn bad_keys_are_refused() {
    let plans = UsagePlans::new();
    assert_eq!(
        kind(plans.create_api_key(NewApiKey::new("k").with_value("short"))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(plans.create_api_key(NewApiKey::new("k").with_value("x".repeat(129)))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(plans.create_api_key(NewApiKey::new("k").with_value("has space 0123456789abc"))),
        ErrorKind::BadRequest
    );
    assert_eq!(
        kind(plans.create_api_key(NewApiKey::new("n".repeat(1025)))),
        ErrorKind::BadRequest
    );
    let key = plans
        .create_api_key(NewApiKey::new("k").with_value("a-valid-key-0123456789"))
        .unwrap();
    let dup = plans
        .create_api_key(NewApiKey::new("k2").with_value("a-valid-key-0123456789"))
        .unwrap_err();
    assert_eq!(
        (dup.kind(), dup.message()),
        (ErrorKind::Conflict, "API Key already exists")
    );
    assert_eq!(plans.api_keys().len(), 1);
    let changed = plans.update_api_key(&key.id, |k| {
        k.value = Some("another-value-0123456789".into());
        Ok(())
    });
    assert_eq!(kind(changed), ErrorKind::BadRequest);
    assert_eq!(plans.api_key(&key.id).unwrap(), key, "unchanged");
}

#[test]
fn generated_values_and_ids_look_like_aws() {
    let plans = UsagePlans::new();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    assert!(!key.enabled, "keys are disabled unless enabled, as in AWS");
    assert_eq!(key.id.len(), 10);
    assert!(key
        .id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(key.value.as_ref().unwrap().len(), 40);
    assert_eq!(
        plans
            .api_key_by_value(key.value.as_ref().unwrap())
            .unwrap()
            .id,
        key.id
    );
}

#[test]
fn hash_only_shows_the_value_once() {
    let plans = UsagePlans::builder().with_hash_only(true).build();
    let key = plans
        .create_api_key(NewApiKey::new("k").with_enabled(true))
        .unwrap();
    let value = key.value.clone().unwrap();
    assert_eq!(plans.api_key(&key.id).unwrap().value, None);
    assert_eq!(
        plans.api_key_by_value(&value).unwrap().id,
        key.id,
        "still found by digest"
    );
}

#[test]
fn unknown_ids_are_not_found() {
    let plans = UsagePlans::new();
    let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    assert_eq!(kind(plans.usage_plan("x")), ErrorKind::NotFound);
    assert_eq!(
        kind(plans.update_usage_plan("x", |_| Ok(()))),
        ErrorKind::NotFound
    );
    assert_eq!(kind(plans.delete_usage_plan("x")), ErrorKind::NotFound);
    assert_eq!(kind(plans.api_key("x")), ErrorKind::NotFound);
    assert_eq!(kind(plans.delete_api_key("x")), ErrorKind::NotFound);
    assert_eq!(
        kind(plans.add_key_to_plan("x", &key.id)),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(plans.add_key_to_plan(&plan.id, "x")),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(plans.usage_plan_key(&plan.id, &key.id)),
        ErrorKind::NotFound,
        "not a member"
    );
    assert_eq!(
        kind(plans.remove_key_from_plan(&plan.id, &key.id)),
        ErrorKind::NotFound
    );
}

#[test]
fn one_plan_per_stage_per_key() {
    let plans = UsagePlans::new();
    let a = plans
        .create_usage_plan(NewUsagePlan::new("a").with_api_stage(ApiStage::new("api", "prod")))
        .unwrap();
    let b = plans
        .create_usage_plan(NewUsagePlan::new("b").with_api_stage(ApiStage::new("api", "beta")))
        .unwrap();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    plans.add_key_to_plan(&a.id, &key.id).unwrap();
    assert_eq!(
        kind(plans.add_key_to_plan(&a.id, &key.id)),
        ErrorKind::Conflict,
        "already in"
    );
    plans.add_key_to_plan(&b.id, &key.id).unwrap();
    // Giving b the stage of a would put the key in two plans for api:prod.
    let overlap = plans.update_usage_plan(&b.id, |p| {
        p.api_stages.push(ApiStage::new("api", "prod"));
        Ok(())
    });
    assert_eq!(kind(overlap), ErrorKind::Conflict);
    assert_eq!(
        plans.usage_plan(&b.id).unwrap().api_stages.len(),
        1,
        "unchanged"
    );
    assert_eq!(plans.usage_plans_of_key(&key.id).unwrap().len(), 2);
}

#[test]
fn deleting_a_plan_releases_its_keys() {
    let plans = UsagePlans::new();
    let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    plans.delete_usage_plan(&plan.id).unwrap();
    assert!(plans.usage_plans_of_key(&key.id).unwrap().is_empty());
    let again = plans.create_usage_plan(NewUsagePlan::new("p2")).unwrap();
    plans.add_key_to_plan(&again.id, &key.id).unwrap();
}

#[tokio::test]
async fn counts_above_aws_integer_are_refused() {
    let plans = UsagePlans::new();
    let too_big = tower_usage_plans::MAX_COUNT + 1;
    let quota = NewUsagePlan::new("p").with_quota(Quota::new(too_big, QuotaPeriod::Day));
    assert_eq!(kind(plans.create_usage_plan(quota)), ErrorKind::BadRequest);
    let burst =
        NewUsagePlan::new("p").with_throttle(Throttle::completed(Some(1.0), Some(u32::MAX)));
    assert_eq!(kind(plans.create_usage_plan(burst)), ErrorKind::BadRequest);
    let plan = plans
        .create_usage_plan(NewUsagePlan::new("p").with_quota(Quota::new(10, QuotaPeriod::Day)))
        .unwrap();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    assert_eq!(
        plans
            .set_remaining(&plan.id, &key.id, too_big)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::BadRequest
    );
}

#[test]
fn inconsistent_snapshots_are_refused_and_change_nothing() {
    let plans = UsagePlans::new();
    let p1 = plans.create_usage_plan(NewUsagePlan::new("p1")).unwrap();
    plans.create_usage_plan(NewUsagePlan::new("p2")).unwrap();
    let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
    plans.add_key_to_plan(&p1.id, &key.id).unwrap();
    let good = plans.snapshot();

    // The key in two plans that both cover every stage.
    let mut overlapping = good.clone();
    for plan in &mut overlapping.plans {
        plan.keys = vec![key.id.clone()];
    }
    assert_eq!(
        plans.restore(overlapping).unwrap_err().kind(),
        ErrorKind::BadRequest
    );
    // A plan id twice.
    let mut twice = good.clone();
    twice.plans.push(twice.plans[0].clone());
    assert_eq!(
        plans.restore(twice).unwrap_err().kind(),
        ErrorKind::BadRequest
    );
    assert_eq!(plans.snapshot(), good, "unchanged");
}

/// A plan of 100 a day and a key in it with 40 left, on an in-memory
/// store: `(plans, store, plan id, key id)`.
async fn a_key_with_40_left() -> (
    UsagePlans,
    std::sync::Arc<tower_usage_plans::store::MemoryStore>,
    String,
    String,
) {
    let store = std::sync::Arc::new(tower_usage_plans::store::MemoryStore::new());
    let (plans, plan_id, key_id) = a_key_with_40_left_on(store.clone()).await;
    (plans, store, plan_id, key_id)
}

/// A key in a plan with 40 left today, on `store`: `(plans, plan id, key
/// id)`.
async fn a_key_with_40_left_on(
    store: std::sync::Arc<dyn tower_usage_plans::store::CounterStore>,
) -> (UsagePlans, String, String) {
    let plans = UsagePlans::builder().with_store(store).build();
    let plan = plans
        .create_usage_plan(NewUsagePlan::new("p").with_quota(Quota::new(100, QuotaPeriod::Day)))
        .unwrap();
    let key = plans
        .create_api_key(NewApiKey::new("k").with_enabled(true))
        .unwrap();
    plans.add_key_to_plan(&plan.id, &key.id).unwrap();
    plans.set_remaining(&plan.id, &key.id, 40).await.unwrap();
    (plans, plan.id, key.id)
}

/// What `store` holds as the key's remaining today (100 once its counter
/// is dropped).
async fn remaining_today(
    store: &tower_usage_plans::store::MemoryStore,
    plan_id: &str,
    key_id: &str,
) -> tower_usage_plans::Result<u64> {
    use tower_usage_plans::store::{CounterKey, CounterStore, QuotaRule};
    let rule = QuotaRule {
        quota: Quota::new(100, QuotaPeriod::Day),
        plan_created: 0,
    };
    let now = jiff::Timestamp::now();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let counter = CounterKey::new(plan_id, key_id);
    let days = store
        .usage(&counter, Some(&rule), now, today, today)
        .await?;
    Ok(days[0][1])
}

/// With replicas, a key's counter is dropped once the change that removed
/// it from its plan reached every replica, not before: dropped first,
/// another replica that still had the key decided on an emptied counter
/// and admitted a spent key anew (2 to 7 requests in 9 of 10 black-box
/// runs deleting a key under traffic).
#[tokio::test]
async fn a_removed_keys_counter_is_dropped_once_every_replica_has_the_change() {
    use std::sync::{Arc, Mutex};
    use tower_usage_plans::store::StoreFuture;

    for remove in [
        "delete the key",
        "remove it from the plan",
        "delete the plan",
    ] {
        let (plans, store, plan_id, key_id) = a_key_with_40_left().await;
        // What the counter holds when the replicas take the change in.
        let while_replicating = Arc::new(Mutex::new(Vec::new()));
        let (seen, ids) = (while_replicating.clone(), (plan_id.clone(), key_id.clone()));
        let reading = store.clone();
        plans.set_replication(Some(Arc::new(move || {
            let (seen, store, (plan_id, key_id)) = (seen.clone(), reading.clone(), ids.clone());
            StoreFuture::boxed(async move {
                let remaining = remaining_today(&store, &plan_id, &key_id).await?;
                seen.lock().unwrap().push(remaining);
                Ok(())
            })
        })));

        match remove {
            "delete the key" => plans.delete_api_key(&key_id).unwrap(),
            "remove it from the plan" => plans.remove_key_from_plan(&plan_id, &key_id).unwrap(),
            _ => plans.delete_usage_plan(&plan_id).unwrap(),
        }
        plans.replicated().await.unwrap();
        assert_eq!(
            *while_replicating.lock().unwrap(),
            [40],
            "{remove}: the counter stays while the change replicates"
        );
        let after = remaining_today(&store, &plan_id, &key_id).await.unwrap();
        assert_eq!(after, 100, "{remove}: then it is dropped");
    }
}

/// A key removed while another admin call's change is on its way to the
/// replicas is not in what that call shares: its counter waits for the
/// replication of its own change. (Dropped by the other call's, another
/// replica that still had the key could admit it anew.)
#[tokio::test]
async fn a_key_removed_during_another_replication_keeps_its_counter_until_its_own() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tower_usage_plans::store::StoreFuture;

    let (plans, store, plan_id, key_id) = a_key_with_40_left().await;
    // The first replication round runs while the key is deleted.
    let first_round = Arc::new(AtomicBool::new(true));
    let (deleting, deleted) = (plans.clone(), key_id.clone());
    plans.set_replication(Some(Arc::new(move || {
        if first_round.swap(false, Ordering::AcqRel) {
            deleting.delete_api_key(&deleted).unwrap();
        }
        StoreFuture::ready(Ok(()))
    })));
    plans.replicated().await.unwrap();
    let kept = remaining_today(&store, &plan_id, &key_id).await.unwrap();
    assert_eq!(kept, 40, "kept while its change replicates");
    plans.replicated().await.unwrap();
    let dropped = remaining_today(&store, &plan_id, &key_id).await.unwrap();
    assert_eq!(dropped, 100, "dropped after");
}

/// A memory store that misbehaves on cue: with `plans` set, its
/// UpdateUsage first has the key taken out of its plan (as another admin
/// call would, while the store answers), that change shared; and its next
/// `failing_forgets` forgets fail.
#[derive(Default)]
struct OnCue {
    inner: std::sync::Arc<tower_usage_plans::store::MemoryStore>,
    plans: std::sync::OnceLock<UsagePlans>,
    failing_forgets: std::sync::atomic::AtomicU32,
    /// The next decision takes its key out of its plan first (as another
    /// replica's change taken in meanwhile, its counter dropped), then is
    /// answered later.
    unplan_on_decide: std::sync::atomic::AtomicBool,
}

impl tower_usage_plans::store::CounterStore for OnCue {
    fn decide(
        &self,
        request: &tower_usage_plans::store::DecisionRequest<'_>,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::Decision> {
        use std::sync::atomic::Ordering;
        if !self.unplan_on_decide.swap(false, Ordering::AcqRel) {
            return self.inner.decide(request);
        }
        let plans = self.plans.get().cloned().expect("plans set");
        let (inner, counter) = (self.inner.clone(), request.counter.clone());
        let (throttle, quota, now) = (request.throttle, request.quota, request.now);
        let method = throttle.and_then(|t| t.method).map(str::to_owned);
        let throttle = throttle.map(|t| t.throttle);
        tower_usage_plans::store::StoreFuture::boxed(async move {
            plans.remove_key_from_plan(counter.plan_id(), counter.key_id())?;
            plans.replicated().await?;
            let request = tower_usage_plans::store::DecisionRequest {
                counter: &counter,
                throttle: throttle.map(|throttle| tower_usage_plans::store::ThrottleRule {
                    method: method.as_deref(),
                    throttle,
                }),
                quota,
                now,
            };
            inner.decide(&request).await
        })
    }

    fn refund(
        &self,
        request: &tower_usage_plans::store::DecisionRequest<'_>,
    ) -> tower_usage_plans::store::StoreFuture<()> {
        self.inner.refund(request)
    }

    fn set_remaining(
        &self,
        counter: &tower_usage_plans::store::CounterKey,
        quota: &tower_usage_plans::store::QuotaRule,
        now: jiff::Timestamp,
        remaining: u64,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::DayUsage> {
        let plans = self.plans.get().cloned();
        let (inner, counter, quota) = (self.inner.clone(), counter.clone(), *quota);
        tower_usage_plans::store::StoreFuture::boxed(async move {
            if let Some(plans) = plans {
                plans.remove_key_from_plan(counter.plan_id(), counter.key_id())?;
                plans.replicated().await?;
            }
            inner.set_remaining(&counter, &quota, now, remaining).await
        })
    }

    fn add_remaining(
        &self,
        counter: &tower_usage_plans::store::CounterKey,
        quota: &tower_usage_plans::store::QuotaRule,
        now: jiff::Timestamp,
        delta: i64,
    ) -> tower_usage_plans::store::StoreFuture<tower_usage_plans::store::DayUsage> {
        self.inner.add_remaining(counter, quota, now, delta)
    }

    fn usage(
        &self,
        counter: &tower_usage_plans::store::CounterKey,
        quota: Option<&tower_usage_plans::store::QuotaRule>,
        now: jiff::Timestamp,
        first: jiff::civil::Date,
        last: jiff::civil::Date,
    ) -> tower_usage_plans::store::StoreFuture<Vec<tower_usage_plans::store::DayUsage>> {
        self.inner.usage(counter, quota, now, first, last)
    }

    fn forget(
        &self,
        counter: &tower_usage_plans::store::CounterKey,
    ) -> tower_usage_plans::store::StoreFuture<()> {
        use std::sync::atomic::Ordering;
        let fail = self
            .failing_forgets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            let down = tower_usage_plans::Error::new(ErrorKind::Store, "down");
            return tower_usage_plans::store::StoreFuture::ready(Err(down));
        }
        self.inner.forget(counter)
    }
}

/// With replicas, an UpdateUsage that finds its key taken out of the plan
/// while the store answered (the store made the counter anew) drops that
/// counter before it answers, as the removal's own call did. (Before: it
/// waited for the next admin change, the key's counter back meanwhile.)
#[tokio::test]
async fn an_update_usage_that_finds_its_key_gone_drops_the_counter_it_made() {
    let (plans, store, plan_id, key_id) = a_replicated_key_on_cue().await;
    store.plans.set(plans.clone()).unwrap();
    let answer = plans.set_remaining(&plan_id, &key_id, 10).await;
    assert_eq!(kind(answer), ErrorKind::NotFound);
    let remaining = remaining_today(&store.inner, &plan_id, &key_id).await;
    assert_eq!(remaining.unwrap(), 100, "the counter it made is dropped");
}

/// A request whose key is taken out of its plan while the store decides it
/// (another replica's change taken in meanwhile, the counter dropped and
/// made anew by the decision) is refused, and its charge given back.
/// (Forwarded, a key removed from its plan under traffic was admitted over
/// its spent quota: 5 over 3,000 in a black-box run.)
#[tokio::test]
async fn a_request_whose_key_left_its_plan_while_decided_is_refused() {
    use tower::{Layer, ServiceExt};
    let (plans, store, plan_id, key_id) = a_replicated_key_on_cue().await;
    store.plans.set(plans.clone()).unwrap();
    store
        .unplan_on_decide
        .store(true, std::sync::atomic::Ordering::Release);
    let value = plans.api_key(&key_id).unwrap().value.unwrap();
    use axum::body::Body;
    let upstream = tower::service_fn(|_: http::Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
    });
    let service = tower_usage_plans::UsagePlanLayer::new(plans.clone()).layer(upstream);
    let request = http::Request::get("/")
        .header("x-api-key", value)
        .body(Body::empty());
    let response = service.oneshot(request.unwrap()).await.unwrap();
    assert_eq!(response.status(), 403, "no plan any more");
    // The charge goes back in a task of its own: let it run.
    let mut remaining = 0;
    for _ in 0..100 {
        remaining = remaining_today(&store.inner, &plan_id, &key_id)
            .await
            .unwrap();
        if remaining == 100 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(remaining, 100, "the unit it took is given back");
}

/// A key in a plan (40 left today) of `UsagePlans` on an [`OnCue`] store,
/// with replication (that always succeeds).
async fn a_replicated_key_on_cue() -> (UsagePlans, std::sync::Arc<OnCue>, String, String) {
    let store = std::sync::Arc::new(OnCue::default());
    let (plans, plan_id, key_id) = a_key_with_40_left_on(store.clone()).await;
    plans.set_replication(Some(std::sync::Arc::new(|| {
        tower_usage_plans::store::StoreFuture::ready(Ok(()))
    })));
    (plans, store, plan_id, key_id)
}

/// A removed key's counter that the store failed to drop is dropped by
/// the next replication. (Before: it was kept, and the key, added back to
/// its plan later, started from its old count.)
#[tokio::test]
async fn a_removed_keys_counter_the_store_failed_to_drop_is_dropped_later() {
    let (plans, store, plan_id, key_id) = a_replicated_key_on_cue().await;
    store
        .failing_forgets
        .store(1, std::sync::atomic::Ordering::Release);
    plans.remove_key_from_plan(&plan_id, &key_id).unwrap();
    plans.replicated().await.unwrap();
    let remaining = remaining_today(&store.inner, &plan_id, &key_id).await;
    assert_eq!(remaining.unwrap(), 40, "the store failed");
    plans.replicated().await.unwrap();
    let remaining = remaining_today(&store.inner, &plan_id, &key_id).await;
    assert_eq!(remaining.unwrap(), 100, "dropped the next time");
}
