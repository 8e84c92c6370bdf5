//! `mim4-node`: run a MIM4 operator node and manage its keys, credentials and
//! the federation trust list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use mim4_node::api::clients::{self, ClientRole};
use mim4_node::clock::now_ms;
use mim4_node::config::{self, Config};
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::{PublicKey, SecretKey};
use mim4_node::core::trust::{Member, SignedTrustList, TrustList, VerifiedTrustList};
use mim4_node::identity;
use mim4_node::trust_draft::{Draft, DraftKey, DraftMember};
use rand::RngCore as _;
use tokio_util::sync::CancellationToken;

/// Federation node for MIM4 personal data operators.
#[derive(Parser, Debug)]
#[command(name = "mim4-node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an operator key and a commented node.toml in DIR.
    Init(InitArgs),
    /// Run the node.
    Run {
        /// The node's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Credentials of local API clients (cities, citizen apps, admins).
    #[command(subcommand)]
    Client(ClientCommand),
    /// The federation's governance key.
    #[command(subcommand)]
    Governance(GovernanceCommand),
    /// The federation trust list: edit a draft, sign, show.
    #[command(subcommand)]
    Trust(TrustCommand),
}

#[derive(Args, Debug)]
struct InitArgs {
    /// Operator id, e.g. fi.helsinki.
    #[arg(long)]
    operator: String,
    /// Folder to create the key and node.toml in.
    #[arg(long)]
    dir: PathBuf,
    /// Address of the peer (node-to-node) gRPC server.
    #[arg(long, default_value = "127.0.0.1:7401")]
    peer_listen: SocketAddr,
    /// Address of the local API gRPC server.
    #[arg(long, default_value = "127.0.0.1:7402")]
    api_listen: SocketAddr,
    /// Governance public key (hex) to trust; repeat for several.
    #[arg(long = "governance-key")]
    governance_keys: Vec<String>,
    /// libp2p listen multiaddr, e.g. /ip4/0.0.0.0/tcp/7403 or
    /// /ip4/0.0.0.0/udp/7403/quic-v1 (repeatable; none: no libp2p listener).
    #[arg(long = "p2p-listen")]
    p2p_listen: Vec<libp2p::Multiaddr>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file, naming the key and line of each error.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Create a credential; it is printed once and stored only as a hash.
    Add {
        /// The node's configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Client id, e.g. helsinki-early-education.
        #[arg(long)]
        id: String,
        /// service, citizen-app or admin.
        #[arg(long)]
        role: String,
        /// For services: the service id it acts as (fi.helsinki/early-education).
        #[arg(long)]
        service_id: Option<String>,
    },
    /// List clients.
    List {
        /// The node's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Revoke a client; takes effect on its next call.
    Revoke {
        /// The node's configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Client id.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum GovernanceCommand {
    /// Create a governance key (governance.key, mode 0600, and governance.pub) in DIR.
    Init {
        /// Folder for the key files.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Start a trust-list draft for a new federation.
    New {
        /// Federation name, e.g. oasc-mim4.
        #[arg(long)]
        federation: String,
        /// Governance public key file(s) (governance.pub).
        #[arg(long = "governance-pub", required = true)]
        governance_pubs: Vec<PathBuf>,
        /// The draft file to create.
        #[arg(long)]
        draft: PathBuf,
    },
    /// Add a member to the draft.
    AddMember(AddMemberArgs),
    /// Add a key to a member (rotation: add the new key, later end the old one).
    AddKey {
        /// The draft file.
        #[arg(long)]
        draft: PathBuf,
        /// Operator id.
        #[arg(long)]
        operator: String,
        /// The new public key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Valid from (ms since the epoch); default now.
        #[arg(long)]
        not_before_ms: Option<u64>,
    },
    /// End the validity of a member's key at a given instant.
    EndKey {
        /// The draft file.
        #[arg(long)]
        draft: PathBuf,
        /// Operator id.
        #[arg(long)]
        operator: String,
        /// The public key file of the key to end.
        #[arg(long)]
        key_file: PathBuf,
        /// End of validity (ms since the epoch).
        #[arg(long)]
        not_after_ms: u64,
    },
    /// Add an attribute to the federation's catalogue.
    AddAttribute(AddAttributeArgs),
    /// Add a consumer service to the federation's service registry.
    AddService {
        /// The draft file.
        #[arg(long)]
        draft: PathBuf,
        /// Service id, e.g. fi.helsinki/early-education.
        #[arg(long)]
        service: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// DPV purpose it may request data for (repeatable).
        #[arg(long = "purpose", required = true)]
        purposes: Vec<String>,
    },
    /// Suspend a member (its messages are refused once the list is signed and spread).
    Suspend {
        /// The draft file.
        #[arg(long)]
        draft: PathBuf,
        /// Operator id.
        #[arg(long)]
        operator: String,
    },
    /// Sign the next version of the draft.
    Sign {
        /// The draft file (its version is bumped).
        #[arg(long)]
        draft: PathBuf,
        /// Governance secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Output: the signed trust list.
        #[arg(long)]
        out: PathBuf,
        /// Days the list stays valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
    },
    /// Show a signed trust list, verifying its signatures against its own governance keys.
    Show {
        /// The signed trust list file.
        file: PathBuf,
    },
}

// `trust add-member`'s arguments; no `///`, which clap would show instead of the variant's.
#[derive(Args, Debug)]
struct AddMemberArgs {
    /// The draft file.
    #[arg(long)]
    draft: PathBuf,
    /// Operator id.
    #[arg(long)]
    operator: String,
    /// Human-readable name.
    #[arg(long)]
    name: String,
    /// ISO 3166-1 alpha-2 country code.
    #[arg(long)]
    country: String,
    /// Role: operator, source or consumer (repeatable).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// The operator's public key file (operator.pub from `init`).
    #[arg(long)]
    key_file: PathBuf,
    /// gRPC endpoint of its peer server, e.g. https://peer.example.org:7401
    /// (http:// only for a development federation without TLS). Give
    /// --grpc, --p2p or both.
    #[arg(long)]
    grpc: Option<String>,
    /// libp2p multiaddr, e.g. /ip4/203.0.113.7/tcp/7403 or
    /// /ip4/203.0.113.7/udp/7403/quic-v1 (repeatable); the /p2p/PEERID
    /// of the key is appended.
    #[arg(long = "p2p")]
    p2p: Vec<libp2p::Multiaddr>,
    /// Sector label (repeatable).
    #[arg(long = "sector")]
    sectors: Vec<String>,
}

// `trust add-attribute`'s arguments (no `///`, as above).
#[derive(Args, Debug)]
struct AddAttributeArgs {
    /// The draft file.
    #[arg(long)]
    draft: PathBuf,
    /// Attribute name, e.g. income.gross_monthly.
    #[arg(long)]
    name: String,
    /// integer, number, string, boolean, date or string-list.
    #[arg(long = "type")]
    value_type: String,
    /// Unit, e.g. EUR/month.
    #[arg(long, default_value = "")]
    unit: String,
    /// normal, sensitive or special-category.
    #[arg(long, default_value = "normal")]
    sensitivity: String,
    /// What it is.
    #[arg(long, default_value = "")]
    description: String,
    /// Operator id of an authoritative source (repeatable; the first is asked).
    #[arg(long = "source", required = true)]
    sources: Vec<String>,
}

pub(crate) fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init(args) => init(args),
        Command::Run { config } => run(&config),
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Client(command) => client(command),
        Command::Governance(GovernanceCommand::Init { dir }) => governance_init(&dir),
        Command::Trust(command) => trust(command),
    }
}

/// `config check`: loads the file and says what it configures, with a warning
/// for each setting that weakens security.
fn config_check(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!(
        "{}: ok (operator {}, peer {} over {}, api {})",
        file.display(),
        config.operator_id,
        config.peer_listen,
        if config.insecure_plaintext {
            "plaintext"
        } else {
            "TLS"
        },
        config.api_listen
    );
    if !config.p2p_listen.is_empty() {
        let addrs: Vec<String> = config.p2p_listen.iter().map(ToString::to_string).collect();
        println!("  libp2p: {} (prefers {})", addrs.join(", "), config.prefer);
    }
    if config.insecure_plaintext {
        eprintln!(
            "warning: [transport] insecure_plaintext = true: peer traffic is neither \
             encrypted nor authenticated by TLS; for development federations only"
        );
    }
    if config.api_remote && !config.api_listen.ip().is_loopback() {
        eprintln!("warning: {}", mim4_node::config::API_REMOTE_WARNING);
    }
    Ok(())
}

/// `governance init`: creates a governance key pair in `dir`.
fn governance_init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    identity::write_secret_key(&dir.join("governance.key"), &key)?;
    identity::write_public_key(&dir.join("governance.pub"), &key.public())?;
    println!("governance key created in {}", dir.display());
    println!("public key: {}", key.public().to_hex());
    println!("give the public key to every operator (governance_keys in node.toml)");
    Ok(())
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    let operator = OperatorId::new(args.operator)?;
    let governance_keys = args
        .governance_keys
        .iter()
        .map(|k| PublicKey::from_hex(k).with_context(|| format!("governance key {k}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let config_path = args.dir.join("node.toml");
    if config_path.exists() {
        bail!(
            "{} exists already; init never overwrites",
            config_path.display()
        );
    }
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    identity::write_secret_key(&args.dir.join("operator.key"), &key)?;
    identity::write_public_key(&args.dir.join("operator.pub"), &key.public())?;
    // Encryption at rest of the node's database (see README, "Data at rest").
    identity::write_storage_key(
        &args.dir.join(identity::STORAGE_KEY_FILE),
        &mim4_node::store::StorageKey::generate(),
    )?;
    std::fs::write(
        &config_path,
        config::template(
            &operator,
            args.peer_listen,
            args.api_listen,
            &governance_keys,
            &args.p2p_listen,
        ),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    println!("operator {operator} initialised in {}", args.dir.display());
    println!(
        "  public key: {} (key id {})",
        key.public().to_hex(),
        key.public().key_id()
    );
    println!(
        "  libp2p PeerId: {} (derived from the key)",
        mim4_node::transport::p2p::peer_id(&key.public())
    );
    println!("  next: send operator.pub to governance to be added to the trust list,");
    println!("        put the signed trust list at trust-list.pb, then");
    println!("        mim4-node run --config {}", config_path.display());
    Ok(())
}

fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let handle = mim4_node::start(config).await?;
        let stop = CancellationToken::new();
        let wait = handle.wait(stop.clone());
        tokio::pin!(wait);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = &mut wait => return Ok(result?),
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        stop.cancel();
        wait.await?;
        Ok(())
    })
}

fn client(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Add {
            config,
            id,
            role,
            service_id,
        } => {
            let config = Config::load(&config)?;
            let role = ClientRole::parse(&role)
                .with_context(|| format!("role {role:?} is not service, citizen-app or admin"))?;
            if role == ClientRole::Service && service_id.is_none() {
                eprintln!("note: a service client without --service-id can only send messages, not request data");
            }
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let credential = clients::add(
                &config.clients_file,
                &id,
                role,
                service_id,
                secret,
                now_ms(),
            )?;
            println!("{credential}");
            eprintln!("client {id} ({role}) added; the credential above is shown only once");
        }
        ClientCommand::List { config } => {
            let config = Config::load(&config)?;
            let entries = clients::list(&config.clients_file)?;
            println!("{:<32} {:<12} {:<36} STATUS", "ID", "ROLE", "SERVICE");
            for c in entries {
                println!(
                    "{:<32} {:<12} {:<36} {}",
                    c.id,
                    c.role.as_str(),
                    c.service_id.as_deref().unwrap_or("-"),
                    if c.revoked { "revoked" } else { "active" }
                );
            }
        }
        ClientCommand::Revoke { config, id } => {
            let config = Config::load(&config)?;
            clients::revoke(&config.clients_file, &id)?;
            println!("client {id} revoked");
        }
    }
    Ok(())
}

