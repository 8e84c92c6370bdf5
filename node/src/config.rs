//! The node's configuration file (`node.toml`): parsing, validation with the
//! line of each error, and the commented template that `init` writes.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::core::envelope::EnvelopeLimits;
use crate::core::ids::OperatorId;
use crate::core::keys::PublicKey;
use crate::core::trust::Member;
use crate::limits;
use crate::rate_limit::Rate;

/// Said at every start (and by `config check`) when the API listens on a
/// non-loopback address (`[listen] api_remote = true`).
pub const API_REMOTE_WARNING: &str = "[listen] api_remote = true: the API listens on a \
     non-loopback address in PLAINTEXT: API credentials and personal data cross the network in \
     clear unless a TLS-terminating proxy on this host is the only way in";

/// A transport between operators (`[transport] prefer`; the trust list says
/// which ones each member offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// gRPC over TLS (`grpc_endpoint` in the trust list).
    Grpc,
    /// libp2p (`p2p_addrs` in the trust list).
    Libp2p,
}

impl TransportKind {
    /// The name used in `node.toml` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Libp2p => "libp2p",
        }
    }

    /// The transports `member` offers in the trust list, `first` first if it offers it.
    pub fn offered_by(member: &Member, first: TransportKind) -> Vec<TransportKind> {
        let offers = |kind| match kind {
            TransportKind::Grpc => !member.grpc_endpoint.is_empty(),
            TransportKind::Libp2p => !member.p2p_addrs.is_empty(),
        };
        let second = match first {
            TransportKind::Grpc => TransportKind::Libp2p,
            TransportKind::Libp2p => TransportKind::Grpc,
        };
        [first, second].into_iter().filter(|k| offers(*k)).collect()
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated configuration. Relative paths are resolved against the
/// folder of the configuration file.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's operator id.
    pub operator_id: OperatorId,
    /// File holding the operator's Ed25519 secret key (hex).
    pub key_file: PathBuf,
    /// Folder of the sled database.
    pub data_dir: PathBuf,
    /// File of the initial signed trust list.
    pub trust_list: PathBuf,
    /// Governance public keys the operator trusts (the trust anchor).
    pub governance_keys: Vec<PublicKey>,
    /// How many anchor signatures the initial trust list needs.
    pub governance_threshold: u32,
    /// File of the local API credentials (`client add` writes it).
    pub clients_file: PathBuf,
    /// Address of the `OperatorPeer` gRPC server (node to node).
    pub peer_listen: SocketAddr,
    /// Address of the `OperatorApi` gRPC server (local clients).
    pub api_listen: SocketAddr,
    /// `[listen] api_remote`: lets `api_listen` be a non-loopback address.
    /// The API is plaintext gRPC (bearer credentials and personal data in
    /// clear), so it is meant for clients on the same host, or behind a
    /// TLS-terminating proxy there; the node warns at every start when set.
    pub api_remote: bool,
    /// Bounds on received envelopes.
    pub envelope_limits: EnvelopeLimits,
    /// Lifetime given to messages this node sends, in ms.
    pub message_lifetime_ms: u64,
    /// Rulebook version this operator signed up to.
    pub rulebook_version: String,
    /// Default `tracing` filter (overridden by `RUST_LOG`).
    pub log_filter: String,
    /// The operator as data controller, named in exported consent receipts.
    pub controller: Option<Controller>,
    /// JSON files loaded into the built-in registry at start (see `sources::registry`).
    pub registry_files: Vec<PathBuf>,
    /// An NGSI-LD context broker to answer data requests from, instead of the built-in registry.
    pub ngsi_ld: Option<NgsiLdConfig>,
    /// `[transport] insecure_plaintext`: peer gRPC without TLS, for development
    /// federations only (logged as a warning at every start). Default `false`.
    pub insecure_plaintext: bool,
    /// `[transport] p2p_listen`: libp2p listen addresses (TCP and/or QUIC);
    /// empty: the node dials over libp2p but accepts no libp2p connection.
    pub p2p_listen: Vec<libp2p::Multiaddr>,
    /// `[transport] prefer`: the transport tried first when a member offers both.
    pub prefer: TransportKind,
    /// `[limits]` rates and the trust-list refresh interval, and the caps on
    /// requests in flight.
    pub limits: Limits,
}

