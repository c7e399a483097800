//! The contract between carebridge's router and its channel adapters.
//!
//! This crate is the **API boundary** of the project: adapters depend on it and on nothing else
//! of carebridge (not on the record store, the policy engine or TOML loading), and the router sees adapters
//! only through it.
//!
//! # Layout
//! - [`config`]: validation problems with TOML paths; secrets from env or file only.
//! - [`redacted`]: [`Redacted<T>`], the wrapper that makes PHI un-loggable by construction.
//! - [`ids`]: account ids, source keys, record and delivery ids.
//! - [`envelope`]: the normalised inbound message ([`Envelope`]) and its parts.
//! - [`inbound`]: how an adapter hands messages to the router and learns whether it may ack
//!   ([`Submission`], [`Receipt`], [`Submitter`], [`Inbound`]), and how it says whether it is
//!   connected ([`HealthReporter`]).
//! - [`http`]: the bounded HTTP listener every carebridge listener serves through (connection
//!   cap, header and body timeouts).
//! - [`outbound`]: how the router asks an adapter to send ([`Delivery`], [`Outbound`],
//!   [`SendError`]).
//! - `testkit` (feature `testkit`, for adapters' tests): a fake router at the other end of the
//!   real `Submitter` channel, a log capture, a delivery builder.
#![deny(missing_docs)]

pub mod config;
pub mod envelope;
pub mod http;
pub mod ids;
pub mod inbound;
pub mod outbound;
pub mod redacted;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use envelope::{Address, AddressKind, Attachment, Envelope};
pub use ids::{AccountId, AccountIdError, ChannelKind, DeliveryId, RecordId, SourceKey};
pub use inbound::{
    Health, HealthReporter, Inbound, InboundContext, Receipt, Submission, SubmitRequest, Submitter, Task,
};
pub use outbound::{Delivery, DeliveryKind, Outbound, SendError, Sent};
pub use redacted::Redacted;

/// An error that stops an adapter task or fails its start-up check. It must not carry PHI:
/// it is logged as is.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The adapter's configuration cannot be used (for example a secret file is unreadable).
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The adapter's section does not validate: every problem, with its TOML path.
    #[error("configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<config::Problem>),
    /// The remote service could not be reached or refused us (login failed, getMe failed).
    #[error("connection: {0}")]
    Connection(String),
    /// The router went away: the daemon is shutting down.
    #[error("router closed")]
    RouterClosed,
}

/// The three things each adapter crate exports, so the daemon can treat them alike (no
/// `typetag`: the set of channels is closed and the daemon matches on it):
///
/// - `Config`: its TOML section (serde, `deny_unknown_fields`) with a pure
///   `fn validate(&self, path: &str) -> Vec<config::Problem>`;
/// - `fn build_inbound(&Config, &config::BuildContext) -> Result<Option<Box<dyn Inbound>>, AdapterError>`
///   (`None` when the account only sends);
/// - `fn build_outbound(&Config, &config::BuildContext) -> Result<Option<Arc<dyn Outbound>>, AdapterError>`
///   (`None` when the account only receives).
pub mod adapter_shape {}
