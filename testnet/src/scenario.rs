//! Scenario files: a city's use case as a TOML file that `mim4-testnet run`
//! executes step by step against a running testnet, checking the expected
//! outcome of each step.
//!
//! # Format
//!
//! ```toml
//! name = "Helsinki daycare fees"
//! description = "Early education asks the income register for both parents' income."
//! # Operators the scenario needs; `run` stops early if the testnet lacks one.
//! operators = ["fi.helsinki", "fi.incomeregister"]
//!
//! # Sample data loaded into an operator's built-in registry before the steps
//! # (authoritative for the subjects and attributes listed). Dates are strings.
//! [[registry]]
//! operator = "fi.incomeregister"
//! [registry.subjects."fi:hetu:010180-123N"]
//! "income.gross_monthly" = 3150
//!
//! # Citizens, by a short name the steps use.
//! [[citizen]]
//! name = "parent1"
//! id = "fi:hetu:010180-123N"
//! home = "fi.helsinki"
//!
//! [[step]]
//! name = "parent 1 consents"
//! action = "consent"                      # see the actions below
//! citizen = "parent1"
//! service = "fi.helsinki/early-education"
//! purpose = "dpv:ServiceProvision"
//! read = ["income.gross_monthly"]
//! save = "c1"
//!
//! [[step]]
//! name = "the service reads the income"
//! action = "request"
//! citizen = "parent1"
//! service = "fi.helsinki/early-education"
//! purpose = "dpv:ServiceProvision"
//! attributes = ["income.gross_monthly"]
//! expect = "answered"
//! values = { "income.gross_monthly" = 3150 }
//! bind = { income1 = "income.gross_monthly" }
//! ```
//!
//! ## Actions
//! - `consent`: `service` asks for consent to `read` and/or `verify` (predicates only)
//!   attributes for `purpose` (`purpose_text` optional); one record per source in
//!   the catalogue, all granted (`expect = "given"`, the default) or refused
//!   (`expect = "refused"`) at the citizen's home through its citizen app by every
//!   name in `grantors` (default: the citizen). `save` names the records for later steps.
//! - `arrangement`: the citizen sets a standing permission arrangement for a `sector`
//!   or a `member` to `read`/`verify` attributes for `purpose`; `save` as above.
//! - `withdraw`: `by` (default: the first grantor) withdraws the saved `consent`.
//! - `narrow`: `by` narrows the saved `consent` to the `read`/`verify` attributes
//!   listed; a record left with nothing is withdrawn.
//! - `request`: `service` asks for `attributes` and `predicates`
//!   (`[{ attribute = "...", op = "<=", value = 4066 }]`) of the citizen for
//!   `purpose`. `expect` is one of `answered` (everything answered), `partial`
//!   (some attributes withheld: list them in `withheld`), `denied`, `not-found`,
//!   `unreachable`, `invalid`. `values` and `holds` check released values and
//!   predicate answers; `bind` names values for `compute`.
//! - `compute`: a linear income-based rule, as cities set fees:
//!   `clamp((sum of inputs - threshold) * rate, floor, cap)`; `bind` names the
//!   result and `expect` checks it (to the cent).
//!
//! Consents and withdrawals travel between operators through outboxes, so a
//! step whose outcome can still change (a request expecting `answered` while
//! the consent is on its way, or `denied` while the withdrawal is) is retried
//! until it matches or `within` (default `"30s"`) has passed. Each run starts by
//! withdrawing the consents its citizens gave in earlier runs, so runs repeat.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

mod run;

pub use run::{run, Report, StepReport};

/// The built-in scenarios: (name, file text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("daycare", include_str!("../scenarios/daycare.toml")),
    ("job-seeker", include_str!("../scenarios/job-seeker.toml")),
    ("skills", include_str!("../scenarios/skills.toml")),
];

