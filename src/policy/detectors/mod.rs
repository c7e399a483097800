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
pub(crate) mod digit_patterns;
pub(crate) mod fuzzy;
pub(crate) mod identifiers;
pub(crate) mod lexicon;
pub(crate) mod normalize;
pub(crate) mod odd_terms;
pub(crate) mod scratch;
pub(crate) mod word_map;

use super::Class;
use aho_corasick::{AhoCorasick, MatchKind};
use normalize::{View, isolated, next_boundary, whole_word};
use regex::{Regex, RegexBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Compiled-size cap for one pattern (user patterns included): large enough for any sane
/// detector, small enough that a pathological one fails validation instead of eating memory.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 22;

/// How far (in bytes of the original text) context windows may reach on either side,
/// whatever the word count: bounds the work per finding.
const WINDOW_CAP: usize = 256;

/// At most this many words between two numbers of one detector for the second to share the
/// first's context word ("my OHIP is X and my wife's is Y").
const LIST_GAP_WORDS: usize = 8;

/// Short function words (English and French) that do not count towards a context window, so
/// a French phrase ("le numéro de dossier de l'hôpital est le") reaches as far as its English
/// equivalent.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "be", "my", "his", "her", "our", "your", "their", "of", "for", "to", "in",
    "on", "at", "and", "or", "it", "its", "i", "s", "me", "am", "de", "du", "des", "la", "le", "les", "l", "d", "mon",
    "ma", "mes", "son", "sa", "ses", "notre", "votre", "est", "c", "à", "au", "aux", "et", "en", "pour", "qui", "que",
    "un", "une", "n", "j", "ai", "se", "ce",
];

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
    /// Context words also match when misspelt by a letter or two ("helth card", "date of
    /// brith", "chrat"): for identifiers, whose numbers are dropped without context.
    pub fuzzy: bool,
    /// Keywords of 7 letters or more also match misspelt by one edit ("perscription",
    /// "diabetis", "colosopie"), when the typed word is no everyday word (see
    /// [`fuzzy::Vocabulary`]): the built-in clinical lists.
    pub fuzzy_terms: bool,
    /// A match may share a neighbour's context across a line with a label of its own ("- my
    /// son: 2345678904" under "- me: 1234567897"). Off for dates: the next labelled line's
    /// date is another date ("Preferred date: …" under "Date of birth: …").
    pub share_across_labels: bool,
    /// Where the pattern is run (see [`Prefilter`]).
    pub prefilter: Prefilter,
    /// The pattern matches any digit, whatever surrounds it (`reading`: `[0-9]{1,3}…`, no
    /// assertion), so it can match in every digit window: it is left out of the set that
    /// says which patterns can match in a window (asking would always say yes, and cost the
    /// set a match state at every digit).
    pub matches_every_digit: bool,
}

/// Where a detector's pattern can match, so that it is not run over text where it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prefilter {
    /// Anywhere: run over the whole text (the clinic's own patterns).
    Whole,
    /// Every match holds a digit and at most [`DIGIT_REACH`] bytes before or after its digits
    /// (built-in numbers, dates, codes, values): run only around digits.
    Digits,
    /// Every match holds this byte (`@` for email addresses): run only if the text has it.
    Byte(u8),
}

