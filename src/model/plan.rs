use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Throttle;
use crate::error::{Error, Result};
use crate::model::Quota;
use crate::route::MethodRoute;

/// A stage of an API that a plan covers, with optional per-method throttles
/// keyed `"/resource/path/METHOD"` (root: `"//GET"`). AWS `ApiStage`.
///
/// ```
/// use tower_usage_plans::{ApiStage, Throttle};
///
/// let stage = ApiStage::new("petstore", "prod")
///     .with_method_throttle("/pets/{id}/GET", Throttle::new(1.0, 2).unwrap());
/// assert_eq!(stage.name(), "petstore:prod");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ApiStage {
    /// The API's id (AWS `restApiId`).
    pub api_id: String,
    /// The stage name.
    pub stage: String,
    /// Per-method throttles that override the plan's throttle (one given
    /// as `{}` is left out).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "super::throttle::by_method"
    )]
    pub throttle: BTreeMap<String, Throttle>,
}

impl ApiStage {
    /// The stage `api_id:stage` without method throttles.
    ///
    /// ```
    /// # use tower_usage_plans::ApiStage;
    /// let stage = ApiStage::new("petstore", "prod");
    /// assert_eq!((stage.api_id.as_str(), stage.stage.as_str()), ("petstore", "prod"));
    /// assert!(stage.throttle.is_empty());
    /// ```
    pub fn new(api_id: impl Into<String>, stage: impl Into<String>) -> Self {
        Self {
            api_id: api_id.into(),
            stage: stage.into(),
            throttle: BTreeMap::new(),
        }
    }

    /// Adds a throttle for one method, keyed `"/resource/path/METHOD"`.
    ///
    /// ```
    /// # use tower_usage_plans::{ApiStage, Throttle};
    /// let stage = ApiStage::new("petstore", "prod").with_method_throttle("//GET", Throttle::new(1.0, 1).unwrap());
    /// assert_eq!(stage.throttle["//GET"].burst_limit, 1);
    /// ```
    pub fn with_method_throttle(
        mut self,
        method_path: impl Into<String>,
        throttle: Throttle,
    ) -> Self {
        self.throttle.insert(method_path.into(), throttle);
        self
    }

    /// `apiId:stage`, the form used in patch paths and by layers.
    ///
    /// ```
    /// # use tower_usage_plans::ApiStage;
    /// assert_eq!(ApiStage::new("abc123", "beta").name(), "abc123:beta");
    /// ```
    pub fn name(&self) -> String {
        format!("{}:{}", self.api_id, self.stage)
    }

    /// Whether this is the stage `api_id:stage`.
    ///
    /// ```
    /// # use tower_usage_plans::ApiStage;
    /// let stage = ApiStage::new("petstore", "prod");
    /// assert!(stage.is("petstore", "prod"));
    /// assert!(!stage.is("petstore", "beta"));
    /// ```
    pub fn is(&self, api_id: &str, stage: &str) -> bool {
        self.api_id == api_id && self.stage == stage
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.api_id.is_empty() || self.stage.is_empty() {
            return Err(Error::bad_request(
                "Invalid API stage: apiId and stage must not be empty",
            ));
        }
        // `{apiId}:{stage}` names a stage in patch paths, and
        // `{apiId}/{stage}` in stage keys: an apiId holding either
        // separator names no stage there. Blanks and control characters
        // name none anywhere.
        let unnameable = |c: char| c.is_whitespace() || c.is_control();
        if self.api_id.contains([':', '/']) || self.api_id.contains(unnameable) {
            return Err(Error::bad_request(format!(
                "Invalid apiId {:?}: it must not contain ':', '/', blanks or control characters",
                self.api_id
            )));
        }
        if self.stage.contains(unnameable) {
            return Err(Error::bad_request(format!(
                "Invalid stage {:?}: it must not contain blanks or control characters",
                self.stage
            )));
        }
        for (method_path, throttle) in &self.throttle {
            MethodRoute::parse(method_path)?;
            throttle.validate()?;
        }
        Ok(())
    }
}

