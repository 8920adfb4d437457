//! The access keys that may call the admin API, and the `USAGE_PLANS_ADMIN_CREDENTIALS` format.

use std::collections::BTreeMap;
use std::fmt;

/// Access-key-id → secret pairs that may call the admin API.
///
/// The secrets are never printed: `Debug` shows the access key ids only.
///
/// ```
/// use tower_usage_plans::admin::AdminCredentials;
///
/// // The USAGE_PLANS_ADMIN_CREDENTIALS format: comma-separated ACCESS_KEY_ID:SECRET pairs.
/// let creds = AdminCredentials::parse_list("AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
///     .expect("valid list");
/// assert!(!creds.is_empty());
///
/// // Or build them in code.
/// let creds = creds.with_access_key("AKIDOTHER", "other-secret");
/// let shown = format!("{creds:?}");
/// assert!(shown.contains("AKIDOTHER"));
/// assert!(!shown.contains("other-secret"));
///
/// // A bad entry is reported without echoing the secret.
/// let err = AdminCredentials::parse_list("AKIDEXAMPLE:").unwrap_err();
/// assert!(err.to_string().contains("AKIDEXAMPLE"));
/// ```
#[derive(Clone, Default)]
pub struct AdminCredentials {
    keys: BTreeMap<String, String>,
}

impl AdminCredentials {
    /// An empty set of credentials (which authenticates nobody).
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// assert!(AdminCredentials::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one access key id and its secret, builder style.
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// let creds = AdminCredentials::new().with_access_key("AKIDEXAMPLE", "secret");
    /// assert!(format!("{creds:?}").contains("AKIDEXAMPLE"));
    /// ```
    pub fn with_access_key(
        mut self,
        access_key_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        self.insert(access_key_id, secret);
        self
    }

    /// Renamed [`with_access_key`](Self::with_access_key).
    #[deprecated(since = "0.2.0", note = "use with_access_key")]
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// #[allow(deprecated)]
    /// let creds = AdminCredentials::new().with("AKIDEXAMPLE", "secret");
    /// assert!(!creds.is_empty());
    /// ```
    pub fn with(self, access_key_id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.with_access_key(access_key_id, secret)
    }

    /// Adds (or replaces) one access key id and its secret.
    ///
    /// An access key id containing `/` can never match a SigV4 credential scope.
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// let mut creds = AdminCredentials::new();
    /// creds.insert("AKIDEXAMPLE", "secret");
    /// assert!(!creds.is_empty());
    /// ```
    pub fn insert(&mut self, access_key_id: impl Into<String>, secret: impl Into<String>) {
        self.keys.insert(access_key_id.into(), secret.into());
    }

    /// Parses `"AKID:SECRET,AKID2:SECRET2"`, the format of the `USAGE_PLANS_ADMIN_CREDENTIALS`
    /// environment variable.
    ///
    /// Whitespace around entries, ids and secrets is ignored, and so are blank entries after the
    /// last one (a trailing comma); a blank entry before another (`A:a,,B:b`: a variable left
    /// unset in a template, say) is an error. The secret is everything after the first `:`. An entry without `:`, with an empty
    /// id or secret, with an id containing `/`, whitespace or non-ASCII characters, or repeating
    /// an id is an error; the error names the entry by position (and by access key id when that is
    /// valid) and never contains a secret.
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// let creds = AdminCredentials::parse_list(" AKID1:s1, AKID2:s2:with:colons ,").unwrap();
    /// assert!(format!("{creds:?}").contains(r#"["AKID1", "AKID2"]"#));
    /// assert!(AdminCredentials::parse_list("AKID1:s1,AKID1:s2").is_err()); // repeated id
    /// assert!(AdminCredentials::parse_list("AKID1:s1,,AKID2:s2").is_err()); // an empty entry
    /// ```
    pub fn parse_list(s: &str) -> Result<Self, CredentialsError> {
        let mut creds = Self::new();
        let entries =
            comma_list(s).map_err(|entry_number| CredentialsError::NotAPair { entry_number })?;
        for (index, entry) in entries.into_iter().enumerate() {
            let entry_number = index + 1;
            let Some((id, secret)) = entry.split_once(':') else {
                return Err(CredentialsError::NotAPair { entry_number });
            };
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty() {
                return Err(CredentialsError::EmptyAccessKeyId { entry_number });
            }
            if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
                return Err(CredentialsError::InvalidAccessKeyId { entry_number });
            }
            if secret.is_empty() {
                return Err(CredentialsError::EmptySecret {
                    entry_number,
                    access_key_id: id.to_owned(),
                });
            }
            if creds.keys.contains_key(id) {
                return Err(CredentialsError::RepeatedAccessKeyId {
                    entry_number,
                    access_key_id: id.to_owned(),
                });
            }
            creds.insert(id, secret);
        }
        Ok(creds)
    }

    /// Adds (or replaces) every pair of `other`.
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// let mut creds = AdminCredentials::new().with_access_key("AKID1", "s1");
    /// creds.extend(AdminCredentials::new().with_access_key("AKID2", "s2"));
    /// assert!(format!("{creds:?}").contains(r#"["AKID1", "AKID2"]"#));
    /// ```
    pub fn extend(&mut self, other: AdminCredentials) {
        self.keys.extend(other.keys);
    }

    /// `true` when no access key is configured.
    ///
    /// ```
    /// # use tower_usage_plans::admin::AdminCredentials;
    /// assert!(AdminCredentials::parse_list(" , ").unwrap().is_empty());
    /// assert!(!AdminCredentials::parse_list("AKID:secret").unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn secret_for(&self, access_key_id: &str) -> Option<&str> {
        self.keys.get(access_key_id).map(String::as_str)
    }
}

