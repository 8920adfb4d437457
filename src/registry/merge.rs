//! Merging two replicas' registries that changed since a common base (the
//! gateway's replica sync: a replica that changed something locally while
//! another published keeps both sides' changes).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use serde::Serialize;

use super::{PlanSnapshot, RegistrySnapshot};
use crate::model::UsagePlan;

/// What a three-way merge needs of its base, a fraction of the registry's
/// size (a replica remembers several bases): by id, a fingerprint of each
/// key and of each plan's settings, and each plan's members. (Ids and
/// records are hashed: 64 bits each, so two that differ read as alike
/// about once in 2^64. Ids are hashed by a specified function, XXH3, one
/// seed per kind: replicas share them in the registry's named removals,
/// whatever Rust built each one. Records are compared only within a
/// process.)
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct MergeBase {
    keys: HashMap<u64, u64>,
    plans: HashMap<u64, (u64, HashSet<u64>)>,
}

impl MergeBase {
    /// The base of a merge against `registry`.
    pub(crate) fn of(registry: &RegistrySnapshot) -> Self {
        let keys = registry
            .keys
            .iter()
            .map(|k| (key_id(&k.key.id), hash_of(k)))
            .collect();
        let plans = registry
            .plans
            .iter()
            .map(|p| {
                let members = p.keys.iter().map(|id| key_id(id)).collect();
                (plan_id(&p.plan.id), (fingerprint(&body(p)), members))
            })
            .collect();
        Self { keys, plans }
    }

    /// The hashed ids of what this base holds and `now` (the base of a
    /// later registry) does not: keys and plans deleted since (first), and
    /// memberships ended since whose key and plan remain (deleting either
    /// ends them already).
    pub(crate) fn removed_in(&self, now: &MergeBase) -> Vec<u64> {
        let gone_keys = self.keys.keys().filter(|id| !now.keys.contains_key(id));
        let gone_plans = self.plans.keys().filter(|id| !now.plans.contains_key(id));
        let ended = self.plans.iter().flat_map(|(plan, (_, members))| {
            let kept = now.plans.get(plan).map(|(_, kept)| kept);
            members
                .iter()
                .filter(move |key| kept.is_some_and(|kept| !kept.contains(key)))
                .filter(|key| now.keys.contains_key(key))
                .map(|key| membership(*plan, *key))
        });
        gone_keys.chain(gone_plans).copied().chain(ended).collect()
    }

    /// The hashed ids of what this base holds: keys, plans and
    /// memberships.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        let plans = self.plans.iter().flat_map(|(plan, (_, members))| {
            let memberships = members.iter().map(|key| membership(*plan, *key));
            std::iter::once(*plan).chain(memberships)
        });
        self.keys.keys().copied().chain(plans)
    }

    /// This base, with what `removed` names (a side's removals, see
    /// [`removed_in`](Self::removed_in)) that `holding` holds and
    /// `without` does not, as `holding` holds it: merged against it, the
    /// removal stands. (Merged against a base that lacks it, as after Redis
    /// went back past every base a replica keeps, the removed key, plan or
    /// membership came back from the side still holding it.)
    pub(crate) fn with_removed(
        &self,
        removed: &HashSet<u64>,
        without: &RegistrySnapshot,
        holding: &RegistrySnapshot,
    ) -> Self {
        let mut base = self.clone();
        if removed.is_empty() {
            return base;
        }
        let here = MergeBase::of(without);
        let gone = |id: u64| removed.contains(&id);
        for key in &holding.keys {
            let id = key_id(&key.key.id);
            if gone(id) && !here.keys.contains_key(&id) {
                base.keys.entry(id).or_insert_with(|| hash_of(key));
            }
        }
        for plan in &holding.plans {
            let id = plan_id(&plan.plan.id);
            let here_members = here.plans.get(&id).map(|(_, members)| members);
            let ended: Vec<u64> = plan
                .keys
                .iter()
                .map(|key| key_id(key))
                .filter(|key| gone(membership(id, *key)))
                .filter(|key| here_members.is_some_and(|members| !members.contains(key)))
                .collect();
            let plan_gone = gone(id) && here_members.is_none();
            if !plan_gone && ended.is_empty() {
                continue;
            }
            let (_, members) = base
                .plans
                .entry(id)
                .or_insert_with(|| (fingerprint(&body(plan)), HashSet::new()));
            members.extend(ended);
        }
        base
    }
}

/// The seeds of [`key_id`], [`plan_id`] and [`membership`]: one per kind,
/// so that a key and a plan of one id, or a membership, never share a
/// hashed id.
const KEY_SEED: u64 = 0x6b65_7973; // "keys"
const PLAN_SEED: u64 = 0x706c_616e; // "plan"
const MEMBERSHIP_SEED: u64 = 0x6d65_6d62; // "memb"

