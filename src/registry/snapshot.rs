//! Saving and restoring the whole registry (the gateway's state file).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::lookup::PlanRuntime;
use super::{Control, KeyDigest, KeyEntry, PlanEntry, UsagePlans};
use crate::error::{Error, Result};
use crate::model::{ApiKey, UsagePlan};

/// Every plan, key and association, as plain data.
///
/// ```
/// use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
/// let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
/// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
///
/// let copy = UsagePlans::new();
/// copy.restore(plans.snapshot()).unwrap();
/// assert_eq!(copy.usage_plan_keys(&plan.id).unwrap().len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Plans with their creation time and member key ids.
    pub plans: Vec<PlanSnapshot>,
    /// Keys with the digest of their value.
    pub keys: Vec<KeySnapshot>,
}

/// One plan in a [`RegistrySnapshot`].
///
/// ```
/// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
/// # let plans = UsagePlans::new();
/// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
/// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
/// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
/// let snapshot = plans.snapshot();
/// let saved = &snapshot.plans[0];
/// assert_eq!(saved.plan, plan);
/// assert_eq!(saved.keys, vec![key.id]);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSnapshot {
    /// The plan.
    pub plan: UsagePlan,
    /// Creation time, Unix seconds (the quota offset's initial period).
    pub created: i64,
    /// Member key ids.
    pub keys: Vec<String>,
}

/// One key in a [`RegistrySnapshot`].
///
/// ```
/// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
/// # let plans = UsagePlans::new();
/// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
/// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
/// let snapshot = plans.snapshot();
/// let saved = &snapshot.keys[0];
/// assert_eq!(saved.key, key);
/// assert_eq!(saved.digest.len(), 64); // hex SHA-256
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// The key (without value in hash-only mode).
    pub key: ApiKey,
    /// Hex SHA-256 of the value.
    pub digest: String,
}

impl UsagePlans {
    /// A copy of the registry on its own (same clock and key storage,
    /// counters in memory, no replication) to try a change on: the admin
    /// API tells bad input this way while the replicas cannot be reached.
    #[cfg(feature = "admin")]
    pub(crate) fn detached_copy(&self) -> Result<UsagePlans> {
        let mut builder = UsagePlans::builder().with_hash_only(self.inner.hash_only);
        builder.clock = self.inner.clock.clone();
        let copy = builder.build();
        copy.restore(self.snapshot())?;
        Ok(copy)
    }

    /// A copy of every plan, key and association.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let json = serde_json::to_string(&plans.snapshot()).unwrap();
    /// let copy = UsagePlans::new();
    /// copy.restore(serde_json::from_str(&json).unwrap()).unwrap();
    /// assert_eq!(copy.api_key(&key.id).unwrap(), key);
    /// assert_eq!(copy.usage_plans(), vec![plan]);
    /// ```
    pub fn snapshot(&self) -> RegistrySnapshot {
        let control = self.inner.control.lock();
        RegistrySnapshot {
            plans: control
                .plans
                .values()
                .map(|p| PlanSnapshot {
                    plan: p.plan.clone(),
                    created: p.created,
                    keys: p.keys.iter().cloned().collect(),
                })
                .collect(),
            keys: control
                .keys
                .values()
                .map(|k| KeySnapshot {
                    key: k.key.clone(),
                    digest: k.digest.iter().map(|b| format!("{b:02x}")).collect(),
                })
                .collect(),
        }
    }

    /// Replaces every plan, key and association with the snapshot's.
    /// Counters live in the store and are restored there.
    ///
    /// # Errors
    /// `BadRequest` for an inconsistent snapshot (invalid plan, bad digest,
    /// unknown member, duplicate value); nothing changes then.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans, ErrorKind};
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
    /// # let key = plans.create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// let snapshot = plans.snapshot();
    /// plans.delete_api_key(&key.id).unwrap();
    /// plans.restore(snapshot.clone()).unwrap();
    /// assert_eq!(plans.api_key(&key.id).unwrap(), key);
    /// let mut broken = snapshot;
    /// broken.keys[0].digest = "00".into();
    /// assert_eq!(plans.restore(broken).unwrap_err().kind(), ErrorKind::BadRequest);
    /// ```
    pub fn restore(&self, snapshot: RegistrySnapshot) -> Result<()> {
        self.restore_at(snapshot, None).map(drop)
    }

    /// As [`restore`](Self::restore), but only if no write happened since
    /// [`generation`](Self::generation) read `expected` (a write between
    /// reading and restoring would be lost); returns the generation the
    /// restore left, or `None` when something changed.
    #[cfg(feature = "gateway")]
    pub(crate) fn restore_if_unchanged(
        &self,
        snapshot: RegistrySnapshot,
        expected: u64,
    ) -> Result<Option<u64>> {
        self.restore_at(snapshot, Some(expected))
    }

    fn restore_at(&self, snapshot: RegistrySnapshot, expected: Option<u64>) -> Result<Option<u64>> {
        let mut next = Control::default();
        for k in snapshot.keys {
            k.key.validate()?;
            let digest = parse_digest(&k.digest)?;
            if let Some(value) = &k.key.value {
                if super::digest(value.as_bytes()) != digest {
                    return Err(Error::bad_request(format!(
                        "key {}: digest does not match value",
                        k.key.id
                    )));
                }
            }
            if next.by_digest.insert(digest, k.key.id.clone()).is_some()
                || next.keys.contains_key(&k.key.id)
            {
                return Err(Error::bad_request(format!(
                    "key {}: duplicate id or value",
                    k.key.id
                )));
            }
            next.keys.insert(
                k.key.id.clone(),
                KeyEntry {
                    key: k.key,
                    digest,
                    plans: super::PlanIds::default(),
                },
            );
        }
        for p in snapshot.plans {
            p.plan.validate()?;
            let id = p.plan.id.clone();
            if next.plans.contains_key(&id) {
                return Err(Error::bad_request(format!("plan {id}: duplicate id")));
            }
            for key_id in &p.keys {
                let key = next.keys.get_mut(key_id).ok_or_else(|| {
                    Error::bad_request(format!("plan {id}: unknown key {key_id}"))
                })?;
                key.plans.insert(id.clone());
            }
            next.plans.insert(
                id,
                PlanEntry {
                    runtime: Arc::new(PlanRuntime::new(&p.plan, p.created)),
                    plan: p.plan,
                    created: p.created,
                    keys: p.keys.into_iter().collect(),
                },
            );
        }
        // A key in at most one plan per stage, as every write ensures.
        for (key_id, key) in &next.keys {
            for plan_id in &key.plans {
                next.check_no_overlap(key_id, &next.plans[plan_id].plan)
                    .map_err(|e| {
                        Error::bad_request(format!("inconsistent snapshot: {}", e.message()))
                    })?;
            }
        }
        let mut control = self.write();
        if expected.is_some_and(|expected| self.generation() != expected) {
            return Ok(None);
        }
        *control = next;
        // Upsert every route, then drop the ones whose keys are gone: a key
        // that stays never misses its route (no 403 while restoring).
        let ids: Vec<String> = control.keys.keys().cloned().collect();
        for id in ids {
            self.refresh_route(&control, &id);
        }
        let live: std::collections::HashSet<_> =
            control.keys.values().map(KeyEntry::route_id).collect();
        self.inner.routes.retain(|id| live.contains(id));
        // The writer moves the generation on when it ends, still locked.
        Ok(Some(self.generation() + 1))
    }
}

fn parse_digest(hex: &str) -> Result<KeyDigest> {
    let bad = || Error::bad_request(format!("invalid key digest '{hex}'"));
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(digest)
}