/// Loads a draft, applies `edit`, and saves it only if it still converts to a
/// valid trust list, so a draft on disk always signs.
fn edit_draft(
    path: &Path,
    edit: impl FnOnce(&mut Draft) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut draft = Draft::load(path)?;
    edit(&mut draft)?;
    draft.to_trust_list(draft.version + 1, 0, 1)?;
    draft.save(path)?;
    Ok(())
}

/// `trust ...`: one function per subcommand.
fn trust(command: TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::New {
            federation,
            governance_pubs,
            draft,
        } => trust_new(&federation, &governance_pubs, &draft),
        TrustCommand::AddMember(args) => trust_add_member(args),
        TrustCommand::AddKey {
            draft,
            operator,
            key_file,
            not_before_ms,
        } => trust_add_key(&draft, &operator, &key_file, not_before_ms),
        TrustCommand::EndKey {
            draft,
            operator,
            key_file,
            not_after_ms,
        } => trust_end_key(&draft, &operator, &key_file, not_after_ms),
        TrustCommand::AddAttribute(args) => trust_add_attribute(args),
        TrustCommand::AddService {
            draft,
            service,
            name,
            purposes,
        } => trust_add_service(&draft, service, name, purposes),
        TrustCommand::Suspend { draft, operator } => trust_suspend(&draft, &operator),
        TrustCommand::Sign {
            draft,
            key,
            out,
            valid_days,
        } => trust_sign(&draft, &key, &out, valid_days),
        TrustCommand::Show { file } => trust_show(&file),
    }
}

