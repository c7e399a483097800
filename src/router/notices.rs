//! The router's own notices: the answers to a link request (`/start CODE`) and the "this chat is
//! not linked" reply to an unknown chat. PHI-free like the policy's notices, and in the same
//! language: `policy.locale`, or the account's `[policy.channels]` locale, unless the
//! administrator set the text (`router.linked_notice`, `router.unlinked_notice`).

use crate::config::ValidConfig;
use crate::policy::Locale;
use carebridge_contract::AccountId;

/// Which link notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkNotice {
    /// The chat is now linked to the patient's file.
    Linked,
    /// The chat is not linked (no code, or a code that is invalid or expired).
    Unlinked,
}

/// The text of a link notice on `account`.
pub fn link_notice(config: &ValidConfig, account: &AccountId, which: LinkNotice) -> String {
    let configured = match which {
        LinkNotice::Linked => config.router.linked_notice.as_deref(),
        LinkNotice::Unlinked => config.router.unlinked_notice.as_deref(),
    };
    if let Some(text) = configured {
        return text.to_string();
    }
    localised(config, account, |fr| default_text(which, fr))
}

/// The PHI-free notice an insecure staff channel gets instead of a message from an unverified
/// sender (whose words, and address, stay in the record until someone triages it).
pub fn unverified_notice(config: &ValidConfig, account: &AccountId) -> String {
    localised(config, account, |fr| {
        if fr {
            "Nouveau message d'un expéditeur non vérifié : il n'a pas été publié ici. Il attend d'être \
             rattaché à un dossier (carebridge records unassigned)."
        } else {
            "New message from an unverified sender: it was not posted here. It waits to be attached to a \
             patient's file (carebridge records unassigned)."
        }
    })
}

/// `text(french)` in the locale of `account`: `[policy.channels]`, else `policy.locale` (as the
/// compiled policy resolved it).
fn localised(config: &ValidConfig, account: &AccountId, text: impl Fn(bool) -> &'static str) -> String {
    match config.policy().settings(account).locale {
        Locale::En => text(false).to_string(),
        Locale::Fr => text(true).to_string(),
        Locale::Bilingual => format!("{}\n\n{}", text(false), text(true)),
    }
}

fn default_text(which: LinkNotice, fr: bool) -> &'static str {
    match (which, fr) {
        (LinkNotice::Linked, false) => "Your chat is now linked to the clinic.",
        (LinkNotice::Linked, true) => "Votre conversation est maintenant liée à la clinique.",
        (LinkNotice::Unlinked, false) => {
            "Hello. This chat is not yet linked to your clinic file, so we cannot discuss your care here. \
             Please ask the clinic for a link code and send it as /start CODE."
        }
        (LinkNotice::Unlinked, true) => {
            "Bonjour. Cette conversation n'est pas encore liée à votre dossier, nous ne pouvons donc pas \
             parler de vos soins ici. Demandez un code à la clinique et envoyez /start CODE."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ValidConfig {
        let toml = format!("[telegram.front]\ntoken_env = \"T\"\nstaff_chat_id = -1\n{extra}");
        ValidConfig::new(crate::config::Config::from_toml(&toml, std::path::Path::new(".")).unwrap()).unwrap()
    }

    #[test]
    fn link_notices_follow_the_policy_locale_unless_the_text_is_set() {
        let account: AccountId = "telegram.front".parse().unwrap();
        let en = link_notice(&config(""), &account, LinkNotice::Linked);
        assert_eq!(en, "Your chat is now linked to the clinic.");
        let fr = link_notice(&config("[policy]\nlocale = \"fr\"\n"), &account, LinkNotice::Unlinked);
        assert!(fr.starts_with("Bonjour.") && !fr.contains("Hello"), "{fr}");
        let per_channel = config("[policy]\nlocale = \"fr\"\n[policy.channels.\"telegram.front\"]\nlocale = \"en\"\n");
        assert!(link_notice(&per_channel, &account, LinkNotice::Unlinked).starts_with("Hello."));
        let both = link_notice(&config("[policy]\nlocale = \"bilingual\"\n"), &account, LinkNotice::Linked);
        assert!(both.contains("linked") && both.contains("liée"), "{both}");
        let set = config("[router]\nlinked_notice = \"Linked.\"\n[policy]\nlocale = \"fr\"\n");
        assert_eq!(link_notice(&set, &account, LinkNotice::Linked), "Linked.");
    }
}
