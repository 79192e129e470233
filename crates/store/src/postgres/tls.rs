//! TLS for PostgreSQL connections, chosen by the database URL as libpq chooses it.
//!
//! `sslmode` takes libpq's values: `disable` (plain TCP), `prefer` (the default: TLS when the
//! server offers it, the certificate not checked), `require` (TLS or no connection; the
//! certificate is checked against `sslrootcert` when one is given, as libpq does),
//! `verify-ca` (the certificate chains to a trusted root) and `verify-full` (it also names the
//! host connected to). `sslrootcert` is a PEM file of trusted roots, or `system` for the
//! operating system's; without it the verifying modes use the system's. libpq's `allow` is
//! refused (it tries plain TCP first, which tokio-postgres cannot). PostgreSQL has no TLS over
//! Unix sockets: a URL whose hosts are all sockets connects in plain, and refuses the modes
//! that require TLS.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` only, and no `sslrootcert`: both
//! are taken out of the URL here, before it parses the rest.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::Config;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Result, StoreError};

/// libpq's `sslmode` values that taskhook supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(invalid(
                    "sslmode=allow is not supported (it tries plain TCP first): use disable, prefer or require",
                ));
            }
            other => {
                return Err(invalid(&format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// How connections to one database are made: plain, or through rustls.
#[derive(Clone)]
pub(crate) enum PgTls {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// Parses a database URL (URL or `key=value` form) into tokio-postgres' configuration and
/// the TLS connector its `sslmode` and `sslrootcert` ask for.
pub(crate) fn parse(url: &str) -> Result<(Config, PgTls)> {
    let (rest, mode, root) = take_tls_params(url)?;
    let mut config: Config = rest
        .parse()
        .map_err(|e| invalid(&format!("invalid PostgreSQL URL: {e}")))?;
    let mode = mode.unwrap_or(SslMode::Prefer);
    let sockets_only = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    if mode == SslMode::Disable || sockets_only {
        if sockets_only && mode != SslMode::Disable && mode != SslMode::Prefer {
            return Err(invalid(
                "this sslmode requires TLS, which PostgreSQL does not offer over a Unix socket: give a TCP host",
            ));
        }
        config.ssl_mode(PgSslMode::Disable);
        return Ok((config, PgTls::Plain));
    }
    config.ssl_mode(if mode == SslMode::Prefer {
        PgSslMode::Prefer
    } else {
        PgSslMode::Require
    });
    let tls = client_config(mode, root.as_deref())?;
    Ok((config, PgTls::Rustls(MakeRustlsConnect::new(tls))))
}

fn invalid(message: &str) -> StoreError {
    StoreError::Database(message.to_string())
}

/// Takes `sslmode` and `sslrootcert` out of a URL; returns the rest and both values.
fn take_tls_params(url: &str) -> Result<(String, Option<SslMode>, Option<String>)> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: String| -> Result<bool> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| invalid(&format!("invalid PostgreSQL URL: {key} is not UTF-8")))?;
            if !take(key, value.into_owned())? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, mode, root));
    }
    // key=value form: values may be single-quoted, with backslash escapes.
    let mut kept = Vec::new();
    for (key, value) in key_values(url)? {
        if !take(&key, value.clone())? {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// The pairs of a `key=value` connection string, as libpq reads them.
fn key_values(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(&format!(
                "invalid PostgreSQL connection string: {key:?} has no value"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(invalid(
                            "invalid PostgreSQL connection string: unterminated quoted value",
                        ));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(mode: SslMode, root: Option<&str>) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&format!("cannot set up TLS: {e}")))?;
    // libpq's `require` checks the chain when a root certificate is given, and nothing otherwise.
    let verify = match mode {
        SslMode::Prefer => Verify::Nothing,
        SslMode::Require if root.is_none() => Verify::Nothing,
        SslMode::Require | SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull | SslMode::Disable => Verify::ChainAndName,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AcceptAnyCertificate(provider)),
        Verify::Chain | Verify::ChainAndName => {
            let roots = Arc::new(root_store(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| invalid(&format!("cannot set up TLS: {e}")))?;
            if verify == Verify::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// The trusted roots: the PEM file `sslrootcert` names, or the system's.
fn root_store(root: Option<&str>) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match root {
        Some(path) if path != "system" => {
            let certs = CertificateDer::pem_file_iter(Path::new(path))
                .map_err(|e| invalid(&format!("cannot read sslrootcert {path:?}: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("cannot read sslrootcert {path:?}: {e}")))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid(&format!(
                    "sslrootcert {path:?} holds no usable certificate"
                )));
            }
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(invalid(
                    "no system root certificates found: give sslrootcert=PATH to a PEM file",
                ));
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must reach a trusted root; the name in the certificate may differ
/// from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The name is checked after the chain: a name error means the chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`, and `require` without a root: encryption without checking who answers, as libpq
/// does. The handshake's signatures are still checked against the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, Option<SslMode>, Option<String>) {
        take_tls_params(url).unwrap()
    }

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        assert_eq!(
            parts(
                "postgres://u@h:5432/db?sslmode=verify-full&options=-c%20x%3D1&sslrootcert=%2Ftmp%2Fca.pem"
            ),
            (
                "postgres://u@h:5432/db?options=-c%20x%3D1".to_string(),
                Some(SslMode::VerifyFull),
                Some("/tmp/ca.pem".to_string())
            )
        );
        assert_eq!(
            parts("postgresql://h/db?sslmode=disable"),
            (
                "postgresql://h/db".to_string(),
                Some(SslMode::Disable),
                None
            )
        );
        assert_eq!(
            parts("postgres://h/db"),
            ("postgres://h/db".to_string(), None, None)
        );
        assert_eq!(
            parts("host=h  user = u sslmode=verify-ca sslrootcert='/a b/c\\'d.pem' dbname=x"),
            (
                "host='h' user='u' dbname='x'".to_string(),
                Some(SslMode::VerifyCa),
                Some("/a b/c'd.pem".to_string())
            )
        );
    }

    #[test]
    fn bad_tls_parameters_are_refused_by_name() {
        for (url, needle) in [
            ("postgres://h/db?sslmode=allow", "sslmode=allow"),
            ("postgres://h/db?sslmode=verify", "\"verify\""),
            ("host=h sslmode=bogus", "\"bogus\""),
            ("host=h sslrootcert='unterminated", "unterminated"),
            ("host=h dbname", "has no value"),
        ] {
            let Err(e) = parse(url) else {
                panic!("{url} was accepted")
            };
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
        let Err(e) = parse("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
        else {
            panic!("a missing root file was accepted")
        };
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn modes_map_to_the_driver_and_sockets_stay_plain() {
        let (c, tls) = parse("postgres://h/db").unwrap();
        assert_eq!(c.get_ssl_mode(), PgSslMode::Prefer);
        assert!(matches!(tls, PgTls::Rustls(_)));
        let (c, tls) = parse("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(c.get_ssl_mode(), PgSslMode::Disable);
        assert!(matches!(tls, PgTls::Plain));
        let (c, _) = parse("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
        let (c, tls) = parse("host=/var/run/postgresql dbname=x").unwrap();
        assert_eq!(c.get_ssl_mode(), PgSslMode::Disable);
        assert!(matches!(tls, PgTls::Plain));
        let Err(e) = parse("host=/var/run/postgresql sslmode=require") else {
            panic!("TLS over a socket was accepted")
        };
        assert!(e.to_string().contains("Unix socket"), "{e}");
    }
}
