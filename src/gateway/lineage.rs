//! Where a shared registry comes from. Every registry a replica publishes
//! names the published registries it was built on, newest first; every
//! replica remembers the registries it held lately. After Redis lost its
//! data, a registry found there is merged with the local one against the
//! latest registry both come from: merged against nothing, a key one side
//! had deleted (or a membership it had removed, or an update it had made)
//! came back from the other side's older copy.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::registry::MergeBase;
use crate::RegistrySnapshot;

/// How many ancestors a shared registry names (its own id first): a
/// replica whose registry names the one Redis went back to keeps its own
/// whole, so this many admin changes since a save are merged safely
/// (16 did not reach a save a minute old in a black-box run). 64 ids are
/// about 1.3 KB of the shared registry.
const LINEAGE: usize = 64;
/// How many registries a replica remembers: the last ones it held, however
/// long ago (admin changes may be hours apart, and a loss must find the
/// registry held before the last change).
const KEPT: usize = 8;
/// How many removals a shared registry names (hashed ids, about 20 bytes
/// each in its JSON).
const REMOVED: usize = 1_024;
/// How many of a merge's side ids a registry published after it names,
/// from each side.
const MERGED: usize = LINEAGE / 2;
/// How many anchors a shared registry names (see [`Shared::anchors`]):
/// three losses' lineages, about 4 KB of its JSON.
const ANCHORS: usize = 3 * LINEAGE;

/// A registry as replicas share it in Redis: the registry's own fields,
/// and `lineage` beside them (a registry published by a version without it
/// reads as one of unknown origin).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Shared {
    #[serde(flatten)]
    pub(crate) registry: RegistrySnapshot,
    /// The ids of this registry and of the published registries it was
    /// built on, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) lineage: Vec<u64>,
    /// Keys, plans and memberships removed lately (see
    /// `MergeBase::removed_in`), newest first: a merge against a base that
    /// lacks them keeps them removed. (Named `removals`: the versions
    /// before named them `removed`, untagged and hashed another way.)
    #[serde(default, rename = "removals", skip_serializing_if = "Vec::is_empty")]
    pub(crate) removed: Vec<Removal>,
    /// Registries this one comes from, however many publishes ago: the
    /// lineage of each registry a replica published right after it found
    /// Redis had lost its data (or gone back), and of the one it merged
    /// with then. Newest first, at most `ANCHORS`. A replica that holds
    /// one of them (paused through the loss and more changes since than a
    /// lineage names) merges against it: the changes made since win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) anchors: Vec<u64>,
    /// Removals an ancestor named that this registry undid since (the
    /// item added back), however many publishes ago: merged against
    /// nothing, such a removal does not take the item from it. Newest
    /// first, at most `REMOVED`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) undone: Vec<Removal>,
    /// How many publishes the registry's longest history holds (a merge
    /// has the larger of its sides'): merged against nothing, the side
    /// that has seen more wins what both changed. (0 from a version
    /// without it.)
    #[serde(default)]
    pub(crate) depth: u64,
}

/// A removal a shared registry names: the hashed id of the key, plan or
/// membership removed, and the id of the registry that first named it.
/// A side that descends from that registry and holds the item again added
/// it back since: there the removal does not apply. (In JSON, `[id, by]`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub(crate) struct Removal {
    /// The hashed id of what was removed.
    pub(crate) id: u64,
    /// The registry that first named it.
    pub(crate) by: u64,
}

impl From<(u64, u64)> for Removal {
    fn from((id, by): (u64, u64)) -> Self {
        Self { id, by }
    }
}

impl From<Removal> for (u64, u64) {
    fn from(removal: Removal) -> Self {
        (removal.id, removal.by)
    }
}

