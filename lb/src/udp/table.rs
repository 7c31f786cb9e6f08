//! The UDP session table: sessions by client address, without I/O or clocks (the caller passes
//! times in milliseconds). When it is full a new session replaces the least recently used one, and
//! no client IP address may hold more than its share.
//!
//! Recency is kept lazily so that a datagram costs only an atomic store in its session (`last`): the
//! LRU index holds each session under the time it had when it was last indexed, which is never
//! later than its real last use. Eviction takes the smallest key; if that session was used since,
//! it is re-indexed under its real time and the next smallest is tried. When a key matches its
//! session's real time, no other session can have been used earlier, so the pick is exact. Every
//! re-index consumes a use (a datagram), so eviction is amortised O(log n) per datagram; a bound per
//! eviction keeps one unlucky datagram from paying for many.

use keel_common::source::source_key;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Re-indexings one eviction may do before it takes the smallest key as it stands.
const MAX_REINDEX: usize = 64;

struct Entry<S> {
    session: S,
    /// The time this session is held under in `lru`.
    indexed: u64,
}

pub struct Table<S> {
    map: HashMap<SocketAddr, Entry<S>>,
    lru: BTreeSet<(u64, SocketAddr)>,
    per_source: HashMap<IpAddr, usize>,
}

/// Why a new session was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client's IP address holds `max_per_source` sessions already.
    SourceFull,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            map: HashMap::new(),
            lru: BTreeSet::new(),
            per_source: HashMap::new(),
        }
    }
}

