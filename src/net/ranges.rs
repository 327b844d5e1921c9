//! Addresses a public name must never resolve to: a public DNS answer pointing at the host's
//! loopback, the LAN or the cloud metadata service would turn an allowed name into a door to
//! them (DNS rebinding). Addresses from `[network] hosts` are the operator's own and exempt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` may not be dialled for a name that came from the host's resolver, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_net(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const NETS: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "\"this network\" (0/8)"),
        ([10, 0, 0, 0], 8, "private (10/8)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64/10)"),
        ([127, 0, 0, 0], 8, "loopback"),
        (
            [169, 254, 0, 0],
            16,
            "link-local / cloud metadata (169.254/16)",
        ),
        ([172, 16, 0, 0], 12, "private (172.16/12)"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18/15)"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved / broadcast"),
    ];
    NETS.iter()
        .find(|(net, bits, _)| in_net(ip, *net, *bits))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() {
        Some("loopback / unspecified")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("unique local (fc00::/7, includes fd00:ec2::254 metadata)")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local (fe80::/10)")
    } else if s[0] & 0xff00 == 0xff00 {
        Some("multicast")
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        Some("NAT64 (64:ff9b::/96) hides an IPv4 address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_metadata_are_forbidden_public_is_not() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "151.101.0.223",
            "140.82.112.3",
            "172.32.0.1",
            "2a04:4e42::223",
        ] {
            assert_eq!(forbidden(good.parse().unwrap()), None, "{good}");
        }
    }
}
