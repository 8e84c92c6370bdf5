//! The offline checker of the crash test, the crash loop and chaos: what the
//! clients were told (a [`Ledger`]) against what every node's sled store holds
//! once the processes have stopped.
//!
//! Memos are counted as Jepsen's total-queue checker counts a queue:
//! attempted (the `SendMessage` call was made), acknowledged (it returned OK:
//! the memo is durable in the sender's outbox), applied (read from the
//! receivers' inboxes); lost = acknowledged but never applied, duplicated =
//! applied more than once, unexpected = applied but never attempted, unknown =
//! attempted without an answer (either outcome is allowed; `recovered` counts
//! those that were applied). The applied set comes from opening each store
//! with [`Store::open`] on `DIR/<operator>/data` after the nodes stopped, never
//! from a node's counters, so a node cannot vouch for itself.
//!
//! Consents: every stored log must verify against the trust list; a party's
//! copy must be a prefix of the home's log; a withdrawal the home acknowledged
//! must be in the home's log; and every withdrawal in a home's log must have
//! reached every party of the record.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use mim4_node::core::consent::{copies, ConsentLog, ConsentRecord, EventKind};
use mim4_node::core::envelope::Payload;
use mim4_node::core::ids::OperatorId;
use mim4_node::core::trust::VerifiedTrustList;
use mim4_node::core::wire;
use mim4_node::store::{OutgoingState, Store};
use serde::Serialize;

use crate::Federation;

/// How many examples of each kind of violation a report lists.
const SAMPLES_MAX: usize = 10;

/// What the clients were told. Memos are identified by their text, which the
/// traffic makes unique (e.g. `"crash 3 fi.helsinki->se.stockholm #17"`).
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Only memos whose text starts with this are checked (empty: every memo),
    /// so other traffic in the same federation (a demo) is left out.
    pub memo_prefix: String,
    /// Memo texts whose `SendMessage` call was made.
    pub attempted: BTreeSet<String>,
    /// Memo texts whose `SendMessage` call returned OK.
    pub acknowledged: BTreeSet<String>,
    /// Consents (hex ids) whose withdrawal call returned OK at the home.
    pub withdrawals_acknowledged: BTreeSet<String>,
}

impl Ledger {
    /// A ledger of the memos starting with `memo_prefix`.
    pub fn with_prefix(memo_prefix: &str) -> Self {
        Self {
            memo_prefix: memo_prefix.to_owned(),
            ..Self::default()
        }
    }

    /// Records that a memo is about to be sent.
    pub fn attempt(&mut self, text: &str) {
        self.attempted.insert(text.to_owned());
    }

    /// Records that its `SendMessage` call returned OK.
    pub fn acknowledge(&mut self, text: &str) {
        self.acknowledged.insert(text.to_owned());
    }
}

/// Consent figures of a [`Report`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConsentReport {
    /// Records whose home holds a log.
    pub records: usize,
    /// Stored logs (all copies, all nodes).
    pub copies: usize,
    /// Stored logs that do not verify against the trust list (signature or transition).
    pub invalid: usize,
    /// Party copies that are not a prefix of the home's log.
    pub diverged: usize,
    /// Party copies shorter than the home's log (an event not yet delivered).
    pub behind: usize,
    /// Records withdrawn in the home's log.
    pub withdrawn: usize,
    /// Withdrawals acknowledged to the citizen app.
    pub withdrawals_acknowledged: usize,
    /// Acknowledged withdrawals missing from the home's log.
    pub withdrawals_lost: usize,
    /// (record, party) pairs where the home's withdrawal has not arrived.
    pub withdrawals_undelivered: usize,
}

/// Examples of each violation (at most [`SAMPLES_MAX`] each).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Samples {
    /// Acknowledged, never applied.
    pub lost: Vec<String>,
    /// Applied more than once (text and count).
    pub duplicated: Vec<String>,
    /// Applied, never attempted.
    pub unexpected: Vec<String>,
    /// Other problems, one sentence each.
    pub other: Vec<String>,
}

/// The result of a check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Memos attempted.
    pub attempted: usize,
    /// Memos acknowledged.
    pub acknowledged: usize,
    /// Distinct checked memos applied somewhere.
    pub applied: usize,
    /// Attempted without an answer (the call failed or timed out).
    pub unknown: usize,
    /// Unknown ones that were applied (allowed).
    pub recovered: usize,
    /// Acknowledged, never applied.
    pub lost: usize,
    /// Applied more than once.
    pub duplicated: usize,
    /// Applied, never attempted.
    pub unexpected: usize,
    /// Message ids held twice in one node's inbox.
    pub duplicate_message_ids: usize,
    /// Applied messages of other kinds (consent notices, trust lists) or other memos.
    pub other_messages: usize,
    /// Outgoing messages still awaiting a receipt.
    pub outbox_pending: usize,
    /// Outgoing messages marked delivered without a stored receipt.
    pub delivered_without_receipt: usize,
    /// Stores that opened.
    pub databases_opened: usize,
    /// Stores that did not open or could not be read, with the error.
    pub databases_failed: Vec<String>,
    /// Consent figures.
    pub consents: ConsentReport,
    /// Examples.
    pub samples: Samples,
}

