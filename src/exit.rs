//! Exit codes, in one place (`docs/operations.md`, "Exit codes"): what the process ends with
//! tells the supervisor whether a restart can help. systemd's `RestartPreventExitStatus=2 65`
//! stops the restart loop for what only the administrator can fix, so every configuration
//! failure must end with 2, wherever it is found: in validation, or only when `run` reads a
//! secret, a key file or a token.

use crate::config::ConfigErrors;
use crate::record::StoreError;
use crate::record::keys::KeyError;
use carebridge_contract::AdapterError;

/// Invalid configuration, or one that names something unusable (a missing secret, a key file
/// others can read): fix it and start again.
pub const CONFIG: u8 = 2;

/// A configuration that validated but cannot be used as it stands, found while starting (a
/// token file that is missing, a key file that is not there): exit [`CONFIG`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigFailure(pub String);

/// The exit code for an error that ended a command: the first cause in its chain that has
/// one decides (the store's own classification first, since a sealed value that does not open
/// also carries a key error), else 1.
pub fn code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigErrors>().is_some() || cause.downcast_ref::<ConfigFailure>().is_some() {
            return CONFIG;
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return s.exit_code();
        }
        if let Some(crate::officer::OfficerError::Store(s)) = cause.downcast_ref() {
            return s.exit_code();
        }
        if let Some(u) = cause.downcast_ref::<crate::record::flusher::Unwritable>() {
            return u.exit_code as u8;
        }
        if let Some(k) = cause.downcast_ref::<KeyError>() {
            // Loading the key file (missing, unreadable, readable by others, not a key file);
            // a value that does not open is a `StoreError` and was classified above.
            if matches!(k, KeyError::Io { .. } | KeyError::Invalid { .. }) {
                return CONFIG;
            }
        }
        if let Some(AdapterError::Config(_) | AdapterError::Invalid(_)) = cause.downcast_ref::<AdapterError>() {
            return CONFIG;
        }
        // Out of descriptors before the store was even opened (the async runtime, a listener):
        // the same cause as the store's, the same code.
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && crate::record::engine::io_is_fd_exhaustion(io)
        {
            return crate::record::flusher::EXIT_NO_DESCRIPTORS as u8;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn configuration_failures_found_at_start_exit_2() {
        let secret: Result<(), _> = Err(AdapterError::from(carebridge_contract::config::ConfigError::Unreadable {
            what: "secret file",
            path: "x".into(),
            kind: std::io::ErrorKind::NotFound,
        }));
        assert_eq!(code_of(&secret.context("building the sender of webhook.out").unwrap_err()), 2);
        let key: Result<(), _> = Err(KeyError::Invalid {
            path: "k".into(),
            reason: "its mode is 644; it must not be readable by others".into(),
        });
        assert_eq!(code_of(&key.context("loading the record store's key file").unwrap_err()), 2);
        assert_eq!(code_of(&anyhow::Error::new(ConfigFailure("admin: a token is required".into()))), 2);
        let connection: Result<(), _> = Err(AdapterError::Connection("refused".into()));
        assert_eq!(code_of(&connection.context("x").unwrap_err()), 1);
        assert_eq!(code_of(&anyhow::anyhow!("something else")), 1);
    }

    #[test]
    fn descriptors_running_out_is_not_a_full_disk() {
        let emfile = std::io::Error::from_raw_os_error(24);
        let e = StoreError::Engine(emfile.into());
        assert_eq!(e.exit_code(), 71, "{e}");
        let enospc = std::io::Error::from_raw_os_error(28);
        assert_eq!(StoreError::Engine(enospc.into()).exit_code(), 74);
        let damaged = std::io::Error::new(std::io::ErrorKind::InvalidData, "checksum");
        assert_eq!(StoreError::Engine(damaged.into()).exit_code(), 65);
        let runtime: Result<(), _> = Err(std::io::Error::from_raw_os_error(24));
        assert_eq!(code_of(&runtime.context("starting the async runtime").unwrap_err()), 71);
    }
}
