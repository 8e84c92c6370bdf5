//! A private network for a federation, made of Linux network namespaces, so
//! that operators can be cut off from each other (partitions) without
//! touching the host's network.
//!
//! ```text
//!   hub namespace:  br0 10.77.0.254/24 ── veth ── namespace of operator 0: 10.77.0.1
//!                                      ├─ veth ── namespace of operator 1: 10.77.0.2
//!                                      └─ ...
//! ```
//!
//! Every operator's node runs in its own namespace (`ip netns exec`); the
//! tool itself talks to them from the hub, on a thread that entered it
//! ([`Lab::run_in_hub`]). A partition is either a blackhole route on both
//! sides of a pair ([`Lab::cut`]), or an operator's bridge port going down
//! ([`Lab::isolate`], which also cuts the tool off from that node).
//!
//! Namespaces are named `m4n<pid>-<n>-hub` and `m4n<pid>-<n>-<i>` after the
//! process that made them (`n` counts its labs); they are deleted when the [`Lab`] is dropped, and those of
//! processes that no longer exist are deleted by [`remove_stale`] (the
//! tool's `down`, `reset` and every new lab call it). Needs root and the `ip`
//! command of iproute2; [`Lab::available`] says why not when it cannot work.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context as _};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Prefix of every namespace a lab makes.
const PREFIX: &str = "m4n";
/// Most operators a lab holds (one /24, minus the hub's address).
pub const OPERATORS_MAX: usize = 200;
/// Peer and API ports of every node in a lab.
const PEER_PORT: u16 = 7_000;
const API_PORT: u16 = 7_001;

/// The environment variable that, set to `1`, makes the tests that need
/// namespaces fail where they cannot be made instead of skipping (for a CI
/// machine known to have root and iproute2; without it, a machine that lacks
/// them passes those tests as skipped).
pub const REQUIRE_ENV: &str = "MIM4_REQUIRE_NETNS";

/// Whether [`REQUIRE_ENV`] is set to `1`.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|value| value == "1")
}

/// Namespaces with a bridge between them, deleted on drop.
#[derive(Debug)]
pub struct Lab {
    hub: String,
    nodes: Vec<String>,
}

impl Lab {
    /// Whether labs can be made here: `Err` says why not (not root, no `ip`,
    /// namespaces refused), after trying to make and delete one.
    pub fn available() -> Result<(), String> {
        let probe = format!("{}-probe", unique_prefix());
        let made = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        let bridge = ip(&["-n", &probe, "link", "add", "br0", "type", "bridge"]);
        let _ = ip(&["netns", "del", &probe]);
        bridge.map_err(|e| format!("no bridge in a namespace: {e:#}"))
    }

    /// A hub with a bridge and one namespace per operator, each with a veth
    /// port on the bridge and the address [`Lab::addr`]`(i)`.
    pub fn create(operators: usize) -> anyhow::Result<Self> {
        if operators == 0 || operators > OPERATORS_MAX {
            bail!("a lab holds 1 to {OPERATORS_MAX} operators, not {operators}");
        }
        remove_stale();
        let prefix = unique_prefix();
        let mut lab = Self {
            hub: format!("{prefix}-hub"),
            nodes: Vec::new(),
        };
        // From here on, dropping `lab` deletes whatever was made.
        ip(&["netns", "add", &lab.hub])?;
        ip(&["-n", &lab.hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &lab.hub,
            "addr",
            "add",
            "10.77.0.254/24",
            "dev",
            "br0",
        ])?;
        ip(&["-n", &lab.hub, "link", "set", "br0", "up"])?;
        for i in 0..operators {
            let ns = format!("{prefix}-{i}");
            ip(&["netns", "add", &ns])?;
            lab.nodes.push(ns.clone());
            let port = port_name(i);
            ip(&[
                "link", "add", &port, "netns", &lab.hub, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &lab.hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let addr = format!("{}/24", lab.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// Address of operator `i` in the lab.
    pub fn addr(&self, i: usize) -> IpAddr {
        // `create` bounds i below OPERATORS_MAX (< 254).
        IpAddr::V4(Ipv4Addr::new(
            10,
            77,
            0,
            u8::try_from(i + 1).unwrap_or(u8::MAX),
        ))
    }

    /// Where operator `i`'s node listens: its own address, fixed ports
    /// (every node has its own namespace), in its namespace.
    pub fn placement(&self, i: usize) -> crate::Placement {
        crate::Placement {
            peer_addr: (self.addr(i), PEER_PORT).into(),
            api_addr: (self.addr(i), API_PORT).into(),
            p2p_addr: None,
            netns: Some(self.namespace(i).to_owned()),
        }
    }

    /// Runs `work` to completion on a runtime whose threads are in the hub
    /// (see [`Lab::run_in_hub`]), without blocking the caller's runtime.
    pub async fn in_hub<T, F, Fut>(self: Arc<Self>, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        tokio::task::spawn_blocking(move || {
            self.clone().run_in_hub(move || {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("starting a runtime in the hub namespace")?
                    .block_on(work(self))
            })
        })
        .await
        .context("the hub thread failed")?
    }

    /// Namespace of operator `i`.
    pub fn namespace(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// How many operators it holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Runs `work` on a new thread that entered the hub namespace, and
    /// returns its result: everything `work` starts (threads, a runtime,
    /// child processes) is in the hub and reaches every operator.
    pub fn run_in_hub<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let path = Path::new(NETNS_DIR).join(&self.hub);
        let handle = std::thread::Builder::new()
            .name("netns-hub".into())
            .spawn(move || {
                let file =
                    fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {}", path.display()))?;
                work()
            })
            .context("starting the hub thread")?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Cuts operators `a` and `b` off from each other (both directions).
    pub fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.route(a, b, "add")?;
        self.route(b, a, "add")
    }

    /// Undoes [`Lab::cut`].
    pub fn heal(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.route(a, b, "del")?;
        self.route(b, a, "del")
    }

    fn route(&self, from: usize, to: usize, verb: &str) -> anyhow::Result<()> {
        let target = format!("{}/32", self.addr(to));
        ip(&["-n", &self.nodes[from], "route", verb, "blackhole", &target])
    }

    /// Takes operator `i`'s bridge port down: it reaches no one, and no one
    /// (the tool included) reaches it.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &port_name(i), "down"])
    }

    /// Undoes [`Lab::isolate`].
    pub fn rejoin(&self, i: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub, "link", "set", &port_name(i), "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns: could not delete {ns}: {e:#}");
            }
        }
    }
}

/// `m4n<pid>-<n>`: this process's `n`-th set of namespaces (labs and probes
/// may be made at the same time by several threads of one process).
fn unique_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{PREFIX}{}-{n}", std::process::id())
}

fn port_name(i: usize) -> String {
    format!("p{i}")
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespaces of labs whose process no longer exists (a tool
/// killed before it could clean up), after killing the nodes left in them.
/// Returns how many it deleted.
pub fn remove_stale() -> usize {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        // Its nodes outlived the tool: they could reach no one anyway.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if ip(&["netns", "del", &name]).is_ok() {
            removed += 1;
        }
    }
    removed
}
