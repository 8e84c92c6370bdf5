//! `mim4-testnet bench`: a load run of signed data requests through the SDK
//! against a fresh 2-operator federation on loopback, next to its ceiling.
//!
//! The measured path is the one cities use: the early-education service of
//! `fi.helsinki` asks its own node, through the SDK, for three income
//! attributes of one citizen; the node signs a data request to
//! `fi.incomeregister`, which checks the consent per attribute, reads its
//! registry, signs the answer and persists both sides' request state. The
//! ceiling is a plain, unsigned tonic echo served in this process, carrying a
//! payload as large as that request and response together, driven with the
//! same concurrency and the same bounds in the same run, so the ratio says what
//! the federation work costs on top of gRPC on this machine.
//!
//! Every phase is bounded both in time and in count, and each call has its own
//! deadline, so a run always ends by itself. The nodes it starts are stopped
//! on every way out (success, error, Ctrl-C) by [`NodeGuard`]. The target of
//! issue 5 is reported, never asserted: the numbers depend on the machine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use mim4_node::limits;
use mim4_proto::bench::v1::echo_client::EchoClient;
use mim4_proto::bench::v1::echo_server::{Echo, EchoServer};
use mim4_proto::bench::v1::EchoMessage;
use mim4_sdk::proto as pb;
use mim4_sdk::{Client, RequestError, Terms};
use prost::Message as _;
use rand::RngCore as _;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::{node_binary, Federation, DEFAULT_OPERATORS};

/// The requesting service, its operator and the holder of the attributes.
const SERVICE: &str = "fi.helsinki/early-education";
const SERVICE_CLIENT: &str = "early-education";
const HOME: &str = "fi.helsinki";
const HOLDER: &str = "fi.incomeregister";
const PURPOSE: &str = "dpv:ServiceProvision";
/// One fictitious citizen of `testnet/data/fi.incomeregister.json`.
const SUBJECT: &str = "fi:hetu:010180-123N";
/// The three attributes asked for in every request, all held by `HOLDER`.
const ATTRIBUTES: [&str; 3] = ["income.gross_monthly", "income.employer", "income.tax_rate"];

/// Bounds of the command-line options, so that a typo cannot start an
/// unbounded run: the latencies of one phase take 4 bytes per request.
const CLIENTS_MAX: usize = 1_024;
const REQUESTS_MAX: u64 = 10_000_000;
const DURATION_MAX: Duration = Duration::from_secs(3_600);
/// Deadline of one call; a slower call counts as an error, so a stuck node
/// cannot hold a phase open past its duration by more than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls per client before each phase, not measured: they open the HTTP/2
/// streams, fill the allocators and caches, and warm the nodes' stores.
const WARMUP_CALLS_PER_CLIENT: u64 = 20;
/// How long the consent may take to travel from Helsinki to the register
/// (it goes through the outbox) before the run gives up.
const CONSENT_WAIT: Duration = Duration::from_secs(30);
/// How long each node may take to start.
const START_WAIT: Duration = Duration::from_secs(60);
/// The first target of issue 5 ("Benchmark"); reported, not asserted.
const TARGET_RPS_MIN: f64 = 2_000.0;
const TARGET_P50_MS_MAX: f64 = 2.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Folder for the federation; a fresh temporary folder (removed after a
    /// successful run) when `None`.
    pub dir: Option<PathBuf>,
    /// The `mim4-node` binary (see [`node_binary::find`]).
    pub node_bin: Option<PathBuf>,
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Longest time of each phase.
    pub duration: Duration,
    /// Most requests of each phase.
    pub requests_max: u64,
}

