//! Encryption at rest: a key ring, sealed values and the database canary.
//!
//! Every sensitive value (anything derived from task inputs, fire payloads, hook secrets and
//! trigger tokens) is sealed by [`crate::Store`] before it reaches a backend and opened after
//! it comes back, so backends only ever hold opaque strings. A sealed value is
//!
//! ```text
//! thk1:<key id>:<base64url (no padding) of 24-byte nonce ‖ ciphertext ‖ 16-byte tag>
//! ```
//!
//! sealed with XChaCha20-Poly1305 under the key the id names (the id is also the associated
//! data, so a ciphertext cannot be relabelled). The newest key of the [`KeyRing`] seals; every
//! key of the ring opens. A JSON column holds a sealed value as a JSON string; JSON `null`
//! (nothing yet) is kept as it is. Values written before sealing was enabled are read as they
//! are and sealed by the next rotation.

use std::fmt;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde_json::Value;

use crate::{StoreError, now_ms};

/// The prefix of every sealed value.
pub const SEALED_PREFIX: &str = "thk1:";
/// The settings key of the canary: a known plaintext sealed with the newest key.
pub const CANARY_SETTING: &str = "key_canary";
const CANARY_PLAINTEXT: &[u8] = b"taskhook key canary";
const NONCE: usize = 24;
const TAG: usize = 16;
const KEY_BYTES: usize = 32;

/// Why a key ring could not be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key ring: {0}")]
    Invalid(String),
    #[error(
        "the data is sealed with key {id:?}, which is not in the key ring (it has {ring}): add that key to the ring"
    )]
    UnknownKey { id: String, ring: String },
    #[error(
        "a value sealed with key {id:?} does not open with that key: wrong key material or corrupt data"
    )]
    WrongKey { id: String },
    #[error("corrupt sealed value: {0}")]
    Corrupt(String),
    #[error("a sealed value was read, but no key ring is configured")]
    NoRing,
}

impl From<KeyError> for StoreError {
    fn from(e: KeyError) -> Self {
        StoreError::Database(e.to_string())
    }
}

struct Key {
    id: String,
    /// `thk1:<id>`: the associated data of every value sealed with this key.
    aad: String,
    cipher: XChaCha20Poly1305,
}

/// Keys that seal and open values: the newest (last) seals, every one opens.
///
/// Text form (a key file, or `TASKHOOK_KEYS`): entries `ID:BASE64KEY`, separated by newlines
/// or commas, oldest first; blank lines and lines starting with `#` are ignored. An id is 1 to
/// 64 characters of `A-Z a-z 0-9 _ . -`; a key is 32 bytes in standard base64.
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing").field("ids", &self.ids()).finish()
    }
}

