//! The CLI's error: one line on stderr, `udax: <cause>: <fix>`, and an exit code.
//!
//! Bad input (a wrong argument, a missing directory, a store too small, no userfaultfd
//! permission) exits with 2; a run that fails on the way (an I/O error, a library error)
//! exits with 1.

use std::fmt;
use std::process::ExitCode;

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum CliError {
    /// The user can fix it: the cause and the fix, printed as `cause: fix`.
    BadInput {
        /// What is wrong, naming the offending value.
        cause: String,
        /// What to do about it.
        fix: String,
    },
    /// Something failed while running.
    Failed {
        /// What was being done.
        what: String,
        /// The underlying error, as text.
        source: String,
    },
}

impl CliError {
    /// Bad input: `cause: fix`, exit code 2.
    pub fn bad(cause: impl Into<String>, fix: impl Into<String>) -> Self {
        CliError::BadInput {
            cause: cause.into(),
            fix: fix.into(),
        }
    }

    /// Bad input whose message already names the cause and the fix (a library error
    /// written as "cause: fix"), exit code 2.
    pub fn bad_as_is(message: impl fmt::Display) -> Self {
        CliError::BadInput {
            cause: message.to_string(),
            fix: String::new(),
        }
    }

    /// A failure while doing `what`, exit code 1.
    pub fn failed(what: impl Into<String>, source: impl fmt::Display) -> Self {
        CliError::Failed {
            what: what.into(),
            source: source.to_string(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::BadInput { .. } => ExitCode::from(2),
            CliError::Failed { .. } => ExitCode::from(1),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the parts contain.
        let (a, b) = match self {
            CliError::BadInput { cause, fix } => (cause, fix),
            CliError::Failed { what, source } => (what, source),
        };
        let line = if b.is_empty() {
            a.clone()
        } else {
            format!("{a}: {b}")
        };
        let line = line.replace('\n', " ");
        f.write_str(&line)
    }
}