/// One measured path.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Short name: `signed` or `echo`.
    pub name: &'static str,
    /// What was measured.
    pub label: &'static str,
    /// Calls that succeeded.
    pub requests: u64,
    /// Calls that failed or timed out.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Length of the phase, from the first call to the last answer.
    pub elapsed_s: f64,
    /// Successful calls per second.
    pub rps: f64,
    /// Median latency of the successful calls.
    pub p50_ms: f64,
    /// 99th-percentile latency of the successful calls.
    pub p99_ms: f64,
    /// Slowest successful call.
    pub max_ms: f64,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Cores available to this process.
    pub cores: usize,
    /// Operators in the federation.
    pub operators: Vec<String>,
    /// Concurrent clients of each phase.
    pub clients: usize,
    /// Longest time of each phase.
    pub duration_s_max: f64,
    /// Most requests of each phase.
    pub requests_max: u64,
    /// Encoded `DataRequest` that the node signs to the holder.
    pub data_request_bytes: usize,
    /// Encoded `DataResponse` that the holder signs back.
    pub data_response_bytes: usize,
    /// Echo payload: the two above together.
    pub echo_payload_bytes: usize,
    /// Signed data requests first, then the echo.
    pub rows: Vec<Row>,
    /// Signed rps / echo rps (the fraction of the ceiling reached).
    pub rps_ratio: f64,
    /// Signed p50 / echo p50 (how many times slower the median call is).
    pub p50_ratio: f64,
    /// The target of issue 5: at least this many signed requests per second ...
    pub target_rps_min: f64,
    /// ... with a median latency of at most this.
    pub target_p50_ms_max: f64,
    /// Whether the signed row meets the target (reported, not asserted).
    pub target_met: bool,
    /// The federation's folder (removed after the run if it was temporary).
    pub dir: PathBuf,
    /// Process ids of the nodes this run started (all stopped before the report).
    pub node_pids: Vec<u32>,
}

/// Parses a duration such as `10s`, `500ms`, `2m` or `3` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1_000.0,
        "m" | "min" => number * 60.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Runs the benchmark: creates and starts the federation, sets up the