/// Longest scenario file accepted.
pub const FILE_BYTES_MAX: usize = 1024 * 1024;
/// Most steps in a scenario.
pub const STEPS_MAX: usize = 1_000;
/// Longest `within` a step may ask for.
pub const WITHIN_MAX: Duration = Duration::from_secs(600);
const WITHIN_DEFAULT: Duration = Duration::from_secs(30);

/// Why a scenario file was refused; nothing ran.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Larger than [`FILE_BYTES_MAX`].
    #[error("the scenario is {0} bytes, more than the {FILE_BYTES_MAX} allowed")]
    TooLarge(usize),
    /// Not TOML of the scenario's shape (the message gives line and column).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A step is inconsistent.
    #[error("step {number} ({name:?}): {message}")]
    Step {
        /// One-based step number.
        number: usize,
        /// The step's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Something outside the steps is inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// A parsed and checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its title.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Operators it needs.
    pub operators: Vec<String>,
    /// Sample data: (operator, registry JSON).
    pub registries: Vec<(String, String)>,
    /// Citizens by short name.
    pub citizens: BTreeMap<String, Citizen>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// A citizen of a scenario.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Citizen {
    /// Short name used by the steps.
    pub name: String,
    /// Subject id.
    pub id: String,
    /// Home operator (the consent authority).
    pub home: String,
}

/// One step.
#[derive(Clone, Debug)]
pub struct Step {
    /// What it does, in words.
    pub name: String,
    /// How long it may take to reach its expected outcome.
    pub within: Duration,
    /// What it does.
    pub action: Action,
}

/// Read and verify permissions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Attributes whose values may be read.
    pub read: Vec<String>,
    /// Attributes that may be used in predicates.
    pub verify: Vec<String>,
}

/// Who an arrangement is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Every member with this sector label.
    Sector(String),
    /// One member.
    Member(String),
}

/// A predicate of a request.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// The attribute.
    pub attribute: String,
    /// `<`, `<=`, `==`, ...
    pub op: String,
    /// The operand.
    pub value: toml::Value,
}

/// What a step does; see the module documentation.
#[derive(Clone, Debug)]
pub enum Action {
    /// A service asks for consent, the grantors grant or refuse it.
    Consent {
        /// Short name of the citizen.
        citizen: String,
        /// Short names of the grantors.
        grantors: Vec<String>,
        /// The requesting service.
        service: String,
        /// DPV purpose.
        purpose: String,
        /// Purpose in words.
        purpose_text: String,
        /// What is asked.
        scope: Scope,
        /// Grant (true) or refuse.
        grant: bool,
        /// Name for later steps.
        save: Option<String>,
    },
    /// The citizen sets a standing arrangement.
    Arrangement {
        /// Short name of the citizen.
        citizen: String,
        /// Who it is for.
        audience: Audience,
        /// DPV purpose.
        purpose: String,
        /// What it allows.
        scope: Scope,
        /// Name for later steps.
        save: Option<String>,
    },
    /// A grantor withdraws saved records.
    Withdraw {
        /// Saved name.
        consent: String,
        /// Short name of who withdraws (None: the first grantor).
        by: Option<String>,
    },
    /// A grantor narrows saved records.
    Narrow {
        /// Saved name.
        consent: String,
        /// Short name of who narrows (None: the first grantor).
        by: Option<String>,
        /// What remains.
        scope: Scope,
    },
    /// A data request and its expected outcome.
    Request(Box<RequestStep>),
    /// A fee-like computation over bound values.
    Compute {
        /// Bound names to add up.
        inputs: Vec<String>,
        /// Subtracted from the sum.
        threshold: f64,
        /// Multiplies the rest.
        rate: f64,
        /// Lowest result.
        floor: f64,
        /// Highest result.
        cap: f64,
        /// Name for the result.
        bind: Option<String>,
        /// Expected result (to the cent).
        expect: Option<f64>,
    },
}

