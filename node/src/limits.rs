//! Every limit of the node in one place, each with the reason for its value.
//!
//! Limits bound memory and work per peer and per client, so that a hostile or
//! broken party cannot exhaust the node. Values that an operator may tune are
//! defaults for `[limits]` in `node.toml` (see [`crate::config::Limits`]);
//! the rest are fixed here.

use std::time::Duration;

/// Largest accepted signed envelope, in bytes, checked before any decoding.
///
/// 1 MiB holds any single protocol message; bulk transfers (operator switch
/// bundles) are chunked below it. Also fed to tonic's `max_decoding_message_size`
/// and `max_encoding_message_size`. Memory cost: one buffer of this size per
/// in-flight request.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// Largest accepted signed trust list, in bytes.
///
/// A federation of 1,000 members with 3 keys each encodes to about 250 KiB;
/// 4 MiB leaves room for the attribute catalogue and service registry.
pub const TRUST_LIST_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most members a trust list may name; bounds lookup tables built from it.
pub const MEMBERS_MAX: usize = 10_000;

/// Most keys per member; rotation needs two, three leaves room for an emergency key.
pub const KEYS_PER_MEMBER_MAX: usize = 8;

/// Most governance keys (n of k-of-n) and governance signatures a list may carry.
pub const GOVERNANCE_KEYS_MAX: usize = 32;

/// Longest operator id, in bytes (`fi.helsinki`, `se.arbetsformedlingen`).
pub const OPERATOR_ID_BYTES_MAX: usize = 64;

/// Longest free-text field in a trust list (names, endpoints), in bytes.
pub const TEXT_FIELD_BYTES_MAX: usize = 512;

/// Longest memo subject, in bytes.
pub const MEMO_SUBJECT_BYTES_MAX: usize = 200;

/// Longest memo text, in bytes: administrative notes, not bulk data.
pub const MEMO_TEXT_BYTES_MAX: usize = 64 * 1024;

/// Default tolerated clock difference between operators, in milliseconds.
///
/// NTP keeps servers within tens of milliseconds; 30 s tolerates a badly
/// synchronised host without widening the replay window much.
pub const CLOCK_SKEW_MS_DEFAULT: u64 = 30_000;

/// Default and largest lifetime of a message (expires_at - created_at), in ms.
///
/// The replay window (seen message ids kept in sled) must cover this, so the
/// lifetime bounds that table: at 1,000 messages/s a day is 86.4 M ids of
/// about 80 bytes, 7 GB, which is the ceiling; typical federations send far
/// fewer. A day lets the outbox ride out a peer's overnight outage.
pub const MESSAGE_LIFETIME_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;

/// Largest lifetime a node accepts on a received message, in ms (7 days).
pub const MESSAGE_LIFETIME_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;

/// First outbox retry delay, in ms.
pub const RETRY_DELAY_MS_INITIAL: u64 = 200;

/// Longest outbox retry delay, in ms: a peer back from an outage is reached within a minute.
pub const RETRY_DELAY_MS_MAX: u64 = 60_000;

/// Deliveries in flight to one peer at once; more wait in the outbox (in sled, not memory).
pub const IN_FLIGHT_PER_PEER_MAX: usize = 32;

/// Deliveries in flight in total.
pub const IN_FLIGHT_TOTAL_MAX: usize = 256;

/// Deadline of one delivery attempt, in ms; a slow peer is retried later.
pub const DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// Deadline of a peer TLS handshake, in ms (TCP connect excluded on the
/// client, which has its own timeout). A handshake is two round trips and two
/// Ed25519 operations; a peer that takes longer is stalling and loses its slot.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Peer TLS handshakes in progress at once on the peer port; more connections
/// wait in the kernel's accept queue. Bounds the work a flood of unauthenticated
/// connections causes (a few KiB of rustls state each).
pub const TLS_HANDSHAKES_MAX: usize = 64;

/// Concurrent gRPC streams per connection, on both the peer and API ports.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 128;

/// Requests served at once by each gRPC server (the peer port and the API
/// port, each its own count, across all connections); more are refused at
/// once with `RESOURCE_EXHAUSTED` and reason `busy` (as on libp2p, see
/// [`P2P_INBOUND_IN_FLIGHT_MAX`]), which an outbox retries with backoff.
/// Enforced by `transport::grpc::InFlight` around `OperatorPeer` and
/// `OperatorApi` (gRPC health is not counted). A request holds its slot from
/// its headers to its answer, except a rate-limited peer request, which gives
/// it back while it is held ([`RATE_LIMITED_HOLD_MS`]), so a flooding peer
/// cannot take the others' slots with refusals. Memory: up to
/// [`MESSAGE_BYTES_MAX`] per request, so 512 MiB per port at the cap;
/// 512 is four connections' worth of [`STREAMS_PER_CONNECTION_MAX`] and far
/// above what the benchmarks keep in flight (the flood benchmark's 64 loops).
pub const CONCURRENT_REQUESTS_MAX: usize = 512;

