//! Tags on plans and keys, held to AWS's limits: at most 50 a resource, a
//! key of 1 to 128 characters not starting with the reserved `aws:`, a
//! value of at most 256.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The most tags a plan or key has.
const MAX_TAGS: usize = 50;
/// The longest tag key, in characters.
const MAX_KEY_CHARS: usize = 128;
/// The longest tag value, in characters.
const MAX_VALUE_CHARS: usize = 256;

/// Checks `tags` against AWS's limits (a 400 naming the first tag out of
/// them).
pub(crate) fn validate(tags: &BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::bad_request(format!(
            "Too many tags: {} (at most {MAX_TAGS})",
            tags.len()
        )));
    }
    for (key, value) in tags {
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_KEY_CHARS {
            return Err(Error::bad_request(format!(
                "Invalid tag key {key:?}: 1 to {MAX_KEY_CHARS} characters"
            )));
        }
        if key
            .get(..4)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("aws:"))
        {
            return Err(Error::bad_request(format!(
                "Invalid tag key {key:?}: the prefix aws: is reserved"
            )));
        }
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(Error::bad_request(format!(
                "Invalid value of tag {key:?}: at most {MAX_VALUE_CHARS} characters"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tags_within_the_limits_pass_and_others_are_refused() {
        assert!(validate(&tags(&[("team", "billing"), ("empty", "")])).is_ok());
        let long_key = "k".repeat(129);
        let long_value = "v".repeat(257);
        for bad in [
            tags(&[("", "v")]),
            tags(&[(&long_key, "v")]),
            tags(&[("aws:owner", "v")]),
            tags(&[("AWS:owner", "v")]),
            tags(&[("k", &long_value)]),
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        let many: BTreeMap<String, String> =
            (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&many).is_err());
        assert!(validate(&many.into_iter().take(50).collect()).is_ok());
    }
}
