//! The preset dictionary the store compresses its JSON values against before sealing them
//! ([`super::keys`]).
//!
//! Why a dictionary: a stored value is small (a record is under a kilobyte, an event or a
//! native reference about a hundred bytes) and most of what it repeats are field names and
//! enum values, each once per value, which DEFLATE alone cannot find (it only refers back within
//! the value). Against this text each becomes a short back-reference: a record of the pipeline
//! bench shrinks to about 0.6 of what DEFLATE alone leaves (the text itself is most of the
//! rest), a conversation to about 0.55. Events and native references are in it too, though
//! they are too short to be worth compressing today ([`super::keys`]'s `COMPRESS_FROM`): a
//! cheaper compressor could take them without a new dictionary.
//!
//! **This text is part of the disk format.** Every value sealed with
//! [`MAGIC_DICTIONARY`](super::keys::MAGIC_DICTIONARY) needs exactly these bytes to open: never
//! edit it. A better dictionary is a new constant with a magic of its own, the old one kept to
//! read what it compressed (`dictionary_is_never_changed` pins it).
//!
//! What is in it: the JSON of every persisted type of schema v2 ([`super::schema`]) as
//! `serde_json` writes it, with empty values, and the values that recur (classes, actions,
//! outcomes, finding kinds, address kinds). Nothing in it is PHI. DEFLATE codes nearer
//! references in fewer bits, so the most frequent values come last: a record, its
//! conversation, its native reference and its events.

/// The dictionary (2.8 KB; DEFLATE looks back at most 32 KiB).
pub const DICTIONARY: &[u8] = concat!(
    // Rare: audit entries, links, link codes, quarantined input, tombstones, review items.
    r#"{"v":1,"id":0,"at_ms":0,"actor":"officer","via":"cli","action":"read","patient_id":null,"records":[],"detail":null}"#,
    r#"{"v":1,"patient_id":"","account":"","linked_at_ms":0}{"v":1,"purged":[],"rule":"exchanges","cutoff_ms":0,"by":""}"#,
    r#"{"v":1,"id":0,"at_ms":0,"source":{"account":"","native_id":""},"reason":"","raw":[]}"#,
    r#","rules":[],"reject_notice":null}"verdict":"approve","by":"""#,
    r#"{"v":1,"at_ms":0,"event":"reviewed","delivery":0,"verdict":"reject","by":""}"#,
    r#"{"v":1,"at_ms":0,"event":"consent_withdrawn","delivery":0}"#,
    r#"{"v":1,"at_ms":0,"event":"requeued","delivery":0,"by":""}{"v":1,"at_ms":0,"event":"dropped","delivery":0,"by":""}"#,
    r#"{"v":1,"at_ms":0,"event":"assigned","patient":"","by":""}"#,
    r#"{"v":1,"at_ms":0,"event":"notice","delivery":0,"account":"","to":{"kind":"email","value":""},"text":""}"#,
    // Deliveries: outbox rows, dead letters, review items.
    r#"{"v":1,"at_ms":0,"item":{"v":1,"delivery":{"id":0,"record_id":0,"account":"","kind":"reply","to":null,"conversation":"","patient_id":null,"sender_label":null,"subject":null,"body":"","attachments":[],"in_reply_to":[]},"attempts":0,"not_before_ms":0,"patient_id":null,"requires_consent":false},"reason":""}"#,
    r#""kind":"notice","kind":"forward","files_notice":"rerouted_from":"filed_as":"#,
    r#"{"v":1,"at_ms":0,"event":"dead_lettered","delivery":0,"reason":""}"#,
    // Values that recur.
    r#""kind":"opaque""kind":"telegram""kind":"email""action":"block""action":"hold""action":"redact""action":"reroute""#,
    r#""class":"identifier""class":"sensitive""class":"contact""class":"none""#,
    r#""health_number_qc","health_number_bc","health_number_on","sin","mrn","date_of_birth","postal_code_ca","email","phone","#,
    r#""sensitive_topic","diagnosis","symptom","measurement","prescription_request","medication"]"#,
    r#""notes":["unverified_sender","link_redeemed","link_code_invalid"]"#,
    r#""consents":[{"account":"","purpose":"clinical","source":"telegram-link","granted_at":0}]"#,
    r#""attachments":[{"filename":"","content_type":"application/pdf","len":0,"sha256":"","blob":{"record":0,"index":0}}]"#,
    r#""sender":{"role":"staff","id":""}"sender":{"role":"unknown"}"display_name":"","subject":"","edit_of":"#,
    // Most frequent last: a record's events, native reference, conversation and the record.
    r#"{"v":1,"at_ms":0,"event":"attempt","delivery":0,"attempt":1,"outcome":"retry","reason":null}"#,
    r#"{"v":1,"at_ms":0,"event":"attempt","delivery":0,"attempt":1,"outcome":"sent","reason":null}"#,
    r#"{"v":1,"conversation":"","record":0}"#,
    r#"{"v":1,"token":"","patient_id":null,"origin_account":"","origin_address":{"kind":"phone","value":"+1"},"class":"none","last_patient_message":null,"created_at_ms":0}"#,
    r#"{"v":1,"id":0,"recorded_at_ms":0,"sent_at_ms":0,"source":{"account":"","native_id":""},"from":{"kind":"phone","value":"+1"},"sender":{"role":"patient","id":""},"display_name":null,"subject":null,"body":"","attachments":[],"native_message_id":"","conversation":"","patient_id":"","edit_of":null,"class":"clinical","finding_kinds":["medication"],"consents":[],"decisions":[{"account":"","action":"allow","rules":[],"class":"clinical","delivery":0,"rerouted_to":""}],"notes":[]}"#,
)
.as_bytes();

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn dictionary_is_never_changed() {
        // Values compressed against it cannot open without these exact bytes (module docs).
        let digest = hex::encode(sha2::Sha256::digest(DICTIONARY));
        assert_eq!(
            digest, "018cdd1d38010b86fae39fa3547f4ffde1670a8716d4d793b4c763da88924e81",
            "the dictionary changed: make a new one under a new magic instead"
        );
    }
}
