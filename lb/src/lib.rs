//! keel-lb: an L4 TCP/UDP load balancer (balancing, health checks, hot reload, metrics) with VRRP
//! virtual-IP failover from `keel-vrrp`. `main.rs` is a thin CLI over [`cli`].

pub mod config;