/// consent, measures both paths, stops the nodes. Ctrl-C stops the nodes too.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    if !(1..=CLIENTS_MAX).contains(&options.clients) {
        bail!("--clients must be between 1 and {CLIENTS_MAX}");
    }
    if !(1..=REQUESTS_MAX).contains(&options.requests_max) {
        bail!("--requests must be between 1 and {REQUESTS_MAX}");
    }
    if options.duration.is_zero() || options.duration > DURATION_MAX {
        bail!(
            "--duration must be above zero and at most {} s",
            DURATION_MAX.as_secs()
        );
    }
    let node_bin = node_binary::find(options.node_bin.as_deref())?;
    let (dir, temporary) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (temporary_dir(), true),
    };
    eprintln!("bench: federation of 2 operators in {}", dir.display());
    let federation = Federation::create(&dir, &DEFAULT_OPERATORS[..2], node_bin)?;
    let mut guard = NodeGuard {
        federation: Some(federation),
    };
    let outcome = tokio::select! {
        outcome = measure(&mut guard, options) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Stop the nodes before reporting, so the report's pids are gone; the
    // guard's `Drop` does the same if anything above returned early.
    let stopped = guard.stop();
    let report = match (outcome, stopped) {
        (Ok(report), Ok(())) => report,
        (Err(e), _) => {
            return Err(e.context(format!("node logs kept in {}", dir.display())));
        }
        (Ok(_), Err(e)) => return Err(e.context("stopping the nodes")),
    };
    if temporary {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(report)
}

/// Stops every node of the federation when dropped, so that no way out of
/// [`run`] (an error, a panic in a phase) leaves a process behind.
#[derive(Debug)]
struct NodeGuard {
    federation: Option<Federation>,
}

impl NodeGuard {
    fn federation(&mut self) -> anyhow::Result<&mut Federation> {
        self.federation.as_mut().context("the nodes were stopped")
    }

    /// Stops every node (SIGTERM, then SIGKILL) and forgets the federation.
    fn stop(&mut self) -> anyhow::Result<()> {
        match self.federation.take() {
            Some(mut federation) => federation.stop_all().map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: stopping the nodes failed: {e:#}");
        }
    }
}

/// A fresh folder name under the system's temporary folder.
fn temporary_dir() -> PathBuf {
    let mut suffix = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    std::env::temp_dir().join(format!(
        "mim4-bench-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ))
}

/// Everything between starting the nodes and stopping them.
async fn measure(guard: &mut NodeGuard, options: &Options) -> anyhow::Result<Report> {
    let federation = guard.federation()?;
    federation.start_all()?;
    for id in [HOME, HOLDER] {
        federation.wait_ready(id, START_WAIT).await?;
    }
    let federation: &Federation = federation;
    let node_pids = federation
        .operators()
        .iter()
        .filter_map(|op| op.pid)
        .collect();
    let home = federation.operator(HOME)?;
    let url = home.api_url();
    let credential = home.credential(SERVICE_CLIENT)?;

    eprintln!("bench: consent for {SUBJECT} ({})", ATTRIBUTES.join(", "));
    grant_consent(&url, &credential, &home.credential("citizen-app")?).await?;
    let first = Client::connect(&url, &credential).await?;
    wait_until_answered(&first).await?;
    let (data_request_bytes, data_response_bytes) = encoded_sizes(&url, &credential).await?;
    let echo_payload_bytes = data_request_bytes + data_response_bytes;

    let mut services = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        services.push(Client::connect(&url, &credential).await?);
    }
    eprintln!(
        "bench: signed data requests, {} clients, up to {} s or {} requests",
        options.clients,
        options.duration.as_secs_f64(),
        options.requests_max
    );
    let signed = run_phase(&services, options, signed_request).await;
    drop(services);

    eprintln!("bench: tonic echo of {echo_payload_bytes} bytes, same bounds");
    let echo = echo_phase(options, echo_payload_bytes).await?;

    let signed = signed.row("signed", "signed data request (SDK → node → holder → node)");
    let echo = echo.row("echo", "tonic echo (unsigned)");
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(Report {
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        operators: vec![HOME.into(), HOLDER.into()],
        clients: options.clients,
        duration_s_max: options.duration.as_secs_f64(),
        requests_max: options.requests_max,
        data_request_bytes,
        data_response_bytes,
        echo_payload_bytes,
        rps_ratio: ratio(signed.rps, echo.rps),
        p50_ratio: ratio(signed.p50_ms, echo.p50_ms),
        target_rps_min: TARGET_RPS_MIN,
        target_p50_ms_max: TARGET_P50_MS_MAX,
        target_met: signed.errors == 0
            && signed.rps >= TARGET_RPS_MIN
            && signed.p50_ms <= TARGET_P50_MS_MAX,
        rows: vec![signed, echo],
        dir: federation.dir().to_owned(),
        node_pids,
    })
}

/// The service asks for consent to read the three attributes of `SUBJECT`,
/// and the citizen app at the same operator grants it.
async fn grant_consent(url: &str, service: &str, citizen_app: &str) -> anyhow::Result<()> {
    let service = Client::connect(url, service).await?;
    let citizen_app = Client::connect(url, citizen_app).await?;
    let mut terms = Terms::consent(SUBJECT, HOME, SERVICE, HOLDER);
    for attribute in ATTRIBUTES {
        terms = terms.read(attribute);
    }
    let terms = terms
        .purpose(PURPOSE)
        .purpose_text("Load benchmark of the testnet")
        .build();
    let id = service.request_consent(terms).await?;
    citizen_app.grant(id, SUBJECT, None).await?;
    Ok(())
}

/// Retries the request until the holder has the consent (it travels through
/// the outbox) and answers all three attributes, for at most `CONSENT_WAIT`.
async fn wait_until_answered(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONSENT_WAIT;
    loop {
        match signed_request(client).await {
            Ok(()) => return Ok(()),
            Err(reason) if Instant::now() < deadline => {
                tracing::debug!(%reason, "consent not yet at the holder; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(reason) => bail!(
                "no complete answer after {} s: {reason}",
                CONSENT_WAIT.as_secs()
            ),
        }
    }
}

/// One signed 3-attribute data request through the SDK; an answer that
/// withholds any of the three counts as a failure.
async fn signed_request(client: &Client) -> Result<(), String> {
    let answer = client
        .request(SUBJECT)
        .service(SERVICE)
        .purpose(PURPOSE)
        .attributes(ATTRIBUTES)
        .send()
        .await
        .map_err(|e: RequestError| e.to_string())?;
    if answer.values.len() == ATTRIBUTES.len() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} values released; withheld: {:?}",
            answer.values.len(),
            ATTRIBUTES.len(),
            answer.withheld
        ))
    }
}

