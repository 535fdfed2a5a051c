//! Human-friendly units in the configuration file: byte sizes (`8MiB`, `1GB`, plain bytes) and
//! durations (`250ms`, `5s`, `2m`). The parsers are tiny and strict on purpose: a fraction, a
//! negative, an overflow or an unknown unit is an error that quotes the value the operator wrote,
//! never a silent rounding. [`ByteSize`] and [`HumanDuration`] are the serde newtypes that the
//! file structs use.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A value in the configuration file that is not a valid size or duration.
///
/// The display quotes the bad value and says what would have been accepted, e.g.
/// `invalid size "8XB": unknown unit "XB" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} \"{value}\": {reason}")]
pub struct UnitError {
    /// `size`, `duration` or `percentage`.
    what: &'static str,
    /// The value as written in the file.
    value: String,
    /// Why it was refused, and what to write instead.
    reason: String,
}

impl UnitError {
    fn size(value: impl fmt::Display, reason: impl Into<String>) -> Self {
        UnitError {
            what: "size",
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    fn duration(value: impl fmt::Display, reason: impl Into<String>) -> Self {
        UnitError {
            what: "duration",
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The value as written in the file.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.value
    }
}

const SIZE_UNITS_HINT: &str = "use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";
const DURATION_UNITS_HINT: &str = "use us, ms, s, m or h";

/// Splits `"8 MiB"` / `"8MiB"` / `"8"` into the digits and the unit. At most one space may sit
/// between them; anything else (signs, dots, underscores, leading spaces) is left in the unit or
/// makes the digits empty, and the callers turn that into a precise message.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, rest) = s.split_at(end);
    let unit = rest.strip_prefix(' ').unwrap_or(rest);
    (digits, unit)
}

/// Explains why `s` does not start with a plain non-negative integer.
fn not_a_number_reason(s: &str) -> &'static str {
    let t = s.trim_start();
    if t.starts_with('-') {
        "must not be negative"
    } else if s.is_empty() {
        "is empty"
    } else if t.starts_with(|c: char| c.is_ascii_digit() || c == '.') && t.contains('.') {
        "fractions are not allowed; use a smaller unit"
    } else {
        "expected a whole number followed by a unit"
    }
}

/// Parses a byte size: a plain integer (bytes) or an integer followed by a unit, optionally
/// separated by one space. Units are case-insensitive: `B`; decimal `KB`, `MB`, `GB`, `TB`
/// (powers of 1000); binary `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).
///
/// # Errors
///
/// A [`UnitError`] quoting `s` for a negative, a fraction, an unknown unit, an overflow or any
/// other text.
///
/// ```
/// use orca::config::units::parse_size;
/// assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
/// assert_eq!(parse_size("1 GB").unwrap(), 1_000_000_000);
/// assert!(parse_size("1.5GiB").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (digits, unit) = split_number(s);
    if digits.is_empty() {
        return Err(UnitError::size(s, not_a_number_reason(s)));
    }
    if unit.starts_with('.') {
        return Err(UnitError::size(
            s,
            "fractions are not allowed; use a smaller unit",
        ));
    }
    if digits.len() < s.len() && unit.is_empty() {
        // "8 " : a space and then nothing.
        return Err(UnitError::size(s, "expected a unit after the space"));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(UnitError::size(
                s,
                format!("unknown unit \"{unit}\" ({SIZE_UNITS_HINT})"),
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| UnitError::size(s, "too large (the limit is 2^64-1 bytes)"))
}

/// Parses a duration: an integer followed by a unit (`us`, `ms`, `s`, `m`, `h`; `µs` also works),
/// optionally separated by one space. A bare number is refused because `5` could mean seconds or
/// milliseconds.
///
/// # Errors
///
/// A [`UnitError`] quoting `s` for a bare number, a negative, a fraction, an unknown unit, an
/// overflow or any other text.
///
/// ```
/// use orca::config::units::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (digits, unit) = split_number(s);
    if digits.is_empty() {
        return Err(UnitError::duration(s, not_a_number_reason(s)));
    }
    if unit.starts_with('.') {
        return Err(UnitError::duration(
            s,
            "fractions are not allowed; use a smaller unit, e.g. 1500ms",
        ));
    }
    if unit.is_empty() {
        return Err(UnitError::duration(s, "needs a unit, e.g. 5s"));
    }
    let too_large = || UnitError::duration(s, "too large");
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    match unit.to_ascii_lowercase().as_str() {
        "us" | "µs" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_large),
        _ => Err(UnitError::duration(
            s,
            format!("unknown unit \"{unit}\" ({DURATION_UNITS_HINT})"),
        )),
    }
}

