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
//!
//! **Compressed values.** Ciphertext does not compress, so the store's JSON values are
//! compressed *before* sealing ([`Keyring::seal_compressible`]): raw DEFLATE at level 2
//! ([`DEFLATE_LEVEL`]; level 1 under [`QUICK_BELOW`] bytes) with a preset dictionary of the persisted types' JSON
//! ([`super::dictionary`]), kept only when it saves bytes, and marked by [`MAGIC_DICTIONARY`],
//! whose second byte is also bound into the associated data (a header turned from one kind into
//! another fails to open). A value's field names are most of what repeats in it, and each
//! appears once per value, so DEFLATE alone could not find them: against the dictionary they
//! cost a back-reference each, and a record's JSON shrinks to about 0.3 of its size (0.6
//! without). Values compressed without a dictionary ([`MAGIC_DEFLATED`], written before it)
//! open as they always did. Attachments (blobs) are
//! sealed as they are: mostly compressed formats already, and large. Compression changes only
//! what the sealed length says: how repetitive a value's plaintext is, which an attacker without
//! the key cannot tie to a patient.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::Mac;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use super::dictionary::DICTIONARY;

/// First bytes of every sealed value. JSON (schema v1, unsealed) starts with `{` or `[`, so the
/// two can never be confused (the v1 → v2 migration relies on it).
pub const MAGIC: [u8; 2] = [0xC5, 0xB2];
/// First bytes of a sealed value whose plaintext was DEFLATE-compressed before sealing, without
/// a dictionary (written before [`MAGIC_DICTIONARY`]; read, no longer written).
pub const MAGIC_DEFLATED: [u8; 2] = [0xC5, 0xB3];
/// First bytes of a sealed value whose plaintext was DEFLATE-compressed against
/// [`super::dictionary::DICTIONARY`] before sealing.
pub const MAGIC_DICTIONARY: [u8; 2] = [0xC5, 0xB4];
const HEADER: usize = 2 + 4 + 24;
/// Plaintexts shorter than this are sealed as they are. Against the dictionary even an event
/// (about 110 bytes) would shrink to a third, but compressing any value costs about 6 µs, most
/// of it zlib-rs clearing its 128 KiB hash table on every reset (measured: a 109-byte event
/// 6.6–6.9 µs, a 920-byte record 12–14 µs, in one run): for the three short values a message
/// writes (two native references and an event) that would be about 20 µs of CPU, a tenth of
/// the daemon's per message, for about 130 bytes.
const COMPRESS_FROM: usize = 192;
/// Plaintexts longer than this are sealed as they are, and an inflated value may not grow past it:
/// the store's JSON values are far smaller (attachments are blobs), and the bound keeps a damaged
/// or hostile value from inflating without end.
const COMPRESS_UP_TO: usize = 16 << 20;

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
    /// A compressed value opened (it is authentic) but does not inflate: a bug, not tampering.
    #[error("a sealed value is authentic but its compressed content is damaged")]
    Undecodable,
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

    /// Seals `plain` for the value at `key` in `tree` with the active key, as it is.
    pub fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        self.seal_as(MAGIC, tree, key, plain)
    }

    /// Seals `plain` like [`seal`](Self::seal), compressed first when that saves bytes: for the
    /// store's JSON values (see the module's documentation).
    pub fn seal_compressible(&self, tree: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        match deflated(plain) {
            Some(z) => self.seal_as(MAGIC_DICTIONARY, tree, key, &z),
            None => self.seal_as(MAGIC, tree, key, plain),
        }
    }

    fn seal_as(&self, magic: [u8; 2], tree: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let mut out = Vec::with_capacity(HEADER + plain.len() + 16);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = aad(magic, tree, key);
        // The active cipher exists (checked at load); encryption of a Vec cannot fail but for
        // lengths beyond 2^38 bytes, far above any message carebridge accepts.
        if let Some(c) = self.ciphers.get(&self.active)
            && let Ok(ct) = c.encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: &aad })
        {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Opens a value sealed by [`seal`](Self::seal) or
    /// [`seal_compressible`](Self::seal_compressible) for the same tree and key.
    pub fn open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !is_sealed(sealed) || sealed.len() < HEADER + 16 {
            return Err(KeyError::NotSealed);
        }
        let magic = [sealed[0], sealed[1]];
        let id = u32::from_be_bytes([sealed[2], sealed[3], sealed[4], sealed[5]]);
        let cipher = self.ciphers.get(&id).ok_or(KeyError::UnknownKey(id))?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&sealed[6..HEADER]);
        let plain = cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: &sealed[HEADER..], aad: &aad(magic, tree, key) })
            .map_err(|_| KeyError::Tampered)?;
        match magic {
            MAGIC_DICTIONARY => inflated(&plain, Some(DICTIONARY)),
            MAGIC_DEFLATED => inflated(&plain, None),
            _ => Ok(plain),
        }
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