/// Encoded sizes of the `DataRequest` the node signs to the holder and of the
/// holder's `DataResponse`, taken from one real answer (the SDK hides the
/// wire types, so this asks the node's API directly).
async fn encoded_sizes(url: &str, credential: &str) -> anyhow::Result<(usize, usize)> {
    let channel = Endpoint::from_shared(url.to_owned())?.connect().await?;
    let mut api = pb::operator_api_client::OperatorApiClient::new(channel);
    let wanted = pb::RequestDataRequest {
        subject: SUBJECT.into(),
        service: SERVICE.into(),
        purpose: PURPOSE.into(),
        attributes: ATTRIBUTES.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let mut call = tonic::Request::new(wanted.clone());
    call.metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse()?);
    let answer = api.request_data(call).await?.into_inner();
    let response = answer
        .responses
        .iter()
        .find(|r| r.source == HOLDER)
        .with_context(|| format!("no answer from {HOLDER} to measure"))?;
    let request = pb::DataRequest {
        request_id: answer.request_id.clone(),
        subject: wanted.subject,
        service: wanted.service,
        purpose: wanted.purpose,
        attributes: wanted.attributes,
        predicates: Vec::new(),
    };
    Ok((request.encoded_len(), response.encoded_len()))
}

/// The echo: starts the server on `127.0.0.1:0` with the node API's stream
/// limits, connects the clients, measures, and shuts the server down.
async fn echo_phase(options: &Options, payload_bytes: usize) -> anyhow::Result<Phase> {
    // Room for the payload and protobuf framing; set both ways (tonic's
    // encoder is unlimited by default).
    let message_bytes_max = payload_bytes + 64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = JoinSet::new();
    server.spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(limits::STREAMS_PER_CONNECTION_MAX as usize)
            .max_concurrent_streams(limits::STREAMS_PER_CONNECTION_MAX)
            .timeout(Duration::from_secs(30))
            .add_service(
                EchoServer::new(EchoService)
                    .max_decoding_message_size(message_bytes_max)
                    .max_encoding_message_size(message_bytes_max),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let mut clients = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        // The same endpoint settings as the SDK's `Client::connect`.
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        clients.push(Echoer {
            client: EchoClient::new(channel)
                .max_decoding_message_size(message_bytes_max)
                .max_encoding_message_size(message_bytes_max),
            payload: vec![0xA5; payload_bytes],
        });
    }
    let phase = run_phase(&clients, options, Echoer::call).await;
    drop(clients);
    let _ = stop.send(());
    match server.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(phase),
        Some(Ok(Err(e))) => Err(e).context("echo server"),
        Some(Err(e)) => Err(e).context("echo server task"),
    }
}

/// The echo service: answers every message with itself.
#[derive(Debug)]
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoMessage>,
    ) -> Result<tonic::Response<EchoMessage>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// One echo client with its payload.
#[derive(Clone, Debug)]
struct Echoer {
    client: EchoClient<Channel>,
    payload: Vec<u8>,
}

