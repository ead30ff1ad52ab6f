//! The times `audit --since` and `--until` accept, and how the CLI prints times.
//!
//! A time is a duration ago (`90s`, `15m`, `2h`, `7d`, `1w`, or sums like `1h30m`), epoch
//! seconds (`1767225600`), or an RFC 3339 date-time (`2026-01-01T12:00:00Z`, with any
//! offset) or date (`2026-01-01`, midnight UTC). Calendar arithmetic is done here, in the
//! proleptic Gregorian calendar, so the CLI needs no date crate; printing reuses the admin
//! API's own formatter.

/// Resolves `text` to epoch seconds; durations count back from `now`.
pub fn parse_when(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty time".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is too large for epoch seconds"));
    }
    if let Some(secs) = parse_duration(text) {
        return Ok(now.saturating_sub(secs));
    }
    if let Some(epoch) = parse_rfc3339(text) {
        return u64::try_from(epoch).map_err(|_| format!("{text:?} is before 1970"));
    }
    Err(format!(
        "{text:?} is not a time: use a duration ago (15m, 2h, 7d), epoch seconds, \
         or RFC 3339 (2026-01-01T12:00:00Z)"
    ))
}

/// `15m`, `2h`, `7d`, `1h30m` as seconds; `None` unless the whole text is number-unit pairs.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(number.checked_mul(unit)?)?;
    }
    Some(total)
}

/// An RFC 3339 date-time, or a bare date (midnight UTC), as epoch seconds (the
/// credentials' `notBefore`/`notAfter` take the same forms).
pub use crate::policy::conditions::parse_rfc3339;

/// Epoch seconds as `2026-01-01T12:00:00Z`, as the admin API writes its times.
pub fn format_rfc3339(epoch: u64) -> String {
    crate::api::admin::rfc3339(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    #[test]
    fn durations_mean_that_long_ago() {
        assert_eq!(parse_when("15m", NOW), Ok(NOW - 900));
        assert_eq!(parse_when("2h", NOW), Ok(NOW - 7200));
        assert_eq!(parse_when("7d", NOW), Ok(NOW - 7 * 86_400));
        assert_eq!(parse_when("1w", NOW), Ok(NOW - 7 * 86_400));
        assert_eq!(parse_when("1h30m", NOW), Ok(NOW - 5400));
        assert_eq!(parse_when("90s", NOW), Ok(NOW - 90));
        assert_eq!(parse_when("100000w", 10), Ok(0), "saturates at the epoch");
    }

    #[test]
    fn epoch_seconds_are_taken_as_they_are() {
        assert_eq!(parse_when("1767225600", 5), Ok(1_767_225_600));
        assert_eq!(parse_when("0", NOW), Ok(0));
    }

    #[test]
    fn rfc3339_times_and_dates() {
        assert_eq!(parse_when("2026-01-01T00:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_when("2026-01-01", 0), Ok(NOW));
        assert_eq!(parse_when("2026-01-01T01:30:00+01:30", 0), Ok(NOW));
        assert_eq!(parse_when("2025-12-31T19:00:00.250-05:00", 0), Ok(NOW));
        assert_eq!(parse_when("1970-01-01T00:00:00Z", 99), Ok(0));
        assert_eq!(parse_when("2024-02-29T12:00:00Z", 0), Ok(1_709_208_000));
    }

    #[test]
    fn nonsense_is_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "soon",
            "15x",
            "m15",
            "2025-02-29",
            "2026-13-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert!(parse_when(bad, NOW).is_err(), "{bad:?} was accepted");
        }
        let err = parse_when("soon", NOW).unwrap_err();
        assert!(err.contains("15m") && err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn formats_round_trip() {
        for epoch in [0, NOW, 1_709_208_000, 951_782_400, 4_102_444_799] {
            let text = format_rfc3339(epoch);
            assert_eq!(parse_rfc3339(&text), Some(epoch as i64), "{text}");
        }
        assert_eq!(format_rfc3339(NOW + 3661), "2026-01-01T01:01:01Z");
    }
}
