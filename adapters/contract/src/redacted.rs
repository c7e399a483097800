//! [`Redacted<T>`]: PHI that cannot reach a log line by accident.
//!
//! Message text, names, addresses and phone numbers travel inside `Redacted`. Its `Debug` prints
//! `<redacted>` and it has no `Display`, so `info!(?envelope)` or `format!("{}", addr)` either
//! prints nothing sensitive or does not compile. Code that really needs the value (the record
//! store, an adapter writing the wire format) calls [`Redacted::expose`], which is easy to grep.

use serde::{Deserialize, Serialize};

/// A value that must never be logged. See the module docs.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a sensitive value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the sensitive value. Every call site is a place where PHI is handled on
    /// purpose: keep them few and never pass the result to a log macro.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Takes the sensitive value out.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let r = Redacted::new("Ann Example 416-555-0199".to_string());
        assert_eq!(format!("{r:?}"), "<redacted>");
        assert_eq!(format!("{:#?}", Some(r)), "Some(\n    <redacted>,\n)");
    }
}
