//! carebridge: a clinic's message router.
//!
//! # Layout
//! - [`policy`]: the privacy engine, pure.
pub mod policy;
