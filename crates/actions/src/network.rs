//! Which networks the `http` action may connect to, and the pieces that enforce it on every
//! connection: a DNS resolver that drops denied addresses, a check of literal-IP URLs before a
//! request is sent, and a redirect policy that refuses hops to denied literal addresses.
//!
//! The rule: **an address is allowed when it matches some `allow` entry, or when it matches no
//! `deny` entry.** `allow` therefore punches holes in `deny`. IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`) are judged as their IPv4 address, against IPv4 entries and against
//! IPv4-mapped IPv6 entries alike.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use ipnet::IpNet;
use ipnet::Ipv4Net;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The networks denied by default, in the order they are reported.
const DEFAULT_DENY: &[&str] = &[
    // Link-local: the cloud metadata endpoint 169.254.169.254 (AWS, GCP, Azure, OpenStack, …).
    "169.254.0.0/16",
    "fe80::/10",
    // AWS's IPv6 metadata endpoint (inside fd00::/8, which stays allowed as a private range).
    "fd00:ec2::254/128",
    // Alibaba Cloud's metadata endpoint (inside the shared 100.64.0.0/10 range).
    "100.100.100.200/32",
    // "This network" and the unspecified addresses: connecting to them reaches this host.
    "0.0.0.0/8",
    "::/128",
];

/// Why [`NetworkPolicy::check_host`] refused a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The name does not resolve (now): perhaps a passing failure.
    Unresolved(String),
    /// An address of the name is in a denied network.
    Denied(String),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Unresolved(m) | AddressError::Denied(m) => f.write_str(m),
        }
    }
}

/// The CLI flag an operator uses to open a denied network; named in refusals.
const ALLOW_FLAG: &str = "--http-allow-network";

/// Which addresses the `http` action may connect to.
///
/// An address is allowed when it matches some `allow` entry, or when it matches no `deny`
/// entry. [`NetworkPolicy::default`] denies link-local networks (cloud metadata endpoints),
/// the known metadata addresses outside them, and the unspecified addresses; loopback and
/// private ranges stay allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Networks always allowed, even inside a `deny` network.
    pub allow: Vec<IpNet>,
    /// Networks refused unless an `allow` entry matches too.
    pub deny: Vec<IpNet>,
}

impl Default for NetworkPolicy {
    /// No `allow` entries and [`NetworkPolicy::default_deny`].
    fn default() -> Self {
        NetworkPolicy {
            allow: Vec::new(),
            deny: Self::default_deny(),
        }
    }
}

impl NetworkPolicy {
    /// The default policy plus `allow` and `deny` entries; with `no_default_deny` the default deny
    /// list is left out and `deny` is the whole deny list.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>, no_default_deny: bool) -> Self {
        let mut all_deny = if no_default_deny {
            Vec::new()
        } else {
            Self::default_deny()
        };
        for net in deny {
            if !all_deny.contains(&net) {
                all_deny.push(net);
            }
        }
        NetworkPolicy {
            allow,
            deny: all_deny,
        }
    }

    /// A policy that allows every address.
    pub fn allow_all() -> Self {
        NetworkPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    /// The default deny list: `169.254.0.0/16`, `fe80::/10`, `fd00:ec2::254/128`,
    /// `100.100.100.200/32`, `0.0.0.0/8`, `::/128`.
    pub fn default_deny() -> Vec<IpNet> {
        DEFAULT_DENY
            .iter()
            .map(|s| s.parse().expect("default deny networks are valid"))
            .collect()
    }

    /// Parses a network for the command line: `10.0.0.0/8`, `fd00::/8`, or a bare address
    /// (`10.1.2.3` meaning `10.1.2.3/32`, `::1` meaning `::1/128`). Host bits are cleared.
    pub fn parse_network(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(net.trunc());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(IpNet::from(ip));
        }
        Err(format!(
            "invalid network {text:?}: expected an address or CIDR network such as 10.0.0.0/8 or fd00::/8"
        ))
    }

    /// `Ok` when `ip` may be connected to; otherwise the first `deny` network that refuses it.
    pub fn check(&self, ip: IpAddr) -> Result<(), IpNet> {
        let ip = ip.to_canonical();
        if self.allow.iter().any(|net| matches(net, ip)) {
            return Ok(());
        }
        match self.deny.iter().find(|net| matches(net, ip)) {
            Some(net) => Err(*net),
            None => Ok(()),
        }
    }

    /// Resolves `host` and checks every address it has, for clients that connect by name
    /// (broker clients): a name with an address in a denied network is refused. (The client
    /// resolves it again when it connects; a name that changes in between is not caught.)
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), AddressError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AddressError::Unresolved(format!("resolving {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(AddressError::Unresolved(format!("{host} has no address")));
        }
        for a in addrs {
            if let Err(net) = self.check(a.ip()) {
                return Err(AddressError::Denied(format!(
                    "{host} resolves to {}, in the denied network {net} (serve {ALLOW_FLAG} opens it)",
                    a.ip()
                )));
            }
        }
        Ok(())
    }

    /// True when `ip` may be connected to.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }
}

