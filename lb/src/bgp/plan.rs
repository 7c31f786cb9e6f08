//! Which VIPs this VM announces: a pure function of keel-lb's state, and the address changes that
//! take the dummy interface from what it holds to that.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::config::BgpVip;

/// A VIP is announced while keel-lb runs, is not leaving (drain, handover) and every pool it
/// tracks has a healthy backend. A pool not known (yet) counts as unhealthy.
pub fn announced(
    vips: &[BgpVip],
    running: bool,
    draining: bool,
    pool_up: impl Fn(&str) -> bool,
) -> BTreeSet<IpAddr> {
    if !running || draining {
        return BTreeSet::new();
    }
    vips.iter()
        .filter(|v| v.track_pools.iter().all(|p| pool_up(p)))
        .map(|v| v.addr)
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub add: Vec<IpAddr>,
    pub del: Vec<IpAddr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.del.is_empty()
    }
}

/// What to add and remove so `current` becomes `want`; anything else on the interface (a stale
/// address of an earlier run, one added by hand) is removed: the interface is keel-lb's.
pub fn changes(current: &BTreeSet<IpAddr>, want: &BTreeSet<IpAddr>) -> Changes {
    Changes {
        add: want.difference(current).copied().collect(),
        del: current.difference(want).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(a: &str, pools: &[&str]) -> BgpVip {
        BgpVip {
            addr: a.parse().unwrap(),
            track_pools: pools.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn set(a: &[&str]) -> BTreeSet<IpAddr> {
        a.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_vip_is_announced_only_while_running_not_draining_and_its_pools_are_healthy() {
        let vips = [
            vip("198.18.0.10", &["api"]),
            vip("198.18.0.11", &["api", "web"]),
            vip("2001:db8::10", &[]),
        ];
        let all_up = |_: &str| true;
        assert_eq!(
            announced(&vips, true, false, all_up),
            set(&["198.18.0.10", "198.18.0.11", "2001:db8::10"])
        );
        assert_eq!(announced(&vips, false, false, all_up), set(&[]));
        assert_eq!(announced(&vips, true, true, all_up), set(&[]));
        // One tracked pool down withdraws every VIP that tracks it, and only those.
        assert_eq!(
            announced(&vips, true, false, |p| p != "web"),
            set(&["198.18.0.10", "2001:db8::10"])
        );
        assert_eq!(
            announced(&vips, true, false, |_| false),
            set(&["2001:db8::10"])
        );
    }

    #[test]
    fn changes_remove_stale_addresses_and_add_missing_ones() {
        let c = changes(
            &set(&["198.18.0.10", "198.18.0.99"]),
            &set(&["198.18.0.10", "198.18.0.11"]),
        );
        assert_eq!(
            c,
            Changes {
                add: vec!["198.18.0.11".parse().unwrap()],
                del: vec!["198.18.0.99".parse().unwrap()],
            }
        );
        assert!(changes(&set(&["198.18.0.10"]), &set(&["198.18.0.10"])).is_empty());
    }
}