impl KeyRing {
    /// Parses the text form (see [`KeyRing`]).
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (n, entry) in text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let n = n + 1;
            let (id, material) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::Invalid(format!("entry {n} is not ID:BASE64KEY")))?;
            let (id, material) = (id.trim(), material.trim());
            check_key_id(id).map_err(|e| KeyError::Invalid(format!("entry {n}: {e}")))?;
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Invalid(format!("key id {id:?} appears twice")));
            }
            let bytes = STANDARD
                .decode(material)
                .map_err(|_| KeyError::Invalid(format!("key {id:?} is not valid base64")))?;
            if bytes.len() != KEY_BYTES {
                return Err(KeyError::Invalid(format!(
                    "key {id:?} has {} bytes, expected {KEY_BYTES}",
                    bytes.len()
                )));
            }
            keys.push(Key::new(id, &bytes)?);
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid("no keys".into()));
        }
        Ok(KeyRing { keys })
    }

    /// A new random key in the text form, `ID:BASE64KEY`. Without an id, one is made from the
    /// current time (`k<unix seconds>`), so newer keys sort after older ones.
    pub fn generate_entry(id: Option<&str>) -> Result<String, KeyError> {
        let id = match id {
            Some(id) => {
                check_key_id(id).map_err(KeyError::Invalid)?;
                id.to_string()
            }
            None => format!("k{}", now_ms() / 1000),
        };
        let mut key = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut key);
        Ok(format!("{id}:{}", STANDARD.encode(key)))
    }

    /// Key ids, oldest first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The id of the key that seals.
    pub fn newest_id(&self) -> &str {
        &self.newest().id
    }

    fn newest(&self) -> &Key {
        // parse refuses an empty ring
        &self.keys[self.keys.len() - 1]
    }

    fn key(&self, id: &str) -> Result<&Key, KeyError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::UnknownKey {
                id: id.to_string(),
                ring: self.ids().join(", "),
            })
    }

    /// Seals bytes with the newest key.
    pub fn seal(&self, plain: &[u8]) -> Result<String, KeyError> {
        let key = self.newest();
        let mut buf = Vec::with_capacity(NONCE + plain.len() + TAG);
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plain);
        let tag = key
            .cipher
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                key.aad.as_bytes(),
                &mut buf[NONCE..],
            )
            .map_err(|_| KeyError::Corrupt("value too large to seal".into()))?;
        buf.extend_from_slice(&tag);
        let mut out = String::with_capacity(key.aad.len() + 1 + buf.len().div_ceil(3) * 4);
        out.push_str(&key.aad);
        out.push(':');
        URL_SAFE_NO_PAD.encode_string(&buf, &mut out);
        Ok(out)
    }

    /// Opens a sealed value with the key it names.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let (id, body) = split_sealed(sealed)?;
        let key = self.key(id)?;
        let mut buf = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| KeyError::Corrupt(format!("value sealed with {id:?} is not base64")))?;
        if buf.len() < NONCE + TAG {
            return Err(KeyError::Corrupt(format!(
                "value sealed with {id:?} is too short"
            )));
        }
        let (nonce, rest) = buf.split_at_mut(NONCE);
        let (ct, tag) = rest.split_at_mut(rest.len() - TAG);
        key.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                key.aad.as_bytes(),
                ct,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| KeyError::WrongKey { id: id.to_string() })?;
        let len = buf.len() - TAG;
        buf.truncate(len);
        buf.drain(..NONCE);
        Ok(buf)
    }

    /// Seals a JSON value in place (it becomes a JSON string); `null` stays `null`.
    pub fn seal_value(&self, v: &mut Value) -> Result<(), KeyError> {
        if v.is_null() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(v).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        *v = Value::String(self.seal(&bytes)?);
        Ok(())
    }

    /// Seals a text in place.
    pub fn seal_text(&self, s: &mut String) -> Result<(), KeyError> {
        *s = self.seal(s.as_bytes())?;
        Ok(())
    }

    /// The canary value for this ring (the known plaintext sealed with the newest key).
    pub fn canary(&self) -> Result<String, KeyError> {
        self.seal(CANARY_PLAINTEXT)
    }

    /// Checks a stored canary: it must open with the key it names to the known plaintext.
    pub fn check_canary(&self, canary: &str) -> Result<(), KeyError> {
        let plain = self.open(canary)?;
        if plain != CANARY_PLAINTEXT {
            let id = split_sealed(canary).map(|(id, _)| id).unwrap_or("?");
            return Err(KeyError::WrongKey { id: id.to_string() });
        }
        Ok(())
    }
}

impl Key {
    fn new(id: &str, material: &[u8]) -> Result<Key, KeyError> {
        let cipher = XChaCha20Poly1305::new_from_slice(material)
            .map_err(|_| KeyError::Invalid(format!("key {id:?} has the wrong length")))?;
        Ok(Key {
            id: id.to_string(),
            aad: format!("{SEALED_PREFIX}{id}"),
            cipher,
        })
    }
}

fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {id:?} must be 1 to 64 characters of A-Z a-z 0-9 _ . -"
        ))
    }
}