impl Report {
    /// Every violated invariant, one sentence each; empty when clean.
    pub fn violations(&self) -> Vec<String> {
        let c = &self.consents;
        [
            (self.lost, "acknowledged memo(s) lost"),
            (self.duplicated, "memo(s) applied more than once"),
            (self.unexpected, "memo(s) applied but never sent"),
            (
                self.duplicate_message_ids,
                "message id(s) twice in one inbox",
            ),
            (
                self.delivered_without_receipt,
                "delivered message(s) without a receipt",
            ),
            (self.databases_failed.len(), "database(s) did not open"),
            (c.invalid, "consent log(s) that do not verify"),
            (c.diverged, "consent copies that diverge from the home's"),
            (c.withdrawals_lost, "acknowledged withdrawal(s) lost"),
            (
                c.withdrawals_undelivered,
                "withdrawal(s) not delivered to a party",
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect()
    }

    /// Whether every invariant holds.
    pub fn is_clean(&self) -> bool {
        self.violations().is_empty()
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "attempted {}, acknowledged {}, applied {}, unknown {} (recovered {}), lost {}, \
             duplicated {}, unexpected {}, databases opened {}/{}, outbox pending {}, \
             consents {} (withdrawn {}, withdrawals acknowledged {}, lost {}, undelivered {})",
            self.attempted,
            self.acknowledged,
            self.applied,
            self.unknown,
            self.recovered,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.databases_opened,
            self.databases_opened + self.databases_failed.len(),
            self.outbox_pending,
            self.consents.records,
            self.consents.withdrawn,
            self.consents.withdrawals_acknowledged,
            self.consents.withdrawals_lost,
            self.consents.withdrawals_undelivered,
        )
    }
}

/// What one store holds, read offline.
#[derive(Debug, Default)]
struct Holdings {
    /// Texts of applied memos (with repeats).
    memos: Vec<String>,
    /// Logs by consent id, each with its verified record (or the reason it does not verify).
    logs: BTreeMap<String, (ConsentLog, Result<ConsentRecord, String>)>,
}

/// Checks `ledger` against every operator's store. The nodes must be stopped.
/// A store that does not open is reported (and counted as a violation), not an error.
pub fn check(federation: &Federation, ledger: &Ledger) -> anyhow::Result<Report> {
    let trust = federation.trust_list()?;
    let mut report = Report {
        attempted: ledger.attempted.len(),
        acknowledged: ledger.acknowledged.len(),
        ..Report::default()
    };
    let mut holdings: BTreeMap<String, Holdings> = BTreeMap::new();
    for op in federation.operators() {
        if federation.is_running(&op.id) {
            anyhow::bail!("{} is running: stop the nodes before checking", op.id);
        }
        match read_store(&op.dir.join("data"), &trust, &mut report) {
            Ok(held) => {
                report.databases_opened += 1;
                holdings.insert(op.id.clone(), held);
            }
            Err(e) => report.databases_failed.push(format!("{}: {e:#}", op.id)),
        }
    }
    check_memos(ledger, &holdings, &mut report);
    check_consents(ledger, &holdings, &mut report);
    Ok(report)
}

fn read_store(
    dir: &std::path::Path,
    trust: &VerifiedTrustList,
    report: &mut Report,
) -> anyhow::Result<Holdings> {
    let store = open_store(dir)?;
    let mut held = Holdings::default();
    let mut ids = BTreeSet::new();
    for message in store.incoming(0, usize::MAX)? {
        if !ids.insert(message.message_id) {
            report.duplicate_message_ids += 1;
            sample(
                &mut report.samples.other,
                format!("message {} twice in {}", message.message_id, dir.display()),
            );
        }
        let signed = wire::decode_signed_envelope(&message.envelope)
            .map_err(|e| anyhow::anyhow!("inbox entry {}: {e}", message.seq))?;
        let envelope = wire::decode_envelope(&signed.body)
            .map_err(|e| anyhow::anyhow!("inbox entry {}: {e}", message.seq))?;
        match envelope.payload {
            Payload::Memo(memo) => held.memos.push(memo.text),
            _ => report.other_messages += 1,
        }
    }
    for (id, outgoing) in store.all_outgoing()? {
        match outgoing.state {
            OutgoingState::Pending => report.outbox_pending += 1,
            OutgoingState::Delivered if outgoing.receipt.is_none() => {
                report.delivered_without_receipt += 1;
                sample(
                    &mut report.samples.other,
                    format!("{id} delivered without a receipt ({})", dir.display()),
                );
            }
            OutgoingState::Delivered | OutgoingState::Expired => {}
        }
    }
    for log in store.consent_logs()? {
        let record = log.verify(trust).map_err(|e| e.to_string());
        held.logs
            .insert(hex::encode(log.consent_id.as_bytes()), (log, record));
    }
    Ok(held)
}

fn check_memos(ledger: &Ledger, holdings: &BTreeMap<String, Holdings>, report: &mut Report) {
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for held in holdings.values() {
        for text in &held.memos {
            if text.starts_with(&ledger.memo_prefix) {
                *applied.entry(text).or_default() += 1;
            } else {
                report.other_messages += 1;
            }
        }
    }
    report.applied = applied.len();
    for text in &ledger.acknowledged {
        if !applied.contains_key(text.as_str()) {
            report.lost += 1;
            sample(&mut report.samples.lost, text.clone());
        }
    }
    for (text, &count) in &applied {
        if count > 1 {
            report.duplicated += 1;
            sample(&mut report.samples.duplicated, format!("{text} ({count}x)"));
        }
        if !ledger.attempted.contains(*text) {
            report.unexpected += 1;
            sample(&mut report.samples.unexpected, (*text).to_owned());
        }
    }
    for text in ledger.attempted.difference(&ledger.acknowledged) {
        report.unknown += 1;
        if applied.contains_key(text.as_str()) {
            report.recovered += 1;
        }
    }
}

/// The operators that must hold a copy of a record (the node's own rule).
fn parties(record: &ConsentRecord) -> BTreeSet<OperatorId> {
    copies::parties(record.terms())
}

fn is_withdrawn(record: &ConsentRecord) -> bool {
    record
        .events()
        .iter()
        .any(|e| matches!(e.kind, EventKind::Withdrawn(_)))
}

fn check_consents(ledger: &Ledger, holdings: &BTreeMap<String, Holdings>, report: &mut Report) {
    let c = &mut report.consents;
    c.withdrawals_acknowledged = ledger.withdrawals_acknowledged.len();
    for (operator, held) in holdings {
        for (id, (_, record)) in &held.logs {
            c.copies += 1;
            if let Err(e) = record {
                c.invalid += 1;
                sample(
                    &mut report.samples.other,
                    format!("consent {id} at {operator} does not verify: {e}"),
                );
            }
        }
    }
    // The home's log is the reference for every record.
    let mut homes: BTreeMap<&str, (&ConsentLog, &ConsentRecord)> = BTreeMap::new();
    for (operator, held) in holdings {
        for (id, (log, record)) in &held.logs {
            if let Ok(record) = record {
                if record.terms().home.as_str() == operator {
                    homes.insert(id, (log, record));
                }
            }
        }
    }
    c.records = homes.len();
    for (id, (home_log, record)) in &homes {
        let withdrawn = is_withdrawn(record);
        c.withdrawn += usize::from(withdrawn);
        for party in parties(record) {
            if party == record.terms().home {
                continue;
            }
            // A party whose store did not open is already a violation.
            let Some(held) = holdings.get(party.as_str()) else {
                continue;
            };
            let copy = held.logs.get(*id).map(|(log, _)| log);
            let held_events = copy.map_or(&[][..], |log| &log.events[..]);
            if held_events.len() > home_log.events.len()
                || held_events != &home_log.events[..held_events.len()]
            {
                c.diverged += 1;
                sample(
                    &mut report.samples.other,
                    format!("consent {id}: {party}'s copy is not a prefix of the home's log"),
                );
                continue;
            }
            if held_events.len() < home_log.events.len() {
                c.behind += 1;
            }
            let party_withdrawn = held
                .logs
                .get(*id)
                .and_then(|(_, r)| r.as_ref().ok())
                .is_some_and(is_withdrawn);
            if withdrawn && !party_withdrawn {
                c.withdrawals_undelivered += 1;
                sample(
                    &mut report.samples.other,
                    format!(
                        "consent {id}: withdrawn at {} but {party} holds {} of {} events",
                        record.terms().home,
                        held_events.len(),
                        home_log.events.len()
                    ),
                );
            }
        }
    }
    for id in &ledger.withdrawals_acknowledged {
        let at_home = homes.get(id.as_str()).is_some_and(|(_, r)| is_withdrawn(r));
        if !at_home {
            c.withdrawals_lost += 1;
            sample(
                &mut report.samples.other,
                format!("consent {id}: withdrawal acknowledged but not in the home's log"),
            );
        }
    }
}

fn sample(samples: &mut Vec<String>, text: String) {
    if samples.len() < SAMPLES_MAX {
        samples.push(text);
    }
}

/// The pids among `pids` that are still live `mim4-node` processes (not
/// zombies): after a run, this must be empty.
pub fn live_nodes(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|&pid| node_process_alive(pid))
        .collect()
}

