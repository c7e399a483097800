//! The record store's keys and the two things they do: **seal** values (XChaCha20-Poly1305) and
//! **blind** index keys (HMAC-SHA-256), so that the files the engine writes hold no PHI.
//!
//! A key file is TOML, written by `carebridge keys generate` and extended by `keys rotate`:
//!
//! ```toml
//! version = 1
//! active = 2                 # the key new values are sealed with
//! index_key = "<64 hex>"     # blinds index keys (addresses, patient ids); never rotated
//! [[key]]
//! id = 1
//! created = "2026-11-25T10:00:00Z"
//! key = "<64 hex>"
//! [[key]]
//! id = 2
//! created = "2027-11-25T10:00:00Z"
//! key = "<64 hex>"
//! ```
//!
//! Rotation adds a key and makes it active; older keys stay to read what they sealed (every
//! sealed value names its key id), so a rotation never rewrites the store. The index key cannot
//! rotate without rewriting every index, so it is separate and kept.
//!
//! A sealed value is `MAGIC (2) | key id (u32 BE) | nonce (24) | ciphertext + tag (16)`. The
//! associated data is the tree name and the value's key in that tree, so a value moved to another
//! key or tree fails to open: swapping records is as detectable as editing them.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// First bytes of every sealed value. JSON (schema v1, unsealed) starts with `{` or `[`, so the
/// two can never be confused (the v1 → v2 migration relies on it).
pub const MAGIC: [u8; 2] = [0xC5, 0xB2];
const HEADER: usize = 2 + 4 + 24;

/// Why keys could not be loaded or a value could not be opened. Messages name files and key ids,
/// never key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The key file is not a valid key file.
    #[error("key file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (no key material).
        reason: String,
    },
    /// A value was sealed with a key id the key file does not have.
    #[error("a value is sealed with key id {0}, which the key file does not contain")]
    UnknownKey(u32),
    /// A value failed authentication: wrong key, altered bytes, or moved to another key.
    #[error("a sealed value failed authentication (altered, moved, or the wrong key file)")]
    Tampered,
    /// A value is too short or lacks the magic bytes.
    #[error("a value is not sealed")]
    NotSealed,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    active: u32,
    index_key: String,
    #[serde(rename = "key")]
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    created: String,
    key: String,
}

/// Public facts about one key, for `carebridge keys list` (never the key itself).
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// Its id, as named in sealed values.
    pub id: u32,
    /// When it was generated (RFC 3339).
    pub created: String,
    /// Whether new values are sealed with it.
    pub active: bool,
}

/// The loaded keys: every key id to its cipher, the active id, and the index key.
#[derive(Clone)]
pub struct Keyring {
    ciphers: BTreeMap<u32, XChaCha20Poly1305>,
    active: u32,
    index: hmac::Hmac<sha2::Sha256>,
    info: Vec<KeyInfo>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("active", &self.active).field("keys", &self.ciphers.len()).finish()
    }
}

fn hex32(path: &str, what: &str, s: &str) -> Result<[u8; 32], KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.into(), reason };
    let bytes = hex::decode(s.trim()).map_err(|_| invalid(format!("{what} is not hex")))?;
    bytes.try_into().map_err(|_| invalid(format!("{what} must be 32 bytes (64 hex digits)")))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