/// Whether a stored value is sealed (v2, compressed or not) rather than plain JSON (v1).
pub fn is_sealed(v: &[u8]) -> bool {
    v.len() >= 2 && [MAGIC, MAGIC_DEFLATED, MAGIC_DICTIONARY].iter().any(|m| v[..2] == *m)
}

/// DEFLATE level 2: zlib-rs's level 1 is its "quick" mode, which kept 0.77 of a record's bytes
/// against 0.59 at level 2; higher levels saved under 1% more for more time (measured on the
/// benches' records).
const DEFLATE_LEVEL: u32 = 2;

/// Plaintexts shorter than this are compressed at level 1 ("quick") instead: against the
/// dictionary, what they repeat is mostly its field names, which quick mode finds as well.
/// Measured in one run, against the dictionary: a 241-byte conversation 4.8 µs → 107 bytes at
/// level 1, 9.0 µs → 104 at level 2; a 920-byte record 6.5 µs → 436 bytes at level 1, 12.1 µs →
/// 337 at level 2 (its text needs level 2's matching).
const QUICK_BELOW: usize = 512;

thread_local! {
    /// One compressor per thread, reset between values: a fresh one allocates and clears its
    /// window and hash tables, which cost more than compressing a record.
    static DEFLATER: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(DEFLATE_LEVEL), false));
    /// The same at level 1, for values under [`QUICK_BELOW`].
    static QUICK_DEFLATER: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(1), false));
    /// Likewise one decompressor per thread (its window is 32 KiB).
    static INFLATER: std::cell::RefCell<flate2::Decompress> = std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// `plain` as raw DEFLATE against [`DICTIONARY`], when it is worth it (see [`COMPRESS_FROM`]):
/// `None` when the compressed form would not be shorter.
fn deflated(plain: &[u8]) -> Option<Vec<u8>> {
    if !(COMPRESS_FROM..=COMPRESS_UP_TO).contains(&plain.len()) {
        return None;
    }
    let deflater = if plain.len() < QUICK_BELOW { &QUICK_DEFLATER } else { &DEFLATER };
    deflater.with(|d| {
        let mut d = d.borrow_mut();
        d.reset();
        // The dictionary goes in after every reset: a reset forgets it with the window.
        d.set_dictionary(DICTIONARY).ok()?;
        // Room for one byte less than the input: a value that does not fit did not shrink.
        let mut out = Vec::with_capacity(plain.len() - 1);
        match d.compress_vec(plain, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => Some(out),
            _ => None,
        }
    })
}

/// The inverse of [`deflated`] (with `dictionary`, or without for values written before it),
/// refusing to grow past [`COMPRESS_UP_TO`] and refusing input that ends before its stream.
fn inflated(z: &[u8], dictionary: Option<&[u8]>) -> Result<Vec<u8>, KeyError> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        if let Some(dict) = dictionary {
            d.set_dictionary(dict).map_err(|_| KeyError::Undecodable)?;
        }
        let mut out = Vec::with_capacity((z.len() * 4).clamp(64, COMPRESS_UP_TO));
        loop {
            let (read, written) = (d.total_in(), d.total_out());
            let rest = z.get(read as usize..).unwrap_or_default();
            match d.decompress_vec(rest, &mut out, flate2::FlushDecompress::Finish) {
                Ok(_) if out.len() > COMPRESS_UP_TO => return Err(KeyError::Undecodable),
                Ok(flate2::Status::StreamEnd) => return Ok(out),
                // No progress with room left: the input ended inside the stream.
                Ok(_) if (d.total_in(), d.total_out()) == (read, written) && out.len() < out.capacity() => {
                    return Err(KeyError::Undecodable);
                }
                Ok(_) => {
                    // Doubling, up to one byte past the bound (which then fails above).
                    out.reserve(out.capacity().max(64).min(COMPRESS_UP_TO + 1 - out.len()));
                }
                Err(_) => return Err(KeyError::Undecodable),
            }
        }
    })
}

