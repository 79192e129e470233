//! Sprig's private keys and certificates: `genPrivateKey` (PEM as Go's `x509` writes
//! it: `RSA PRIVATE KEY` in PKCS#1, `EC PRIVATE KEY` in SEC 1, `PRIVATE KEY` in PKCS#8
//! for ed25519), `genCA`, `genSelfSignedCert`, `genSignedCert`, their `…WithKey` forms
//! taking a PEM key, and `buildCustomCert`. Certificates come back as Sprig's
//! `certificate` struct, whose `.Cert` and `.Key` are PEM texts. Keys are made with
//! aws-lc-rs and certificates with rcgen over it. DSA keys (deprecated, and with no
//! maintained Rust implementation) are refused.

use std::net::IpAddr;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
    EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair,
};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::super::exec::{Exec, Fail, R};
use super::super::value::{GoStruct, Val};
use super::P::*;
use super::{FuncDef, alloc, def, int, s, text};

/// Steps a 4096-bit RSA key costs to generate (up to seconds of work).
pub(crate) const RSA_4096_STEPS: u64 = 500_000;
/// Steps a 2048-bit RSA key costs to generate.
pub(crate) const RSA_2048_STEPS: u64 = 100_000;
/// Steps any other key, or a signature, costs.
pub(crate) const KEY_STEPS: u64 = 1_000;

/// What a template learns when it asks for a DSA key.
pub(crate) const DSA_REFUSED: &str = "DSA keys are not supported here (DSA is deprecated, \
     and no maintained Rust implementation generates them); use \"rsa\", \"ecdsa\" or \"ed25519\"";

pub(super) fn defs() -> Vec<FuncDef> {
    vec![
        def("genPrivateKey", &[Str], None, |e, a| {
            let key = match text(&a[0]) {
                "" | "rsa" => generate_rsa(e, KeySize::Rsa4096, RSA_4096_STEPS)?,
                "ecdsa" => {
                    e.budget.steps(KEY_STEPS)?;
                    let k = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
                        .map_err(|_| Fail::msg("failed to generate private key"))?;
                    ec_key(&k)?
                }
                "ed25519" => {
                    e.budget.steps(KEY_STEPS)?;
                    let k = Ed25519KeyPair::generate()
                        .map_err(|_| Fail::msg("failed to generate private key"))?;
                    ed_key(&k)?
                }
                "dsa" => return Err(Fail::msg(DSA_REFUSED)),
                other => return Ok(s(format!("Unknown type {other}"))),
            };
            alloc(e, key.pem.len())?;
            Ok(s(key.pem))
        }),
        def("genCA", &[Str, Int], None, |e, a| {
            let key = generate_rsa(e, KeySize::Rsa2048, RSA_2048_STEPS)?;
            ca(e, text(&a[0]), int(&a[1]), key)
        }),
        def("genCAWithKey", &[Str, Int, Str], None, |e, a| {
            let key = parse_key(text(&a[2]))
                .map_err(|err| Fail::msg(format!("parsing private key: {err}")))?;
            ca(e, text(&a[0]), int(&a[1]), key)
        }),
        def("genSelfSignedCert", &[Str, Any, Any, Int], None, |e, a| {
            let key = generate_rsa(e, KeySize::Rsa2048, RSA_2048_STEPS)?;
            self_signed(e, &a, key)
        }),
        def(
            "genSelfSignedCertWithKey",
            &[Str, Any, Any, Int, Str],
            None,
            |e, a| {
                let key = parse_key(text(&a[4]))
                    .map_err(|err| Fail::msg(format!("parsing private key: {err}")))?;
                self_signed(e, &a, key)
            },
        ),
        def(
            "genSignedCert",
            &[Str, Any, Any, Int, Cert],
            None,
            |e, a| {
                let key = generate_rsa(e, KeySize::Rsa2048, RSA_2048_STEPS)?;
                signed(e, &a, key)
            },
        ),
        def(
            "genSignedCertWithKey",
            &[Str, Any, Any, Int, Cert, Str],
            None,
            |e, a| {
                let key = parse_key(text(&a[5]))
                    .map_err(|err| Fail::msg(format!("parsing private key: {err}")))?;
                signed(e, &a, key)
            },
        ),
        def("buildCustomCert", &[Str, Str], None, build_custom_cert),
    ]
}

