//! Batch planning: how a strategy splits a phase's hosts into batches.

use super::{BatchSize, Strategy};

impl BatchSize {
    /// The number of hosts in one batch when `hosts` hosts are concerned: a count as given, a
    /// percentage rounded up; always at least 1 and at most `hosts` (0 when `hosts` is 0).
    pub fn of(&self, hosts: usize) -> usize {
        if hosts == 0 {
            return 0;
        }
        let n = match *self {
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => {
                let p = usize::from(p.min(100));
                (hosts * p).div_ceil(100)
            }
        };
        n.clamp(1, hosts)
    }
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    /// `5` (hosts) or `25%` (of the hosts concerned, 1% to 100%).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            match p.trim().parse::<u8>() {
                Ok(n) if (1..=100).contains(&n) => Ok(BatchSize::Percent(n)),
                _ => Err(format!("'{s}': a percentage from 1% to 100%")),
            }
        } else {
            match s.parse::<usize>() {
                Ok(0) => Err(format!("'{s}': at least 1 host")),
                Ok(n) => Ok(BatchSize::Count(n)),
                Err(_) => Err(format!(
                    "'{s}': a number of hosts (e.g. 5) or a percentage (25%)"
                )),
            }
        }
    }
}

impl Strategy {
    /// The sizes of the successive batches for `hosts` hosts, in order; they sum to `hosts`.
    /// For a canary strategy the first entry is the canary batch.
    pub fn batch_sizes(&self, hosts: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        if hosts == 0 {
            return sizes;
        }
        let (mut left, size) = match *self {
            Strategy::Parallel => (hosts, hosts),
            Strategy::Batches(b) => (hosts, b.of(hosts)),
            Strategy::Canary { count, then } => {
                let canaries = count.clamp(1, hosts);
                sizes.push(canaries);
                let rest = hosts - canaries;
                (rest, then.of(rest))
            }
        };
        while left > 0 {
            let n = size.min(left);
            sizes.push(n);
            left -= n;
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up_and_stay_in_range() {
        assert_eq!(BatchSize::Percent(25).of(10), 3);
        assert_eq!(BatchSize::Percent(25).of(4), 1);
        assert_eq!(BatchSize::Percent(1).of(3), 1);
        assert_eq!(BatchSize::Percent(100).of(7), 7);
        assert_eq!(BatchSize::Percent(0).of(7), 1);
        assert_eq!(BatchSize::Percent(200).of(7), 7);
        assert_eq!(BatchSize::Count(0).of(5), 1);
        assert_eq!(BatchSize::Count(9).of(5), 5);
        assert_eq!(BatchSize::Count(2).of(0), 0);
    }

    #[test]
    fn batch_sizes_parse() {
        assert_eq!("5".parse::<BatchSize>(), Ok(BatchSize::Count(5)));
        assert_eq!("25%".parse::<BatchSize>(), Ok(BatchSize::Percent(25)));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("0%".parse::<BatchSize>().is_err());
        assert!("101%".parse::<BatchSize>().is_err());
        assert!("x".parse::<BatchSize>().is_err());
    }

    #[test]
    fn strategies_split_hosts() {
        assert_eq!(Strategy::Parallel.batch_sizes(5), vec![5]);
        assert_eq!(
            Strategy::Batches(BatchSize::Count(2)).batch_sizes(5),
            vec![2, 2, 1]
        );
        assert_eq!(
            Strategy::Batches(BatchSize::Percent(25)).batch_sizes(10),
            vec![3, 3, 3, 1]
        );
        let canary = Strategy::Canary {
            count: 1,
            then: BatchSize::Percent(100),
        };
        assert_eq!(canary.batch_sizes(5), vec![1, 4]);
        assert_eq!(canary.batch_sizes(1), vec![1]);
        let canary = Strategy::Canary {
            count: 2,
            then: BatchSize::Percent(50),
        };
        assert_eq!(canary.batch_sizes(7), vec![2, 3, 2]);
        assert_eq!(Strategy::Parallel.batch_sizes(0), Vec::<usize>::new());
    }
}
