//! The PHI-free notices a decision may carry, in English and French.
//!
//! A notice goes where the message could not: to a patient on an insecure channel, to a staff
//! chat, or back to a clinician. Lock screens show it, platforms store it. So a notice is built
//! only from a fixed template and two clinic-level values, `{clinic}` (its name) and
//! `{contact}` (how to reach it securely). There is no way to put message text, a patient's
//! name or a finding into one: templates with any other variable fail validation.

use super::config::{Locale, NoticeTexts, NoticesConfig};

/// Which notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoticeKind {
    /// To a patient: a reply went to the secure account.
    SecureMessage,
    /// To a patient: a reply cannot come on this channel and there is no secure account.
    ContactClinic,
    /// To a patient: please do not send health information here (inbound advisory, or their
    /// message could not be passed on).
    UseSecureChannel,
    /// To a staff channel: a forward went to the secure account instead.
    StaffSecureMessage,
    /// To a clinician: the reply was not sent to the patient.
    ReplyNotSent,
}

impl NoticeKind {
    /// The key of its template override in `[policy.notices.<lang>]`.
    pub fn key(self) -> &'static str {
        match self {
            NoticeKind::SecureMessage => "secure_message",
            NoticeKind::ContactClinic => "contact_clinic",
            NoticeKind::UseSecureChannel => "use_secure_channel",
            NoticeKind::StaffSecureMessage => "staff_secure_message",
            NoticeKind::ReplyNotSent => "reply_not_sent",
        }
    }

    /// Every notice, for docs and tests.
    pub const ALL: [NoticeKind; 5] = [
        NoticeKind::SecureMessage,
        NoticeKind::ContactClinic,
        NoticeKind::UseSecureChannel,
        NoticeKind::StaffSecureMessage,
        NoticeKind::ReplyNotSent,
    ];
}

fn default_en(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::SecureMessage => {
            "You have a new secure message from {clinic}. For your privacy, it was not sent on this channel. {contact}"
        }
        NoticeKind::ContactClinic => {
            "There is a message for you from {clinic} that cannot be sent on this channel, for your privacy. {contact}"
        }
        NoticeKind::UseSecureChannel => {
            "Thank you, your message to {clinic} was received. For your privacy, please do not send health \
             information (prescriptions, test results, health card numbers) on this channel. {contact}"
        }
        NoticeKind::StaffSecureMessage => {
            "New patient message with health information: it was not posted here. Please read it in the secure inbox."
        }
        NoticeKind::ReplyNotSent => {
            "Your reply was not sent to the patient: it contains health information this channel may not carry. \
             Please use a secure channel or call the patient."
        }
    }
}

fn default_fr(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::SecureMessage => {
            "Vous avez un nouveau message sécurisé de {clinic}. Pour protéger votre vie privée, il n'a pas été \
             envoyé sur ce canal. {contact}"
        }
        NoticeKind::ContactClinic => {
            "Un message de {clinic} vous attend, mais il ne peut pas être envoyé sur ce canal, pour protéger votre \
             vie privée. {contact}"
        }
        NoticeKind::UseSecureChannel => {
            "Merci, votre message à {clinic} a bien été reçu. Pour protéger votre vie privée, veuillez ne pas \
             envoyer de renseignements de santé (ordonnances, résultats, numéro de carte santé) sur ce canal. \
             {contact}"
        }
        NoticeKind::StaffSecureMessage => {
            "Nouveau message de patient contenant des renseignements de santé : il n'a pas été publié ici. \
             Veuillez le lire dans la boîte de réception sécurisée."
        }
        NoticeKind::ReplyNotSent => {
            "Votre réponse n'a pas été envoyée au patient : elle contient des renseignements de santé que ce canal \
             ne peut pas transmettre. Veuillez utiliser un canal sécurisé ou appeler le patient."
        }
    }
}

const DEFAULT_CLINIC_EN: &str = "the clinic";
const DEFAULT_CLINIC_FR: &str = "la clinique";
const DEFAULT_CONTACT_EN: &str = "To reach us securely, please call the clinic or use its patient portal.";
const DEFAULT_CONTACT_FR: &str =
    "Pour nous joindre de façon sécurisée, veuillez appeler la clinique ou utiliser son portail patient.";

/// The notices of one policy, ready to render.
#[derive(Clone, Debug)]
pub(crate) struct Notices {
    en: NoticeTexts,
    fr: NoticeTexts,
}

impl Notices {
    pub(crate) fn new(config: &NoticesConfig) -> Notices {
        Notices { en: config.en.clone(), fr: config.fr.clone() }
    }

    /// The notice in `locale` (bilingual: English, a blank line, French).
    pub(crate) fn render(&self, kind: NoticeKind, locale: Locale) -> String {
        match locale {
            Locale::En => self.one(kind, false),
            Locale::Fr => self.one(kind, true),
            Locale::Bilingual => format!("{}\n\n{}", self.one(kind, false), self.one(kind, true)),
        }
    }

    fn one(&self, kind: NoticeKind, fr: bool) -> String {
        let (texts, default, clinic, contact) = if fr {
            (&self.fr, default_fr(kind), DEFAULT_CLINIC_FR, DEFAULT_CONTACT_FR)
        } else {
            (&self.en, default_en(kind), DEFAULT_CLINIC_EN, DEFAULT_CONTACT_EN)
        };
        let template =
            texts.templates().into_iter().find(|(k, _)| *k == kind.key()).and_then(|(_, t)| t).unwrap_or(default);
        let clinic = texts.clinic.as_deref().unwrap_or(clinic);
        let contact = texts.contact.as_deref().unwrap_or(contact);
        // One pass, so a value containing `{contact}` is not expanded again.
        let mut out = String::with_capacity(template.len() + clinic.len() + contact.len());
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let after = &rest[i..];
            if let Some(r) = after.strip_prefix("{clinic}") {
                out.push_str(clinic);
                rest = r;
            } else if let Some(r) = after.strip_prefix("{contact}") {
                out.push_str(contact);
                rest = r;
            } else {
                out.push('{');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
        out.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_in_both_languages_without_variables() {
        let n = Notices::new(&NoticesConfig::default());
        for k in NoticeKind::ALL {
            for l in [Locale::En, Locale::Fr, Locale::Bilingual] {
                let t = n.render(k, l);
                assert!(!t.is_empty() && !t.contains('{') && !t.contains('}'), "{k:?} {l:?}: {t}");
            }
        }
        assert!(n.render(NoticeKind::SecureMessage, Locale::Fr).starts_with("Vous avez"));
        let both = n.render(NoticeKind::ContactClinic, Locale::Bilingual);
        assert!(both.contains("the clinic") && both.contains("la clinique"));
    }

    #[test]
    fn configured_values_and_templates_are_used() {
        let mut c = NoticesConfig::default();
        c.en.clinic = Some("Maple Family Health".into());
        c.en.contact = Some("Call 416-555-0100 {clinic}".into());
        c.en.secure_message = Some("New message from {clinic}. {contact}".into());
        let n = Notices::new(&c);
        assert_eq!(
            n.render(NoticeKind::SecureMessage, Locale::En),
            "New message from Maple Family Health. Call 416-555-0100 {clinic}"
        );
    }
}
