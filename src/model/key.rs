use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The shortest API key value AWS accepts.
///
/// ```
/// use tower_usage_plans::{ErrorKind, NewApiKey, UsagePlans, MIN_KEY_VALUE_LEN};
///
/// let short = "k".repeat(MIN_KEY_VALUE_LEN - 1);
/// let err = UsagePlans::new().create_api_key(NewApiKey::new("k").with_value(short)).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::BadRequest);
/// ```
pub const MIN_KEY_VALUE_LEN: usize = 20;
/// The longest API key value AWS accepts.
///
/// ```
/// use tower_usage_plans::{NewApiKey, UsagePlans, MAX_KEY_VALUE_LEN};
///
/// let plans = UsagePlans::new();
/// assert!(plans.create_api_key(NewApiKey::new("a").with_value("k".repeat(MAX_KEY_VALUE_LEN))).is_ok());
/// assert!(plans.create_api_key(NewApiKey::new("b").with_value("k".repeat(MAX_KEY_VALUE_LEN + 1))).is_err());
/// ```
pub const MAX_KEY_VALUE_LEN: usize = 128;
pub(crate) const MAX_NAME_LEN: usize = 1024;

/// An API key. AWS `ApiKey`; timestamps are epoch seconds as on the wire.
///
/// ```
/// use tower_usage_plans::{NewApiKey, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let key = plans
///     .create_api_key(NewApiKey::new("alice").with_value("alice-key-0123456789abcdef").with_enabled(true))
///     .unwrap();
/// assert_eq!(key.value.as_deref(), Some("alice-key-0123456789abcdef"));
/// assert!(key.enabled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApiKey {
    /// Server-generated identifier (10 lower-case alphanumerics).
    pub id: String,
    /// The secret clients send; `None` where it is not shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The customer this key belongs to (AWS Marketplace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A disabled key is refused with 403.
    pub enabled: bool,
    /// Creation time, epoch seconds.
    pub created_date: i64,
    /// Last change, epoch seconds.
    pub last_updated_date: i64,
    /// Legacy `restApiId/stageName` bindings, kept as given.
    #[serde(default)]
    pub stage_keys: Vec<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl ApiKey {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            if name.chars().count() > MAX_NAME_LEN {
                return Err(Error::bad_request(format!(
                    "API Key name must be at most {MAX_NAME_LEN} characters"
                )));
            }
        }
        super::tags::validate(&self.tags)
    }

    /// The key without its secret value, as AWS shows it unless asked.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let key = UsagePlans::new().create_api_key(NewApiKey::new("alice")).unwrap();
    /// assert!(key.value.is_some());
    /// assert_eq!(key.without_value().value, None);
    /// ```
    pub fn without_value(mut self) -> Self {
        self.value = None;
        self
    }
}

