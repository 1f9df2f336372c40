//! Who is asking: the client address of a request ([`ClientAddress`]: the TCP peer, or
//! behind a `--trusted-proxy` the right-most `X-Forwarded-For` address no trusted proxy
//! holds), and the per-address rate limit of the holder endpoints ([`Limiter`],
//! `--holder-rate-limit`, GCRA by `governor`).
//!
//! An IPv6 client is counted by its /64 (one host is usually given a whole /64, so its
//! addresses are one client); an IPv4-mapped IPv6 address as the IPv4 address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use ipnet::IpNet;

use super::AppState;

/// How many well-formed tokens one client address may present to the holder endpoints:
/// `per` between two, after a `burst` taken at once (GCRA, [`Limiter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per: Duration,
    pub burst: std::num::NonZeroU32,
}

impl RateLimit {
    /// `N/s`, `N/m` or `N/h` (N ≥ 1) with a burst of `burst` (≥ 1); `off`: no limit.
    pub fn parse(rate: &str, burst: u32) -> Result<Option<RateLimit>, String> {
        let rate = rate.trim();
        if rate.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let usage = || format!("invalid rate {rate:?}: expected N/s, N/m, N/h or off");
        let (n, unit) = rate.split_once('/').ok_or_else(usage)?;
        let n: u32 = n.trim().parse().map_err(|_| usage())?;
        let window = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(usage()),
        };
        if n == 0 {
            return Err(format!(
                "rate {rate:?} lets nothing through; use off for no limit"
            ));
        }
        let burst = std::num::NonZeroU32::new(burst)
            .ok_or_else(|| "the burst must be at least 1".to_owned())?;
        let per = window / n;
        if per < Duration::from_micros(1) {
            return Err(format!(
                "rate {rate:?} is above a million a second; use off for no limit"
            ));
        }
        Ok(Some(RateLimit { per, burst }))
    }
}

/// The address a request is counted against ([`client_address`]); the unspecified
/// address when the connection's peer is not known (a router served without the accept
/// loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let trusted = state
            .holder
            .as_deref()
            .map_or(&[][..], |h| &h.trusted_proxies[..]);
        Ok(ClientAddress(client_address(peer, &parts.headers, trusted)))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy; then, reading
/// `X-Forwarded-For` from the right, the first address that is not a trusted proxy (an
/// entry that is no address stops the walk at the last proxy that added it; only
/// proxies: the left-most).
pub fn client_address(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .collect::<Vec<_>>()
        .into_iter()
        .rev();
    for value in hops {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(&client) {
                return client;
            }
        }
    }
    client
}

/// `10.1.2.3`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443` or `10.1.2.3:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// A configured network as addresses are compared with it: an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) as the IPv4 one (`10.0.0.0/8`).
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        net => net,
    }
}

/// An IPv4-mapped IPv6 address as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key an address is counted under: IPv4 as it is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(segments))
        }
    }
}