/// Most messages one `ListMessages` call returns.
pub const LIST_MESSAGES_MAX: u32 = 1_000;

/// Depth of the queue that wakes the delivery loop; a full queue only means a wake-up is already pending.
pub const OUTBOX_WAKE_QUEUE: usize = 1_024;

/// Most API clients in `clients.toml`; bounds the credential table.
pub const API_CLIENTS_MAX: usize = 10_000;

/// Most attributes in the federation's catalogue; bounds the lookup table built from it.
pub const CATALOGUE_ATTRIBUTES_MAX: usize = 10_000;

/// Most services in the federation's service registry.
pub const REGISTRY_SERVICES_MAX: usize = 10_000;

/// Most attributes (values plus predicates) in one data request: a form's worth,
/// which keeps a request far below the message limit.
pub const REQUEST_ATTRIBUTES_MAX: usize = 32;

/// Longest JSON operand of a predicate, in bytes.
pub const PREDICATE_OPERAND_BYTES_MAX: usize = 256;

/// Longest JSON value of one attribute of one subject, in bytes: the largest
/// value a registry load stores (`LoadError::ValueTooLarge`) and the largest
/// a holder releases from any source (a larger one is withheld `too-large`).
///
/// Register values are numbers, short strings and small lists; 64 KiB leaves
/// room for a long list of diplomas while keeping a read's answer small.
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Most attributes the built-in registry holds for one subject, over all the
/// files loaded into it (`LoadError::TooManyAttributes`).
///
/// The attribute catalogue of a federation has tens of attributes per
/// register and a person appears in a handful of registers; 1,024 is far
/// above that and bounds a subject's keys in sled (one per attribute).
pub const ATTRIBUTES_PER_SUBJECT_MAX: usize = 1_024;

/// Most bytes of JSON the built-in registry holds for one subject, summed
/// over its values from all the files loaded into it
/// (`LoadError::SubjectTooLarge`).
///
/// Half of [`MESSAGE_BYTES_MAX`]: whatever a request asks of one subject,
/// the values of the answer then fit in one signed envelope, with the other
/// half for provenance, encoding and signature. It also bounds what one read
/// holds in memory. A subject with every attribute at
/// [`ATTRIBUTE_VALUE_BYTES_MAX`] is refused at load time, not at read time.
pub const SUBJECT_DATA_BYTES_MAX: usize = 512 * 1024;

/// Most NGSI-LD entities one subject may match in one read from a context
/// broker; more is `SourceError::TooManyEntities`, as a broker that ignored
/// the query would answer.
///
/// A person has a handful of entities in any register (a diploma register
/// lists one per degree); 1,000 bounds the memory of a read (each entity is
/// parsed JSON restricted to the mapped attributes) independently of the
/// page size.
pub const ENTITIES_PER_SUBJECT_MAX: usize = 1_000;

/// Most consent records (consents and arrangements, in any state, ended ones
/// included) one node holds about one subject; a new record beyond it is
/// refused with `ConsentError::SubjectFull` (`RESOURCE_EXHAUSTED`, reason
/// `too_many_consents`), on the API and when a peer offers or pushes it.
///
/// A person gives a few consents a year; 1,024 covers a lifetime of them.
/// It bounds the index entries of a subject, and a `ListConsents` answer
/// (terms and signed log, a few KiB per typical record, so a few MiB at most,
/// within the API's encoding limit). Ended records count because
/// they are kept as evidence; a requester that fills a subject's records is
/// visible in them (each names its service).
pub const CONSENTS_PER_SUBJECT_MAX: usize = 1_024;

/// Most grantors one consent may require: both guardians of a child, and a
/// little room (`TermsError::Count`).
pub const CONSENT_GRANTORS_MAX: usize = 4;

/// Most (attribute, action) pairs in one consent's scope (`TermsError::Count`):
/// twice [`REQUEST_ATTRIBUTES_MAX`], so one consent covers any request.
pub const CONSENT_SCOPE_MAX: usize = 64;

