//! Validation of the `[policy]` section: pure, and reports every problem with its TOML path
//! (`policy.detector[1].pattern`, `policy.channels."telegram.front_desk"`), regex errors
//! verbatim, and did-you-mean suggestions for accounts, kinds and rule ids. It runs once per
//! config ([`crate::config::ValidConfig`]); [`super::Policy::compile`] runs it for callers
//! that compile a policy on its own (tests, benches, the fuzz target).

use super::config::*;
use super::detectors::{self, normalize};
use super::{Direction, Trust};
use carebridge_contract::AccountId;
use carebridge_contract::config::Problem;
use std::collections::BTreeSet;

impl PolicyConfig {
    /// Pure validation; `accounts` are the configured account ids (for did-you-mean).
    pub fn validate(&self, accounts: &[AccountId]) -> Vec<Problem> {
        self.check(Some(accounts))
    }

    /// Validation with or without the account list (compile has none).
    pub(crate) fn check(&self, accounts: Option<&[AccountId]>) -> Vec<Problem> {
        let mut p = Vec::new();
        self.check_channels(accounts, &mut p);
        self.check_scalars(accounts, &mut p);
        self.check_detection(&mut p);
        let builtin = detectors::builtin_specs();
        self.check_builtin(&builtin, &mut p);
        let custom_kinds = self.check_detectors(&builtin, &mut p);
        let mut kinds: Vec<String> = builtin.iter().map(|s| s.kind.clone()).collect();
        kinds.extend(custom_kinds);
        self.check_rules(&kinds, accounts, &mut p);
        self.check_notices(&mut p);
        p
    }

    fn check_channels(&self, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        for t in Trust::ALL {
            let c = self.ceiling_for(t);
            if c.with_consent < c.without_consent {
                p.push(Problem::new(
                    format!("policy.ceilings.{}.with_consent", t.as_str()),
                    format!(
                        "`{}` is lower than without_consent (`{}`): consent can only raise a ceiling",
                        c.with_consent.as_str(),
                        c.without_consent.as_str()
                    ),
                ));
            }
        }
        for (name, ch) in &self.channels {
            let path = format!("policy.channels.{}", quote_key(name));
            check_account(name, &path, accounts, p);
            let Some(trust) = self.trust_of(name) else { continue };
            let c = self.ceiling_of_account(name, trust);
            if (ch.with_consent.is_some() || ch.without_consent.is_some()) && c.with_consent < c.without_consent {
                p.push(Problem::new(
                    format!("{path}.with_consent"),
                    format!(
                        "`{}` is lower than without_consent (`{}`): consent can only raise a ceiling",
                        c.with_consent.as_str(),
                        c.without_consent.as_str()
                    ),
                ));
            }
        }
    }

    fn check_scalars(&self, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        if let Some(s) = &self.secure_account {
            let path = "policy.secure_account";
            if check_account(s, path, accounts, p)
                && let Some(t) = self.trust_of(s)
                && t != Trust::Secure
            {
                p.push(Problem::new(
                    path,
                    format!(
                        "`{s}` is trusted as `{}`, not `secure`: reroutes must go to a secure account (set \
                         [policy.channels.{}] trust = \"secure\" if the clinic controls it end to end)",
                        t.as_str(),
                        quote_key(s)
                    ),
                ));
            }
        }
        if let Some(ph) = &self.placeholder {
            if let Err(e) = check_template(ph, &["kind"]) {
                p.push(Problem::new("policy.placeholder", e));
            } else if ph.chars().count() > 100 {
                p.push(Problem::new("policy.placeholder", "must be at most 100 characters"));
            }
        }
        if let Some(purposes) = &self.consent_purposes {
            for (i, s) in purposes.iter().enumerate() {
                if s.trim().is_empty() {
                    p.push(Problem::new(format!("policy.consent_purposes[{i}]"), "must not be empty"));
                }
            }
        }
        for (i, a) in self.allow.iter().enumerate() {
            if normalize::compact(a).is_empty() {
                p.push(Problem::new(format!("policy.allow[{i}]"), "must contain letters or digits"));
            }
        }
        let optional = disableable_rules();
        let all = builtin_rules();
        for (i, id) in self.disable.iter().enumerate() {
            if optional.contains(id) {
                continue;
            }
            let path = format!("policy.disable[{i}]");
            let msg = if id.starts_with("builtin.ceiling.") {
                format!("`{id}` cannot be disabled: raise the ceiling in [policy.ceilings] instead")
            } else if all.contains(id) {
                format!("`{id}` cannot be disabled")
            } else {
                format!("unknown built-in rule `{id}`{}", did_you_mean(id, optional.iter().map(String::as_str)))
            };
            p.push(Problem::new(path, msg));
        }
    }

