//! Detectors: what finds PHI in a text, compiled once into one [`Engine`].
//!
//! A detector is Presidio's recognizer model ported to Rust's `regex` (no look-around, linear
//! time): a **pattern** (or a **keyword list**), a **judge** that validates a match (checksum,
//! plausible date, …) and gives it a base score, **context words** that raise the score when
//! they appear within a few words of the match, and a **threshold** below which the match is
//! dropped. Scores are whole percentages internally, so thresholds compare exactly.
//!
//! Families, one file each: [`identifiers`] (health numbers with their check digits, SIN, MRN,
//! dates of birth), [`contact`] (phone, email, postal and ZIP codes), [`clinical`]
//! (medications, doses, prescription requests, lab results, diagnoses, sensitive topics), and
//! [`custom`] (the user's `[[policy.detector]]` entries and `[policy.builtin.*]` tuning).
//!
//! [`Engine::detect`] runs every detector over the [`normalize`] views, maps matches back to
//! byte offsets of the original text, scores them, drops allow-listed values, then resolves
//! overlaps: the highest score wins, then the most sensitive class, then the longest span.

pub(crate) mod clinical;
pub(crate) mod contact;
pub(crate) mod custom;
pub(crate) mod identifiers;
pub(crate) mod normalize;

use super::Class;
use aho_corasick::{AhoCorasick, MatchKind};
use normalize::{View, isolated, next_boundary, whole_word};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use std::collections::{BTreeMap, BTreeSet};

/// Compiled-size cap for one pattern (user patterns included): large enough for any sane
/// detector, small enough that a pathological one fails validation instead of eating memory.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 22;

/// How far (in bytes of the original text) context windows may reach on either side,
/// whatever the word count: bounds the work per finding.
const WINDOW_CAP: usize = 256;

/// A judge's verdict on one match: its base score and where it really ends (a judge may
/// extend a match, e.g. over an OHIP version code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Judged {
    /// Base score, 0..=100, before context.
    pub pct: u8,
    /// End of the match in the plain view (at least the regex match's end).
    pub end: usize,
}

/// A built-in judge: the plain view, the match's start and end; `None` rejects the match.
pub(crate) type JudgeFn = fn(&str, usize, usize) -> Option<Judged>;

/// How a regex match becomes a scored candidate.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Judge {
    /// Every match scores this.
    Fixed(u8),
    /// The match's digits must pass the Luhn check; then it scores this.
    Luhn(u8),
    /// A built-in judge (checksums, formats, dates).
    Builtin(JudgeFn),
}

/// One detector before compilation: built-in (from a family file, maybe tuned) or custom.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    /// Stable kind name reported in findings.
    pub kind: String,
    /// The class a finding of this kind gives the text.
    pub class: Class,
    /// The regex run over the plain view, if any.
    pub pattern: Option<String>,
    /// Validates and scores regex matches.
    pub judge: Judge,
    /// Keywords matched over the folded view (whole words, case- and accent-insensitive).
    pub terms: Vec<String>,
    /// Base score of a keyword match.
    pub term_pct: u8,
    /// Context words that raise the score when near a match.
    pub context: Vec<String>,
    /// Drop matches with no context word near them.
    pub context_required: bool,
    /// Overrides the global threshold.
    pub threshold: Option<u8>,
    /// Reject regex matches glued to more digits or letters (see [`normalize::isolated`]).
    pub isolated: bool,
    /// The pattern has bounded repetition only, so a rejected alignment can be retried one
    /// character later without quadratic cost (built-ins); custom patterns are matched once.
    pub bounded: bool,
}

impl Spec {
    /// A built-in regex detector with its judge.
    pub(crate) fn regex(kind: &str, class: Class, pattern: &str, judge: JudgeFn) -> Spec {
        Spec::judged(kind, class, pattern, Judge::Builtin(judge))
    }

