//! Least connections, weighted: the usable backend with the fewest active connections per unit of
//! weight. Ties rotate through a shared cursor so that idle backends share a burst evenly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::Backend;

pub struct LeastConn {
    cursor: AtomicUsize,
}

impl Default for LeastConn {
    fn default() -> Self {
        Self::new()
    }
}

impl LeastConn {
    pub fn new() -> LeastConn {
        LeastConn {
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn next(&self, backends: &[Arc<Backend>], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None; // (index, active, weight)
        for step in 0..n {
            let i = (start + step) % n;
            if !usable(i) {
                continue;
            }
            let (a, w) = (backends[i].active() as u64, u64::from(backends[i].weight()));
            // a/w < ba/bw without division.
            if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
                best = Some((i, a, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::backends;

    #[test]
    fn prefers_the_idle_backend() {
        let bs = backends(&[1, 1, 1]);
        let _g0 = bs[0].connection_started();
        let _g1 = bs[0].connection_started();
        let _g2 = bs[2].connection_started();
        let lc = LeastConn::new();
        for _ in 0..10 {
            assert_eq!(lc.next(&bs, |_| true), Some(1));
        }
    }

    #[test]
    fn weights_scale_the_count_and_ties_rotate() {
        let bs = backends(&[1, 3]);
        let _g = [bs[1].connection_started(), bs[1].connection_started()];
        let lc = LeastConn::new();
        assert_eq!(lc.next(&bs, |_| true), Some(0)); // 0/1 < 2/3
        let _h = bs[0].connection_started();
        assert_eq!(lc.next(&bs, |_| true), Some(1)); // 2/3 < 1/1
        let idle = backends(&[1, 1, 1]);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[lc.next(&idle, |_| true).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }
}