/// `trust new`: an empty draft trusting the given governance keys.
fn trust_new(federation: &str, governance_pubs: &[PathBuf], draft: &Path) -> anyhow::Result<()> {
    if draft.exists() {
        bail!("{} exists already", draft.display());
    }
    let keys = governance_pubs
        .iter()
        .map(|p| identity::read_public_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    Draft::new(federation, &keys).save(draft)?;
    println!(
        "draft for federation {federation} written to {}",
        draft.display()
    );
    Ok(())
}

/// `trust add-member`: adds an active member with one key, reachable over
/// gRPC, libp2p or both; warns about a plaintext endpoint.
fn trust_add_member(args: AddMemberArgs) -> anyhow::Result<()> {
    let operator = args.operator;
    let key = identity::read_public_key(&args.key_file)?;
    if args.grpc.is_none() && args.p2p.is_empty() {
        bail!("give --grpc, --p2p or both: peers must have a way to reach {operator}");
    }
    let grpc = args.grpc.unwrap_or_default();
    let plaintext =
        mim4_node::transport::grpc::parse_endpoint(&grpc).is_ok_and(|endpoint| !endpoint.tls);
    let p2p_addrs = with_peer_id(args.p2p, &key);
    edit_draft(&args.draft, |d| {
        Ok(d.add_member(DraftMember {
            operator_id: operator.clone(),
            name: args.name,
            country: args.country,
            roles: args.roles,
            grpc_endpoint: grpc,
            p2p_addrs,
            status: "active".into(),
            sectors: args.sectors,
            keys: vec![DraftKey {
                public_key: key.to_hex(),
                not_before_ms: 0,
                not_after_ms: None,
            }],
        })?)
    })?;
    println!("added {operator} to {}", args.draft.display());
    if plaintext {
        eprintln!(
            "warning: {operator}'s endpoint is plaintext (http://): only nodes with \
             [transport] insecure_plaintext = true reach it; use https:// in production"
        );
    }
    Ok(())
}

/// The libp2p addresses as the trust list holds them: each ending in the
/// `/p2p/PEERID` of `key` (appended where it is missing).
fn with_peer_id(addrs: Vec<libp2p::Multiaddr>, key: &PublicKey) -> Vec<String> {
    let peer_id = mim4_node::transport::p2p::peer_id(key);
    addrs
        .into_iter()
        .map(|mut addr| {
            if !matches!(
                addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(_))
            ) {
                addr.push(libp2p::multiaddr::Protocol::P2p(peer_id));
            }
            addr.to_string()
        })
        .collect()
}