    /// A regex detector with any judge.
    pub(crate) fn judged(kind: &str, class: Class, pattern: &str, judge: Judge) -> Spec {
        Spec {
            kind: kind.to_string(),
            class,
            pattern: Some(pattern.to_string()),
            judge,
            terms: Vec::new(),
            term_pct: 0,
            context: Vec::new(),
            context_required: false,
            threshold: None,
            isolated: true,
            bounded: true,
        }
    }

    /// A built-in keyword detector.
    pub(crate) fn keywords(kind: &str, class: Class, terms: &[&str], pct: u8) -> Spec {
        Spec {
            kind: kind.to_string(),
            class,
            pattern: None,
            judge: Judge::Fixed(pct),
            terms: terms.iter().map(|t| t.to_string()).collect(),
            term_pct: pct,
            context: Vec::new(),
            context_required: false,
            threshold: None,
            isolated: true,
            bounded: true,
        }
    }

    /// Adds keywords to a regex detector (a lab result is a value with a unit *or* a term).
    pub(crate) fn with_terms(mut self, terms: &[&str], pct: u8) -> Spec {
        self.terms.extend(terms.iter().map(|t| t.to_string()));
        self.term_pct = pct;
        self
    }

    /// Sets the context words.
    pub(crate) fn with_context(mut self, words: &[&str]) -> Spec {
        self.context = words.iter().map(|w| w.to_string()).collect();
        self
    }

    /// Requires a context word near every match.
    pub(crate) fn requiring_context(mut self) -> Spec {
        self.context_required = true;
        self
    }

    /// Whether this detector matches keywords (so `terms` may be tuned).
    pub(crate) fn has_terms(&self) -> bool {
        !self.terms.is_empty()
    }
}

/// Every built-in detector, in evaluation (and tie-break) order.
pub(crate) fn builtin_specs() -> Vec<Spec> {
    let mut v = identifiers::specs();
    v.extend(contact::specs());
    v.extend(clinical::specs());
    v
}

/// Scoring knobs shared by all detectors (percentages and word counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    /// Minimum final score.
    pub threshold: u8,
    /// Added to the base score when a context word is near.
    pub boost: u8,
    /// Minimum score of a match with context.
    pub floor: u8,
    /// Words before a match searched for context.
    pub words_before: usize,
    /// Words after a match searched for context.
    pub words_after: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { threshold: 40, boost: 35, floor: 40, words_before: 6, words_after: 3 }
    }
}

/// One accepted detection, in original byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    /// Index of the detector in the engine.
    pub spec: usize,
    /// Start (byte offset into the original text).
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// Final score, 0..=100.
    pub pct: u8,
}

/// A context word occurrence: which term, where (original offsets).
#[derive(Clone, Copy, Debug)]
struct ContextHit {
    term: usize,
    start: usize,
    end: usize,
}

/// All detectors, compiled.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    specs: Vec<Spec>,
    /// (detector index, its regex), in the order of `set`'s patterns.
    regexes: Vec<(usize, Regex)>,
    /// Pre-filter: which regexes match anywhere.
    set: Option<RegexSet>,
    /// Keywords and context words in one automaton, so the folded text is searched once.
    terms: Option<AhoCorasick>,
    /// For each pattern of `terms`: the detectors listing it as a keyword.
    keyword_owners: Vec<Vec<usize>>,
    /// For each pattern of `terms`: the detectors using it as a context word (sorted).
    context_users: Vec<Vec<usize>>,
    /// Longest context term (bytes of the folded term), to bound window look-ups.
    context_max_len: usize,
    /// Compacted allow-list values (sorted).
    allow: Vec<String>,
    params: Params,
}

