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
///
/// A throttle given with one field only (`{"rateLimit": 10}`) takes the
/// other from it, as [`Throttle::completed`] says, rather than a zero that
/// would refuse every request:
///
/// ```
/// use tower_usage_plans::Throttle;
///
/// let rate_only: Throttle = serde_json::from_str(r#"{"rateLimit":2.5}"#).unwrap();
/// assert_eq!(rate_only, Throttle::new(2.5, 3).unwrap());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "ThrottleFields")]
#[non_exhaustive]
pub struct Throttle {
    /// Bucket capacity: how many requests may arrive at once.
    pub burst_limit: u32,
    /// Steady-state requests per second.
    pub rate_limit: f64,
}

/// A throttle as written, either field possibly left out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThrottleFields {
    burst_limit: Option<u32>,
    rate_limit: Option<f64>,
}

impl From<ThrottleFields> for Throttle {
    fn from(fields: ThrottleFields) -> Self {
        Throttle::completed(fields.rate_limit, fields.burst_limit)
    }
}

impl ThrottleFields {
    /// The throttle, or none when neither field is given (`{}`): an SDK
    /// sends that for throttle settings left empty, and a throttle of
    /// zeros would refuse every request.
    fn given(self) -> Option<Throttle> {
        (self.rate_limit.is_some() || self.burst_limit.is_some()).then(|| self.into())
    }
}

/// Reads an optional throttle (`#[serde(deserialize_with)]`): `{}` is none.
pub(crate) fn optional<'de, D>(deserializer: D) -> std::result::Result<Option<Throttle>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let fields = Option::<ThrottleFields>::deserialize(deserializer)?;
    Ok(fields.and_then(ThrottleFields::given))
}

/// Reads method throttles (`#[serde(deserialize_with)]`): a method whose
/// throttle is `{}` has none of its own.
pub(crate) fn by_method<'de, D>(
    deserializer: D,
) -> std::result::Result<std::collections::BTreeMap<String, Throttle>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let map = std::collections::BTreeMap::<String, ThrottleFields>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .filter_map(|(method, fields)| Some((method, fields.given()?)))
        .collect())
}

/// `rate` with a negative zero made positive: `-0` is a rate of zero, and
/// is written back as `0.0`, not `-0.0`.
fn unsigned_zero(rate: f64) -> f64 {
    rate + 0.0
}

impl Throttle {
    /// A validated throttle.
    ///
    /// # Errors
    /// A rate that is negative, NaN or infinite is a bad request.
    ///
    /// ```
    /// # use tower_usage_plans::{ErrorKind, Throttle};
    /// assert_eq!(Throttle::new(0.1, 1).unwrap().rate_limit, 0.1);
    /// assert_eq!(Throttle::new(-1.0, 1).unwrap_err().kind(), ErrorKind::BadRequest);
    /// ```
    pub fn new(rate_limit: f64, burst_limit: u32) -> Result<Self> {
        let throttle = Self {
            burst_limit,
            rate_limit: unsigned_zero(rate_limit),
        };
        throttle.validate()?;
        Ok(throttle)
    }

    /// A throttle from the fields given: one missing is taken from the
    /// other (burst = ⌈rate⌉, at least 1; rate = burst per second); both
    /// missing is a throttle of zeros. Not validated.
    ///
    /// ```
    /// use tower_usage_plans::Throttle;
    ///
    /// assert_eq!(Throttle::completed(Some(0.1), None).burst_limit, 1);
    /// assert_eq!(Throttle::completed(None, Some(20)).rate_limit, 20.0);
    /// assert_eq!(Throttle::completed(Some(5.0), Some(0)).burst_limit, 0);
    /// assert!(Throttle::completed(Some(-0.0), Some(1)).rate_limit.is_sign_positive());
    /// ```
    pub fn completed(rate_limit: Option<f64>, burst_limit: Option<u32>) -> Self {
        match (rate_limit.map(unsigned_zero), burst_limit) {
            (Some(rate_limit), Some(burst_limit)) => Self {
                burst_limit,
                rate_limit,
            },
            (Some(rate_limit), None) => Self {
                // The cast saturates; NaN (refused by `validate`) gives 0.
                burst_limit: (rate_limit.ceil() as u32).clamp(1, super::MAX_COUNT as u32),
                rate_limit,
            },
            (None, Some(burst_limit)) => Self {
                burst_limit,
                rate_limit: f64::from(burst_limit),
            },
            (None, None) => Self {
                burst_limit: 0,
                rate_limit: 0.0,
            },
        }
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
