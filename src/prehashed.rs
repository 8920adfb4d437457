//! A pass-through hasher for keys that carry their own hash (key digests,
//! counter keys): the map does no hashing work on the hot path.

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
