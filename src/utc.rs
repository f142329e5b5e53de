//! UTC calendar times for people to read: the log's timestamps and the
//! dates of `session list`. Two formats do not warrant a date-time crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC), for tables.
pub fn date_time(unix: i64) -> String {
    let t = Civil::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `time` as RFC 3339 with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`, for
/// log lines: fixed width, so lines sort by time as text.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let (unix, millis) = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (after.as_secs() as i64, after.subsec_millis()),
        // A clock set before 1970: whole seconds are enough to say so.
        Err(before) => (-(before.duration().as_secs_f64().ceil() as i64), 0),
    };
    let t = Civil::from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Civil {
    fn from_unix(unix: i64) -> Civil {
        let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
        // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: secs / 3600,
            minute: secs % 3600 / 60,
            second: secs % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{date_time, rfc3339_millis};

    #[test]
    fn dates_and_times_format() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(date_time(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(date_time(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn log_timestamps_have_milliseconds() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(rfc3339_millis(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(1_795_000_000_042)),
            "2026-11-18T11:06:40.042Z"
        );
        assert_eq!(
            rfc3339_millis(at(951_868_799_999)),
            "2000-02-29T23:59:59.999Z"
        );
        let before_1970 = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(rfc3339_millis(before_1970), "1969-12-31T23:59:58.000Z");
    }
}
