//! Sprig's cryptographic functions over secrets: `encryptAES`/`decryptAES` (AES-256-CBC,
//! the password zero-padded or cut to 32 bytes, a random IV before the ciphertext, all
//! base64), `bcrypt` and `htpasswd` (`$2a$`, cost 10, as Go's `x/crypto/bcrypt`),
//! `randBytes` and `derivePassword` (the Master Password algorithm: scrypt then
//! HMAC-SHA256). Hashing and key derivation are slow on purpose, so each call pays a
//! share of the rendering's step budget in proportion to its work.

use aws_lc_rs::cipher::{
    AES_256, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use base64::Engine as _;

use super::super::exec::{Exec, Fail, R};
use super::super::value::Val;
use super::P::*;
use super::{FuncDef, alloc, def, int, s, text};

/// Steps a bcrypt hash at cost 10 costs (tens of milliseconds of work).
pub(crate) const BCRYPT_STEPS: u64 = 50_000;
/// Steps `derivePassword` costs (scrypt with N=32768, r=8, p=2: 32 MiB and about a
/// tenth of a second).
pub(crate) const DERIVE_PASSWORD_STEPS: u64 = 150_000;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("encryptAES", &[Str, Str], None, |e, a| {
            encrypt_aes(e, text(&a[0]), text(&a[1]))
        }),
        def("decryptAES", &[Str, Str], None, |e, a| {
            decrypt_aes(e, text(&a[0]), text(&a[1]))
        }),
        def("bcrypt", &[Str], None, |e, a| {
            Ok(s(bcrypt(e, text(&a[0]))?))
        }),
        def("htpasswd", &[Str, Str], None, |e, a| {
            let (user, password) = (text(&a[0]), text(&a[1]));
            if user.contains(':') {
                return Ok(s(format!("invalid username: {user}")));
            }
            alloc(e, user.len() + 61)?;
            Ok(s(format!("{user}:{}", bcrypt(e, password)?)))
        }),
        def("randBytes", &[Int], None, |e, a| {
            let n = int(&a[0]);
            let Ok(n) = usize::try_from(n) else {
                return Err(Fail::msg("runtime error: makeslice: len out of range"));
            };
            alloc(e, n.saturating_mul(2).saturating_add(4))?;
            let mut buf = vec![0u8; n];
            aws_lc_rs::rand::fill(&mut buf).map_err(|_| Fail::msg("crypto/rand: read failed"))?;
            Ok(s(B64.encode(&buf)))
        }),
        def(
            "derivePassword",
            &[Int, Str, Str, Str, Str],
            None,
            |e, a| {
                let counter = u32::try_from(int(&a[0]))
                    .map_err(|_| Fail::msg(format!("constant {} overflows uint32", int(&a[0]))))?;
                e.budget.steps(DERIVE_PASSWORD_STEPS)?;
                Ok(s(derive_password(
                    counter,
                    text(&a[1]),
                    text(&a[2]),
                    text(&a[3]),
                    text(&a[4]),
                )))
            },
        ),
    ]
}

fn aes_key(password: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    let p = password.as_bytes();
    let n = p.len().min(32);
    key[..n].copy_from_slice(&p[..n]);
    key
}

fn crypto_fail(_: aws_lc_rs::error::Unspecified) -> Fail {
    Fail::msg("crypto/aes: cipher failed")
}

fn encrypt_aes(e: &mut Exec<'_>, password: &str, plaintext: &str) -> R<Val> {
    if plaintext.is_empty() {
        return Ok(s(""));
    }
    let padding = 16 - plaintext.len() % 16;
    let total = 16 + plaintext.len() + padding;
    alloc(e, total.saturating_mul(3))?;
    e.budget.steps((total / 16) as u64)?;
    let mut buf = Vec::with_capacity(total);
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut iv).map_err(crypto_fail)?;
    buf.extend_from_slice(&iv);
    buf.extend_from_slice(plaintext.as_bytes());
    buf.resize(total, padding as u8);
    let key = UnboundCipherKey::new(&AES_256, &aes_key(password)).map_err(crypto_fail)?;
    EncryptingKey::cbc(key)
        .and_then(|k| k.less_safe_encrypt(&mut buf[16..], EncryptionContext::Iv128(iv.into())))
        .map_err(crypto_fail)?;
    Ok(s(B64.encode(&buf)))
}

