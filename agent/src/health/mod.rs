//! Node health checks (placeholder until the health work lands).
