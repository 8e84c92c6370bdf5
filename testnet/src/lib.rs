//! A local MIM4 federation of real `mim4-node` processes: the launcher that
//! the `mim4-testnet` tool, the crash tests and the demo share.
//!
//! # Layout
//! - [`Federation`]: creates operators (keys, configs, a signed trust list,
//!   admin credentials), starts, kills and restarts their processes, and
//!   remembers them in `DIR/testnet.json` so that a later command (or a later
//!   run after a crash of the tool) can find and stop them.
//! - [`bench`]: `mim4-testnet bench`, signed data requests under load next to a tonic echo.
//! - [`scenario`]: scenario files (`mim4-testnet run`), and the built-in ones under `testnet/scenarios/`.
//! - [`receipts`]: checks the signed receipts of a round of messages.
//! - [`checker`]: the offline check of every store after a crash test, the crash loop or chaos.
//! - [`crashloop`]: `mim4-testnet crashloop`, runs of SIGKILLs of a receiver mid-stream.
//! - [`chaos`]: `mim4-testnet chaos`, memos and consents under random SIGKILLs of any node.
//! - `traffic`: the client traffic of `chaos` and `partition` (memos, consent cycles, a looped scenario).
//! - [`netns`]: a private network of namespaces, for partitions between operators.
//! - [`partition`]: `mim4-testnet partition`, a 30 s cut and a SIGSTOP pause under traffic, checked offline.
//! - [`node_binary`]: finds (or builds) the `mim4-node` binary.
//! - [`StopOnDrop`], [`DownOnDrop`]: stop a test's nodes on every way out, a panic included.
#![warn(missing_docs)]

pub mod bench;
pub mod chaos;
pub mod checker;
pub mod crashloop;
mod federation;
mod guard;
pub mod netns;
pub mod node_binary;
pub mod partition;
pub mod receipts;
pub mod scenario;
mod traffic;

pub use federation::{
    Federation, OperatorSpec, OperatorState, Placement, Transport, Transports, CATALOGUE,
    DEFAULT_OPERATORS, SERVICE_PURPOSES,
};
pub use guard::{DownOnDrop, StopOnDrop};
