//! What keel-lb and keel-agent share, and nothing else: config diagnostics that name file, line and
//! field; human durations (`100ms`, `5s`); a jittered exponential backoff; HTTP serving with
//! connection and time limits; plain-text tables for the status commands; sd_notify on Linux; what counts as one client for
//! per-source caps.

pub mod backoff;
pub mod config;
pub mod duration;
pub mod error;
pub mod http;
#[cfg(target_os = "linux")]
pub mod sd_notify;
pub mod source;
pub mod table;

pub use backoff::Backoff;
pub use config::{ConfigError, ConfigErrors, Diagnostics, Source};
pub use duration::Dur;