/// The tunable `[limits]` beyond envelope bounds (see [`crate::limits`] for
/// the reasons behind each default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests (`Deliver` + `Call`) per peer operator on the peer port.
    pub peer_rate: Rate,
    /// Calls per API client (credential) on the API port.
    pub api_rate: Rate,
    /// Interval between trust-list refreshes from peers, in ms (plus jitter).
    pub trust_refresh_interval_ms: u64,
    /// Requests in flight at once on each gRPC server (peer port, API port);
    /// more are refused with `busy`. Not in `node.toml`: fixed at
    /// [`limits::CONCURRENT_REQUESTS_MAX`] there, lowered only by tests.
    pub concurrent_requests_max: usize,
    /// Inbound libp2p envelope requests being served at once; more are
    /// refused with `busy`. Not in `node.toml`: fixed at
    /// [`limits::P2P_INBOUND_IN_FLIGHT_MAX`] there, lowered only by tests.
    pub p2p_inbound_in_flight_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            peer_rate: Rate {
                per_second: limits::PEER_REQUESTS_PER_SECOND_DEFAULT,
                burst: limits::PEER_REQUEST_BURST_DEFAULT,
            },
            api_rate: Rate {
                per_second: limits::API_REQUESTS_PER_SECOND_DEFAULT,
                burst: limits::API_REQUEST_BURST_DEFAULT,
            },
            trust_refresh_interval_ms: limits::TRUST_REFRESH_INTERVAL_MS_DEFAULT,
            concurrent_requests_max: limits::CONCURRENT_REQUESTS_MAX,
            p2p_inbound_in_flight_max: limits::P2P_INBOUND_IN_FLIGHT_MAX,
        }
    }
}

/// `[ngsi_ld]`: answer data requests from an unchanged NGSI-LD context broker (OASC MIM1).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgsiLdConfig {
    /// Base URL of the broker, e.g. `http://127.0.0.1:1026` (plain HTTP on a private link).
    pub base_url: String,
    /// The entity type holding the subjects' attributes, e.g. `Person`.
    pub entity_type: String,
    /// The entity attribute holding the subject id, e.g. `identifier`.
    pub subject_attribute: String,
    /// Catalogue attribute -> NGSI-LD attribute name.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// `[controller]`: contact details of the operator as data controller,
/// which Kantara consent receipts must carry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    /// Legal name.
    pub name: String,
    /// Contact person or office.
    pub contact: String,
    /// Street and number.
    pub street_address: String,
    /// Postal code.
    pub postal_code: String,
    /// City.
    pub locality: String,
    /// ISO 3166-1 alpha-2 country code (also the jurisdiction).
    pub country: String,
    /// Contact email.
    pub email: String,
    /// Phone as an RFC 3966 global number, e.g. `+358-9-310-1691`.
    pub phone: String,
    /// Privacy policy URL.
    pub policy_url: String,
    /// Language of the consent interaction (ISO 639-1).
    #[serde(default = "english")]
    pub language: String,
}

fn english() -> String {
    "en".to_owned()
}