/// Most purposes in one consent (`TermsError::Count`); the decision index
/// keeps up to this many inline per entry.
pub const CONSENT_PURPOSES_MAX: usize = 8;

/// Most events in one consent's log (`TransitionError::TooManyEvents`).
///
/// A log travels whole in one envelope: an event with the largest terms
/// (64 scope items and 8 purposes of [`NAME_BYTES_MAX`], 1 KiB of text) is
/// about 11 KiB signed, so 64 of them stay below [`MESSAGE_BYTES_MAX`]. A
/// record's life is a request, a grant per grantor, a few narrowings and an
/// end, far fewer.
pub const CONSENT_EVENTS_MAX: usize = 64;

/// Longest identifier or label in consent terms (subject ids, attributes,
/// purposes, sectors, service ids), in bytes: national person ids and
/// catalogue names are far shorter.
pub const NAME_BYTES_MAX: usize = 128;

/// Longest free-text description of a consent's purpose, in bytes: a few
/// sentences shown to the citizen.
pub const PURPOSE_TEXT_BYTES_MAX: usize = 1024;

/// Most delegations (guardianships, mandates) one agent may hold
/// (`DelegationError::TooMany`); bounds the search for an authority chain.
/// A guardian of a large family or a professional mandatary stays far below it.
pub const DELEGATIONS_PER_AGENT_MAX: usize = 64;

/// Longest delegation chain: a guardian (1) may mandate one person (2); a
/// mandate cannot be passed on further.
pub const DELEGATION_DEPTH_MAX: usize = 2;

/// Deadline of a data request across operators, in ms: a holder that does not
/// answer by then is reported unreachable.
pub const DATA_REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Default sustained rate of requests (`Deliver` + `Call`) one peer operator
/// may make on the peer port, per second; `[limits] peer_requests_per_second`.
///
/// A node applies about 5,000 durable messages/s on this machine class (one
/// batched flush is about 0.2 ms), and the load benchmark drives about 2,000
/// data-request calls/s from one peer: 4,000/s leaves that run untouched while
/// a single operator can no longer take the whole node for itself. A
/// federation of small operators should lower it. Memory: one bucket (about
/// 100 bytes) per member that has called.
pub const PEER_REQUESTS_PER_SECOND_DEFAULT: u32 = 4_000;

/// Default burst a peer may send above its rate (the bucket's size);
/// `[limits] peer_request_burst`. Two seconds' worth: an outbox draining
/// after a peer's outage sends a burst of up to `IN_FLIGHT_PER_PEER_MAX`
/// at a time, far below this, so recovery is never throttled.
pub const PEER_REQUEST_BURST_DEFAULT: u32 = 8_000;

/// Default sustained rate of calls one API client (one credential) may make,
/// per second; `[limits] api_requests_per_second`. The benchmark's 16
/// connections share one service credential at about 2,000 calls/s, so the
/// default is twice that; a citizen app or city service far exceeding it is
/// broken or hostile and should not starve the other clients.
pub const API_REQUESTS_PER_SECOND_DEFAULT: u32 = 4_000;

/// Default burst of one API client above its rate; `[limits] api_request_burst`.
pub const API_REQUEST_BURST_DEFAULT: u32 = 8_000;

/// Most rate-limit buckets kept per port. Keys are authenticated members
/// (at most [`MEMBERS_MAX`]) or API clients (at most [`API_CLIENTS_MAX`]);
/// in plaintext mode, remote IP addresses, which is why the table is bounded:
/// when it is full, idle (full) buckets are dropped first.
pub const RATE_BUCKETS_MAX: usize = 10_000;

/// Authenticated TLS connections open at once on the peer port. Each holds an
/// HTTP/2 connection (tens of KiB of buffers); 1,024 serves a federation in
/// which every member keeps a connection to this node, with room for reconnects.
pub const PEER_CONNECTIONS_MAX: usize = 1_024;

/// Authenticated TLS connections one peer key may hold open at once. A node
/// keeps one channel per peer and redials after a trust-list change (the old
/// connection closes shortly after), so 16 covers reconnects and tools; more
/// is a peer hoarding connections, and the extra ones are closed at once.
pub const PEER_CONNECTIONS_PER_KEY_MAX: usize = 16;

/// Default interval between trust-list refreshes, in ms; `[limits]
/// trust_refresh_interval_ms`. Every interval (plus up to a fifth of it as
/// jitter, so nodes do not ask in step) a node fetches the list of a few peers
/// and installs a newer valid one. Together with the offer a node sends to
/// every peer when an admin installs a list, 30 s (+6 s) puts a revocation
/// in force at every node within a minute, also at a node that missed the offer.
pub const TRUST_REFRESH_INTERVAL_MS_DEFAULT: u64 = 30_000;

