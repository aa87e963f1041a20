//! Which destinations port sessions may dial: an allow list and a deny list
//! of `HOST:PORT` patterns (deny wins), plus the built-in refusal of
//! link-local and metadata addresses.
//!
//! Pattern syntax (also in `docs/PORT-FORWARDING.md`):
//! - HOST: `*`, a name (`db.internal`, case-insensitive), a suffix wildcard
//!   (`*.internal`), an IP (`10.0.0.5`, `[::1]`) or a CIDR (`10.0.0.0/8`,
//!   `[fd00::/8]`). Names match the host the client asked for; IPs and CIDRs
//!   match the requested host when it is a literal address and every address
//!   it resolves to.
//! - PORT: `*`, a number, or a range `5432-5440`.
//!
//! A destination is refused when any deny pattern matches; otherwise, when
//! the allow list is non-empty, it must match one allow pattern.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Any,
    Name(String),
    Suffix(String),
    Net(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    host: HostPat,
    ports: (u16, u16),
    text: String,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn prefix_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) if net.is_ipv4() => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        other => other,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| format!("invalid destination pattern {text:?}: {why}");
        let t = text.trim();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            let p = p.strip_prefix(':').ok_or_else(|| bad("expected ':PORT'"))?;
            (h, p)
        } else {
            t.rsplit_once(':')
                .ok_or_else(|| bad("expected HOST:PORT"))?
        };
        let num = |s: &str| s.parse::<u16>().map_err(|_| bad("bad port"));
        let ports = match port {
            "*" => (0, u16::MAX),
            p => match p.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad("empty port range"));
                    }
                    (a, b)
                }
                None => (num(p)?, num(p)?),
            },
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPat::Any
        } else if let Some((addr, len)) = host.split_once('/') {
            let ip: IpAddr = addr.parse().map_err(|_| bad("bad network address"))?;
            let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
            if len > prefix_len(ip) {
                return Err(bad("prefix length too long"));
            }
            HostPat::Net(ip, len)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostPat::Net(ip, prefix_len(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() {
                return Err(bad("empty domain suffix"));
            }
            HostPat::Suffix(format!(".{suffix}"))
        } else if host.is_empty() || host.contains(['*', '/', ' ']) {
            return Err(bad("bad host"));
        } else {
            HostPat::Name(host)
        };
        Ok(Pattern {
            host,
            ports,
            text: t.to_string(),
        })
    }

    fn matches(&self, host: &str, port: u16, addrs: &[SocketAddr]) -> bool {
        if port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match &self.host {
            HostPat::Any => true,
            HostPat::Name(n) => host.eq_ignore_ascii_case(n),
            HostPat::Suffix(s) => host.to_ascii_lowercase().ends_with(s.as_str()),
            HostPat::Net(net, len) => {
                host.parse::<IpAddr>()
                    .is_ok_and(|ip| in_net(ip, *net, *len))
                    || addrs.iter().any(|a| in_net(a.ip(), *net, *len))
            }
        }
    }
}

/// The agent's destination policy for port sessions.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
    /// Dial link-local / metadata addresses too (off by default).
    pub allow_link_local: bool,
}

/// Addresses the agent refuses to dial unless configured otherwise:
/// link-local (which covers the 169.254.169.254 metadata service), the EC2
/// IPv6 metadata range, broadcast and unspecified.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let s = v6.segments();
            (s[0] == 0xfd00 && s[1] == 0x0ec2) || (s[0] & 0xffc0) == 0xfe80 || v6.is_unspecified()
        }
    }
}

impl Policy {
    /// Whether the host name alone is refused (checked before resolving, so a
    /// denied name is never looked up).
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), String> {
        self.check(host, port, &[], false)
    }

    /// The full check once `addrs` are known. Err carries the reason sent to
    /// the client.
    pub fn check_resolved(
        &self,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
    ) -> Result<(), String> {
        self.check(host, port, addrs, true)
    }

    fn check(
        &self,
        host: &str,
        port: u16,
        addrs: &[SocketAddr],
        resolved: bool,
    ) -> Result<(), String> {
        if let Some(p) = self.deny.iter().find(|p| p.matches(host, port, addrs)) {
            return Err(format!(
                "destination {host}:{port} is denied by agent policy ({p})"
            ));
        }
        if !resolved {
            return Ok(());
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(host, port, addrs)) {
            return Err(format!(
                "destination {host}:{port} is not in the agent's allow list"
            ));
        }
        if !self.allow_link_local {
            if let Some(bad) = addrs.iter().find(|a| forbidden(a.ip())) {
                return Err(format!(
                    "destination {host} resolves to {} (link-local or metadata), which the agent refuses",
                    bad.ip()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn parses_and_rejects() {
        for ok in [
            "*:*",
            "db.internal:5432",
            "*.internal:5432-5440",
            "10.0.0.0/8:*",
            "[::1]:22",
            "[fd00::/8]:80",
            "127.0.0.1:1",
        ] {
            Pattern::parse(ok).unwrap();
        }
        for bad in [
            "",
            "host",
            "h:x",
            "h:9-1",
            "10.0.0.0/33:1",
            "[::1:22",
            "*.:1",
            "a*b:1",
            "h:70000",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        let a = addrs(&["10.1.2.3:5432"]);
        assert!(Pattern::parse("10.0.0.0/8:5432")
            .unwrap()
            .matches("db", 5432, &a));
        assert!(!Pattern::parse("10.0.0.0/8:5433")
            .unwrap()
            .matches("db", 5432, &a));
        assert!(Pattern::parse("*.Internal:*")
            .unwrap()
            .matches("db.internal", 1, &[]));
        assert!(!Pattern::parse("*.internal:*")
            .unwrap()
            .matches("internal", 1, &[]));
        assert!(Pattern::parse("[::1]:22").unwrap().matches("::1", 22, &[]));
        assert!(Pattern::parse("127.0.0.0/8:1-100").unwrap().matches(
            "x",
            100,
            &addrs(&["[::ffff:127.0.0.1]:100"])
        ));
    }

    #[test]
    fn deny_wins_and_allow_list_restricts() {
        let p = Policy {
            allow: pats(&["127.0.0.1:*", "*.internal:5432"]),
            deny: pats(&["127.0.0.1:22"]),
            allow_link_local: false,
        };
        let lo = addrs(&["127.0.0.1:22"]);
        assert!(p.check_resolved("127.0.0.1", 22, &lo).is_err());
        assert!(p.check_name("127.0.0.1", 22).is_err());
        assert!(p
            .check_resolved("127.0.0.1", 80, &addrs(&["127.0.0.1:80"]))
            .is_ok());
        assert!(p
            .check_resolved("db.internal", 5432, &addrs(&["10.0.0.1:5432"]))
            .is_ok());
        let e = p
            .check_resolved("db.internal", 5433, &addrs(&["10.0.0.1:5433"]))
            .unwrap_err();
        assert!(e.contains("allow list"), "{e}");
    }

    #[test]
    fn link_local_refused_unless_allowed() {
        let meta = addrs(&["169.254.169.254:80"]);
        let mut p = Policy::default();
        assert!(p.check_resolved("169.254.169.254", 80, &meta).is_err());
        p.allow_link_local = true;
        assert!(p.check_resolved("169.254.169.254", 80, &meta).is_ok());
        assert!(forbidden("fd00:ec2::254".parse().unwrap()));
        assert!(forbidden("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!forbidden("127.0.0.1".parse().unwrap()));
    }
}