/// `(key id, payload)` of a sealed value.
fn split_sealed(sealed: &str) -> Result<(&str, &str), KeyError> {
    sealed
        .strip_prefix(SEALED_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| KeyError::Corrupt("not a sealed value".into()))
}

/// Whether a text is a sealed value.
pub fn is_sealed(s: &str) -> bool {
    s.starts_with(SEALED_PREFIX)
}

/// The key id a sealed text names, if it is sealed.
pub fn sealed_key_id(s: &str) -> Option<&str> {
    split_sealed(s).ok().map(|(id, _)| id)
}

/// The ring a store seals with, installed once the canary checked out. Without one the store
/// writes values as they are (a store opened by a tool or test that configured no keys).
#[derive(Default)]
pub(crate) struct Keys {
    ring: RwLock<Option<Arc<KeyRing>>>,
}

impl Keys {
    pub(crate) fn get(&self) -> Option<Arc<KeyRing>> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, ring: Arc<KeyRing>) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Some(ring);
    }
}

/// The ring of one store call: seals what goes to the backend and opens what comes back.
/// With no ring, values pass as they are, and reading a sealed value is an error.
pub(crate) struct Sealer(pub(crate) Option<Arc<KeyRing>>);

impl Sealer {
    pub(crate) fn value(&self, v: &mut Value) -> Result<(), KeyError> {
        match &self.0 {
            Some(r) => r.seal_value(v),
            None => Ok(()),
        }
    }

    pub(crate) fn opt_value(&self, v: &mut Option<Value>) -> Result<(), KeyError> {
        match v {
            Some(v) => self.value(v),
            None => Ok(()),
        }
    }

    pub(crate) fn text(&self, s: &mut String) -> Result<(), KeyError> {
        match &self.0 {
            Some(r) => r.seal_text(s),
            None => Ok(()),
        }
    }

    pub(crate) fn opt_text(&self, s: &mut Option<String>) -> Result<(), KeyError> {
        match s {
            Some(s) => self.text(s),
            None => Ok(()),
        }
    }

    fn ring(&self) -> Result<&KeyRing, KeyError> {
        self.0.as_deref().ok_or(KeyError::NoRing)
    }

    pub(crate) fn open_value(&self, v: &mut Value) -> Result<(), KeyError> {
        if let Value::String(s) = v
            && is_sealed(s)
        {
            let plain = self.ring()?.open(s)?;
            *v = serde_json::from_slice(&plain)
                .map_err(|e| KeyError::Corrupt(format!("sealed JSON does not parse: {e}")))?;
        }
        Ok(())
    }

    pub(crate) fn open_opt_value(&self, v: &mut Option<Value>) -> Result<(), KeyError> {
        match v {
            Some(v) => self.open_value(v),
            None => Ok(()),
        }
    }

    pub(crate) fn open_text(&self, s: &mut String) -> Result<(), KeyError> {
        if is_sealed(s) {
            let plain = self.ring()?.open(s)?;
            *s = String::from_utf8(plain)
                .map_err(|_| KeyError::Corrupt("sealed text is not UTF-8".into()))?;
        }
        Ok(())
    }

    pub(crate) fn open_opt_text(&self, s: &mut Option<String>) -> Result<(), KeyError> {
        match s {
            Some(s) => self.open_text(s),
            None => Ok(()),
        }
    }
}

/// How a sealed column holds its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A JSON column: the sealed value is a JSON string.
    Json,
    /// A text column: the sealed value is the text.
    Text,
}

/// A table with sealed columns, as rotation and status walk it.
#[derive(Debug)]
pub(crate) struct SealedTable {
    pub(crate) name: &'static str,
    /// Primary key columns; `true` for an integer column.
    pub(crate) key: &'static [(&'static str, bool)],
    pub(crate) columns: &'static [(&'static str, Kind)],
}