/// Shortest and longest configurable refresh interval, in ms. Above 50 s a
/// node that missed an offer may accept a revoked member for more than a minute.
pub const TRUST_REFRESH_INTERVAL_MS_MIN: u64 = 100;
/// See [`TRUST_REFRESH_INTERVAL_MS_MIN`].
pub const TRUST_REFRESH_INTERVAL_MS_MAX: u64 = 50_000;

/// Peers asked per refresh round, chosen at random among the active members:
/// a pull gossip that reaches a newer list in a few rounds without every node
/// asking every peer (10,000 members asking all would be 10^8 calls a round).
pub const TRUST_REFRESH_PEERS_PER_ROUND: usize = 3;

/// How often an expired trust list is logged at error level while the node
/// refuses traffic, in ms: loud enough to page someone, not a log flood.
pub const TRUST_EXPIRED_LOG_INTERVAL_MS: u64 = 60_000;

/// Non-member libp2p connections open at once. A PeerId outside the trust
/// list may identify and ping this node (standard libp2p tooling), nothing
/// more; a handful at a time is enough for that and bounds what a crowd of
/// strangers costs (a yamux session, about 100 KiB, each).
pub const P2P_NON_MEMBER_CONNECTIONS_MAX: usize = 8;

/// Lifetime of a non-member libp2p connection, in ms: enough for identify
/// and a few pings, then it is closed.
pub const P2P_NON_MEMBER_CONNECTION_MS: u64 = 10_000;

/// libp2p connections being set up (noise handshakes) at once; like
/// [`TLS_HANDSHAKES_MAX`] for the gRPC port.
pub const P2P_PENDING_INCOMING_MAX: u32 = 64;

/// Established libp2p connections in total; like the TLS port's cap.
pub const P2P_CONNECTIONS_MAX: u32 = 1_024;

/// Established libp2p connections per PeerId: one is the norm (yamux
/// multiplexes streams); two cover a TCP and a QUIC connection at once or a
/// simultaneous dial.
pub const P2P_CONNECTIONS_PER_PEER_MAX: u32 = 4;

/// Idle libp2p connections are closed after this many ms; the next request dials again.
pub const P2P_IDLE_CONNECTION_MS: u64 = 60_000;

/// Inbound `/mim4/envelope/1` requests being served at once; more are
/// refused with `busy` (`RESOURCE_EXHAUSTED`) and retried by the sender.
/// Same order as [`CONCURRENT_REQUESTS_MAX`] on the gRPC port. Rate-limited
/// requests whose refusal is held ([`RATE_LIMITED_HOLD_MS`]) are not counted
/// here: they wait in a set of their own, of the same bound, beyond which
/// the refusal goes out at once.
pub const P2P_INBOUND_IN_FLIGHT_MAX: usize = 512;

/// Depth of the queue of requests from the node to its swarm task; a full
/// queue makes senders wait (backpressure), it never grows.
pub const P2P_COMMAND_QUEUE: usize = 1_024;

/// Deadline of a Kademlia lookup of a member's current address, in ms.
pub const P2P_LOOKUP_TIMEOUT_MS: u64 = 5_000;

/// Largest gossipsub message, in bytes: gossip carries trust-list version
/// announcements (8 bytes) and later signed log tree heads, never data.
pub const P2P_GOSSIP_BYTES_MAX: usize = 4 * 1024;

/// How long a peer request refused for its rate (`rate_limited`) is held
/// before the refusal goes back, in ms, on both transports. A flooding peer
/// that retries at once is then slowed to one refusal per hold per stream
/// (at most [`STREAMS_PER_CONNECTION_MAX`] streams per connection), instead
/// of making the node spend a refusal per round trip, so the well-behaved
/// peers keep their latency. Costs one timer per held request. An outbox
/// retries a rate-limited delivery with backoff anyway, so nothing waits on it.
pub const RATE_LIMITED_HOLD_MS: u64 = 500;

/// Members a node dials over libp2p when it starts (random ones that offer
/// libp2p), so that gossip and Kademlia have peers at once; more connections
/// come with traffic. Eight keep start-up cheap in a large federation while
/// a gossip announcement still reaches everyone through the mesh.
pub const P2P_CONNECT_AT_START_MAX: usize = 8;

// -- data sources, exports ------------------------------------------------

