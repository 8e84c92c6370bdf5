//! The mapping between operator keys and libp2p identities.
//!
//! The swarm's keypair is the operator's Ed25519 key ([`keypair`]), so a
//! member's PeerId is derived from a key the trust list names ([`peer_id`]),
//! and a PeerId inlines the key it came from, which maps back to the member
//! that lists it ([`member_of`]). Also here: which PeerIds and addresses to
//! dial a member at, and the check of the addresses a member lists.

use libp2p::{identity, Multiaddr, PeerId};

use super::Error;
use crate::core::ids::OperatorId;
use crate::core::keys::{PublicKey, SecretKey};
use crate::core::trust::{Member, VerifiedTrustList};

/// The libp2p keypair of an operator key (the same Ed25519 key).
pub fn keypair(key: &SecretKey) -> Result<identity::Keypair, Error> {
    let mut bytes = key.to_bytes();
    // `ed25519_from_bytes` zeroizes its input; `bytes` is zeroized on drop too.
    identity::Keypair::ed25519_from_bytes(&mut *bytes).map_err(|e| Error::Key(e.to_string()))
}

/// The PeerId of an operator public key.
pub fn peer_id(key: &PublicKey) -> PeerId {
    match identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes()) {
        Ok(public) => identity::PublicKey::from(public).to_peer_id(),
        // A `PublicKey` is a valid Ed25519 point by construction.
        Err(_) => PeerId::random(),
    }
}

/// The operator key a PeerId inlines, if it is an Ed25519 PeerId.
fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Ed25519 PeerIds are "identity" multihashes (code 0) of the protobuf key.
    if multihash.code() != 0 {
        return None;
    }
    let public = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed25519 = public.try_into_ed25519().ok()?;
    PublicKey::from_bytes(&ed25519.to_bytes()).ok()
}

/// The active member whose key (valid now) this PeerId is derived from.
pub fn member_of(
    trust: &VerifiedTrustList,
    peer: &PeerId,
    now_ms: u64,
) -> Result<OperatorId, String> {
    let key = public_key_of(peer)
        .ok_or_else(|| format!("PeerId {peer} does not carry an Ed25519 operator key"))?;
    trust
        .active_member_with_key(&key, now_ms)
        .map_err(|e| e.to_string())
}

/// PeerIds of `member`'s keys valid now, the most recently started key first
/// (during a rotation the member runs on the new key as soon as it restarts).
pub fn candidate_peers(member: &Member, now_ms: u64) -> Vec<PeerId> {
    let mut keys: Vec<_> = member
        .keys
        .iter()
        .filter(|k| k.is_valid_at(now_ms))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.not_before_ms));
    keys.iter().map(|k| peer_id(&k.public_key)).collect()
}

/// The multiaddrs of `member` to dial `peer` at: its listed addresses, without
/// any `/p2p/` suffix, skipping those pinned to another PeerId or unparsable.
pub(super) fn dial_addrs(member: &Member, peer: &PeerId) -> Vec<Multiaddr> {
    member
        .p2p_addrs
        .iter()
        .filter_map(|text| text.parse::<Multiaddr>().ok())
        .filter_map(|mut addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(pinned)) if pinned != *peer => None,
            Some(libp2p::multiaddr::Protocol::P2p(_)) => {
                addr.pop();
                Some(addr)
            }
            _ => Some(addr),
        })
        .collect()
}

/// Checks a multiaddr a member lists in the trust list: it parses, runs
/// over TCP or QUIC v1, and a `/p2p/` suffix names the PeerId of one of the
/// member's `keys`.
pub fn check_listed_addr<'a>(
    text: &str,
    keys: impl IntoIterator<Item = &'a PublicKey>,
) -> Result<(), String> {
    use libp2p::multiaddr::Protocol;
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| format!("libp2p address {text:?}: {e}"))?;
    let transport = addr
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_) | Protocol::QuicV1));
    if !transport {
        return Err(format!(
            "libp2p address {text:?} is neither TCP (/tcp/PORT) nor QUIC (/udp/PORT/quic-v1)"
        ));
    }
    if let Some(Protocol::P2p(pinned)) = addr.iter().last() {
        if !keys.into_iter().any(|k| peer_id(k) == pinned) {
            return Err(format!(
                "libp2p address {text:?} names PeerId {pinned}, which is not derived from any of the member's keys"
            ));
        }
    }
    Ok(())
}