impl Engine {
    /// Compiles the detectors. Errors name the detector; validation reports them with their
    /// TOML path before this is reached.
    pub(crate) fn build(specs: Vec<Spec>, params: Params, allow: &[String]) -> Result<Engine, String> {
        let mut regexes = Vec::new();
        let mut patterns = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(p) = &s.pattern {
                let re = compile_regex(p).map_err(|e| format!("detector `{}`: {e}", s.kind))?;
                regexes.push((i, re));
                patterns.push(p.as_str());
            }
        }
        let set = if patterns.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(&patterns)
                    .size_limit(REGEX_SIZE_LIMIT.saturating_mul(8))
                    .build()
                    .map_err(|e| format!("detector patterns: {e}"))?,
            )
        };

        // Folded term -> (detectors listing it as a keyword, detectors using it as context).
        let mut all: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>)> = BTreeMap::new();
        let mut context_max_len = 0;
        for (i, s) in specs.iter().enumerate() {
            for t in &s.terms {
                let f = normalize::fold_term(t);
                if !f.is_empty() {
                    all.entry(f).or_default().0.insert(i);
                }
            }
            for t in &s.context {
                let f = normalize::fold_term(t);
                if !f.is_empty() {
                    context_max_len = context_max_len.max(f.len());
                    all.entry(f).or_default().1.insert(i);
                }
            }
        }
        let (terms, keyword_owners, context_users) = automaton(all)?;
        let mut allow: Vec<String> = allow.iter().map(|a| normalize::compact(a)).filter(|a| !a.is_empty()).collect();
        allow.sort();
        allow.dedup();
        Ok(Engine { specs, regexes, set, terms, keyword_owners, context_users, context_max_len, allow, params })
    }

    /// The detectors, in evaluation order.
    pub(crate) fn specs(&self) -> &[Spec] {
        &self.specs
    }

    /// The kind of a hit.
    pub(crate) fn kind(&self, hit: &Hit) -> &str {
        self.specs.get(hit.spec).map_or("unknown", |s| s.kind.as_str())
    }

    /// The class of a hit.
    pub(crate) fn class(&self, hit: &Hit) -> Class {
        // An unknown index cannot happen; if it did, fail closed.
        self.specs.get(hit.spec).map_or(Class::Sensitive, |s| s.class)
    }

    /// Runs every detector over `text`: accepted findings, sorted by start, non-overlapping.
    pub(crate) fn detect(&self, text: &str) -> Vec<Hit> {
        let plain = View::plain(text);
        let folded = View::folded(text);

        let mut candidates = Vec::new();
        if let Some(set) = &self.set {
            for k in set.matches(plain.text()).iter() {
                if let Some((spec, re)) = self.regexes.get(k) {
                    self.run_regex(*spec, re, &plain, &mut candidates);
                }
            }
        }
        // One pass over the folded text finds keyword matches (candidates) and context words.
        let mut context = Vec::new();
        if let Some(ac) = &self.terms
            && let Ok(matches) = ac.try_find_overlapping_iter(folded.text())
        {
            for m in matches {
                if !whole_word(folded.text(), m.start(), m.end()) {
                    continue;
                }
                let Some((start, end)) = folded.original(m.start(), m.end()) else { continue };
                let term = m.pattern().as_usize();
                for &spec in self.keyword_owners.get(term).into_iter().flatten() {
                    let pct = self.specs.get(spec).map_or(0, |s| s.term_pct);
                    candidates.push(Hit { spec, start, end, pct });
                }
                if self.context_users.get(term).is_some_and(|u| !u.is_empty()) {
                    context.push(ContextHit { term, start, end });
                }
            }
        }
        context.sort_by_key(|h| (h.start, h.end, h.term));

        let mut kept = Vec::with_capacity(candidates.len());
        for mut h in candidates {
            let Some(spec) = self.specs.get(h.spec) else { continue };
            let near = !spec.context.is_empty() && self.context_near(text, &context, h.spec, h.start, h.end);
            if spec.context_required && !near {
                continue;
            }
            if near {
                h.pct = h.pct.saturating_add(self.params.boost).max(self.params.floor).min(100);
            }
            if h.pct < spec.threshold.unwrap_or(self.params.threshold) || h.pct == 0 {
                continue;
            }
            if self.allowed(text, &h) {
                continue;
            }
            kept.push(h);
        }
        resolve_overlaps(kept, &self.specs)
    }

    fn run_regex(&self, spec_index: usize, re: &Regex, view: &View<'_>, out: &mut Vec<Hit>) {
        let Some(spec) = self.specs.get(spec_index) else { return };
        let hay = view.text();
        let mut push = |m_start: usize, j: Judged| {
            if let Some((start, end)) = view.original(m_start, j.end) {
                out.push(Hit { spec: spec_index, start, end, pct: j.pct });
            }
        };
        if spec.bounded {
            let mut pos = 0;
            while pos <= hay.len() {
                let Some(m) = re.find_at(hay, pos) else { break };
                let next = next_boundary(hay, m.start());
                match judge(spec, hay, m.start(), m.end()) {
                    Some(j) => {
                        push(m.start(), j);
                        pos = j.end.max(next);
                    }
                    None => pos = next,
                }
            }
        } else {
            for m in re.find_iter(hay) {
                if let Some(j) = judge(spec, hay, m.start(), m.end()) {
                    push(m.start(), j);
                }
            }
        }
    }

    /// Whether a context word of detector `spec` lies within the window around `start..end`.
    fn context_near(&self, text: &str, hits: &[ContextHit], spec: usize, start: usize, end: usize) -> bool {
        let from = window_start(text, start, self.params.words_before);
        let to = window_end(text, end, self.params.words_after);
        let lo = hits.partition_point(|h| h.start.saturating_add(self.context_max_len) <= from);
        hits.get(lo..)
            .unwrap_or_default()
            .iter()
            .take_while(|h| h.start < to)
            .filter(|h| h.end > from)
            .any(|h| self.context_users.get(h.term).is_some_and(|u| u.binary_search(&spec).is_ok()))
    }

    fn allowed(&self, text: &str, h: &Hit) -> bool {
        if self.allow.is_empty() {
            return false;
        }
        let Some(value) = text.get(h.start..h.end) else { return false };
        self.allow.binary_search(&normalize::compact(value)).is_ok()
    }
}