/// A private key: its PEM as Sprig writes it, and its PKCS#8 form for signing.
struct Key {
    pem: String,
    pkcs8: Vec<u8>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn generate_rsa(e: &mut Exec<'_>, size: KeySize, steps: u64) -> R<Key> {
    e.budget.steps(steps)?;
    let k = aws_lc_rs::rsa::KeyPair::generate(size)
        .map_err(|_| Fail::msg("error generating rsa key"))?;
    rsa_key(&k).map_err(Fail::msg)
}

fn rsa_key(k: &aws_lc_rs::rsa::KeyPair) -> Result<Key, String> {
    let pkcs8 = k
        .as_der()
        .map_err(|_| "encoding the RSA key failed".to_string())?
        .as_ref()
        .to_vec();
    let pkcs1 = pkcs8_inner_key(&pkcs8).ok_or("encoding the RSA key failed")?;
    Ok(Key {
        pem: pem("RSA PRIVATE KEY", pkcs1),
        pkcs8,
    })
}

fn ec_key(k: &EcdsaKeyPair) -> R<Key> {
    let fail = |_| Fail::msg("encoding the EC key failed");
    let sec1 = k.private_key().as_der().map_err(fail)?;
    Ok(Key {
        pem: pem("EC PRIVATE KEY", sec1.as_ref()),
        pkcs8: k.to_pkcs8v1().map_err(fail)?.as_ref().to_vec(),
    })
}

fn ed_key(k: &Ed25519KeyPair) -> R<Key> {
    let pkcs8 = k
        .to_pkcs8v1()
        .map_err(|_| Fail::msg("encoding the ed25519 key failed"))?
        .as_ref()
        .to_vec();
    Ok(Key {
        pem: pem("PRIVATE KEY", &pkcs8),
        pkcs8,
    })
}

/// One DER element at the start of `d`: its tag, its contents and what follows.
fn der_element(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = d.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The `privateKey` octet string of a PKCS#8 `PrivateKeyInfo` (for RSA, the PKCS#1 key).
fn pkcs8_inner_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der_element(pkcs8)? else {
        return None;
    };
    let (0x02, _, rest) = der_element(body)? else {
        return None;
    };
    let (0x30, _, rest) = der_element(rest)? else {
        return None;
    };
    let (0x04, key, _) = der_element(rest)? else {
        return None;
    };
    Some(key)
}

/// The first PEM block of `text`: its label and decoded bytes.
fn pem_decode(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let after = &text[start + 11..];
    let label_end = after.find("-----")?;
    let label = &after[..label_end];
    let body = &after[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label.to_string(), der))
}

const EC_ALGS: [&EcdsaSigningAlgorithm; 3] = [
    &ECDSA_P256_SHA256_ASN1_SIGNING,
    &ECDSA_P384_SHA384_ASN1_SIGNING,
    &ECDSA_P521_SHA512_ASN1_SIGNING,
];

/// Sprig's `parsePrivateKeyPEM`: PKCS#8, PKCS#1 RSA or SEC 1 EC keys, with Go's errors.
fn parse_key(text: &str) -> Result<Key, String> {
    let (label, der) = pem_decode(text).ok_or("no PEM data in input")?;
    if label == "PRIVATE KEY" {
        if let Ok(k) = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der) {
            return rsa_key(&k);
        }
        for alg in EC_ALGS {
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, &der) {
                return ec_key(&k).map_err(|_| "encoding the EC key failed".to_string());
            }
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return ed_key(&k).map_err(|_| "encoding the ed25519 key failed".to_string());
        }
        return Err(
            "decoding PEM as PKCS#8: x509: failed to parse private key (unknown or invalid key type)"
                .into(),
        );
    }
    let Some(kind) = label.strip_suffix(" PRIVATE KEY") else {
        return Err(format!("no private key data in PEM block of type {label}"));
    };
    match kind {
        "RSA" => aws_lc_rs::rsa::KeyPair::from_der(&der)
            .map_err(|err| format!("parsing RSA private key from PEM: {err}"))
            .and_then(|k| rsa_key(&k)),
        "EC" => {
            for alg in EC_ALGS {
                if let Ok(k) = EcdsaKeyPair::from_private_key_der(alg, &der) {
                    return ec_key(&k).map_err(|_| "encoding the EC key failed".to_string());
                }
            }
            Err("parsing EC private key from PEM: x509: unknown elliptic curve".into())
        }
        "DSA" => Err(DSA_REFUSED.into()),
        _ => Err(format!("invalid private key type {label}")),
    }
}

/// The `[]interface{}` of strings Sprig takes for IPs and DNS names (nil is none).
fn strings(v: &Val, what: &str) -> R<Vec<String>> {
    match v {
        Val::Missing | Val::Nil => Ok(Vec::new()),
        Val::List(items) => items
            .iter()
            .map(|i| match i {
                Val::Str(t) => Ok(t.to_string()),
                other => {
                    let mut c = super::super::value::Capped::new(1 << 10);
                    let _ = c.write_v(other);
                    Err(Fail::msg(format!("{what}: {} is not a string", c.text)))
                }
            })
            .collect(),
        other => Err(Fail::msg(format!(
            "wrong type for value; expected []interface {{}}; got {}",
            other.type_name()
        ))),
    }
}

