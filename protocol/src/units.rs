//! Parsers for the quantities people type: CPU cores (`0.5`, `2`, `250m`), byte sizes (`512Mi`, `2G`,
//! `1GiB`), durations (`30s`, `5m`, `1h30m`) and instants (Unix milliseconds or RFC 3339).
//!
//! Shared by the admin API (job bodies, usage ranges), the `meridian` CLI and the configuration files of
//! coordinators and agents, so all accept exactly the same spellings: there is one parser of each. Pure
//! functions on text with exact integer arithmetic (no floating point); they never panic on any input and
//! never read a clock. RFC 3339 goes through the `time` crate.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// Why a quantity could not be parsed; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

impl UnitError {
    fn new(message: impl fmt::Display) -> Self {
        UnitError(message.to_string())
    }
}

/// A decimal number `I[.F]` as an integer scaled by `10^scale` (extra fraction digits are refused).
fn scaled_decimal(text: &str, scale: u32) -> Result<u128, UnitError> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(UnitError::new(format!("{text:?} is not a number")));
    }
    if frac.len() > scale as usize {
        return Err(UnitError::new(if scale == 0 {
            format!("{text:?} must be a whole number")
        } else {
            format!("{text:?} has more than {scale} decimal places")
        }));
    }
    if int.len() > 30 {
        return Err(UnitError::new(format!("{text:?} is too large")));
    }
    let int_value: u128 = if int.is_empty() {
        0
    } else {
        int.parse()
            .map_err(|_| UnitError::new(format!("{text:?} is too large")))?
    };
    let mut frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| UnitError::new(format!("{text:?} is not a number")))?
    };
    for _ in frac.len()..scale as usize {
        frac_value *= 10;
    }
    int_value
        .checked_mul(10u128.pow(scale))
        .and_then(|v| v.checked_add(frac_value))
        .ok_or_else(|| UnitError::new(format!("{text:?} is too large")))
}

/// CPU cores as thousandths of a core: `0.5` → 500, `2` → 2000, `1.25` → 1250, `250m` → 250.
pub fn parse_cpu_millis(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => scaled_decimal(m, 0)?,
        None => scaled_decimal(t, 3)?,
    };
    u64::try_from(millis).map_err(|_| UnitError::new(format!("{t:?} is too large")))
}

/// A byte size: a number with an optional unit. Decimal units `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` are
/// powers of 1000; binary units `Ki`/`KiB`, `Mi`/`MiB`, `Gi`/`GiB`, `Ti`/`TiB` powers of 1024; `B` or no unit
/// is bytes. Unit letters are case-insensitive except the `i` of binary units may be either case too.
/// Fractions are allowed when the result is a whole number of bytes (`1.5Gi`).
pub fn parse_byte_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_lower = unit.trim().to_ascii_lowercase();
    let multiplier: u128 = match unit_lower.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "ki" | "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mi" | "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gi" | "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(UnitError::new(format!(
                "unknown unit {unit:?} (use B, K, M, G, T or Ki, Mi, Gi, Ti, e.g. 512Mi or 2G)"
            )))
        }
    };
    const SCALE: u32 = 9;
    let scaled = scaled_decimal(number, SCALE)?;
    let total = scaled
        .checked_mul(multiplier)
        .ok_or_else(|| UnitError::new(format!("{t:?} is too large")))?;
    let divisor = 10u128.pow(SCALE);
    if total % divisor != 0 {
        return Err(UnitError::new(format!(
            "{t:?} is not a whole number of bytes"
        )));
    }
    u64::try_from(total / divisor).map_err(|_| UnitError::new(format!("{t:?} is too large")))
}

/// A duration in whole seconds: `90` (a bare number is seconds), `30s`, `5m`, `2h`, `7d`, or combinations
/// such as `1h30m` (units `s`, `m`, `h`, `d`, in any order).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    parse_duration_secs(text).map(Duration::from_secs)
}

/// [`parse_duration`] as a number of seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::new("empty (use e.g. 30s, 10m, 7d or 1h30m)"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| UnitError::new(format!("{t:?} is too large")));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(UnitError::new(format!(
                "{t:?} is not like 30s, 10m, 7d or 1h30m"
            )));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let factor: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => {
                return Err(UnitError::new(format!(
                    "unknown unit {unit:?} in {t:?} (use s, m, h or d)"
                )))
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| UnitError::new(format!("{t:?} is too large")))?;
        total = value
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| UnitError::new(format!("{t:?} is too large")))?;
        rest = next;
    }
    Ok(total)
}

