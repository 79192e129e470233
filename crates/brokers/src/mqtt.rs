//! MQTT URLs: `mqtt://[user:password@]host[:port]` (port 1883) or `mqtts://…` (TLS, 8883);
//! `tcp://` and `ssl://` are the same.

use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// Connection options for `url` (address, credentials, TLS) under `client_id`, and where it
/// connects (for messages: no password in it). Session settings are the caller's.
pub fn options(url: &str, client_id: String) -> Result<(MqttOptions, String), String> {
    let url = url::Url::parse(url).map_err(|e| format!("mqtt URL: {e}"))?;
    let secure = matches!(url.scheme(), "mqtts" | "ssl");
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err("the mqtt URL has no host".into()),
    };
    let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
    let at = format!("{}:{port}", url.host_str().unwrap_or_default());
    if client_id.starts_with(' ') {
        return Err("the client id must not start with a space".into());
    }
    let mut o = MqttOptions::new(client_id, host, port);
    let decode = |v: &str| {
        percent_decode(v).map_err(|()| "the mqtt URL's user or password is not UTF-8".to_string())
    };
    if !url.username().is_empty() || url.password().is_some() {
        o.set_credentials(
            decode(url.username())?,
            decode(url.password().unwrap_or(""))?,
        );
    }
    if secure {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(crate::tls_config()?),
        )));
    }
    Ok((o, at))
}

fn percent_decode(v: &str) -> Result<String, ()> {
    url::form_urlencoded::parse(format!("x={}", v.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_address_and_credentials() {
        assert_eq!(percent_decode("p%40ss+w").unwrap(), "p@ss+w");
        let (o, at) = options("mqtt://u:p%40ss@broker.example", "c".into()).unwrap();
        assert_eq!(at, "broker.example:1883");
        assert_eq!(o.broker_address(), ("broker.example".to_string(), 1883));
        assert!(options("mqtt://h", " c".into()).is_err());
        let (_, at) = options("mqtts://h", "c".into()).unwrap();
        assert_eq!(at, "h:8883");
    }
}