    fn check_detection(&self, p: &mut Vec<Problem>) {
        let d = &self.detection;
        for (key, v) in
            [("threshold", d.threshold), ("context_boost", d.context_boost), ("context_floor", d.context_floor)]
        {
            check_unit(v, &format!("policy.detection.{key}"), p);
        }
        for (key, v) in
            [("context_words_before", d.context_words_before), ("context_words_after", d.context_words_after)]
        {
            if v.is_some_and(|n| n > 50) {
                p.push(Problem::new(format!("policy.detection.{key}"), "must be at most 50 words"));
            }
        }
        if let Some(n) = d.max_text_bytes
            && (n == 0 || n > MAX_TEXT_BYTES_LIMIT)
        {
            p.push(Problem::new(
                "policy.detection.max_text_bytes",
                format!("must be between 1 and {MAX_TEXT_BYTES_LIMIT} bytes"),
            ));
        }
    }

    fn check_builtin(&self, builtin: &[detectors::Spec], p: &mut Vec<Problem>) {
        for (kind, t) in &self.builtin {
            let path = format!("policy.builtin.{}", quote_key(kind));
            let Some(spec) = builtin.iter().find(|s| &s.kind == kind) else {
                p.push(Problem::new(
                    path,
                    format!(
                        "unknown built-in detector `{kind}`{}",
                        did_you_mean(kind, builtin.iter().map(|s| s.kind.as_str()))
                    ),
                ));
                continue;
            };
            if kind != "mrn" {
                if t.pattern.is_some() {
                    p.push(Problem::new(
                        format!("{path}.pattern"),
                        "only `mrn` takes a pattern; add a [[policy.detector]] for another format",
                    ));
                }
                if t.score.is_some() {
                    p.push(Problem::new(format!("{path}.score"), "only `mrn` takes a score"));
                }
            }
            if let Some(pat) = &t.pattern {
                check_pattern(pat, &format!("{path}.pattern"), p);
            }
            check_unit(t.score, &format!("{path}.score"), p);
            check_unit(t.threshold, &format!("{path}.threshold"), p);
            if !spec.has_terms() && (!t.terms.is_empty() || !t.remove_terms.is_empty()) {
                p.push(Problem::new(
                    format!("{path}.terms"),
                    format!("`{kind}` is not a keyword detector; add a [[policy.detector]] with terms instead"),
                ));
            }
            check_terms(&t.terms, &format!("{path}.terms"), p);
            check_terms(&t.context, &format!("{path}.context"), p);
            let shipped: BTreeSet<String> = spec.terms.iter().map(|s| normalize::fold_term(s)).collect();
            for (i, r) in t.remove_terms.iter().enumerate() {
                if spec.has_terms() && !shipped.contains(&normalize::fold_term(r)) {
                    p.push(Problem::new(
                        format!("{path}.remove_terms[{i}]"),
                        format!("`{r}` is not in the shipped `{kind}` list"),
                    ));
                }
            }
        }
    }

