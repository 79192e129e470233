//! How taskhook reaches a message broker from the URL a user wrote: the address, the
//! credentials the URL carries, TLS. Shared by the sources that read from brokers
//! (`taskhook-sources`) and the `publish` action that writes to them (`taskhook-actions`),
//! so both read a URL the same way.
//!
//! AMQP, Kafka and Redis clients take the URL (or the broker list) as it is and need nothing
//! here.

pub mod mqtt;
pub mod nats;

/// A TLS client configuration trusting the system's root certificates.
pub fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
