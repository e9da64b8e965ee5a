//! Who the client is, as far as the network tells: the socket's peer, or the address a
//! trusted proxy put in `X-Forwarded-For`. Limits key on it; domains never read headers.
use std::net::{IpAddr, Ipv6Addr};

// A name given as text would be parsed and checked on every request.
use actix_web::{HttpRequest, http::header::X_FORWARDED_FOR};
use ipnet::IpNet;

/// The client's address, decided once per request or socket at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client of `req`: its peer, unless the peer is a trusted proxy, in which case the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries further
    /// left were written by the client and prove nothing).
    pub fn of(req: &HttpRequest, trusted: &[IpNet]) -> Self {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let forwarded = req
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|v| v.to_str().ok());
        Self::resolve(peer, forwarded, trusted)
    }

    fn resolve<'a>(
        peer: IpAddr,
        forwarded: impl Iterator<Item = &'a str>,
        trusted: &[IpNet],
    ) -> Self {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
        if !is_trusted(&peer) {
            return Self(peer);
        }
        let chain: Vec<IpAddr> = forwarded
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .collect();
        let client = chain
            .iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .or_else(|| chain.first())
            .copied()
            .unwrap_or(peer);
        Self(canonical(client))
    }

    /// The key that per-client limits count under: the address, or for IPv6 its /64 (one
    /// subscriber usually holds a whole /64, so per-address keys there would be free to mint).
    pub fn limit_key(&self) -> IpAddr {
        match canonical(self.0) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let c = ClientAddr::resolve(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &[]);
        assert_eq!(c.0, ip("203.0.113.9"));
    }

    #[test]
    fn a_trusted_proxy_names_the_right_most_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let c = ClientAddr::resolve(
            ip("10.0.0.2"),
            ["6.6.6.6, 198.51.100.7", "10.0.0.5"].into_iter(),
            &trusted,
        );
        // 6.6.6.6 is whatever the client claimed; 198.51.100.7 is who reached our proxies.
        assert_eq!(c.0, ip("198.51.100.7"));
    }

    #[test]
    fn a_trusted_proxy_without_a_header_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let c = ClientAddr::resolve(ip("10.0.0.2"), std::iter::empty(), &trusted);
        assert_eq!(c.0, ip("10.0.0.2"));
    }

    #[test]
    fn the_address_is_read_from_a_requests_peer_and_its_forwarded_for_header() {
        let req = |peer: &str| {
            actix_web::test::TestRequest::default()
                .peer_addr(peer.parse().expect("socket address"))
                .insert_header(("X-Forwarded-For", "6.6.6.6, 198.51.100.7"))
                .to_http_request()
        };
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            ClientAddr::of(&req("10.0.0.2:5000"), &trusted).0,
            ip("198.51.100.7")
        );
        assert_eq!(
            ClientAddr::of(&req("203.0.113.9:5000"), &trusted).0,
            ip("203.0.113.9")
        );
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a = ClientAddr(ip("2001:db8:1:2:aaaa::1")).limit_key();
        let b = ClientAddr(ip("2001:db8:1:2:bbbb::9")).limit_key();
        assert_eq!(a, b);
        assert_eq!(
            ClientAddr(ip("::ffff:192.0.2.1")).limit_key(),
            ip("192.0.2.1")
        );
    }
}