/// Largest accepted response body of one page, in bytes.
///
/// A page holds one subject's entities restricted to the mapped attributes,
/// typically a few KiB; 4 MiB leaves room for many entities per subject (a
/// diploma register) while bounding memory per in-flight read to this buffer
/// plus its parsed JSON (a few times the size).
pub const NGSI_LD_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most pages followed for one read; more is treated as a malformed answer.
///
/// With the default page size of 100 that is 1,600 entities, far above what
/// one person has in any register; the bound stops a broker that keeps
/// announcing more pages.
pub const NGSI_LD_PAGES_MAX: usize = 16;

/// Largest page size (`limit`) the adapter asks for; brokers commonly cap it at 1,000.
pub const NGSI_LD_PAGE_SIZE_MAX: u32 = 1_000;

/// Default page size: one request for any realistic subject.
pub const NGSI_LD_PAGE_SIZE_DEFAULT: u32 = 100;

/// Default deadline of one whole read (all pages, connecting included).
///
/// A context broker answers a keyed query in milliseconds; 5 s rides out a
/// busy broker while staying well below the request deadline of a data
/// exchange, so a hanging broker becomes [`crate::sources::SourceError::Unavailable`] in time.
pub const NGSI_LD_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Bytes of an error body kept for the error message.
pub const NGSI_LD_PROBLEM_BYTES_MAX: usize = 4 * 1024;

/// Longest NGSI-LD name (entity type, attribute name, id prefix) in a mapping, in bytes.
///
/// Names may be full URIs; 256 bytes holds any realistic one and bounds the
/// query string.
pub const NGSI_LD_NAME_BYTES_MAX: usize = 256;

/// Most catalogue attributes one mapping may map; bounds the `attrs` parameter.
pub const MAPPED_ATTRIBUTES_MAX: usize = 256;

/// Largest file a load accepts, in bytes.
///
/// 64 MiB holds a register of about a million subjects with a few small
/// values each. Parsing holds the whole file as JSON values, a few times its
/// size in memory, once, while loading.
pub const REGISTRY_FILE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Most subjects one file may hold: a national-scale register per file.
pub const REGISTRY_SUBJECTS_MAX: usize = 1_000_000;

/// Most entities one NGSI-LD file may hold.
pub const REGISTRY_ENTITIES_MAX: usize = 1_000_000;

/// Longest compact JWS [`crate::core::consent::export::verify_jws`] accepts, in bytes. A receipt of a record
/// at the limits of [`crate::core::consent`] (64 scope items and 8 purposes
/// of up to 128 bytes, 1 KiB of purpose text) is about 12 KiB of JSON and
/// 16 KiB as base64url; 64 KiB leaves room for long controller details and
/// bounds the work done on a token from outside before its signature is checked.
pub const JWS_BYTES_MAX: usize = 64 * 1024;

// -- background loops, framing -------------------------------------------------

/// Room for protobuf framing around an envelope's bytes in a gRPC request or
/// a libp2p frame (field tags and lengths: a few bytes; 64 is ample), added
/// to [`MESSAGE_BYTES_MAX`] where a transport bounds the whole request.
pub const FRAMING_BYTES: usize = 64;

/// How often expired ids are pruned from the replay table, in ms: the table
/// grows by one entry per message applied; a minute keeps it near the
/// window of live messages without scanning often.
pub const PRUNE_INTERVAL_MS: u64 = 60_000;

/// Most replay-table entries pruned in one pass (one batch of sled
/// deletions); a backlog is cleared over the next passes.
pub const PRUNE_BATCH_MAX: usize = 10_000;

/// How often the home records the expiry of consents whose window ended, in
/// ms. Decisions never wait for it (every copy denies from `not_after` on);
/// it only tells every party within a second.
pub const EXPIRY_INTERVAL_MS: u64 = 1_000;

/// Most expiries recorded in one pass (each is a signed event, a write and
/// pushes); more wait for the next second.
pub const EXPIRY_BATCH_MAX: usize = 256;

/// How often a home pushes consent records again to parties that lack their
/// latest version, in ms (also once at start). Pushes that expired while a
/// party was away are rare; five minutes bounds how long such a party lags.
pub const REPUSH_INTERVAL_MS: u64 = 300_000;

/// Deadline of one API call, in ms: a data request waits for its sources
/// ([`DATA_REQUEST_TIMEOUT_MS`]) and a consent request for the home; 30 s
/// covers both with room.
pub const API_CALL_TIMEOUT_MS: u64 = 30_000;
