//! Quota periods on the UTC calendar.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::model::QuotaPeriod;

pub(crate) const DAY_SECS: i64 = 86_400;

/// `[start, end)` of the period containing `now`, in Unix seconds.
pub(crate) fn bounds(period: QuotaPeriod, now: i64) -> (i64, i64) {
    let day = now.div_euclid(DAY_SECS);
    match period {
        QuotaPeriod::Day => (day * DAY_SECS, (day + 1) * DAY_SECS),
        QuotaPeriod::Week => {
            // 1970-01-01 was a Thursday: day 0 is 3 days after a Monday.
            let monday = day - (day + 3).rem_euclid(7);
            (monday * DAY_SECS, (monday + 7) * DAY_SECS)
        }
        QuotaPeriod::Month => {
            let date = date_of_day(day);
            let first = date.first_of_month();
            let next = first.checked_add(1.month()).unwrap_or(first);
            (day_of_date(first) * DAY_SECS, day_of_date(next) * DAY_SECS)
        }
    }
}

/// The UTC date of a day number (days since 1970-01-01).
pub(crate) fn date_of_day(day: i64) -> Date {
    Timestamp::from_second(day.saturating_mul(DAY_SECS))
        .unwrap_or(if day < 0 {
            Timestamp::MIN
        } else {
            Timestamp::MAX
        })
        .to_zoned(TimeZone::UTC)
        .date()
}

/// The day number (days since 1970-01-01) of a date.
pub(crate) fn day_of_date(date: Date) -> i64 {
    date.to_zoned(TimeZone::UTC)
        .map(|z| z.timestamp().as_second().div_euclid(DAY_SECS))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    fn period(p: QuotaPeriod, at: &str) -> (String, String) {
        let (a, b) = bounds(p, secs(at));
        (
            Timestamp::from_second(a).unwrap().to_string(),
            Timestamp::from_second(b).unwrap().to_string(),
        )
    }

    #[test]
    fn day_runs_midnight_to_midnight_utc() {
        assert_eq!(
            period(QuotaPeriod::Day, "2026-11-28T23:59:59Z"),
            ("2026-11-28T00:00:00Z".into(), "2026-11-29T00:00:00Z".into())
        );
        assert_eq!(
            period(QuotaPeriod::Day, "1969-12-31T12:00:00Z"),
            ("1969-12-31T00:00:00Z".into(), "1970-01-01T00:00:00Z".into())
        );
    }

    #[test]
    fn week_starts_monday() {
        // 2026-11-28 is a Saturday, 2026-11-23 a Monday.
        assert_eq!(
            period(QuotaPeriod::Week, "2026-11-28T10:00:00Z"),
            ("2026-11-23T00:00:00Z".into(), "2026-11-30T00:00:00Z".into())
        );
        assert_eq!(
            period(QuotaPeriod::Week, "2026-11-30T00:00:00Z"),
            ("2026-11-30T00:00:00Z".into(), "2026-12-07T00:00:00Z".into())
        );
        assert_eq!(
            period(QuotaPeriod::Week, "2026-11-29T23:59:59Z"),
            ("2026-11-23T00:00:00Z".into(), "2026-11-30T00:00:00Z".into())
        );
    }

    #[test]
    fn month_handles_lengths_and_leap_years() {
        assert_eq!(
            period(QuotaPeriod::Month, "2024-02-29T23:59:59Z"),
            ("2024-02-01T00:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        assert_eq!(
            period(QuotaPeriod::Month, "2026-12-31T23:00:00Z"),
            ("2026-12-01T00:00:00Z".into(), "2027-01-01T00:00:00Z".into())
        );
        assert_eq!(
            period(QuotaPeriod::Month, "2026-01-31T00:00:00Z"),
            ("2026-01-01T00:00:00Z".into(), "2026-02-01T00:00:00Z".into())
        );
    }

    #[test]
    fn day_numbers_round_trip() {
        let d: Date = "2024-02-29".parse().unwrap();
        assert_eq!(date_of_day(day_of_date(d)), d);
    }
}
