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

    /// The next usable backend for `key`. `pos` counts the entries walked from the key's own
    /// entry, so the walk over all of a connection's retries ends after one lap of the table.
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
        let home = (key % m as u64) as usize;
        let from = pos.map_or(0, |p| p + 1);
        for walked in from..m {
            let b = self.table[(home + walked) % m] as usize;
            if usable(b) {
                *pos = Some(walked);
                return Some(b);
            }
        }
        *pos = Some(m);
        None
    }
}

/// The Maglev population algorithm with weights: in each round a backend of weight w claims its next
/// w preferred free entries.
/// Members fill in the order of their names, not of the config: a collision goes to whoever fills
/// first, so two keel-lb given the same backends in another order would otherwise build different
/// tables and send a client to different backends after a failover.
pub fn build(names: &[String], weights: &[u32], eligible: &[bool], m: usize) -> Vec<u32> {
    let mut members: Vec<usize> = (0..names.len()).filter(|i| eligible[*i]).collect();
    members.sort_by(|a, b| names[*a].cmp(&names[*b]));
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
    fn the_table_does_not_depend_on_backend_order() {
        let (fwd, w) = (names(5), [1, 2, 1, 3, 1]);
        let rev: Vec<String> = fwd.iter().rev().cloned().collect();
        let rev_w: Vec<u32> = w.iter().rev().copied().collect();
        let eligible = [true, true, false, true, true];
        let rev_eligible: Vec<bool> = eligible.iter().rev().copied().collect();
        let a = build(&fwd, &w, &eligible, 65_537);
        let b = build(&rev, &rev_w, &rev_eligible, 65_537);
        // Same backend (by name) at every entry, though the indices differ.
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| fwd[**x as usize] != rev[**y as usize])
            .count();
        assert_eq!(differ, 0);
    }

    #[test]
    fn a_lookup_walks_one_lap_at_most() {
        let mg = Maglev::new(&names(3), &[1; 3], &[true; 3]);
        let walked = std::cell::Cell::new(0usize);
        let mut pos = None;
        let none = mg.next(7, &mut pos, |_| {
            walked.set(walked.get() + 1);
            false
        });
        assert_eq!((none, walked.get()), (None, TABLE_SIZE));
        // Retries continue from where the walk stopped: nothing more to walk.
        assert_eq!(mg.next(7, &mut pos, |_| true), None);
        // A walk that found backends ends after one lap in all, however many retries.
        let mut pos = None;
        walked.set(0);
        let mut got = Vec::new();
        while let Some(b) = mg.next(7, &mut pos, |b| {
            walked.set(walked.get() + 1);
            !got.contains(&b)
        }) {
            got.push(b);
        }
        assert_eq!(got.len(), 3);
        assert!(walked.get() <= TABLE_SIZE, "{}", walked.get());
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