impl Removal {
    /// The ids of `removals` that a side with `lineage`, which undid
    /// `undone`, has not seen made (it does not descend from the registry
    /// that named them, nor undid them): held there, they are older
    /// copies, and merged against nothing the removal stands.
    pub(crate) fn unseen_by(
        removals: &[Removal],
        lineage: &[u64],
        undone: &[Removal],
    ) -> HashSet<u64> {
        let undone: HashSet<&Removal> = undone.iter().collect();
        removals
            .iter()
            .filter(|removal| !lineage.contains(&removal.by) && !undone.contains(removal))
            .map(|removal| removal.id)
            .collect()
    }
}

/// What a registry names: removals made lately, and removals undone.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Named {
    /// See [`Shared::removed`].
    pub(crate) removed: Vec<Removal>,
    /// See [`Shared::undone`].
    pub(crate) undone: Vec<Removal>,
}

/// The lineage alone of a shared registry (the rest is skipped).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LineageOnly {
    #[serde(default)]
    pub(crate) lineage: Vec<u64>,
}

/// A registry a replica published or took in, as it keeps it: its
/// lineage, and what a merge against it needs (not the registry itself).
#[derive(Debug, Clone, Default)]
pub(crate) struct Base {
    /// The lineage of the registry (its own id first).
    pub(crate) lineage: Vec<u64>,
    /// The registry as the base of a three-way merge.
    pub(crate) merge: Arc<MergeBase>,
    /// What the registry names as removed lately.
    pub(crate) removed: Vec<Removal>,
    /// The registry's anchors (see [`Shared::anchors`]).
    pub(crate) anchors: Vec<u64>,
    /// The removals the registry undid (see [`Shared::undone`]).
    pub(crate) undone: Vec<Removal>,
    /// The registry's depth (see [`Shared::depth`]).
    pub(crate) depth: u64,
}

impl Base {
    /// `shared`, kept as a base.
    pub(crate) fn of(shared: &Shared) -> Self {
        Self::with_merge(shared, MergeBase::of(&shared.registry))
    }

    /// `shared`, kept as a base, with `merge` built of its registry.
    fn with_merge(shared: &Shared, merge: MergeBase) -> Self {
        Self {
            lineage: shared.lineage.clone(),
            merge: Arc::new(merge),
            removed: shared.removed.clone(),
            anchors: shared.anchors.clone(),
            undone: shared.undone.clone(),
            depth: shared.depth,
        }
    }

    /// What a registry built on this base (`now`, as a merge's base)
    /// names: as removed lately, what the base names, and what it held
    /// that the registry does not (newest first, named `by` the id the
    /// registry is published under), but for what the registry holds
    /// again: those are undone, with what the base names undone. At most
    /// `REMOVED` of each.
    pub(crate) fn named_by(&self, now: &MergeBase, by: u64) -> Named {
        let mut removed: Vec<Removal> = self
            .merge
            .removed_in(now)
            .into_iter()
            .map(|id| Removal { id, by })
            .collect();
        removed.truncate(REMOVED);
        let mut undone = Vec::new();
        if !self.removed.is_empty() {
            let present: HashSet<u64> = now.ids().collect();
            let mut named: HashSet<u64> = removed.iter().map(|removal| removal.id).collect();
            for removal in &self.removed {
                if present.contains(&removal.id) {
                    undone.push(*removal);
                } else if removed.len() < REMOVED && named.insert(removal.id) {
                    removed.push(*removal);
                }
            }
        }
        let undone = at_most_once(undone, &[&self.undone]);
        Named { removed, undone }
    }
}

/// `first`, then the removals of `more` not in it, each once; at most
/// `REMOVED`.
fn at_most_once(first: Vec<Removal>, more: &[&[Removal]]) -> Vec<Removal> {
    let mut named: HashSet<Removal> = first.iter().copied().collect();
    let mut all = first;
    let more = more.iter().copied().flatten().copied();
    all.extend(more.filter(|removal| named.insert(*removal)));
    all.truncate(REMOVED);
    all
}

