//! Runs a parsed scenario against a running testnet through the SDK, like a
//! tester would: each step's outcome is compared with its expectation.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mim4_proto::v1 as pb;
use mim4_sdk::{CallError, Client, ConsentId, DataAnswer, RequestError, Terms};
use serde::Serialize;

use super::{toml_to_json, Action, Audience, Citizen, Outcome, RequestStep, Scenario, Scope, Step};
use crate::Federation;

/// The result of one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// One-based step number.
    pub number: usize,
    /// The step's name.
    pub name: String,
    /// Its action.
    pub action: &'static str,
    /// Whether its expectation held.
    pub passed: bool,
    /// What happened, in words.
    pub detail: String,
    /// How long it took, including retries.
    pub millis: u64,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario's title.
    pub scenario: String,
    /// Whether every step passed.
    pub passed: bool,
    /// Sample data loaded: (operator, subjects, values).
    pub registries: Vec<(String, u64, u64)>,
    /// Consents from earlier runs withdrawn first.
    pub cleared: usize,
    /// Steps run (a run stops at the first failed step).
    pub steps: Vec<StepReport>,
    /// Steps not run after a failure.
    pub skipped: usize,
}

/// Saved consent records of a step: (record id, home operator).
#[derive(Clone, Debug)]
struct Saved {
    ids: Vec<ConsentId>,
    grantors: Vec<String>,
    home: String,
}

struct Runner<'f> {
    federation: &'f Federation,
    scenario: &'f Scenario,
    catalogue: BTreeMap<String, String>,
    clients: BTreeMap<(String, String), Client>,
    saved: BTreeMap<String, Saved>,
    bound: BTreeMap<String, f64>,
}

/// Runs a scenario against a running federation. With `echo`, prints each
/// step as it finishes. Fails (Err) only when the run could not start; a
/// failed expectation is in the report.
pub async fn run(
    federation: &Federation,
    scenario: &Scenario,
    echo: bool,
) -> anyhow::Result<Report> {
    let present: BTreeSet<&str> = federation
        .operators()
        .iter()
        .map(|o| o.id.as_str())
        .collect();
    if let Some(missing) = scenario
        .operators
        .iter()
        .find(|o| !present.contains(o.as_str()))
    {
        anyhow::bail!(
            "scenario {:?} needs operator {missing}, which this testnet does not have; \
             start one with all eight: mim4-testnet reset && mim4-testnet up --operators 8",
            scenario.name
        );
    }
    for op in &scenario.operators {
        if !federation.is_running(op) {
            anyhow::bail!("operator {op} is not running; start it with `mim4-testnet up`");
        }
    }
    let trust = federation.trust_list()?;
    let catalogue = trust
        .list()
        .attributes
        .iter()
        .filter_map(|a| Some((a.name.to_string(), a.sources.first()?.to_string())))
        .collect();
    let mut runner = Runner {
        federation,
        scenario,
        catalogue,
        clients: BTreeMap::new(),
        saved: BTreeMap::new(),
        bound: BTreeMap::new(),
    };
    let mut report = Report {
        scenario: scenario.name.clone(),
        passed: true,
        registries: Vec::new(),
        cleared: 0,
        steps: Vec::new(),
        skipped: 0,
    };
    if echo {
        println!("\n{}", bold(&scenario.name));
        if !scenario.description.is_empty() {
            println!("{}", scenario.description);
        }
    }
    for (operator, json) in &scenario.registries {
        let (subjects, values) = runner
            .client(operator, "admin")
            .await?
            .load_registry(json)
            .await
            .with_context(|| format!("loading sample data into {operator}"))?;
        report.registries.push((operator.clone(), subjects, values));
    }
    report.cleared = runner.clear_earlier_consents().await?;
    if echo && (report.cleared > 0 || !report.registries.is_empty()) {
        println!(
            "  (sample data: {} value(s) loaded; {} consent(s) from earlier runs withdrawn)",
            report.registries.iter().map(|r| r.2).sum::<u64>(),
            report.cleared
        );
    }
    for (index, step) in scenario.steps.iter().enumerate() {
        let started = Instant::now();
        let outcome = runner.step(step).await;
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(e) => (false, format!("{e:#}")),
        };
        let step_report = StepReport {
            number: index + 1,
            name: step.name.clone(),
            action: step.action.name(),
            passed,
            detail,
            millis: started.elapsed().as_millis() as u64,
        };
        if echo {
            print_step(&step_report);
        }
        report.steps.push(step_report);
        if !passed {
            report.passed = false;
            report.skipped = scenario.steps.len() - index - 1;
            break;
        }
    }
    if echo {
        if report.passed {
            println!(
                "  {}: all {} steps passed",
                scenario.name,
                report.steps.len()
            );
        } else {
            println!(
                "  {}: FAILED at step {} ({} step(s) not run)",
                scenario.name,
                report.steps.len(),
                report.skipped
            );
        }
    }
    Ok(report)
}

