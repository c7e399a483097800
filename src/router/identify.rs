//! Who is writing: the directory from config, plus chats linked to patients by code.
//!
//! Reads only; the directory is built once from the validated config.

use crate::config::{DirectoryConfig, parse_address};
use crate::record::schema::SenderV1;
use carebridge_contract::{Address, AddressKind};
use std::collections::HashMap;

/// The directory, indexed by `kind:value` address key.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_address: HashMap<String, SenderV1>,
    addresses: HashMap<String, Vec<Address>>,
}

impl Directory {
    /// Builds the index. Invalid entries were rejected by validation; any left are skipped.
    pub fn new(cfg: &DirectoryConfig) -> Directory {
        let mut d = Directory::default();
        for (list, staff) in [(&cfg.patient, false), (&cfg.staff, true)] {
            for person in list {
                for a in &person.addresses {
                    if let Ok(addr) = parse_address(a) {
                        let role = if staff {
                            SenderV1::Staff { id: person.id.clone() }
                        } else {
                            SenderV1::Patient { id: person.id.clone() }
                        };
                        d.by_address.insert(addr.key().into_inner(), role);
                        d.addresses.entry(person.id.clone()).or_default().push(addr);
                    }
                }
            }
        }
        d
    }

    /// Who has this address, if the directory knows.
    pub fn lookup(&self, address: &Address) -> Option<&SenderV1> {
        self.by_address.get(address.key().expose())
    }

    /// A person's addresses of one kind (for rerouting to a secure channel).
    pub fn addresses_of(&self, id: &str, kind: AddressKind) -> Vec<Address> {
        self.addresses.get(id).map(|v| v.iter().filter(|a| a.kind == kind).cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PersonConfig;

    #[test]
    fn addresses_match_after_normalisation() {
        let cfg = DirectoryConfig {
            file: None,
            patient: vec![PersonConfig {
                id: "p-1".into(),
                addresses: vec!["email:Ann@Patients.Test".into(), "phone:+1 416 555 0199".into()],
                mrn: None,
                health_number: None,
            }],
            staff: vec![PersonConfig {
                id: "s-1".into(),
                addresses: vec!["telegram:7001".into()],
                mrn: None,
                health_number: None,
            }],
        };
        let d = Directory::new(&cfg);
        assert_eq!(
            d.lookup(&Address::new(AddressKind::Email, "ann@patients.test")),
            Some(&SenderV1::Patient { id: "p-1".into() })
        );
        assert_eq!(
            d.lookup(&Address::new(AddressKind::Phone, "+14165550199")),
            Some(&SenderV1::Patient { id: "p-1".into() })
        );
        assert_eq!(d.lookup(&Address::new(AddressKind::Telegram, "7001")), Some(&SenderV1::Staff { id: "s-1".into() }));
        assert_eq!(d.lookup(&Address::new(AddressKind::Telegram, "42")), None);
        assert_eq!(d.addresses_of("p-1", AddressKind::Email).len(), 1);
    }
}