impl Shared {
    /// The base of what a replica publishes after merging its registry
    /// (built on `local`) with `self`: this registry, named as built on
    /// both sides (each side's newest ids first), both sides' lineages
    /// anchors when the merge followed a loss (`after_loss`).
    pub(crate) fn merged_with(mut self, local: &Base, after_loss: bool) -> Self {
        let (theirs, ours) = match after_loss {
            true => (&self.lineage[..], &local.lineage[..]),
            false => (&[][..], &[][..]),
        };
        self.anchors = anchored(&[theirs, ours, &self.anchors, &local.anchors]);
        let mut lineage: Vec<u64> = self.lineage.iter().copied().take(MERGED).collect();
        for id in local.lineage.iter().take(MERGED) {
            if !lineage.contains(id) {
                lineage.push(*id);
            }
        }
        self.lineage = lineage;
        let mut named: HashSet<u64> = self.removed.iter().map(|removal| removal.id).collect();
        let theirs = local.removed.iter().copied();
        self.removed
            .extend(theirs.filter(|removal| named.insert(removal.id)));
        self.removed.truncate(REMOVED);
        self.undone = at_most_once(Vec::new(), &[&self.undone, &local.undone]);
        self.depth = self.depth.max(local.depth);
        self
    }

    /// `registry`, to be published over `base`: a new id, then `base`'s
    /// lineage.
    #[cfg(test)]
    pub(crate) fn built_on(base: &Base, registry: RegistrySnapshot) -> Self {
        Self::published_on(base, registry, false).0
    }

    /// [`built_on`](Self::built_on), its lineage first among `base`'s
    /// anchors when it is published right after a loss (`after_loss`),
    /// and the registry as the base it is once published (built once for
    /// both).
    pub(crate) fn published_on(
        base: &Base,
        registry: RegistrySnapshot,
        after_loss: bool,
    ) -> (Self, Base) {
        let id = rand::random::<u64>();
        let lineage: Vec<u64> = std::iter::once(id)
            .chain(base.lineage.iter().copied())
            .take(LINEAGE)
            .collect();
        let merge = MergeBase::of(&registry);
        let Named { removed, undone } = base.named_by(&merge, id);
        let anchored_now = if after_loss { &lineage[..] } else { &[] };
        let anchors = anchored(&[anchored_now, &base.anchors]);
        let shared = Self {
            registry,
            lineage,
            removed,
            anchors,
            undone,
            depth: base.depth + 1,
        };
        let next = Base::with_merge(&shared, merge);
        (shared, next)
    }
}

/// The ids of `lists`, in order, each once; at most `ANCHORS`.
fn anchored(lists: &[&[u64]]) -> Vec<u64> {
    let mut anchors: Vec<u64> = Vec::new();
    for id in lists.iter().copied().flatten() {
        if anchors.len() == ANCHORS {
            break;
        }
        if !anchors.contains(id) {
            anchors.push(*id);
        }
    }
    anchors
}

/// The registries a replica held lately (published or taken in), by id,
/// each as a merge's base.
#[derive(Debug, Default)]
pub(crate) struct Known {
    held: VecDeque<(u64, Arc<MergeBase>)>,
}

impl Known {
    /// Remembers `base` (one without an id cannot be named, and is not;
    /// one held already is not twice).
    pub(crate) fn held(&mut self, base: &Base) {
        let Some(&id) = base.lineage.first() else {
            return;
        };
        if self.held.iter().any(|(held, _)| *held == id) {
            return;
        }
        self.held.truncate(KEPT - 1);
        self.held.push_front((id, base.merge.clone()));
    }