/// Every sealed column of the schema (the canary in `settings` aside).
pub(crate) const SEALED_TABLES: &[SealedTable] = &[
    SealedTable {
        name: "tasks",
        key: &[("id", false)],
        columns: &[
            ("title", Kind::Text),
            ("inputs", Kind::Json),
            ("resolver_inputs", Kind::Json),
            ("result", Kind::Json),
            ("tags", Kind::Json),
        ],
    },
    SealedTable {
        name: "steps",
        key: &[("task_id", false), ("name", false)],
        columns: &[
            ("output", Kind::Json),
            ("metadata", Kind::Json),
            ("error", Kind::Text),
            ("item", Kind::Json),
        ],
    },
    SealedTable {
        name: "task_events",
        key: &[("seq", true)],
        columns: &[("detail", Kind::Json)],
    },
    SealedTable {
        name: "hooks",
        key: &[("hook_group", false), ("hook_id", false)],
        columns: &[("body", Kind::Json), ("trigger_token", Kind::Text)],
    },
    SealedTable {
        name: "fires",
        key: &[("id", false)],
        columns: &[("error", Kind::Text), ("payload", Kind::Json)],
    },
    SealedTable {
        name: "task_comments",
        key: &[("id", false)],
        columns: &[("content", Kind::Text)],
    },
    SealedTable {
        name: "secrets",
        key: &[("name", false)],
        columns: &[("value", Kind::Text)],
    },
];

/// One primary key value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyPart {
    Text(String),
    Int(i64),
}

/// A row of a [`SealedTable`] as stored: its key and the raw text of each sealed column.
#[derive(Debug, Clone)]
pub(crate) struct RawRow {
    pub(crate) key: Vec<KeyPart>,
    pub(crate) cells: Vec<Option<String>>,
}

/// A compare-and-swap of one sealed cell: written only while the cell still holds `old`.
#[derive(Debug, Clone)]
pub(crate) struct CellSwap {
    pub(crate) key: Vec<KeyPart>,
    pub(crate) column: usize,
    pub(crate) old: String,
    pub(crate) new: String,
}

/// Where a stored cell's value stands.
#[derive(Debug, PartialEq, Eq)]
enum CellState<'a> {
    /// NULL, JSON null or an empty object (a task's resolver inputs before anyone resolved
    /// it): nothing to seal.
    Empty,
    Clear,
    Sealed(&'a str),
}

fn cell_state<'a>(raw: &'a str, kind: Kind) -> CellState<'a> {
    match kind {
        Kind::Text => match sealed_key_id(raw) {
            Some(id) => CellState::Sealed(id),
            None => CellState::Clear,
        },
        Kind::Json => {
            if raw == "null" || raw == "{}" {
                return CellState::Empty;
            }
            // A sealed JSON value is a JSON string of base64url text: no escapes.
            match raw
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .and_then(sealed_key_id)
            {
                Some(id) => CellState::Sealed(id),
                None => CellState::Clear,
            }
        }
    }
}

/// Reseals one stored cell with the newest key; `None` when it needs nothing.
fn reseal(ring: &KeyRing, raw: &str, kind: Kind) -> Result<Option<String>, KeyError> {
    let plain: Vec<u8> = match cell_state(raw, kind) {
        CellState::Empty => return Ok(None),
        CellState::Sealed(id) if id == ring.newest_id() => return Ok(None),
        CellState::Sealed(_) => match kind {
            Kind::Text => ring.open(raw)?,
            Kind::Json => {
                // strip the JSON quotes: base64url and the prefix need no escaping
                ring.open(&raw[1..raw.len() - 1])?
            }
        },
        CellState::Clear => match kind {
            Kind::Text => raw.as_bytes().to_vec(),
            Kind::Json => {
                // validate and normalise
                let v: Value = serde_json::from_str(raw)
                    .map_err(|e| KeyError::Corrupt(format!("stored JSON does not parse: {e}")))?;
                serde_json::to_vec(&v).map_err(|e| KeyError::Corrupt(e.to_string()))?
            }
        },
    };
    let sealed = ring.seal(&plain)?;
    Ok(Some(match kind {
        Kind::Text => sealed,
        Kind::Json => Value::String(sealed).to_string(),
    }))
}

