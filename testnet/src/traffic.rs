//! The client traffic of the fault suites: memos from every operator to
//! random others, consent cycles (a service asks, the citizen grants at the
//! home, then withdraws), and optionally a scenario over and over, all
//! through the SDK, against nodes that may be killed, partitioned or paused
//! at any moment.
//!
//! [`chaos`](crate::chaos) runs it beside its fault schedule and
//! [`partition`](crate::partition) around each of its two faults. Every call
//! has a deadline and a failed one connects again, so the traffic rides out
//! the faults; what the clients were told (memos acknowledged, withdrawals
//! acknowledged) goes into the [`Ledger`] the offline check reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use mim4_sdk::proto::ConsentTerms;
use mim4_sdk::{Client, ConsentId, Terms};
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::checker::Ledger;
use crate::{Federation, OperatorState};

/// Memos per operator and run, at most.
const MEMOS_PER_OPERATOR_MAX: usize = 200_000;
/// Pause between two memos of one operator.
const MEMO_PAUSE: Duration = Duration::from_millis(20);
/// Consent cycles per run, at most.
const CONSENTS_MAX: usize = 20_000;
/// Deadline of one API call; a slower call counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one consent step (ask, grant, withdraw) keeps retrying.
const STEP_WAIT: Duration = Duration::from_secs(20);
/// Pause before retrying a failed call or connection.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long the traffic may take to wind down after the faults stop: a
/// consent cycle in progress finishes, and each of its three steps retries
/// for at most [`STEP_WAIT`].
const WIND_DOWN_WAIT: Duration = Duration::from_secs(90);
/// The consent traffic: a subject of `testnet/data/fi.incomeregister.json`,
/// their home, the source, the attribute and purpose.
const SUBJECT: &str = "fi:hetu:010180-123N";
pub(crate) const HOME: &str = "fi.helsinki";
pub(crate) const SOURCE: &str = "fi.incomeregister";
const ATTRIBUTE: &str = "income.gross_monthly";
const PURPOSE: &str = "dpv:ServiceProvision";
/// The consumer service: Stockholm's (a third party) when it is in the
/// federation, else Helsinki's own. (operator, client name, service id)
const CONSUMERS: [(&str, &str, &str); 2] = [
    (
        "se.stockholm",
        "social-services",
        "se.stockholm/social-services",
    ),
    (
        "fi.helsinki",
        "early-education",
        "fi.helsinki/early-education",
    ),
];

/// Runs of the looped scenario. Faults make runs fail (a step's node is down
/// past its deadline): failures are figures, not violations; what they did
/// is judged by the offline check like all other traffic.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioRuns {
    /// The scenario's title (none when no scenario looped).
    pub scenario: Option<String>,
    /// Runs that passed every step.
    pub passed: usize,
    /// Runs that failed a step or could not run.
    pub failed: usize,
    /// The run cut short when the faults ended.
    pub interrupted: usize,
    /// The latest failure, if any.
    pub last_failure: Option<String>,
}

/// Consent traffic figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsentTraffic {
    /// Requests acknowledged by the consumer's node.
    pub requested: usize,
    /// Grants that took effect at the home.
    pub granted: usize,
    /// Withdrawals acknowledged to the citizen app.
    pub withdrawals_acknowledged: usize,
    /// Withdrawals that took effect although the call failed.
    pub withdrawals_unacknowledged: usize,
    /// Cycles given up (a step kept failing for `STEP_WAIT`, 20 s).
    pub abandoned: usize,
}

/// [`ConsentTraffic`] while the traffic runs.
#[derive(Debug, Default)]
struct ConsentCounters {
    requested: AtomicUsize,
    granted: AtomicUsize,
    withdrawals_acknowledged: AtomicUsize,
    withdrawals_unacknowledged: AtomicUsize,
    abandoned: AtomicUsize,
}