pub(crate) fn validate_key_value(value: &str) -> Result<()> {
    let len = value.chars().count();
    if len < MIN_KEY_VALUE_LEN {
        return Err(Error::bad_request(format!(
            "API Key value should be at least {MIN_KEY_VALUE_LEN} characters"
        )));
    }
    if len > MAX_KEY_VALUE_LEN {
        return Err(Error::bad_request(format!(
            "API Key value should be at most {MAX_KEY_VALUE_LEN} characters"
        )));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::bad_request(
            "API Key value must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A legacy stage binding in the CreateApiKey input. AWS `StageKey`.
///
/// ```
/// use tower_usage_plans::StageKey;
///
/// let binding: StageKey = serde_json::from_str(r#"{"restApiId":"api","stageName":"prod"}"#).unwrap();
/// assert_eq!(binding, StageKey::new("api", "prod"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StageKey {
    /// The API id.
    #[serde(default)]
    pub rest_api_id: Option<String>,
    /// The stage name.
    #[serde(default)]
    pub stage_name: Option<String>,
}

impl StageKey {
    /// The binding `rest_api_id/stage_name`.
    ///
    /// ```
    /// use tower_usage_plans::{NewApiKey, StageKey};
    ///
    /// let mut input = NewApiKey::new("legacy");
    /// input.stage_keys.push(StageKey::new("api", "prod"));
    /// assert_eq!(input.stage_keys[0].stage_name.as_deref(), Some("prod"));
    /// ```
    pub fn new(rest_api_id: impl Into<String>, stage_name: impl Into<String>) -> Self {
        Self {
            rest_api_id: Some(rest_api_id.into()),
            stage_name: Some(stage_name.into()),
        }
    }
}

/// The input of [`UsagePlans::create_api_key`](crate::UsagePlans::create_api_key).
/// AWS `CreateApiKey` body; like AWS, a key is **disabled** unless
/// `enabled` is set.
///
/// ```
/// use tower_usage_plans::NewApiKey;
///
/// let input: NewApiKey = serde_json::from_str(r#"{"name":"n"}"#).unwrap();
/// assert!(!input.enabled);
/// assert!(input.value.is_none()); // a value is generated
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NewApiKey {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether the key works at once (default `false`, as in AWS).
    #[serde(default)]
    pub enabled: bool,
    /// Accepted for compatibility; ids are always distinct here.
    #[serde(default)]
    pub generate_distinct_id: bool,
    /// The secret (20–128 characters); generated when absent.
    #[serde(default)]
    pub value: Option<String>,
    /// Legacy stage bindings, kept as `restApiId/stageName`.
    #[serde(default)]
    pub stage_keys: Vec<StageKey>,
    /// The customer this key belongs to.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl NewApiKey {
    /// A key named `name`, disabled, with a generated value.
    ///
    /// ```
    /// # use tower_usage_plans::NewApiKey;
    /// let input = NewApiKey::new("alice");
    /// assert_eq!(input.name.as_deref(), Some("alice"));
    /// assert!(!input.enabled && input.value.is_none());
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Uses `value` as the secret instead of generating one.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let input = NewApiKey::new("alice").with_value("alice-key-0123456789abcdef");
    /// let key = UsagePlans::new().create_api_key(input).unwrap();
    /// assert_eq!(key.value.as_deref(), Some("alice-key-0123456789abcdef"));
    /// ```
    pub fn with_value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// Sets whether the key is enabled.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let key = UsagePlans::new().create_api_key(NewApiKey::new("alice").with_enabled(true)).unwrap();
    /// assert!(key.enabled);
    /// ```
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Renamed [`with_enabled`](Self::with_enabled).
    ///
    /// ```
    /// # use tower_usage_plans::NewApiKey;
    /// #[allow(deprecated)]
    /// let input = NewApiKey::new("alice").enabled(true);
    /// assert_eq!(input, NewApiKey::new("alice").with_enabled(true));
    /// ```
    #[deprecated(since = "0.2.0", note = "use with_enabled")]
    pub fn enabled(self, enabled: bool) -> Self {
        self.with_enabled(enabled)
    }

    /// Sets the customer id.
    ///
    /// ```
    /// # use tower_usage_plans::{NewApiKey, UsagePlans};
    /// let key = UsagePlans::new().create_api_key(NewApiKey::new("alice").with_customer_id("cust-1")).unwrap();
    /// assert_eq!(key.customer_id.as_deref(), Some("cust-1"));
    /// ```
    pub fn with_customer_id(mut self, customer_id: impl Into<String>) -> Self {
        self.customer_id = Some(customer_id.into());
        self
    }
}

/// A key's membership of a plan. AWS `UsagePlanKey`.
///
/// ```
/// use tower_usage_plans::{NewApiKey, NewUsagePlan, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
/// let key = plans.create_api_key(NewApiKey::new("k")).unwrap();
/// let member = plans.add_key_to_plan(&plan.id, &key.id).unwrap();
/// assert_eq!(member.key_type, "API_KEY");
/// assert_eq!(member.id, key.id);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsagePlanKey {
    /// The API key's id.
    pub id: String,
    /// Always `API_KEY`.
    #[serde(rename = "type")]
    pub key_type: String,
    /// The key's value, where it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl From<&ApiKey> for UsagePlanKey {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.clone(),
            key_type: "API_KEY".to_owned(),
            value: key.value.clone(),
            name: key.name.clone(),
        }
    }
}