    /// Checks `[[policy.detector]]`; returns the custom kinds (for rule validation).
    fn check_detectors(&self, builtin: &[detectors::Spec], p: &mut Vec<Problem>) -> Vec<String> {
        let mut seen = BTreeSet::new();
        for (i, d) in self.detector.iter().enumerate() {
            let path = format!("policy.detector[{i}]");
            if !valid_kind(&d.kind) {
                p.push(Problem::new(
                    format!("{path}.kind"),
                    format!("`{}` must be 1-64 characters of a-z, 0-9 and `_`, starting with a letter", d.kind),
                ));
            } else if builtin.iter().any(|s| s.kind == d.kind) {
                p.push(Problem::new(
                    format!("{path}.kind"),
                    format!(
                        "`{}` is a built-in detector: tune it under [policy.builtin.{}] or pick another name",
                        d.kind, d.kind
                    ),
                ));
            } else if !seen.insert(d.kind.clone()) {
                p.push(Problem::new(format!("{path}.kind"), format!("`{}` is defined twice", d.kind)));
            }
            if d.pattern.is_none() && d.terms.is_empty() {
                p.push(Problem::new(path.clone(), "set `pattern` or `terms` (or both)"));
            }
            if let Some(pat) = &d.pattern {
                check_pattern(pat, &format!("{path}.pattern"), p);
            }
            if d.validator != Validator::None && d.pattern.is_none() {
                p.push(Problem::new(format!("{path}.validator"), "a validator needs a `pattern`"));
            }
            if d.context_required && d.context.is_empty() {
                p.push(Problem::new(format!("{path}.context"), "context_required = true needs context words"));
            }
            check_unit(d.score, &format!("{path}.score"), p);
            check_unit(d.threshold, &format!("{path}.threshold"), p);
            check_terms(&d.terms, &format!("{path}.terms"), p);
            check_terms(&d.context, &format!("{path}.context"), p);
        }
        seen.into_iter().collect()
    }

    fn check_rules(&self, kinds: &[String], accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) {
        let mut ids = BTreeSet::new();
        for (i, r) in self.rule.iter().enumerate() {
            let path = format!("policy.rule[{i}]");
            let id_ok = !r.id.is_empty()
                && r.id.len() <= 100
                && r.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !id_ok {
                p.push(Problem::new(
                    format!("{path}.id"),
                    format!("`{}` must be 1-100 characters of A-Z, a-z, 0-9, `.`, `_`, `-`", r.id),
                ));
            } else if r.id.starts_with("builtin.") {
                p.push(Problem::new(format!("{path}.id"), "ids starting with `builtin.` are reserved"));
            } else if !ids.insert(r.id.as_str()) {
                p.push(Problem::new(format!("{path}.id"), format!("`{}` is used by an earlier rule", r.id)));
            }
            if r.when.direction == Some(Direction::In) {
                p.push(Problem::new(
                    format!("{path}.when.direction"),
                    "inbound messages are always accepted and recorded; to limit where they go, write the rule \
                     for direction = \"out\" (audience = \"staff\" for forwards)",
                ));
            }
            for (j, k) in r.when.kinds.iter().enumerate() {
                if !kinds.contains(k) {
                    p.push(Problem::new(
                        format!("{path}.when.kinds[{j}]"),
                        format!("unknown detector kind `{k}`{}", did_you_mean(k, kinds.iter().map(String::as_str))),
                    ));
                }
            }
            for (j, a) in r.when.accounts.iter().enumerate() {
                check_account(a, &format!("{path}.when.accounts[{j}]"), accounts, p);
            }
            if let Some(to) = &r.to {
                if r.action != RuleAction::Reroute {
                    p.push(Problem::new(format!("{path}.to"), "`to` only goes with action = \"reroute\""));
                } else {
                    check_account(to, &format!("{path}.to"), accounts, p);
                }
            }
        }
    }

