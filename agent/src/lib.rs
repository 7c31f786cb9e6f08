//! keel-agent: joins a node to its cluster, registers it, watches its health and answers the host
//! orchestrator. See ARCHITECTURE.md for the map.

pub mod health;
