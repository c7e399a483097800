//! The clinic's own detectors (`[[policy.detector]]`) and its tuning of the built-in ones
//! (`[policy.builtin.<kind>]`), assembled with the built-ins into the list the engine compiles.
//!
//! Custom detectors follow the same model as the built-ins (pattern and/or terms, context
//! words, score, threshold) with two differences: their judge is a fixed score (optionally
//! behind a Luhn check), and their patterns are matched once, left to right, because a user's
//! pattern may have unbounded repetition (retrying every rejected alignment could then cost
//! quadratic time on hostile input).

use super::normalize::fold_term;
use super::{Judge, Prefilter, Spec, builtin_specs};
use crate::policy::config::{PolicyConfig, Validator};
use std::collections::BTreeSet;

/// Default base score of a custom detector's match.
const DEFAULT_SCORE: f64 = 0.6;

/// A 0..=1 setting as a whole percentage.
pub(crate) fn pct(x: f64) -> u8 {
    // Clamped first, so the cast cannot truncate; NaN becomes 0.
    (x.clamp(0.0, 1.0) * 100.0).round() as u8
}

/// The built-in detectors (minus disabled ones, with tuning applied) followed by the custom
/// ones, in evaluation order. Assumes a validated config; anything odd is skipped, not fatal.
pub(crate) fn assemble(config: &PolicyConfig) -> Vec<Spec> {
    let mut specs = Vec::new();
    for mut s in builtin_specs() {
        if let Some(t) = config.builtin.get(&s.kind) {
            if t.enabled == Some(false) {
                continue;
            }
            if let Some(c) = t.class {
                s.class = c;
            }
            if let Some(th) = t.threshold {
                s.threshold = Some(pct(th));
            }
            if let Some(r) = t.context_required {
                s.context_required = r;
            }
            if s.kind == "mrn" {
                if let Some(p) = &t.pattern {
                    s.pattern = Some(p.clone());
                    s.bounded = false;
                    s.prefilter = Prefilter::Whole;
                }
                if let Some(score) = t.score {
                    s.judge = Judge::Fixed(pct(score));
                }
            }
            if !t.remove_terms.is_empty() {
                let drop: BTreeSet<String> = t.remove_terms.iter().map(|r| fold_term(r)).collect();
                s.terms.retain(|term| !drop.contains(&fold_term(term)));
            }
            if !t.terms.is_empty() && s.term_pct > 0 {
                s.terms.extend(t.terms.iter().cloned());
            }
            s.context.extend(t.context.iter().cloned());
        }
        specs.push(s);
    }
    for d in &config.detector {
        let score = pct(d.score.unwrap_or(DEFAULT_SCORE));
        specs.push(Spec {
            kind: d.kind.clone(),
            class: d.class,
            pattern: d.pattern.clone(),
            judge: match d.validator {
                Validator::None => Judge::Fixed(score),
                Validator::Luhn => Judge::Luhn(score),
            },
            terms: d.terms.clone(),
            term_pct: score,
            context: d.context.clone(),
            context_required: d.context_required,
            threshold: d.threshold.map(pct),
            isolated: d.isolated.unwrap_or(true),
            bounded: false,
            fuzzy: false,
            fuzzy_terms: false,
            share_across_labels: true,
            prefilter: Prefilter::Whole,
            matches_every_digit: false,
        });
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(pct(0.4), 40);
        assert_eq!(pct(7.0), 100);
        assert_eq!(pct(-1.0), 0);
        assert_eq!(pct(f64::NAN), 0);
    }
}
