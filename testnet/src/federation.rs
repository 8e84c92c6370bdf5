//! The launcher: operators on disk, their `mim4-node` processes, and the
//! state file that lets any later command find them again.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mim4_node::api::clients::{self, ClientRole};
use mim4_node::clock::now_ms;
use mim4_node::config;
use mim4_node::core::ids::OperatorId;
use mim4_node::core::keys::SecretKey;
use mim4_node::core::trust::{SignedTrustList, VerifiedTrustList};
use mim4_node::identity;
use mim4_node::transport::p2p;
use mim4_node::trust_draft::{Draft, DraftAttribute, DraftKey, DraftMember, DraftService};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

/// Name of the state file in the testnet folder.
const STATE_FILE: &str = "testnet.json";
/// Federation name of every testnet.
const FEDERATION_ID: &str = "mim4-testnet";

/// An operator to create.
#[derive(Clone, Copy, Debug)]
pub struct OperatorSpec {
    /// Operator id.
    pub id: &'static str,
    /// Name.
    pub name: &'static str,
    /// Country code.
    pub country: &'static str,
    /// Roles.
    pub roles: &'static [&'static str],
    /// Sector labels.
    pub sectors: &'static [&'static str],
    /// Its consumer services (the part after the slash of the service id).
    pub services: &'static [&'static str],
}

/// The testnet's attribute catalogue: (attribute, type, unit, sensitivity, source, description).
pub const CATALOGUE: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "income.gross_monthly",
        "integer",
        "EUR/month",
        "normal",
        "fi.incomeregister",
        "Gross monthly earned income, last 12-month average",
    ),
    (
        "income.employer",
        "string",
        "",
        "normal",
        "fi.incomeregister",
        "Current main employer",
    ),
    (
        "income.tax_rate",
        "number",
        "%",
        "normal",
        "fi.incomeregister",
        "Withholding tax rate on the tax card",
    ),
    (
        "licence.driving.classes",
        "string-list",
        "",
        "normal",
        "se.transportstyrelsen",
        "Driving-licence classes held",
    ),
    (
        "licence.driving.valid_until",
        "date",
        "",
        "normal",
        "se.transportstyrelsen",
        "Expiry date of the driving licence",
    ),
    (
        "education.diplomas",
        "string-list",
        "",
        "normal",
        "se.uhr",
        "Higher-education degrees awarded",
    ),
    (
        "criminal_record.extract",
        "string",
        "",
        "special-category",
        "se.polisen",
        "Extract from the criminal-records register (GDPR Art. 10)",
    ),
    (
        "skills.record",
        "string-list",
        "",
        "normal",
        "fr.iledefrance",
        "Skills and certifications recorded by the regional skills platform",
    ),
];

/// The purposes each testnet service is registered for.
pub const SERVICE_PURPOSES: &[(&str, &[&str])] = &[
    ("fi.helsinki/early-education", &["dpv:ServiceProvision"]),
    ("se.stockholm/social-services", &["dpv:ServiceProvision"]),
    ("se.stockholm/recruitment", &["dpv:RecruitmentAndHiring"]),
    (
        "se.arbetsformedlingen/job-matching",
        &["dpv:ServiceProvision", "dpv:RecruitmentAndHiring"],
    ),
    (
        "fr.iledefrance/training-platform",
        &["dpv:EducationalTraining"],
    ),
];

