//! The compiled form of `[policy.channels]` and `[policy.ceilings]`: each account's trust,
//! ceilings, locale and safety net resolved once, when the policy is compiled, so a hop looks
//! its account up by id instead of re-deriving the settings from strings (the schema in
//! [`super::config`] holds exactly what the file says; this holds what it means).

use super::config::{CeilingConfig, Locale, PolicyConfig};
use super::{Audience, Class, Trust};
use carebridge_contract::{AccountId, ChannelKind};
use std::collections::BTreeMap;

/// A resolved ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ceiling {
    pub without_consent: Class,
    pub with_consent: Class,
    pub staff: Class,
}

impl Ceiling {
    /// The defaults per trust level (docs/policy.md, "Defaults").
    pub(crate) fn default_for(trust: Trust) -> Ceiling {
        match trust {
            Trust::Insecure => {
                Ceiling { without_consent: Class::Contact, with_consent: Class::Contact, staff: Class::Contact }
            }
            Trust::EmailPlain => {
                Ceiling { without_consent: Class::Contact, with_consent: Class::Clinical, staff: Class::Sensitive }
            }
            Trust::Secure => {
                Ceiling { without_consent: Class::Sensitive, with_consent: Class::Sensitive, staff: Class::Sensitive }
            }
        }
    }

    pub(crate) fn overlay(self, c: Option<&CeilingConfig>) -> Ceiling {
        let Some(c) = c else { return self };
        Ceiling {
            without_consent: c.without_consent.unwrap_or(self.without_consent),
            with_consent: c.with_consent.unwrap_or(self.with_consent),
            staff: c.staff.unwrap_or(self.staff),
        }
    }

    /// The ceiling for an audience.
    pub(crate) fn for_audience(&self, audience: Audience, consent: bool) -> Class {
        match (audience, consent) {
            (Audience::Staff, _) => self.staff,
            (Audience::Patient, true) => self.with_consent,
            (Audience::Patient, false) => self.without_consent,
        }
    }
}

/// One account's policy settings, with every default applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AccountSettings {
    /// How far the account is trusted.
    pub trust: Trust,
    /// Whether `[policy.channels]` sets that trust (rather than the channel kind's default).
    pub trust_configured: bool,
    /// Its ceilings (trust level's, with the account's overrides).
    pub ceiling: Ceiling,
    /// The language of its notices.
    pub locale: Locale,
    /// Whether `builtin.insecure.safety_net` applies to it.
    pub safety_net: bool,
}

/// Every account's settings, resolved once: the accounts `[policy.channels]` names, and per
/// channel kind the defaults for the rest.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    named: BTreeMap<AccountId, AccountSettings>,
    by_trust: [Ceiling; 3],
    locale: Locale,
}

impl Resolved {
    pub(crate) fn new(config: &PolicyConfig) -> Resolved {
        let by_trust = Trust::ALL.map(|t| config.ceiling_for(t));
        let locale = config.locale.unwrap_or_default();
        let mut named = BTreeMap::new();
        for (name, ch) in &config.channels {
            // A key that is no account id was refused by validation; unchecked, it names nothing.
            let Ok(id) = name.parse::<AccountId>() else { continue };
            let trust = ch.trust.unwrap_or_else(|| default_trust(id.kind()));
            named.insert(
                id,
                AccountSettings {
                    trust,
                    trust_configured: ch.trust.is_some(),
                    ceiling: config.ceiling_of_account(name, trust),
                    locale: ch.locale.unwrap_or(locale),
                    safety_net: ch.safety_net.unwrap_or(true),
                },
            );
        }
        Resolved { named, by_trust, locale }
    }

    /// The settings of `account`.
    pub(crate) fn of(&self, account: &AccountId) -> AccountSettings {
        if let Some(s) = self.named.get(account) {
            return *s;
        }
        let trust = default_trust(account.kind());
        AccountSettings {
            trust,
            trust_configured: false,
            ceiling: self.by_trust[trust as usize],
            locale: self.locale,
            safety_net: true,
        }
    }
}

impl PolicyConfig {
    /// The resolved ceiling of a trust level (config over defaults).
    pub(crate) fn ceiling_for(&self, trust: Trust) -> Ceiling {
        let c = match trust {
            Trust::Insecure => self.ceilings.insecure.as_ref(),
            Trust::EmailPlain => self.ceilings.email_plain.as_ref(),
            Trust::Secure => self.ceilings.secure.as_ref(),
        };
        Ceiling::default_for(trust).overlay(c)
    }

    /// The trust of an account id string (configured, or its kind's default).
    pub(crate) fn trust_of(&self, account: &str) -> Option<Trust> {
        if let Some(t) = self.channels.get(account).and_then(|c| c.trust) {
            return Some(t);
        }
        account.parse::<AccountId>().ok().map(|a| default_trust(a.kind()))
    }

    /// The resolved ceiling of an account: its trust level's, with the account's overrides.
    pub(crate) fn ceiling_of_account(&self, account: &str, trust: Trust) -> Ceiling {
        let base = self.ceiling_for(trust);
        let Some(ch) = self.channels.get(account) else { return base };
        Ceiling {
            without_consent: ch.without_consent.unwrap_or(base.without_consent),
            with_consent: ch.with_consent.unwrap_or(base.with_consent),
            staff: ch.staff.unwrap_or(base.staff),
        }
    }
}

/// The channel kind's default trust (Telegram and webhooks insecure, email plain, FHIR secure).
pub(crate) fn default_trust(kind: ChannelKind) -> Trust {
    match kind {
        ChannelKind::Telegram => Trust::Insecure,
        ChannelKind::Email => Trust::EmailPlain,
        ChannelKind::Webhook => Trust::Insecure,
        // The clinic's own EMR, over TLS with carebridge's credentials: a staff-side secure hop.
        ChannelKind::Fhir => Trust::Secure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> PolicyConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn named_accounts_get_their_overrides_and_the_rest_their_kinds_defaults() {
        let p = policy(
            r#"
locale = "fr"
[channels]
"webhook.ehr" = "secure"
"telegram.staff" = { staff = "sensitive", locale = "en", safety_net = false }
[ceilings.email_plain]
without_consent = "identifier"
"#,
        );
        let r = Resolved::new(&p);
        let id = |s: &str| s.parse::<AccountId>().unwrap();

        let ehr = r.of(&id("webhook.ehr"));
        assert_eq!((ehr.trust, ehr.trust_configured), (Trust::Secure, true));
        assert_eq!(ehr.ceiling, Ceiling::default_for(Trust::Secure));
        assert_eq!(ehr.locale, Locale::Fr);

        let staff = r.of(&id("telegram.staff"));
        assert_eq!((staff.trust, staff.trust_configured), (Trust::Insecure, false));
        assert_eq!(staff.ceiling.staff, Class::Sensitive);
        assert_eq!(staff.ceiling.without_consent, Class::Contact);
        assert_eq!((staff.locale, staff.safety_net), (Locale::En, false));

        // Not named: the kind's trust, that trust's ceilings as configured, the policy's locale.
        let inbox = r.of(&id("email.inbox"));
        assert_eq!((inbox.trust, inbox.trust_configured), (Trust::EmailPlain, false));
        assert_eq!(inbox.ceiling.without_consent, Class::Identifier);
        assert_eq!(inbox.ceiling.with_consent, Class::Clinical);
        assert_eq!((inbox.locale, inbox.safety_net), (Locale::Fr, true));
        assert_eq!(r.of(&id("webhook.form")).trust, Trust::Insecure);
    }
}