/// A data request step.
#[derive(Clone, Debug)]
pub struct RequestStep {
    /// Short name of the citizen.
    pub citizen: String,
    /// The requesting service.
    pub service: String,
    /// DPV purpose.
    pub purpose: String,
    /// Attributes asked for.
    pub attributes: Vec<String>,
    /// Predicates asked for.
    pub predicates: Vec<Predicate>,
    /// Expected outcome.
    pub expect: Outcome,
    /// Expected released values.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Expected predicate answers.
    pub holds: BTreeMap<String, bool>,
    /// Attributes expected to be withheld (with `partial`).
    pub withheld: BTreeSet<String>,
    /// Names given to released numeric values.
    pub bind: BTreeMap<String, String>,
}

/// How a data request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Everything asked was answered.
    Answered,
    /// Some attributes were withheld.
    Partial,
    /// Everything was withheld for lack of consent.
    Denied,
    /// No holder knows the subject.
    NotFound,
    /// A holder could not be reached.
    Unreachable,
    /// The request was refused as invalid.
    Invalid,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Answered,
        Outcome::Partial,
        Outcome::Denied,
        Outcome::NotFound,
        Outcome::Unreachable,
        Outcome::Invalid,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Partial => "partial",
            Outcome::Denied => "denied",
            Outcome::NotFound => "not-found",
            Outcome::Unreachable => "unreachable",
            Outcome::Invalid => "invalid",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    operators: Vec<String>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    citizen: Vec<Citizen>,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    operator: String,
    subjects: toml::Table,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    action: String,
    citizen: Option<String>,
    grantors: Option<Vec<String>>,
    by: Option<String>,
    service: Option<String>,
    purpose: Option<String>,
    purpose_text: Option<String>,
    read: Option<Vec<String>>,
    verify: Option<Vec<String>>,
    sector: Option<String>,
    member: Option<String>,
    consent: Option<String>,
    save: Option<String>,
    attributes: Option<Vec<String>>,
    predicates: Option<Vec<Predicate>>,
    expect: Option<toml::Value>,
    values: Option<toml::Table>,
    holds: Option<BTreeMap<String, bool>>,
    withheld: Option<Vec<String>>,
    bind: Option<toml::Value>,
    inputs: Option<Vec<String>>,
    threshold: Option<f64>,
    rate: Option<f64>,
    floor: Option<f64>,
    cap: Option<f64>,
    within: Option<String>,
}

/// Which fields each action takes (besides `name`, `action` and `within`).
const FIELDS: &[(&str, &[&str])] = &[
    (
        "consent",
        &[
            "citizen",
            "grantors",
            "service",
            "purpose",
            "purpose_text",
            "read",
            "verify",
            "save",
            "expect",
        ],
    ),
    (
        "arrangement",
        &[
            "citizen", "sector", "member", "purpose", "read", "verify", "save",
        ],
    ),
    ("withdraw", &["consent", "by"]),
    ("narrow", &["consent", "by", "read", "verify"]),
    (
        "request",
        &[
            "citizen",
            "service",
            "purpose",
            "attributes",
            "predicates",
            "expect",
            "values",
            "holds",
            "withheld",
            "bind",
        ],
    ),
    (
        "compute",
        &[
            "inputs",
            "threshold",
            "rate",
            "floor",
            "cap",
            "bind",
            "expect",
        ],
    ),
];

impl RawStep {
    /// Names of the optional fields that are set.
    fn fields_set(&self) -> Vec<&'static str> {
        let set: [(&'static str, bool); 25] = [
            ("citizen", self.citizen.is_some()),
            ("grantors", self.grantors.is_some()),
            ("by", self.by.is_some()),
            ("service", self.service.is_some()),
            ("purpose", self.purpose.is_some()),
            ("purpose_text", self.purpose_text.is_some()),
            ("read", self.read.is_some()),
            ("verify", self.verify.is_some()),
            ("sector", self.sector.is_some()),
            ("member", self.member.is_some()),
            ("consent", self.consent.is_some()),
            ("save", self.save.is_some()),
            ("attributes", self.attributes.is_some()),
            ("predicates", self.predicates.is_some()),
            ("expect", self.expect.is_some()),
            ("values", self.values.is_some()),
            ("holds", self.holds.is_some()),
            ("withheld", self.withheld.is_some()),
            ("bind", self.bind.is_some()),
            ("inputs", self.inputs.is_some()),
            ("threshold", self.threshold.is_some()),
            ("rate", self.rate.is_some()),
            ("floor", self.floor.is_some()),
            ("cap", self.cap.is_some()),
            ("within", false),
        ];
        set.into_iter()
            .filter(|(_, s)| *s)
            .map(|(n, _)| n)
            .collect()
    }
}

