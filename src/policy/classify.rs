//! From findings to classes.
//!
//! Each detector maps to one class (`[policy.builtin.<kind>] class` or a custom detector's
//! `class` changes it); a text's class is the highest class of its findings, `none` when
//! nothing was found. Ordering does the work: `none < contact < identifier < clinical <
//! sensitive`.

use super::detectors::{Engine, Hit};
use super::{Class, Finding};

/// The class of a text: the highest class of its findings.
pub(crate) fn text_class(engine: &Engine, hits: &[Hit]) -> Class {
    hits.iter().map(|h| engine.class(h)).max().unwrap_or(Class::None)
}

/// Indices of the findings whose class is above `ceiling`.
pub(crate) fn above(engine: &Engine, hits: &[Hit], ceiling: Class) -> Vec<usize> {
    hits.iter().enumerate().filter(|(_, h)| engine.class(h) > ceiling).map(|(i, _)| i).collect()
}

/// The public view of hits.
pub(crate) fn findings(engine: &Engine, hits: &[Hit]) -> Vec<Finding> {
    hits.iter()
        .map(|h| Finding {
            kind: engine.kind(h).to_string(),
            start: h.start,
            end: h.end,
            score: f32::from(h.pct) / 100.0,
        })
        .collect()
}
