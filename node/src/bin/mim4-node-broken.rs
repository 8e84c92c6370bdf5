//! TEST ONLY: `mim4-node` built with the `broken-ack-before-flush` feature,
//! under a name of its own so that it never replaces the real binary in the
//! target folder it shares with it (and so shares every compiled
//! dependency). It acknowledges messages before they are durable; the crash
//! loop (`scripts/crash-loop.sh --broken`) runs it to show it catches that.

#[path = "../main.rs"]
mod cli;

fn main() -> anyhow::Result<()> {
    eprintln!(
        "mim4-node-broken: TEST ONLY, acknowledges messages before they are durable; \
         never run it with real data"
    );
    cli::main()
}