impl Keyring {
    /// Reads a key file. Refuses a file others can read (mode & 0o077), since the key unlocks
    /// every patient's file.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| KeyError::Io { path: p.clone(), source })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Invalid {
                    path: p,
                    reason: format!("its mode is {:o}; it must not be readable by others (chmod 600)", mode & 0o777),
                });
            }
        }
        // toml's message can quote a line of the file (a key): keep only that parsing failed.
        let file: KeyFile = toml::from_str(&text)
            .map_err(|_| KeyError::Invalid { path: p.clone(), reason: "not a carebridge key file (TOML)".into() })?;
        Keyring::from_file(&p, file)
    }

    fn from_file(p: &str, file: KeyFile) -> Result<Keyring, KeyError> {
        let invalid = |reason: &str| KeyError::Invalid { path: p.into(), reason: reason.into() };
        if file.version != 1 {
            return Err(invalid("unknown version (this carebridge reads version 1)"));
        }
        let index_key = hex32(p, "index_key", &file.index_key)?;
        let mut ciphers = BTreeMap::new();
        let mut info = Vec::new();
        for k in &file.keys {
            let key = hex32(p, &format!("key {}", k.id), &k.key)?;
            let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| invalid("bad key length"))?;
            if ciphers.insert(k.id, cipher).is_some() {
                return Err(invalid(&format!("key id {} appears twice", k.id)));
            }
            info.push(KeyInfo { id: k.id, created: k.created.clone(), active: k.id == file.active });
        }
        if !ciphers.contains_key(&file.active) {
            return Err(invalid(&format!("the active key id {} is not in the file", file.active)));
        }
        let index = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&index_key)
            .map_err(|_| invalid("bad index key length"))?;
        Ok(Keyring { ciphers, active: file.active, index, info })
    }

    /// Writes a new key file with one fresh key (mode 0600). Refuses to overwrite a file: losing
    /// a key loses every record sealed with it.
    pub fn generate(path: &Path) -> Result<Keyring, KeyError> {
        let p = path.display().to_string();
        let file = KeyFile {
            version: 1,
            active: 1,
            index_key: hex::encode(rand::random::<[u8; 32]>()),
            keys: vec![KeyEntry { id: 1, created: now_rfc3339(), key: hex::encode(rand::random::<[u8; 32]>()) }],
        };
        write_new(path, &file)?;
        Keyring::from_file(&p, file)
    }

    /// Adds a fresh key to an existing file and makes it active; returns its id. The file is
    /// replaced atomically (write to a temporary file, then rename).
    pub fn rotate(path: &Path) -> Result<u32, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        let mut file: KeyFile = toml::from_str(&text)
            .map_err(|_| KeyError::Invalid { path: p.clone(), reason: "not a carebridge key file (TOML)".into() })?;
        // Refuse to extend a file that is not valid as it stands.
        Keyring::from_file(&p, clone_file(&file))?;
        let id = file.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        file.keys.push(KeyEntry { id, created: now_rfc3339(), key: hex::encode(rand::random::<[u8; 32]>()) });
        file.active = id;
        let tmp = path.with_extension("rotating");
        let _ = std::fs::remove_file(&tmp);
        write_new(&tmp, &file)?;
        std::fs::rename(&tmp, path).map_err(|source| KeyError::Io { path: p, source })?;
        Ok(id)
    }

    /// The keys in the file (ids and dates only).
    pub fn info(&self) -> &[KeyInfo] {
        &self.info
    }

    /// The id new values are sealed with.
    pub fn active_id(&self) -> u32 {
        self.active
    }

    /// Seals `plain` for the value at `key` in `tree` with the active key.
    pub fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let mut out = Vec::with_capacity(HEADER + plain.len() + 16);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = aad(tree, key);
        // The active cipher exists (checked at load); encryption of a Vec cannot fail but for
        // lengths beyond 2^38 bytes, far above any message carebridge accepts.
        if let Some(c) = self.ciphers.get(&self.active)
            && let Ok(ct) = c.encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: &aad })
        {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a value sealed by [`seal`](Self::seal) for the same tree and key.
    pub fn open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !is_sealed(sealed) || sealed.len() < HEADER + 16 {
            return Err(KeyError::NotSealed);
        }
        let id = u32::from_be_bytes([sealed[2], sealed[3], sealed[4], sealed[5]]);
        let cipher = self.ciphers.get(&id).ok_or(KeyError::UnknownKey(id))?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&sealed[6..HEADER]);
        cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: &sealed[HEADER..], aad: &aad(tree, key) })
            .map_err(|_| KeyError::Tampered)
    }

    /// A blinded index key: `0xFF | HMAC(index key, domain \0 value)`. Used wherever a tree key
    /// would otherwise hold an address, a patient id or a channel's message id. The `0xFF` lead
    /// byte never starts UTF-8 text, so blinded and v1 plain keys cannot collide.
    pub fn blind(&self, domain: &str, value: &[u8]) -> Vec<u8> {
        let mut mac = self.index.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        let mut out = Vec::with_capacity(33);
        out.push(0xFF);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }
}