impl<S> Table<S> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, peer: &SocketAddr) -> Option<&S> {
        self.map.get(peer).map(|e| &e.session)
    }

    /// Sessions the client `ip` (an IPv4 address or IPv6 /64, [`source_key`]) holds.
    pub fn of_source(&self, ip: IpAddr) -> usize {
        self.per_source.get(&source_key(ip)).copied().unwrap_or(0)
    }

    /// Makes room for a new session of `peer` (which holds none): refuses it when its address is at
    /// `max_per_source`, else evicts (and returns) the least recently used session when the table
    /// holds `max` or more. `last` reads a session's real time of last use.
    pub fn admit(
        &mut self,
        peer: SocketAddr,
        max: usize,
        max_per_source: usize,
        last: impl Fn(&S) -> u64,
    ) -> Result<Option<S>, Refused> {
        if self.of_source(peer.ip()) >= max_per_source {
            return Err(Refused::SourceFull);
        }
        if self.map.len() < max {
            return Ok(None);
        }
        Ok(self.evict_lru(&last))
    }

    fn evict_lru(&mut self, last: &impl Fn(&S) -> u64) -> Option<S> {
        for _ in 0..MAX_REINDEX {
            let &(key, peer) = self.lru.first()?;
            let e = self.map.get_mut(&peer)?;
            let real = last(&e.session);
            if real <= key {
                break;
            }
            self.lru.remove(&(key, peer));
            self.lru.insert((real, peer));
            e.indexed = real;
        }
        let &(_, peer) = self.lru.first()?;
        self.remove(&peer)
    }

    /// Puts `peer`'s session in, replacing (and returning) the one it had.
    pub fn insert(&mut self, peer: SocketAddr, session: S, now: u64) -> Option<S> {
        let old = self.remove(&peer);
        self.lru.insert((now, peer));
        *self.per_source.entry(source_key(peer.ip())).or_default() += 1;
        self.map.insert(
            peer,
            Entry {
                session,
                indexed: now,
            },
        );
        old
    }

    /// Takes `peer`'s session out if `pred` holds for it.
    pub fn remove_if(&mut self, peer: &SocketAddr, pred: impl FnOnce(&S) -> bool) -> Option<S> {
        if pred(self.get(peer)?) {
            self.remove(peer)
        } else {
            None
        }
    }

    fn remove(&mut self, peer: &SocketAddr) -> Option<S> {
        let e = self.map.remove(peer)?;
        self.lru.remove(&(e.indexed, *peer));
        if let Some(n) = self.per_source.get_mut(&source_key(peer.ip())) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source_key(peer.ip()));
            }
        }
        Some(e.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A session whose last use the test sets.
    type S = Rc<Cell<u64>>;

    fn peer(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, ip], port))
    }

    fn open(
        t: &mut Table<S>,
        p: SocketAddr,
        now: u64,
        max: usize,
        per: usize,
    ) -> Result<Option<u64>, Refused> {
        let evicted = t.admit(p, max, per, |s| s.get())?;
        t.insert(p, Rc::new(Cell::new(now)), now);
        Ok(evicted.map(|s| s.get()))
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_session() {
        let mut t: Table<S> = Table::default();
        for i in 0..4 {
            open(&mut t, peer(1, 1000 + i), u64::from(i), 4, 100).unwrap();
        }
        // Sessions 0 and 1 are used again later; 2 is now the least recently used.
        t.get(&peer(1, 1000)).unwrap().set(10);
        t.get(&peer(1, 1001)).unwrap().set(11);
        assert_eq!(open(&mut t, peer(2, 1), 12, 4, 100), Ok(Some(2)));
        assert!(t.get(&peer(1, 1002)).is_none());
        assert_eq!(t.len(), 4);
        assert_eq!(open(&mut t, peer(2, 2), 13, 4, 100), Ok(Some(3)));
        assert_eq!(open(&mut t, peer(2, 3), 14, 4, 100), Ok(Some(10)));
        assert_eq!(open(&mut t, peer(2, 4), 15, 4, 100), Ok(Some(11)));
        assert_eq!(t.of_source(peer(1, 0).ip()), 0);
        assert_eq!(t.of_source(peer(2, 0).ip()), 4);
    }

    #[test]
    fn a_source_at_its_cap_is_refused_and_others_are_not() {
        let mut t: Table<S> = Table::default();
        for i in 0..3 {
            open(&mut t, peer(1, 1000 + i), 0, 100, 3).unwrap();
        }
        assert_eq!(
            open(&mut t, peer(1, 2000), 1, 100, 3),
            Err(Refused::SourceFull)
        );
        assert_eq!(open(&mut t, peer(2, 2000), 1, 100, 3), Ok(None));
        // One of its sessions ends: the source may open another.
        assert!(t.remove_if(&peer(1, 1000), |_| true).is_some());
        assert_eq!(open(&mut t, peer(1, 2000), 2, 100, 3), Ok(None));
    }

    /// An IPv6 host picking a new address of its /64 for each session is still one source.
    #[test]
    fn ipv6_addresses_of_one_64_share_a_cap() {
        let mut t: Table<S> = Table::default();
        let v6 = |host: u16, net: u16| -> SocketAddr {
            format!("[2001:db8:0:{net:x}::{host:x}]:5353")
                .parse()
                .unwrap()
        };
        for h in 1..=3 {
            open(&mut t, v6(h, 1), 0, 100, 3).unwrap();
        }
        assert_eq!(open(&mut t, v6(99, 1), 1, 100, 3), Err(Refused::SourceFull));
        assert_eq!(open(&mut t, v6(99, 2), 1, 100, 3), Ok(None));
        assert_eq!(t.of_source(v6(7, 1).ip()), 3);
        for h in 1..=3 {
            assert!(t.remove_if(&v6(h, 1), |_| true).is_some());
        }
        assert_eq!(t.of_source(v6(7, 1).ip()), 0);
    }

    /// One client cycling source ports through a full table only ever evicts the least recently
    /// used sessions: another client that keeps talking keeps its session.
    #[test]
    fn a_port_cycling_client_does_not_evict_an_active_one() {
        let mut t: Table<S> = Table::default();
        let quiet = peer(9, 53);
        open(&mut t, quiet, 0, 64, 1000).unwrap();
        for i in 0..10_000u64 {
            let now = i + 1;
            if i % 32 == 0 {
                t.get(&quiet).unwrap().set(now);
            }
            open(&mut t, peer(1, (i % 60_000) as u16 + 1), now, 64, 1000).unwrap();
            assert!(t.len() <= 64);
        }
        assert!(
            t.get(&quiet).is_some(),
            "the active client lost its session"
        );
    }

    #[test]
    fn replacing_a_session_keeps_the_counts() {
        let mut t: Table<S> = Table::default();
        open(&mut t, peer(1, 1), 0, 10, 10).unwrap();
        let old = t.insert(peer(1, 1), Rc::new(Cell::new(5)), 5);
        assert_eq!(old.map(|s| s.get()), Some(0));
        assert_eq!((t.len(), t.of_source(peer(1, 1).ip())), (1, 1));
        assert_eq!(t.lru.len(), 1);
        // remove_if leaves a session the predicate does not match.
        assert!(t.remove_if(&peer(1, 1), |s| s.get() == 0).is_none());
        assert!(t.remove_if(&peer(1, 1), |s| s.get() == 5).is_some());
        assert!(t.is_empty() && t.lru.is_empty() && t.per_source.is_empty());
    }

    /// The eviction bound: with every session used since it was indexed, one eviction re-indexes at
    /// most MAX_REINDEX of them and still evicts one.
    #[test]
    fn one_eviction_does_bounded_work() {
        let mut t: Table<S> = Table::default();
        let n = 1000;
        for i in 0..n {
            open(&mut t, peer(1, 1 + i as u16), i, n as usize, 10_000).unwrap();
        }
        for i in 0..n {
            t.get(&peer(1, 1 + i as u16)).unwrap().set(n + i);
        }
        assert_eq!(
            open(&mut t, peer(2, 1), 2 * n, n as usize, 10_000),
            Ok(Some(n + MAX_REINDEX as u64))
        );
        assert_eq!(t.len(), n as usize);
    }
}
