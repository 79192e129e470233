//! The client's address, as rate limits and the audit log see it: the TCP peer, or, when the
//! peer is one of `--trusted-proxies`, the address that proxy forwarded (`Forwarded: for=…`,
//! else `X-Forwarded-For`). The forwarding headers of any other peer are ignored, so a client
//! cannot pick its own rate-limit bucket or audit address.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::AppState;
use crate::audit::client_of;

/// The client's address for `req`: see the module documentation.
pub(crate) fn client_ip(s: &AppState, req: &axum::extract::Request) -> Option<IpAddr> {
    let peer = client_of(req).map(|a| a.ip());
    client_address(&s.identity.trusted_proxies, peer, req.headers())
}

/// The client behind `peer`. The hops the proxies recorded are read from the nearest (the
/// right) outward, skipping trusted proxies; the first other address is the client. A hop
/// that is not an address (`unknown`, an obfuscated name, garbage) stops the walk at the
/// last trusted hop, so a forged entry further out is never believed.
pub(crate) fn client_address(
    trusted: &[IpNet],
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let peer = peer.map(unmapped)?;
    if !is_trusted(trusted, peer) {
        return Some(peer);
    }
    let hops = forwarded_hops(headers);
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    Some(client)
}

/// Whether `ip` (an IPv4-mapped address as its IPv4 address) is in one of `trusted`.
pub(crate) fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = unmapped(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The `for=` values of every `Forwarded` header (RFC 7239), in order; when there is none,
/// the entries of every `X-Forwarded-For` header.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let text = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .collect::<Vec<_>>()
    };
    let forwarded: Vec<String> = text("forwarded")
        .iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| v.trim().trim_matches('"').to_string())
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    text("x-forwarded-for")
}

/// An address as a hop names it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(unmapped(ip));
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(unmapped(sa.ip()));
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(unmapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = headers(&[("X-Forwarded-For", "203.0.113.7")]);
        assert_eq!(
            client_address(&trusted, Some(ip("10.1.2.3")), &xff),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(&trusted, Some(ip("198.51.100.9")), &xff),
            Some(ip("198.51.100.9")),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_address(&[], Some(ip("10.1.2.3")), &xff),
            Some(ip("10.1.2.3")),
            "no trusted proxies: always the peer"
        );
        assert_eq!(
            client_address(&trusted, Some(ip("::ffff:10.1.2.3")), &xff),
            Some(ip("203.0.113.7")),
            "an IPv4-mapped peer is its IPv4 address"
        );
        assert_eq!(
            client_address(&trusted, Some(ip("10.1.2.3")), &HeaderMap::new()),
            Some(ip("10.1.2.3")),
            "a trusted peer without headers is the client"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = Some(ip("10.0.0.1"));
        // A client-supplied entry on the left cannot override what the proxies recorded.
        let h = headers(&[("X-Forwarded-For", "1.2.3.4, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_address(&trusted, peer, &h), Some(ip("203.0.113.7")));
        // Several headers are one list, in order.
        let h = headers(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "203.0.113.8"),
        ]);
        assert_eq!(client_address(&trusted, peer, &h), Some(ip("203.0.113.8")));
        // Garbage nearest the proxy: the proxy itself is the client.
        let h = headers(&[("X-Forwarded-For", "203.0.113.7, nonsense")]);
        assert_eq!(client_address(&trusted, peer, &h), peer);
        // Only trusted hops: the farthest of them.
        let h = headers(&[("X-Forwarded-For", "10.9.9.9, 10.0.0.2")]);
        assert_eq!(client_address(&trusted, peer, &h), Some(ip("10.9.9.9")));
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = Some(ip("10.0.0.1"));
        let h = headers(&[
            (
                "Forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("X-Forwarded-For", "198.51.100.1"),
        ]);
        assert_eq!(
            client_address(&trusted, peer, &h),
            Some(ip("2001:db8:cafe::17"))
        );
        let h = headers(&[("Forwarded", "for=192.0.2.43:8080")]);
        assert_eq!(client_address(&trusted, peer, &h), Some(ip("192.0.2.43")));
        let h = headers(&[("Forwarded", "for=unknown")]);
        assert_eq!(client_address(&trusted, peer, &h), peer);
    }
}