/// The associated data of a value: the tree and the key, and for a compressed value also the
/// magic's second byte (plain values keep the associated data they always had).
fn aad(magic: [u8; 2], tree: &str, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(2 + tree.len() + 1 + key.len());
    if magic == MAGIC_DEFLATED || magic == MAGIC_DICTIONARY {
        a.extend_from_slice(&[magic[1], 0]);
    }
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
    fn a_compressible_value_is_smaller_sealed_and_opens_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::generate(&dir.path().join("k")).unwrap();
        let json = br#"{"v":1,"body":"Could you please renew my prescription for metformin 500 mg? I can come in any morning except Thursday.","from":{"kind":"phone","value":"+14165550123"},"decisions":[{"account":"webhook.out","action":"allow","class":"clinical"}],"finding_kinds":["medication"]}"#;
        let z = k.seal_compressible("records", b"1", json);
        assert_eq!(z[..2], MAGIC_DICTIONARY);
        assert!(z.len() < k.seal("records", b"1", json).len(), "compressed before sealing");
        assert!(!z.windows(9).any(|w| w == b"metformin"), "still sealed");
        assert_eq!(k.open("records", b"1", &z).unwrap(), json);
        assert!(matches!(k.open("records", b"2", &z), Err(KeyError::Tampered)), "bound to its key");
        // A header turned from one kind into the other fails to open, both ways.
        let mut as_plain = z.clone();
        as_plain[..2].copy_from_slice(&MAGIC);
        assert!(matches!(k.open("records", b"1", &as_plain), Err(KeyError::Tampered)));
        let mut as_deflated = k.seal("records", b"1", json);
        as_deflated[..2].copy_from_slice(&MAGIC_DEFLATED);
        assert!(matches!(k.open("records", b"1", &as_deflated), Err(KeyError::Tampered)));
        let mut without_dictionary = z.clone();
        without_dictionary[..2].copy_from_slice(&MAGIC_DEFLATED);
        assert!(matches!(k.open("records", b"1", &without_dictionary), Err(KeyError::Tampered)));
    }

    #[test]
    fn values_compressed_before_the_dictionary_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::generate(&dir.path().join("k")).unwrap();
        let json = br#"{"v":1,"token":"0011","patient_id":null,"origin_account":"webhook.sms","origin_address":{"kind":"phone","value":"+14165550100"},"class":"none","last_patient_message":null,"created_at_ms":1796412674543}"#;
        // What `seal_compressible` wrote before the dictionary: DEFLATE alone.
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(DEFLATE_LEVEL));
        std::io::Write::write_all(&mut z, json).unwrap();
        let old = k.seal_as(MAGIC_DEFLATED, "conversations", b"0011", &z.finish().unwrap());
        assert_eq!(k.open("conversations", b"0011", &old).unwrap(), json);
        let new = k.seal_compressible("conversations", b"0011", json);
        assert!(new.len() + 60 < old.len(), "the dictionary saves its field names: {} vs {}", new.len(), old.len());
        assert_eq!(k.open("conversations", b"0011", &new).unwrap(), json);
    }

    #[test]
    fn short_or_incompressible_values_are_sealed_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::generate(&dir.path().join("k")).unwrap();
        let short = br#"{"v":1,"conversation":"9f86d081884c7d659a2feaa0c55ad015","record":1048577}"#;
        assert_eq!(k.seal_compressible("by_native", b"1", short)[..2], MAGIC);
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let sealed = k.seal_compressible("blobs", b"1", &noise);
        assert_eq!(sealed[..2], MAGIC, "kept plain when deflating would not save bytes");
        assert_eq!(k.open("blobs", b"1", &sealed).unwrap(), noise);
    }

    #[test]
    fn an_authentic_value_that_does_not_inflate_is_reported_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let k = Keyring::generate(&dir.path().join("k")).unwrap();
        // Sealed as compressed, but not DEFLATE: what a bug writing the store would leave.
        let bad = k.seal_as(MAGIC_DEFLATED, "records", b"1", &[0xFF; 64]);
        assert!(matches!(k.open("records", b"1", &bad), Err(KeyError::Undecodable)));
        // A bomb: a few kilobytes that would inflate past the bound.
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &vec![b'a'; COMPRESS_UP_TO + 1]).unwrap();
        let z = z.finish().unwrap();
        for magic in [MAGIC_DEFLATED, MAGIC_DICTIONARY] {
            let bomb = k.seal_as(magic, "records", b"1", &z);
            assert!(bomb.len() < 64 << 10);
            assert!(matches!(k.open("records", b"1", &bomb), Err(KeyError::Undecodable)));
        }
        // A stream cut short opens as damaged, not as a shorter value.
        let whole = deflated(&[b"{\"v\":1,\"body\":\"".as_slice(), &[b'x'; 500], b"\"}"].concat()).unwrap();
        let cut = k.seal_as(MAGIC_DICTIONARY, "records", b"1", &whole[..whole.len() / 2]);
        assert!(matches!(k.open("records", b"1", &cut), Err(KeyError::Undecodable)));
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
