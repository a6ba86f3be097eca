//! Cluster identity: members parsed from `--initial-cluster`, and member and cluster ids derived
//! exactly as etcd derives them, so the same flags give the same ids on every member.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Parses `name=url,name=url,...`; a name may appear several times for several URLs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, String> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid --initial-cluster entry {part:?}"))?;
        url::Url::parse(url).map_err(|e| format!("invalid peer URL {url:?}: {e}"))?;
        members
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".into());
    }
    Ok(members
        .into_iter()
        .map(|(name, peer_urls)| InitialMember { name, peer_urls })
        .collect())
}

/// etcd accepts member URLs that are http(s)://host:port, without a path.
pub fn validate_peer_urls(urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("no peer URLs".into());
    }
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
        let scheme_ok = matches!(parsed.scheme(), "http" | "https");
        let path_ok = matches!(parsed.path(), "" | "/");
        if !scheme_ok || !path_ok || parsed.host_str().is_none() || parsed.port().is_none() {
            return Err(format!("{u:?} is not scheme://host:port"));
        }
    }
    Ok(())
}

/// etcd: sha1(sorted peer URLs joined + cluster token), first 8 bytes big-endian.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd: sha1 over the sorted member ids as 8-byte big-endian words.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 digests are 20 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_with_several_urls() {
        let m = parse_initial_cluster(
            "a=http://1.1.1.1:2380,b=http://2.2.2.2:2380,a=http://1.1.1.1:2381",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].peer_urls.len(), 2);
        assert!(parse_initial_cluster("nonsense").is_err());
        assert!(parse_initial_cluster("a=not a url").is_err());
    }

    #[test]
    fn ids_are_etcds() {
        // etcd 3.4 with default flags reports member 8e9e05c52164694d, cluster cdf818194e3a8c32.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
