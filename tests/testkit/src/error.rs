//! The harness's error: what failed, and what to do about it.

use std::fmt;

/// A harness failure, with the cause and (where known) the fix in its message.
#[derive(Debug)]
pub struct HarnessError(pub(crate) String);

impl HarnessError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        HarnessError(message.into())
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

impl From<std::io::Error> for HarnessError {
    fn from(err: std::io::Error) -> Self {
        HarnessError(err.to_string())
    }
}
