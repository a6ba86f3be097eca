//! Services' cluster IPs, from kube-apiserver's `--service-cluster-ip-range`. An address is
//! held by an IPAddress object named after it (`/registry/ipaddresses/10.0.0.7`), created before
//! the service and deleted after it, as kube-apiserver's allocator does since 1.33: creating the
//! object is the lock, so two creates never get one address, and a real kube-apiserver on the
//! same store sees the shim's allocations.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// An IPv4 service range. Its network address, its first address (which kube-apiserver keeps
/// for the `kubernetes` service) and its broadcast address are never handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceRange {
    network: u32,
    prefix: u32,
}

impl ServiceRange {
    pub fn parse(cidr: &str) -> Result<ServiceRange, String> {
        let invalid = || format!("{cidr:?} is not an IPv4 CIDR");
        let (address, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u32 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=29).contains(&prefix) {
            return Err(format!(
                "{cidr:?}: the prefix must be between 8 and 29 bits"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(ServiceRange {
            network: u32::from(address) & mask,
            prefix,
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// Whether `ip` may be asked for explicitly.
    pub fn allocatable(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            return false;
        };
        let offset = u32::from(ip).wrapping_sub(self.network);
        (2..self.size() - 1).contains(&offset)
    }

    /// Every allocatable address once, from a random one on, wrapping around.
    pub fn candidates(&self) -> impl Iterator<Item = String> + '_ {
        let usable = self.size() - 3;
        let start = rand::random::<u32>() % usable;
        (0..usable)
            .map(move |i| Ipv4Addr::from(self.network + 2 + (start + i) % usable).to_string())
    }
}

/// The IPAddress object that holds `ip` for the service `namespace/name`.
pub fn ip_address(ip: &str, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IPAddress",
        "metadata": {"name": ip, "labels": {
            "ipaddress.kubernetes.io/ip-family": "IPv4",
            "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"}},
        "spec": {"parentRef": {"group": "", "resource": "services",
            "namespace": namespace, "name": name}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hand_out_neither_the_ends_nor_the_first_address() {
        let range = ServiceRange::parse("10.0.0.0/29").unwrap();
        let mut given: Vec<String> = range.candidates().collect();
        given.sort();
        assert_eq!(
            given,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert!(range.allocatable("10.0.0.6"));
        assert!(!range.allocatable("10.0.0.1"));
        assert!(!range.allocatable("10.0.0.7"));
        assert!(!range.allocatable("10.0.1.2"));
        assert_eq!(
            ServiceRange::parse("10.96.0.1/12").unwrap(),
            ServiceRange::parse("10.96.0.0/12").unwrap()
        );
        assert!(ServiceRange::parse("fd00::/108").is_err());
    }
}
