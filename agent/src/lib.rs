//! keel-agent: joins a node to its cluster, registers it, watches its health and answers the host
//! orchestrator. See ARCHITECTURE.md for the map.
//!
//! Layers, bottom to top; a module uses only those below it (tests/tests/agent_layout.rs holds
//! this true): `platform`, `files` → `status`, `metrics`, `apiclient`, `reload` → `config` →
//! `health` → `ops` → `join` → `node` → `health_loop` → `run`.

pub mod apiclient;
pub mod config;
pub mod files;
pub mod health;
pub mod health_loop;
pub mod join;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod platform;
pub mod reload;
pub mod run;
pub mod status;
