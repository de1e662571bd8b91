//! Samples of one measured exec and their summary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chain::PluginRun;

/// One exec of a plugin, as the runtime saw it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub wall_us: u64,
    pub cpu_us: u64,
    pub rss_kib: u64,
}

impl Sample {
    pub fn of(run: &PluginRun) -> Sample {
        Sample {
            wall_us: micros(run.wall),
            cpu_us: micros(run.cpu),
            rss_kib: run.max_rss_kib,
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// min / median / p90 / max of a set of values, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty set.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            min: v[0],
            median: quantile(&v, 0.5),
            p90: quantile(&v, 0.9),
            max: v[v.len() - 1],
        })
    }
}

/// Linear interpolation between closest ranks of a sorted, non-empty slice.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// The median of `values` and a distribution-free ~95 % confidence interval
/// for it: the order statistics 1.96 binomial standard deviations either
/// side of the middle rank (no resampling, no assumption about the shape).
pub fn median_ci(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let half = 1.96 * n.sqrt() / 2.0;
    // 1-based ranks r and s, clamped to the sample.
    let r = ((n / 2.0 - half).floor() as usize).max(1);
    let s = ((1.0 + n / 2.0 + half).ceil() as usize).min(v.len());
    Some((quantile(&v, 0.5), v[r - 1], v[s - 1]))
}

/// Wall, CPU (ms) and RSS (KiB) summaries of samples.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub wall_ms: Summary,
    pub cpu_ms: Summary,
    pub rss_kib: Summary,
}

impl Stats {
    pub fn of(samples: &[Sample]) -> Option<Stats> {
        let ms = |f: fn(&Sample) -> u64| -> Vec<f64> {
            samples.iter().map(|s| f(s) as f64 / 1000.0).collect()
        };
        let rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64).collect();
        Some(Stats {
            wall_ms: Summary::of(&ms(|s| s.wall_us))?,
            cpu_ms: Summary::of(&ms(|s| s.cpu_us))?,
            rss_kib: Summary::of(&rss)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        assert!((s.p90 - 4.6).abs() < 1e-9);
        assert_eq!(Summary::of(&[7.0]).unwrap().p90, 7.0);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn median_ci_takes_the_binomial_order_statistics() {
        // n = 80: ranks 31 and 50 (1-based) of 1..=80.
        let v: Vec<f64> = (1..=80).rev().map(f64::from).collect();
        assert_eq!(median_ci(&v), Some((40.5, 31.0, 50.0)));
        // Tiny samples: the whole range.
        assert_eq!(median_ci(&[2.0, 1.0, 3.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_ci(&[]), None);
    }
}
