//! Bearer-token authentication. The admin token is kept only as a SHA-256 hash and
//! compared in constant time; API tokens and the authorization checks are in
//! [`crate::identity`].

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct AdminToken {
    hash: [u8; 32],
}

impl AdminToken {
    pub fn from_token(token: &str) -> Self {
        AdminToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn from_hash_hex(hex_hash: &str) -> Option<Self> {
        let bytes = hex::decode(hex_hash).ok()?;
        Some(AdminToken {
            hash: bytes.try_into().ok()?,
        })
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    pub fn matches(&self, token: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        h.ct_eq(&self.hash).into()
    }

    /// A fresh random token: 32 bytes, hex.
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("thk_{}", hex::encode(bytes))
    }
}

/// Who made the request: see [`crate::identity`].
pub use crate::identity::Caller;
