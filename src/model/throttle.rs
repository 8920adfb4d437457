use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A token bucket: `rate_limit` tokens per second (fractional rates such as
/// `0.1` allowed) into a bucket of `burst_limit` tokens. AWS `ThrottleSettings`.
///
/// ```
/// use tower_usage_plans::Throttle;
///
/// let throttle = Throttle::new(0.5, 10).unwrap();
/// assert_eq!(
///     serde_json::to_string(&throttle).unwrap(),
///     r#"{"burstLimit":10,"rateLimit":0.5}"#
/// );
/// assert!(Throttle::new(f64::NAN, 1).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Bucket capacity: how many requests may arrive at once.
    #[serde(default)]
    pub burst_limit: u32,
    /// Steady-state requests per second.
    #[serde(default)]
    pub rate_limit: f64,
}

impl Throttle {
    /// A validated throttle.
    ///
    /// # Errors
    /// A rate that is negative, NaN or infinite is a bad request.
    pub fn new(rate_limit: f64, burst_limit: u32) -> Result<Self> {
        let throttle = Self {
            burst_limit,
            rate_limit,
        };
        throttle.validate()?;
        Ok(throttle)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if u64::from(self.burst_limit) > super::MAX_COUNT {
            return Err(Error::bad_request(format!(
                "Invalid burstLimit {}: must be at most {}",
                self.burst_limit,
                super::MAX_COUNT
            )));
        }
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            return Err(Error::bad_request(format!(
                "Invalid rateLimit {}: must be a finite number >= 0",
                self.rate_limit
            )));
        }
        Ok(())
    }
}
