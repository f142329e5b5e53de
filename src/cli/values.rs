//! The values of options, as clap parses them: durations, switches and
//! the durability mode, each with an error that says what is accepted.

use std::time::Duration;

use log::LevelFilter;

use crate::db::Durability;

/// A switch's value in its environment variable, written as people write
/// them in unit and `.env` files: empty, `0`, `false`, `no` or `off` is off;
/// `1`, `true`, `yes` or `on` is on. Anything else is refused rather than
/// guessed, since `--allow-remote` opens the server to the network.
pub(super) fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(format!(
            "{text:?} is neither on (1, true, yes, on) nor off (0, false, no, off, or empty)"
        )),
    }
}

/// The longest `--busy-timeout`. SQLite takes it in milliseconds as a C
/// `int`, so about 24 days at most (rusqlite panics beyond that), and a
/// request held longer than an hour is better answered with the 503.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

pub(super) fn parse_busy_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout > MAX_BUSY_TIMEOUT {
        return Err(format!("{text:?} is too long: at most 1h"));
    }
    Ok(timeout)
}

/// A session's lifetime. Expiry times are stored in whole seconds, so a
/// lifetime with a fraction of a second would be cut: `500ms` would mint a
/// session that has expired before its token is printed.
pub(super) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "{text:?}: sessions expire on a whole second; use s, m, h or d (at least 1s)"
        ));
    }
    Ok(ttl)
}

/// A log level, in any case. `warning` is taken for `warn`, as Python and
/// syslog spell it; anything else is refused with the levels there are
/// (the `log` crate's own error names none).
pub(super) fn parse_log_level(text: &str) -> Result<LevelFilter, String> {
    match text.to_ascii_lowercase().as_str() {
        "warning" => Ok(LevelFilter::Warn),
        lower => lower.parse().map_err(|_| {
            format!("{text:?} is not a log level; use off, error, warn, info, debug or trace")
        }),
    }
}

/// A user's display name: text of any kind, but not blank, which would
/// show as nothing where the listings show `-` for a user with no name.
pub(super) fn parse_user_name(text: &str) -> Result<String, String> {
    not_blank(text, "leave out --name for a user with no name")
}

/// A chat's name, which a front end shows as its title in the sidebar.
pub(super) fn parse_chat_name(text: &str) -> Result<String, String> {
    not_blank(text, "give the chat a title")
}

/// The model a chat records, which a front end shows with it.
pub(super) fn parse_model(text: &str) -> Result<String, String> {
    not_blank(
        text,
        &format!(
            "leave out --model for the default, {}",
            super::DEFAULT_MODEL
        ),
    )
}

fn not_blank(text: &str, advice: &str) -> Result<String, String> {
    if text.is_empty() {
        Err(format!("it is empty; {advice}"))
    } else if text.trim().is_empty() {
        Err(format!("it is blank; {advice}"))
    } else {
        Ok(text.to_owned())
    }
}

pub(super) fn parse_durability(text: &str) -> Result<Durability, String> {
    match text.to_ascii_lowercase().as_str() {
        "full" => Ok(Durability::Full),
        "normal" => Ok(Durability::Normal),
        _ => Err("expected \"full\" or \"normal\"".into()),
    }
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`; zero is refused.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = match number.parse() {
        Ok(n) => n,
        // Digits alone that do not fit in a u64.
        Err(_) if !number.is_empty() => return Err(format!("{text:?} is too long")),
        Err(_) => {
            return Err(format!(
                "{text:?} is not a duration like 7d, 12h, 30m, 90s or 250ms"
            ));
        }
    };
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "d" => 24 * 60 * 60 * 1000,
        "" => {
            return Err(format!(
                "{text:?} has no unit; use ms, s, m, h or d (e.g. 7d)"
            ));
        }
        _ if unit.starts_with(['.', ',']) => {
            return Err(format!(
                "{text:?}: the number must be whole; use a smaller unit (90m rather than 1.5h)"
            ));
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; use ms, s, m, h or d (e.g. 7d)"
            ));
        }
    };
    match n.checked_mul(unit_ms) {
        Some(0) => Err("a duration must be greater than zero".into()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{text:?} is too long")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_take_what_env_files_write_and_refuse_the_rest() {
        for off in ["", "0", "false", "No", "off", " "] {
            assert_eq!(parse_switch(off), Ok(false), "{off:?}");
        }
        for on in ["1", "true", "YES", "on"] {
            assert_eq!(parse_switch(on), Ok(true), "{on:?}");
        }
        for bad in ["flase", "2", "enabled"] {
            assert!(parse_switch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_levels_parse_in_any_case_and_a_wrong_one_lists_them() {
        assert_eq!(parse_log_level("info"), Ok(LevelFilter::Info));
        assert_eq!(parse_log_level("DEBUG"), Ok(LevelFilter::Debug));
        assert_eq!(parse_log_level("Off"), Ok(LevelFilter::Off));
        assert_eq!(parse_log_level("warning"), Ok(LevelFilter::Warn));
        for bad in ["", "verbose", "warnings", "3"] {
            let error = parse_log_level(bad).unwrap_err();
            assert!(
                error.contains("use off, error, warn, info, debug or trace"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        for (bad, says) in [
            ("", "is not a duration"),
            ("d", "is not a duration"),
            ("-1s", "is not a duration"),
            ("7", "has no unit"),
            ("0s", "greater than zero"),
            ("1.5h", "the number must be whole"),
            ("7 d", "unknown unit"),
            ("7w", "unknown unit"),
            ("99999999999999999999d", "too long"),
            ("9999999999999999999d", "too long"),
        ] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn session_lifetimes_are_whole_seconds() {
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("2000ms"), Ok(Duration::from_secs(2)));
        for cut in ["1ms", "999ms", "1500ms"] {
            let error = parse_ttl(cut).unwrap_err();
            assert!(error.contains("whole second"), "{cut:?}: {error}");
        }
        assert!(parse_ttl("0s").unwrap_err().contains("greater than zero"));
    }
}