/// Real-looking operators, in the order the testnet uses them.
pub const DEFAULT_OPERATORS: &[OperatorSpec] = &[
    OperatorSpec {
        id: "fi.helsinki",
        name: "City of Helsinki",
        country: "FI",
        roles: &["operator", "consumer"],
        sectors: &["education", "social"],
        services: &["early-education"],
    },
    OperatorSpec {
        id: "fi.incomeregister",
        name: "Finnish Income Register (Tulorekisteri)",
        country: "FI",
        roles: &["source"],
        sectors: &["registry"],
        services: &[],
    },
    OperatorSpec {
        id: "se.stockholm",
        name: "City of Stockholm",
        country: "SE",
        roles: &["operator", "consumer"],
        sectors: &["social"],
        // Also an employer: the job-seeker scenario's recruiter.
        services: &["social-services", "recruitment"],
    },
    OperatorSpec {
        id: "se.arbetsformedlingen",
        name: "Arbetsförmedlingen (Swedish Public Employment Service)",
        country: "SE",
        roles: &["consumer"],
        sectors: &["employment"],
        services: &["job-matching"],
    },
    OperatorSpec {
        id: "se.transportstyrelsen",
        name: "Transportstyrelsen (driving-licence register)",
        country: "SE",
        roles: &["source"],
        sectors: &["registry"],
        services: &[],
    },
    OperatorSpec {
        id: "se.uhr",
        name: "Swedish Council for Higher Education (diploma register)",
        country: "SE",
        roles: &["source"],
        sectors: &["registry", "education"],
        services: &[],
    },
    OperatorSpec {
        id: "se.polisen",
        name: "Swedish Police Authority (criminal-records register)",
        country: "SE",
        roles: &["source"],
        sectors: &["registry"],
        services: &[],
    },
    OperatorSpec {
        id: "fr.iledefrance",
        name: "Région Île-de-France",
        country: "FR",
        roles: &["operator", "consumer"],
        sectors: &["education", "employment"],
        services: &["training-platform"],
    },
];

/// Where an operator's node listens, and in which network namespace.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Peer gRPC address.
    pub peer_addr: SocketAddr,
    /// API gRPC address.
    pub api_addr: SocketAddr,
    /// libp2p TCP address, for operators that offer libp2p.
    pub p2p_addr: Option<SocketAddr>,
    /// Network namespace (made beforehand, e.g. by [`crate::netns::Lab`]); `None`: the host's.
    pub netns: Option<String>,
}

/// One operator of the testnet as remembered in the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorState {
    /// Operator id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Country.
    pub country: String,
    /// Its folder (key, config, database, log, admin credential).
    pub dir: PathBuf,
    /// Peer gRPC address.
    pub peer_addr: SocketAddr,
    /// API gRPC address.
    pub api_addr: SocketAddr,
    /// Process id while running.
    pub pid: Option<u32>,
    /// The network namespace its node runs in (see [`crate::netns`]); `None`: the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The transport its peers reach it over.
    #[serde(default)]
    pub transport: Transport,
    /// Its libp2p listen address (TCP), if it offers libp2p.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p2p_addr: Option<SocketAddr>,
}

/// How the operators of a testnet reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transports {
    /// Every operator offers gRPC over TLS only.
    #[default]
    Grpc,
    /// Every operator offers libp2p (TCP + noise + yamux) only.
    Libp2p,
    /// Alternately gRPC only and libp2p only: each message travels over its
    /// recipient's transport, so both carry traffic.
    Mixed,
}

impl Transports {
    /// The transport operator `i` offers.
    pub fn of(self, i: usize) -> Transport {
        match self {
            Self::Grpc => Transport::Grpc,
            Self::Libp2p => Transport::Libp2p,
            Self::Mixed if i % 2 == 0 => Transport::Grpc,
            Self::Mixed => Transport::Libp2p,
        }
    }
}

/// The transport one operator offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// gRPC over TLS.
    #[default]
    Grpc,
    /// libp2p.
    Libp2p,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::Libp2p => "libp2p",
        })
    }
}

impl OperatorState {
    /// Its `node.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// URL of its local API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Its admin credential.
    pub fn admin_credential(&self) -> anyhow::Result<String> {
        self.credential("admin")
    }

    /// The credential of one of its clients (`admin`, `citizen-app`, or a service name).
    pub fn credential(&self, client: &str) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{client}.credential"));
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    federation_id: String,
    node_bin: PathBuf,
    operators: Vec<OperatorState>,
}