/// Compiles one pattern with the engine's limits (also used by validation).
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build()
}

/// The automaton of every folded term, with each pattern's keyword owners and context users.
#[allow(clippy::type_complexity)]
fn automaton(
    terms: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>)>,
) -> Result<(Option<AhoCorasick>, Vec<Vec<usize>>, Vec<Vec<usize>>), String> {
    if terms.is_empty() {
        return Ok((None, Vec::new(), Vec::new()));
    }
    let mut patterns = Vec::with_capacity(terms.len());
    let (mut owners, mut users) = (Vec::with_capacity(terms.len()), Vec::with_capacity(terms.len()));
    for (t, (o, u)) in terms {
        patterns.push(t);
        owners.push(o.into_iter().collect());
        users.push(u.into_iter().collect());
    }
    let ac = AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        .build(&patterns)
        .map_err(|e| format!("keyword automaton: {e}"))?;
    Ok((Some(ac), owners, users))
}

fn judge(spec: &Spec, hay: &str, start: usize, end: usize) -> Option<Judged> {
    if start >= end {
        return None;
    }
    let j = match spec.judge {
        Judge::Fixed(pct) => Judged { pct, end },
        Judge::Luhn(pct) => {
            let d = identifiers::digits(hay.get(start..end)?);
            if d.len() < 2 || !identifiers::luhn(&d) {
                return None;
            }
            Judged { pct, end }
        }
        Judge::Builtin(f) => f(hay, start, end)?,
    };
    if j.end < end || !hay.is_char_boundary(j.end) {
        return None;
    }
    if spec.isolated && !isolated(hay, start, j.end) {
        return None;
    }
    Some(j)
}