/// An instant as Unix milliseconds: either an integer (milliseconds) or RFC 3339
/// (`2026-11-27T09:30:00Z`, `2026-11-27T10:30:00.250+01:00`; a space may replace the `T`).
pub fn parse_instant_ms(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| UnitError::new(format!("{t:?} is too large")));
    }
    parse_rfc3339_ms(t).ok_or_else(|| {
        UnitError::new(format!(
            "{t:?} is neither Unix milliseconds nor an RFC 3339 time such as 2026-11-27T09:30:00Z"
        ))
    })
}

fn parse_rfc3339_ms(t: &str) -> Option<u64> {
    // RFC 3339 allows a space for the `T` in its ABNF's note; `time` takes only the letter.
    let text: Cow<'_, str> = if t.as_bytes().get(10) == Some(&b' ') {
        Cow::Owned(format!("{}T{}", t.get(..10)?, t.get(11..)?))
    } else {
        Cow::Borrowed(t)
    };
    let at = OffsetDateTime::parse(&text, &Rfc3339).ok()?;
    let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).ok()
}

/// Unix milliseconds as RFC 3339 in UTC with millisecond precision (`2026-11-27T09:30:00.250Z`); an instant
/// past the year 9999 prints as its milliseconds.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A byte count for people, in binary units with one decimal (`1.5 GiB`, `512 MiB`, `900 B`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scaled = bytes;
    while scaled >= 1024 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    // `scaled` is now in [1024, 1024²) of the unit below UNITS[unit]: one decimal, exactly rounded down.
    let whole = scaled / 1024;
    let tenth = (scaled % 1024) * 10 / 1024;
    if tenth == 0 {
        format!("{whole} {}", UNITS[unit])
    } else {
        format!("{whole}.{tenth} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cores_are_exact_thousandths() {
        for (text, millis) in [
            ("0.5", 500),
            ("2", 2000),
            ("1.25", 1250),
            (" 0.001 ", 1),
            ("250m", 250),
            (".5", 500),
            ("3.", 3000),
            ("0", 0),
        ] {
            assert_eq!(parse_cpu_millis(text), Ok(millis), "{text}");
        }
        for bad in [
            "", ".", "-1", "1.2345", "abc", "1,5", "2 cores", "1e3", "0.5m",
        ] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes_know_decimal_and_binary_units() {
        for (text, bytes) in [
            ("512Mi", 512 << 20),
            ("512MiB", 512 << 20),
            ("2G", 2_000_000_000),
            ("2GB", 2_000_000_000),
            ("1GiB", 1 << 30),
            ("1gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("100", 100),
            ("100B", 100),
            ("4 KiB", 4096),
            ("1k", 1000),
            ("1Ti", 1 << 40),
        ] {
            assert_eq!(parse_byte_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "Mi",
            "12X",
            "1.5",
            "0.1B",
            "-1G",
            "1..2G",
            "99999999999999999999Ti",
            "1 2G",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
        let e = parse_byte_size("12X").expect_err("unknown unit");
        assert!(e.to_string().starts_with(""), "{e}");
    }

    #[test]
    fn durations_combine_units() {
        for (text, secs) in [
            ("30s", 30),
            ("5m", 300),
            ("2h", 7_200),
            ("1d", 86_400),
            ("1h30m", 5_400),
            ("90", 90),
            ("1m30s", 90),
            (" 10s ", 10),
        ] {
            assert_eq!(parse_duration_secs(text), Ok(secs), "{text}");
        }
        for bad in [
            "",
            "s",
            "5x",
            "1.5h",
            "-5s",
            "h1",
            "5 m",
            "99999999999999999999d",
        ] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instants_are_unix_ms_or_rfc3339() {
        assert_eq!(parse_instant_ms("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_instant_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_instant_ms("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_instant_ms("2023-11-14T23:13:20.250+01:00"),
            Ok(1_700_000_000_250)
        );
        assert_eq!(
            parse_instant_ms("2023-11-14 22:13:20.2Z"),
            Ok(1_700_000_000_200)
        );
        assert_eq!(
            parse_instant_ms("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        assert_eq!(
            parse_instant_ms("2023-11-14t22:13:20z"),
            Ok(1_700_000_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20+1:00",
            "1969-12-31T23:59:59Z",
            "-5",
        ] {
            assert!(parse_instant_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1_700_000_000_250, 1_709_164_800_000, 4_102_444_800_000] {
            assert_eq!(parse_instant_ms(&format_rfc3339_ms(ms)), Ok(ms), "{ms}");
        }
        assert_eq!(
            format_rfc3339_ms(1_700_000_000_250),
            "2023-11-14T22:13:20.250Z"
        );
        assert_eq!(format_bytes(900), "900 B");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(u64::MAX), "16383.9 PiB");
    }
}
