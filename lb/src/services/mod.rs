//! keel-lb as the workload cluster's provider for Services of type LoadBalancer.
//!
//! `config` (the `services:` section) → `controller` (kube runtime: Services, Nodes,
//! EndpointSlices; `leader` elects the one writer; `ipam` chooses addresses) → [`rules::ClusterRules`]
//! through a watch channel → the server renders each changed Service next to the file's frontends
//! ([`rules::render_service`]) and applies only that (a reload or a node change renders all);
//! `state` keeps the last applied rules on disk so a restart during an API outage still serves.

pub mod config;
pub mod controller;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod rules;
pub mod state;