/// Above this many tracked addresses the limiter forgets, at most once a second, the
/// addresses whose allowance is whole again (a burst's worth of time after their last
/// request: 2 s with the defaults), so a flood from many addresses leaves no map behind.
const FORGET_ABOVE: usize = 10_000;
/// Beyond this many tracked addresses (a flood from more addresses than the limit
/// forgets in time, or a slow rate with a large burst), every request is counted in one
/// shared allowance until enough are forgotten: the map stops growing and the flood is
/// held to one address's rate. About 10 MB at most.
const MAX_TRACKED: usize = 100_000;
/// The shared allowance's key.
const SHARED: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The holder endpoints' rate limit, per client address.
pub struct Limiter {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// When the last forgetting pass ran, in milliseconds since `started`.
    forgot_at: AtomicU64,
    started: std::time::Instant,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        // `RateLimit::parse` makes no period under a microsecond; one built by hand gets
        // a nanosecond rather than a panic.
        let quota = governor::Quota::with_period(limit.per.max(Duration::from_nanos(1)))
            .expect("a period above zero")
            .allow_burst(limit.burst);
        let clock = DefaultClock::default();
        Limiter {
            limiter: governor::RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            forgot_at: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// Takes one from `client`'s allowance, or says how long until there is one.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let mut tracked = self.limiter.len();
        if tracked > FORGET_ABOVE {
            let now = self.started.elapsed().as_millis() as u64;
            let last = self.forgot_at.load(Ordering::Relaxed);
            let due = now.saturating_sub(last) >= 1_000;
            if due
                && self
                    .forgot_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.limiter.retain_recent();
                self.limiter.shrink_to_fit();
                tracked = self.limiter.len();
            }
        }
        let key = if tracked >= MAX_TRACKED {
            SHARED
        } else {
            bucket(canonical(client))
        };
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn rates() {
        let per = |r: &str| RateLimit::parse(r, 1).map(|l| l.map(|l| l.per));
        assert_eq!(per("20/s"), Ok(Some(Duration::from_millis(50))));
        assert_eq!(per("6/m"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(per("1/h"), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(per("off"), Ok(None));
        for bad in ["0/s", "20", "20/d", "x/s", "-1/s", ""] {
            assert!(per(bad).is_err(), "{bad}");
        }
        assert!(RateLimit::parse("1/s", 0).is_err());
        // A period under a microsecond would be none at all (review: a panic at start).
        assert!(per("2000000000/s").is_err());
        assert!(per("1000000/s").is_ok());
    }

    #[test]
    fn the_peer_unless_it_is_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let headers = forwarded(&["203.0.113.9"]);
        // Not trusted: X-Forwarded-For is anyone's to write.
        assert_eq!(
            client_address(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &[]),
            ip("10.0.0.1")
        );
        // Trusted: the address it forwarded.
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_address_no_trusted_proxy_holds() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // A client writing its own X-Forwarded-For cannot choose its address.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // Several header lines are one list, in order.
        let headers = forwarded(&["1.1.1.1", "203.0.113.9", "10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the proxy that added it.
        let headers = forwarded(&["203.0.113.9, junk, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.2")
        );
        // Ports and brackets are read; a mapped address is IPv4.
        let headers = forwarded(&["[2001:db8::7]:443"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("2001:db8::7")
        );
        let headers = forwarded(&["203.0.113.9:5000"]);
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), &headers, &trusted),
            ip("203.0.113.9")
        );
        // A bracketed IPv6 address without a port (review: it stopped the walk).
        let headers = forwarded(&["[2001:db8::8]"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("2001:db8::8")
        );
        // Only proxies: the left-most.
        let headers = forwarded(&["10.9.9.9, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn a_burst_then_the_rate_per_address_and_per_ipv6_64() {
        let limit = RateLimit::parse("1/h", 2).unwrap().unwrap();
        let limiter = Limiter::new(limit);
        let (a, b) = (ip("203.0.113.1"), ip("203.0.113.2"));
        assert_eq!(limiter.check(a), Ok(()));
        assert_eq!(limiter.check(a), Ok(()));
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(
            limiter.check(b),
            Ok(()),
            "another address has its own allowance"
        );
        // One /64 is one client; the next /64 another.
        let v6 = |s| ip(s);
        assert_eq!(limiter.check(v6("2001:db8:0:1::1")), Ok(()));
        assert_eq!(limiter.check(v6("2001:db8:0:1:ffff::9")), Ok(()));
        assert!(limiter.check(v6("2001:db8:0:1:abcd::2")).is_err());
        assert_eq!(limiter.check(v6("2001:db8:0:2::1")), Ok(()));
        // A mapped address is its IPv4 one.
        assert!(limiter.check(ip("::ffff:203.0.113.1")).is_err());
    }

    #[test]
    fn a_mapped_trusted_network_is_compared_as_ipv4() {
        let net = canonical_net("::ffff:10.0.0.0/104".parse().unwrap());
        assert_eq!(net, "10.0.0.0/8".parse::<IpNet>().unwrap());
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(
            client_address(ip("10.1.1.1"), &headers, &[net]),
            ip("203.0.113.9")
        );
        let plain: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!(canonical_net(plain), plain);
    }

    #[test]
    fn addresses_whose_allowance_is_whole_again_are_forgotten() {
        let limit = RateLimit::parse("1000/s", 1).unwrap().unwrap();
        let limiter = Limiter::new(limit);
        for i in 0..(FORGET_ABOVE as u32 + 10) {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limiter.tracked() > FORGET_ABOVE);
        // Each allowance (one per millisecond, burst 1) is whole again a millisecond
        // after its request; the pass runs once a second has gone since the last one
        // (moved back here rather than waited for).
        std::thread::sleep(Duration::from_millis(5));
        let started = std::time::Instant::now() - Duration::from_secs(2);
        let limiter = Limiter { started, ..limiter };
        let _ = limiter.check(ip("192.0.2.1"));
        assert!(limiter.tracked() < 10, "{}", limiter.tracked());
    }

    #[test]
    fn beyond_the_cap_every_address_shares_one_allowance() {
        let limit = RateLimit::parse("1/h", 1).unwrap().unwrap();
        let limiter = Limiter::new(limit);
        for i in 0..MAX_TRACKED as u32 {
            assert_eq!(limiter.check(IpAddr::from((i + 1).to_be_bytes())), Ok(()));
        }
        // Nothing is forgotten (an hour per request): the next new addresses share one.
        assert_eq!(limiter.check(ip("198.51.100.1")), Ok(()));
        assert!(limiter.check(ip("198.51.100.2")).is_err());
        assert!(
            limiter.tracked() <= MAX_TRACKED + 1,
            "{}",
            limiter.tracked()
        );
    }
}