    /// The latest registry `lineage` comes from that this replica held:
    /// everything this replica holds now comes from it too.
    pub(crate) fn common_ancestor(&self, lineage: &[u64]) -> Option<&MergeBase> {
        lineage.iter().find_map(|id| {
            self.held
                .iter()
                .find(|(held, _)| held == id)
                .map(|(_, base)| base.as_ref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewApiKey, UsagePlans};

    fn registry_with(names: &[&str]) -> RegistrySnapshot {
        let plans = UsagePlans::new();
        for name in names {
            plans.create_api_key(NewApiKey::new(*name)).unwrap();
        }
        plans.snapshot()
    }

    #[test]
    fn the_latest_ancestor_held_is_found_through_registries_never_seen() {
        let mut known = Known::default();
        let first = Shared::built_on(&Base::of(&Shared::default()), registry_with(&["a"]));
        known.held(&Base::of(&first));
        // Two publishes by others this replica never took in.
        let unseen = Shared::built_on(&Base::of(&first), registry_with(&["a", "b"]));
        let found = Shared::built_on(&Base::of(&unseen), registry_with(&["a", "b", "c"]));
        assert_eq!(found.lineage.len(), 3);
        assert_eq!(
            known.common_ancestor(&found.lineage),
            Some(&MergeBase::of(&first.registry))
        );
        // A registry of unknown origin (another lineage, or none) has none.
        let other = Shared::built_on(&Base::of(&Shared::default()), registry_with(&["a"]));
        assert_eq!(known.common_ancestor(&other.lineage), None);
        assert_eq!(known.common_ancestor(&[]), None);
    }

    #[test]
    fn a_registry_published_after_a_merge_names_both_sides() {
        let mut known = Known::default();
        let old = Shared::built_on(&Base::of(&Shared::default()), registry_with(&["a"]));
        let local = Shared::built_on(&Base::of(&old), registry_with(&["a", "b"]));
        known.held(&Base::of(&local));
        let remote = Shared::built_on(&Base::of(&old), registry_with(&["c"]));
        let merged_base = Base::of(&remote.clone().merged_with(&Base::of(&local), false));
        let merged = Shared::built_on(&merged_base, registry_with(&[]));
        // Both sides' ids, and their common ancestor once.
        assert_eq!(
            merged.lineage[1..],
            [remote.lineage[0], old.lineage[0], local.lineage[0]]
        );
        // A replica that held only the local side finds it.
        assert_eq!(
            known.common_ancestor(&merged.lineage),
            Some(&MergeBase::of(&local.registry))
        );
    }

    #[test]
    fn a_registry_names_what_was_removed_until_it_is_back() {
        let plans = UsagePlans::new();
        let a = plans.create_api_key(NewApiKey::new("a")).unwrap();
        let first = Shared::built_on(&Base::of(&Shared::default()), plans.snapshot());
        assert_eq!(first.removed, vec![]);
        let held = plans.snapshot();
        plans.delete_api_key(&a.id).unwrap();
        let second = Shared::built_on(&Base::of(&first), plans.snapshot());
        assert_eq!(second.removed.len(), 1, "the key");
        assert_eq!(second.removed[0].by, second.lineage[0], "named by it");
        // Named on, through publishes that remove nothing.
        let third = Shared::built_on(&Base::of(&second), plans.snapshot());
        assert_eq!(
            third.removed, second.removed,
            "by the registry that first named it"
        );
        let json = serde_json::to_string(&third).unwrap();
        let named = format!(
            r#""removals":[[{},{}]]"#,
            second.removed[0].id, second.lineage[0]
        );
        assert!(json.contains(&named), "{json}");
        // Back (a restore of the older registry, say): named no more.
        let back = Shared::built_on(&Base::of(&third), held);
        assert_eq!(back.removed, vec![]);
        assert_eq!(back.undone, second.removed, "named undone");
        let json = serde_json::to_string(&back).unwrap();
        assert!(!json.contains("removals"), "{json}");
        // Named undone on, through publishes that change nothing.
        let later = Shared::built_on(&Base::of(&back), plans.snapshot());
        assert_eq!(later.undone, second.removed);
    }

    #[test]
    fn a_published_registry_is_the_base_it_reads_back_as() {
        let plans = UsagePlans::new();
        let a = plans.create_api_key(NewApiKey::new("a")).unwrap();
        let first = Base::of(&Shared::built_on(&Base::default(), plans.snapshot()));
        plans.delete_api_key(&a.id).unwrap();
        let (shared, base) = Shared::published_on(&first, plans.snapshot(), false);
        let read: Shared = serde_json::from_str(&serde_json::to_string(&shared).unwrap()).unwrap();
        let read_back = Base::of(&read);
        assert_eq!(base.lineage, read_back.lineage);
        assert_eq!(base.merge, read_back.merge);
        assert_eq!(base.removed, read_back.removed);
        assert_eq!(base.removed.len(), 1);
    }

    #[test]
    fn anchors_outlive_the_lineage_and_are_bounded() {
        let held = Base::of(&Shared::built_on(&Base::default(), registry_with(&["a"])));
        let id = held.lineage[0];
        // Published right after a loss: its lineage anchored.
        let (_, mut base) = Shared::published_on(&held, registry_with(&["a"]), true);
        let anchored = base.lineage.clone();
        assert_eq!(anchored[1], id);
        for _ in 0..LINEAGE {
            base = Base::of(&Shared::built_on(&base, registry_with(&["a"])));
        }
        assert!(!base.lineage.contains(&id), "past the lineage");
        assert_eq!(base.anchors, anchored, "still named");
        // A merge after a loss anchors both sides; one without, neither.
        let local = Base::of(&Shared::built_on(&Base::default(), registry_with(&["b"])));
        let remote = Shared::built_on(&base, registry_with(&["a"]));
        let merged = remote.clone().merged_with(&local, true);
        assert_eq!(merged.anchors[0], remote.lineage[0]);
        assert!(merged.anchors.contains(&local.lineage[0]));
        assert!(merged.anchors.contains(&id));
        assert_eq!(remote.merged_with(&local, false).anchors, anchored);
        // Bounded, newest first.
        let mut base = held;
        for _ in 0..4 * LINEAGE {
            base = Shared::published_on(&base, registry_with(&[]), true).1;
            assert_eq!(base.anchors[0], base.lineage[0]);
        }
        assert_eq!(base.anchors.len(), ANCHORS);
    }

    #[test]
    fn depth_counts_the_longest_history() {
        let first = Base::of(&Shared::built_on(&Base::default(), registry_with(&["a"])));
        let second = Base::of(&Shared::built_on(&first, registry_with(&["a"])));
        assert_eq!((first.depth, second.depth), (1, 2));
        let other = Shared::built_on(&Base::default(), registry_with(&["b"]));
        assert_eq!(other.clone().merged_with(&second, false).depth, 2);
        let merged = Base::of(&other.merged_with(&second, true));
        assert_eq!(Shared::built_on(&merged, registry_with(&[])).depth, 3);
    }

    #[test]
    fn lineage_and_memory_are_bounded() {
        let mut known = Known::default();
        let mut shared = Shared::default();
        let mut ids = Vec::new();
        for _ in 0..(LINEAGE + 4) {
            shared = Shared::built_on(&Base::of(&shared), RegistrySnapshot::default());
            ids.push(shared.lineage[0]);
            known.held(&Base::of(&shared));
        }
        assert_eq!(shared.lineage.len(), LINEAGE);
        assert_eq!(known.held.len(), KEPT);
        // The newest are the ones kept.
        let newest = *ids.last().unwrap();
        assert!(known.common_ancestor(&[newest]).is_some());
        assert!(known.common_ancestor(&[ids[0]]).is_none());
    }

    #[test]
    fn a_shared_registry_reads_with_or_without_a_lineage() {
        let registry = registry_with(&["a"]);
        let plain = serde_json::to_string(&registry).unwrap();
        let read: Shared = serde_json::from_str(&plain).unwrap();
        assert_eq!((read.registry, read.lineage), (registry.clone(), vec![]));
        let shared = Shared::built_on(&Base::of(&Shared::default()), registry.clone());
        let json = serde_json::to_string(&shared).unwrap();
        // A version without lineages reads it as a plain registry.
        let as_plain: RegistrySnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(as_plain, registry);
        let read: Shared = serde_json::from_str(&json).unwrap();
        assert_eq!(read.lineage, shared.lineage);
    }
}