/// `trust add-key`: adds a key to a member, valid from `not_before_ms` (default now).
fn trust_add_key(
    draft: &Path,
    operator: &str,
    key_file: &Path,
    not_before_ms: Option<u64>,
) -> anyhow::Result<()> {
    let key = identity::read_public_key(key_file)?;
    edit_draft(draft, |d| {
        d.member_mut(operator)?.keys.push(DraftKey {
            public_key: key.to_hex(),
            not_before_ms: not_before_ms.unwrap_or_else(now_ms),
            not_after_ms: None,
        });
        Ok(())
    })?;
    println!("added key {} to {operator}", key.key_id());
    Ok(())
}

/// `trust end-key`: ends a member's key at `not_after_ms`.
fn trust_end_key(
    draft: &Path,
    operator: &str,
    key_file: &Path,
    not_after_ms: u64,
) -> anyhow::Result<()> {
    let key = identity::read_public_key(key_file)?;
    edit_draft(draft, |d| {
        let entry = d
            .member_mut(operator)?
            .keys
            .iter_mut()
            .find(|k| k.public_key == key.to_hex())
            .with_context(|| format!("{operator} has no key {}", key.key_id()))?;
        entry.not_after_ms = Some(not_after_ms);
        Ok(())
    })?;
    println!(
        "key {} of {operator} ends at {not_after_ms} ms",
        key.key_id()
    );
    Ok(())
}

/// `trust add-attribute`: adds an attribute to the catalogue, once.
fn trust_add_attribute(args: AddAttributeArgs) -> anyhow::Result<()> {
    let name = args.name;
    edit_draft(&args.draft, |d| {
        if d.attributes.iter().any(|a| a.name == name) {
            bail!("attribute {name} is already in the catalogue");
        }
        d.attributes.push(mim4_node::trust_draft::DraftAttribute {
            name: name.clone(),
            value_type: args.value_type,
            unit: args.unit,
            sensitivity: args.sensitivity,
            description: args.description,
            sources: args.sources,
        });
        Ok(())
    })?;
    println!(
        "added attribute {name} to the catalogue in {}",
        args.draft.display()
    );
    Ok(())
}

