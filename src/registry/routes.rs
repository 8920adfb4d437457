//! The data plane's map from a presented key value to its [`KeyRoute`].
//!
//! A key whose value the registry keeps is found by the value itself: one
//! hash with a randomly seeded fast hasher (foldhash) and one comparison of
//! the stored value, in constant time. No cryptographic hash runs per
//! request. A key kept only as its SHA-256 digest (`hash_only`, or restored
//! from such a state) is found by its digest; a bounded cache from recently
//! seen raw values to their digests saves the SHA-256 for keys in use. The
//! cache lives in memory only: nothing in it reaches a state file, Redis or a
//! log.
//!
//! Lookups with attacker-chosen values cannot degrade the map: only the
//! admin plane inserts routes, and the cache takes only values that matched
//! a key.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use ref_cast::RefCast;
use subtle::ConstantTimeEq;

use super::lookup::{digest, KeyDigest, KeyRoute};

/// How many raw values the digest cache keeps before it starts over.
const DIGEST_CACHE_CAPACITY: usize = 65_536;

/// Marks a route id that is a digest: `0xFF` never starts a key value
/// (values are printable ASCII), so the two kinds never collide.
const DIGEST_TAG: u8 = 0xFF;

/// Bytes compared in constant time (for a given length).
#[derive(RefCast)]
#[repr(transparent)]
pub(crate) struct SecretBytes([u8]);

impl PartialEq for SecretBytes {
    /// Constant time for a given length, eight bytes a step: the
    /// differences of every word are OR-ed together, and only the result
    /// is compared (`subtle`'s byte-wise `ct_eq` costs ~10 instructions a
    /// byte, most of a lookup).
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        if a.len() != b.len() {
            return false;
        }
        let (a_words, a_tail) = a.as_chunks::<8>();
        let (b_words, b_tail) = b.as_chunks::<8>();
        let mut difference = 0u64;
        for (x, y) in a_words.iter().zip(b_words) {
            difference |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
        }
        for (x, y) in a_tail.iter().zip(b_tail) {
            difference |= u64::from(x ^ y);
        }
        difference.ct_eq(&0).into()
    }
}

impl Eq for SecretBytes {}

impl Hash for SecretBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// An owned [`SecretBytes`]: a map key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RouteId(Box<[u8]>);

impl RouteId {
    /// The id of a key whose value is known.
    pub(crate) fn of_value(value: &str) -> Self {
        Self(value.as_bytes().into())
    }

    /// The id of a key known only by its digest.
    pub(crate) fn of_digest(digest: &KeyDigest) -> Self {
        Self(tagged(digest).into())
    }

    fn is_digest(&self) -> bool {
        self.0.first() == Some(&DIGEST_TAG)
    }
}

impl Hash for RouteId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        SecretBytes::ref_cast(&self.0).hash(state);
    }
}

impl Borrow<SecretBytes> for RouteId {
    fn borrow(&self) -> &SecretBytes {
        SecretBytes::ref_cast(&self.0)
    }
}

fn tagged(digest: &KeyDigest) -> [u8; 33] {
    let mut id = [DIGEST_TAG; 33];
    id[1..].copy_from_slice(digest);
    id
}

/// The map, with what finding digest-only keys needs.
pub(crate) struct Routes {
    map: DashMap<RouteId, KeyRoute, RandomState>,
    /// Routes keyed by digest; when none, a miss is a miss.
    digest_routes: AtomicUsize,
    digest_cache: DashMap<RouteId, KeyDigest, RandomState>,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            map: DashMap::default(),
            digest_routes: AtomicUsize::new(0),
            digest_cache: DashMap::default(),
        }
    }
}

impl Routes {
    /// Runs `f` on the route of the key presented as `value`.
    pub(crate) fn with<T>(&self, value: &[u8], f: impl FnOnce(Option<&KeyRoute>) -> T) -> T {
        // A presented value starting with the tag is never a stored value,
        // and must not reach a digest route directly (that would let a
        // digest stand in for the key).
        if value.first() != Some(&DIGEST_TAG) {
            if let Some(route) = self.map.get(SecretBytes::ref_cast(value)) {
                return f(Some(&route));
            }
        }
        if self.digest_routes.load(Ordering::Acquire) == 0 {
            return f(None);
        }
        let cached = self
            .digest_cache
            .get(SecretBytes::ref_cast(value))
            .map(|d| *d);
        let digest = cached.unwrap_or_else(|| digest(value));
        match self.map.get(SecretBytes::ref_cast(&tagged(&digest))) {
            Some(route) => {
                if cached.is_none() {
                    self.remember(value, digest);
                }
                f(Some(&route))
            }
            None => f(None),
        }
    }

