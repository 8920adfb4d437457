//! The stage a gateway serves, `API_ID:STAGE`.

use std::fmt;
use std::str::FromStr;

use super::GatewayError;

/// The stage a gateway serves: plans listing it (or no stage) apply.
/// Written `API_ID:STAGE` in flags and files; the default is
/// `gateway:prod`.
///
/// ```
/// use tower_usage_plans::gateway::Stage;
///
/// let stage: Stage = "petstore:prod".parse().unwrap();
/// assert_eq!(stage, Stage::new("petstore", "prod"));
/// assert_eq!(stage.to_string(), "petstore:prod");
/// assert!("petstore".parse::<Stage>().is_err());
/// assert!(":prod".parse::<Stage>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stage {
    /// The API id (`restApiId`): not empty; no `:`, `/` or blanks.
    pub api_id: String,
    /// The stage name: not empty, no blanks.
    pub stage: String,
}

impl Stage {
    /// The stage `api_id:stage`, unchecked
    /// ([`GatewayConfig::validate`](super::GatewayConfig::validate) checks it).
    ///
    /// ```
    /// # use tower_usage_plans::gateway::Stage;
    /// let stage = Stage::new("petstore", "beta");
    /// assert_eq!((stage.api_id.as_str(), stage.stage.as_str()), ("petstore", "beta"));
    /// assert_eq!(stage.to_string(), "petstore:beta");
    /// ```
    pub fn new(api_id: impl Into<String>, stage: impl Into<String>) -> Self {
        Self {
            api_id: api_id.into(),
            stage: stage.into(),
        }
    }

    /// Why no plan could name this stage, if none could: the admin API's
    /// own rules for a plan's `apiStages` (both parts set; no `:`, `/`,
    /// blanks or control characters in the API id; no blanks or control
    /// characters in the stage).
    pub(crate) fn check(&self) -> Result<(), String> {
        crate::model::ApiStage::new(self.api_id.as_str(), self.stage.as_str())
            .validate()
            .map_err(|e| e.message().to_owned())
    }
}

impl Default for Stage {
    fn default() -> Self {
        Self::new("gateway", "prod")
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.api_id, self.stage)
    }
}

impl FromStr for Stage {
    type Err = GatewayError;

    /// Parses `API_ID:STAGE`.
    ///
    /// # Errors
    /// [`GatewayError::Config`] for `stage` when a part is empty or missing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((api, stage)) if !api.is_empty() && !stage.is_empty() => Ok(Self::new(api, stage)),
            _ => Err(GatewayError::config(
                "stage",
                format!("'{s}' must be API_ID:STAGE"),
            )),
        }
    }
}