fn bold(text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn print_step(step: &StepReport) {
    let color = std::io::stdout().is_terminal();
    let mark = match (step.passed, color) {
        (true, true) => "\x1b[32m✓\x1b[0m",
        (false, true) => "\x1b[31m✗\x1b[0m",
        (true, false) => "ok",
        (false, false) => "FAILED",
    };
    println!("  {:>2}. {} {mark}", step.number, step.name);
    for line in step.detail.lines() {
        println!("      {line}");
    }
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Consent { .. } => "consent",
            Action::Arrangement { .. } => "arrangement",
            Action::Withdraw { .. } => "withdraw",
            Action::Narrow { .. } => "narrow",
            Action::Request(_) => "request",
            Action::Compute { .. } => "compute",
        }
    }
}

impl Runner<'_> {
    async fn client(&mut self, operator: &str, client: &str) -> anyhow::Result<Client> {
        let key = (operator.to_owned(), client.to_owned());
        if let Some(c) = self.clients.get(&key) {
            return Ok(c.clone());
        }
        let op = self.federation.operator(operator)?;
        let credential = op
            .credential(client)
            .with_context(|| format!("{operator} has no client {client:?}"))?;
        let c = Client::connect(&op.api_url(), &credential)
            .await
            .with_context(|| format!("connecting to {operator} as {client}"))?;
        self.clients.insert(key, c.clone());
        Ok(c)
    }

    /// The service's own client (`<operator>/<name>` uses `<name>.credential`).
    async fn service(&mut self, service: &str) -> anyhow::Result<Client> {
        let (operator, name) = service
            .split_once('/')
            .with_context(|| format!("service {service:?} is not <operator>/<name>"))?;
        self.client(operator, name).await
    }

    /// Remembers the consents of a step under `name` (its `save`), if any.
    fn save(
        &mut self,
        name: Option<&String>,
        ids: Vec<ConsentId>,
        grantors: Vec<String>,
        home: String,
    ) {
        if let Some(name) = name {
            let saved = Saved {
                ids,
                grantors,
                home,
            };
            self.saved.insert(name.clone(), saved);
        }
    }

    fn citizen(&self, name: &str) -> &Citizen {
        // Names were checked at parse time.
        &self.scenario.citizens[name]
    }

    async fn citizen_app(&mut self, name: &str) -> anyhow::Result<Client> {
        let home = self.citizen(name).home.clone();
        self.client(&home, "citizen-app").await
    }

    /// Withdraws the records its citizens gave in earlier runs at their homes.
    async fn clear_earlier_consents(&mut self) -> anyhow::Result<usize> {
        let mut cleared = 0;
        let citizens: Vec<Citizen> = self.scenario.citizens.values().cloned().collect();
        for citizen in citizens {
            let app = self.citizen_app(&citizen.name).await?;
            for view in app.consents(&citizen.id).await? {
                if view.status != "given" {
                    continue;
                }
                let id = ConsentId::of(&view)?;
                let person = view
                    .terms
                    .as_ref()
                    .and_then(|t| t.grantors.first())
                    .unwrap_or(&citizen.id)
                    .clone();
                if let Err(e) = app.withdraw(id, &person, None).await {
                    // Withdrawn meanwhile (e.g. an earlier call whose answer was lost): done.
                    let now = app.consent(id).await.map(|v| v.status);
                    if now.as_deref().ok() != Some("withdrawn") {
                        return Err(e).with_context(|| format!("withdrawing earlier consent {id}"));
                    }
                }
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    fn source_of(&self, attribute: &str) -> anyhow::Result<String> {
        self.catalogue
            .get(attribute)
            .cloned()
            .with_context(|| format!("{attribute:?} is not in the federation's catalogue"))
    }

    /// Groups a scope by source, in catalogue order.
    fn by_source(&self, scope: &Scope) -> anyhow::Result<BTreeMap<String, Scope>> {
        let mut groups: BTreeMap<String, Scope> = BTreeMap::new();
        for a in &scope.read {
            groups
                .entry(self.source_of(a)?)
                .or_default()
                .read
                .push(a.clone());
        }
        for a in &scope.verify {
            groups
                .entry(self.source_of(a)?)
                .or_default()
                .verify
                .push(a.clone());
        }
        Ok(groups)
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<String> {
        let deadline = Instant::now() + step.within;
        match &step.action {
            Action::Consent {
                citizen,
                grantors,
                service,
                purpose,
                purpose_text,
                scope,
                grant,
                save,
            } => {
                let subject = self.citizen(citizen).clone();
                let grantor_ids: Vec<String> = grantors
                    .iter()
                    .map(|g| self.citizen(g).id.clone())
                    .collect();
                let requester = self.service(service).await?;
                let app = self.citizen_app(citizen).await?;
                let mut ids = Vec::new();
                let mut lines = Vec::new();
                for (source, part) in self.by_source(scope)? {
                    let mut terms = Terms::consent(&subject.id, &subject.home, service, &source)
                        .grantors(grantor_ids.iter().map(String::as_str))
                        .purpose(purpose)
                        .purpose_text(purpose_text);
                    for a in &part.read {
                        terms = terms.read(a);
                    }
                    for a in &part.verify {
                        terms = terms.verify(a);
                    }
                    let id = requester.request_consent(terms.build()).await?;
                    let mut status = String::new();
                    for grantor in &grantor_ids {
                        let view = until_found(deadline, || async {
                            if *grant {
                                app.grant(id, grantor, None).await
                            } else {
                                app.refuse(id, grantor, None).await
                            }
                        })
                        .await?;
                        status = view.status;
                    }
                    let expected = if *grant { "given" } else { "refused" };
                    if status != expected {
                        anyhow::bail!(
                            "consent {id} to {source} is {status:?}, expected {expected:?}"
                        );
                    }
                    lines.push(format!(
                        "{id}: {} from {source}, {status} by {}",
                        describe(&part),
                        grantors.join(" and ")
                    ));
                    ids.push(id);
                }
                self.save(save.as_ref(), ids, grantor_ids, subject.home);
                Ok(lines.join("\n"))
            }
            Action::Arrangement {
                citizen,
                audience,
                purpose,
                scope,
                save,
            } => {
                let subject = self.citizen(citizen).clone();
                let app = self.citizen_app(citizen).await?;
                let mut ids = Vec::new();
                let mut lines = Vec::new();
                for (source, part) in self.by_source(scope)? {
                    let mut terms = match audience {
                        Audience::Sector(s) => {
                            Terms::arrangement_for_sector(&subject.id, &subject.home, s, &source)
                        }
                        Audience::Member(m) => {
                            Terms::arrangement_for_member(&subject.id, &subject.home, m, &source)
                        }
                    }
                    .purpose(purpose);
                    for a in &part.read {
                        terms = terms.read(a);
                    }
                    for a in &part.verify {
                        terms = terms.verify(a);
                    }
                    let view = app.create_arrangement(terms.build(), &subject.id).await?;
                    let id = ConsentId::of(&view)?;
                    lines.push(format!(
                        "arrangement {id}: {} from {source} for {}, {}",
                        describe(&part),
                        match audience {
                            Audience::Sector(s) => format!("the {s} sector"),
                            Audience::Member(m) => m.clone(),
                        },
                        view.status
                    ));
                    ids.push(id);
                }
                let grantors = vec![subject.id.clone()];
                self.save(save.as_ref(), ids, grantors, subject.home);
                Ok(lines.join("\n"))
            }
            Action::Withdraw { consent, by } => {
                let saved = self.saved[consent].clone();
                let person = self.person(by.as_deref(), &saved);
                let app = self.client(&saved.home, "citizen-app").await?;
                let mut lines = Vec::new();
                for id in &saved.ids {
                    let view = app.withdraw(*id, &person, None).await?;
                    lines.push(format!("{id}: {}", view.status));
                }
                Ok(lines.join("\n"))
            }
            Action::Narrow { consent, by, scope } => {
                let saved = self.saved[consent].clone();
                let person = self.person(by.as_deref(), &saved);
                let app = self.client(&saved.home, "citizen-app").await?;
                let mut lines = Vec::new();
                for id in &saved.ids {
                    let view = app.consent(*id).await?;
                    let mut terms = view.terms.context("the record has no terms")?;
                    terms.scope.retain(|item| match item.action.as_str() {
                        "read" => scope.read.contains(&item.attribute),
                        _ => scope.verify.contains(&item.attribute),
                    });
                    let view = if terms.scope.is_empty() {
                        app.withdraw(*id, &person, None).await?
                    } else {
                        app.narrow(*id, terms.clone(), &person).await?
                    };
                    lines.push(format!(
                        "{id}: {} ({} item(s) left)",
                        view.status,
                        terms.scope.len()
                    ));
                }
                Ok(lines.join("\n"))
            }
            Action::Request(request) => self.request(request, deadline).await,
            Action::Compute {
                inputs,
                threshold,
                rate,
                floor,
                cap,
                bind,
                expect,
            } => {
                let sum: f64 = inputs.iter().map(|i| self.bound[i]).sum();
                let result = ((sum - threshold) * rate).clamp(*floor, *cap);
                if let Some(name) = bind {
                    self.bound.insert(name.clone(), result);
                }
                let text = format!(
                    "clamp(({} = {sum} - {threshold}) × {rate}, {floor}, {cap}) = {result:.2}",
                    inputs.join(" + ")
                );
                match expect {
                    Some(e) if (e - result).abs() >= 0.005 => {
                        anyhow::bail!("{text}, expected {e:.2}")
                    }
                    _ => Ok(text),
                }
            }
        }
    }

    fn person(&self, by: Option<&str>, saved: &Saved) -> String {
        match by {
            Some(name) => self.citizen(name).id.clone(),
            None => saved.grantors.first().cloned().unwrap_or_default(),
        }
    }

    async fn request(&mut self, step: &RequestStep, deadline: Instant) -> anyhow::Result<String> {
        let client = self.service(&step.service).await?;
        let subject = self.citizen(&step.citizen).id.clone();
        loop {
            let mut builder = client
                .request(&subject)
                .service(&step.service)
                .purpose(&step.purpose)
                .attributes(step.attributes.iter().map(String::as_str));
            for p in &step.predicates {
                let value = toml_to_json(p.value.clone()).map_err(anyhow::Error::msg)?;
                builder = builder.predicate(&p.attribute, &p.op, value);
            }
            let result = builder.send().await;
            let (outcome, text) = classify(&result);
            // Outcomes that consent traffic can still change are retried.
            let may_change = matches!(
                outcome,
                Some(Outcome::Answered | Outcome::Partial | Outcome::Denied)
            );
            let retry = may_change && Instant::now() < deadline;
            if outcome == Some(step.expect) {
                // The right kind of answer with the wrong details (a grant
                // still on its way withholds one attribute more) may change too.
                match self.check_answer(step, result.ok(), text) {
                    Err(_) if retry => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    checked => return checked,
                }
            }
            if !retry {
                anyhow::bail!(
                    "expected {}, got {}: {text}",
                    step.expect,
                    outcome.map_or("an error", Outcome::as_str)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_answer(
        &mut self,
        step: &RequestStep,
        answer: Option<DataAnswer>,
        text: String,
    ) -> anyhow::Result<String> {
        let Some(answer) = answer else {
            return Ok(format!("{}: {text}", step.expect));
        };
        let mut lines = Vec::new();
        for v in &answer.values {
            lines.push(format!(
                "{} = {} (signed by {})",
                v.attribute, v.value, v.source
            ));
        }
        for (attribute, op, operand, holds) in &answer.answers {
            lines.push(format!(
                "{attribute} {op} {operand}: {holds} (no value revealed)"
            ));
        }
        for (attribute, code, reason) in &answer.withheld {
            lines.push(format!("{attribute}: withheld ({code}): {reason}"));
        }
        for (attribute, expected) in &step.values {
            let got = answer.value(attribute).map(|v| &v.value);
            if got != Some(expected) {
                anyhow::bail!(
                    "{attribute}: expected {expected}, got {}\n{}",
                    got.map_or("nothing".into(), ToString::to_string),
                    lines.join("\n")
                );
            }
        }
        for (attribute, expected) in &step.holds {
            if answer.holds(attribute) != Some(*expected) {
                anyhow::bail!(
                    "predicate on {attribute}: expected {expected}, got {:?}\n{}",
                    answer.holds(attribute),
                    lines.join("\n")
                );
            }
        }
        if step.expect == Outcome::Partial && !step.withheld.is_empty() {
            let withheld: BTreeSet<String> =
                answer.withheld.iter().map(|(a, _, _)| a.clone()).collect();
            if withheld != step.withheld {
                anyhow::bail!(
                    "expected withheld {:?}, got {:?}\n{}",
                    step.withheld,
                    withheld,
                    lines.join("\n")
                );
            }
        }
        if step.predicates.is_empty() && !answer.answers.is_empty() {
            anyhow::bail!("predicate answers that nobody asked for");
        }
        if step.attributes.is_empty() && !answer.values.is_empty() {
            anyhow::bail!(
                "a predicate-only request released values\n{}",
                lines.join("\n")
            );
        }
        for (var, attribute) in &step.bind {
            let number = answer
                .value(attribute)
                .and_then(|v| v.value.as_f64())
                .with_context(|| format!("`bind.{var}`: {attribute} has no numeric value"))?;
            self.bound.insert(var.clone(), number);
        }
        Ok(lines.join("\n"))
    }
}

/// Retries an action at the citizen's home while the record has not arrived there yet.
async fn until_found<F, Fut>(deadline: Instant, mut attempt: F) -> anyhow::Result<pb::ConsentView>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<pb::ConsentView, CallError>>,
{
    loop {
        match attempt().await {
            Err(CallError::NotFound(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

fn describe(scope: &Scope) -> String {
    let mut parts = Vec::new();
    if !scope.read.is_empty() {
        parts.push(format!("read {}", scope.read.join(", ")));
    }
    if !scope.verify.is_empty() {
        parts.push(format!("verify {}", scope.verify.join(", ")));
    }
    parts.join("; ")
}

/// The outcome of a request (None: the call itself failed) and a description.
fn classify(result: &Result<DataAnswer, RequestError>) -> (Option<Outcome>, String) {
    match result {
        Ok(answer) if answer.withheld.is_empty() && answer.failures.is_empty() => {
            (Some(Outcome::Answered), "answered".into())
        }
        Ok(answer) => (
            Some(Outcome::Partial),
            format!(
                "withheld {:?}, failed {:?}",
                answer.withheld.iter().map(|w| &w.0).collect::<Vec<_>>(),
                answer.failures.iter().map(|f| &f.0).collect::<Vec<_>>()
            ),
        ),
        Err(RequestError::Denied(m)) => (Some(Outcome::Denied), m.clone()),
        Err(RequestError::NotFound(m)) => (Some(Outcome::NotFound), m.clone()),
        Err(RequestError::Unreachable(m)) => (Some(Outcome::Unreachable), m.clone()),
        Err(RequestError::Invalid(m)) => (Some(Outcome::Invalid), m.clone()),
        Err(e) => (None, e.to_string()),
    }
}

impl Report {
    /// The failed step in one line ("step N (name): detail"), or "" if it passed.
    pub fn failure(&self) -> String {
        self.steps
            .iter()
            .find(|step| !step.passed)
            .map(|step| format!("step {} ({}): {}", step.number, step.name, step.detail))
            .unwrap_or_default()
    }
}