/// What rotation did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RotationReport {
    /// The key everything is sealed with now.
    pub key_id: String,
    /// Cells looked at.
    pub scanned: u64,
    /// Cells resealed with the newest key (including values stored before sealing).
    pub resealed: u64,
    /// Cells changed by another writer between reading and resealing: left as that writer
    /// wrote them (with the newest key, by any writer holding the same ring).
    pub changed_meanwhile: u64,
}

/// How much data each key seals.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KeyStatus {
    /// The key that seals new values.
    pub newest: String,
    /// Key ids in the ring, oldest first.
    pub ring: Vec<String>,
    /// The key the canary is sealed with.
    pub canary: Option<String>,
    /// Sealed cells per key id (ids not in the ring included).
    pub sealed: std::collections::BTreeMap<String, u64>,
    /// Cells holding a value that is not sealed (stored before sealing was enabled).
    pub clear: u64,
    /// Sealed cells under keys other than the newest: 0 once rotation is complete.
    pub under_old_keys: u64,
}

/// Rows read per page, and cells written per transaction, during rotation and status.
const PAGE: usize = 256;

impl crate::Store {
    fn keys_slot(&self) -> &Keys {
        match self {
            crate::Store::Sqlite(s) => s.keys(),
            crate::Store::Postgres(s) => s.keys(),
        }
    }

    /// The ring of this store, if one is installed.
    pub fn key_ring(&self) -> Option<Arc<KeyRing>> {
        self.keys_slot().get()
    }

    pub(crate) fn sealer(&self) -> Sealer {
        Sealer(self.keys_slot().get())
    }

    /// Installs the key ring the store seals with, after checking the database canary: when
    /// one is stored, some key of the ring must open it (otherwise the error names the key the
    /// database expects and nothing is installed); when none is, it is written with the
    /// newest key. Call once at start, before serving.
    pub async fn install_keys(&self, ring: KeyRing) -> Result<(), StoreError> {
        match self.get_setting(CANARY_SETTING).await? {
            Some(canary) => ring.check_canary(&canary)?,
            None => self.set_setting(CANARY_SETTING, &ring.canary()?).await?,
        }
        self.keys_slot().set(Arc::new(ring));
        Ok(())
    }

    /// Seals a text with the newest key of the store's ring, for a value a caller keeps
    /// elsewhere in the store (a stored named secret, say). Without a ring, returns it as is.
    pub fn seal_text(&self, plain: &str) -> Result<String, StoreError> {
        let mut s = plain.to_string();
        self.sealer().text(&mut s)?;
        Ok(s)
    }

    /// Opens a text [`Store::seal_text`] sealed (a text that is not sealed comes back as is).
    pub fn open_text(&self, stored: &str) -> Result<String, StoreError> {
        let mut s = stored.to_string();
        self.sealer().open_text(&mut s)?;
        Ok(s)
    }

    /// Reseals every sealed value held under an older key, and every value stored before
    /// sealing, with the newest key, page by page while the store keeps serving. Each cell is
    /// a compare-and-swap: a cell another writer changed since it was read is left as that
    /// writer wrote it. The canary is resealed last.
    pub async fn rotate_keys(&self) -> Result<RotationReport, StoreError> {
        let ring = self.key_ring().ok_or(KeyError::NoRing)?;
        let mut report = RotationReport {
            key_id: ring.newest_id().to_string(),
            ..Default::default()
        };
        for table in SEALED_TABLES {
            let mut after: Option<Vec<KeyPart>> = None;
            loop {
                let rows = self.sealed_page(table, after.take(), PAGE).await?;
                let Some(last) = rows.last() else { break };
                after = Some(last.key.clone());
                let mut swaps = Vec::new();
                for row in &rows {
                    for (i, cell) in row.cells.iter().enumerate() {
                        let Some(raw) = cell else { continue };
                        report.scanned += 1;
                        if let Some(new) = reseal(&ring, raw, table.columns[i].1)? {
                            swaps.push(CellSwap {
                                key: row.key.clone(),
                                column: i,
                                old: raw.clone(),
                                new,
                            });
                        }
                    }
                }
                if !swaps.is_empty() {
                    let n = swaps.len() as u64;
                    let done = self.swap_sealed(table, swaps).await? as u64;
                    report.resealed += done;
                    report.changed_meanwhile += n - done;
                    tracing::info!(
                        table = table.name,
                        resealed = report.resealed,
                        scanned = report.scanned,
                        "rotating keys"
                    );
                }
                if rows.len() < PAGE {
                    break;
                }
            }
        }
        let canary = self.get_setting(CANARY_SETTING).await?;
        if canary.as_deref().and_then(sealed_key_id) != Some(ring.newest_id()) {
            self.set_setting(CANARY_SETTING, &ring.canary()?).await?;
        }
        Ok(report)
    }