    fn remember(&self, value: &[u8], digest: KeyDigest) {
        if self.digest_cache.len() >= DIGEST_CACHE_CAPACITY {
            self.digest_cache.clear();
        }
        self.digest_cache.insert(RouteId(value.into()), digest);
    }

    /// Inserts or replaces a route.
    pub(crate) fn insert(&self, id: RouteId, route: KeyRoute) {
        let is_digest = id.is_digest();
        if self.map.insert(id, route).is_none() && is_digest {
            self.digest_routes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Removes a route.
    pub(crate) fn remove(&self, id: &RouteId) {
        if self.map.remove(id).is_some() && id.is_digest() {
            self.digest_routes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Keeps only the routes `keep` says yes to.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&RouteId) -> bool) {
        self.map.retain(|id, _| {
            let kept = keep(id);
            if !kept && id.is_digest() {
                self.digest_routes.fetch_sub(1, Ordering::AcqRel);
            }
            kept
        });
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.digest_cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::KeyRoute;

    #[test]
    fn values_are_equal_only_when_every_byte_is() {
        let same = |a: &[u8], b: &[u8]| SecretBytes::ref_cast(a) == SecretBytes::ref_cast(b);
        let value = b"bench-key-00000000000000000007".to_vec();
        assert!(same(&value, &value.clone()));
        assert!(same(b"", b""));
        for i in 0..value.len() {
            // A difference in a whole word or in the tail, any bit.
            let mut other = value.clone();
            other[i] ^= 1 << (i % 8);
            assert!(!same(&value, &other), "byte {i}");
        }
        assert!(!same(&value, &value[..value.len() - 1]));
        assert!(!same(b"abcdefgh", b"abcdefgh\0"));
    }

    fn route(enabled: bool) -> KeyRoute {
        KeyRoute {
            enabled,
            bindings: Vec::new(),
        }
    }

    fn found(routes: &Routes, value: &str) -> Option<bool> {
        routes.with(value.as_bytes(), |r| r.map(|r| r.enabled))
    }

    #[test]
    fn values_are_found_by_value_and_digests_by_digest() {
        let routes = Routes::default();
        routes.insert(RouteId::of_value("plain-key-0123456789"), route(true));
        routes.insert(
            RouteId::of_digest(&digest(b"hashed-key-0123456789")),
            route(false),
        );
        assert_eq!(found(&routes, "plain-key-0123456789"), Some(true));
        assert_eq!(found(&routes, "hashed-key-0123456789"), Some(false));
        assert_eq!(found(&routes, "plain-key-012345678"), None);
        assert_eq!(found(&routes, "unknown-key-0123456789"), None);
        // A value is never found by its digest's bytes, nor a digest by a value.
        assert!(!routes.with(&digest(b"plain-key-0123456789"), |r| r.is_some()));
        // Nor is a digest route reached by presenting the tagged digest.
        let tagged_digest = tagged(&digest(b"hashed-key-0123456789"));
        assert!(!routes.with(&tagged_digest, |r| r.is_some()));
    }

    #[test]
    fn the_digest_cache_takes_only_matching_values_and_stays_bounded() {
        let routes = Routes::default();
        routes.insert(
            RouteId::of_digest(&digest(b"hashed-key-0123456789")),
            route(true),
        );
        for i in 0..10 {
            assert_eq!(found(&routes, &format!("wrong-key-{i:020}")), None);
        }
        assert_eq!(routes.cached(), 0, "misses are not cached");
        assert_eq!(found(&routes, "hashed-key-0123456789"), Some(true));
        assert_eq!(found(&routes, "hashed-key-0123456789"), Some(true));
        assert_eq!(routes.cached(), 1);

        for i in 0..DIGEST_CACHE_CAPACITY + 10 {
            routes.remember(format!("seen-{i}").as_bytes(), [0; 32]);
            assert!(routes.cached() <= DIGEST_CACHE_CAPACITY);
        }
    }

    #[test]
    fn removing_the_last_digest_route_turns_the_digest_path_off() {
        let routes = Routes::default();
        let id = RouteId::of_digest(&digest(b"hashed-key-0123456789"));
        routes.insert(id.clone(), route(true));
        routes.insert(id.clone(), route(false));
        assert_eq!(routes.digest_routes.load(Ordering::Relaxed), 1);
        routes.remove(&id);
        assert_eq!(routes.digest_routes.load(Ordering::Relaxed), 0);
        routes.insert(id.clone(), route(true));
        routes.insert(RouteId::of_value("plain-key-0123456789"), route(true));
        routes.retain(|id| !id.is_digest());
        assert_eq!(routes.digest_routes.load(Ordering::Relaxed), 0);
        assert_eq!(found(&routes, "plain-key-0123456789"), Some(true));
        assert_eq!(found(&routes, "hashed-key-0123456789"), None);
    }
}
