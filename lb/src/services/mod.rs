//! keel-lb as the workload cluster's provider for Services of type LoadBalancer.
//!
//! `config` (the `services:` section) → `controller` (kube runtime: Services, Nodes,
//! EndpointSlices; `leader` elects the one writer; `ipam` chooses addresses) → [`rules::ClusterRules`]
//! through a watch channel → the server renders them next to the file's frontends
//! ([`rules::render`]) and applies the result with the same diff as a reload; `state` keeps the last
//! applied rules on disk so a restart during an API outage still serves.

pub mod config;
pub mod controller;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod rules;
pub mod state;