/// Whether `pid` is a live (not zombie) process whose command line names `mim4-node`.
fn node_process_alive(pid: u32) -> bool {
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    std::fs::read(proc_dir.join("cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("mim4-node"))
}

/// Opens an operator's store offline (`DIR/<operator>/data`) with the storage
/// key the launcher put beside its operator key.
pub fn open_store(dir: &std::path::Path) -> anyhow::Result<Store> {
    let key_file = dir
        .parent()
        .unwrap_or(dir)
        .join(mim4_node::identity::STORAGE_KEY_FILE);
    let key = mim4_node::identity::read_storage_key(&key_file)?;
    Store::open(dir, &key).with_context(|| format!("opening {}", dir.display()))
}

/// How a fault run (chaos, the partition suite) ended: the offline check,
/// every violated invariant, the node processes, and the folder.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// The offline check (absent if the run failed before it).
    pub check: Option<Report>,
    /// Violated invariants, and the error if the run failed.
    pub violations: Vec<String>,
    /// Every node process the run started.
    pub node_pids: Vec<u32>,
    /// Of those, still alive at the end.
    pub nodes_left: Vec<u32>,
    /// The federation's folder.
    pub dir: std::path::PathBuf,
    /// Whether the folder was kept.
    pub kept: bool,
    /// Whole run, in seconds.
    pub elapsed_s: f64,
}

impl Verdict {
    /// A run on the federation in `dir`, not judged yet.
    pub(crate) fn new(dir: std::path::PathBuf) -> Self {
        Self {
            check: None,
            violations: Vec::new(),
            node_pids: Vec::new(),
            nodes_left: Vec::new(),
            dir,
            kept: true,
            elapsed_s: 0.0,
        }
    }

    /// Whether every invariant held.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// Stops the nodes of `guard` and checks every store against `ledger`.
    /// `outcome` is the run's (`None`: interrupted by Ctrl-C, an error); a
    /// run that failed is judged on its databases only (it did not drain).
    /// Returns the stopped federation, if stopping worked.
    pub(crate) fn stop_and_check(
        &mut self,
        mut guard: crate::guard::NodeGuard,
        outcome: Option<anyhow::Result<()>>,
        ledger: &std::sync::Mutex<Ledger>,
    ) -> anyhow::Result<Option<crate::Federation>> {
        self.node_pids = guard.pids.clone();
        let stopped = guard.stop();
        let Some(outcome) = outcome else {
            anyhow::bail!(
                "interrupted; every node this run started was stopped; folder kept: {}",
                self.dir.display()
            );
        };
        if let Err(e) = &outcome {
            self.violations.push(format!("run failed: {e:#}"));
        }
        let federation = match stopped {
            Ok(federation) => federation,
            Err(e) => {
                self.violations.push(format!("stopping the nodes: {e:#}"));
                return Ok(None);
            }
        };
        let ledger = ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match check(&federation, &ledger) {
            Ok(check) if outcome.is_err() => {
                self.violations.extend(
                    check
                        .databases_failed
                        .iter()
                        .map(|d| format!("database does not open: {d}")),
                );
                self.check = Some(check);
            }
            Ok(check) => {
                self.violations.extend(check.violations());
                self.check = Some(check);
            }
            Err(e) => self.violations.push(format!("check failed: {e:#}")),
        }
        Ok(Some(federation))
    }

    /// Finds node processes left alive, removes the folder of a clean run
    /// when `remove_if_clean`, and records the run's length.
    pub(crate) fn finish(
        &mut self,
        remove_if_clean: bool,
        started: std::time::Instant,
    ) -> anyhow::Result<()> {
        self.nodes_left = live_nodes(&self.node_pids);
        if !self.nodes_left.is_empty() {
            self.violations.push(format!(
                "node process(es) left running: {:?}",
                self.nodes_left
            ));
        }
        if remove_if_clean && self.is_clean() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
            self.kept = false;
        }
        self.elapsed_s = started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Prints the check, samples of what it found, the processes and the verdict.
    pub fn print(&self) {
        if let Some(check) = &self.check {
            println!("  check: {}", check.summary());
            for text in check
                .samples
                .lost
                .iter()
                .chain(&check.samples.duplicated)
                .chain(&check.samples.unexpected)
                .chain(&check.samples.other)
            {
                println!("    {text}");
            }
        }
        println!(
            "  node processes started {}, left running {}",
            self.node_pids.len(),
            self.nodes_left.len()
        );
        if self.is_clean() {
            println!("  verdict: every invariant held ({:.1} s)", self.elapsed_s);
        } else {
            println!("  verdict: VIOLATED: {}", self.violations.join("; "));
        }
        if self.kept {
            println!("  federation folder kept: {}", self.dir.display());
        }
    }
}