impl ConsentCounters {
    fn figures(&self) -> ConsentTraffic {
        ConsentTraffic {
            requested: self.requested.load(Ordering::Relaxed),
            granted: self.granted.load(Ordering::Relaxed),
            withdrawals_acknowledged: self.withdrawals_acknowledged.load(Ordering::Relaxed),
            withdrawals_unacknowledged: self.withdrawals_unacknowledged.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// A new ledger for one run of `suite`: the run's memos start with the
/// suite's name and a random run id, so that the check leaves out other
/// traffic in the same federation (an earlier run, a demo).
pub(crate) fn new_ledger(suite: &str) -> Arc<Mutex<Ledger>> {
    let mut run_id = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut run_id);
    Arc::new(Mutex::new(Ledger::with_prefix(&format!(
        "{suite} {} ",
        hex::encode(run_id)
    ))))
}

/// The client traffic of a fault run: memos from every operator to random
/// others, consent cycles (with Helsinki, the income register and a
/// consumer), and optionally a scenario over and over; what the clients were
/// told goes into the ledger.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
    consents: Arc<ConsentCounters>,
    scenario_runs: Arc<Mutex<ScenarioRuns>>,
    /// The consumer service of the consent cycles, if they run.
    pub(crate) consumer: Option<String>,
}

/// What [`Traffic::stop`] returns.
pub(crate) struct WoundDown {
    /// Consent figures.
    pub(crate) consents: ConsentTraffic,
    /// Scenario figures.
    pub(crate) scenario_runs: ScenarioRuns,
    /// An error if a task failed or did not end within [`WIND_DOWN_WAIT`].
    pub(crate) outcome: anyhow::Result<()>,
}

impl Traffic {
    /// Starts the traffic against the federation's nodes; `label` makes its
    /// memos distinct from those of other traffic of the same run.
    pub(crate) fn start(
        label: &str,
        federation: &Federation,
        ledger: &Arc<Mutex<Ledger>>,
        seed: u64,
        scenario: Option<&crate::scenario::Scenario>,
    ) -> anyhow::Result<Self> {
        let operators: Vec<OperatorState> = federation.operators().to_vec();
        let ids: Vec<String> = operators.iter().map(|o| o.id.clone()).collect();
        let mut traffic = Self {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: JoinSet::new(),
            consents: Arc::new(ConsentCounters::default()),
            scenario_runs: Arc::new(Mutex::new(ScenarioRuns::default())),
            consumer: None,
        };
        for (i, op) in operators.iter().enumerate() {
            let others: Vec<String> = ids.iter().filter(|id| **id != op.id).cloned().collect();
            traffic.tasks.spawn(memos(
                Connection::new(op, "admin")?,
                format!("{label}{}", op.id),
                others,
                ledger.clone(),
                traffic.stop.clone(),
                seed.wrapping_add(1 + i as u64),
            ));
        }
        let home = operators.iter().find(|o| o.id == HOME);
        let source = ids.iter().any(|id| id == SOURCE);
        let consumer = CONSUMERS
            .iter()
            .find(|(id, _, _)| ids.iter().any(|o| o == id));
        if let (Some(home), true, Some(&(consumer_id, client, service))) = (home, source, consumer)
        {
            let consumer_op = federation.operator(consumer_id)?;
            traffic.consumer = Some(service.to_owned());
            traffic.tasks.spawn(consent_cycles(
                Connection::new(consumer_op, client)?,
                Connection::new(home, "citizen-app")?,
                service,
                ledger.clone(),
                traffic.consents.clone(),
                traffic.stop.clone(),
                seed,
            ));
        }
        if let Some(scenario) = scenario {
            if scenario.operators.iter().all(|id| ids.contains(id)) {
                traffic.tasks.spawn(scenario_loop(
                    federation.dir().to_owned(),
                    scenario.clone(),
                    traffic.scenario_runs.clone(),
                    traffic.stop.clone(),
                ));
            }
        }
        Ok(traffic)
    }

