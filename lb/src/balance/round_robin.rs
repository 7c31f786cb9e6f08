//! Smooth weighted round robin (nginx's algorithm), precomputed: the sequence for one full period
//! (the sum of the weights) is built once per pool version, and a shared atomic cursor walks it, so
//! picking needs no lock. Smooth means weights interleave (`a b a c a b a` rather than `a a a a b b c`).

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct RoundRobin {
    seq: Vec<u32>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> RoundRobin {
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut seq = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += i64::from(*w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            seq.push(best as u32);
        }
        RoundRobin {
            seq,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next usable backend. Unusable entries are skipped on the shared cursor, so everyone
    /// skips them and each usable backend keeps its weight's share (a drained backend's share is
    /// spread over the others, not handed to its successor in the sequence). Should concurrent
    /// pickers take every usable entry from under this one, a lap of its own still finds one.
    pub fn next(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.seq.len();
        if len == 0 {
            return None;
        }
        let mut at = 0;
        for _ in 0..len {
            at = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let b = self.seq[at] as usize;
            if usable(b) {
                return Some(b);
            }
        }
        for step in 1..=len {
            let b = self.seq[(at + step) % len] as usize;
            if usable(b) {
                return Some(b);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_is_smooth_and_matches_weights() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(rr.seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 2, 3]);
        let mut counts = [0; 3];
        for b in &rr.seq {
            counts[*b as usize] += 1;
        }
        assert_eq!(counts, [1, 2, 3]);
    }

    #[test]
    fn picks_follow_weights_and_skip_unusable() {
        let rr = RoundRobin::new(&[1, 2, 3]);
        let mut counts = [0; 3];
        for _ in 0..600 {
            let b = rr.next(|_| true).unwrap();
            counts[b] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[rr.next(|b| b != 2).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert_eq!(counts[0] + counts[1], 600);
        assert_eq!(rr.next(|_| false), None);
    }

    #[test]
    fn an_unusable_backends_share_is_spread_evenly() {
        // Three equal backends, the middle one drained: 15/15, not 20/10 to its successor.
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[rr.next(|b| b != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [15, 0, 15]);
        // Weighted: 2:1:1 with the first out leaves 1:1; with the last out, 2:1.
        let rr = RoundRobin::new(&[2, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..40 {
            counts[rr.next(|b| b != 0).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 20, 20]);
        let rr = RoundRobin::new(&[2, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[rr.next(|b| b != 2).unwrap()] += 1;
        }
        assert_eq!(counts, [20, 10, 0]);
    }
}