/// How far a built-in match may reach from its digits ("September 7, 1984", "saturation: 91%",
/// "72 battements par minute").
const DIGIT_REACH: usize = 24;

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
            fuzzy: false,
            fuzzy_terms: false,
            share_across_labels: true,
            prefilter: Prefilter::Digits,
            matches_every_digit: false,
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
            fuzzy: false,
            fuzzy_terms: false,
            share_across_labels: true,
            prefilter: Prefilter::Digits,
            matches_every_digit: false,
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

    /// Lets context words match with a small edit distance.
    pub(crate) fn fuzzy_context(mut self) -> Spec {
        self.fuzzy = true;
        self
    }

    /// Keeps a match from sharing a neighbour's context across a labelled line.
    pub(crate) fn not_sharing_across_labels(mut self) -> Spec {
        self.share_across_labels = false;
        self
    }

    /// Lets this detector's keywords match misspelt (see [`Spec::fuzzy_terms`]).
    pub(crate) fn fuzzy_terms(mut self) -> Spec {
        self.fuzzy_terms = true;
        self
    }

    /// Says the pattern matches any digit (see [`Spec::matches_every_digit`]).
    pub(crate) fn matching_every_digit(mut self) -> Spec {
        self.matches_every_digit = true;
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

/// The context words of one text, per detector: `(detector, start, end)` in original offsets,
/// sorted, so each detector's occurrences are one slice.
struct ContextHits {
    hits: Vec<(usize, usize, usize)>,
    /// Longest occurrence (bytes of the original), to bound look-ups by start.
    max_len: usize,
    /// Where each detector's occurrences start in `hits` (one more entry than detectors),
    /// set by [`ContextHits::sort`]: a detector's slice without a search.
    first: Vec<usize>,
}

impl ContextHits {
    /// Sorts and deduplicates the occurrences and indexes them by detector (`specs` detectors).
    fn sort(&mut self, specs: usize) {
        self.hits.sort_unstable();
        self.hits.dedup();
        self.first.clear();
        let mut k = 0;
        for spec in 0..=specs {
            while self.hits.get(k).is_some_and(|h| h.0 < spec) {
                k += 1;
            }
            self.first.push(k);
        }
    }

    /// The occurrences of detector `spec`'s context words, sorted by start.
    fn of(&self, spec: usize) -> &[(usize, usize, usize)] {
        match (self.first.get(spec), self.first.get(spec + 1)) {
            (Some(&lo), Some(&hi)) => self.hits.get(lo..hi).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Whether one of detector `spec`'s context words overlaps `from..to`.
    fn near(&self, spec: usize, from: usize, to: usize) -> bool {
        let hits = self.of(spec);
        let lo = hits.partition_point(|h| h.1.saturating_add(self.max_len) <= from);
        hits.get(lo..).unwrap_or_default().iter().take_while(|h| h.1 < to).any(|h| h.2 > from)
    }
}

/// How far around a match its context window can reach at most (the window's byte cap, plus
/// the character it may stop inside): no context word outside this, no window to compute.
const REACH: usize = WINDOW_CAP + 8;

/// All detectors, compiled.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    specs: Vec<Spec>,
    /// (detector index, its regex).
    regexes: Vec<(usize, Regex)>,
    /// The patterns of the detectors run around digits, in one automaton run once over each
    /// digit window (see [`digit_patterns`]): where each can match there, so the others are
    /// not run at all, and each match without a search of its own. With it, for each entry of
    /// `regexes`, its pattern id in the automaton (`None`: run alone, as written).
    digit_patterns: Option<(Arc<digit_patterns::DigitPatterns>, Vec<Option<u32>>)>,
    /// Keywords and context words that start and end with a letter (nearly all): looked up
    /// by the letter runs of the folded text (see [`WordTerms`]).
    words: WordTerms,
    /// The other keywords and context words that start with a letter (`file #`, `o2`,
    /// `covid-19`): tried at the starts of letter runs (see [`odd_terms`]).
    odd: odd_terms::OddTerms,
    /// The rest (`# de dossier`), in one automaton, with each pattern's term id.
    terms: Option<(AhoCorasick, Vec<usize>)>,
    /// For each pattern of `terms`: the detectors listing it as a keyword.
    keyword_owners: Vec<Vec<usize>>,
    /// For each pattern of `terms`: the detectors using it as a context word (sorted).
    context_users: Vec<Vec<usize>>,
    /// The context words of detectors that accept them misspelt.
    fuzzy: fuzzy::Index,
    /// The keywords of detectors that accept them misspelt, by term id.
    vocabulary: fuzzy::Vocabulary,
    /// The everyday words and terms with what `words`, `fuzzy` and `vocabulary` give for
    /// each: one look-up per word of a text instead of three.
    lexicon: lexicon::Lexicon,
    /// Compacted allow-list values (sorted).
    allow: Vec<String>,
    params: Params,
}

impl Engine {
    /// Compiles the detectors. Errors name the detector; validation reports them with their
    /// TOML path before this is reached.
    pub(crate) fn build(specs: Vec<Spec>, params: Params, allow: &[String]) -> Result<Engine, String> {
        let mut regexes = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(p) = &s.pattern {
                let re = compile_regex(p).map_err(|e| format!("detector `{}`: {e}", s.kind))?;
                regexes.push((i, re));
            }
        }

        // Folded term -> (detectors listing it as a keyword, detectors using it as context).
        let mut all: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>)> = BTreeMap::new();
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
                    all.entry(f).or_default().1.insert(i);
                }
            }
        }
        let vocabulary = fuzzy::Vocabulary::new(all.iter().enumerate().filter_map(|(id, (t, (owners, _)))| {
            owners.iter().any(|&o| specs.get(o).is_some_and(|s| s.fuzzy_terms)).then_some((t.as_str(), id))
        }));
        let (words, odd, terms, keyword_owners, context_users) = automaton(all)?;
        let fuzzy = fuzzy::Index::new(specs.iter().enumerate().filter(|(_, s)| s.fuzzy).flat_map(|(i, s)| {
            s.context
                .iter()
                // "record #", "n° de dossier": the symbol is part of the phrase, and fuzzy
                // matching only sees words; those phrases match exactly or not at all.
                .filter(|t| t.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '\'' | '-' | '.')))
                .map(move |t| (normalize::fold_term(t), i))
        }));
        // Every word the lexicon answers for: everyday words, one-word terms and starts of
        // terms, the misspelt context words' vocabulary. A one-word key of `words` is any key
        // without a non-letter.
        let lexicon = {
            let single: Vec<String> =
                words.map.words().filter(|k| k.chars().all(char::is_alphabetic)).map(|k| k.into_owned()).collect();
            let single = single.iter().map(String::as_str);
            let everyday = crate::policy::safe::everyday_words().map(|w| -> &str { w });
            let known = everyday.chain(single).chain(fuzzy.words());
            let odd_starts: Vec<&str> = odd.first_runs().collect();
            lexicon::Lexicon::new(known, &words, &fuzzy, &vocabulary, &odd_starts)
        };
        let digit_patterns = {
            let mut members = Vec::with_capacity(regexes.len());
            let mut patterns = Vec::new();
            for (spec, _) in &regexes {
                match specs.get(*spec) {
                    // A pattern matching every digit (`reading`) would report a start at
                    // every digit; a custom one that is not bounded is matched once, as written.
                    Some(Spec {
                        prefilter: Prefilter::Digits,
                        pattern: Some(p),
                        matches_every_digit: false,
                        bounded: true,
                        ..
                    }) => {
                        members.push(u32::try_from(patterns.len()).ok());
                        patterns.push(p.as_str());
                    }
                    _ => members.push(None),
                }
            }
            // Patterns the automaton cannot take only cost speed: every pattern is then run alone.
            digit_patterns::DigitPatterns::new(&patterns, REGEX_SIZE_LIMIT).map(|dp| (Arc::new(dp), members))
        };
        let mut allow: Vec<String> = allow.iter().map(|a| normalize::compact(a)).filter(|a| !a.is_empty()).collect();
        allow.sort();
        allow.dedup();
        Ok(Engine {
            specs,
            regexes,
            digit_patterns,
            words,
            odd,
            terms,
            keyword_owners,
            context_users,
            fuzzy,
            vocabulary,
            lexicon,
            allow,
            params,
        })
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
    ///
    /// Order of work, cheapest first: one automaton pass over the folded view finds keyword
    /// matches and context words, and the misspelt context words are looked up once; then
    /// the patterns run only where they can matter (around digits, where the digit
    /// automaton found them a start, and for detectors that need a context word only near
    /// one); a match's context window is computed only when a context word lies within its
    /// reach.
    pub(crate) fn detect(&self, text: &str) -> Vec<Hit> {
        scratch::with(|s| self.detect_in(text, s))
    }

    /// [`Engine::detect`], in the buffers of `s`.
    fn detect_in(&self, text: &str, s: &mut scratch::Scratch) -> Vec<Hit> {
        let folded = View::folded(text);

        // One pass over the folded text finds keyword matches (candidates) and context words.
        let mut candidates = std::mem::take(&mut s.candidates);
        candidates.clear();
        let (mut hits, first) = (std::mem::take(&mut s.ctx_hits), std::mem::take(&mut s.ctx_first));
        hits.clear();
        let mut ctx = ContextHits { hits, max_len: 0, first };
        let runs = &mut s.runs;
        letter_runs_into(folded.text(), runs);
        // Each word's answers, when the lexicon has them (most words): looked up once here for
        // the terms, the misspelt keywords and the misspelt context words.
        let known = &mut s.known;
        known.clear();
        known.extend(runs.iter().map(|&(a, b)| folded.text().get(a..b).and_then(|w| self.lexicon.get(w))));
        let (found, unknown) = (&mut s.found, &mut s.unknown);
        found.clear();
        unknown.clear();
        self.words.find(
            folded.text(),
            runs,
            known,
            |a, b, term| found.push((a, b, term)),
            |k, a, b| unknown.push((k, a, b)),
        );
        // Words no term starts with: maybe a keyword misspelt.
        if !self.vocabulary.is_empty() {
            for &(k, a, b) in unknown.iter() {
                match known.get(k).copied().flatten() {
                    Some(w) => found.extend(self.lexicon.misspelt(&w).iter().map(|&term| (a, b, term))),
                    None => {
                        if let Some(word) = folded.text().get(a..b) {
                            self.vocabulary.find(word, |term| found.push((a, b, term)));
                        }
                    }
                }
            }
        }
        let may_start_odd = |k: usize| known.get(k).copied().flatten().is_none_or(|w| w.starts_odd());
        self.odd.find(folded.text(), runs, may_start_odd, found);
        if let Some((ac, ids)) = &self.terms
            && let Ok(matches) = ac.try_find_overlapping_iter(folded.text())
        {
            for m in matches {
                if whole_word(folded.text(), m.start(), m.end())
                    && let Some(&term) = ids.get(m.pattern().as_usize())
                {
                    found.push((m.start(), m.end(), term));
                }
            }
        }
        for &(a, b, term) in found.iter() {
            let Some((start, end)) = folded.original(a, b) else { continue };
            for &spec in self.keyword_owners.get(term).into_iter().flatten() {
                let pct = self.specs.get(spec).map_or(0, |s| s.term_pct);
                candidates.push(Hit { spec, start, end, pct });
            }
            for &spec in self.context_users.get(term).into_iter().flatten() {
                ctx.hits.push((spec, start, end));
                ctx.max_len = ctx.max_len.max(end - start);
            }
        }
        // Where the patterns can match, worked out once for both what follows and the patterns.
        let plain = View::plain(text);
        let joined = if self.regexes.is_empty() { None } else { View::joined(&plain) };
        let digits = &mut s.digits;
        digits.clear();
        if !self.regexes.is_empty() {
            digit_windows_into(plain.text(), digits);
        }
        // Every match start of the automaton's patterns in the digit windows, sorted (`None`
        // if a search failed: every pattern is then run alone).
        // The automaton's search caches, taken once for the whole scan.
        let mut caches = self.digit_patterns.as_ref().map(|(dp, _)| dp.caches());
        let starts = match (&self.digit_patterns, caches.as_deref_mut()) {
            (Some((dp, _)), Some(c)) => dp.find_starts(c, plain.text(), digits, &mut s.starts).then_some(&s.starts),
            _ => None,
        };
        // Misspelt context words only serve detectors that accept them (identifiers, run
        // around digits): not looked for when none of their patterns can match anywhere.
        let fuzzy_needed = joined.is_some()
            || self.regexes.iter().enumerate().any(|(ri, (spec, _))| {
                self.specs.get(*spec).is_some_and(|s| s.fuzzy)
                    && match (starts, self.member(ri)) {
                        (Some(st), Some(m)) => st.has_pattern(m),
                        _ => true,
                    }
            });
        if fuzzy_needed && !self.fuzzy.is_empty() {
            let mut buf = Vec::new();
            let matches_of = |k: usize, word: &str, out: &mut Vec<usize>| match known.get(k).copied().flatten() {
                Some(w) => out.extend_from_slice(self.lexicon.fuzzy(&w)),
                None => {
                    self.fuzzy.matches(word, &mut buf);
                    out.extend_from_slice(&buf);
                }
            };
            self.fuzzy.find_with(folded.text(), runs, matches_of, |a, b, specs| {
                if let Some((start, end)) = folded.original(a, b) {
                    for &spec in specs {
                        ctx.hits.push((spec, start, end));
                        ctx.max_len = ctx.max_len.max(end - start);
                    }
                }
            });
        }
        ctx.sort(self.specs.len());

        if !self.regexes.is_empty() {
            self.run_regexes(text, &plain, digits, starts, caches.as_deref_mut(), joined, &ctx, &mut candidates);
        }

        // Several detectors match the same span (a number is a chart number, a reading, a
        // ZIP code…): its context window is computed once, and only when a context word of
        // the detector is within reach at all. The window runs from `window_start` (at or
        // before the match) to `window_end` (at or after it), so a context word overlapping
        // the match is in it whatever the window, one before the match needs only the start,
        // one after it only the end: each side is computed only when asked.
        let mut starts: rustc_hash::FxHashMap<usize, usize> = Default::default();
        let mut ends: rustc_hash::FxHashMap<usize, usize> = Default::default();
        let near = &mut s.near;
        near.clear();
        for h in &candidates {
            let Some(spec) = self.specs.get(h.spec) else {
                near.push(false);
                continue;
            };
            let found = !spec.context.is_empty()
                && ctx.near(h.spec, h.start.saturating_sub(REACH), h.end + REACH)
                && (ctx.near(h.spec, h.start, h.end)
                    || (ctx.near(h.spec, h.start.saturating_sub(REACH), h.start) && {
                        let from = *starts
                            .entry(h.start)
                            .or_insert_with(|| window_start(text, h.start, self.params.words_before));
                        ctx.near(h.spec, from, h.start)
                    })
                    || (ctx.near(h.spec, h.end, h.end + REACH) && {
                        let to = *ends.entry(h.end).or_insert_with(|| window_end(text, h.end, self.params.words_after));
                        ctx.near(h.spec, h.end, to)
                    }));
            near.push(found);
        }
        share_context(text, &candidates, near, &self.specs);

        let mut kept = Vec::with_capacity(candidates.len());
        for (mut h, &near) in candidates.drain(..).zip(near.iter()) {
            let Some(spec) = self.specs.get(h.spec) else { continue };
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
        (s.candidates, s.ctx_hits, s.ctx_first) = (candidates, ctx.hits, ctx.first);
        resolve_overlaps(kept, &self.specs)
    }

    /// Runs the detectors' patterns over the plain view (and the joined view, for numbers
    /// broken across lines), adding their judged matches to `out`.
    /// `digits`: the plain view's digit windows; `starts`: the automaton's match starts in
    /// them, and `caches` the automaton's; `joined`: the joined view and where it joined lines.
    #[allow(clippy::too_many_arguments)]
    fn run_regexes(
        &self,
        text: &str,
        plain: &View<'_>,
        digits: &[(usize, usize)],
        starts: Option<&digit_patterns::Starts>,
        mut caches: Option<&mut digit_patterns::Caches>,
        joined: Option<(View<'_>, Vec<usize>)>,
        ctx: &ContextHits,
        out: &mut Vec<Hit>,
    ) {
        let hay = plain.text();
        let whole = [(0, hay.len())];
        for (ri, (spec_index, re)) in self.regexes.iter().enumerate() {
            let Some(spec) = self.specs.get(*spec_index) else { continue };
            match spec.prefilter {
                Prefilter::Digits => {
                    let reachable = if spec.context_required {
                        // The windows are in the plain view, the context words in the
                        // original: where the plain view dropped characters (exotic spaces,
                        // zero-width ones) a word after the number lies further on there.
                        Some(context_reachable(digits, |lo, hi| {
                            let (lo, hi) = plain.original(lo, hi).unwrap_or((lo, hi));
                            ctx.near(*spec_index, lo.saturating_sub(REACH), hi + REACH)
                        }))
                    } else {
                        None
                    };
                    let reached = |k: usize| reachable.as_ref().is_none_or(|r| r.get(k).copied().unwrap_or(true));
                    match (starts, self.member(ri), caches.as_deref_mut()) {
                        (Some(st), Some(m), Some(c)) => {
                            self.run_digit_pattern(*spec_index, m, c, plain, digits, st, reached, text, false, out);
                        }
                        _ => {
                            for (k, &(lo, hi)) in digits.iter().enumerate() {
                                if reached(k) {
                                    self.run_regex(*spec_index, re, plain, lo, hi, text, false, out);
                                }
                            }
                        }
                    }
                }
                Prefilter::Byte(b) if !hay.as_bytes().contains(&b) => {}
                _ => {
                    for &(lo, hi) in &whole {
                        self.run_regex(*spec_index, re, plain, lo, hi, text, false, out);
                    }
                }
            }
        }
        // Numbers hard-wrapped across a line break ("1234 567\n897"): matched again with the
        // break removed, around the breaks; only matches that span one are new.
        if let Some((joined, joins)) = joined {
            let windows: Vec<(usize, usize)> = digit_windows(joined.text())
                .into_iter()
                .filter(|&(lo, hi)| joins.iter().any(|&j| lo <= j && j <= hi))
                .collect();
            let starts = match (&self.digit_patterns, caches.as_deref_mut()) {
                (Some((dp, _)), Some(c)) => {
                    let mut starts = digit_patterns::Starts::default();
                    dp.find_starts(c, joined.text(), &windows, &mut starts).then_some(starts)
                }
                _ => None,
            };
            for (ri, (spec_index, re)) in self.regexes.iter().enumerate() {
                let Some(spec) = self.specs.get(*spec_index) else { continue };
                // Built-in patterns only: the clinic's own are matched once, as written. A
                // detector that needs a context word is skipped when the text has none of its.
                if spec.bounded
                    && !matches!(spec.prefilter, Prefilter::Byte(_))
                    && !(spec.context_required && ctx.of(*spec_index).is_empty())
                {
                    match (&starts, self.member(ri), caches.as_deref_mut()) {
                        (Some(st), Some(m), Some(c)) => {
                            self.run_digit_pattern(*spec_index, m, c, &joined, &windows, st, |_| true, text, true, out);
                        }
                        _ => {
                            for &(lo, hi) in &windows {
                                self.run_regex(*spec_index, re, &joined, lo, hi, text, true, out);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs pattern `m` of the digit automaton, detector `spec_index`'s, over the `windows` of
    /// a view where it has starts (`starts`: every pattern's there) and `reached(k)` says the
    /// `k`th window can matter, with the automaton's caches `c`; as
    /// [`Engine::run_regex`] runs a pattern, without its searches.
    #[allow(clippy::too_many_arguments)]
    fn run_digit_pattern(
        &self,
        spec_index: usize,
        m: u32,
        c: &mut digit_patterns::Caches,
        view: &View<'_>,
        windows: &[(usize, usize)],
        starts: &digit_patterns::Starts,
        reached: impl Fn(usize) -> bool,
        text: &str,
        spanning_breaks: bool,
        out: &mut Vec<Hit>,
    ) {
        let Some((dp, _)) = &self.digit_patterns else { return };
        let hay = view.text();
        for (k, &(lo, hi)) in windows.iter().enumerate() {
            let Some(mine) = starts.in_window(k, m) else { continue };
            if !reached(k) {
                continue;
            }
            let mut candidates = mine.peekable();
            let leftmost = |pos: usize| dp.leftmost(c, hay, m, hi, &mut candidates, pos);
            self.judge_leftmost(spec_index, view, lo, hi, text, spanning_breaks, out, leftmost);
        }
    }

    /// Runs one detector's regex over `lo..hi` of a view (matches start at `lo` or later and end
    /// by `hi`, which is whitespace or the end of the text, so judges see the context they
    /// check). With `spanning_breaks` (the joined view), only matches whose original text spans
    /// a line break are kept: the others were found in the plain view already.
    #[allow(clippy::too_many_arguments)]
    fn run_regex(
        &self,
        spec_index: usize,
        re: &Regex,
        view: &View<'_>,
        lo: usize,
        hi: usize,
        text: &str,
        spanning_breaks: bool,
        out: &mut Vec<Hit>,
    ) {
        let Some(spec) = self.specs.get(spec_index) else { return };
        let Some(hay) = view.text().get(..hi) else { return };
        if spec.bounded {
            let leftmost = |pos: usize| re.find_at(hay, pos).map(|m| (m.start(), m.end()));
            self.judge_leftmost(spec_index, view, lo, hi, text, spanning_breaks, out, leftmost);
        } else {
            for m in re.find_iter(hay) {
                if let Some(j) = judge(spec, hay, m.start(), m.end())
                    && let Some((start, end)) = view.original(m.start(), j.end)
                    && (!spanning_breaks || text.get(start..end).is_some_and(|t| t.contains('\n')))
                {
                    out.push(Hit { spec: spec_index, start, end, pct: j.pct });
                }
            }
        }
    }

    /// The matching loop of a bounded pattern over `lo..hi` of a view (see [`Engine::run_regex`]):
    /// `leftmost(pos)` is the pattern's leftmost match starting at or after `pos` in the view
    /// cut at `hi` (asked for increasing positions only); a match the judge accepts is kept and
    /// the search goes on after it, a rejected one is retried one character later (or after
    /// the run of digits it starts in, when the pattern must be isolated).
    #[allow(clippy::too_many_arguments)]
    fn judge_leftmost(
        &self,
        spec_index: usize,
        view: &View<'_>,
        lo: usize,
        hi: usize,
        text: &str,
        spanning_breaks: bool,
        out: &mut Vec<Hit>,
        mut leftmost: impl FnMut(usize) -> Option<(usize, usize)>,
    ) {
        let Some(spec) = self.specs.get(spec_index) else { return };
        let Some(hay) = view.text().get(..hi) else { return };
        let mut pos = lo;
        while pos <= hay.len() {
            let Some((m_start, m_end)) = leftmost(pos) else { break };
            let next = next_boundary(hay, m_start);
            match judge(spec, hay, m_start, m_end) {
                Some(j) => {
                    if let Some((start, end)) = view.original(m_start, j.end)
                        && (!spanning_breaks || text.get(start..end).is_some_and(|t| t.contains('\n')))
                    {
                        out.push(Hit { spec: spec_index, start, end, pct: j.pct });
                    }
                    pos = j.end.max(next);
                }
                // A match of an isolated pattern starting inside a run of digits is glued
                // to the digit before it: skip the rest of the run.
                None if spec.isolated && hay.as_bytes().get(m_start).is_some_and(u8::is_ascii_digit) => {
                    let run = hay.as_bytes().get(m_start..).unwrap_or_default();
                    pos = m_start + run.iter().take_while(|b| b.is_ascii_digit()).count().max(1);
                }
                None => pos = next,
            }
        }
    }

    /// The automaton's pattern id of `regexes[ri]`, if it holds it.
    fn member(&self, ri: usize) -> Option<u32> {
        self.digit_patterns.as_ref().and_then(|(_, m)| m.get(ri).copied().flatten())
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

/// Every folded term, compiled: the ones bounded by letters into a [`WordTerms`], the others
/// starting with a letter into [`odd_terms::OddTerms`], the rest into an automaton; with each
/// term's keyword owners and context users, by term id.
#[allow(clippy::type_complexity)]
fn automaton(
    terms: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>)>,
) -> Result<(WordTerms, odd_terms::OddTerms, Option<(AhoCorasick, Vec<usize>)>, Vec<Vec<usize>>, Vec<Vec<usize>>), String>
{
    let mut words = WordTerms::default();
    let mut odd_words = odd_terms::OddTerms::default();
    let (mut odd, mut odd_ids) = (Vec::new(), Vec::new());
    let (mut owners, mut users) = (Vec::with_capacity(terms.len()), Vec::with_capacity(terms.len()));
    for (id, (t, (o, u))) in terms.into_iter().enumerate() {
        if !words.insert(&t, id) && !odd_words.insert(&t, id) {
            odd.push(t);
            odd_ids.push(id);
        }
        owners.push(o.into_iter().collect());
        users.push(u.into_iter().collect());
    }
    let ac = if odd.is_empty() {
        None
    } else {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&odd)
            .map_err(|e| format!("keyword automaton: {e}"))?;
        Some((ac, odd_ids))
    };
    Ok((words, odd_words, ac, owners, users))
}

/// Terms that start and end with a letter, found by hash look-ups over the letter runs of a
/// folded text instead of an automaton over ~10,000 terms: a whole-word occurrence of such a
/// term runs exactly from the start of a letter run to the end of one (a letter before or
/// after it would glue it to a word), so from each run's start the text is looked up up to
/// the end of that run, then of the next ones while what was read starts some longer term.
/// Most words cost one look-up that misses.
#[derive(Clone, Debug, Default)]
pub(crate) struct WordTerms {
    /// Term, or the start of a longer term cut at the end of a letter run -> (its term id if
    /// it is a term, whether longer terms continue it).
    map: word_map::WordMap<(Option<usize>, bool)>,
    /// Most letter runs in one term.
    max_runs: usize,
}

impl WordTerms {
    /// Adds a folded term; `false` when it does not start and end with a letter.
    fn insert(&mut self, term: &str, id: usize) -> bool {
        let bounded = term.chars().next().is_some_and(char::is_alphabetic)
            && term.chars().next_back().is_some_and(char::is_alphabetic);
        if !bounded {
            return false;
        }
        let runs = letter_runs(term);
        self.max_runs = self.max_runs.max(runs.len());
        for &(_, end) in runs.iter().take(runs.len().saturating_sub(1)) {
            if let Some(prefix) = term.get(..end) {
                self.map.entry_or_insert_with(prefix, || (None, false)).1 = true;
            }
        }
        self.map.entry_or_insert_with(term, || (None, false)).0 = Some(id);
        true
    }

    /// The entry of `key`: its term id if it is a term, whether longer terms continue it.
    pub(crate) fn get(&self, key: &str) -> Option<(Option<usize>, bool)> {
        self.map.get(key).copied()
    }

    /// Calls `found(start, end, term id)` for every occurrence in the folded text `f`, whose
    /// letter runs are `runs`, and `unknown(k, start, end)` for each run (the `k`th) no term
    /// starts with. `known`: the lexicon's answers by run, where it has them (the look-up of
    /// the run alone is then not made again; an empty slice makes every look-up).
    fn find(
        &self,
        f: &str,
        runs: &[(usize, usize)],
        known: &[Option<lexicon::Known>],
        mut found: impl FnMut(usize, usize, usize),
        mut unknown: impl FnMut(usize, usize, usize),
    ) {
        for (k, &(start, _)) in runs.iter().enumerate() {
            for (d, &(_, end)) in runs.get(k..).unwrap_or_default().iter().take(self.max_runs.max(1)).enumerate() {
                let entry = match known.get(k).copied().flatten() {
                    Some(w) if d == 0 => w.term(),
                    _ => f.get(start..end).and_then(|key| self.get(key)),
                };
                let Some((id, more)) = entry else {
                    if d == 0 {
                        unknown(k, start, end);
                    }
                    break;
                };
                if let Some(id) = id {
                    found(start, end, id);
                }
                if !more {
                    break;
                }
            }
        }
    }
}

/// The runs of letters of `s` (start, end): its words, for keywords and context words.
pub(crate) fn letter_runs(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(s.len() / 5);
    letter_runs_into(s, &mut out);
    out
}

/// [`letter_runs`], into `out` (cleared first).
fn letter_runs_into(s: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
    if s.is_ascii() {
        // Letters are ASCII letters: skip to the next one, then to the end of its run, each
        // in a loop of its own (the general loop below decides at every byte).
        let b = s.as_bytes();
        let mut i = 0;
        while let Some(skip) = b.get(i..).and_then(|t| t.iter().position(u8::is_ascii_alphabetic)) {
            let start = i + skip;
            let len = b.get(start..).map_or(0, |t| t.iter().take_while(|c| c.is_ascii_alphabetic()).count());
            out.push((start, start + len));
            i = start + len.max(1);
        }
        return;
    }
    let mut start = None;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let (letter, len) = match b.get(i) {
            Some(&c) if c.is_ascii() => (c.is_ascii_alphabetic(), 1),
            _ => normalize::char_at(s, i).map_or((false, 1), |c| (c.is_alphabetic(), c.len_utf8())),
        };
        match (letter, start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                out.push((st, i));
                start = None;
            }
            _ => {}
        }
        i += len;
    }
    if let Some(st) = start {
        out.push((st, s.len()));
    }
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

/// Whether `w` is one of [`STOP_WORDS`], ASCII case ignored.
fn is_stop_word(w: &str) -> bool {
    // Every stop word is at most 5 bytes ("notre", "votre"): most words end the test here.
    // The others are packed with their length into a `u64`, ASCII lower-cased as
    // `eq_ignore_ascii_case` compares them, and searched among the stop words packed alike.
    w.len() <= 5 && stop_words().binary_search(&pack_short(w)).is_ok()
}

/// A word of at most 7 bytes as one number: its bytes, ASCII lower-cased, and its length.
fn pack_short(w: &str) -> u64 {
    let mut key = w.len() as u64;
    for (i, b) in w.bytes().take(7).enumerate() {
        key |= u64::from(b.to_ascii_lowercase()) << (8 * (i + 1));
    }
    key
}

/// [`STOP_WORDS`] packed by [`pack_short`], sorted.
fn stop_words() -> &'static [u64] {
    static PACKED: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    PACKED.get_or_init(|| {
        let mut v: Vec<u64> = STOP_WORDS.iter().map(|w| pack_short(w)).collect();
        v.sort_unstable();
        v
    })
}

/// Whether `line` (the text between a line break and a match) starts with its own label
/// ("Preferred date: …"): letters, then a colon.
fn has_label(line: &str) -> bool {
    line.find(':').is_some_and(|i| line.get(..i).is_some_and(|h| h.chars().any(char::is_alphabetic)))
}

/// Start of the context window: `words` words back from `start`, not counting short function
/// words (at most [`WINDOW_CAP`] bytes). It does not cross a line break into the previous line
/// when the match's line has a label of its own ("Preferred date: …" under "Date of birth:
/// …"), unless the previous line ends with a colon (a heading over a list).
fn window_start(text: &str, start: usize, words: usize) -> usize {
    let Some(head) = text.get(..start) else { return start };
    let (mut seen, mut pos) = (0, start);
    let mut word_end: Option<usize> = None;
    for (i, c) in head.char_indices().rev() {
        if start - i > WINDOW_CAP {
            return pos;
        }
        if c.is_alphanumeric() {
            word_end.get_or_insert(i + c.len_utf8());
            continue;
        }
        let after = i + c.len_utf8();
        if let Some(e) = word_end.take()
            && !head.get(after..e).is_some_and(is_stop_word)
        {
            seen += 1;
            if seen > words {
                return e;
            }
        }
        if c == '\n' && head.get(after..).is_some_and(has_label) {
            let prev = head.get(..i).unwrap_or_default().trim_end();
            if !prev.ends_with(':') {
                return after;
            }
        }
        pos = i;
    }
    if let Some(e) = word_end
        && !head.get(..e).is_some_and(is_stop_word)
    {
        seen += 1;
        if seen > words {
            return e;
        }
    }
    if word_end.is_some() { 0 } else { pos }
}

/// End of the context window: `words` words forward from `end`, not counting short function
/// words (at most [`WINDOW_CAP`] bytes), and never past the end of the match's line.
fn window_end(text: &str, end: usize, words: usize) -> usize {
    let Some(tail) = text.get(end..) else { return end };
    let (mut seen, mut pos) = (0, end);
    let mut word_start: Option<usize> = None;
    for (i, c) in tail.char_indices() {
        if i > WINDOW_CAP {
            return pos;
        }
        if c.is_alphanumeric() {
            word_start.get_or_insert(i);
            continue;
        }
        if let Some(ws) = word_start.take()
            && !tail.get(ws..i).is_some_and(is_stop_word)
        {
            seen += 1;
            if seen > words {
                return end + ws;
            }
        }
        if c == '\n' {
            return end + i;
        }
        pos = end + i + c.len_utf8();
    }
    if let Some(ws) = word_start
        && !tail.get(ws..).is_some_and(is_stop_word)
    {
        seen += 1;
        if seen > words {
            return end + ws;
        }
    }
    text.len()
}

/// For a detector that needs a context word: which digit windows can hold a match that ends
/// up with one. A window can when a context word is within reach of it (`has_context(lo, hi)`),
/// or when it is within a window's reach of one that can: a number there may share that
/// one's context ([`share_context`] chains along lists with gaps under [`WINDOW_CAP`]).
/// Matches in the other windows would all be dropped, so their patterns are not run.
fn context_reachable(windows: &[(usize, usize)], has_context: impl Fn(usize, usize) -> bool) -> Vec<bool> {
    let mut ok: Vec<bool> = windows.iter().map(|&(lo, hi)| has_context(lo, hi)).collect();
    let linked = |k: usize| {
        k > 0 && windows.get(k - 1).zip(windows.get(k)).is_some_and(|(a, b)| b.0.saturating_sub(a.1) <= REACH)
    };
    for k in 1..ok.len() {
        if linked(k)
            && ok.get(k - 1).copied().unwrap_or(false)
            && let Some(o) = ok.get_mut(k)
        {
            *o = true;
        }
    }
    for k in (1..ok.len()).rev() {
        if linked(k)
            && ok.get(k).copied().unwrap_or(false)
            && let Some(o) = ok.get_mut(k - 1)
        {
            *o = true;
        }
    }
    ok
}

/// The ranges of `hay` around its digits where a [`Prefilter::Digits`] pattern can match:
/// [`DIGIT_REACH`] bytes on either side of each digit, widened to whitespace (the start to a
/// word's start, the end to just before a space or line break, so no match is cut short),
/// merged when they touch. A range whose edge finds no whitespace within 64 more bytes runs
/// to the text's end (or start) instead.
fn digit_windows(hay: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    digit_windows_into(hay, &mut out);
    out
}

/// [`digit_windows`], into `out` (cleared first).
fn digit_windows_into(hay: &str, out: &mut Vec<(usize, usize)>) {
    out.clear();
    let b = hay.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            continue;
        }
        let mut j = i;
        while b.get(j).is_some_and(|c| c.is_ascii_digit() || matches!(c, b' ' | b'-' | b'.' | b'/' | b',' | b':')) {
            j += 1;
        }
        let mut lo = i.saturating_sub(DIGIT_REACH);
        let floor = lo.saturating_sub(64);
        while lo > floor && !b.get(lo - 1).is_some_and(u8::is_ascii_whitespace) {
            lo -= 1;
        }
        if lo == floor && lo > 0 && !b.get(lo - 1).is_some_and(u8::is_ascii_whitespace) {
            lo = 0;
        }
        let mut hi = (j + DIGIT_REACH).min(b.len());
        let ceil = (hi + 64).min(b.len());
        while hi < ceil && !b.get(hi).is_some_and(u8::is_ascii_whitespace) {
            hi += 1;
        }
        if hi == ceil && hi < b.len() && !b.get(hi).is_some_and(u8::is_ascii_whitespace) {
            hi = b.len();
        }
        while lo > 0 && !hay.is_char_boundary(lo) {
            lo -= 1;
        }
        while hi < b.len() && !hay.is_char_boundary(hi) {
            hi += 1;
        }
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
        i = j.max(i + 1);
    }
}

/// Words in `text` (alphanumeric runs), at most `cap` + 1 counted.
fn words_between(text: &str, cap: usize) -> usize {
    let mut n = 0;
    let mut in_word = false;
    for c in text.chars() {
        let w = c.is_alphanumeric();
        if w && !in_word {
            n += 1;
            if n > cap {
                break;
            }
        }
        in_word = w;
    }
    n
}

/// Shared context for lists of numbers: a regex candidate without a context word of its own
/// gets its detector's context when another candidate of the same detector that has it lies
/// at most [`LIST_GAP_WORDS`] words away ("my OHIP is 1234567897 and my wife's is
/// 2345678904"), chaining along the list, in both directions.
fn share_context(text: &str, hits: &[Hit], near: &mut [bool], specs: &[Spec]) {
    let mut by_spec: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, h) in hits.iter().enumerate() {
        if specs.get(h.spec).is_some_and(|s| s.pattern.is_some() && !s.context.is_empty()) {
            by_spec.entry(h.spec).or_default().push(i);
        }
    }
    for (spec, mut idx) in by_spec {
        let across_labels = specs.get(spec).is_some_and(|s| s.share_across_labels);
        let close = |a_end: usize, b_start: usize| {
            a_end <= b_start
                && b_start - a_end <= WINDOW_CAP
                && text.get(a_end..b_start).is_some_and(|g| {
                    words_between(g, LIST_GAP_WORDS) <= LIST_GAP_WORDS
                        && (across_labels || !g.split('\n').skip(1).any(has_label))
                })
        };
        idx.sort_by_key(|&i| hits.get(i).map_or(0, |h| h.start));
        let mut anchor: Option<usize> = None;
        for &i in &idx {
            let Some(h) = hits.get(i) else { continue };
            if near.get(i).copied().unwrap_or(false) {
                anchor = Some(h.end);
            } else if anchor.is_some_and(|a| close(a, h.start)) {
                if let Some(n) = near.get_mut(i) {
                    *n = true;
                }
                anchor = Some(h.end);
            }
        }
        let mut anchor: Option<usize> = None;
        for &i in idx.iter().rev() {
            let Some(h) = hits.get(i) else { continue };
            if near.get(i).copied().unwrap_or(false) {
                anchor = Some(h.start);
            } else if anchor.is_some_and(|a| close(h.end, a)) {
                if let Some(n) = near.get_mut(i) {
                    *n = true;
                }
                anchor = Some(h.start);
            }
        }
    }
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
    // that can overlap `h`. They are kept sorted by start in a vector (a map keyed by start
    // did the same with an allocation per span): an accepted span replaces one with its
    // start, as a map's insert would.
    let mut taken: Vec<(usize, usize)> = Vec::with_capacity(hits.len());
    let mut out = Vec::with_capacity(hits.len());
    for h in hits {
        let before = taken.partition_point(|&(s, _)| s < h.end);
        let overlaps = before.checked_sub(1).and_then(|i| taken.get(i)).is_some_and(|&(_, e)| e > h.start);
        if !overlaps {
            let at = taken.partition_point(|&(s, _)| s < h.start);
            match taken.get_mut(at) {
                Some(slot) if slot.0 == h.start => slot.1 = h.end,
                _ => taken.insert(at, (h.start, h.end)),
            }
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
        // "is" and "my" are function words: they do not count.
        assert_eq!(&t[window_start(t, s, 2)..s], " card number is ");
        assert_eq!(&t[window_start(t, s, 6)..s], "my health card number is ");
        let e = s + "1234 567 897".len();
        assert_eq!(&t[e..window_end(t, e, 2)], " thanks a lot ");
        // A line with its own label does not take context from the line above; a list under
        // a heading does.
        let t = "Date of birth: 1980-01-01\nPreferred date: 2025-03-04";
        let s = t.find("2025").unwrap_or(0);
        assert_eq!(&t[window_start(t, s, 6)..s], "Preferred date: ");
        let t = "Health cards:\n- me: 1234567897";
        let s = t.find("1234").unwrap_or(0);
        assert_eq!(window_start(t, s, 6), 0);
        let t = "1234567897\nDate of birth";
        assert_eq!(window_end(t, 10, 3), 10);
        assert_eq!(window_start(t, 0, 3), 0);
        assert_eq!(window_end(t, t.len(), 3), t.len());
    }

    /// Running patterns only around digits (and only when the text has an `@`, a `P`) finds
    /// exactly what running them over the whole text finds.
    #[test]
    fn prefilters_change_no_finding() {
        let fast = Engine::build(builtin_specs(), Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut specs = builtin_specs();
        for s in &mut specs {
            s.prefilter = Prefilter::Whole;
        }
        let slow = Engine::build(specs, Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        let corpus = include_str!("../../../tests/policy_corpus/corpus.txt");
        let mut texts: Vec<String> = corpus.split("\n=== ").map(str::to_string).collect();
        texts.push(corpus.to_string());
        texts.extend(
            [
                "born September 7, 1984 and saturation: 91% then 72 battements par minute",
                &("x".repeat(300) + " 1234567897 " + &"y".repeat(300)),
                "TREM\u{00A0}8553 1512, é1234 567 897é, 4165550199abc, ann@example.com",
                "OHIP 1234 567\n897 and 416-555-\n0199 ~ ４１６ ５５５ ０１９９",
            ]
            .map(|t| t.to_string()),
        );
        // Characters the plain view drops (here zero-width spaces pasted from a web form)
        // before a number whose context word follows it: the digit windows are in the plain
        // view, the context words in the original, so the window must be mapped before asking.
        let pasted = format!("Hello{} September 7, 1984 is my date of birth", "\u{200B}".repeat(200));
        assert!(fast.detect(&pasted).iter().any(|h| fast.kind(h) == "date_of_birth"), "{pasted:?}");
        texts.push(pasted);
        for t in &texts {
            assert_eq!(fast.detect(t), slow.detect(t), "{t:?}");
        }
    }

    /// Looking terms up by letter runs (plus the small automaton for the others) finds
    /// exactly the whole-word occurrences one automaton over every term finds.
    #[test]
    fn word_lookup_finds_what_one_automaton_finds() {
        let e = Engine::build(builtin_specs(), Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut all: BTreeMap<String, (BTreeSet<usize>, BTreeSet<usize>)> = BTreeMap::new();
        for (i, s) in builtin_specs().iter().enumerate() {
            for t in s.terms.iter().chain(&s.context) {
                let f = normalize::fold_term(t);
                if !f.is_empty() {
                    all.entry(f).or_default().0.insert(i);
                }
            }
        }
        let patterns: Vec<&String> = all.keys().collect();
        let ac =
            AhoCorasick::builder().match_kind(MatchKind::Standard).build(&patterns).unwrap_or_else(|e| panic!("{e}"));
        let corpus = include_str!("../../../tests/policy_corpus/corpus.txt");
        let mut texts: Vec<String> = corpus.split("\n=== ").map(str::to_string).collect();
        texts.extend(
            [
                "x-ray then covid-19, file # 12 and o2 sats",
                "préavis d'hôpital; carte d'hôpital numéro",
                "bloodsugar blood  sugar sugar",
            ]
            .map(str::to_string),
        );
        for t in &texts {
            let folded = View::folded(t);
            let f = folded.text();
            let mut want: Vec<(usize, usize, usize)> = ac
                .find_overlapping_iter(f)
                .filter(|m| whole_word(f, m.start(), m.end()))
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect();
            let mut got = Vec::new();
            e.words.find(f, &letter_runs(f), &[], |a, b, id| got.push((a, b, id)), |_, _, _| {});
            let mut odd = Vec::new();
            e.odd.find(f, &letter_runs(f), |_| true, &mut odd);
            got.extend(odd);
            if let Some((odd, ids)) = &e.terms {
                for m in odd.find_overlapping_iter(f).filter(|m| whole_word(f, m.start(), m.end())) {
                    got.push((m.start(), m.end(), ids.get(m.pattern().as_usize()).copied().unwrap_or(usize::MAX)));
                }
            }
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "{t:?}");
        }
    }

    /// The default engine and the evaluation corpus's messages (texts without their labels).
    fn engine_and_corpus_messages() -> (Engine, Vec<String>) {
        let e = Engine::build(builtin_specs(), Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        let corpus = include_str!("../../../tests/policy_corpus/corpus.txt");
        let chat = corpus
            .split("\n=== ")
            .skip(1)
            .map(|b| b.lines().skip(1).filter(|l| !l.starts_with("@ ")).collect::<Vec<_>>().join("\n"))
            .collect();
        (e, chat)
    }

    /// Every finding of the engine over the corpus, chat-sized and email-sized (as the bench
    /// joins them), one line each: run before and after a speed change and diff the output
    /// (`cargo test -p carebridge --lib dump_corpus_findings -- --ignored --nocapture`).
    #[test]
    #[ignore = "prints every finding over the corpus, for diffing before and after a change"]
    fn dump_corpus_findings() {
        let (e, chat) = engine_and_corpus_messages();
        let email: Vec<String> = chat.chunks(30).map(|c| c.join("\n\n")).collect();
        for (n, t) in chat.iter().chain(&email).enumerate() {
            for h in e.detect(t) {
                println!("{n} {} {}..{} {}", e.kind(&h), h.start, h.end, h.pct);
            }
        }
    }

    /// The corpus's messages rewritten the ways patients write them (upper case, accents,
    /// exotic spaces, dashes and digits, zero-width characters, numbers broken across lines,
    /// glued or far apart), each alone and joined: texts the corpus itself does not exercise
    /// as much, for diffing a speed change's findings like [`dump_corpus_findings`]
    /// (`cargo test -p carebridge --lib dump_variant_findings -- --ignored --nocapture`).
    #[test]
    #[ignore = "prints every finding over variants of the corpus, for diffing before and after a change"]
    fn dump_variant_findings() {
        let (e, chat) = engine_and_corpus_messages();
        let variants: [fn(&str) -> String; 8] = [
            |t| t.to_uppercase(),
            |t| t.replace(' ', "\u{00A0}").replace('-', "\u{2013}"),
            |t| t.replace('e', "é").replace('a', "à"),
            |t| t.replace('1', "\u{FF11}").replace('5', "\u{0665}").replace('\'', "\u{2019}"),
            |t| t.replace(' ', "  ").replace(", ", ",\n> "),
            |t| t.replace('4', "4\u{200B}").replace("o", "o\u{00AD}"),
            |t| t.replace(' ', "\n"),
            |t| format!("{}{t}{}", "word ".repeat(70), " filler".repeat(50)),
        ];
        let mut texts: Vec<String> = Vec::new();
        for v in variants {
            let one: Vec<String> = chat.iter().map(|t| v(t)).collect();
            texts.extend(one.chunks(7).map(|c| c.join(" ")));
            texts.extend(one);
        }
        texts.extend(chat.chunks(2).map(|c| c.concat()));
        for (n, t) in texts.iter().enumerate() {
            for h in e.detect(t) {
                println!("{n} {} {}..{} {}", e.kind(&h), h.start, h.end, h.pct);
            }
        }
    }

    /// The lexicon's answers are the look-ups' answers, for every word it holds.
    #[test]
    fn lexicon_answers_like_the_lookups() {
        let e = Engine::build(builtin_specs(), Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(e.lexicon.len() > 10_000);
        let corpus = include_str!("../../../tests/policy_corpus/corpus.txt");
        let folded = View::folded(corpus);
        let f = folded.text();
        let words = letter_runs(f).into_iter().filter_map(|(a, b)| f.get(a..b)).chain(e.fuzzy.words());
        let (mut fuzzy, mut misspelt) = (Vec::new(), Vec::new());
        for w in words {
            let Some(known) = e.lexicon.get(w) else { continue };
            assert_eq!(known.term(), e.words.get(w), "{w}");
            e.fuzzy.matches(w, &mut fuzzy);
            assert_eq!(e.lexicon.fuzzy(&known), fuzzy, "{w}");
            misspelt.clear();
            if known.term().is_none() {
                e.vocabulary.find(w, |id| misspelt.push(id));
            }
            assert_eq!(e.lexicon.misspelt(&known), misspelt, "{w}");
            assert_eq!(known.starts_odd(), e.odd.first_runs().any(|r| r == w), "{w}");
        }
    }

    #[test]
    #[ignore = "prints the keyword automaton's size"]
    fn automaton_size() {
        let e = Engine::build(builtin_specs(), Params::default(), &[]).unwrap_or_else(|e| panic!("{e}"));
        println!("automaton: {:?} bytes", e.terms.as_ref().map(|(ac, _)| ac.memory_usage()));
        println!("terms looked up by word: {}", e.words.map.len());
    }

    /// A pattern said to match every digit does, whatever is around it (so leaving it out of
    /// the window set changes nothing: the set would always have said it can match).
    #[test]
    fn patterns_said_to_match_every_digit_do() {
        for s in builtin_specs().iter().filter(|s| s.matches_every_digit) {
            let re = compile_regex(s.pattern.as_deref().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.prefilter, Prefilter::Digits, "{}", s.kind);
            for d in '0'..='9' {
                for t in [format!("{d}"), format!("a{d}b"), format!("é{d}é"), format!("1234{d}"), format!("-{d}.")] {
                    let m = re.find(&t).unwrap_or_else(|| panic!("{} on {t:?}", s.kind));
                    assert!(m.as_str().contains(d) || m.as_str().bytes().any(|b| b.is_ascii_digit()), "{t:?}");
                }
            }
            assert!(!s.pattern.as_deref().unwrap_or_default().contains(['^', '$', '\\']), "{}: no assertion", s.kind);
        }
        assert!(builtin_specs().iter().any(|s| s.matches_every_digit));
    }

    /// The ASCII path of `letter_runs` gives what the general one gives.
    #[test]
    fn letter_runs_of_ascii_texts_as_in_general() {
        for t in ["", "a", "1", "ab cd", " ab1cd-ef ", "x-ray then covid-19, file # 12", "ZZ top9"] {
            let fast = letter_runs(t);
            // The same text with a non-ASCII space at the end takes the general path.
            let slow: Vec<(usize, usize)> = letter_runs(&format!("{t}\u{00A0}"));
            assert_eq!(fast, slow, "{t:?}");
        }
    }

    #[test]
    fn stop_words_ignore_ascii_case_only() {
        for w in STOP_WORDS {
            assert!(is_stop_word(w) && is_stop_word(&w.to_ascii_uppercase()), "{w}");
        }
        for w in ["À", "thee", "", "notres", "the\u{0}", "mon ", "éé"] {
            assert!(!is_stop_word(w), "{w}");
        }
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