/// Sprig's `getBaseCertTemplate`: CN only, IP and DNS names, valid from now for
/// `days` days, for server and client authentication.
fn base_params(cn: &str, ips: &Val, dns: &Val, days: i64) -> R<CertificateParams> {
    let mut addrs = Vec::new();
    for ip in strings(ips, "error parsing ip")? {
        let addr =
            IpAddr::from_str(&ip).map_err(|_| Fail::msg(format!("error parsing ip: {ip}")))?;
        addrs.push(SanType::IpAddress(addr));
    }
    // Go writes DNS names before IP addresses.
    let mut sans = Vec::new();
    for name in strings(dns, "error processing alternate dns name")? {
        let ia5 = name.as_str().try_into().map_err(|_| {
            Fail::msg(format!(
                "error creating certificate: x509: {name:?} cannot be encoded as an IA5String"
            ))
        })?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(addrs);
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| Fail::msg("crypto/rand: read failed"))?;
    let now = SystemTime::now();
    let span = Duration::from_secs(days.unsigned_abs().saturating_mul(86_400));
    let end = if days >= 0 {
        now.checked_add(span)
    } else {
        now.checked_sub(span)
    }
    .ok_or_else(|| Fail::msg("error creating certificate: validity out of range"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.subject_alt_names = sans;
    params.not_before = now.into();
    params.not_after = end.into();
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    Ok(params)
}

fn key_pair(key: &Key) -> R<KeyPair> {
    KeyPair::try_from(key.pkcs8.as_slice())
        .map_err(|err| Fail::msg(format!("error creating certificate: {err}")))
}

fn certificate(e: &mut Exec<'_>, cert_pem: String, key_pem: String) -> R<Val> {
    alloc(e, cert_pem.len() + key_pem.len())?;
    Ok(Val::Struct(
        GoStruct::Cert {
            cert: cert_pem,
            key: key_pem,
        }
        .into(),
    ))
}

fn create_error(err: rcgen::Error) -> Fail {
    Fail::msg(format!("error creating certificate: {err}"))
}

fn ca(e: &mut Exec<'_>, cn: &str, days: i64, key: Key) -> R<Val> {
    e.budget.steps(KEY_STEPS)?;
    let mut params = base_params(cn, &Val::Nil, &Val::Nil, days)?;
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let kp = key_pair(&key)?;
    let cert = params.self_signed(&kp).map_err(create_error)?;
    certificate(e, cert.pem(), key.pem)
}

fn self_signed(e: &mut Exec<'_>, a: &[Val], key: Key) -> R<Val> {
    e.budget.steps(KEY_STEPS)?;
    let params = base_params(text(&a[0]), &a[1], &a[2], int(&a[3]))?;
    let kp = key_pair(&key)?;
    let cert = params.self_signed(&kp).map_err(create_error)?;
    certificate(e, cert.pem(), key.pem)
}

fn signed(e: &mut Exec<'_>, a: &[Val], key: Key) -> R<Val> {
    e.budget.steps(KEY_STEPS)?;
    let Val::Struct(st) = &a[4] else {
        return Err(Fail::msg(
            "wrong type for value; expected sprig.certificate",
        ));
    };
    let GoStruct::Cert {
        cert: ca_cert,
        key: ca_key,
    } = &**st
    else {
        return Err(Fail::msg(
            "wrong type for value; expected sprig.certificate",
        ));
    };
    let Some((_, ca_der)) = pem_decode(ca_cert) else {
        return Err(Fail::msg("unable to decode certificate"));
    };
    let ca_key =
        parse_key(ca_key).map_err(|err| Fail::msg(format!("error parsing private key: {err}")))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der.into(), key_pair(&ca_key)?).map_err(|err| {
        Fail::msg(format!(
            "error parsing certificate: decodedSignerCert.Bytes: {err}"
        ))
    })?;
    let mut params = base_params(text(&a[0]), &a[1], &a[2], int(&a[3]))?;
    params.use_authority_key_identifier_extension = true;
    let kp = key_pair(&key)?;
    let cert = params.signed_by(&kp, &issuer).map_err(create_error)?;
    certificate(e, cert.pem(), key.pem)
}

fn build_custom_cert(e: &mut Exec<'_>, a: Vec<Val>) -> R<Val> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let cert = b64
        .decode(text(&a[0]))
        .map_err(|_| Fail::msg("unable to decode base64 certificate"))?;
    let key = b64
        .decode(text(&a[1]))
        .map_err(|_| Fail::msg("unable to decode base64 private key"))?;
    let cert = String::from_utf8_lossy(&cert).into_owned();
    let key = String::from_utf8_lossy(&key).into_owned();
    let Some((_, der)) = pem_decode(&cert) else {
        return Err(Fail::msg("unable to decode certificate"));
    };
    x509_parser::parse_x509_certificate(&der).map_err(|err| {
        Fail::msg(format!(
            "error parsing certificate: decodedCert.Bytes: {err}"
        ))
    })?;
    parse_key(&key).map_err(|err| Fail::msg(format!("error parsing private key: {err}")))?;
    certificate(e, cert, key)
}
