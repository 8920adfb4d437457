//! Quota periods on the UTC calendar.

use jiff::civil::Date;
use jiff::ToSpan;

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
            let (first, next) = month_of_day(day);
            (first * DAY_SECS, next * DAY_SECS)
        }
    }
}

/// Days (since 1970-01-01) this module computes with integer calendar
/// arithmetic; outside them (years before 1 or after 9998) `jiff` does, with
/// its limits.
const FAST_DAYS: std::ops::RangeInclusive<i64> = -700_000..=2_900_000;

/// The first day of the month containing `day` and of the month after,
/// as day numbers.
fn month_of_day(day: i64) -> (i64, i64) {
    if FAST_DAYS.contains(&day) {
        let (year, month) = year_month(day);
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return (
            first_of_month(year, month),
            first_of_month(next_year, next_month),
        );
    }
    let first = date_of_day(day).first_of_month();
    let next = first.checked_add(1.month()).unwrap_or(first);
    (day_of_date(first), day_of_date(next))
}

/// The proleptic Gregorian `(year, month)` of a day number (H. Hinnant's
/// `civil_from_days`): a few multiplications where `jiff`'s date
/// conversions cost ~400 instructions, paid by the first request of each
/// key in each month.
fn year_month(day: i64) -> (i64, i64) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The day number of the first of `month` (1-12) in `year` (Hinnant's
/// `days_from_civil`).
fn first_of_month(year: i64, month: i64) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year - era * 400; // [0, 399]
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5; // day 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC date of a day number (days since 1970-01-01); past the ends
/// of `Date`, its first or last day.
pub(crate) fn date_of_day(day: i64) -> Date {
    let day = day.clamp(day_of_date(Date::MIN), day_of_date(Date::MAX));
    let (year, month) = year_month(day);
    let day_of_month = day - first_of_month(year, month) + 1;
    match (
        i16::try_from(year),
        i8::try_from(month),
        i8::try_from(day_of_month),
    ) {
        (Ok(year), Ok(month), Ok(day_of_month)) => Date::new(year, month, day_of_month).ok(),
        _ => None,
    }
    .unwrap_or(if day < 0 { Date::MIN } else { Date::MAX })
}

/// The day number (days since 1970-01-01) of a date: calendar arithmetic,
/// exact for every `Date` (a UTC timestamp of it is not: `Timestamp`
/// ends on 9999-12-30, and 9999-12-31 had read as day 0).
pub(crate) fn day_of_date(date: Date) -> i64 {
    first_of_month(i64::from(date.year()), i64::from(date.month())) + i64::from(date.day()) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;
    use jiff::Timestamp;

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
    fn months_agree_with_the_calendar() {
        // Every day of 1600-2500 and samples to the ends of the fast range,
        // against jiff's dates.
        let days = (-135_000..=194_000)
            .chain((*FAST_DAYS.start()..=*FAST_DAYS.end()).step_by(997))
            .chain([*FAST_DAYS.start(), *FAST_DAYS.end()]);
        for day in days {
            let first = date_of_day(day).first_of_month();
            let next = first.checked_add(1.month()).unwrap();
            assert_eq!(
                month_of_day(day),
                (day_of_date(first), day_of_date(next)),
                "day {day}"
            );
        }
    }

    #[test]
    fn day_numbers_round_trip() {
        let d: Date = "2024-02-29".parse().unwrap();
        assert_eq!(date_of_day(day_of_date(d)), d);
    }

    #[test]
    fn day_numbers_agree_with_the_calendar_to_its_ends() {
        // Every day of 1600-2500 and samples to both ends, against jiff's
        // timestamps where it has them.
        let days = (-135_000..=194_000).chain((-3_652_059..=2_932_896).step_by(997));
        for day in days {
            let date = date_of_day(day);
            assert_eq!(day_of_date(date), day, "{date}");
            if let Ok(zoned) = date.to_zoned(TimeZone::UTC) {
                assert_eq!(
                    zoned.timestamp().as_second().div_euclid(DAY_SECS),
                    day,
                    "{date}"
                );
            }
        }
        for date in [Date::MIN, Date::MAX] {
            assert_eq!(date_of_day(day_of_date(date)), date);
        }
        let last: Date = "9999-12-31".parse().unwrap();
        assert_eq!(
            day_of_date(last) - day_of_date(last.yesterday().unwrap()),
            1
        );
        assert_eq!(date_of_day(i64::MAX), Date::MAX);
        assert_eq!(date_of_day(i64::MIN), Date::MIN);
    }
}
