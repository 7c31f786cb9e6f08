//! What the agent does to its Node beyond reporting: the commands the orchestrator may give
//! (`command`), the pure taint policy and its API writer (`taints`), cordon and drain (`drain`), the
//! orchestrator's mTLS API (`orchestrator`) and the health status it serves (`status`). Depends on
//! `health` and `config`; the health loop above drives it.

pub mod command;
pub mod drain;
pub mod orchestrator;
pub mod status;
pub mod taints;