/// Start of the context window: `words` words back from `start` (at most [`WINDOW_CAP`]).
fn window_start(text: &str, start: usize, words: usize) -> usize {
    let Some(head) = text.get(..start) else { return start };
    let (mut seen, mut in_word, mut pos) = (0, false, start);
    for (i, c) in head.char_indices().rev() {
        if start - i > WINDOW_CAP {
            break;
        }
        let w = c.is_alphanumeric();
        if w && !in_word {
            seen += 1;
            if seen > words {
                break;
            }
        }
        in_word = w;
        pos = i;
    }
    pos
}

/// End of the context window: `words` words forward from `end` (at most [`WINDOW_CAP`]).
fn window_end(text: &str, end: usize, words: usize) -> usize {
    let Some(tail) = text.get(end..) else { return end };
    let (mut seen, mut in_word, mut pos) = (0, false, end);
    for (i, c) in tail.char_indices() {
        if i > WINDOW_CAP {
            break;
        }
        let w = c.is_alphanumeric();
        if w && !in_word {
            seen += 1;
            if seen > words {
                break;
            }
        }
        in_word = w;
        pos = end + i + c.len_utf8();
    }
    pos
}

/// Keeps the best of overlapping hits: highest score, then most sensitive class, then longest,
/// then earliest, then the detector declared first. Result sorted by start.
fn resolve_overlaps(mut hits: Vec<Hit>, specs: &[Spec]) -> Vec<Hit> {
    let class = |h: &Hit| specs.get(h.spec).map_or(Class::Sensitive, |s| s.class);
    hits.sort_by(|a, b| {
        b.pct
            .cmp(&a.pct)
            .then_with(|| class(b).cmp(&class(a)))
            .then_with(|| b.end.saturating_sub(b.start).cmp(&a.end.saturating_sub(a.start)))
            .then_with(|| a.start.cmp(&b.start))
            .then_with(|| a.spec.cmp(&b.spec))
    });
    // Accepted spans are disjoint, so the one starting last before `h.end` is the only one
    // that can overlap `h`.
    let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for h in hits {
        let overlaps = taken.range(..h.end).next_back().is_some_and(|(_, &e)| e > h.start);
        if !overlaps {
            taken.insert(h.start, h.end);
            out.push(h);
        }
    }
    out.sort_by_key(|h| (h.start, h.end, h.spec));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_words() {
        let t = "my health card number is 1234 567 897 thanks a lot friend";
        let s = t.find("1234").unwrap_or(0);
        assert_eq!(&t[window_start(t, s, 2)..s], " number is ");
        assert_eq!(&t[window_start(t, s, 6)..s], "my health card number is ");
        let e = s + "1234 567 897".len();
        assert_eq!(&t[e..window_end(t, e, 2)], " thanks a ");
        assert_eq!(window_start(t, 0, 3), 0);
        assert_eq!(window_end(t, t.len(), 3), t.len());
    }

    #[test]
    fn overlaps_prefer_score_then_class_then_length() {
        let specs = vec![
            Spec::keywords("a", Class::Contact, &["x"], 50),
            Spec::keywords("b", Class::Identifier, &["x"], 50),
            Spec::keywords("c", Class::Clinical, &["x"], 90),
        ];
        let h = |spec, start, end, pct| Hit { spec, start, end, pct };
        // Same score: the more sensitive class wins.
        let out = resolve_overlaps(vec![h(0, 0, 10, 50), h(1, 2, 8, 50)], &specs);
        assert_eq!(out, vec![h(1, 2, 8, 50)]);
        // Higher score wins over class.
        let out = resolve_overlaps(vec![h(2, 0, 4, 90), h(1, 0, 10, 50)], &specs);
        assert_eq!(out, vec![h(2, 0, 4, 90)]);
        // Disjoint hits are all kept, sorted; duplicates collapse.
        let out = resolve_overlaps(vec![h(0, 5, 6, 50), h(0, 0, 2, 50), h(0, 0, 2, 50), h(1, 2, 5, 50)], &specs);
        assert_eq!(out, vec![h(0, 0, 2, 50), h(1, 2, 5, 50), h(0, 5, 6, 50)]);
    }
}