/// A byte count read from the configuration file: a YAML integer (bytes) or a string such as
/// `8MiB` (see [`parse_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` KiB.
    #[must_use]
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }
    /// `n` MiB.
    #[must_use]
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    /// `n` GiB.
    #[must_use]
    pub const fn gib(n: u64) -> Self {
        ByteSize(n << 30)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 8MiB, 1GiB or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(UnitError::size(v, "must not be negative")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(E::custom(UnitError::size(
                    v,
                    "fractions are not allowed; use a smaller unit",
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A size, or a percentage of something the key names (the filesystem, the bound): `5%`, or
/// anything [`parse_size`] takes. A percentage is a whole number from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeOrPercent {
    /// A number of bytes.
    Size(u64),
    /// A whole percentage, at most 100.
    Percent(u8),
}

impl SizeOrPercent {
    /// The bytes this stands for, `Percent` taken of `whole`.
    #[must_use]
    pub fn of(self, whole: u64) -> u64 {
        match self {
            SizeOrPercent::Size(n) => n,
            SizeOrPercent::Percent(p) => {
                u64::try_from(u128::from(whole) * u128::from(p) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Parses a percentage (`5%`, a whole number from 0 to 100) or a size (see [`parse_size`]).
///
/// # Errors
///
/// A [`UnitError`] quoting `s`.
///
/// ```
/// use orca::config::units::{parse_size_or_percent, SizeOrPercent};
/// assert_eq!(parse_size_or_percent("5%").unwrap(), SizeOrPercent::Percent(5));
/// assert_eq!(parse_size_or_percent("1GiB").unwrap(), SizeOrPercent::Size(1 << 30));
/// assert!(parse_size_or_percent("2.5%").is_err());
/// ```
pub fn parse_size_or_percent(s: &str) -> Result<SizeOrPercent, UnitError> {
    let Some(number) = s.strip_suffix('%') else {
        return parse_size(s).map(SizeOrPercent::Size);
    };
    let bad = |reason: &str| UnitError {
        what: "percentage",
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(if number.contains('.') {
            "fractions are not allowed; use a size for finer steps"
        } else if number.starts_with('-') {
            "must not be negative"
        } else {
            "expected a whole number from 0 to 100 followed by %"
        }));
    }
    match number.parse::<u8>() {
        Ok(p) if p <= 100 => Ok(SizeOrPercent::Percent(p)),
        _ => Err(bad("must be at most 100%")),
    }
}

impl<'de> Deserialize<'de> for SizeOrPercent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShareVisitor;

        impl Visitor<'_> for ShareVisitor {
            type Value = SizeOrPercent;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a percentage such as 5% or a size such as 10GiB")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeOrPercent, E> {
                Ok(SizeOrPercent::Size(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeOrPercent, E> {
                u64::try_from(v)
                    .map(SizeOrPercent::Size)
                    .map_err(|_| E::custom(UnitError::size(v, "must not be negative")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SizeOrPercent, E> {
                Err(E::custom(UnitError::size(
                    v,
                    "fractions are not allowed; use a smaller unit",
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeOrPercent, E> {
                parse_size_or_percent(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ShareVisitor)
    }
}

/// A duration read from the configuration file: a string such as `250ms` or `5s` (see
/// [`parse_duration`]). Plain numbers are refused: they need a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `n` seconds.
    #[must_use]
    pub const fn secs(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 250ms, 5s or 2m")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Err(E::custom(UnitError::duration(v, "needs a unit, e.g. 5s")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                let reason = if v < 0 {
                    "must not be negative"
                } else {
                    "needs a unit, e.g. 5s"
                };
                Err(E::custom(UnitError::duration(v, reason)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HumanDuration, E> {
                Err(E::custom(UnitError::duration(
                    v,
                    "needs a unit and a whole number, e.g. 1500ms",
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    #[test]
    fn sizes_accepted() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("100B", 100),
            ("100b", 100),
            ("512KiB", 512 * KIB),
            ("8MiB", 8 * MIB),
            ("8mib", 8 * MIB),
            ("8MIB", 8 * MIB),
            ("8 MiB", 8 * MIB),
            ("1GiB", GIB),
            ("1TiB", TIB),
            ("1KB", 1_000),
            ("1kb", 1_000),
            ("8MB", 8_000_000),
            ("1GB", 1_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("0MiB", 0),
            ("007KiB", 7 * KIB),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
            ("16777215TiB", 16_777_215 * TIB),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn sizes_refused_with_the_value_quoted() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("-1", "negative"),
            ("-8MiB", "negative"),
            ("1.5GiB", "fractions"),
            ("1.GiB", "fractions"),
            (".5GiB", "fractions"),
            ("8XB", "unknown unit \"XB\""),
            ("8 XB", "unknown unit \"XB\""),
            ("8  MiB", "unknown unit \" MiB\""),
            ("8MiB ", "unknown unit \"MiB \""),
            (" 8MiB", "whole number"),
            ("MiB", "whole number"),
            ("8 ", "expected a unit"),
            ("8K", "unknown unit"),
            ("8Mi", "unknown unit"),
            ("1_000", "unknown unit"),
            ("+8", "whole number"),
            ("0x10", "unknown unit"),
            ("18446744073709551616", "too large"),
            ("99999999999999999999999", "too large"),
            ("16777216TiB", "too large"),
            ("garbage", "whole number"),
        ];
        for (text, reason) in cases {
            let err = parse_size(text).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid size \"{text}\"")),
                "{text}: {msg}"
            );
            assert!(msg.contains(reason), "{text}: {msg}");
            assert_eq!(err.value(), *text);
        }
    }

    #[test]
    fn sizes_or_percentages() {
        assert_eq!(parse_size_or_percent("0%"), Ok(SizeOrPercent::Percent(0)));
        assert_eq!(
            parse_size_or_percent("100%"),
            Ok(SizeOrPercent::Percent(100))
        );
        assert_eq!(
            parse_size_or_percent("8MiB"),
            Ok(SizeOrPercent::Size(8 * MIB))
        );
        for (text, reason) in [
            ("101%", "at most 100%"),
            ("2.5%", "fractions"),
            ("-5%", "negative"),
            ("%", "whole number"),
            ("5 %", "whole number"),
            ("99999%", "at most 100%"),
        ] {
            let msg = parse_size_or_percent(text).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid percentage \"{text}\"")),
                "{text}: {msg}"
            );
            assert!(msg.contains(reason), "{text}: {msg}");
        }
        assert!(parse_size_or_percent("5XB")
            .unwrap_err()
            .to_string()
            .starts_with("invalid size"));
        assert_eq!(SizeOrPercent::Percent(5).of(1000), 50);
        assert_eq!(SizeOrPercent::Percent(100).of(u64::MAX), u64::MAX);
        assert_eq!(SizeOrPercent::Size(7).of(1000), 7);
    }

    #[test]
    fn durations_accepted() {
        let cases: &[(&str, Duration)] = &[
            ("0s", Duration::ZERO),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("250ms", Duration::from_millis(250)),
            ("250 ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("5S", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("18446744073709551615s", Duration::from_secs(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn durations_refused_with_the_value_quoted() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("5", "needs a unit, e.g. 5s"),
            ("0", "needs a unit"),
            ("-5s", "negative"),
            ("1.5s", "fractions"),
            ("5x", "unknown unit \"x\""),
            ("5 d", "unknown unit \"d\""),
            ("5  s", "unknown unit"),
            ("5 ", "needs a unit"),
            ("s", "whole number"),
            ("18446744073709551616s", "too large"),
            ("18446744073709551615m", "too large"),
            ("18446744073709551615h", "too large"),
        ];
        for (text, reason) in cases {
            let msg = parse_duration(text).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid duration \"{text}\"")),
                "{text}: {msg}"
            );
            assert!(msg.contains(reason), "{text}: {msg}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    struct Probe {
        size: Option<ByteSize>,
        wait: Option<HumanDuration>,
    }

    fn probe(yaml: &str) -> Result<Probe, String> {
        serde_norway::from_str::<Probe>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn byte_size_from_yaml() {
        assert_eq!(probe("size: 4096").unwrap().size, Some(ByteSize(4096)));
        assert_eq!(probe("size: 8MiB").unwrap().size, Some(ByteSize::mib(8)));
        assert_eq!(
            probe("size: \"8 MiB\"").unwrap().size,
            Some(ByteSize::mib(8))
        );
        assert_eq!(probe("size: '1KB'").unwrap().size, Some(ByteSize(1000)));
        let err = probe("size: -5").unwrap_err();
        assert!(
            err.contains("invalid size \"-5\": must not be negative"),
            "{err}"
        );
        let err = probe("size: 1.5").unwrap_err();
        assert!(err.contains("invalid size \"1.5\": fractions"), "{err}");
        let err = probe("size: 8XB").unwrap_err();
        assert!(err.contains("invalid size \"8XB\""), "{err}");
        let err = probe("size: true").unwrap_err();
        assert!(err.contains("a size such as 8MiB"), "{err}");
    }

    #[test]
    fn human_duration_from_yaml() {
        assert_eq!(
            probe("wait: 250ms").unwrap().wait,
            Some(HumanDuration(Duration::from_millis(250)))
        );
        let err = probe("wait: 5").unwrap_err();
        assert!(
            err.contains("invalid duration \"5\": needs a unit, e.g. 5s"),
            "{err}"
        );
        let err = probe("wait: -5").unwrap_err();
        assert!(err.contains("must not be negative"), "{err}");
        let err = probe("wait: 1.5").unwrap_err();
        assert!(err.contains("invalid duration \"1.5\""), "{err}");
        let err = probe("wait: soon").unwrap_err();
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }
}
