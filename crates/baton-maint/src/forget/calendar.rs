//! Calendar arithmetic in UTC for the retention policy: snapshot times,
//! civil dates from day numbers (Howard Hinnant's algorithms), ISO 8601
//! weeks, and the `--keep-within` durations.

use baton_repo::{RepoError, Result};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;

/// A point in time: seconds and nanoseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapTime {
    pub secs: i64,
    pub nanos: u32,
}

impl SnapTime {
    pub fn from_secs(secs: i64) -> Self {
        SnapTime { secs, nanos: 0 }
    }

    /// Parses an RFC 3339 time in UTC (`Z` or `+00:00`), as snapshots store it.
    pub fn parse(s: &str) -> Result<Self> {
        let t = humantime::parse_rfc3339(s)
            .map_err(|e| RepoError::Invalid(format!("time {s:?} is not RFC 3339 in UTC: {e}")))?;
        Ok(Self::from_system(t))
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SnapTime {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                SnapTime { secs, nanos }
            }
        }
    }

    /// Days since 1970-01-01 (negative before).
    pub fn day(self) -> i64 {
        self.secs.div_euclid(DAY)
    }

    /// Hours since 1970-01-01T00:00Z.
    pub fn hour(self) -> i64 {
        self.secs.div_euclid(3600)
    }
}

/// (year, month 1..=12, day 1..=31) of a day number (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// The day number of a civil date (inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Day of the week of a day number, 0 = Monday.
pub fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

/// ISO 8601 week of a day: (ISO year, week 1..=53). Weeks start on Monday;
/// week 1 is the week holding the year's first Thursday.
pub fn iso_week(day: i64) -> (i64, u32) {
    let thursday = day - weekday(day) + 3;
    let (y, _, _) = civil_from_days(thursday);
    let week = (thursday - days_from_civil(y, 1, 1)) / 7 + 1;
    (y, week as u32)
}

/// A `--keep-within` duration: calendar years and months, then weeks, days
/// and hours, e.g. `2d`, `1w3d`, `1y6m`, `36h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
}

impl Within {
    /// Parses `<n><unit>...` with units `y`, `m` (months), `w`, `d`, `h`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            RepoError::Invalid(format!(
                "duration {s:?} {why} (use numbers with units y, m, w, d, h, e.g. 2d, 1w3d, 1y6m)"
            ))
        };
        let mut w = Within::default();
        let mut num = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().map_err(|_| bad("is not valid"))?;
            num.clear();
            let field = match c {
                'y' => &mut w.years,
                'm' => &mut w.months,
                'w' => &mut w.weeks,
                'd' => &mut w.days,
                'h' => &mut w.hours,
                _ => return Err(bad(&format!("has an unknown unit {c:?}"))),
            };
            *field = field.checked_add(n).ok_or_else(|| bad("is too long"))?;
        }
        if !num.is_empty() {
            return Err(bad("lacks a unit after its last number"));
        }
        if w == Within::default() {
            return Err(bad("must be longer than zero"));
        }
        if w.years > 10_000 || w.months > 120_000 || w.weeks > 600_000 || w.days > 4_000_000 {
            return Err(bad("is too long"));
        }
        Ok(w)
    }

    /// `t` minus this duration. Years and months move the calendar date
    /// (a day that does not exist in the target month becomes its last day:
    /// 31 March minus 1m is 28 or 29 February); weeks, days and hours are
    /// exact. The time of day is kept.
    pub fn before(&self, t: SnapTime) -> SnapTime {
        let (y, m, d) = civil_from_days(t.day());
        let tod = t.secs.rem_euclid(DAY);
        let months =
            y * 12 + i64::from(m) - 1 - i64::from(self.years) * 12 - i64::from(self.months);
        let (ny, nm) = (months.div_euclid(12), (months.rem_euclid(12) + 1) as u32);
        let nd = d.min(days_in_month(ny, nm));
        let day = days_from_civil(ny, nm, nd) - 7 * i64::from(self.weeks) - i64::from(self.days);
        SnapTime {
            secs: day * DAY + tod - 3600 * i64::from(self.hours),
            nanos: t.nanos,
        }
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.weeks, 'w'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates_and_weeks() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2021-01-03 is a Sunday in week 53 of 2020; the 4th starts week 1.
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        // 2024-12-30 (Monday) belongs to week 1 of 2025.
        assert_eq!(iso_week(days_from_civil(2024, 12, 30)), (2025, 1));
        assert_eq!(iso_week(days_from_civil(2026, 12, 31)), (2026, 53));
        assert_eq!(weekday(0), 3, "1970-01-01 was a Thursday");
    }

    #[test]
    fn durations() {
        let w = Within::parse("1w3d").unwrap();
        assert_eq!((w.weeks, w.days), (1, 3));
        assert_eq!(w.to_string(), "1w3d");
        assert_eq!(Within::parse("1y6m").unwrap().to_string(), "1y6m");
        for bad in ["", "0d", "3", "d", "2x", "1.5d", "-1d"] {
            assert!(Within::parse(bad).is_err(), "{bad}");
        }
        let t = SnapTime::parse("2024-03-31T10:00:00Z").unwrap();
        let feb = SnapTime::parse("2024-02-29T10:00:00Z").unwrap();
        assert_eq!(Within::parse("1m").unwrap().before(t), feb);
        let t2 = SnapTime::parse("2024-03-03T12:00:00Z").unwrap();
        let back = SnapTime::parse("2024-02-22T00:00:00Z").unwrap();
        assert_eq!(Within::parse("1w3d12h").unwrap().before(t2), back);
    }

    proptest! {
        #[test]
        fn civil_round_trip_and_agrees_with_rfc3339(day in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(day);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), day);
            if (0..2_900_000).contains(&day) {
                let t = UNIX_EPOCH + std::time::Duration::from_secs(day as u64 * 86_400);
                let text = humantime::format_rfc3339_seconds(t).to_string();
                prop_assert_eq!(&text[..10], format!("{y:04}-{m:02}-{d:02}"));
            }
        }

        #[test]
        fn iso_weeks_are_monday_to_sunday(day in -100_000i64..100_000) {
            let (y, w) = iso_week(day);
            prop_assert!((1..=53).contains(&w));
            let monday = day - weekday(day);
            for d in monday..monday + 7 {
                prop_assert_eq!(iso_week(d), (y, w));
            }
            prop_assert_ne!(iso_week(monday - 1), (y, w));
            prop_assert_ne!(iso_week(monday + 7), (y, w));
        }

        #[test]
        fn within_is_never_after_the_time(secs in 0i64..4_000_000_000, y in 0u32..3, m in 0u32..14, d in 0u32..40, h in 0u32..50) {
            prop_assume!(y + m + d + h > 0);
            let w = Within { years: y, months: m, weeks: 0, days: d, hours: h };
            let t = SnapTime::from_secs(secs);
            let b = w.before(t);
            prop_assert!(b < t);
            prop_assert_eq!(Within::parse(&w.to_string()).unwrap(), w);
        }
    }
}
