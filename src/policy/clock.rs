//! Time as policies see it: the request time as a Cedar `datetime`, and
//! the wall clock at the exchange (America/New_York) for market-hours rules.
//!
//! US daylight saving time (since 2007): from the second Sunday of March at
//! 02:00 local (07:00 UTC) to the first Sunday of November at 02:00 local
//! (06:00 UTC). Computed here rather than from a time-zone database so the
//! binary needs no tzdata (scratch / distroless images).

use time::{Date, Month, OffsetDateTime};

/// `YYYY-MM-DDThh:mm:ssZ`, a form Cedar's `datetime()` accepts. Whole
/// seconds: enough for any time rule, and it lets the request context
/// reuse one built value per second (see `context::ext`).
pub fn cedar_datetime(t: OffsetDateTime) -> String {
    rfc3339_utc(t, false)
}

/// `t` in UTC as `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
pub fn rfc3339_utc(t: OffsetDateTime, millis: bool) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if millis {
        s.push_str(&format!(".{:03}", t.millisecond()));
    }
    s.push('Z');
    s
}

/// Weekday (1 = Monday … 7 = Sunday) and minute of the day in New York.
pub fn market_clock(t: OffsetDateTime) -> (i64, i64) {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let offset_hours: i64 = if in_us_dst(utc) { -4 } else { -5 };
    let local = utc + time::Duration::hours(offset_hours);
    let weekday = i64::from(local.weekday().number_from_monday());
    let minute = i64::from(local.hour()) * 60 + i64::from(local.minute());
    (weekday, minute)
}

/// The n-th (1-based) Sunday of a month.
fn nth_sunday(year: i32, month: Month, n: u8) -> Option<Date> {
    let first = Date::from_calendar_date(year, month, 1).ok()?;
    let to_sunday = (7 - first.weekday().number_days_from_sunday()) % 7;
    first.checked_add(time::Duration::days(
        i64::from(to_sunday) + 7 * (i64::from(n) - 1),
    ))
}

fn in_us_dst(utc: OffsetDateTime) -> bool {
    let year = utc.year();
    let (Some(start), Some(end)) = (
        nth_sunday(year, Month::March, 2),
        nth_sunday(year, Month::November, 1),
    ) else {
        return false;
    };
    let start = start.with_hms(7, 0, 0).map(|d| d.assume_utc());
    let end = end.with_hms(6, 0, 0).map(|d| d.assume_utc());
    match (start, end) {
        (Ok(s), Ok(e)) => utc >= s && utc < e,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_cedar_datetimes_in_utc() {
        assert_eq!(
            cedar_datetime(datetime!(2026-12-04 18:45:25.123 UTC)),
            "2026-12-04T18:45:25Z"
        );
        assert_eq!(
            cedar_datetime(datetime!(2026-12-04 13:45:25 -5)),
            "2026-12-04T18:45:25Z"
        );
    }

    #[test]
    fn new_york_clock_follows_daylight_saving() {
        // Winter: EST (UTC-5). Friday 2026-12-04 14:30 UTC = 09:30 New York.
        assert_eq!(market_clock(datetime!(2026-12-04 14:30 UTC)), (5, 570));
        // Summer: EDT (UTC-4). Wednesday 2026-07-01 13:30 UTC = 09:30.
        assert_eq!(market_clock(datetime!(2026-07-01 13:30 UTC)), (3, 570));
        // 2026 DST starts Sunday March 8 at 07:00 UTC.
        assert_eq!(market_clock(datetime!(2026-03-08 06:59 UTC)), (7, 119));
        assert_eq!(market_clock(datetime!(2026-03-08 07:00 UTC)), (7, 180));
        // …and ends Sunday November 1 at 06:00 UTC (02:00 EDT → 01:00 EST).
        assert_eq!(market_clock(datetime!(2026-11-01 05:59 UTC)), (7, 119));
        assert_eq!(market_clock(datetime!(2026-11-01 06:00 UTC)), (7, 60));
        // Late evening UTC is still the same New York day; after midnight
        // UTC on a Saturday it is Friday evening in New York.
        assert_eq!(market_clock(datetime!(2026-12-05 01:00 UTC)), (5, 20 * 60));
    }
}