/// A usage plan: who may call which stages how fast and how much. AWS
/// `UsagePlan`.
///
/// ```
/// use tower_usage_plans::{NewUsagePlan, Quota, QuotaPeriod, Throttle, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let plan = plans
///     .create_usage_plan(
///         NewUsagePlan::new("basic")
///             .with_throttle(Throttle::new(10.0, 20).unwrap())
///             .with_quota(Quota::new(1000, QuotaPeriod::Day)),
///     )
///     .unwrap();
/// let json = serde_json::to_value(&plan).unwrap();
/// assert_eq!(json["quota"]["limit"], 1000);
/// assert_eq!(json["throttle"]["rateLimit"], 10.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct UsagePlan {
    /// Server-generated identifier.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Stages the plan covers; empty means every stage (our extension).
    #[serde(default)]
    pub api_stages: Vec<ApiStage>,
    /// The plan-wide throttle; `None` is no throttle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
    /// The quota; `None` is no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// AWS Marketplace product code, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
    /// Free-form tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl UsagePlan {
    /// Whether the plan applies to the stage `api_id:stage`: it lists it,
    /// or lists no stage at all.
    ///
    /// ```
    /// # use tower_usage_plans::{ApiStage, NewUsagePlan, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let everywhere = plans.create_usage_plan(NewUsagePlan::new("all")).unwrap();
    /// let prod = plans.create_usage_plan(NewUsagePlan::new("prod").with_api_stage(ApiStage::new("api", "prod"))).unwrap();
    /// assert!(everywhere.covers("api", "beta"));
    /// assert!(prod.covers("api", "prod") && !prod.covers("api", "beta"));
    /// ```
    pub fn covers(&self, api_id: &str, stage: &str) -> bool {
        self.api_stages.is_empty() || self.api_stages.iter().any(|s| s.is(api_id, stage))
    }

    /// Whether some stage is covered by both plans (then a key may not be
    /// in both).
    ///
    /// ```
    /// # use tower_usage_plans::{ApiStage, NewUsagePlan, UsagePlans};
    /// let plans = UsagePlans::new();
    /// let stage = |name| NewUsagePlan::new(name).with_api_stage(ApiStage::new("api", name));
    /// let prod = plans.create_usage_plan(stage("prod")).unwrap();
    /// let beta = plans.create_usage_plan(stage("beta")).unwrap();
    /// let all = plans.create_usage_plan(NewUsagePlan::new("all")).unwrap();
    /// assert!(!prod.overlaps(&beta));
    /// assert!(prod.overlaps(&all));
    /// ```
    pub fn overlaps(&self, other: &UsagePlan) -> bool {
        self.api_stages.is_empty()
            || other.api_stages.is_empty()
            || self
                .api_stages
                .iter()
                .any(|s| other.covers(&s.api_id, &s.stage))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::bad_request("Usage plan name must not be empty"));
        }
        if self.name.chars().count() > super::key::MAX_NAME_LEN {
            return Err(Error::bad_request(format!(
                "Usage plan name must be at most {} characters",
                super::key::MAX_NAME_LEN
            )));
        }
        super::tags::validate(&self.tags)?;
        if let Some(throttle) = &self.throttle {
            throttle.validate()?;
        }
        if let Some(quota) = &self.quota {
            quota.validate()?;
        }
        for (i, stage) in self.api_stages.iter().enumerate() {
            stage.validate()?;
            if self.api_stages[..i]
                .iter()
                .any(|s| s.is(&stage.api_id, &stage.stage))
            {
                return Err(Error::bad_request(format!(
                    "API stage {} is listed twice",
                    stage.name()
                )));
            }
        }
        Ok(())
    }
}

/// The input of [`UsagePlans::create_usage_plan`](crate::UsagePlans::create_usage_plan):
/// a plan without its id. AWS `CreateUsagePlan` body.
///
/// ```
/// use tower_usage_plans::{ApiStage, NewUsagePlan};
///
/// let input: NewUsagePlan = serde_json::from_str(
///     r#"{"name":"p","apiStages":[{"apiId":"abc","stage":"prod"}]}"#,
/// ).unwrap();
/// assert_eq!(input, NewUsagePlan::new("p").with_api_stage(ApiStage::new("abc", "prod")));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NewUsagePlan {
    /// Display name (required, not empty).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Stages the plan covers; empty means every stage.
    #[serde(default)]
    pub api_stages: Vec<ApiStage>,
    /// The plan-wide throttle (`{}` is none).
    #[serde(default, deserialize_with = "super::throttle::optional")]
    pub throttle: Option<Throttle>,
    /// The quota.
    #[serde(default)]
    pub quota: Option<Quota>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl NewUsagePlan {
    /// A plan named `name` with no limits yet.
    ///
    /// ```
    /// # use tower_usage_plans::NewUsagePlan;
    /// let input = NewUsagePlan::new("basic");
    /// assert_eq!(input.name, "basic");
    /// assert!(input.throttle.is_none() && input.quota.is_none());
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the description.
    ///
    /// ```
    /// # use tower_usage_plans::{NewUsagePlan, UsagePlans};
    /// let plan = UsagePlans::new().create_usage_plan(NewUsagePlan::new("p").with_description("for tests")).unwrap();
    /// assert_eq!(plan.description.as_deref(), Some("for tests"));
    /// ```
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the plan-wide throttle.
    ///
    /// ```
    /// # use tower_usage_plans::{NewUsagePlan, Throttle, UsagePlans};
    /// let input = NewUsagePlan::new("p").with_throttle(Throttle::new(5.0, 10).unwrap());
    /// let plan = UsagePlans::new().create_usage_plan(input).unwrap();
    /// assert_eq!(plan.throttle.unwrap().burst_limit, 10);
    /// ```
    pub fn with_throttle(mut self, throttle: Throttle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Sets the quota.
    ///
    /// ```
    /// # use tower_usage_plans::{NewUsagePlan, Quota, QuotaPeriod, UsagePlans};
    /// let input = NewUsagePlan::new("p").with_quota(Quota::new(100, QuotaPeriod::Week));
    /// let plan = UsagePlans::new().create_usage_plan(input).unwrap();
    /// assert_eq!(plan.quota, Some(Quota::new(100, QuotaPeriod::Week)));
    /// ```
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Adds a stage the plan covers.
    ///
    /// ```
    /// # use tower_usage_plans::{ApiStage, NewUsagePlan};
    /// let input = NewUsagePlan::new("p").with_api_stage(ApiStage::new("api", "prod")).with_api_stage(ApiStage::new("api", "beta"));
    /// assert_eq!(input.api_stages.len(), 2);
    /// ```
    pub fn with_api_stage(mut self, stage: ApiStage) -> Self {
        self.api_stages.push(stage);
        self
    }

    pub(crate) fn into_plan(self, id: String) -> UsagePlan {
        UsagePlan {
            id,
            name: self.name,
            description: self.description,
            api_stages: self.api_stages,
            throttle: self.throttle,
            quota: self.quota,
            product_code: None,
            tags: self.tags,
        }
    }
}
