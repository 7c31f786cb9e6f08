//! What the orchestrator API (or a signal) asks of the health loop, and how a request can fail: the
//! one vocabulary between `ops::orchestrator` (which asks) and `health_loop` (which acts).

use tokio::sync::oneshot;

/// A request from the orchestrator API (or a signal) to the health loop.
#[derive(Debug)]
pub enum Command {
    Cordon(oneshot::Sender<Result<String, CommandError>>),
    Uncordon(oneshot::Sender<Result<String, CommandError>>),
    /// Replies once the drain has started; progress is in the status.
    Drain(oneshot::Sender<Result<String, CommandError>>),
    Reload(oneshot::Sender<Result<String, CommandError>>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}