fn decrypt_aes(e: &mut Exec<'_>, password: &str, crypt64: &str) -> R<Val> {
    if crypt64.is_empty() {
        return Ok(s(""));
    }
    alloc(e, crypt64.len().saturating_mul(2))?;
    e.budget.steps((crypt64.len() / 16) as u64)?;
    let mut crypt = B64.decode(crypt64).map_err(|err| {
        let offset = match err {
            base64::DecodeError::InvalidByte(i, _)
            | base64::DecodeError::InvalidLength(i)
            | base64::DecodeError::InvalidLastSymbol(i, _) => i,
            base64::DecodeError::InvalidPadding => crypt64.len(),
        };
        Fail::msg(format!("illegal base64 data at input byte {offset}"))
    })?;
    // Go slices and pads without checks, and panics on what these refuse.
    if crypt.len() < 16 {
        return Err(Fail::msg(format!(
            "runtime error: slice bounds out of range [:16] with capacity {}",
            crypt.len()
        )));
    }
    let (iv, body) = crypt.split_at_mut(16);
    if body.len() % 16 != 0 {
        return Err(Fail::msg("crypto/cipher: input not full blocks"));
    }
    if body.is_empty() {
        return Err(Fail::msg("runtime error: index out of range [-1]"));
    }
    let iv: [u8; 16] = iv.try_into().map_err(|_| Fail::msg("bad IV"))?;
    let key = UnboundCipherKey::new(&AES_256, &aes_key(password)).map_err(crypto_fail)?;
    let plain = DecryptingKey::cbc(key)
        .and_then(|k| k.decrypt(body, DecryptionContext::Iv128(iv.into())))
        .map_err(crypto_fail)?;
    let pad = usize::from(plain[plain.len() - 1]);
    let Some(end) = plain.len().checked_sub(pad) else {
        return Err(Fail::msg(format!(
            "runtime error: slice bounds out of range [:{}]",
            plain.len() as i64 - pad as i64
        )));
    };
    Ok(s(String::from_utf8_lossy(&plain[..end]).into_owned()))
}

/// Go's `bcrypt.GenerateFromPassword` at its default cost, or Sprig's text for its error.
fn bcrypt(e: &mut Exec<'_>, password: &str) -> R<String> {
    if password.len() > 72 {
        return Ok(
            "failed to encrypt string with bcrypt: bcrypt: password length exceeds 72 bytes".into(),
        );
    }
    e.budget.steps(BCRYPT_STEPS)?;
    alloc(e, 60)?;
    bcrypt::hash_with_result(password, 10)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|err| Fail::msg(format!("bcrypt: {err}")))
}

const SEED: &str = "com.lyndir.masterpassword";

fn templates(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "maximum" => &["anoxxxxxxxxxxxxxxxxx", "axxxxxxxxxxxxxxxxxno"],
        "long" => &[
            "CvcvnoCvcvCvcv",
            "CvcvCvcvnoCvcv",
            "CvcvCvcvCvcvno",
            "CvccnoCvcvCvcv",
            "CvccCvcvnoCvcv",
            "CvccCvcvCvcvno",
            "CvcvnoCvccCvcv",
            "CvcvCvccnoCvcv",
            "CvcvCvccCvcvno",
            "CvcvnoCvcvCvcc",
            "CvcvCvcvnoCvcc",
            "CvcvCvcvCvccno",
            "CvccnoCvccCvcv",
            "CvccCvccnoCvcv",
            "CvccCvccCvcvno",
            "CvcvnoCvccCvcc",
            "CvcvCvccnoCvcc",
            "CvcvCvccCvccno",
            "CvccnoCvcvCvcc",
            "CvccCvcvnoCvcc",
            "CvccCvcvCvccno",
        ],
        "medium" => &["CvcnoCvc", "CvcCvcno"],
        "short" => &["Cvcn"],
        "basic" => &["aaanaaan", "aannaaan", "aaannaaa"],
        "pin" => &["nnnn"],
        _ => return None,
    })
}

fn template_characters(c: u8) -> &'static [u8] {
    match c {
        b'V' => b"AEIOU",
        b'C' => b"BCDFGHJKLMNPQRSTVWXYZ",
        b'v' => b"aeiou",
        b'c' => b"bcdfghjklmnpqrstvwxyz",
        b'A' => b"AEIOUBCDFGHJKLMNPQRSTVWXYZ",
        b'a' => b"AEIOUaeiouBCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz",
        b'n' => b"0123456789",
        b'o' => b"@&%?,=[]_:-+*$#!'^~;()/.",
        _ => b"AEIOUaeiouBCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789!@#$%^&*()",
    }
}

/// Sprig's `derivePassword`: errors come back as the result's text, as Sprig gives them.
fn derive_password(counter: u32, kind: &str, password: &str, user: &str, site: &str) -> String {
    let Some(templates) = templates(kind) else {
        return format!("cannot find password template {kind}");
    };
    let mut salt = SEED.as_bytes().to_vec();
    salt.extend_from_slice(&(user.len() as u32).to_be_bytes());
    salt.extend_from_slice(user.as_bytes());
    let mut key = [0u8; 64];
    let derived = scrypt::Params::new(15, 8, 2)
        .map_err(|err| err.to_string())
        .and_then(|params| {
            scrypt::scrypt(password.as_bytes(), &salt, &params, &mut key)
                .map_err(|err| err.to_string())
        });
    if let Err(err) = derived {
        return format!("failed to derive password: {err}");
    }
    let mut message = SEED.as_bytes().to_vec();
    message.extend_from_slice(&(site.len() as u32).to_be_bytes());
    message.extend_from_slice(site.as_bytes());
    message.extend_from_slice(&counter.to_be_bytes());
    let hkey = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let seed = aws_lc_rs::hmac::sign(&hkey, &message);
    let seed = seed.as_ref();
    let template = templates[usize::from(seed[0]) % templates.len()];
    template
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            let chars = template_characters(c);
            chars[usize::from(seed[i + 1]) % chars.len()] as char
        })
        .collect()
}
