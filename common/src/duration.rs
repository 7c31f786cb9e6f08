//! Durations as people write them in config files: `250ms`, `5s`, `1.5s`, `2m`, `1h`.
//! A bare number is refused: `interval: 5` would be ambiguous between seconds and milliseconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A `Duration` that (de)serializes as a human string. Raw config structs use it; validation then
/// checks ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// Parses `<number><unit>` with unit one of `us`, `ms`, `s`, `m`, `h`; the number may have a fraction.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {t:?} needs a unit (us, ms, s, m, h), e.g. \"5s\""))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "duration {t:?} must start with a number, e.g. \"250ms\""
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("duration {t:?}: {num:?} is not a number"))?;
    let secs_per_unit = match unit {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration {t:?}: unknown unit {other:?} (use us, ms, s, m or h)"
            ))
        }
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("duration {t:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Renders the shortest exact form among `h`, `m`, `s`, `ms`, `us`.
pub fn format(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        return "0s".into();
    }
    for (unit, per) in [
        ("h", 3_600_000_000u128),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if us.is_multiple_of(per) {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit (us, ms, s, m, h), e.g. \"{v}s\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit (us, ms, s, m, h)"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "duration {v} needs a unit (us, ms, s, m, h), e.g. \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("100us").unwrap(), Duration::from_micros(100));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        assert!(parse("5").unwrap_err().contains("needs a unit"));
        assert!(parse("5d").unwrap_err().contains("unknown unit"));
        assert!(parse("ms").is_err());
        assert!(parse("1.2.3s").is_err());
        assert!(serde_yaml::from_str::<Dur>("5")
            .unwrap_err()
            .to_string()
            .contains("needs a unit"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["0s", "250ms", "5s", "2m", "1h", "1500ms", "100us"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
