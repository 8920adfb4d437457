//! Keeping a test that counts a day's quota on the real clock within one
//! UTC day.

use std::time::Duration;

/// The longest a test that calls [`clear_of_midnight`] runs.
const LONGEST_TEST: Duration = Duration::from_secs(120);

/// Returns at once, unless the UTC day ends within [`LONGEST_TEST`]: then
/// once the new day began. A test counting a day's quota on the real clock
/// (as its users' requests do) and run across midnight sees the new day's
/// quota admitted too (1,301 of 1,000 admitted, a CI run at 23:59:57).
/// The turn of the day itself is tested on a manual clock (`quotas.rs`);
/// the conformance suite's `today` fixture does the same.
/// A blocking wait: call it first, before the test starts anything.
pub fn clear_of_midnight() {
    let now = jiff::Timestamp::now();
    let day_end = now
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .tomorrow()
        .expect("a day after today")
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("midnight UTC")
        .timestamp();
    let left = Duration::try_from(day_end.duration_since(now)).unwrap_or_default();
    if left < LONGEST_TEST {
        eprintln!("the UTC day ends in {left:?}: waiting for the next one to start");
        std::thread::sleep(left + Duration::from_millis(100));
    }
}