impl Echoer {
    /// One echo call; an answer that is not the payload counts as a failure.
    async fn call(&self) -> Result<(), String> {
        let mut client = self.client.clone();
        let answer = client
            .echo(EchoMessage {
                payload: self.payload.clone(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if answer.payload.len() == self.payload.len() {
            Ok(())
        } else {
            Err("echo returned another payload".into())
        }
    }
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    /// Latencies of the successful calls, sorted, in microseconds.
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Phase {
    fn row(self, name: &'static str, label: &'static str) -> Row {
        let requests = self.latencies_us.len() as u64;
        let elapsed_s = self.elapsed.as_secs_f64();
        let ms = |us: u32| f64::from(us) / 1_000.0;
        Row {
            name,
            label,
            requests,
            errors: self.errors,
            first_error: self.first_error,
            elapsed_s,
            rps: if elapsed_s > 0.0 {
                requests as f64 / elapsed_s
            } else {
                0.0
            },
            p50_ms: ms(percentile_us(&self.latencies_us, 50)),
            p99_ms: ms(percentile_us(&self.latencies_us, 99)),
            max_ms: ms(self.latencies_us.last().copied().unwrap_or(0)),
        }
    }
}

/// Nearest-rank percentile of sorted latencies (0 when there are none).
fn percentile_us(sorted_us: &[u32], percent: usize) -> u32 {
    let rank = (sorted_us.len() * percent).div_ceil(100);
    sorted_us.get(rank.saturating_sub(1)).copied().unwrap_or(0)
}

/// Warms up, then drives `call` from one task per client until the phase's
/// duration has passed or its request budget is spent, whichever comes first.
async fn run_phase<C, F>(clients: &[C], options: &Options, call: F) -> Phase
where
    C: Clone + Send + Sync + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let warmup_calls = WARMUP_CALLS_PER_CLIENT * clients.len() as u64;
    drive(clients, Duration::from_secs(5), warmup_calls, call).await;
    drive(clients, options.duration, options.requests_max, call).await
}

/// One timed round of calls; see [`run_phase`].
async fn drive<C, F>(clients: &[C], duration: Duration, requests_max: u64, call: F) -> Phase
where
    C: Clone + Send + Sync + 'static,
    F: for<'a> AsyncCall<'a, C> + Copy + Send + Sync + 'static,
{
    let budget = Arc::new(AtomicU64::new(requests_max));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = JoinSet::new();
    for client in clients {
        let client = client.clone();
        let budget = budget.clone();
        workers.spawn(async move {
            let mut phase = Phase::default();
            // Take one call from the shared budget at a time; stop when it is
            // spent or the deadline has passed.
            while Instant::now() < deadline
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let sent = Instant::now();
                let outcome = tokio::time::timeout(CALL_TIMEOUT, call.call(&client)).await;
                let latency = sent.elapsed();
                match outcome {
                    Ok(Ok(())) => phase
                        .latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX)),
                    Ok(Err(reason)) => phase.fail(reason),
                    Err(_) => phase.fail(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
                }
            }
            phase
        });
    }
    let mut total = Phase::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(phase) => {
                total.latencies_us.extend(phase.latencies_us);
                total.errors += phase.errors;
                if total.first_error.is_none() {
                    total.first_error = phase.first_error;
                }
            }
            Err(e) => total.fail(format!("client task failed: {e}")),
        }
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
}

impl Phase {
    fn fail(&mut self, reason: String) {
        self.errors += 1;
        self.first_error.get_or_insert(reason);
    }
}

/// An async call on a borrowed client: lets `drive` take both a plain
/// `async fn(&Client)` and a method without boxing each call.
trait AsyncCall<'a, C: 'a> {
    /// The call's future.
    type Future: std::future::Future<Output = Result<(), String>> + Send + 'a;
    /// Starts one call.
    fn call(&self, client: &'a C) -> Self::Future;
}

impl<'a, C: 'a, F, Fut> AsyncCall<'a, C> for F
where
    F: Fn(&'a C) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'a,
{
    type Future = Fut;
    fn call(&self, client: &'a C) -> Fut {
        self(client)
    }
}

impl Report {
    /// Prints the report as a table.
    pub fn print_table(&self) {
        println!(
            "\nLoad run on {} core(s): {} on loopback, {} concurrent clients, each phase up to {} s or {} requests",
            self.cores,
            self.operators.join(" + "),
            self.clients,
            self.duration_s_max,
            self.requests_max
        );
        println!(
            "Payload: DataRequest {} B + DataResponse {} B = {} B (the echo carries this both ways)\n",
            self.data_request_bytes, self.data_response_bytes, self.echo_payload_bytes
        );
        println!(
            "{:<50} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "PATH", "REQUESTS", "ERRORS", "RPS", "P50 ms", "P99 ms", "MAX ms"
        );
        for row in &self.rows {
            println!(
                "{:<50} {:>9} {:>7} {:>9.0} {:>9.3} {:>9.3} {:>9.3}",
                row.label, row.requests, row.errors, row.rps, row.p50_ms, row.p99_ms, row.max_ms
            );
        }
        println!(
            "\nsigned / echo: rps ratio {:.3} ({:.1} % of the ceiling), p50 ratio {:.1}x",
            self.rps_ratio,
            self.rps_ratio * 100.0,
            self.p50_ratio
        );
        for row in self.rows.iter().filter(|r| r.errors > 0) {
            println!(
                "{}: {} error(s), first: {}",
                row.name,
                row.errors,
                row.first_error.as_deref().unwrap_or("-")
            );
        }
        println!(
            "target (issue 5): >= {} signed requests/s and p50 <= {} ms: {} (reported, not asserted)",
            self.target_rps_min,
            self.target_p50_ms_max,
            if self.target_met { "met" } else { "not met" }
        );
    }
}
