//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M where every
//! in-rotation backend owns about M·w/Σw entries, filled from per-backend permutations derived from
//! a stable hash of the backend's address. A client's key picks an entry; when a backend leaves the
//! table is rebuilt and only about 1/N of the entries change owner. Unhealthy backends stay in the
//! table and are skipped at lookup: their clients walk on to the following entries, so nobody else
//! moves at all while a backend is down.

use super::{mix, stable_hash};

/// Prime, much larger than any pool keel-lb expects (the paper wants M ≫ N for an even spread).
pub const TABLE_SIZE: usize = 65_537;

pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// `names` identify backends stably (their addresses); `eligible` marks those in rotation.
    pub fn new(names: &[String], weights: &[u32], eligible: &[bool]) -> Maglev {
        Maglev {
            table: build(names, weights, eligible, TABLE_SIZE),
        }
    }

    pub fn next(
        &self,
        key: u64,
        pos: &mut Option<usize>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = match *pos {
            None => (key % m as u64) as usize,
            Some(p) => (p + 1) % m,
        };
        for step in 0..m {
            let at = (start + step) % m;
            let b = self.table[at] as usize;
            if usable(b) {
                *pos = Some(at);
                return Some(b);
            }
        }
        None
    }
}

/// The Maglev population algorithm with weights: in each round a backend of weight w claims its next
/// w preferred free entries.
pub fn build(names: &[String], weights: &[u32], eligible: &[bool], m: usize) -> Vec<u32> {
    let members: Vec<usize> = (0..names.len()).filter(|i| eligible[*i]).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|i| {
            let h = stable_hash(names[*i].as_bytes());
            let offset = h % m as u64;
            let skip = mix(h ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (k, i) in members.iter().enumerate() {
            for _ in 0..weights[*i] {
                let (offset, skip) = perms[k];
                let mut c = ((offset + next[k] * skip) % m as u64) as usize;
                while table[c] != u32::MAX {
                    next[k] += 1;
                    c = ((offset + next[k] * skip) % m as u64) as usize;
                }
                table[c] = *i as u32;
                next[k] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:443")).collect()
    }

    #[test]
    fn entries_follow_weights() {
        let t = build(&names(3), &[1, 1, 2], &[true; 3], 65_537);
        let mut c = [0usize; 3];
        for b in &t {
            c[*b as usize] += 1;
        }
        for (i, want) in [(0, 0.25), (1, 0.25), (2, 0.5)] {
            let share = c[i] as f64 / t.len() as f64;
            assert!((share - want).abs() < 0.01, "backend {i}: {share}");
        }
    }

    #[test]
    fn a_backend_leaving_moves_about_one_nth_of_clients() {
        let n = 5;
        let before = build(&names(n), &[1; 5], &[true; 5], 65_537);
        let mut eligible = [true; 5];
        eligible[2] = false;
        let after = build(&names(n), &[1; 5], &eligible, 65_537);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let frac = moved as f64 / before.len() as f64;
        // Exactly the leaving backend's 1/N must move; Maglev adds a little churn on top.
        assert!((0.19..0.25).contains(&frac), "moved {frac}");
        // Nobody is moved onto... the removed backend, obviously; and its clients all moved.
        assert!(after.iter().all(|b| *b != 2));
    }

    #[test]
    fn lookups_are_stable_and_skip_unusable_without_moving_others() {
        let mg = Maglev::new(&names(4), &[1; 4], &[true; 4]);
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = mix(k);
            let first = mg.next(key, &mut None, |_| true).unwrap();
            assert_eq!(mg.next(key, &mut None, |_| true), Some(first));
            let without = mg.next(key, &mut None, |b| b != 1).unwrap();
            if first != 1 {
                assert_eq!(without, first);
            } else {
                moved += 1;
            }
        }
        assert!((2000..3000).contains(&moved), "{moved}");
    }
}