    /// Counts sealed values per key (a full scan of the sealed columns).
    pub async fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let ring = self.key_ring();
        let mut status = KeyStatus {
            newest: ring
                .as_ref()
                .map(|r| r.newest_id().to_string())
                .unwrap_or_default(),
            ring: ring
                .as_ref()
                .map(|r| r.ids().into_iter().map(String::from).collect())
                .unwrap_or_default(),
            canary: self
                .get_setting(CANARY_SETTING)
                .await?
                .as_deref()
                .and_then(sealed_key_id)
                .map(String::from),
            ..Default::default()
        };
        for table in SEALED_TABLES {
            let mut after: Option<Vec<KeyPart>> = None;
            loop {
                let rows = self.sealed_page(table, after.take(), PAGE * 4).await?;
                let Some(last) = rows.last() else { break };
                after = Some(last.key.clone());
                for row in &rows {
                    for (i, cell) in row.cells.iter().enumerate() {
                        let Some(raw) = cell else { continue };
                        match cell_state(raw, table.columns[i].1) {
                            CellState::Empty => {}
                            CellState::Clear => status.clear += 1,
                            CellState::Sealed(id) => {
                                *status.sealed.entry(id.to_string()).or_default() += 1;
                                if id != status.newest {
                                    status.under_old_keys += 1;
                                }
                            }
                        }
                    }
                }
                if rows.len() < PAGE * 4 {
                    break;
                }
            }
        }
        Ok(status)
    }

    pub(crate) async fn sealed_page(
        &self,
        table: &'static SealedTable,
        after: Option<Vec<KeyPart>>,
        limit: usize,
    ) -> Result<Vec<RawRow>, StoreError> {
        match self {
            crate::Store::Sqlite(s) => s.sealed_page(table, after, limit).await,
            crate::Store::Postgres(s) => s.sealed_page(table, after, limit).await,
        }
    }

    pub(crate) async fn swap_sealed(
        &self,
        table: &'static SealedTable,
        swaps: Vec<CellSwap>,
    ) -> Result<usize, StoreError> {
        match self {
            crate::Store::Sqlite(s) => s.swap_sealed(table, swaps).await,
            crate::Store::Postgres(s) => s.swap_sealed(table, swaps).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).unwrap()
    }

    #[test]
    fn seals_and_opens_with_any_key_of_the_ring() {
        let a = KeyRing::generate_entry(Some("a")).unwrap();
        let b = KeyRing::generate_entry(Some("b")).unwrap();
        let old = ring(&a);
        let both = ring(&format!("# comment\n{a}\n\n{b}\n"));
        assert_eq!(both.newest_id(), "b");
        let sealed = old.seal(b"hello").unwrap();
        assert!(sealed.starts_with("thk1:a:"));
        assert_eq!(both.open(&sealed).unwrap(), b"hello");
        let newer = both.seal(b"hello").unwrap();
        assert!(newer.starts_with("thk1:b:"));
        assert_ne!(both.seal(b"hello").unwrap(), newer, "nonces are random");
        assert_eq!(
            old.open(&newer),
            Err(KeyError::UnknownKey {
                id: "b".into(),
                ring: "a".into()
            })
        );
        let comma = ring(&format!("{a},{b}"));
        assert_eq!(comma.ids(), vec!["a", "b"]);
    }

    #[test]
    fn a_tampered_or_relabelled_value_does_not_open() {
        let a = KeyRing::generate_entry(Some("a")).unwrap();
        let b = KeyRing::generate_entry(Some("b")).unwrap();
        let r = ring(&format!("{a}\n{b}"));
        let sealed = r.seal(b"secret").unwrap();
        let relabelled = sealed.replacen("thk1:b:", "thk1:a:", 1);
        assert_eq!(
            r.open(&relabelled),
            Err(KeyError::WrongKey { id: "a".into() })
        );
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(r.open(&tampered).is_err());
        // a key with the same id but other material
        let other = ring(&KeyRing::generate_entry(Some("b")).unwrap());
        assert!(matches!(
            other.check_canary(&r.canary().unwrap()),
            Err(KeyError::WrongKey { .. })
        ));
    }

    #[test]
    fn bad_rings_are_refused_with_the_reason() {
        let k = STANDARD.encode([7u8; 32]);
        for (text, want) in [
            ("", "no keys"),
            ("nocolon", "not ID:BASE64KEY"),
            ("a b:xyz", "must be 1 to 64"),
            ("a:!!!", "not valid base64"),
            (&format!("a:{}", STANDARD.encode([1u8; 16])), "has 16 bytes"),
            (&format!("a:{k},a:{k}"), "appears twice"),
        ] {
            let err = KeyRing::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn json_values_seal_as_strings_and_null_stays() {
        let r = Arc::new(ring(&KeyRing::generate_entry(Some("a")).unwrap()));
        let s = Sealer(Some(r));
        let mut v = serde_json::json!({"password": "hunter2", "n": [1, 2]});
        let orig = v.clone();
        s.value(&mut v).unwrap();
        assert!(v.as_str().unwrap().starts_with("thk1:a:"));
        assert!(!v.to_string().contains("hunter2"));
        s.open_value(&mut v).unwrap();
        assert_eq!(v, orig);
        let mut null = Value::Null;
        s.value(&mut null).unwrap();
        assert!(null.is_null());
        // values stored before sealing read as they are
        let mut clear = serde_json::json!("plain");
        s.open_value(&mut clear).unwrap();
        assert_eq!(clear, "plain");
        // without a ring a sealed value cannot be read
        let mut sealed = serde_json::json!({"x": 1});
        s.value(&mut sealed).unwrap();
        assert_eq!(Sealer(None).open_value(&mut sealed), Err(KeyError::NoRing));
    }

    #[test]
    fn reseal_moves_cells_to_the_newest_key() {
        let a = KeyRing::generate_entry(Some("a")).unwrap();
        let b = KeyRing::generate_entry(Some("b")).unwrap();
        let old = ring(&a);
        let new = ring(&format!("{a}\n{b}"));
        let json_cell = Value::String(old.seal(br#"{"k":"v"}"#).unwrap()).to_string();
        let out = reseal(&new, &json_cell, Kind::Json).unwrap().unwrap();
        assert_eq!(cell_state(&out, Kind::Json), CellState::Sealed("b"));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(new.open(v.as_str().unwrap()).unwrap(), br#"{"k":"v"}"#);
        assert_eq!(reseal(&new, &out, Kind::Json).unwrap(), None);
        assert_eq!(reseal(&new, "null", Kind::Json).unwrap(), None);
        let clear = reseal(&new, r#"{"a": 1}"#, Kind::Json).unwrap().unwrap();
        assert_eq!(cell_state(&clear, Kind::Json), CellState::Sealed("b"));
        let text = reseal(&new, "a title", Kind::Text).unwrap().unwrap();
        assert_eq!(new.open(&text).unwrap(), b"a title");
    }
}
