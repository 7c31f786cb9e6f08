//! Node health checks and what they mean: the outcome vocabulary (`outcome`), one task per check
//! (`check`) running probes (`probes`), plugins (`plugin`), the kernel log (`kernel_log`) and NPD's
//! system log monitors (`log_monitor`), the
//! condition book that turns outcomes into Node conditions and transitions (`conditions`), and the
//! checks' metrics. Depends on `config` and `platform` only; the loop that drives all this and
//! writes to the API server is `health_loop`.

pub mod check;
pub mod conditions;
pub mod kernel_log;
pub mod log_monitor;
pub mod metrics;
pub mod outcome;
pub mod plugin;
pub mod probes;