/// Whether `net` holds `ip`, an address already canonical (IPv4-mapped IPv6 turned into IPv4).
/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is matched as the IPv4 network it maps.
fn matches(net: &IpNet, ip: IpAddr) -> bool {
    if let (IpNet::V6(v6), IpAddr::V4(v4)) = (net, ip)
        && v6.prefix_len() >= 96
        && let Some(mapped) = v6.network().to_ipv4_mapped()
    {
        return Ipv4Net::new(mapped, v6.prefix_len() - 96)
            .is_ok_and(|mapped_net| mapped_net.contains(&v4));
    }
    net.contains(&ip)
}

/// A connection the policy refused. Its message names only the host and address, never the
/// URL (which may carry credentials or tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The host name that resolved to `ip`; `None` for a literal address.
    host: Option<String>,
    ip: IpAddr,
    network: IpNet,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            None => write!(
                f,
                "http: {} is in a denied network ({}); see {ALLOW_FLAG}",
                self.ip, self.network
            ),
            Some(host) => write!(
                f,
                "http: {host} resolves only to denied addresses ({} is in the denied network {}); see {ALLOW_FLAG}",
                self.ip, self.network
            ),
        }
    }
}

impl std::error::Error for Denied {}

/// Finds a refusal anywhere in an error's source chain.
pub(crate) fn find_denied<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(denied) = err.downcast_ref::<Denied>() {
            return Some(denied);
        }
        current = err.source();
    }
    None
}

/// Checks a URL whose host is a literal address (which the resolver never sees). Host names
/// pass here: the resolver judges the addresses they resolve to.
pub(crate) fn check_url(policy: &NetworkPolicy, url: &Url) -> Result<(), Denied> {
    let Some(host) = url.host_str() else {
        return Ok(());
    };
    // IPv6 hosts come bracketed; the URL parser writes every IPv4 spelling (`2852039166`,
    // `0xA9FEA9FE`, …) of an http(s) URL in dotted decimal.
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        return Ok(());
    };
    policy.check(ip).map_err(|network| Denied {
        host: None,
        ip,
        network,
    })
}

/// A redirect policy following at most `max` hops and refusing hops to denied literal
/// addresses (hops to host names meet the resolver when they connect).
pub(crate) fn redirect_policy(policy: Arc<NetworkPolicy>, max: usize) -> reqwest::redirect::Policy {
    let limited = reqwest::redirect::Policy::limited(max);
    reqwest::redirect::Policy::custom(move |attempt| match check_url(&policy, attempt.url()) {
        Err(denied) => attempt.error(denied),
        Ok(()) => limited.redirect(attempt),
    })
}

