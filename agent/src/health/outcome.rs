//! What a check found: the one vocabulary every probe, plugin and the condition book share.

/// What one run of a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Problem,
    Unknown,
}

impl Status {
    /// Node condition status for this outcome (a problem makes the condition True).
    pub fn condition_status(self) -> &'static str {
        match self {
            Status::Ok => "False",
            Status::Problem => "True",
            Status::Unknown => "Unknown",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Problem => "problem",
            Status::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// CamelCase reason; empty means "use the check's default for this status".
    pub reason: String,
    pub message: String,
    /// The measured value (bytes free, percent used, offset seconds...), for metrics.
    pub value: Option<f64>,
}

impl Outcome {
    pub fn ok(message: impl Into<String>, value: Option<f64>) -> Outcome {
        Outcome {
            status: Status::Ok,
            reason: String::new(),
            message: message.into(),
            value,
        }
    }
    pub fn problem(
        reason: impl Into<String>,
        message: impl Into<String>,
        value: Option<f64>,
    ) -> Outcome {
        Outcome {
            status: Status::Problem,
            reason: reason.into(),
            message: message.into(),
            value,
        }
    }
    pub fn unknown(reason: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome {
            status: Status::Unknown,
            reason: reason.into(),
            message: message.into(),
            value: None,
        }
    }
}
