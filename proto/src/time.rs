//! Text forms of times that both ends of the config stream read: durations as resources
//! write them, and RFC 3339 times (in resources, and in providers' rate-limit headers);
//! and the wall clock as the usage stream carries it.

/// Milliseconds since the Unix epoch (usage timestamps, grant expiries, periods).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a duration written the Kubernetes/Go way: `500ms`, `30s`, `6m0s`, `1h30m`
/// (resource fields, and providers' rate-limit reset headers).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += value * unit;
        rest = &rest[len..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Unix seconds of an RFC 3339 time (`2026-11-22T10:00:30Z`, fractions ignored, with an
/// offset or `Z`).
pub fn parse_rfc3339_unix(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from civil (proleptic Gregorian), 1970-01-01 is day 0.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// The UTC calendar date and time of Unix seconds: year, month, day, hour, minute, second
/// (civil from days, proleptic Gregorian: the inverse of the count above).
pub fn civil(unix: i64) -> [i64; 6] {
    let (days, rest) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [y, m, d, rest / 3600, rest / 60 % 60, rest % 60]
}

/// An RFC 3339 time in UTC with milliseconds (`2026-12-03T14:02:05.123Z`), for records
/// a log collector reads.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let [y, m, d, hh, mm, ss] = civil(unix_ms.div_euclid(1000));
    let ms = unix_ms.rem_euclid(1000);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formatted_times_read_back() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_796_306_525_123),
            "2026-12-03T14:02:05.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        for ms in [
            0,
            86_399_999,
            951_868_799_999,
            4_102_444_800_000,
            1_796_306_525_123,
        ] {
            let text = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_unix(&text), Some(ms / 1000), "{text}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        // OpenAI's rate-limit reset headers.
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_duration("1m2.5s"),
            Some(Duration::from_secs_f64(62.5))
        );
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339_unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_unix("2026-11-22T10:00:00+01:00"),
            Some(1_795_338_000)
        );
        assert_eq!(
            parse_rfc3339_unix("2024-02-29T12:34:56Z"),
            Some(1_709_210_096)
        );
        assert_eq!(
            parse_rfc3339_unix("2026-11-22T10:00:30.5Z"),
            Some(1_795_341_630)
        );
        assert_eq!(parse_rfc3339_unix("yesterday"), None);
    }
}
