//! [`VerifyError`]: why verifying could not be done (as opposed to: it was done and found differences).
//! Connections are [`crate::target::client::Client`]s; their failures become a [`VerifyError`] naming the
//! side ([`Role`]) and the server.

use crate::target::client::Role;
use crate::target::TargetError;

/// Why verifying could not be done. Messages name the side and the server, never a password.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{role} {addr}: cannot connect: {msg}")]
    Connect {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error("{role} {addr}: connection lost: {msg}")]
    Io {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error(
        "{role} {addr}: authentication failed: {msg} (check the user and password in its URL)"
    )]
    Auth {
        role: Role,
        addr: String,
        msg: String,
    },
    #[error("{role} {addr}: {what} answered {msg}")]
    Command {
        role: Role,
        addr: String,
        what: String,
        msg: String,
    },
    #[error("{role} {addr}: protocol error: {detail}")]
    Protocol {
        role: Role,
        addr: String,
        detail: String,
    },
    #[error("{role} {addr}: no answer within {secs} s")]
    Timeout { role: Role, addr: String, secs: u64 },
    /// The job cannot run as configured (bad option combination, unreadable twemproxy config).
    #[error("{0}")]
    Config(String),
    /// Stopped by SIGINT/SIGTERM before the comparison finished.
    #[error("interrupted before the comparison finished")]
    Cancelled,
}

impl VerifyError {
    /// A connection's failure, on the `role` side.
    pub fn from_client(role: Role, e: TargetError) -> VerifyError {
        match e {
            TargetError::Connect { addr, source } => VerifyError::Connect {
                role,
                addr,
                msg: source.to_string(),
            },
            TargetError::Io { addr, source } => VerifyError::Io {
                role,
                addr,
                msg: source.to_string(),
            },
            TargetError::Auth { addr, msg } => VerifyError::Auth { role, addr, msg },
            TargetError::Command { addr, what, msg } => VerifyError::Command {
                role,
                addr,
                what,
                msg,
            },
            TargetError::Protocol { addr, detail } => VerifyError::Protocol { role, addr, detail },
            TargetError::Timeout { addr, secs } => VerifyError::Timeout { role, addr, secs },
            // Writer-pool states; a client does not report them.
            TargetError::Closed { addr } => VerifyError::Io {
                role,
                addr,
                msg: "closed".into(),
            },
            TargetError::Topology { addr, msg } => VerifyError::Command {
                role,
                addr,
                what: "a read".into(),
                msg,
            },
            TargetError::Restarted { addr, detail } => VerifyError::Io {
                role,
                addr,
                msg: format!("restarted ({detail})"),
            },
        }
    }

    /// Whether reconnecting and sending again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VerifyError::Connect { .. } | VerifyError::Io { .. } | VerifyError::Timeout { .. }
        )
    }
}

/// `map_err` for a connection on the `role` side.
pub fn on(role: Role) -> impl Fn(TargetError) -> VerifyError {
    move |e| VerifyError::from_client(role, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_failures_name_the_side() {
        let e = VerifyError::from_client(
            Role::Source,
            TargetError::Auth {
                addr: "redis://u@h:1".into(),
                msg: "WRONGPASS".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "source redis://u@h:1: authentication failed: WRONGPASS (check the user and password in its URL)"
        );
        let e = VerifyError::from_client(
            Role::Target,
            TargetError::Timeout {
                addr: "redis://h:2".into(),
                secs: 3,
            },
        );
        assert_eq!(e.to_string(), "target redis://h:2: no answer within 3 s");
        assert!(e.is_retryable());
    }
}