/// The hashed id of API key `id` (see [`MergeBase`]).
fn key_id(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), KEY_SEED)
}

/// The hashed id of usage plan `id` (see [`MergeBase`]).
fn plan_id(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), PLAN_SEED)
}

/// The hashed id of the membership of key `key` in plan `plan` (both
/// hashed ids).
fn membership(plan: u64, key: u64) -> u64 {
    let mut both = [0; 16];
    both[..8].copy_from_slice(&plan.to_le_bytes());
    both[8..].copy_from_slice(&key.to_le_bytes());
    xxh3_64_with_seed(&both, MEMBERSHIP_SEED)
}

impl RegistrySnapshot {
    /// Three-way merge of registries: per plan and per key, a side that
    /// changed it since `base` wins, local first; a plan's members merge
    /// set-wise (both sides' additions kept, both sides' removals applied);
    /// members that no longer exist are dropped.
    pub(crate) fn merge(base: &MergeBase, local: &Self, remote: &Self) -> Self {
        three_way(base, local, remote)
    }
}

/// A plan's settings, without its members.
fn body(plan: &PlanSnapshot) -> (&UsagePlan, i64) {
    (&plan.plan, plan.created)
}

/// A hash of a record (64 bits: see [`MergeBase`]), for comparison within
/// this process only.
fn hash_of(value: &(impl Hash + ?Sized)) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// A hash of `record` as serialized (a plan's settings hold numbers that
/// are not `Hash`).
fn fingerprint(record: &impl Serialize) -> u64 {
    /// Bytes written into a hasher.
    struct Hashing(DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(DefaultHasher::new());
    serde_json::to_writer(&mut hashing, record).expect("a registry record serializes");
    hashing.0.finish()
}

/// [`RegistrySnapshot::merge`]. (An id only the base has was deleted on
/// both sides: it is in no result, so only the sides' ids are walked.)
fn three_way(
    base: &MergeBase,
    local: &RegistrySnapshot,
    remote: &RegistrySnapshot,
) -> RegistrySnapshot {
    fn by_id<T>(items: &[T], id: impl Fn(&T) -> &str) -> BTreeMap<&str, &T> {
        items.iter().map(|item| (id(item), item)).collect()
    }
    /// A side's members of a plan.
    fn members(plan: Option<&PlanSnapshot>) -> BTreeSet<&str> {
        plan.map(|p| p.keys.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
    /// Every id either side has.
    fn both_ids<'a, T>(sides: [&BTreeMap<&'a str, T>; 2]) -> BTreeSet<&'a str> {
        sides.iter().flat_map(|side| side.keys().copied()).collect()
    }

    let (lk, rk) = (
        by_id(&local.keys, |k| &k.key.id),
        by_id(&remote.keys, |k| &k.key.id),
    );
    let keys: Vec<_> = both_ids([&lk, &rk])
        .iter()
        .filter_map(|id| {
            // The local side if it changed the key since the base, else
            // the remote side.
            let local = lk.get(id).copied();
            let base = base.keys.get(&key_id(id)).copied();
            match local.map(hash_of) != base {
                true => local,
                false => rk.get(id).copied(),
            }
            .cloned()
        })
        .collect();
    let live: BTreeSet<&str> = keys.iter().map(|k| k.key.id.as_str()).collect();

    let (lp, rp) = (
        by_id(&local.plans, |p| &p.plan.id),
        by_id(&remote.plans, |p| &p.plan.id),
    );
    let plans = both_ids([&lp, &rp])
        .iter()
        .filter_map(|id| {
            let (b, l, r) = (
                base.plans.get(&plan_id(id)),
                lp.get(id).copied(),
                rp.get(id).copied(),
            );
            // Existence: a side that created or deleted the plan decides.
            let present = if l.is_some() != b.is_some() {
                l.is_some()
            } else {
                r.is_some()
            };
            if !present {
                return None;
            }
            // Its settings: the side that changed them, local first; its
            // members: below, set-wise.
            let base_body = b.map(|(body, _)| *body);
            let mut plan = match (l, r) {
                (Some(l), _) if Some(fingerprint(&body(l))) != base_body => l.clone(),
                (_, Some(r)) => r.clone(),
                (Some(l), None) => l.clone(),
                (None, None) => return None,
            };
            // A member of the base stays if both sides kept it; one either
            // side added stays; either way, only if the key still exists.
            let (lm, rm) = (members(l), members(r));
            let in_base = |id: &str| b.is_some_and(|(_, members)| members.contains(&key_id(id)));
            plan.keys = lm
                .union(&rm)
                .filter(|id| !in_base(id) || (lm.contains(*id) && rm.contains(*id)))
                .filter(|id| live.contains(*id))
                .map(|id| id.to_string())
                .collect();
            Some(plan)
        })
        .collect::<Vec<_>>();
    RegistrySnapshot {
        plans: one_plan_per_stage(plans),
        keys,
    }
}