/// A configuration error, with the key and line it concerns where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), location(*line, key))]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: Option<usize>,
    /// The offending key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn location(line: Option<usize>, key: &Option<String>) -> String {
    match (line, key) {
        (Some(line), Some(key)) => format!(":{line}: key `{key}`"),
        (Some(line), None) => format!(":{line}"),
        (None, Some(key)) => format!(": key `{key}`"),
        (None, None) => String::new(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    operator_id: Spanned<String>,
    key_file: Spanned<String>,
    data_dir: Spanned<String>,
    trust_list: Spanned<String>,
    #[serde(default = "no_keys")]
    governance_keys: Spanned<Vec<String>>,
    #[serde(default = "one")]
    governance_threshold: Spanned<u32>,
    #[serde(default = "default_clients_file")]
    clients_file: Spanned<String>,
    #[serde(default = "default_rulebook")]
    rulebook_version: String,
    listen: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    controller: Option<Controller>,
    #[serde(default)]
    registry_files: Vec<String>,
    #[serde(default)]
    ngsi_ld: Option<NgsiLdConfig>,
    #[serde(default)]
    transport: RawTransport,
}

/// `[transport]`: how this node talks to peers.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    /// Plaintext instead of TLS; only ever `true` on purpose.
    #[serde(default)]
    insecure_plaintext: bool,
    /// libp2p listen multiaddrs.
    #[serde(default)]
    p2p_listen: Vec<Spanned<String>>,
    /// `grpc` or `libp2p`.
    #[serde(default)]
    prefer: Option<Spanned<String>>,
}

fn no_keys() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn default_clients_file() -> Spanned<String> {
    Spanned::new(0..0, "clients.toml".to_owned())
}

fn default_rulebook() -> String {
    "mim4-rulebook-1.0".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    peer: Spanned<String>,
    api: Spanned<String>,
    #[serde(default)]
    api_remote: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    message_bytes_max: Option<Spanned<u64>>,
    clock_skew_ms_max: Option<Spanned<u64>>,
    message_lifetime_ms: Option<Spanned<u64>>,
    peer_requests_per_second: Option<Spanned<u32>>,
    peer_request_burst: Option<Spanned<u32>>,
    api_requests_per_second: Option<Spanned<u32>>,
    api_request_burst: Option<Spanned<u32>>,
    trust_refresh_interval_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_filter")]
    filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            filter: default_filter(),
        }
    }
}

fn default_filter() -> String {
    "info".to_owned()
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates configuration text; `path` names the file in errors and
    /// anchors relative paths. The sections are checked in file order
    /// (top-level keys, `[listen]`, `[limits]`, `[transport]`), and the first
    /// error found is returned.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let at = Locator { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: e.span().and_then(|s| at.line_of(s.start)),
            key: None,
            message: e.message().to_owned(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Spanned<String>| base.join(p.get_ref());

        let operator_id = OperatorId::new(raw.operator_id.get_ref().clone())
            .map_err(|e| at.error(Some(raw.operator_id.span()), "operator_id", e.to_string()))?;
        let (governance_keys, threshold) = raw.governance(&at)?;
        let (peer_listen, api_listen) = raw.listen.addrs(&at)?;
        let (envelope_limits, message_lifetime_ms) = raw.limits.envelope(&at)?;
        let tuned = raw.limits.tuned(&at)?;
        let p2p_listen = raw.transport.p2p_listen(&at)?;
        let prefer = raw.transport.prefer(&at)?;
        if raw.rulebook_version.is_empty() || raw.rulebook_version.len() > 64 {
            return Err(at.error(
                None,
                "rulebook_version",
                "must be 1 to 64 characters".into(),
            ));
        }
        Ok(Self {
            operator_id,
            key_file: resolve(&raw.key_file),
            data_dir: resolve(&raw.data_dir),
            trust_list: resolve(&raw.trust_list),
            governance_keys,
            governance_threshold: threshold,
            clients_file: resolve(&raw.clients_file),
            peer_listen,
            api_listen,
            api_remote: raw.listen.api_remote,
            envelope_limits,
            message_lifetime_ms,
            rulebook_version: raw.rulebook_version,
            log_filter: raw.log.filter,
            controller: raw.controller,
            registry_files: raw.registry_files.iter().map(|p| base.join(p)).collect(),
            ngsi_ld: raw.ngsi_ld,
            insecure_plaintext: raw.transport.insecure_plaintext,
            p2p_listen,
            prefer,
            limits: tuned,
        })
    }
}

