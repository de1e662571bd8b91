//! Go-style durations (`10ms`, `1.5s`, `1m`), parsed without overflow.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    Syntax,
    /// Well formed but beyond what a `Duration` holds (~5.8e11 years).
    Range,
}

/// Go-style durations as Spiderpool writes them: "10ms", "1s", "1.5s", "100us", "1m".
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or(DurationError::Syntax)?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| DurationError::Syntax)?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(DurationError::Syntax),
    };
    // `from_secs_f64` panics past u64::MAX seconds: ask first.
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::Range)
}
