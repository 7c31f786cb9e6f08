//! keel-agent: joins a node to its cluster, registers it, watches its health and answers the host
//! orchestrator. See ARCHITECTURE.md for the map.

pub mod apiclient;
pub mod config;
pub mod credentials;
pub mod csr;
pub mod discovery;
pub mod drain;
pub mod health;
pub mod heartbeat;
pub mod host;
pub mod join;
pub mod kubelet;
pub mod labels;
pub mod leave;
pub mod metrics;
pub mod orchestrator;
pub mod platform;
pub mod register;
pub mod reload;
pub mod run;
pub mod status;
pub mod taints;