/// The text being parsed and its file, to turn a key's span into a
/// [`ConfigError`] that names the file, the line and the key.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    /// The 1-based line of a byte offset; `None` for offset 0 in a text that
    /// starts with whitespace (a defaulted key's empty span points there).
    fn line_of(&self, offset: usize) -> Option<usize> {
        let text = self.text;
        (offset > 0 || text.starts_with(|c: char| !c.is_whitespace()))
            .then(|| text[..offset.min(text.len())].matches('\n').count() + 1)
    }

    /// An error about `key`, at the line of `span` unless the span is empty
    /// at the start (a defaulted key, which has no line).
    fn error(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: span
                .filter(|s| s.end > 0)
                .and_then(|s| self.line_of(s.start)),
            key: Some(key.to_owned()),
            message,
        }
    }
}

impl RawConfig {
    /// `governance_keys` and `governance_threshold`: at least one valid key,
    /// and a threshold between 1 and the number of keys.
    fn governance(&self, at: &Locator<'_>) -> Result<(Vec<PublicKey>, u32), ConfigError> {
        let mut governance_keys = Vec::new();
        for text in self.governance_keys.get_ref() {
            let key = PublicKey::from_hex(text).map_err(|e| {
                at.error(
                    Some(self.governance_keys.span()),
                    "governance_keys",
                    format!("{e} (expected 64 hex digits, as `mim4-node governance init` prints)"),
                )
            })?;
            governance_keys.push(key);
        }
        if governance_keys.is_empty() {
            return Err(at.error(
                Some(self.governance_keys.span()),
                "governance_keys",
                "no governance key: add the federation's governance public key(s) (hex), \
                 which your federation publishes, so the node can verify the trust list"
                    .into(),
            ));
        }
        let threshold = *self.governance_threshold.get_ref();
        if threshold == 0 || threshold as usize > governance_keys.len() {
            return Err(at.error(
                Some(self.governance_threshold.span()),
                "governance_threshold",
                format!(
                    "must be between 1 and the number of governance keys ({})",
                    governance_keys.len()
                ),
            ));
        }
        Ok((governance_keys, threshold))
    }
}

impl RawListen {
    /// `[listen]`: the peer and API addresses (the API on loopback unless
    /// `api_remote`), on different ports.
    fn addrs(&self, at: &Locator<'_>) -> Result<(SocketAddr, SocketAddr), ConfigError> {
        let addr = |value: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
            value.get_ref().parse().map_err(|e| {
                at.error(
                    Some(value.span()),
                    key,
                    format!("{e}: expected host:port such as 127.0.0.1:7401"),
                )
            })
        };
        let peer_listen = addr(&self.peer, "listen.peer")?;
        let api_listen = addr(&self.api, "listen.api")?;
        if !api_listen.ip().is_loopback() && !self.api_remote {
            return Err(at.error(
                Some(self.api.span()),
                "listen.api",
                format!(
                    "{api_listen} is not a loopback address: the API is plaintext gRPC \
                     (credentials and personal data in clear), for clients on this host; \
                     bind it to 127.0.0.1 or ::1 and put a TLS proxy in front for remote \
                     clients, or set `api_remote = true` under [listen] to accept the risk"
                ),
            ));
        }
        if peer_listen == api_listen && peer_listen.port() != 0 {
            return Err(at.error(
                Some(self.api.span()),
                "listen.api",
                "the API and peer servers need different ports".into(),
            ));
        }
        Ok((peer_listen, api_listen))
    }
}

