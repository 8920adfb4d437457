use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The calendar period a quota counts over, aligned to UTC.
///
/// ```
/// use tower_usage_plans::QuotaPeriod;
///
/// assert_eq!(serde_json::to_string(&QuotaPeriod::Week).unwrap(), r#""WEEK""#);
/// assert_eq!("MONTH".parse::<QuotaPeriod>().unwrap(), QuotaPeriod::Month);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuotaPeriod {
    /// From 00:00 UTC to the next midnight.
    Day,
    /// From Monday 00:00 UTC (ISO 8601 weeks).
    Week,
    /// From the 1st of the month, 00:00 UTC.
    Month,
}

impl QuotaPeriod {
    /// The AWS wire name: `DAY`, `WEEK` or `MONTH`.
    ///
    /// ```
    /// # use tower_usage_plans::QuotaPeriod;
    /// assert_eq!(QuotaPeriod::Week.as_str(), "WEEK");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "DAY",
            Self::Week => "WEEK",
            Self::Month => "MONTH",
        }
    }
}

impl std::str::FromStr for QuotaPeriod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "DAY" => Ok(Self::Day),
            "WEEK" => Ok(Self::Week),
            "MONTH" => Ok(Self::Month),
            other => Err(Error::bad_request(format!(
                "Invalid quota period '{other}': must be DAY, WEEK or MONTH"
            ))),
        }
    }
}

/// At most `limit` admitted requests per `period`; `offset` requests are
/// subtracted from the limit in the plan's initial period only. AWS
/// `QuotaSettings`.
///
/// ```
/// use tower_usage_plans::{Quota, QuotaPeriod};
///
/// let quota = Quota::new(1000, QuotaPeriod::Day).with_offset(100).unwrap();
/// assert_eq!(
///     serde_json::to_string(&quota).unwrap(),
///     r#"{"limit":1000,"offset":100,"period":"DAY"}"#
/// );
/// // An offset may exceed the limit: the initial period then allows nothing.
/// assert!(Quota::new(10, QuotaPeriod::Day).with_offset(11).is_ok());
/// assert!(Quota::new(10, QuotaPeriod::Day).with_offset(1 << 31).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Quota {
    /// Requests allowed per period.
    pub limit: u64,
    /// Requests subtracted from `limit` in the initial period.
    #[serde(default)]
    pub offset: u64,
    /// The calendar period.
    pub period: QuotaPeriod,
}

impl Quota {
    /// A quota of `limit` requests per `period`, without offset.
    ///
    /// ```
    /// # use tower_usage_plans::{Quota, QuotaPeriod};
    /// let quota = Quota::new(1000, QuotaPeriod::Month);
    /// assert_eq!((quota.limit, quota.offset, quota.period), (1000, 0, QuotaPeriod::Month));
    /// ```
    pub fn new(limit: u64, period: QuotaPeriod) -> Self {
        Self {
            limit,
            offset: 0,
            period,
        }
    }

    /// The same quota with `offset` requests taken off the initial period.
    ///
    /// # Errors
    /// An offset larger than 2,147,483,647 is a bad request. An offset
    /// larger than the limit is allowed (as AWS allows it): the initial
    /// period's allowance is `max(0, limit - offset)`.
    ///
    /// ```
    /// # use tower_usage_plans::{Quota, QuotaPeriod};
    /// assert_eq!(Quota::new(1000, QuotaPeriod::Day).with_offset(100).unwrap().offset, 100);
    /// assert!(Quota::new(1000, QuotaPeriod::Day).with_offset(u64::MAX).is_err());
    /// ```
    pub fn with_offset(mut self, offset: u64) -> Result<Self> {
        self.offset = offset;
        self.validate()?;
        Ok(self)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.limit > super::MAX_COUNT {
            return Err(Error::bad_request(format!(
                "Invalid quota: limit {} is larger than {}",
                self.limit,
                super::MAX_COUNT
            )));
        }
        if self.offset > super::MAX_COUNT {
            return Err(Error::bad_request(format!(
                "Invalid quota: offset {} is larger than {}",
                self.offset,
                super::MAX_COUNT
            )));
        }
        Ok(())
    }
}
