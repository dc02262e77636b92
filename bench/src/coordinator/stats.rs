//! Summaries of latency samples: nearest-rank percentiles over sorted samples, and min/median/max.
//!
//! Pure arithmetic on durations the callers measured with `Instant`; it never measures anything itself and
//! never invents a value for an empty sample set (that is `None`).

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Minimum, median and maximum of a handful of measurements, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Spread {
    pub(crate) min_ms: f64,
    pub(crate) median_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile `p` (0 < p <= 100) of `sorted`, which must be sorted ascending.
fn nearest_rank(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

/// Sorts `samples` and returns p50/p90/p99/max, or `None` when there are none.
pub(crate) fn percentiles(samples: &mut [Duration]) -> Option<Percentiles> {
    samples.sort_unstable();
    Some(Percentiles {
        p50_ms: millis(nearest_rank(samples, 50.0)?),
        p90_ms: millis(nearest_rank(samples, 90.0)?),
        p99_ms: millis(nearest_rank(samples, 99.0)?),
        max_ms: millis(*samples.last()?),
    })
}

/// Sorts `samples` and returns min/median/max (the median of an even count is the mean of the middle two).
pub(crate) fn spread(samples: &mut [Duration]) -> Option<Spread> {
    samples.sort_unstable();
    let n = samples.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => millis(samples[n / 2]),
        _ => (millis(samples[n / 2 - 1]) + millis(samples[n / 2])) / 2.0,
    };
    Some(Spread {
        min_ms: millis(samples[0]),
        median_ms: median,
        max_ms: millis(samples[n - 1]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_use_nearest_rank_on_unsorted_input() {
        // 1..=100 ms, shuffled deterministically.
        let mut samples: Vec<Duration> = (1..=100u64).map(|i| ms((i * 37) % 100 + 1)).collect();
        let p = percentiles(&mut samples).unwrap();
        assert_eq!(
            p,
            Percentiles {
                p50_ms: 50.0,
                p90_ms: 90.0,
                p99_ms: 99.0,
                max_ms: 100.0
            }
        );
    }

    #[test]
    fn percentiles_of_few_samples_pick_real_samples() {
        let mut samples = vec![ms(30), ms(10), ms(20)];
        let p = percentiles(&mut samples).unwrap();
        assert_eq!(p.p50_ms, 20.0);
        assert_eq!(p.p90_ms, 30.0);
        assert_eq!(p.p99_ms, 30.0);
        let mut one = vec![ms(7)];
        assert_eq!(percentiles(&mut one).unwrap().p50_ms, 7.0);
    }

    #[test]
    fn empty_samples_have_no_summary() {
        assert_eq!(percentiles(&mut []), None);
        assert_eq!(spread(&mut []), None);
    }

    #[test]
    fn spread_takes_the_middle_of_odd_and_even_counts() {
        let mut odd = vec![ms(300), ms(100), ms(200)];
        assert_eq!(
            spread(&mut odd).unwrap(),
            Spread {
                min_ms: 100.0,
                median_ms: 200.0,
                max_ms: 300.0
            }
        );
        let mut even = vec![ms(400), ms(100), ms(200), ms(300)];
        assert_eq!(
            spread(&mut even).unwrap(),
            Spread {
                min_ms: 100.0,
                median_ms: 250.0,
                max_ms: 400.0
            }
        );
    }
}