impl RawLimits {
    /// `[limits]` on envelopes: their size, the clock skew and the lifetime of
    /// messages this node sends.
    fn envelope(&self, at: &Locator<'_>) -> Result<(EnvelopeLimits, u64), ConfigError> {
        let mut envelope_limits = EnvelopeLimits::default();
        let mut message_lifetime_ms = limits::MESSAGE_LIFETIME_MS_DEFAULT;
        if let Some(v) = &self.message_bytes_max {
            let value = *v.get_ref();
            if !(1024..=limits::MESSAGE_BYTES_MAX as u64).contains(&value) {
                return Err(at.error(
                    Some(v.span()),
                    "limits.message_bytes_max",
                    format!("must be between 1024 and {}", limits::MESSAGE_BYTES_MAX),
                ));
            }
            envelope_limits.message_bytes_max = usize::try_from(value).unwrap_or(usize::MAX);
        }
        if let Some(v) = &self.clock_skew_ms_max {
            let value = *v.get_ref();
            if value > 10 * 60 * 1000 {
                return Err(at.error(
                    Some(v.span()),
                    "limits.clock_skew_ms_max",
                    "must be at most 600000 (10 minutes)".into(),
                ));
            }
            envelope_limits.clock_skew_ms_max = value;
        }
        if let Some(v) = &self.message_lifetime_ms {
            let value = *v.get_ref();
            if !(1_000..=limits::MESSAGE_LIFETIME_MS_MAX).contains(&value) {
                return Err(at.error(
                    Some(v.span()),
                    "limits.message_lifetime_ms",
                    format!(
                        "must be between 1000 and {}",
                        limits::MESSAGE_LIFETIME_MS_MAX
                    ),
                ));
            }
            message_lifetime_ms = value;
        }
        Ok((envelope_limits, message_lifetime_ms))
    }

    /// `[limits]` rates (each at least 1) and the trust-list refresh interval
    /// (within its bounds); the rest of [`Limits`] keeps its defaults.
    fn tuned(&self, at: &Locator<'_>) -> Result<Limits, ConfigError> {
        let mut tuned = Limits::default();
        let rates = [
            (
                &self.peer_requests_per_second,
                "limits.peer_requests_per_second",
                &mut tuned.peer_rate.per_second,
            ),
            (
                &self.peer_request_burst,
                "limits.peer_request_burst",
                &mut tuned.peer_rate.burst,
            ),
            (
                &self.api_requests_per_second,
                "limits.api_requests_per_second",
                &mut tuned.api_rate.per_second,
            ),
            (
                &self.api_request_burst,
                "limits.api_request_burst",
                &mut tuned.api_rate.burst,
            ),
        ];
        for (value, key, target) in rates {
            if let Some(v) = value {
                if *v.get_ref() == 0 {
                    return Err(at.error(Some(v.span()), key, "must be at least 1".into()));
                }
                *target = *v.get_ref();
            }
        }
        if let Some(v) = &self.trust_refresh_interval_ms {
            let value = *v.get_ref();
            let range =
                limits::TRUST_REFRESH_INTERVAL_MS_MIN..=limits::TRUST_REFRESH_INTERVAL_MS_MAX;
            if !range.contains(&value) {
                return Err(at.error(
                    Some(v.span()),
                    "limits.trust_refresh_interval_ms",
                    format!(
                        "must be between {} and {} (revocations must reach every node within a minute)",
                        range.start(),
                        range.end()
                    ),
                ));
            }
            tuned.trust_refresh_interval_ms = value;
        }
        Ok(tuned)
    }
}

impl RawTransport {
    /// `[transport] p2p_listen`: each a multiaddr.
    fn p2p_listen(&self, at: &Locator<'_>) -> Result<Vec<libp2p::Multiaddr>, ConfigError> {
        let mut p2p_listen = Vec::new();
        for text in &self.p2p_listen {
            let addr: libp2p::Multiaddr = text.get_ref().parse().map_err(|e| {
                at.error(
                    Some(text.span()),
                    "transport.p2p_listen",
                    format!(
                        "{e}: expected a multiaddr such as /ip4/127.0.0.1/tcp/7403 or \
                         /ip4/127.0.0.1/udp/7403/quic-v1"
                    ),
                )
            })?;
            p2p_listen.push(addr);
        }
        Ok(p2p_listen)
    }

