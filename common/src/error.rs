//! One line for a person from an error chain.

/// The error and its causes joined by `: `, leaving out a cause whose text the line already holds:
/// a `thiserror` variant written `"join failed: {0}"` that is also `#[from]` repeats its source, and
/// anyhow's `{:#}` would print that text once per level.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("No CA certificates were loaded from the system")]
        NoRoots,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        // Both shows and sources its inner error, as many thiserror enums do.
        #[error("discovery: {0}")]
        Discovery(#[from] Inner),
        #[error("join failed")]
        Join(#[source] Inner),
    }

    #[test]
    fn a_cause_already_in_the_line_is_printed_once() {
        let e = anyhow::Error::from(Outer::Discovery(Inner::NoRoots)).context("run");
        let line = one_line(e.as_ref());
        assert_eq!(
            line,
            "run: discovery: No CA certificates were loaded from the system"
        );
        assert_eq!(line.matches("No CA").count(), 1, "{line}");
        // A cause not yet in the line is appended.
        let e = Outer::Join(Inner::NoRoots);
        assert_eq!(
            one_line(&e),
            "join failed: No CA certificates were loaded from the system"
        );
    }
}
