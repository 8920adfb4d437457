//! The data plane's read-only view of the registry: for each key digest,
//! what the layer needs to decide a request. Rebuilt by the admin plane on
//! every change, read by the layer without locks beyond a map shard's.

use std::sync::Arc;

use http::Method;
use sha2::{Digest, Sha256};

use http::HeaderValue;

use crate::decision::ratelimit::PolicyValues;
use crate::model::{Throttle, UsagePlan};
use crate::route::{normalize, MethodRoute};
use crate::store::{CounterKey, CounterStore, Decision, QuotaRule, ThrottleRule};

/// SHA-256 of a key value: the map key of every lookup.
pub(crate) type KeyDigest = [u8; 32];

pub(crate) fn digest(value: &[u8]) -> KeyDigest {
    Sha256::digest(value).into()
}

/// The stage a layer serves: `api_id:stage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stage {
    pub(crate) api_id: Box<str>,
    pub(crate) stage: Box<str>,
}

/// A plan as the data plane sees it.
#[derive(Debug)]
pub(crate) struct PlanRuntime {
    /// Empty: the plan covers every stage.
    stages: Vec<StageRuntime>,
    throttle: Option<Throttle>,
    quota: Option<QuotaRule>,
    /// `RateLimit-Policy` values of what the plan can apply, each filled
    /// the first time a decision applies it.
    policies: PolicyValues,
}

#[derive(Debug)]
struct StageRuntime {
    stage: Stage,
    /// Most specific first. The keys are shared with the requests they
    /// throttle (a [`UsageContext`](crate::UsageContext)'s charge names its
    /// bucket without an allocation).
    methods: Vec<(MethodRoute, (Arc<str>, Throttle))>,
}

impl PlanRuntime {
    pub(crate) fn new(plan: &UsagePlan, created: i64) -> Self {
        let stages = plan
            .api_stages
            .iter()
            .map(|s| {
                let mut methods: Vec<_> = s
                    .throttle
                    .iter()
                    .filter_map(|(key, throttle)| {
                        // Keys were validated when the plan was saved.
                        MethodRoute::parse(key)
                            .ok()
                            .map(|r| (r, (key.as_str().into(), *throttle)))
                    })
                    .collect();
                MethodRoute::sort_by_specificity(&mut methods);
                StageRuntime {
                    stage: Stage {
                        api_id: s.api_id.as_str().into(),
                        stage: s.stage.as_str().into(),
                    },
                    methods,
                }
            })
            .collect::<Vec<StageRuntime>>();
        let bursts = std::iter::once(plan.throttle).chain(
            stages
                .iter()
                .flat_map(|s| &s.methods)
                .map(|(_, (_, throttle))| Some(*throttle)),
        );
        let policies = PolicyValues::new(
            bursts.map(|throttle| throttle.map(|t| t.burst_limit)),
            plan.quota.map(|quota| (quota.limit, quota.period)),
        );
        Self {
            stages,
            throttle: plan.throttle,
            quota: plan.quota.map(|quota| QuotaRule {
                quota,
                plan_created: created,
            }),
            policies,
        }
    }

    /// The `RateLimit-Policy` value of what `decision` applied, kept by
    /// the plan; `None` when the plan has none for it (the layer then
    /// finds or builds the same bytes).
    #[inline]
    pub(crate) fn policy_value(&self, decision: &Decision) -> Option<&'static HeaderValue> {
        self.policies.of(decision)
    }

    pub(crate) fn covers(&self, stage: &Stage) -> bool {
        self.stages.is_empty() || self.stages.iter().any(|s| s.stage == *stage)
    }

    pub(crate) fn quota(&self) -> Option<QuotaRule> {
        self.quota
    }

    /// The throttle for a request to `path` (as received): the most
    /// specific method throttle of the stage, else the plan's. The path is
    /// normalised only when the stage has method throttles.
    pub(crate) fn throttle_for(
        &self,
        stage: &Stage,
        method: &Method,
        path: &str,
    ) -> Option<ThrottleRule<'_>> {
        let method_throttle = self
            .stages
            .iter()
            .find(|s| s.stage == *stage && !s.methods.is_empty())
            .and_then(|s| {
                let path = normalize(path);
                s.methods
                    .iter()
                    .find(|(route, _)| route.matches(method, &path))
            });
        match method_throttle {
            Some((_, (key, throttle))) => Some(ThrottleRule {
                method: Some(key),
                throttle: *throttle,
            }),
            None => self.throttle.map(|throttle| ThrottleRule {
                method: None,
                throttle,
            }),
        }
    }

    /// The throttle of the method-throttle key `key` (one that
    /// [`method_key`](Self::method_key) returned, found by address), or
    /// the plan's when `key` is `None`: what a request was charged.
    pub(crate) fn charged_throttle(&self, key: Option<&Arc<str>>) -> Option<Throttle> {
        let Some(key) = key else {
            return self.throttle;
        };
        self.stages
            .iter()
            .flat_map(|s| &s.methods)
            .find(|(_, (shared, _))| Arc::ptr_eq(shared, key) || shared == key)
            .map(|(_, (_, throttle))| *throttle)
    }

    /// The shared method-throttle key that [`throttle_for`](Self::throttle_for)
    /// returned as `key` (found by address: no string comparison, no
    /// allocation).
    pub(crate) fn method_key(&self, stage: &Stage, key: &str) -> Arc<str> {
        self.stages
            .iter()
            .filter(|s| s.stage == *stage)
            .flat_map(|s| &s.methods)
            .map(|(_, (shared, _))| shared)
            .find(|shared| std::ptr::eq(shared.as_ptr(), key.as_ptr()))
            .cloned()
            .unwrap_or_else(|| key.into())
    }
}

/// A key's membership of one plan, and where its counter lives. Shared
/// (one `Arc` per key route) with the [`UsageContext`](crate::UsageContext)
/// of every request it admits: a context clones one pointer, not the
/// counter key, the store and the charge's rules.
pub(crate) struct Binding {
    pub(crate) plan: Arc<PlanRuntime>,
    pub(crate) counter: CounterKey,
    pub(crate) store: Arc<dyn CounterStore>,
}

impl Binding {
    /// A binding of `key_id` to a plan `plan_id` without limits, counted
    /// in a fresh memory store: for tests of what reads a context.
    #[cfg(test)]
    pub(crate) fn unlimited(plan_id: &str, key_id: &str) -> Arc<Self> {
        Arc::new(Self {
            plan: Arc::new(PlanRuntime {
                stages: Vec::new(),
                throttle: None,
                quota: None,
                policies: PolicyValues::default(),
            }),
            counter: CounterKey::new(plan_id, key_id),
            store: Arc::new(crate::store::MemoryStore::new()),
        })
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("plan", &self.plan)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// What a key value resolves to.
#[derive(Debug)]
pub(crate) struct KeyRoute {
    pub(crate) enabled: bool,
    pub(crate) bindings: Vec<Arc<Binding>>,
}

impl KeyRoute {
    /// The binding of the plan covering `stage` (at most one, by the
    /// association rules).
    pub(crate) fn binding_for(&self, stage: &Stage) -> Option<&Arc<Binding>> {
        self.bindings.iter().find(|b| b.plan.covers(stage))
    }
}