impl fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("access_key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why [`AdminCredentials::parse_list`] refused a list. Entries are
/// numbered from 1; no variant holds (or prints) a secret.
///
/// ```
/// use tower_usage_plans::admin::{AdminCredentials, CredentialsError};
///
/// let err = AdminCredentials::parse_list("AKID1:one,AKID1:two").unwrap_err();
/// assert_eq!(
///     err,
///     CredentialsError::RepeatedAccessKeyId { entry_number: 2, access_key_id: "AKID1".into() }
/// );
/// assert_eq!(err.to_string(), "admin credential entry #2 repeats access key id 'AKID1'");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The entry has no `:` between access key id and secret.
    NotAPair {
        /// The entry's position in the list, from 1.
        entry_number: usize,
    },
    /// The entry's access key id is empty.
    EmptyAccessKeyId {
        /// The entry's position in the list, from 1.
        entry_number: usize,
    },
    /// The access key id holds `/`, whitespace or non-ASCII characters
    /// (not echoed: it may be a secret pasted in the wrong place).
    InvalidAccessKeyId {
        /// The entry's position in the list, from 1.
        entry_number: usize,
    },
    /// The entry's secret is empty.
    EmptySecret {
        /// The entry's position in the list, from 1.
        entry_number: usize,
        /// The entry's access key id.
        access_key_id: String,
    },
    /// An earlier entry has the same access key id.
    RepeatedAccessKeyId {
        /// The entry's position in the list, from 1.
        entry_number: usize,
        /// The repeated access key id.
        access_key_id: String,
    },
}

/// The entries of a comma-separated list, as the `USAGE_PLANS_*` lists
/// are written: each trimmed; blank ones after the last named are dropped
/// (a trailing comma); a blank one before another is a mistake (`a,,b`: a
/// variable left unset in a template, say), and its number, from 1, is
/// the error.
pub(crate) fn comma_list(list: &str) -> Result<Vec<&str>, usize> {
    let mut entries: Vec<&str> = list.split(',').map(str::trim).collect();
    let named = entries.iter().rposition(|entry| !entry.is_empty());
    entries.truncate(named.map_or(0, |last| last + 1));
    match entries.iter().position(|entry| entry.is_empty()) {
        Some(blank) => Err(blank + 1),
        None => Ok(entries),
    }
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAPair { entry_number } => write!(
                f,
                "admin credential entry #{entry_number} is not of the form ACCESS_KEY_ID:SECRET"
            ),
            Self::EmptyAccessKeyId { entry_number } => write!(
                f,
                "admin credential entry #{entry_number} has an empty access key id"
            ),
            Self::InvalidAccessKeyId { entry_number } => write!(
                f,
                "admin credential entry #{entry_number} has an invalid access key id \
                 (it must be printable ASCII without '/' or whitespace)"
            ),
            Self::EmptySecret {
                entry_number,
                access_key_id,
            } => write!(
                f,
                "admin credential entry #{entry_number} (access key id '{access_key_id}') \
                 has an empty secret"
            ),
            Self::RepeatedAccessKeyId {
                entry_number,
                access_key_id,
            } => write!(
                f,
                "admin credential entry #{entry_number} repeats access key id '{access_key_id}'"
            ),
        }
    }
}

impl std::error::Error for CredentialsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_list_drops_trailing_blanks_and_refuses_inner_ones() {
        assert_eq!(comma_list(" a , b ,"), Ok(vec!["a", "b"]));
        assert_eq!(comma_list(" , "), Ok(vec![]));
        assert_eq!(comma_list("a,,b"), Err(2));
        assert_eq!(comma_list(",a"), Err(1));
    }

    #[test]
    fn parse_list_errors_never_contain_secrets() {
        for (input, must_contain) in [
            ("AKID1:s3cr3t-one,wJalrXUtnFEMIK7MDENGbPxRfiCY", "#2"),
            ("AKID1:s3cr3t-one,:s3cr3t-two", "#2"),
            ("AKID1:s3cr3t-one,AKID2:", "AKID2"),
            ("AKID1:s3cr3t-one,AKID1:s3cr3t-two", "AKID1"),
            ("s3cr3t/one:AKID1", "#1"),
            ("AK ID:s3cr3t-one", "#1"),
        ] {
            let err = AdminCredentials::parse_list(input).unwrap_err().to_string();
            assert!(err.contains(must_contain), "{input}: {err}");
            for secret in ["s3cr3t", "wJalr"] {
                assert!(!err.contains(secret), "{input}: {err}");
            }
        }
    }
}