/// Resolves host names with the system resolver (`tokio::net::lookup_host`) and drops every
/// address the policy denies; fails when none is left.
#[derive(Debug, Clone)]
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<NetworkPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_denied = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(network) => {
                        first_denied.get_or_insert((addr.ip(), network));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                return Err(match first_denied {
                    Some((ip, network)) => Box::new(Denied {
                        host: Some(host),
                        ip,
                        network,
                    })
                        as Box<dyn std::error::Error + Send + Sync>,
                    None => format!("{host} resolved to no address").into(),
                });
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn default_denies_metadata_and_unspecified_and_allows_local_services() {
        let p = NetworkPolicy::default();
        for (addr, network) in [
            ("169.254.169.254", "169.254.0.0/16"),
            ("169.254.0.1", "169.254.0.0/16"),
            ("fe80::1", "fe80::/10"),
            ("fd00:ec2::254", "fd00:ec2::254/128"),
            ("100.100.100.200", "100.100.100.200/32"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("::", "::/128"),
            // IPv4-mapped IPv6 is judged as IPv4.
            ("::ffff:169.254.169.254", "169.254.0.0/16"),
            ("::ffff:0.0.0.0", "0.0.0.0/8"),
        ] {
            assert_eq!(p.check(ip(addr)), Err(net(network)), "{addr}");
        }
        for addr in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "fd00::1",
            "100.100.100.201",
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn allow_punches_holes_in_deny() {
        let p = NetworkPolicy::new(vec![net("127.0.0.1/32")], vec![net("127.0.0.0/8")], false);
        assert!(p.is_allowed(ip("127.0.0.1")));
        assert!(p.is_allowed(ip("::ffff:127.0.0.1")));
        assert_eq!(p.check(ip("127.0.0.2")), Err(net("127.0.0.0/8")));
        // The defaults are still there, and can be opened too.
        assert!(!p.is_allowed(ip("169.254.169.254")));
        let p = NetworkPolicy::new(vec![net("169.254.169.254/32")], vec![], false);
        assert!(p.is_allowed(ip("169.254.169.254")));
        assert!(!p.is_allowed(ip("169.254.169.253")));
    }

    #[test]
    fn no_default_deny_replaces_the_deny_list() {
        let p = NetworkPolicy::new(vec![], vec![net("10.0.0.0/8")], true);
        assert_eq!(p.deny, vec![net("10.0.0.0/8")]);
        assert!(p.is_allowed(ip("169.254.169.254")));
        assert!(!p.is_allowed(ip("10.9.9.9")));
        assert!(NetworkPolicy::allow_all().is_allowed(ip("169.254.169.254")));
        let p = NetworkPolicy::new(vec![], vec![net("169.254.0.0/16")], false);
        assert_eq!(
            p.deny,
            NetworkPolicy::default_deny(),
            "duplicates are dropped"
        );
    }

    #[test]
    fn ipv4_mapped_entries_match_ipv4_addresses() {
        let p = NetworkPolicy::new(vec![], vec![net("::ffff:10.0.0.0/104")], true);
        assert!(!p.is_allowed(ip("10.1.1.1")));
        assert!(!p.is_allowed(ip("::ffff:10.1.1.1")));
        assert!(p.is_allowed(ip("11.1.1.1")));
        // A plain IPv6 network does not swallow IPv4 through the mapped range.
        let p = NetworkPolicy::new(vec![], vec![net("::/0")], true);
        assert!(p.is_allowed(ip("10.1.1.1")));
        assert!(p.is_allowed(ip("::ffff:10.1.1.1")));
        assert!(!p.is_allowed(ip("2001:db8::1")));
    }

    #[test]
    fn parse_network_accepts_cidr_and_bare_addresses() {
        assert_eq!(
            NetworkPolicy::parse_network("10.0.0.0/8"),
            Ok(net("10.0.0.0/8"))
        );
        assert_eq!(
            NetworkPolicy::parse_network(" 10.1.2.3/8 "),
            Ok(net("10.0.0.0/8"))
        );
        assert_eq!(
            NetworkPolicy::parse_network("10.1.2.3"),
            Ok(net("10.1.2.3/32"))
        );
        assert_eq!(NetworkPolicy::parse_network("::1"), Ok(net("::1/128")));
        assert_eq!(
            NetworkPolicy::parse_network("fd00::/8"),
            Ok(net("fd00::/8"))
        );
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8"] {
            assert!(NetworkPolicy::parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        let p = NetworkPolicy::default();
        let url = |s: &str| Url::parse(s).unwrap();
        let denied = check_url(&p, &url("http://169.254.169.254/latest/meta-data/")).unwrap_err();
        assert_eq!(
            denied.to_string(),
            "http: 169.254.169.254 is in a denied network (169.254.0.0/16); see --http-allow-network"
        );
        // Other spellings of the same address.
        for other in [
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
        ] {
            assert!(check_url(&p, &url(other)).is_err(), "{other}");
        }
        assert!(check_url(&p, &url("http://127.0.0.1:8080/")).is_ok());
        assert!(check_url(&p, &url("http://example.com/")).is_ok());
    }
}
