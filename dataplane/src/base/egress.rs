//! Where the dataplane may connect: every outbound connection (providers, MCP servers,
//! token URLs) is checked against an egress policy after DNS resolution, on every
//! connect. Loopback, link-local (cloud metadata), private, shared (CGNAT), multicast and
//! reserved addresses are denied unless allowed, globally or for the namespace whose
//! object names the endpoint; operators add their cluster's pod and service ranges with
//! `--egress-deny` when those are public addresses.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;

/// An address range, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address range such as 10.0.0.0/8"))?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("{s:?}: the prefix length is 0 to {most}"))?,
            None => most,
        };
        Ok(Self { addr, prefix })
    }
}

impl Net {
    const fn v4(a: [u8; 4], prefix: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Ranges no outbound connection reaches unless allowed: this host, its links, private
/// networks and everything that is not the public internet (RFC 6890's special-purpose
/// registries).
const DENIED: [Net; 17] = [
    Net::v4([0, 0, 0, 0], 8),
    Net::v4([10, 0, 0, 0], 8),
    Net::v4([100, 64, 0, 0], 10),
    Net::v4([127, 0, 0, 0], 8),
    Net::v4([169, 254, 0, 0], 16),
    Net::v4([172, 16, 0, 0], 12),
    Net::v4([192, 0, 0, 0], 24),
    Net::v4([192, 168, 0, 0], 16),
    Net::v4([198, 18, 0, 0], 15),
    Net::v4([224, 0, 0, 0], 4),
    Net::v4([240, 0, 0, 0], 4),
    Net::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
    Net::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    Net::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
    Net::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    Net::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
    // Documentation and benchmarking ranges are not anyone's service either.
    Net::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
];

/// The egress policy of the process.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Allowed for every namespace.
    pub allow: Vec<Net>,
    /// Allowed for objects of one namespace.
    pub allow_in: BTreeMap<String, Vec<Net>>,
    /// Denied besides the built-in ranges (the cluster's own, when public).
    pub deny: Vec<Net>,
}

/// One `--egress-allow` value: `CIDR` or `NAMESPACE=CIDR`.
pub fn parse_allow(s: &str) -> Result<(Option<String>, Net), String> {
    match s.split_once('=') {
        Some((ns, net)) if !ns.is_empty() => Ok((Some(ns.to_string()), net.parse()?)),
        _ => Ok((None, s.parse()?)),
    }
}

/// The addresses a connection is checked as: an IPv4 address mapped or translated into
/// IPv6 is judged as the IPv4 address it reaches.
fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96, NAT64.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        v4 => v4,
    }
}

/// What one namespace's objects may reach.
#[derive(Clone, Debug)]
pub struct Rules {
    allow: Vec<Net>,
    deny: Vec<Net>,
}

impl Rules {
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = effective(ip);
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        !DENIED.iter().chain(&self.deny).any(|n| n.contains(ip))
    }
}

impl Policy {
    /// The rules for objects of `namespace` (`None`: the global rules).
    pub fn rules(&self, namespace: Option<&str>) -> Rules {
        let mut allow = self.allow.clone();
        if let Some(extra) = namespace.and_then(|ns| self.allow_in.get(ns)) {
            allow.extend(extra);
        }
        Rules {
            allow,
            deny: self.deny.clone(),
        }
    }
}

/// The error of a connection the policy refused. Its text names no address.
#[derive(Debug, thiserror::Error)]
#[error("the egress policy does not allow this destination")]
pub struct Denied;

/// Resolves names with the system resolver and keeps only addresses the rules permit.
#[derive(Clone, Debug)]
pub struct Resolver(pub Arc<Rules>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let rules = self.0.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> = found.filter(|a| rules.permits(a.ip())).collect();
            if permitted.is_empty() {
                tracing::warn!(
                    host = name.as_str(),
                    "egress denied: the name resolves only to denied addresses"
                );
                return Err(Box::new(Denied) as BoxError);
            }
            Ok(permitted.into_iter())
        })
    }
}

/// An HTTP connector that checks every destination against the rules: names through
/// [`Resolver`] (after resolution, on every connect), literal addresses here.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpConnector<Resolver>,
    rules: Arc<Rules>,
}

impl Connector {
    pub fn new(rules: Rules) -> Self {
        let rules = Arc::new(rules);
        Self {
            inner: HttpConnector::new_with_resolver(Resolver(rules.clone())),
            rules,
        }
    }

    pub fn http(&mut self) -> &mut HttpConnector<Resolver> {
        &mut self.inner
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = <HttpConnector<Resolver> as tower_service::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(ip) = literal
            && !self.rules.permits(ip)
        {
            tracing::warn!(host = %ip, "egress denied");
            return Box::pin(async { Err(Box::new(Denied) as BoxError) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_denied_and_the_internet_is_not() {
        let rules = Policy::default().rules(None);
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!rules.permits(ip(denied)), "{denied}");
        }
        for allowed in ["8.8.8.8", "172.32.0.1", "104.18.0.1", "2606:4700::1111"] {
            assert!(rules.permits(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn allowed_ranges_open_globally_or_for_one_namespace() {
        let mut policy = Policy::default();
        let (ns, net) = parse_allow("team-a=10.20.0.0/16").unwrap();
        policy.allow_in.entry(ns.unwrap()).or_default().push(net);
        let (ns, net) = parse_allow("127.0.0.1").unwrap();
        assert!(ns.is_none());
        policy.allow.push(net);
        policy.deny.push("8.8.0.0/16".parse().unwrap());
        let a = policy.rules(Some("team-a"));
        let b = policy.rules(Some("team-b"));
        assert!(a.permits(ip("10.20.3.4")) && !b.permits(ip("10.20.3.4")));
        assert!(!a.permits(ip("10.21.0.1")));
        assert!(a.permits(ip("127.0.0.1")) && b.permits(ip("127.0.0.1")));
        assert!(!a.permits(ip("127.0.0.2")));
        assert!(!b.permits(ip("8.8.8.8")), "a denied public range");
    }

    #[test]
    fn ranges_parse_or_say_why_not() {
        assert_eq!(
            "10.0.0.0/8".parse::<Net>().unwrap(),
            Net::v4([10, 0, 0, 0], 8)
        );
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("example.com/8".parse::<Net>().is_err());
        assert!("::/0".parse::<Net>().unwrap().contains(ip("2001::1")));
        assert!("0.0.0.0/0".parse::<Net>().unwrap().contains(ip("1.2.3.4")));
    }

    #[tokio::test]
    async fn names_are_judged_by_the_addresses_they_resolve_to() {
        use tower_service::Service;
        let mut denied = Resolver(Arc::new(Policy::default().rules(None)));
        let name: Name = "localhost".parse().unwrap();
        assert!(denied.call(name.clone()).await.is_err());
        let mut policy = Policy::default();
        policy.allow.push("127.0.0.0/8".parse().unwrap());
        policy.allow.push("::1".parse().unwrap());
        let mut allowed = Resolver(Arc::new(policy.rules(None)));
        assert!(allowed.call(name).await.unwrap().next().is_some());
    }
}