    /// `[transport] prefer`: `grpc` (the default) or `libp2p`.
    fn prefer(&self, at: &Locator<'_>) -> Result<TransportKind, ConfigError> {
        let Some(v) = &self.prefer else {
            return Ok(TransportKind::Grpc);
        };
        match v.get_ref().as_str() {
            "grpc" => Ok(TransportKind::Grpc),
            "libp2p" => Ok(TransportKind::Libp2p),
            other => Err(at.error(
                Some(v.span()),
                "transport.prefer",
                format!("{other:?} is not a transport: use \"grpc\" or \"libp2p\""),
            )),
        }
    }
}

/// The commented `node.toml` that `mim4-node init` writes.
// Long because it is one string literal, the file itself, kept whole so it reads as `init` writes it.
pub fn template(
    operator_id: &OperatorId,
    peer_listen: SocketAddr,
    api_listen: SocketAddr,
    governance_keys: &[PublicKey],
    p2p_listen: &[libp2p::Multiaddr],
) -> String {
    let p2p_listen = p2p_listen
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = governance_keys
        .iter()
        .map(|k| format!("\"{}\"", k.to_hex()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"# MIM4 operator node configuration.
# Relative paths are relative to the folder of this file.
# Check it with: mim4-node config check node.toml

# This operator's id in the federation trust list.
operator_id = "{operator_id}"

# Ed25519 secret key (hex). Created by `mim4-node init` with mode 0600; never share it.
key_file = "operator.key"

# sled database: trust list, replay window, inbox, outbox.
data_dir = "data"

# The signed federation trust list this node starts from. The node keeps the
# newest valid list it has seen in its database and refreshes it from peers.
trust_list = "trust-list.pb"

# Governance public keys (hex) you trust to sign the trust list: your trust
# anchor. Your federation publishes them; `mim4-node governance init` prints one.
governance_keys = [{keys}]
governance_threshold = 1

# JSON files loaded into this node's built-in registry at start, if it is a
# data source: {{"subjects": {{"<subject id>": {{"<attribute>": <value>, ...}}}}}}.
registry_files = []

# Or answer from an unchanged NGSI-LD context broker (OASC MIM1) instead:
# [ngsi_ld]
# base_url = "http://127.0.0.1:1026"
# entity_type = "Person"
# subject_attribute = "identifier"
# [ngsi_ld.attributes]
# "income.gross_monthly" = "grossMonthlyIncome"

# Credentials of local API clients (written by `mim4-node client add`).
clients_file = "clients.toml"

# Rulebook version this operator signed up to.
rulebook_version = "mim4-rulebook-1.0"

[listen]
# OperatorPeer gRPC server: other operators deliver envelopes here. The address
# must match the grpc_endpoint of this operator in the trust list
# (https://host:port).
peer = "{peer_listen}"
# OperatorApi gRPC server: cities, citizen apps and admins. Plaintext gRPC
# (bearer credentials and personal data in clear): a loopback address only,
# unless api_remote = true (then put a TLS-terminating proxy in front).
api = "{api_listen}"
api_remote = false

[transport]
# Peers talk gRPC over TLS 1.3, both sides authenticated: each node presents a
# certificate made at start from its operator key, and accepts a peer only if
# the trust list lists that key for an active member (no CA, nothing to renew).
# insecure_plaintext = true turns TLS off: traffic is then neither encrypted nor
# authenticated at the transport. Development federations only (their trust
# list gives http:// endpoints); the node warns at every start.
insecure_plaintext = false
# libp2p: TCP + noise + yamux and QUIC, authenticated by the operator key (the
# PeerId is derived from it). List the same addresses as this operator's
# p2p_addrs in the trust list. Empty: no libp2p listener (the node still dials
# members that offer only libp2p).
p2p_listen = [{p2p_listen}]
# Which transport to try first when a member offers both: "grpc" or "libp2p".
# The other is tried when the first cannot reach the member.
prefer = "grpc"

[limits]
# Largest accepted envelope in bytes, checked before decoding (at most 1 MiB).
message_bytes_max = {bytes}
# Tolerated clock difference between operators, in ms.
clock_skew_ms_max = {skew}
# Lifetime of messages this node sends, in ms; undelivered messages expire after it.
message_lifetime_ms = {lifetime}
# Requests (Deliver + Call) one peer operator may make per second on the peer
# port, and the burst above it. The excess is refused with RESOURCE_EXHAUSTED
# (reason `rate_limited`) before it is decoded; senders retry it from their outbox.
peer_requests_per_second = {peer_rate}
peer_request_burst = {peer_burst}
# Calls one API client (credential) may make per second, and the burst above it.
api_requests_per_second = {api_rate}
api_request_burst = {api_burst}
# How often the node asks a few peers for a newer trust list, in ms (plus up to
# a fifth as jitter); at most 50000, so that a revocation is in force everywhere
# within a minute.
trust_refresh_interval_ms = {refresh}

[log]
# tracing filter; RUST_LOG overrides it.
filter = "info"

# The operator as data controller, named in exported consent receipts
# (Kantara v1.1 requires these details). Uncomment and fill in to enable
# `ExportConsent`.
# [controller]
# name = "City of Helsinki"
# contact = "Data Protection Officer"
# street_address = "Pohjoisesplanadi 11-13"
# postal_code = "00170"
# locality = "Helsinki"
# country = "FI"
# email = "tietosuoja@hel.fi"
# phone = "+358-9-310-1691"
# policy_url = "https://www.hel.fi/en/decision-making/information-on-helsinki/data-protection"
# language = "fi"
"#,
        bytes = limits::MESSAGE_BYTES_MAX,
        skew = limits::CLOCK_SKEW_MS_DEFAULT,
        lifetime = limits::MESSAGE_LIFETIME_MS_DEFAULT,
        peer_rate = limits::PEER_REQUESTS_PER_SECOND_DEFAULT,
        peer_burst = limits::PEER_REQUEST_BURST_DEFAULT,
        api_rate = limits::API_REQUESTS_PER_SECOND_DEFAULT,
        api_burst = limits::API_REQUEST_BURST_DEFAULT,
        refresh = limits::TRUST_REFRESH_INTERVAL_MS_DEFAULT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

    fn valid() -> String {
        format!(
            "operator_id = \"fi.helsinki\"\nkey_file = \"k\"\ndata_dir = \"d\"\ntrust_list = \"t\"\n\
             governance_keys = [\"{KEY}\"]\n[listen]\npeer = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n"
        )
    }

    fn check(text: &str, expected: Result<(), (Option<usize>, &str)>) {
        let result = Config::parse(text, Path::new("/etc/mim4/node.toml"));
        match (result, expected) {
            (Ok(_), Ok(())) => {}
            (Err(e), Err((line, needle))) => {
                assert_eq!(e.line, line, "{e}");
                assert!(
                    e.to_string().contains(needle),
                    "{e} should mention {needle}"
                );
            }
            (result, expected) => panic!("got {result:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn valid_config_resolves_paths_against_its_folder() {
        let config = Config::parse(&valid(), Path::new("/etc/mim4/node.toml")).unwrap();
        assert_eq!(config.data_dir, Path::new("/etc/mim4/d"));
        assert_eq!(config.operator_id.as_str(), "fi.helsinki");
        check(&valid(), Ok(()));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        check(
            &valid().replace("fi.helsinki", "Fi Helsinki"),
            Err((Some(1), "key `operator_id`")),
        );
        check(
            &valid().replace("127.0.0.1:2", "localhost"),
            Err((Some(8), "key `listen.api`")),
        );
        check(
            &valid().replace(KEY, "abc"),
            Err((Some(5), "governance_keys")),
        );
        // The plaintext API binds to loopback unless remote access is asked for.
        for remote in ["0.0.0.0:2", "192.0.2.7:2", "[::]:2"] {
            check(
                &valid().replace("127.0.0.1:2", remote),
                Err((Some(8), "not a loopback address")),
            );
            let text = valid().replace("127.0.0.1:2", remote) + "api_remote = true\n";
            let config = Config::parse(&text, Path::new("node.toml")).unwrap();
            assert!(config.api_remote, "{remote}");
        }
        check(&valid().replace("127.0.0.1:2", "[::1]:2"), Ok(()));
        check(
            &valid().replace("data_dir", "data_dri"),
            Err((Some(3), "unknown field")),
        );
        check(
            &format!("{}[limits]\nmessage_bytes_max = 99999999\n", valid()),
            Err((Some(10), "limits.message_bytes_max")),
        );
    }

    #[test]
    fn ngsi_ld_section_parses() {
        let text = format!(
            "{}registry_files = []\n[ngsi_ld]\nbase_url = \"http://127.0.0.1:1026\"\nentity_type = \"Person\"\n\
             subject_attribute = \"identifier\"\n[ngsi_ld.attributes]\n\"income.gross_monthly\" = \"grossMonthlyIncome\"\n",
            valid().replace("[listen]", "").replace("peer = ", "x_peer = ")
        );
        // Keep [listen] last-but-one: rebuild it explicitly.
        let text = text.replace("x_peer = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n", "");
        let text = format!("{text}[listen]\npeer = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n");
        let config = Config::parse(&text, Path::new("node.toml")).unwrap();
        let ngsi = config.ngsi_ld.unwrap();
        assert_eq!(ngsi.entity_type, "Person");
        assert_eq!(
            ngsi.attributes["income.gross_monthly"],
            "grossMonthlyIncome"
        );
    }

    #[test]
    fn template_parses() {
        let key = PublicKey::from_hex(KEY).unwrap();
        let text = template(
            &OperatorId::new("se.stockholm").unwrap(),
            "127.0.0.1:7401".parse().unwrap(),
            "127.0.0.1:7402".parse().unwrap(),
            &[key],
            &["/ip4/127.0.0.1/tcp/7403".parse().unwrap()],
        );
        let config = Config::parse(&text, Path::new("node.toml")).unwrap();
        assert_eq!(config.governance_keys, vec![key]);
        assert_eq!(config.p2p_listen[0].to_string(), "/ip4/127.0.0.1/tcp/7403");
        assert_eq!(config.prefer, TransportKind::Grpc);
        assert!(!config.insecure_plaintext, "TLS is the default");
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn rates_and_refresh_are_tunable_within_bounds() {
        let text = format!(
            "{}[limits]\npeer_requests_per_second = 5\npeer_request_burst = 7\n\
             api_requests_per_second = 3\napi_request_burst = 4\ntrust_refresh_interval_ms = 500\n",
            valid()
        );
        let config = Config::parse(&text, Path::new("node.toml")).unwrap();
        assert_eq!(
            config.limits.peer_rate,
            Rate {
                per_second: 5,
                burst: 7
            }
        );
        assert_eq!(
            config.limits.api_rate,
            Rate {
                per_second: 3,
                burst: 4
            }
        );
        assert_eq!(config.limits.trust_refresh_interval_ms, 500);
        check(
            &format!("{}[limits]\npeer_requests_per_second = 0\n", valid()),
            Err((Some(10), "limits.peer_requests_per_second")),
        );
        check(
            &format!("{}[limits]\ntrust_refresh_interval_ms = 3600000\n", valid()),
            Err((Some(10), "limits.trust_refresh_interval_ms")),
        );
    }

    #[test]
    fn plaintext_only_when_asked() {
        let config = Config::parse(&valid(), Path::new("node.toml")).unwrap();
        assert!(!config.insecure_plaintext);
        let text = format!("{}[transport]\ninsecure_plaintext = true\n", valid());
        assert!(
            Config::parse(&text, Path::new("node.toml"))
                .unwrap()
                .insecure_plaintext
        );
        check(
            &format!("{}[transport]\nplaintext = true\n", valid()),
            Err((Some(10), "unknown field")),
        );
    }
}