    /// Tells every task to stop and waits (at most [`WIND_DOWN_WAIT`]) for them.
    pub(crate) async fn stop(mut self) -> WoundDown {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = &mut self.tasks;
        let wind_down = tokio::time::timeout(WIND_DOWN_WAIT, async {
            while let Some(joined) = tasks.join_next().await {
                joined.context("a traffic task failed")?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await;
        self.tasks.abort_all();
        WoundDown {
            consents: self.consents.figures(),
            scenario_runs: self
                .scenario_runs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            outcome: wind_down
                .context("the traffic did not wind down")
                .and_then(|r| r),
        }
    }
}

/// A client of one node's API that connects again after a failure (the node
/// may have been killed and restarted in between).
#[derive(Debug)]
struct Connection {
    url: String,
    credential: String,
    client: Option<Client>,
}

impl Connection {
    fn new(op: &OperatorState, client: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: op.api_url(),
            credential: op.credential(client)?,
            client: None,
        })
    }

    /// The client, connecting if needed; `None` while the node does not answer.
    async fn client(&mut self) -> Option<Client> {
        if self.client.is_none() {
            let connect = Client::connect(&self.url, &self.credential);
            self.client = tokio::time::timeout(CALL_TIMEOUT, connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.client.clone()
    }

    /// Drops the client after a failed call.
    fn reset(&mut self) {
        self.client = None;
    }
}

/// Runs `scenario` against the federation in `dir` over and over until
/// `stop`; a run in progress then is dropped (counted as interrupted).
async fn scenario_loop(
    dir: PathBuf,
    scenario: crate::scenario::Scenario,
    runs: Arc<Mutex<ScenarioRuns>>,
    stop: Arc<AtomicBool>,
) {
    let record = |edit: &dyn Fn(&mut ScenarioRuns)| {
        edit(&mut runs.lock().unwrap_or_else(PoisonError::into_inner));
    };
    record(&|r| r.scenario = Some(scenario.name.clone()));
    let stopped = || async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        // A second view of the state file: the guard owns the processes.
        let run = async {
            let federation = Federation::open(&dir)?
                .with_context(|| format!("no testnet in {}", dir.display()))?;
            crate::scenario::run(&federation, &scenario, false).await
        };
        tokio::select! {
            outcome = run => match outcome {
                Ok(report) if report.passed => record(&|r| r.passed += 1),
                Ok(report) => {
                    let failure = report.failure();
                    record(&|r| {
                        r.failed += 1;
                        r.last_failure = Some(failure.clone());
                    });
                }
                Err(e) => {
                    let failure = format!("{e:#}");
                    record(&|r| {
                        r.failed += 1;
                        r.last_failure = Some(failure.clone());
                    });
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            },
            () = stopped() => record(&|r| r.interrupted += 1),
        }
    }
}

/// Memos from `from` to random others until `stop`.
async fn memos(
    mut connection: Connection,
    from: String,
    others: Vec<String>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let prefix = ledger
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .memo_prefix
        .clone();
    for n in 0..MEMOS_PER_OPERATOR_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(MEMO_PAUSE).await;
        let Some(client) = connection.client().await else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let to = &others[rng.gen_range(0..others.len())];
        let text = format!("{prefix}{from}->{to} #{n}");
        ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attempt(&text);
        let sent = tokio::time::timeout(CALL_TIMEOUT, client.send_message(to, "chaos", &text));
        match sent.await {
            Ok(Ok(_)) => ledger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .acknowledge(&text),
            _ => connection.reset(),
        }
    }
}

/// Retries `step` until it succeeds (`Ok`, or `Err(Some)`: the call failed
/// but its effect is known to be there), for at most [`STEP_WAIT`].
async fn retry<T, F, Fut>(connection: &mut Connection, mut step: F) -> Option<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + STEP_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(client) = connection.client().await {
            match tokio::time::timeout(CALL_TIMEOUT, step(client)).await {
                Ok(Ok(value)) => return Some(value),
                // The call failed but its effect is known to be there.
                Ok(Err(Some(value))) => return Some(value),
                Ok(Err(None)) | Err(_) => connection.reset(),
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// The status of a record at the home, if it answers.
async fn status_at_home(client: &Client, id: ConsentId) -> Option<String> {
    client.consent(id).await.ok().map(|view| view.status)
}

/// Consent cycles until `stop`: the service asks (with an id it chooses, so a
/// retry asks for the same record), the citizen grants at the home, then
/// withdraws. A call that fails is retried until it succeeds or the home
/// shows its effect; a withdrawal counts as acknowledged only when the call
/// returned OK.
async fn consent_cycles(
    mut service: Connection,
    mut citizen_app: Connection,
    service_id: &'static str,
    ledger: Arc<Mutex<Ledger>>,
    figures: Arc<ConsentCounters>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0DE);
    for _ in 0..CONSENTS_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = ConsentId(id);
        let terms = Terms::consent(SUBJECT, HOME, service_id, SOURCE)
            .id(id)
            .read(ATTRIBUTE)
            .purpose(PURPOSE)
            .purpose_text("Chaos test of the federation")
            .build();
        if ask(&mut service, &terms, id).await.is_none() {
            figures.abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        figures.requested.fetch_add(1, Ordering::Relaxed);
        if grant(&mut citizen_app, id).await.is_none() {
            figures.abandoned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        figures.granted.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=200))).await;
        match withdraw(&mut citizen_app, id).await {
            Some(true) => {
                ledger
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .withdrawals_acknowledged
                    .insert(hex::encode(id.0));
                figures
                    .withdrawals_acknowledged
                    .fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {
                figures
                    .withdrawals_unacknowledged
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                figures.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The service asks for consent `id` on `terms`; `None` if it gave up.
async fn ask(service: &mut Connection, terms: &ConsentTerms, id: ConsentId) -> Option<()> {
    retry(service, |client| {
        let terms = terms.clone();
        async move {
            match client.request_consent(terms).await {
                Ok(_) => Ok(()),
                // A retry after an answer that got lost: the record may exist already.
                Err(_) if client.consent(id).await.is_ok() => Err(Some(())),
                Err(_) => Err(None),
            }
        }
    })
    .await
}

/// The citizen grants consent `id` at the home; `None` if it gave up.
async fn grant(citizen_app: &mut Connection, id: ConsentId) -> Option<()> {
    // The request reaches the home through the consumer's outbox: until
    // then the grant fails (no such record) and is retried.
    retry(citizen_app, |client| async move {
        match client.grant(id, SUBJECT, None).await {
            Ok(_) => Ok(()),
            Err(_) => match status_at_home(&client, id).await.as_deref() {
                Some("given") => Err(Some(())),
                _ => Err(None),
            },
        }
    })
    .await
}

/// The citizen withdraws consent `id` at the home: `Some(true)` if the call
/// was acknowledged, `Some(false)` if it failed but took effect, `None` if
/// it gave up.
async fn withdraw(citizen_app: &mut Connection, id: ConsentId) -> Option<bool> {
    retry(citizen_app, |client| async move {
        match client.withdraw(id, SUBJECT, None).await {
            Ok(_) => Ok(true),
            Err(_) => match status_at_home(&client, id).await.as_deref() {
                Some("withdrawn") => Err(Some(false)),
                _ => Err(None),
            },
        }
    })
    .await
}