/// What earlier steps have defined, for checking references.
#[derive(Default)]
struct Names {
    citizens: BTreeSet<String>,
    saved: BTreeSet<String>,
    bound: BTreeSet<String>,
}

impl Scenario {
    /// Parses and checks a scenario file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.len() > FILE_BYTES_MAX {
            return Err(ParseError::TooLarge(text.len()));
        }
        let raw: RawScenario = toml::from_str(text)?;
        if raw.name.trim().is_empty() {
            return Err(ParseError::Invalid("`name` is empty".into()));
        }
        if raw.step.is_empty() {
            return Err(ParseError::Invalid("the scenario has no [[step]]".into()));
        }
        if raw.step.len() > STEPS_MAX {
            return Err(ParseError::Invalid(format!(
                "{} steps, more than the {STEPS_MAX} allowed",
                raw.step.len()
            )));
        }
        let operators: BTreeSet<&str> = raw.operators.iter().map(String::as_str).collect();
        let mut names = Names::default();
        let mut citizens = BTreeMap::new();
        for citizen in raw.citizen {
            if !operators.contains(citizen.home.as_str()) {
                return Err(ParseError::Invalid(format!(
                    "citizen {:?}: home {:?} is not in `operators`",
                    citizen.name, citizen.home
                )));
            }
            names.citizens.insert(citizen.name.clone());
            if citizens.insert(citizen.name.clone(), citizen).is_some() {
                return Err(ParseError::Invalid(
                    "two citizens have the same name".into(),
                ));
            }
        }
        let mut registries = Vec::new();
        for registry in raw.registry {
            if !operators.contains(registry.operator.as_str()) {
                return Err(ParseError::Invalid(format!(
                    "registry of {:?}: the operator is not in `operators`",
                    registry.operator
                )));
            }
            let json = serde_json::json!({ "subjects": registry.subjects });
            registries.push((registry.operator, json.to_string()));
        }
        let mut steps = Vec::with_capacity(raw.step.len());
        for (index, raw_step) in raw.step.into_iter().enumerate() {
            let name = raw_step.name.clone();
            let step = check_step(raw_step, &operators, &mut names).map_err(|message| {
                ParseError::Step {
                    number: index + 1,
                    name,
                    message,
                }
            })?;
            steps.push(step);
        }
        Ok(Scenario {
            name: raw.name,
            description: raw.description.trim().to_owned(),
            operators: raw.operators,
            registries,
            citizens,
            steps,
        })
    }

    /// A built-in scenario by name, or a file.
    pub fn load(name_or_path: &str) -> anyhow::Result<Self> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
            return Self::parse(text).with_context(|| format!("built-in scenario {name_or_path}"));
        }
        let path = std::path::Path::new(name_or_path);
        let bytes = std::fs::metadata(path)
            .with_context(|| {
                format!(
                    "{name_or_path} is neither a built-in scenario ({}) nor a readable file",
                    BUILT_IN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?
            .len();
        if bytes > FILE_BYTES_MAX as u64 {
            return Err(ParseError::TooLarge(bytes as usize))
                .with_context(|| path.display().to_string());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }
}

fn check_step(raw: RawStep, operators: &BTreeSet<&str>, names: &mut Names) -> Result<Step, String> {
    let Some((_, allowed)) = FIELDS.iter().find(|(action, _)| *action == raw.action) else {
        return Err(format!(
            "unknown action {:?}; one of {}",
            raw.action,
            FIELDS
                .iter()
                .map(|(a, _)| *a)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if let Some(extra) = raw.fields_set().into_iter().find(|f| !allowed.contains(f)) {
        return Err(format!(
            "`{extra}` does not apply to action {:?} (it takes {})",
            raw.action,
            allowed.join(", ")
        ));
    }
    let within = match &raw.within {
        None => WITHIN_DEFAULT,
        Some(text) => {
            let within =
                crate::bench::parse_duration(text).map_err(|e| format!("`within`: {e}"))?;
            if within > WITHIN_MAX {
                return Err(format!("`within` is at most {}s", WITHIN_MAX.as_secs()));
            }
            within
        }
    };
    let service = |raw: &Option<String>| -> Result<String, String> {
        let service = required(raw, "service")?;
        let operator = service.split('/').next().unwrap_or_default();
        if !operators.contains(operator) {
            return Err(format!(
                "service {service:?}: its operator {operator:?} is not in `operators`"
            ));
        }
        Ok(service)
    };
    let citizen = |names: &Names, raw: &Option<String>, field: &str| -> Result<String, String> {
        let name = required(raw, field)?;
        if !names.citizens.contains(&name) {
            return Err(format!("`{field}`: no [[citizen]] is named {name:?}"));
        }
        Ok(name)
    };
    let scope = |read: Option<Vec<String>>, verify: Option<Vec<String>>| -> Result<Scope, String> {
        let scope = Scope {
            read: read.unwrap_or_default(),
            verify: verify.unwrap_or_default(),
        };
        Ok(scope)
    };
    let save = |names: &mut Names, save: Option<String>| -> Result<Option<String>, String> {
        if let Some(name) = &save {
            if !names.saved.insert(name.clone()) {
                return Err(format!(
                    "`save`: {name:?} is already used by an earlier step"
                ));
            }
        }
        Ok(save)
    };
    let saved = |names: &Names, consent: &Option<String>| -> Result<String, String> {
        let name = required(consent, "consent")?;
        if !names.saved.contains(&name) {
            return Err(format!("`consent`: no earlier step saved {name:?}"));
        }
        Ok(name)
    };
    let action = match raw.action.as_str() {
        "consent" => {
            let citizen_name = citizen(names, &raw.citizen, "citizen")?;
            let grantors = match raw.grantors {
                None => vec![citizen_name.clone()],
                Some(list) if list.is_empty() => return Err("`grantors` is empty".into()),
                Some(list) => {
                    for g in &list {
                        citizen(names, &Some(g.clone()), "grantors")?;
                    }
                    list
                }
            };
            let scope = scope(raw.read, raw.verify)?;
            if scope.read.is_empty() && scope.verify.is_empty() {
                return Err("give the attributes to `read` and/or `verify`".into());
            }
            let grant = match raw.expect.as_ref().map(toml_string).transpose()? {
                None => true,
                Some(text) if text == "given" => true,
                Some(text) if text == "refused" => false,
                Some(other) => {
                    return Err(format!(
                        "`expect` of a consent is \"given\" or \"refused\", not {other:?}"
                    ))
                }
            };
            Action::Consent {
                citizen: citizen_name,
                grantors,
                service: service(&raw.service)?,
                purpose: required(&raw.purpose, "purpose")?,
                purpose_text: raw.purpose_text.unwrap_or_default(),
                scope,
                grant,
                save: save(names, raw.save)?,
            }
        }
        "arrangement" => {
            let audience = match (raw.sector, raw.member) {
                (Some(sector), None) => Audience::Sector(sector),
                (None, Some(member)) => {
                    if !operators.contains(member.as_str()) {
                        return Err(format!("`member` {member:?} is not in `operators`"));
                    }
                    Audience::Member(member)
                }
                _ => return Err("give exactly one of `sector` and `member`".into()),
            };
            let scope = scope(raw.read, raw.verify)?;
            if scope.read.is_empty() && scope.verify.is_empty() {
                return Err("give the attributes to `read` and/or `verify`".into());
            }
            Action::Arrangement {
                citizen: citizen(names, &raw.citizen, "citizen")?,
                audience,
                purpose: required(&raw.purpose, "purpose")?,
                scope,
                save: save(names, raw.save)?,
            }
        }
        "withdraw" => Action::Withdraw {
            consent: saved(names, &raw.consent)?,
            by: raw
                .by
                .as_ref()
                .map(|_| citizen(names, &raw.by, "by"))
                .transpose()?,
        },
        "narrow" => Action::Narrow {
            consent: saved(names, &raw.consent)?,
            by: raw
                .by
                .as_ref()
                .map(|_| citizen(names, &raw.by, "by"))
                .transpose()?,
            scope: scope(raw.read, raw.verify)?,
        },
        "request" => {
            let attributes = raw.attributes.unwrap_or_default();
            let predicates = raw.predicates.unwrap_or_default();
            if attributes.is_empty() && predicates.is_empty() {
                return Err("ask for `attributes` and/or `predicates`".into());
            }
            let expect_text = toml_string(
                raw.expect
                    .as_ref()
                    .ok_or("`expect` is required (answered, partial, denied, ...)")?,
            )?;
            let expect = Outcome::parse(&expect_text).ok_or_else(|| {
                format!(
                    "`expect` {expect_text:?} is not one of {}",
                    Outcome::ALL.map(Outcome::as_str).join(", ")
                )
            })?;
            let withheld: BTreeSet<String> = raw.withheld.unwrap_or_default().into_iter().collect();
            if !withheld.is_empty() && expect != Outcome::Partial {
                return Err("`withheld` goes with expect = \"partial\"".into());
            }
            let values: BTreeMap<String, serde_json::Value> = raw
                .values
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<_, String>>()?;
            let bind = bindings(raw.bind)?;
            for (attribute, _) in values
                .iter()
                .chain(bind.values().map(|a| (a, &serde_json::Value::Null)))
            {
                if !attributes.contains(attribute) {
                    return Err(format!(
                        "{attribute:?} is checked or bound but not in `attributes`"
                    ));
                }
            }
            let holds = raw.holds.unwrap_or_default();
            if let Some(a) = holds
                .keys()
                .find(|a| !predicates.iter().any(|p| &p.attribute == *a))
            {
                return Err(format!(
                    "`holds` names {a:?}, which no predicate asks about"
                ));
            }
            if (!values.is_empty() || !holds.is_empty() || !bind.is_empty())
                && !matches!(expect, Outcome::Answered | Outcome::Partial)
            {
                return Err(format!(
                    "`values`, `holds` and `bind` need an answer, but expect = {expect:?}",
                    expect = expect.as_str()
                ));
            }
            for var in bind.keys() {
                names.bound.insert(var.clone());
            }
            Action::Request(Box::new(RequestStep {
                citizen: citizen(names, &raw.citizen, "citizen")?,
                service: service(&raw.service)?,
                purpose: required(&raw.purpose, "purpose")?,
                attributes,
                predicates,
                expect,
                values,
                holds,
                withheld,
                bind,
            }))
        }
        "compute" => {
            let inputs = raw.inputs.unwrap_or_default();
            if inputs.is_empty() {
                return Err("`inputs` names the bound values to add up".into());
            }
            if let Some(unknown) = inputs.iter().find(|i| !names.bound.contains(*i)) {
                return Err(format!("input {unknown:?} is not bound by an earlier step"));
            }
            let bind = match raw.bind {
                None => None,
                Some(toml::Value::String(name)) => Some(name),
                Some(_) => return Err("`bind` of a compute step is one name".into()),
            };
            if let Some(name) = &bind {
                names.bound.insert(name.clone());
            }
            let expect = match raw.expect {
                None => None,
                Some(toml::Value::Float(f)) => Some(f),
                Some(toml::Value::Integer(i)) => Some(i as f64),
                Some(_) => return Err("`expect` of a compute step is a number".into()),
            };
            let (floor, cap) = (
                raw.floor.unwrap_or(f64::NEG_INFINITY),
                raw.cap.unwrap_or(f64::INFINITY),
            );
            let numbers = [raw.threshold, raw.rate, raw.floor, raw.cap, expect];
            if numbers.iter().flatten().any(|n| !n.is_finite()) || floor > cap {
                return Err("numbers must be finite and `floor` <= `cap`".into());
            }
            Action::Compute {
                inputs,
                threshold: raw.threshold.unwrap_or(0.0),
                rate: raw.rate.unwrap_or(1.0),
                floor,
                cap,
                bind,
                expect,
            }
        }
        other => return Err(format!("unknown action {other:?}")),
    };
    Ok(Step {
        name: raw.name,
        within,
        action,
    })
}

fn required(value: &Option<String>, field: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.clone()),
        _ => Err(format!("`{field}` is required")),
    }
}

fn toml_string(value: &toml::Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("`expect` is a string here, not {value}"))
}

fn bindings(bind: Option<toml::Value>) -> Result<BTreeMap<String, String>, String> {
    match bind {
        None => Ok(BTreeMap::new()),
        Some(toml::Value::Table(table)) => table
            .into_iter()
            .map(|(var, attribute)| match attribute {
                toml::Value::String(a) => Ok((var, a)),
                other => Err(format!("`bind.{var}` is an attribute name, not {other}")),
            })
            .collect(),
        Some(_) => {
            Err("`bind` maps names to attributes: { income1 = \"income.gross_monthly\" }".into())
        }
    }
}

fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    if matches!(value, toml::Value::Datetime(_)) {
        return Err("write dates as strings (\"2031-04-30\")".into());
    }
    serde_json::to_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const HEAD: &str = "name = \"t\"\noperators = [\"fi.helsinki\", \"fi.incomeregister\"]\n\
        [[citizen]]\nname = \"p\"\nid = \"fi:hetu:010180-123N\"\nhome = \"fi.helsinki\"\n";

    fn error(steps: &str) -> String {
        Scenario::parse(&format!("{HEAD}{steps}"))
            .expect_err("the scenario should be refused")
            .to_string()
    }

    #[test]
    fn built_in_scenarios_parse() {
        for (name, text) in BUILT_IN {
            let scenario = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!scenario.steps.is_empty(), "{name}");
            assert!(!scenario.registries.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_request_step_is_read_whole() {
        let scenario = Scenario::parse(&format!(
            "{HEAD}[[step]]\nname = \"ask\"\naction = \"request\"\ncitizen = \"p\"\n\
             service = \"fi.helsinki/early-education\"\npurpose = \"dpv:ServiceProvision\"\n\
             attributes = [\"income.gross_monthly\"]\nexpect = \"answered\"\nwithin = \"2s\"\n\
             values = {{ \"income.gross_monthly\" = 2100 }}\nbind = {{ i = \"income.gross_monthly\" }}\n\
             [[step]]\nname = \"fee\"\naction = \"compute\"\ninputs = [\"i\"]\nthreshold = 100\nrate = 0.5\nexpect = 1000\n"
        ))
        .unwrap();
        let Action::Request(request) = &scenario.steps[0].action else {
            panic!("not a request");
        };
        assert_eq!(scenario.steps[0].within, Duration::from_secs(2));
        assert_eq!(request.expect, Outcome::Answered);
        assert_eq!(
            request.values["income.gross_monthly"],
            serde_json::json!(2100)
        );
        assert_eq!(request.bind["i"], "income.gross_monthly");
        assert!(matches!(
            scenario.steps[1].action,
            Action::Compute { expect: Some(e), .. } if e == 1000.0
        ));
    }

    #[test]
    fn errors_name_the_step_and_the_field() {
        let cases = [
            (
                "[[step]]\nname = \"s1\"\naction = \"fly\"\n",
                "step 1 (\"s1\"): unknown action \"fly\"",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"withdraw\"\nconsent = \"nope\"\n",
                "step 1 (\"s1\"): `consent`: no earlier step saved \"nope\"",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"withdraw\"\nconsent = \"c\"\nservice = \"x/y\"\n",
                "`service` does not apply to action \"withdraw\"",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"request\"\ncitizen = \"p\"\nservice = \"fi.helsinki/e\"\n\
                 purpose = \"x\"\nattributes = [\"a\"]\nexpect = \"maybe\"\n",
                "`expect` \"maybe\" is not one of answered, partial, denied",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"request\"\ncitizen = \"q\"\nservice = \"fi.helsinki/e\"\n\
                 purpose = \"x\"\nattributes = [\"a\"]\nexpect = \"denied\"\n",
                "`citizen`: no [[citizen]] is named \"q\"",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"request\"\ncitizen = \"p\"\nservice = \"se.uhr/e\"\n\
                 purpose = \"x\"\nattributes = [\"a\"]\nexpect = \"denied\"\n",
                "its operator \"se.uhr\" is not in `operators`",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"compute\"\ninputs = [\"x\"]\n",
                "step 1 (\"s1\"): input \"x\" is not bound by an earlier step",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"request\"\ncitizen = \"p\"\nservice = \"fi.helsinki/e\"\n\
                 purpose = \"x\"\nattributes = [\"a\"]\nexpect = \"denied\"\nvalues = { a = 1 }\n",
                "`values`, `holds` and `bind` need an answer",
            ),
            (
                "[[step]]\nname = \"s1\"\naction = \"consent\"\ncitizen = \"p\"\nservice = \"fi.helsinki/e\"\n\
                 purpose = \"x\"\nread = [\"a\"]\nwithin = \"1h\"\n",
                "unknown unit",
            ),
            ("[[step]]\nname = \"s1\"\naction = \"consent\"\ncolour = 1\n", "unknown field `colour`"),
            ("[[step]\n", "line 7"),
        ];
        for (steps, expected) in cases {
            let message = error(steps);
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn whole_file_errors_are_clear() {
        assert!(Scenario::parse("name = \"x\"\noperators = []\n")
            .unwrap_err()
            .to_string()
            .contains("no [[step]]"));
        let big = "#".repeat(FILE_BYTES_MAX + 1);
        assert!(matches!(
            Scenario::parse(&big),
            Err(ParseError::TooLarge(_))
        ));
        let homeless = "name = \"x\"\noperators = []\n[[citizen]]\nname = \"p\"\nid = \"x:1\"\nhome = \"fi.helsinki\"\n[[step]]\nname = \"s\"\naction = \"withdraw\"\n";
        assert!(Scenario::parse(homeless)
            .unwrap_err()
            .to_string()
            .contains("home \"fi.helsinki\" is not in `operators`"));
        assert!(Scenario::load("no-such-scenario")
            .unwrap_err()
            .to_string()
            .contains("neither a built-in scenario (daycare, job-seeker, skills)"));
    }

    proptest::proptest! {
        /// Any text is parsed or refused with an error; the parser never panics.
        #[test]
        fn any_text_is_parsed_or_refused(text in "\\PC{0,400}") {
            let _ = Scenario::parse(&text);
        }

        /// Mutations of a real scenario never make the parser panic.
        #[test]
        fn mutated_scenarios_are_parsed_or_refused(
            cut in 0usize..4000,
            insert in "[\\[\\]=\"a-z0-9{}., \\n]{0,12}",
        ) {
            let text = BUILT_IN[0].1;
            let cut = cut.min(text.len());
            let cut = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            let mutated = format!("{}{insert}{}", &text[..cut], &text[cut..]);
            let _ = Scenario::parse(&mutated);
        }
    }
}