fn clone_file(f: &KeyFile) -> KeyFile {
    KeyFile {
        version: f.version,
        active: f.active,
        index_key: f.index_key.clone(),
        keys: f.keys.iter().map(|k| KeyEntry { id: k.id, created: k.created.clone(), key: k.key.clone() }).collect(),
    }
}

/// Whether a stored value is sealed (v2) rather than plain JSON (v1).
pub fn is_sealed(v: &[u8]) -> bool {
    v.len() >= 2 && v[..2] == MAGIC
}

fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(tree.len() + 1 + key.len());
    a.extend_from_slice(tree.as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

fn write_new(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    use std::io::Write;
    let p = path.display().to_string();
    let body = toml::to_string(file).map_err(|e| KeyError::Invalid { path: p.clone(), reason: e.to_string() })?;
    let text = format!(
        "# carebridge record-store keys. Secret: whoever holds this file can read every patient's\n\
         # file. Keep it mode 0600, owned by the carebridge user, backed up apart from the data.\n\
         # Rotate with `carebridge keys rotate`; never delete an old key while records use it.\n{body}"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: p.clone(), source })?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|source| KeyError::Io { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = Keyring::generate(&path).unwrap();
        let s = k.seal("records", b"1", b"Jane Doe, OHIP 1234567897");
        assert!(!s.windows(4).any(|w| w == b"Jane"), "ciphertext holds no plaintext");
        assert_eq!(k.open("records", b"1", &s).unwrap(), b"Jane Doe, OHIP 1234567897");
        assert!(matches!(k.open("records", b"2", &s), Err(KeyError::Tampered)), "bound to its key");
        assert!(matches!(k.open("events", b"1", &s), Err(KeyError::Tampered)), "bound to its tree");
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(k.open("records", b"1", &bad), Err(KeyError::Tampered)));
        assert!(matches!(k.open("records", b"1", b"{\"v\":1}"), Err(KeyError::NotSealed)));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_new_ones_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k1 = Keyring::generate(&path).unwrap();
        let old = k1.seal("records", b"1", b"old");
        assert_eq!(Keyring::rotate(&path).unwrap(), 2);
        let k2 = Keyring::load(&path).unwrap();
        assert_eq!(k2.active_id(), 2);
        assert_eq!(k2.open("records", b"1", &old).unwrap(), b"old");
        let new = k2.seal("records", b"1", b"new");
        assert_eq!(u32::from_be_bytes(new[2..6].try_into().unwrap()), 2);
        assert!(matches!(k1.open("records", b"1", &new), Err(KeyError::UnknownKey(2))));
        assert_eq!(k1.blind("link", b"x"), k2.blind("link", b"x"), "the index key survives rotation");
    }

    #[test]
    fn refuses_to_overwrite_a_key_file_or_read_a_world_readable_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Keyring::generate(&path).unwrap();
        assert!(matches!(Keyring::generate(&path), Err(KeyError::Io { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = Keyring::load(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn a_broken_key_file_is_reported_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(
            &path,
            "version = 1\nactive = 1\nindex_key = \"zz-secret-zz\"\n[[key]]\nid = 1\ncreated = \"x\"\nkey = \"00\"\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let e = Keyring::load(&path).unwrap_err().to_string();
        assert!(e.contains("index_key is not hex") && !e.contains("zz-secret-zz"), "{e}");
    }
}
