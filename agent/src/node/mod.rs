//! The Node object and the machine under it: host facts (`host`), registration (`register`), the
//! Lease and status heartbeat (`heartbeat`), the managed kubelet's credentials and flags
//! (`kubelet`) and leaving the cluster (`leave`).

pub mod heartbeat;
pub mod host;
pub mod kubelet;
pub mod leave;
pub mod register;