/// `trust add-service`: adds a service to the registry, once.
fn trust_add_service(
    draft: &Path,
    service: String,
    name: String,
    purposes: Vec<String>,
) -> anyhow::Result<()> {
    edit_draft(draft, |d| {
        if d.services.iter().any(|s| s.service_id == service) {
            bail!("service {service} is already in the registry");
        }
        d.services.push(mim4_node::trust_draft::DraftService {
            service_id: service.clone(),
            name,
            purposes,
        });
        Ok(())
    })?;
    println!(
        "added service {service} to the registry in {}",
        draft.display()
    );
    Ok(())
}

/// `trust suspend`: marks a member suspended in the draft.
fn trust_suspend(draft: &Path, operator: &str) -> anyhow::Result<()> {
    edit_draft(draft, |d| {
        d.member_mut(operator)?.status = "suspended".into();
        Ok(())
    })?;
    println!("{operator} suspended in the draft; sign and install to take effect");
    Ok(())
}

/// `trust sign`: signs the draft's next version, valid for `valid_days`, to `out`.
fn trust_sign(draft: &Path, key: &Path, out: &Path, valid_days: u64) -> anyhow::Result<()> {
    let mut d = Draft::load(draft)?;
    let key = identity::read_secret_key(key)?;
    let signed = d.sign_next(&[&key], now_ms(), valid_days * 24 * 60 * 60 * 1000)?;
    std::fs::write(out, signed.encode()).with_context(|| format!("writing {}", out.display()))?;
    d.save(draft)?;
    println!(
        "signed trust list version {} written to {}",
        d.version,
        out.display()
    );
    Ok(())
}

/// `trust show`: verifies a signed list against its own governance keys and
/// prints it: the header, the members, the catalogue and the services.
fn trust_show(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let signed = SignedTrustList::decode(&bytes)?;
    let body = mim4_node::core::wire::decode_trust_list(&signed.body)?;
    let anchor: Vec<PublicKey> = body.governance_keys.iter().map(|g| g.public_key).collect();
    let verified = VerifiedTrustList::verify_with_anchor(signed, &anchor, body.threshold)?;
    let list = verified.list();
    println!(
        "federation {}  version {}  rulebook {}",
        list.federation_id, list.version, list.rulebook_version
    );
    println!(
        "issued {} ms, valid until {} ms ({}), threshold {} of {} governance key(s): signatures verify",
        list.issued_at_ms,
        list.valid_until_ms,
        if verified.is_current(now_ms()) { "current" } else { "EXPIRED" },
        list.threshold,
        list.governance_keys.len()
    );
    print_members(&list.members);
    print_catalogue(list);
    Ok(())
}

/// The members table of `trust show`, each member followed by its keys'
/// libp2p PeerIds and its libp2p addresses.
fn print_members(members: &[Member]) {
    println!(
        "{:<24} {:<8} {:<10} {:<30} KEYS",
        "OPERATOR", "COUNTRY", "STATUS", "GRPC"
    );
    for m in members {
        let keys: Vec<String> = m
            .keys
            .iter()
            .map(|k| k.public_key.key_id().to_string())
            .collect();
        println!(
            "{:<24} {:<8} {:<10} {:<30} {}",
            m.operator_id,
            m.country,
            m.status.as_str(),
            m.grpc_endpoint,
            keys.join(",")
        );
        for key in &m.keys {
            println!(
                "  key {} -> libp2p PeerId {}",
                key.public_key.key_id(),
                mim4_node::transport::p2p::peer_id(&key.public_key)
            );
        }
        for addr in &m.p2p_addrs {
            println!("  libp2p {addr}");
        }
    }
}

/// The attribute catalogue and the service registry of `trust show`.
fn print_catalogue(list: &TrustList) {
    for a in &list.attributes {
        let sources: Vec<String> = a.sources.iter().map(ToString::to_string).collect();
        println!(
            "attribute {:<32} {:<12} {:<16} from {}",
            a.name,
            a.value_type.as_str(),
            a.sensitivity,
            sources.join(",")
        );
    }
    for service in &list.services {
        let purposes: Vec<String> = service.purposes.iter().map(ToString::to_string).collect();
        println!(
            "service   {:<40} for {}",
            service.service_id,
            purposes.join(",")
        );
    }
}
