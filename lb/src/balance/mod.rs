//! Backend selection: each algorithm yields backends in order of preference for one connection
//! ([`Candidates`]), skipping those that are unhealthy, draining or disabled, and those already tried.
//! The proxy walks the candidates, so a failed connect simply moves on to the next one.
//!
//! Tables are built once per pool version (at load or reload) and then only read: the hot path
//! touches atomics (a round-robin cursor, connection counts, health flags) and takes no lock.

pub mod least_conn;
pub mod maglev;
pub mod round_robin;

use std::sync::Arc;

use crate::backend::Backend;
use crate::config::Balance;

/// One pool version's selection state.
pub enum Selector {
    RoundRobin(round_robin::RoundRobin),
    LeastConn(least_conn::LeastConn),
    Maglev(maglev::Maglev),
}

impl Selector {
    pub fn new(balance: Balance, backends: &[Arc<Backend>]) -> Selector {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
        match balance {
            Balance::RoundRobin => Selector::RoundRobin(round_robin::RoundRobin::new(&weights)),
            Balance::LeastConn => Selector::LeastConn(least_conn::LeastConn::new()),
            Balance::Maglev => {
                let names: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
                let eligible: Vec<bool> = backends.iter().map(|b| b.in_rotation()).collect();
                Selector::Maglev(maglev::Maglev::new(&names, &weights, &eligible))
            }
        }
    }

    /// Backends for a connection whose client hashes to `key`, best first.
    pub fn candidates<'a>(&'a self, backends: &'a [Arc<Backend>], key: u64) -> Candidates<'a> {
        Candidates {
            selector: self,
            backends,
            key,
            cursor: None,
            tried: Tried::new(backends.len()),
        }
    }
}

/// Iterator over the backends to try, in order of preference; each backend at most once.
pub struct Candidates<'a> {
    selector: &'a Selector,
    backends: &'a [Arc<Backend>],
    key: u64,
    /// Algorithm-specific position of the walk (`None` before the first pick).
    cursor: Option<usize>,
    tried: Tried,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Arc<Backend>;

    fn next(&mut self) -> Option<&'a Arc<Backend>> {
        let usable = |i: usize| self.backends[i].available() && !self.tried.has(i);
        let pick = match self.selector {
            Selector::RoundRobin(rr) => rr.next(usable),
            Selector::LeastConn(lc) => lc.next(self.backends, usable),
            Selector::Maglev(m) => m.next(self.key, &mut self.cursor, usable),
        }?;
        self.tried.set(pick);
        Some(&self.backends[pick])
    }
}

/// Which backends this connection already tried: a bitset that allocates only past 64 backends.
struct Tried {
    small: u64,
    big: Vec<u64>,
}

impl Tried {
    fn new(n: usize) -> Tried {
        Tried {
            small: 0,
            big: if n > 64 {
                vec![0; n.div_ceil(64)]
            } else {
                Vec::new()
            },
        }
    }
    fn has(&self, i: usize) -> bool {
        if self.big.is_empty() {
            self.small & (1 << i) != 0
        } else {
            self.big[i / 64] & (1 << (i % 64)) != 0
        }
    }
    fn set(&mut self, i: usize) {
        if self.big.is_empty() {
            self.small |= 1 << i;
        } else {
            self.big[i / 64] |= 1 << (i % 64);
        }
    }
}

/// A stable 64-bit hash (FNV-1a then a splitmix64 finaliser): the same client maps to the same
/// backend on every keel-lb instance and across restarts, which std's `DefaultHasher` does not promise.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The consistent-hashing key of a client: its IP address only (a client's ports change).
pub fn client_key(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => stable_hash(&a.octets()),
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => stable_hash(&v4.octets()),
            None => stable_hash(&a.octets()),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::AdminState;

    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Backend::new_detached(
                    format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                    *w,
                    AdminState::Active,
                ))
            })
            .collect()
    }

    #[test]
    fn candidates_skip_unhealthy_and_never_repeat() {
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::Maglev] {
            let bs = backends(&[1, 2, 3, 1]);
            bs[1].set_healthy(false);
            let sel = Selector::new(balance, &bs);
            let order: Vec<_> = sel.candidates(&bs, 42).map(|b| b.addr).collect();
            assert_eq!(order.len(), 3, "{balance:?}: {order:?}");
            assert!(!order.contains(&bs[1].addr), "{balance:?}");
            let mut dedup = order.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), 3, "{balance:?}");
        }
    }

    #[test]
    fn drain_and_disabled_backends_take_no_new_connections() {
        for balance in [Balance::RoundRobin, Balance::LeastConn, Balance::Maglev] {
            let mut bs = backends(&[1, 1]);
            bs.push(Arc::new(Backend::new_detached(
                "10.0.0.9:80".parse().unwrap(),
                1,
                AdminState::Drain,
            )));
            bs.push(Arc::new(Backend::new_detached(
                "10.0.0.8:80".parse().unwrap(),
                1,
                AdminState::Disabled,
            )));
            let sel = Selector::new(balance, &bs);
            for key in 0..100 {
                let order: Vec<_> = sel.candidates(&bs, mix(key)).map(|b| b.addr).collect();
                assert_eq!(order.len(), 2, "{balance:?}");
            }
        }
    }

    #[test]
    fn tried_bitset_handles_large_pools() {
        let ws = vec![1; 130];
        let bs = backends(&ws[..100]);
        let sel = Selector::new(Balance::RoundRobin, &bs);
        assert_eq!(sel.candidates(&bs, 1).count(), 100);
    }
}
