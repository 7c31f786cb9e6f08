//! The NodePort allocator (pkg/registry/core/service/portallocator): a port range
//! (`--service-node-port-range`, default 30000-32767), with dynamic allocation preferring the upper
//! band so the lower one stays for static requests (KEP-3668). The set in use is computed by the
//! caller from the stored Services, so there is no separate state to lose or to drift.

use std::collections::HashSet;
use std::fmt;

/// `portallocator` errors, worded as upstream (clients and users match on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    Full,
    Allocated,
    NotInRange(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Full => write!(f, "range is full"),
            AllocError::Allocated => write!(f, "provided port is already allocated"),
            AllocError::NotInRange(r) => write!(
                f,
                "provided port is not in the valid range. The range of valid ports is {r}"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub base: u16,
    /// Number of ports in the range.
    pub size: u32,
}

impl PortRange {
    /// `utilnet.ParsePortRange`: `a-b` or a single port.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let (a, b) = match s.trim().split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let a: u16 = a.parse().map_err(|_| format!("invalid port range {s:?}"))?;
        let b: u16 = b.parse().map_err(|_| format!("invalid port range {s:?}"))?;
        if a == 0 || b < a {
            return Err(format!("invalid port range {s:?}"));
        }
        Ok(PortRange {
            base: a,
            size: u32::from(b - a) + 1,
        })
    }

    pub fn contains(&self, port: i64) -> bool {
        port >= i64::from(self.base) && port < i64::from(self.base) + i64::from(self.size)
    }

    /// Checks a requested port against the range and the ports in use.
    pub fn allocate(&self, port: i64, used: &HashSet<i64>) -> Result<(), AllocError> {
        if !self.contains(port) {
            return Err(AllocError::NotInRange(self.to_string()));
        }
        if used.contains(&port) {
            return Err(AllocError::Allocated);
        }
        Ok(())
    }

    /// A free port, chosen at random from the dynamic band first.
    pub fn allocate_next(&self, used: &HashSet<i64>) -> Result<i64, AllocError> {
        let offset = range_offset(u128::from(self.size), 16, 128, 32);
        scan_with_offset(u128::from(self.size), offset, |i| {
            used.contains(&(i64::from(self.base) + i as i64))
        })
        .map(|i| i64::from(self.base) + i as i64)
        .ok_or(AllocError::Full)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.base, u32::from(self.base) + self.size - 1)
    }
}

/// `calculateRangeOffset`: `min(max(min, size/step), max)`, 0 for ranges not above `min`.
pub(crate) fn range_offset(size: u128, min: u128, max: u128, step: u128) -> u128 {
    if size <= min {
        return 0;
    }
    (size / step).clamp(min, max)
}

/// Index of a free slot in `0..size`: a random start in `offset..size` scanned forward (wrapping
/// within that band), then the band below `offset`, as the bitmap's `randomScanStrategyWithOffset`.
pub(crate) fn scan_with_offset(
    size: u128,
    offset: u128,
    taken: impl Fn(u128) -> bool,
) -> Option<u128> {
    let bands = [(offset, size), (0, offset)];
    for (lo, hi) in bands {
        if hi <= lo {
            continue;
        }
        let n = hi - lo;
        let start = rand::random::<u128>() % n;
        // Bounded: the sets in use here are small, so a free slot turns up within a few steps; a
        // full band is only walked entirely when it is small (NodePorts).
        let limit = n.min(1 << 20);
        for k in 0..limit {
            let i = lo + (start + k) % n;
            if !taken(i) {
                return Some(i);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_range_errors_and_dynamic_band() {
        let r = PortRange::parse("30000-32767").unwrap();
        assert_eq!(r.to_string(), "30000-32767");
        assert_eq!(r.size, 2768);
        let mut used = HashSet::new();
        used.insert(31000);
        assert_eq!(r.allocate(31000, &used), Err(AllocError::Allocated));
        assert_eq!(
            r.allocate(8080, &used).unwrap_err().to_string(),
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
        assert_eq!(
            AllocError::Allocated.to_string(),
            "provided port is already allocated"
        );
        assert!(r.allocate(30001, &used).is_ok());
        // The static band (30000..30086) is only used when the dynamic one is full.
        for _ in 0..200 {
            let p = r.allocate_next(&used).unwrap();
            assert!((30086..=32767).contains(&p), "{p}");
        }
    }

    #[test]
    fn a_full_range_reports_full_and_the_last_free_port_is_found() {
        let r = PortRange::parse("30000-30019").unwrap();
        let mut used: HashSet<i64> = (30000..30020).collect();
        assert_eq!(r.allocate_next(&used), Err(AllocError::Full));
        used.remove(&30003);
        assert_eq!(r.allocate_next(&used), Ok(30003));
    }
}
