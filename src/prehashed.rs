//! Pass-through hashers for keys that carry their own hash (key digests,
//! counter keys, a counter's lease slots): the map does no hashing work
//! on the hot path.

use std::hash::{BuildHasherDefault, Hasher};

/// Takes a `u64` written with `write_u64`, or the first eight bytes of a
/// byte string (a digest, already uniformly random).
#[derive(Default, Clone, Copy)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            let mut head = [0; 8];
            head.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_ne_bytes(head);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    // `[u8; N]` and `str` hash their length too; it adds nothing here.
    fn write_usize(&mut self, _: usize) {}
}

pub(crate) type Prehashed = BuildHasherDefault<PrehashedHasher>;

/// For keys of a [`CounterKey`](crate::store::CounterKey) (its hash,
/// written with `write_u64`) and a short name (a bucket's, from the plan's
/// configuration: not chosen by clients), as a lease slot is: the name's
/// bytes are mixed in (FNV-1a), the plan-wide bucket's empty name in one
/// step.
#[derive(Default, Clone, Copy)]
pub(crate) struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 ^= hash;
    }
}

pub(crate) type SlotHashed = BuildHasherDefault<SlotHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CounterKey;
    use std::hash::BuildHasher;

    #[test]
    fn a_slot_hash_tells_counters_and_buckets_apart() {
        let hash = |counter: &CounterKey, bucket: &str| {
            SlotHashed::default().hash_one((counter.clone(), Box::<str>::from(bucket)))
        };
        let (a, b) = (CounterKey::new("plan", "a"), CounterKey::new("plan", "b"));
        assert_eq!(hash(&a, ""), hash(&CounterKey::new("plan", "a"), ""));
        assert_ne!(hash(&a, ""), hash(&b, ""));
        assert_ne!(hash(&a, ""), hash(&a, "/pets/GET"));
        assert_ne!(hash(&a, "/pets/GET"), hash(&a, "/pets/PUT"));
        assert_ne!(hash(&a, "/pets/GET"), hash(&b, "/pets/GET"));
    }
}