/// A testnet folder and the processes started from it.
#[derive(Debug)]
pub struct Federation {
    dir: PathBuf,
    state: State,
    /// Children started by this process, so they can be reaped (no zombies).
    children: BTreeMap<String, Child>,
}

impl Federation {
    /// Creates a new federation of `specs` in `dir` (which must not hold one):
    /// a governance key, each operator's key, config and admin credential, and
    /// a signed trust list naming them all on free loopback ports.
    pub fn create(dir: &Path, specs: &[OperatorSpec], node_bin: PathBuf) -> anyhow::Result<Self> {
        Self::create_over(dir, specs, node_bin, Transports::Grpc)
    }

    /// As [`Federation::create`], with the operators offering `transports`.
    pub fn create_over(
        dir: &Path,
        specs: &[OperatorSpec],
        node_bin: PathBuf,
        transports: Transports,
    ) -> anyhow::Result<Self> {
        let ports = free_ports(specs.len() * 3)?;
        let placement: Vec<Placement> = (0..specs.len())
            .map(|i| Placement {
                peer_addr: SocketAddr::from(([127, 0, 0, 1], ports[3 * i])),
                api_addr: SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 1])),
                p2p_addr: (transports.of(i) == Transport::Libp2p)
                    .then(|| SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 2]))),
                netns: None,
            })
            .collect();
        Self::create_placed(dir, specs, &placement, node_bin)
    }

    /// As [`Federation::create`], with the addresses (and network namespace)
    /// of each operator given: `placement[i]` is for `specs[i]`.
    pub fn create_placed(
        dir: &Path,
        specs: &[OperatorSpec],
        placement: &[Placement],
        node_bin: PathBuf,
    ) -> anyhow::Result<Self> {
        if placement.len() != specs.len() {
            bail!(
                "{} operators but {} placements",
                specs.len(),
                placement.len()
            );
        }
        if dir.join(STATE_FILE).exists() {
            bail!(
                "{} already holds a testnet; use `down`/`reset` first",
                dir.display()
            );
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let governance = SecretKey::generate(&mut rand::rngs::OsRng);
        let gov_dir = dir.join("governance");
        fs::create_dir_all(&gov_dir)?;
        identity::write_secret_key(&gov_dir.join("governance.key"), &governance)?;
        identity::write_public_key(&gov_dir.join("governance.pub"), &governance.public())?;

        let mut draft = Draft::new(FEDERATION_ID, &[governance.public()]);
        let mut operators = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let id = OperatorId::new(spec.id)?;
            let op_dir = dir.join(spec.id);
            fs::create_dir_all(&op_dir)?;
            let key = SecretKey::generate(&mut rand::rngs::OsRng);
            identity::write_secret_key(&op_dir.join("operator.key"), &key)?;
            identity::write_public_key(&op_dir.join("operator.pub"), &key.public())?;
            identity::write_storage_key(
                &op_dir.join(identity::STORAGE_KEY_FILE),
                &mim4_node::store::StorageKey::generate(),
            )?;
            let Placement {
                peer_addr,
                api_addr,
                p2p_addr,
                ref netns,
            } = placement[i];
            // An operator with a libp2p address offers libp2p only, else gRPC only.
            let p2p_listen: Vec<libp2p::Multiaddr> = p2p_addr
                .map(|a| format!("/ip4/{}/tcp/{}", a.ip(), a.port()).parse())
                .transpose()?
                .into_iter()
                .collect();
            let transport = if p2p_listen.is_empty() {
                Transport::Grpc
            } else {
                Transport::Libp2p
            };
            // A source serves the testnet's sample registry for it, if there is one.
            let sample = sample_data(spec.id);
            let registry_line = match sample {
                Some(json) => {
                    fs::write(op_dir.join("registry.json"), json)?;
                    "registry_files = [\"registry.json\"]\n"
                }
                None => "",
            };
            let controller = format!(
                "\n# Testnet placeholder contact details (not a real controller).\n[controller]\n\
                 name = \"{name}\"\ncontact = \"Testnet data protection officer\"\n\
                 street_address = \"Testnet street 1\"\npostal_code = \"00000\"\n\
                 locality = \"Testnet\"\ncountry = \"{country}\"\n\
                 email = \"dpo@{id}.testnet.invalid\"\nphone = \"+358-9-0000000\"\n\
                 policy_url = \"https://{id}.testnet.invalid/privacy\"\n",
                name = spec.name,
                country = spec.country,
            );
            fs::write(
                op_dir.join("node.toml"),
                config::template(
                    &id,
                    peer_addr,
                    api_addr,
                    &[governance.public()],
                    &p2p_listen,
                )
                .replace("registry_files = []\n", registry_line)
                .replace("prefer = \"grpc\"", &format!("prefer = \"{transport}\""))
                // In network namespaces the API is on the test's own veth
                // network (reached from this host only), not on loopback.
                .replace(
                    "api_remote = false",
                    if api_addr.ip().is_loopback() {
                        "api_remote = false"
                    } else {
                        "api_remote = true"
                    },
                ) + &controller,
            )?;
            let clients_file = op_dir.join("clients.toml");
            let add_client = |name: &str, role: ClientRole, service: Option<String>| {
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                let credential =
                    clients::add(&clients_file, name, role, service, secret, now_ms())?;
                write_private(&op_dir.join(format!("{name}.credential")), &credential)
            };
            add_client("admin", ClientRole::Admin, None)?;
            if spec.roles.contains(&"operator") {
                add_client("citizen-app", ClientRole::CitizenApp, None)?;
            }
            for service in spec.services {
                add_client(
                    service,
                    ClientRole::Service,
                    Some(format!("{}/{service}", spec.id)),
                )?;
            }
            draft.add_member(DraftMember {
                operator_id: spec.id.to_owned(),
                name: spec.name.to_owned(),
                country: spec.country.to_owned(),
                roles: spec.roles.iter().map(|r| (*r).to_owned()).collect(),
                // Peers talk TLS (the node.toml template's default), or libp2p.
                grpc_endpoint: match transport {
                    Transport::Grpc => format!("https://{peer_addr}"),
                    Transport::Libp2p => String::new(),
                },
                p2p_addrs: p2p_listen
                    .iter()
                    .map(|a| format!("{a}/p2p/{}", p2p::peer_id(&key.public())))
                    .collect(),
                status: "active".into(),
                sectors: spec.sectors.iter().map(|s| (*s).to_owned()).collect(),
                keys: vec![DraftKey {
                    public_key: key.public().to_hex(),
                    not_before_ms: 0,
                    not_after_ms: None,
                }],
            })?;
            operators.push(OperatorState {
                id: spec.id.to_owned(),
                name: spec.name.to_owned(),
                country: spec.country.to_owned(),
                dir: op_dir,
                peer_addr,
                api_addr,
                pid: None,
                netns: netns.clone(),
                transport,
                p2p_addr,
            });
        }
        for (name, value_type, unit, sensitivity, source, description) in CATALOGUE {
            draft.attributes.push(DraftAttribute {
                name: (*name).into(),
                value_type: (*value_type).into(),
                unit: (*unit).into(),
                sensitivity: (*sensitivity).into(),
                description: (*description).into(),
                sources: vec![(*source).into()],
            });
        }
        for (service, purposes) in SERVICE_PURPOSES {
            draft.services.push(DraftService {
                service_id: (*service).into(),
                name: (*service).into(),
                purposes: purposes.iter().map(|p| (*p).into()).collect(),
            });
        }
        let signed = draft.sign_next(&[&governance], now_ms(), 365 * 24 * 60 * 60 * 1000)?;
        draft.save(&gov_dir.join("trust-draft.toml"))?;
        let bytes = signed.encode();
        fs::write(dir.join("trust-list.pb"), &bytes)?;
        for op in &operators {
            fs::write(op.dir.join("trust-list.pb"), &bytes)?;
        }
        let federation = Self {
            dir,
            state: State {
                federation_id: FEDERATION_ID.into(),
                node_bin,
                operators,
            },
            children: BTreeMap::new(),
        };
        federation.save()?;
        Ok(federation)
    }

    /// Opens the testnet in `dir`, if there is one.
    pub fn open(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(STATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a testnet state file", path.display()))?;
        Ok(Some(Self {
            dir: dir.canonicalize()?,
            state,
            children: BTreeMap::new(),
        }))
    }

    /// The testnet folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The operators.
    pub fn operators(&self) -> &[OperatorState] {
        &self.state.operators
    }

    /// The operator with this id.
    pub fn operator(&self, id: &str) -> anyhow::Result<&OperatorState> {
        self.state
            .operators
            .iter()
            .find(|o| o.id == id)
            .with_context(|| format!("no operator {id} in this testnet"))
    }

    /// The node binary this testnet runs.
    pub fn node_bin(&self) -> &Path {
        &self.state.node_bin
    }

    /// Uses another node binary from now on (e.g. after a rebuild elsewhere).
    pub fn set_node_bin(&mut self, node_bin: PathBuf) -> anyhow::Result<()> {
        self.state.node_bin = node_bin;
        self.save()
    }

    /// The federation's signed trust list, verified against the testnet's governance key.
    pub fn trust_list(&self) -> anyhow::Result<VerifiedTrustList> {
        let bytes = fs::read(self.dir.join("trust-list.pb"))?;
        let anchor =
            identity::read_public_key(&self.dir.join("governance").join("governance.pub"))?;
        Ok(VerifiedTrustList::verify_with_anchor(
            SignedTrustList::decode(&bytes)?,
            &[anchor],
            1,
        )?)
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Whether the operator's recorded process is alive and is really its node.
    pub fn is_running(&self, id: &str) -> bool {
        self.operator(id).ok().and_then(node_pid).is_some()
    }

    /// Starts the operator's node unless it runs already. Returns its pid.
    pub fn start(&mut self, id: &str) -> anyhow::Result<u32> {
        if let Some(pid) = node_pid(self.operator(id)?) {
            if self.operator(id)?.pid != Some(pid) {
                self.set_pid(id, Some(pid))?;
            }
            return Ok(pid);
        }
        let op = self.operator(id)?.clone();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(op.log_path())
            .with_context(|| format!("opening {}", op.log_path().display()))?;
        let mut command = match &op.netns {
            // `ip netns exec` enters the namespace and execs the node (same pid).
            Some(ns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", ns])
                    .arg(&self.state.node_bin);
                command
            }
            None => Command::new(&self.state.node_bin),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(op.config_path())
            .env(
                "RUST_LOG",
                std::env::var("MIM4_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the tool's terminal does not kill the nodes,
            // so `up` can return and leave the federation running.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.state.node_bin.display()))?;
        let pid = child.id();
        self.children.insert(op.id.clone(), child);
        self.set_pid(id, Some(pid))?;
        Ok(pid)
    }

    fn set_pid(&mut self, id: &str, pid: Option<u32>) -> anyhow::Result<()> {
        if let Some(op) = self.state.operators.iter_mut().find(|o| o.id == id) {
            op.pid = pid;
        }
        self.save()
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        let ids: Vec<String> = self.state.operators.iter().map(|o| o.id.clone()).collect();
        for id in ids {
            self.start(&id)?;
        }
        Ok(())
    }

    /// Sends `signal` to the operator's node and waits (up to `wait`) for it to exit.
    /// Returns whether it was running.
    pub fn stop(&mut self, id: &str, signal: Signal, wait: Duration) -> anyhow::Result<bool> {
        let op = self.operator(id)?.clone();
        let Some(pid) = node_pid(&op) else {
            self.reap(id);
            if op.pid.is_some() {
                self.set_pid(id, None)?;
            }
            return Ok(false);
        };
        let target = Pid::from_raw(i32::try_from(pid)?);
        let _ = signal::kill(target, signal);
        let deadline = Instant::now() + wait;
        while process_is_node(pid, &op.config_path()) {
            self.reap(id);
            if Instant::now() >= deadline {
                let _ = signal::kill(target, Signal::SIGKILL);
            }
            if Instant::now() >= deadline + Duration::from_secs(5) {
                bail!("{id} (pid {pid}) did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap(id);
        self.set_pid(id, None)?;
        Ok(true)
    }

    /// Kills the operator's node with SIGKILL (a crash).
    pub fn kill(&mut self, id: &str) -> anyhow::Result<bool> {
        self.stop(id, Signal::SIGKILL, Duration::from_secs(5))
    }

    /// Stops every node (SIGTERM, then SIGKILL after 10 s). Returns how many ran.
    pub fn stop_all(&mut self) -> anyhow::Result<usize> {
        let ids: Vec<String> = self.state.operators.iter().map(|o| o.id.clone()).collect();
        let mut stopped = 0;
        for id in ids {
            if self.stop(&id, Signal::SIGTERM, Duration::from_secs(10))? {
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Whether the operator's node has exited. A node this tool started is
    /// asked through its `Child` handle: `/proc/PID/cmdline` reads empty for
    /// a moment while the process is still in `execve` (the kernel sets the
    /// new arguments after it lets the parent go on), so a look at `/proc`
    /// right after the start may not see the node it just started.
    fn has_exited(&mut self, id: &str) -> bool {
        match self.children.get_mut(id) {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => !self.is_running(id),
        }
    }

    fn reap(&mut self, id: &str) {
        if let Some(child) = self.children.get_mut(id) {
            if let Ok(Some(_)) = child.try_wait() {
                self.children.remove(id);
            }
        }
    }

    /// An admin client of the operator's local API.
    pub async fn admin(&self, id: &str) -> anyhow::Result<mim4_sdk::Client> {
        let op = self.operator(id)?;
        Ok(mim4_sdk::Client::connect(&op.api_url(), &op.admin_credential()?).await?)
    }

    /// Waits until the operator's node answers `GetStatus`, or fails after `timeout`.
    pub async fn wait_ready(&mut self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(client) = self.admin(id).await {
                if client.status().await.is_ok() {
                    return Ok(());
                }
            }
            if self.has_exited(id) {
                self.reap(id);
                let log = self.operator(id)?.log_path();
                bail!(
                    "{id} exited during start-up; last log lines:\n{}",
                    tail(&log, 15)
                );
            }
            if Instant::now() >= deadline {
                bail!("{id} not ready after {} s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Federation {
    /// Reaps children that have already exited; running nodes are left running
    /// (that is what `up` is for) and `down` finds them through the state file.
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.try_wait();
        }
    }
}

/// The last `lines` lines of a file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The operator's live node process: the recorded pid, or else any process
/// running with its configuration (started by a tool that was killed before
/// it could record the pid), so that `down` leaves no orphan.
fn node_pid(op: &OperatorState) -> Option<u32> {
    let config = op.config_path();
    if let Some(pid) = op.pid.filter(|&pid| process_is_node(pid, &config)) {
        return Some(pid);
    }
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| process_is_node(pid, &config))
}

/// Whether `pid` is a live (not zombie) process running with `config` on its command line.
fn process_is_node(pid: u32, config: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let config = config.as_os_str().as_encoded_bytes();
    cmdline.split(|&b| b == 0).any(|arg| arg == config)
}

/// `count` distinct free loopback ports (all bound at once, then released).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// The sample registry of a testnet source, from `testnet/data/`.
fn sample_data(operator: &str) -> Option<&'static str> {
    Some(match operator {
        "fi.incomeregister" => include_str!("../data/fi.incomeregister.json"),
        "se.transportstyrelsen" => include_str!("../data/se.transportstyrelsen.json"),
        "se.uhr" => include_str!("../data/se.uhr.json"),
        "se.polisen" => include_str!("../data/se.polisen.json"),
        "fr.iledefrance" => include_str!("../data/fr.iledefrance.json"),
        _ => return None,
    })
}
