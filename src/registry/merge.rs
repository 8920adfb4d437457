//! Merging two replicas' registries that changed since a common base (the
//! gateway's replica sync: a replica that changed something locally while
//! another published keeps both sides' changes).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{PlanSnapshot, RegistrySnapshot};
use crate::model::UsagePlan;

impl RegistrySnapshot {
    /// Three-way merge of registries: per plan and per key, a side that
    /// changed it since `base` wins, local first; a plan's members merge
    /// set-wise (both sides' additions kept, both sides' removals applied);
    /// members that no longer exist are dropped.
    pub(crate) fn merge(base: &Self, local: &Self, remote: &Self) -> Self {
        three_way(base, local, remote)
    }
}

/// A plan's settings, without its members.
fn body(plan: Option<&PlanSnapshot>) -> Option<(&UsagePlan, i64)> {
    plan.map(|p| (&p.plan, p.created))
}

/// [`RegistrySnapshot::merge`].
fn three_way(
    base: &RegistrySnapshot,
    local: &RegistrySnapshot,
    remote: &RegistrySnapshot,
) -> RegistrySnapshot {
    fn pick<'a, T: PartialEq>(
        base: Option<&'a T>,
        local: Option<&'a T>,
        remote: Option<&'a T>,
    ) -> Option<&'a T> {
        if local != base {
            local
        } else {
            remote
        }
    }
    fn by_id<T>(items: &[T], id: impl Fn(&T) -> &str) -> BTreeMap<&str, &T> {
        items.iter().map(|item| (id(item), item)).collect()
    }
    /// Every id any of the three sides has.
    fn all_ids<'a, T>(sides: [&BTreeMap<&'a str, T>; 3]) -> BTreeSet<&'a str> {
        sides.iter().flat_map(|side| side.keys().copied()).collect()
    }

    let (bk, lk, rk) = (
        by_id(&base.keys, |k| &k.key.id),
        by_id(&local.keys, |k| &k.key.id),
        by_id(&remote.keys, |k| &k.key.id),
    );
    let keys: Vec<_> = all_ids([&bk, &lk, &rk])
        .iter()
        .filter_map(|id| {
            pick(
                bk.get(id).copied(),
                lk.get(id).copied(),
                rk.get(id).copied(),
            )
            .cloned()
        })
        .collect();
    let live: BTreeSet<&str> = keys.iter().map(|k| k.key.id.as_str()).collect();

    let (bp, lp, rp) = (
        by_id(&base.plans, |p| &p.plan.id),
        by_id(&local.plans, |p| &p.plan.id),
        by_id(&remote.plans, |p| &p.plan.id),
    );
    let plans = all_ids([&bp, &lp, &rp])
        .iter()
        .filter_map(|id| {
            let (b, l, r) = (
                bp.get(id).copied(),
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
            let mut plan = match (l, r) {
                (Some(l), _) if body(Some(l)) != body(b) => l.clone(),
                (_, Some(r)) => r.clone(),
                (Some(l), None) => l.clone(),
                (None, None) => return None,
            };
            let members = |p: Option<&PlanSnapshot>| -> BTreeSet<String> {
                p.map(|p| p.keys.iter().cloned().collect())
                    .unwrap_or_default()
            };
            let (bm, lm, rm) = (members(b), members(l), members(r));
            let added: BTreeSet<String> = lm
                .difference(&bm)
                .chain(rm.difference(&bm))
                .cloned()
                .collect();
            let removed: BTreeSet<String> = bm
                .difference(&lm)
                .chain(bm.difference(&rm))
                .cloned()
                .collect();
            plan.keys = bm
                .union(&added)
                .filter(|k| !removed.contains(*k) && live.contains(k.as_str()))
                .cloned()
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
                &origin.snapshot(),
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
}