    fn check_notices(&self, p: &mut Vec<Problem>) {
        for (lang, texts) in [("en", &self.notices.en), ("fr", &self.notices.fr)] {
            for (key, t) in texts.templates() {
                let Some(t) = t else { continue };
                let path = format!("policy.notices.{lang}.{key}");
                if t.trim().is_empty() {
                    p.push(Problem::new(path, "must not be empty"));
                } else if let Err(e) = check_template(t, &["clinic", "contact"]) {
                    p.push(Problem::new(path, e));
                }
            }
            for (key, v) in [("clinic", &texts.clinic), ("contact", &texts.contact)] {
                if let Some(v) = v
                    && v.contains(['{', '}'])
                {
                    p.push(Problem::new(format!("policy.notices.{lang}.{key}"), "must not contain `{` or `}`"));
                }
            }
        }
    }
}

/// `a.b` needs quotes as a TOML key; `ab` does not.
fn quote_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Checks an account id's syntax and, when the list is known, its existence. Returns whether
/// it is usable.
fn check_account(name: &str, path: &str, accounts: Option<&[AccountId]>, p: &mut Vec<Problem>) -> bool {
    if let Err(e) = name.parse::<AccountId>() {
        p.push(Problem::new(path, e.to_string()));
        return false;
    }
    let Some(accounts) = accounts else { return true };
    if accounts.iter().any(|a| a.to_string() == name) {
        return true;
    }
    let names: Vec<String> = accounts.iter().map(ToString::to_string).collect();
    p.push(Problem::new(
        path,
        format!("unknown account `{name}`{}", did_you_mean(name, names.iter().map(String::as_str))),
    ));
    false
}

fn check_unit(v: Option<f64>, path: &str, p: &mut Vec<Problem>) {
    if let Some(x) = v
        && !(0.0..=1.0).contains(&x)
    {
        p.push(Problem::new(path, format!("{x} is not between 0 and 1")));
    }
}

fn check_terms(terms: &[String], path: &str, p: &mut Vec<Problem>) {
    for (i, t) in terms.iter().enumerate() {
        if normalize::fold_term(t).is_empty() {
            p.push(Problem::new(format!("{path}[{i}]"), "must not be empty"));
        }
    }
}

fn check_pattern(pattern: &str, path: &str, p: &mut Vec<Problem>) {
    match detectors::compile_regex(pattern) {
        Err(e) => p.push(Problem::new(path, format!("invalid regex: {e}"))),
        Ok(re) => {
            if re.is_match("") {
                p.push(Problem::new(
                    path,
                    "the pattern matches the empty string; it must match at least one character",
                ));
            }
        }
    }
}

fn valid_kind(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase())
        && k.len() <= 64
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

/// Checks that a template uses only `{var}` from `vars`, with balanced braces.
fn check_template(t: &str, vars: &[&str]) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unbalanced `}`".to_string());
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { return Err("unbalanced `{`".to_string()) };
        let var = &after[..close];
        if !vars.contains(&var) {
            let allowed: Vec<String> = vars.iter().map(|v| format!("{{{v}}}")).collect();
            return Err(format!("unknown variable `{{{var}}}` (allowed: {})", allowed.join(", ")));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// ", did you mean `x`?" for the closest option, or "".
pub(crate) fn did_you_mean<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> String {
    match crate::config::closest(word, options) {
        Some(o) => format!(", did you mean `{o}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("telegram.frontdesk", ["telegram.front_desk", "email.clinic"]),
            ", did you mean `telegram.front_desk`?"
        );
        assert_eq!(did_you_mean("medicaton", ["medication", "mrn"]), ", did you mean `medication`?");
        assert_eq!(did_you_mean("zzz", ["medication"]), "");
    }

    #[test]
    fn templates() {
        assert!(check_template("Call {clinic}: {contact}", &["clinic", "contact"]).is_ok());
        assert!(check_template("Hi {name}", &["clinic"]).is_err());
        assert!(check_template("oops {clinic", &["clinic"]).is_err());
        assert!(check_template("oops }", &["clinic"]).is_err());
        assert_eq!(quote_key("telegram.front_desk"), "\"telegram.front_desk\"");
        assert_eq!(quote_key("medication"), "medication");
    }
}
