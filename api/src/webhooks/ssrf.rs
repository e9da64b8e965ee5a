//! The SSRF guard for webhook URLs.
//!
//! A webhook URL is chosen by a tenant, and the server then makes requests to
//! it from inside our network. Without a guard a tenant could point a webhook
//! at `http://169.254.169.254/` (cloud metadata), at `localhost` admin ports or
//! at anything else on the private network. The guard runs twice:
//!
//! - at save time ([`parse_webhook_url`] + [`check_url`]), so that a tenant gets
//!   a clear error right away;
//! - at connect time ([`GuardedResolver`] inside the delivery client, plus the
//!   client's own check of IP-literal hosts), because DNS answers can change
//!   between saving and delivering (DNS rebinding).
//!
//! Everything here can be switched off with `PARLEY_ALLOW_PRIVATE_WEBHOOKS`
//! (the `allow_private` flags), which exists for local development only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// How long a save-time DNS lookup may take: a slow resolver must not hold a request.
const LOOKUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The setting that turns the guard off; every refusal names it so that a
/// developer who runs a receiver on localhost knows what to do.
pub const ALLOW_PRIVATE_SETTING: &str = "PARLEY_ALLOW_PRIVATE_WEBHOOKS";

/// The longest webhook URL accepted, in characters.
pub const MAX_URL_LEN: usize = 2048;

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The input was empty or only whitespace.
    #[error("the webhook URL is empty")]
    Empty,
    /// The input was longer than [`MAX_URL_LEN`] characters.
    #[error("the webhook URL is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Length of the trimmed input, in characters.
        len: usize,
        /// The limit, [`MAX_URL_LEN`].
        max: usize,
    },
    /// The `url` crate could not parse the input.
    #[error("the webhook URL is not a valid URL: {0}")]
    Invalid(url::ParseError),
    /// The scheme was something other than `http` or `https`.
    #[error("the webhook URL must start with http:// or https://, not {0}:")]
    UnsupportedScheme(String),
    /// The URL has no host (e.g. `http:/path` or a `data:` URL).
    #[error("the webhook URL has no host")]
    MissingHost,
    /// The URL carries a username or password.
    #[error(
        "the webhook URL must not contain a username or password; \
         send credentials in a configured header instead"
    )]
    Credentials,
    /// The URL has a `#fragment`, which is never sent to the server.
    #[error("the webhook URL must not contain a fragment (the part after #)")]
    Fragment,
    /// The host is an IP literal that is not a public address.
    #[error(
        "the URL's host {host} is a loopback or private address; \
         set {ALLOW_PRIVATE_SETTING}=true to allow it (local development only)"
    )]
    PrivateAddress {
        /// The host as written in the (normalised) URL.
        host: String,
    },
    /// The host is `localhost` or a name under `.localhost`.
    #[error(
        "the URL's host {host} is a loopback name; \
         set {ALLOW_PRIVATE_SETTING}=true to allow it (local development only)"
    )]
    LocalhostName {
        /// The host name.
        host: String,
    },
    /// The host name resolves to at least one non-public address.
    #[error(
        "the URL's host {host} resolves to {addr}, a loopback or private address; \
         set {ALLOW_PRIVATE_SETTING}=true to allow it (local development only)"
    )]
    ResolvesToPrivate {
        /// The host name.
        host: String,
        /// The first non-public address it resolved to.
        addr: IpAddr,
    },
    /// The host name does not resolve.
    #[error("cannot resolve host {host}: {reason}")]
    Unresolvable {
        /// The host name.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

impl UrlError {
    /// Whether this is a refusal of a non-public destination, i.e. one that
    /// `PARLEY_ALLOW_PRIVATE_WEBHOOKS` would lift.
    pub fn is_private_refusal(&self) -> bool {
        matches!(
            self,
            Self::PrivateAddress { .. }
                | Self::LocalhostName { .. }
                | Self::ResolvesToPrivate { .. }
        )
    }
}

/// How an address inside an IPv6 range is judged.
#[derive(Clone, Copy)]
enum V6Rule {
    /// Never public.
    Refuse,
    /// Judge the IPv4 address in the last 32 bits.
    EmbeddedLow32,
    /// Judge the IPv4 address in bits 16..48 (6to4).
    Embedded6to4,
}

/// Non-public IPv4 ranges (IANA special-purpose registry, plus multicast and
/// the reserved 240/4, which also covers 255.255.255.255).
static BLOCKED_V4: [Ipv4Net; 15] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Special IPv6 ranges. The first matching entry decides, so the exact
/// `::` and `::1` come before the IPv4-compatible `::/96` that contains them.
static SPECIAL_V6: [(Ipv6Net, V6Rule); 15] = [
    (v6net([0, 0, 0, 0, 0, 0, 0, 0], 128), V6Rule::Refuse),
    (v6net([0, 0, 0, 0, 0, 0, 0, 1], 128), V6Rule::Refuse),
    (
        v6net([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        V6Rule::EmbeddedLow32,
    ),
    (v6net([0, 0, 0, 0, 0, 0, 0, 0], 96), V6Rule::EmbeddedLow32),
    (
        v6net([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        V6Rule::EmbeddedLow32,
    ),
    // RFC 8215 local-use NAT64: the translator is ours, not the internet's.
    (v6net([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), V6Rule::Refuse),
    (v6net([0x100, 0, 0, 0, 0, 0, 0, 0], 64), V6Rule::Refuse),
    // IETF protocol assignments, including Teredo (2001::/32), which tunnels
    // to an obfuscated IPv4 address we would otherwise have to decode.
    (v6net([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), V6Rule::Refuse),
    (v6net([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), V6Rule::Refuse),
    (
        v6net([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        V6Rule::Embedded6to4,
    ),
    (v6net([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), V6Rule::Refuse),
    (v6net([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), V6Rule::Refuse),
    (v6net([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), V6Rule::Refuse),
    (v6net([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), V6Rule::Refuse),
    (v6net([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), V6Rule::Refuse),
];

/// Everything outside global unicast is unallocated or special today, so an
/// IPv6 address that matches no rule above must still be in here to pass.
static GLOBAL_UNICAST_V6: Ipv6Net = v6net([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

const fn v6net(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

/// Whether `ip` is a public (globally routable) unicast address that a
/// webhook may be delivered to.
///
/// IPv6 addresses that wrap an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64 `64:ff9b::/96`, 6to4) are judged by the IPv4 address they carry,
/// because the kernel or a translator may end up connecting to it.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_ipv4(v4),
        IpAddr::V6(v6) => is_public_ipv6(v6),
    }
}

fn is_public_ipv4(ip: Ipv4Addr) -> bool {
    !BLOCKED_V4.iter().any(|net| net.contains(&ip))
}

fn is_public_ipv6(ip: Ipv6Addr) -> bool {
    let rule = SPECIAL_V6
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, rule)| *rule);
    let bits = ip.to_bits();
    match rule {
        Some(V6Rule::Refuse) => false,
        // Truncating casts pick out exactly the embedded 32 bits.
        Some(V6Rule::EmbeddedLow32) => is_public_ipv4(Ipv4Addr::from_bits(bits as u32)),
        Some(V6Rule::Embedded6to4) => is_public_ipv4(Ipv4Addr::from_bits((bits >> 80) as u32)),
        None => GLOBAL_UNICAST_V6.contains(&ip),
    }
}

/// Parses and validates a webhook URL as typed by a user.
///
/// The input is trimmed; it must be at most [`MAX_URL_LEN`] characters, use
/// `http` or `https`, have a host, and carry neither credentials nor a
/// fragment. Numeric host forms such as `http://2130706433/`,
/// `http://0x7f.1/` or `http://127.1/` are normalised to `127.0.0.1` by the
/// WHATWG parser, so [`check_url`] sees the real address.
///
/// This does not check where the host points; call [`check_url`] for that.
pub fn parse_webhook_url(raw: &str) -> Result<Url, UrlError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(UrlError::Empty);
    }
    let len = trimmed.chars().count();
    if len > MAX_URL_LEN {
        return Err(UrlError::TooLong {
            len,
            max: MAX_URL_LEN,
        });
    }
    let url = Url::parse(trimmed).map_err(|e| match e {
        url::ParseError::EmptyHost => UrlError::MissingHost,
        other => UrlError::Invalid(other),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::UnsupportedScheme(url.scheme().to_owned()));
    }
    match url.host() {
        None => return Err(UrlError::MissingHost),
        Some(Host::Domain("")) => return Err(UrlError::MissingHost),
        Some(_) => {}
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    Ok(url)
}

/// Whether `host` (lower-case, as the `url` crate stores it) is `localhost`
/// or a name under it; RFC 6761 reserves those for loopback, and some
/// resolvers answer them without consulting DNS or `/etc/hosts`.
fn is_localhost_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host == "localhost" || host.ends_with(".localhost")
}

/// Checks that `url` points at public addresses only.
///
/// With `allow_private` everything passes. Otherwise IP-literal hosts must be
/// public, `localhost` names are refused without a lookup, and other names
/// are resolved: every address must be public, and a name that does not
/// resolve is refused.
///
/// Passing this check at save time does not make later deliveries safe,
/// since DNS answers can change; the delivery client guards again at connect
/// time.
pub async fn check_url(url: &Url, allow_private: bool) -> Result<(), UrlError> {
    if allow_private {
        return Ok(());
    }
    let host = url.host().ok_or(UrlError::MissingHost)?;
    let name = match host {
        Host::Ipv4(v4) => return check_ip_literal(IpAddr::V4(v4), &host),
        Host::Ipv6(v6) => return check_ip_literal(IpAddr::V6(v6), &host),
        Host::Domain(name) => name,
    };
    if is_localhost_name(name) {
        return Err(UrlError::LocalhostName {
            host: name.to_owned(),
        });
    }
    // Always Some for http/https; 0 is only a placeholder for lookup_host.
    let port = url.port_or_known_default().unwrap_or(0);
    let lookup = tokio::time::timeout(LOOKUP_DEADLINE, tokio::net::lookup_host((name, port)));
    let addrs: Vec<SocketAddr> = lookup
        .await
        .map_err(|_| UrlError::Unresolvable {
            host: name.to_owned(),
            reason: format!("no answer within {} s", LOOKUP_DEADLINE.as_secs()),
        })?
        .map_err(|e| UrlError::Unresolvable {
            host: name.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(UrlError::Unresolvable {
            host: name.to_owned(),
            reason: "no addresses found".to_owned(),
        });
    }
    // One private answer is enough to refuse: the client would drop it, but a
    // URL that half points inside is a misconfiguration worth reporting.
    if let Some(bad) = addrs.iter().find(|a| !is_public_ip(a.ip())) {
        return Err(UrlError::ResolvesToPrivate {
            host: name.to_owned(),
            addr: bad.ip(),
        });
    }
    Ok(())
}

fn check_ip_literal(ip: IpAddr, host: &Host<&str>) -> Result<(), UrlError> {
    if is_public_ip(ip) {
        Ok(())
    } else {
        Err(UrlError::PrivateAddress {
            host: host.to_string(),
        })
    }
}

/// Checks an IP-literal host for the delivery client, which must do this
/// itself because reqwest connects to IP literals without asking the
/// resolver. Domain hosts pass here; [`GuardedResolver`] handles them.
pub fn check_ip_host(url: &Url, allow_private: bool) -> Result<(), UrlError> {
    if allow_private {
        return Ok(());
    }
    match url.host() {
        Some(host @ Host::Ipv4(v4)) => check_ip_literal(IpAddr::V4(v4), &host),
        Some(host @ Host::Ipv6(v6)) => check_ip_literal(IpAddr::V6(v6), &host),
        Some(Host::Domain(_)) => Ok(()),
        None => Err(UrlError::MissingHost),
    }
}

/// A DNS resolver for reqwest that drops non-public addresses, so that a
/// name which pointed somewhere public at save time cannot be re-pointed at
/// the internal network later.
///
/// If a name resolves to a mix, only the public addresses are used. If none
/// is left, resolution fails with [`UrlError::ResolvesToPrivate`], whose
/// message names `PARLEY_ALLOW_PRIVATE_WEBHOOKS`.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    /// A resolver that filters unless `allow_private` is set.
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in afterwards.
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| UrlError::Unresolvable {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            if resolved.is_empty() {
                return Err(UrlError::Unresolvable {
                    host,
                    reason: "no addresses found".to_owned(),
                }
                .into());
            }
            if allow_private {
                let addrs: Addrs = Box::new(resolved.into_iter());
                return Ok(addrs);
            }
            let (public, private): (Vec<SocketAddr>, Vec<SocketAddr>) =
                resolved.into_iter().partition(|a| is_public_ip(a.ip()));
            if let Some(first_private) = private.first() {
                if public.is_empty() {
                    return Err(UrlError::ResolvesToPrivate {
                        host,
                        addr: first_private.ip(),
                    }
                    .into());
                }
                tracing::warn!(
                    %host,
                    dropped = ?private.iter().map(SocketAddr::ip).collect::<Vec<_>>(),
                    "webhook host resolves to some non-public addresses; using only the public ones"
                );
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP literal")
    }

    fn url(s: &str) -> Url {
        parse_webhook_url(s).expect("test URL parses")
    }

    #[test]
    fn non_public_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.51.100.7",
            "203.0.113.9",
            "::1",
            "::",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(!is_public_ip(ip(s)), "{s} must not be public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public_ip(ip(s)), "{s} must be public");
        }
    }

    #[test]
    fn parsing_refuses_other_schemes_missing_hosts_credentials_and_fragments() {
        assert_eq!(
            parse_webhook_url("ftp://example.com/x"),
            Err(UrlError::UnsupportedScheme("ftp".to_owned()))
        );
        assert_eq!(
            parse_webhook_url("   "),
            Err(UrlError::Empty),
            "whitespace only is empty"
        );
        assert_eq!(parse_webhook_url("http://"), Err(UrlError::MissingHost));
        assert!(matches!(
            parse_webhook_url("example.com/hook"),
            Err(UrlError::Invalid(url::ParseError::RelativeUrlWithoutBase))
        ));
        assert_eq!(
            parse_webhook_url("http://user:pw@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            parse_webhook_url("https://user@example.com/"),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            parse_webhook_url("https://example.com/#frag"),
            Err(UrlError::Fragment)
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(
            parse_webhook_url(&long),
            Err(UrlError::TooLong { .. })
        ));
    }

    #[test]
    fn parsing_trims_and_keeps_a_good_url() {
        let u = url("  https://hooks.example.com:8443/in?x=1 \n");
        assert_eq!(u.as_str(), "https://hooks.example.com:8443/in?x=1");
    }

    #[test]
    fn numeric_host_spellings_are_normalised_to_dotted_ipv4() {
        for s in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://127.0.0.1./",
        ] {
            assert_eq!(
                url(s).host(),
                Some(Host::Ipv4(Ipv4Addr::LOCALHOST)),
                "{s} should parse to 127.0.0.1"
            );
        }
    }

    #[test]
    fn a_bracketed_ipv4_mapped_host_parses_as_ipv6() {
        let u = url("http://[::ffff:127.0.0.1]/");
        let expected: Ipv6Addr = "::ffff:127.0.0.1".parse().expect("literal");
        assert_eq!(u.host(), Some(Host::Ipv6(expected)));
    }

    #[tokio::test]
    async fn private_literals_and_localhost_names_are_refused() {
        for s in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://foo.localhost/",
        ] {
            let err = check_url(&url(s), false)
                .await
                .expect_err("private destination must be refused");
            assert!(err.is_private_refusal(), "{s}: {err}");
            assert!(
                err.to_string().contains(ALLOW_PRIVATE_SETTING),
                "{s}: message must name the setting: {err}"
            );
        }
    }

    #[tokio::test]
    async fn the_refusal_message_names_the_host_and_the_setting() {
        let err = check_url(&url("http://127.0.0.1/"), false)
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "the URL's host 127.0.0.1 is a loopback or private address; set \
             PARLEY_ALLOW_PRIVATE_WEBHOOKS=true to allow it (local development only)"
        );
    }

    /// `/etc/hosts` on the dev/CI machine maps its hostname `vm` (and `runsc`)
    /// to 127.0.0.1, alongside `localhost`. To stay portable, the test picks
    /// the first non-`localhost` name that `/etc/hosts` maps to a 127/8
    /// address, so it exercises the system resolver without a DNS server.
    fn loopback_alias_from_etc_hosts() -> String {
        let hosts = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        hosts
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let addr: Ipv4Addr = fields.next()?.parse().ok()?;
                addr.is_loopback().then_some(fields)
            })
            .flatten()
            .find(|name| !is_localhost_name(&name.to_ascii_lowercase()))
            .map(str::to_owned)
            .expect("/etc/hosts has a non-localhost name for a 127/8 address")
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_naming_the_address() {
        let alias = loopback_alias_from_etc_hosts();
        let err = check_url(&url(&format!("http://{alias}:8080/hook")), false)
            .await
            .expect_err("refused");
        match &err {
            UrlError::ResolvesToPrivate { host, addr } => {
                assert_eq!(host, &alias.to_ascii_lowercase());
                assert!(!is_public_ip(*addr));
            }
            other => panic!("unexpected error for {alias}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(ALLOW_PRIVATE_SETTING), "{msg}");
        assert!(msg.contains("127."), "{msg}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_refused() {
        // .invalid is reserved (RFC 2606) and never resolves.
        let err = check_url(&url("https://no-such-host.invalid/"), false)
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("cannot resolve host no-such-host.invalid"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn public_literals_are_accepted_without_network() {
        for s in ["http://8.8.8.8/", "http://[2606:4700:4700::1111]/"] {
            check_url(&url(s), false).await.expect("public literal");
        }
    }

    #[tokio::test]
    async fn everything_passes_when_private_destinations_are_allowed() {
        for s in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://localhost:8080/",
            "http://foo.localhost/",
            "http://169.254.169.254/latest",
            "https://no-such-host.invalid/",
        ] {
            check_url(&url(s), true).await.expect("allowed");
        }
    }

    #[test]
    fn the_client_side_literal_check_only_judges_ip_hosts() {
        assert!(check_ip_host(&url("http://127.0.0.1:9/"), false).is_err());
        assert!(check_ip_host(&url("http://[::1]:9/"), false).is_err());
        assert!(check_ip_host(&url("http://8.8.8.8/"), false).is_ok());
        assert!(check_ip_host(&url("http://localhost/"), false).is_ok());
        assert!(check_ip_host(&url("http://127.0.0.1:9/"), true).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_loopback_name_and_names_the_setting() {
        let name: Name = "localhost".parse().expect("name");
        let err = match GuardedResolver::new(false).resolve(name).await {
            Ok(addrs) => panic!("expected refusal, got {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        assert!(err.to_string().contains(ALLOW_PRIVATE_SETTING), "{err}");
    }

    #[tokio::test]
    async fn the_resolver_passes_loopback_when_private_destinations_are_allowed() {
        let name: Name = "localhost".parse().expect("name");
        let addrs: Vec<SocketAddr> = GuardedResolver::new(true)
            .resolve(name)
            .await
            .expect("resolves")
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
