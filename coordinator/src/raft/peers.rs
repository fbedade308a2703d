//! `--peers ID=HOST:PORT,...` and its checks against `--node-id` and against the group a state dir holds.

use std::collections::BTreeMap;

use super::{NodeId, PeerNode};

/// Why a peer list is refused; each names the flag, the value and the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PeersError {
    #[error("--peers: `{entry}` is not ID=HOST:PORT (e.g. --peers 1=coord-0:50051,2=coord-1:50051,3=coord-2:50051)")]
    Syntax { entry: String },
    #[error("--peers: node id {id} is listed twice; give each coordinator one entry")]
    Duplicate { id: NodeId },
    #[error("--node-id {id} is not in --peers ({listed}); add this coordinator's own ID=HOST:PORT to the list")]
    NotListed { id: NodeId, listed: String },
    #[error(
        "--peers ({given}) does not match the group recorded in the state dir ({recorded}); give every coordinator \
         the same list, or change the group's membership through its leader"
    )]
    Mismatch { given: String, recorded: String },
}

/// Parses `1=host:port,2=host:port`: each coordinator serves Raft and the worker API on that one address.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, PeerNode>, PeersError> {
    let mut peers = BTreeMap::new();
    for entry in s.split(',').map(str::trim) {
        let bad = || PeersError::Syntax {
            entry: entry.to_owned(),
        };
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        if peers.insert(id, PeerNode::shared(addr)).is_some() {
            return Err(PeersError::Duplicate { id });
        }
    }
    Ok(peers)
}

/// `ID=ADDR,...` as `--peers` writes it.
pub fn format_peers(peers: &BTreeMap<NodeId, PeerNode>) -> String {
    peers
        .iter()
        .map(|(id, n)| format!("{id}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks that `node_id` is one of `peers`.
pub fn check_listed(node_id: NodeId, peers: &BTreeMap<NodeId, PeerNode>) -> Result<(), PeersError> {
    if peers.contains_key(&node_id) {
        Ok(())
    } else {
        Err(PeersError::NotListed {
            id: node_id,
            listed: format_peers(peers),
        })
    }
}

/// Checks `--peers` against the group a state dir recorded (`None` for an empty state dir, which any list fits).
pub fn check_recorded(
    given: &BTreeMap<NodeId, PeerNode>,
    recorded: Option<&BTreeMap<NodeId, PeerNode>>,
) -> Result<(), PeersError> {
    match recorded {
        Some(r) if r != given => Err(PeersError::Mismatch {
            given: format_peers(given),
            recorded: format_peers(r),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_lists_are_refused_naming_the_entry_and_the_fix() {
        let p = parse_peers("1=coord-0:50051, 2=coord-1:50051,3=10.0.0.3:7000").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&3], PeerNode::shared("10.0.0.3:7000"));
        assert_eq!(format_peers(&p), "1=coord-0:50051,2=coord-1:50051,3=10.0.0.3:7000");

        for bad in ["1=coord-0", "coord-0:50051", "x=coord-0:1", "1=:50051", "1=coord-0:99999", ""] {
            let e = parse_peers(&format!("{bad},2=b:1")).unwrap_err();
            assert_eq!(e, PeersError::Syntax { entry: bad.into() }, "{bad}");
            assert!(e.to_string().contains("ID=HOST:PORT"), "{e}");
        }
        assert_eq!(parse_peers("1=a:1,1=b:2").unwrap_err(), PeersError::Duplicate { id: 1 });

        let e = check_listed(4, &p).unwrap_err();
        assert!(e.to_string().contains("--node-id 4 is not in --peers (1=coord-0:50051"), "{e}");
        check_listed(2, &p).unwrap();

        let other = parse_peers("1=coord-0:50051,2=coord-1:50051,3=coord-9:50051").unwrap();
        let e = check_recorded(&p, Some(&other)).unwrap_err();
        assert!(e.to_string().contains("3=10.0.0.3:7000") && e.to_string().contains("3=coord-9:50051"), "{e}");
        check_recorded(&p, Some(&p)).unwrap();
        check_recorded(&p, None).unwrap();
    }
}