/// Both sides may have put one key in two plans covering a common stage;
/// keep the key in the first such plan (by id) only.
fn one_plan_per_stage(mut plans: Vec<PlanSnapshot>) -> Vec<PlanSnapshot> {
    let mut holding: HashMap<String, Vec<UsagePlan>> = Default::default();
    for plan in &mut plans {
        let settings = plan.plan.clone();
        plan.keys.retain(|key| {
            let held = holding.entry(key.clone()).or_default();
            let clash = held.iter().any(|other| other.overlaps(&settings));
            if !clash {
                held.push(settings.clone());
            }
            !clash
        });
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewApiKey, NewUsagePlan, UsagePlans};

    /// A base with one plan holding one key, as three replicas see it.
    fn base() -> (UsagePlans, String, String) {
        let plans = UsagePlans::new();
        let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
        let key = plans
            .create_api_key(NewApiKey::new("k").with_enabled(true))
            .unwrap();
        plans.add_key_to_plan(&plan.id, &key.id).unwrap();
        (plans, plan.id, key.id)
    }

    /// The three-way merge of `local` and `remote` from `origin`, restored.
    fn merged(origin: &UsagePlans, local: &UsagePlans, remote: &UsagePlans) -> UsagePlans {
        let result = UsagePlans::new();
        result
            .restore(RegistrySnapshot::merge(
                &MergeBase::of(&origin.snapshot()),
                &local.snapshot(),
                &remote.snapshot(),
            ))
            .unwrap();
        result
    }

    /// The ids of the plan's keys.
    fn member_ids(plans: &UsagePlans, plan_id: &str) -> Vec<String> {
        let members = plans.usage_plan_keys(plan_id).unwrap();
        members.into_iter().map(|k| k.id).collect()
    }

    fn copy(of: &UsagePlans) -> UsagePlans {
        let copy = UsagePlans::new();
        copy.restore(of.snapshot()).unwrap();
        copy
    }

    /// Merged against nothing (as after Redis went back past every base
    /// a replica keeps), what the local side names as removed stays
    /// removed: a key, a plan, a membership; what it does not name, and
    /// what it holds again, come from the other side as before.
    #[test]
    fn what_the_local_side_removed_stays_removed_without_a_base() {
        let (origin, plan_id, key_id) = base();
        let other_plan = origin.create_usage_plan(NewUsagePlan::new("q")).unwrap();
        let member = origin.create_api_key(NewApiKey::new("m")).unwrap();
        origin.add_key_to_plan(&plan_id, &member.id).unwrap();
        let unnamed = origin.create_api_key(NewApiKey::new("u")).unwrap();
        let (local, remote) = (copy(&origin), copy(&origin));
        local.delete_api_key(&key_id).unwrap();
        local.delete_usage_plan(&other_plan.id).unwrap();
        local.remove_key_from_plan(&plan_id, &member.id).unwrap();
        local.delete_api_key(&unnamed.id).unwrap();
        let mut removed: HashSet<u64> = MergeBase::of(&origin.snapshot())
            .removed_in(&MergeBase::of(&local.snapshot()))
            .into_iter()
            .collect();
        assert!(removed.remove(&super::key_id(&unnamed.id)));

        let (mine, theirs) = (local.snapshot(), remote.snapshot());
        let base = MergeBase::default().with_removed(&removed, &mine, &theirs);
        let result = UsagePlans::new();
        result
            .restore(RegistrySnapshot::merge(&base, &mine, &theirs))
            .unwrap();
        assert!(result.api_key(&key_id).is_err(), "the key stays deleted");
        assert!(result.usage_plan(&other_plan.id).is_err(), "the plan too");
        assert_eq!(member_ids(&result, &plan_id), Vec::<String>::new());
        assert!(result.api_key(&member.id).is_ok(), "the member's key stays");
        assert!(result.api_key(&unnamed.id).is_ok(), "not named: back");

        // Added back locally, a membership named removed stays.
        local.add_key_to_plan(&plan_id, &member.id).unwrap();
        let mine = local.snapshot();
        let base = MergeBase::default().with_removed(&removed, &mine, &theirs);
        let result = RegistrySnapshot::merge(&base, &mine, &theirs);
        let plan = result.plans.iter().find(|p| p.plan.id == plan_id).unwrap();
        assert_eq!(plan.keys, vec![member.id.clone()]);
    }

    /// The same for what the other side names as removed: merged against
    /// nothing, a key it deleted that this side still holds goes.
    #[test]
    fn what_the_other_side_removed_stays_removed_without_a_base() {
        let (origin, _, key_id) = base();
        let (local, remote) = (copy(&origin), copy(&origin));
        remote.delete_api_key(&key_id).unwrap();
        let removed: HashSet<u64> = MergeBase::of(&origin.snapshot())
            .removed_in(&MergeBase::of(&remote.snapshot()))
            .into_iter()
            .collect();
        let (mine, theirs) = (local.snapshot(), remote.snapshot());
        let against_nothing = RegistrySnapshot::merge(&MergeBase::default(), &mine, &theirs);
        assert_eq!(against_nothing.keys.len(), 1, "without the names: back");
        let base = MergeBase::default().with_removed(&removed, &theirs, &mine);
        let result = RegistrySnapshot::merge(&base, &mine, &theirs);
        assert_eq!(result.keys.len(), 0, "the key stays deleted");
        assert!(result.plans[0].keys.is_empty());
    }

    #[test]
    fn changes_on_both_sides_are_kept() {
        let (origin, plan_id, key_id) = base();
        let (local, remote) = (copy(&origin), copy(&origin));
        let mine = local.create_api_key(NewApiKey::new("mine")).unwrap();
        local.add_key_to_plan(&plan_id, &mine.id).unwrap();
        let theirs = remote.create_api_key(NewApiKey::new("theirs")).unwrap();
        remote
            .update_usage_plan(&plan_id, |p| {
                p.description = Some("remote".into());
                Ok(())
            })
            .unwrap();
        local
            .update_api_key(&key_id, |k| {
                k.enabled = false;
                Ok(())
            })
            .unwrap();

        let result = merged(&origin, &local, &remote);
        assert!(result.api_key(&mine.id).is_ok(), "local creation kept");
        assert!(result.api_key(&theirs.id).is_ok(), "remote creation kept");
        assert!(
            !result.api_key(&key_id).unwrap().enabled,
            "local change kept"
        );
        assert_eq!(
            result.usage_plan(&plan_id).unwrap().description.as_deref(),
            Some("remote")
        );
        let members = member_ids(&result, &plan_id);
        assert!(
            members.contains(&mine.id) && members.contains(&key_id),
            "{members:?}"
        );
    }

    #[test]
    fn a_key_put_in_two_overlapping_plans_keeps_one() {
        let origin = UsagePlans::new();
        let p1 = origin.create_usage_plan(NewUsagePlan::new("p1")).unwrap();
        let p2 = origin.create_usage_plan(NewUsagePlan::new("p2")).unwrap();
        let k = origin.create_api_key(NewApiKey::new("k")).unwrap();
        let (local, remote) = (copy(&origin), copy(&origin));
        local.add_key_to_plan(&p1.id, &k.id).unwrap();
        remote.add_key_to_plan(&p2.id, &k.id).unwrap();
        let result = merged(&origin, &local, &remote);
        assert_eq!(result.usage_plans_of_key(&k.id).unwrap().len(), 1);
    }

    #[test]
    fn members_merge_set_wise_and_deletions_apply() {
        let (origin, plan_id, key_id) = base();
        let (local, remote) = (copy(&origin), copy(&origin));
        let a = local.create_api_key(NewApiKey::new("a")).unwrap();
        let b = remote.create_api_key(NewApiKey::new("b")).unwrap();
        // Both sides put a new key in the plan (after taking k out locally).
        local.remove_key_from_plan(&plan_id, &key_id).unwrap();
        local.add_key_to_plan(&plan_id, &a.id).unwrap();
        remote.delete_api_key(&key_id).unwrap();
        let result = merged(&origin, &local, &remote);
        let members = member_ids(&result, &plan_id);
        assert_eq!(
            members,
            vec![a.id.clone()],
            "k removed locally and deleted remotely; a added locally"
        );
        assert!(result.api_key(&key_id).is_err(), "remote deletion applied");
        assert!(result.api_key(&b.id).is_ok());
    }

    /// Replicas share hashed ids (named removals) whatever Rust built
    /// each: these are XXH3-64 as its reference implementation computes
    /// them (Python's `xxhash` read the same), one seed per kind.
    #[test]
    fn hashed_ids_are_the_same_in_every_build() {
        let (key, plan) = (super::key_id("k"), plan_id("k"));
        assert_eq!(key, 0x089c_14ce_3f99_8c5e);
        assert_eq!(plan, 0x2326_c12b_06cc_4849);
        assert_eq!(membership(plan, key), 0xde4c_a7fe_0864_61b1);
    }
}
