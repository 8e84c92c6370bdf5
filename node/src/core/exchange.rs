//! Data exchange: a service asks for attributes of a subject for a purpose;
//! the holder checks consent per attribute, reads only what is allowed, and
//! answers with values (with provenance), yes/no answers to predicates
//! ("answer, not data"), and what it withheld and why.
//!
//! Sans-IO: [`validate`] checks a request against the catalogue, [`plan`]
//! decides per attribute with a decision function, and [`answer`] builds the
//! response from the values the caller read from its data source.

use std::collections::BTreeMap;

use crate::core::consent::index::{Decision, DenyReason};
use crate::core::consent::{Action, Attribute, ConsentId, Purpose, ServiceId, SubjectId};
use crate::core::ids::{MessageId, OperatorId};
use crate::core::trust::{ValueType, VerifiedTrustList};
use crate::limits;

/// Comparison operators of predicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `>`
    Greater,
    /// `>=`
    GreaterOrEqual,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `contains` (a list holds the operand)
    Contains,
}

impl Op {
    /// Parses an operator.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "<" => Op::Less,
            "<=" => Op::LessOrEqual,
            ">" => Op::Greater,
            ">=" => Op::GreaterOrEqual,
            "==" => Op::Equal,
            "!=" => Op::NotEqual,
            "contains" => Op::Contains,
            _ => return None,
        })
    }

    /// The operator's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Less => "<",
            Op::LessOrEqual => "<=",
            Op::Greater => ">",
            Op::GreaterOrEqual => ">=",
            Op::Equal => "==",
            Op::NotEqual => "!=",
            Op::Contains => "contains",
        }
    }
}

/// "Does the attribute satisfy `op operand`?"
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Predicate {
    /// The attribute.
    pub attribute: Attribute,
    /// The comparison.
    pub op: Op,
    /// The operand.
    pub operand: serde_json::Value,
}

/// A request for attributes of one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// Idempotency key.
    pub request_id: MessageId,
    /// Whose data.
    pub subject: SubjectId,
    /// The requesting service.
    pub service: ServiceId,
    /// Why.
    pub purpose: Purpose,
    /// Values wanted.
    pub attributes: Vec<Attribute>,
    /// Questions wanted.
    pub predicates: Vec<Predicate>,
}

/// A released value with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The attribute.
    pub attribute: Attribute,
    /// Its value.
    pub value: serde_json::Value,
    /// The consent it was released under.
    pub consent_id: ConsentId,
    /// When the source read it.
    pub retrieved_at_ms: u64,
}

/// A predicate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The question.
    pub predicate: Predicate,
    /// The answer.
    pub holds: bool,
    /// The consent it was answered under.
    pub consent_id: ConsentId,
}

/// Something not given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Withheld {
    /// The attribute.
    pub attribute: Attribute,
    /// Machine-readable code.
    pub code: String,
    /// In words.
    pub reason: String,
    /// Whether it was a predicate.
    pub predicate: bool,
}

/// The holder's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataResponse {
    /// The request answered.
    pub request_id: MessageId,
    /// The holder.
    pub source: OperatorId,
    /// Values released.
    pub values: Vec<Released>,
    /// Predicates answered.
    pub answers: Vec<Answer>,
    /// What was withheld.
    pub withheld: Vec<Withheld>,
}

/// Why a request is invalid as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Nothing asked.
    #[error("the request asks for nothing")]
    Empty,
    /// Too many attributes and predicates.
    #[error("the request asks for {got} attributes and predicates, more than the {max} allowed")]
    TooMany {
        /// Asked.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// An attribute is not in the federation's catalogue.
    #[error("attribute {0} is not in the federation's catalogue")]
    UnknownAttribute(Attribute),
    /// An attribute is asked twice.
    #[error("attribute {0} is asked for more than once")]
    Duplicate(Attribute),
    /// The service is not in the registry.
    #[error("service {0} is not in the federation's service registry")]
    UnknownService(ServiceId),
    /// The service is not registered for this purpose.
    #[error("service {service} is not registered for purpose {purpose}")]
    PurposeNotRegistered {
        /// The service.
        service: ServiceId,
        /// The purpose.
        purpose: Purpose,
    },
    /// The service does not belong to the requesting operator.
    #[error("service {service} belongs to {owner}, not to the requesting operator {sender}")]
    NotYourService {
        /// The service.
        service: ServiceId,
        /// Its operator.
        owner: OperatorId,
        /// The sender.
        sender: OperatorId,
    },
    /// A predicate's operator does not fit the attribute's type, or its operand is too large.
    #[error("predicate on {attribute}: {reason}")]
    BadPredicate {
        /// The attribute.
        attribute: Attribute,
        /// Why.
        reason: String,
    },
    /// This holder is not the catalogued source of an attribute.
    #[error("this operator is not the source of {0}")]
    NotTheSource(Attribute),
}

/// Checks a request against the catalogue and registry, as sent by `sender`
/// (the requesting operator) to `holder` (`None` on the requesting side,
/// before routing).
pub fn validate(
    request: &DataRequest,
    trust: &VerifiedTrustList,
    sender: &OperatorId,
    holder: Option<&OperatorId>,
) -> Result<(), RequestError> {
    let count = request.attributes.len() + request.predicates.len();
    if count == 0 {
        return Err(RequestError::Empty);
    }
    if count > limits::REQUEST_ATTRIBUTES_MAX {
        return Err(RequestError::TooMany {
            got: count,
            max: limits::REQUEST_ATTRIBUTES_MAX,
        });
    }
    if request.service.operator() != sender {
        return Err(RequestError::NotYourService {
            service: request.service.clone(),
            owner: request.service.operator().clone(),
            sender: sender.clone(),
        });
    }
    let service = trust
        .service(&request.service)
        .ok_or_else(|| RequestError::UnknownService(request.service.clone()))?;
    if !service.purposes.contains(&request.purpose) {
        return Err(RequestError::PurposeNotRegistered {
            service: request.service.clone(),
            purpose: request.purpose.clone(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for attribute in &request.attributes {
        if !seen.insert(attribute) {
            return Err(RequestError::Duplicate(attribute.clone()));
        }
    }
    let names = request
        .attributes
        .iter()
        .chain(request.predicates.iter().map(|p| &p.attribute));
    for attribute in names {
        let entry = trust
            .attribute(attribute)
            .ok_or_else(|| RequestError::UnknownAttribute(attribute.clone()))?;
        if let Some(holder) = holder {
            if !entry.sources.contains(holder) {
                return Err(RequestError::NotTheSource(attribute.clone()));
            }
        }
    }
    for predicate in &request.predicates {
        let value_type = trust
            .attribute(&predicate.attribute)
            .map(|a| a.value_type)
            .ok_or_else(|| RequestError::UnknownAttribute(predicate.attribute.clone()))?;
        check_predicate(predicate, value_type)?;
    }
    Ok(())
}

fn check_predicate(predicate: &Predicate, value_type: ValueType) -> Result<(), RequestError> {
    let bad = |reason: &str| RequestError::BadPredicate {
        attribute: predicate.attribute.clone(),
        reason: reason.to_owned(),
    };
    if predicate.operand.to_string().len() > limits::PREDICATE_OPERAND_BYTES_MAX {
        return Err(bad("operand is too large"));
    }
    let operand = &predicate.operand;
    let fits = match (value_type, predicate.op) {
        (ValueType::StringList, Op::Contains) => operand.is_string(),
        (ValueType::StringList, _) | (_, Op::Contains) => false,
        (ValueType::Integer | ValueType::Number, _) => operand.is_number(),
        (ValueType::Date, _) => operand.as_str().is_some_and(is_date),
        (ValueType::String, Op::Equal | Op::NotEqual) => operand.is_string(),
        (ValueType::Boolean, Op::Equal | Op::NotEqual) => operand.is_boolean(),
        (ValueType::String | ValueType::Boolean, _) => false,
    };
    if fits {
        Ok(())
    } else {
        Err(bad(&format!(
            "operator {} with operand {operand} does not fit type {}",
            predicate.op.as_str(),
            value_type.as_str()
        )))
    }
}

fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Evaluates a predicate on a value; `None` if the value has the wrong type.
pub fn evaluate(predicate: &Predicate, value: &serde_json::Value) -> Option<bool> {
    use std::cmp::Ordering;
    let operand = &predicate.operand;
    let ordering = match (value, operand) {
        (serde_json::Value::Number(a), serde_json::Value::Number(b)) => {
            a.as_f64()?.partial_cmp(&b.as_f64()?)
        }
        // ISO dates compare correctly as text.
        (serde_json::Value::String(a), serde_json::Value::String(b)) => Some(a.cmp(b)),
        (serde_json::Value::Bool(a), serde_json::Value::Bool(b)) => Some(a.cmp(b)),
        (serde_json::Value::Array(items), _) if predicate.op == Op::Contains => {
            return Some(items.contains(operand));
        }
        _ => None,
    }?;
    Some(match predicate.op {
        Op::Less => ordering == Ordering::Less,
        Op::LessOrEqual => ordering != Ordering::Greater,
        Op::Greater => ordering == Ordering::Greater,
        Op::GreaterOrEqual => ordering != Ordering::Less,
        Op::Equal => ordering == Ordering::Equal,
        Op::NotEqual => ordering != Ordering::Equal,
        Op::Contains => return None,
    })
}

/// What the holder will read and what it withholds, decided per attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Values to read and release, with the consent that allows each.
    pub read: Vec<(Attribute, ConsentId)>,
    /// Predicates to evaluate (by index in the request), with their consent.
    pub verify: Vec<(usize, ConsentId)>,
    /// Refused outright.
    pub withheld: Vec<Withheld>,
}

impl Plan {
    /// Every attribute the source must read (values and predicate operands), once each.
    pub fn attributes_to_read(&self, request: &DataRequest) -> Vec<Attribute> {
        let mut names: Vec<Attribute> = self.read.iter().map(|(a, _)| a.clone()).collect();
        for (index, _) in &self.verify {
            if let Some(p) = request.predicates.get(*index) {
                if !names.contains(&p.attribute) {
                    names.push(p.attribute.clone());
                }
            }
        }
        names
    }
}

fn withheld(attribute: &Attribute, reason: &DenyReason, predicate: bool) -> Withheld {
    Withheld {
        attribute: attribute.clone(),
        code: reason.code().to_owned(),
        reason: reason.to_string(),
        predicate,
    }
}

/// Decides every attribute and predicate of a request with `decide(attribute, action)`.
pub fn plan(request: &DataRequest, mut decide: impl FnMut(&Attribute, Action) -> Decision) -> Plan {
    let mut out = Plan {
        read: Vec::new(),
        verify: Vec::new(),
        withheld: Vec::new(),
    };
    for attribute in &request.attributes {
        match decide(attribute, Action::Read) {
            Decision::Allow { consent_id } => out.read.push((attribute.clone(), consent_id)),
            Decision::Deny(reason) => out.withheld.push(withheld(attribute, &reason, false)),
        }
    }
    for (index, predicate) in request.predicates.iter().enumerate() {
        match decide(&predicate.attribute, Action::Verify) {
            Decision::Allow { consent_id } => out.verify.push((index, consent_id)),
            Decision::Deny(reason) => {
                out.withheld
                    .push(withheld(&predicate.attribute, &reason, true));
            }
        }
    }
    out
}

/// Builds the response from the plan and the values the source returned.
/// Values larger than the limit or of the wrong type are withheld, never sent.
pub fn answer(
    request: &DataRequest,
    plan: Plan,
    source: &OperatorId,
    values: &BTreeMap<Attribute, serde_json::Value>,
    subject_known: bool,
    now_ms: u64,
) -> DataResponse {
    let mut response = DataResponse {
        request_id: request.request_id,
        source: source.clone(),
        values: Vec::new(),
        answers: Vec::new(),
        withheld: plan.withheld,
    };
    let not_found = |attribute: &Attribute, predicate: bool| Withheld {
        attribute: attribute.clone(),
        code: "not-found".into(),
        reason: if subject_known {
            "the source holds no value of this attribute for the subject".into()
        } else {
            "the source has no record of this subject".into()
        },
        predicate,
    };
    for (attribute, consent_id) in plan.read {
        match values.get(&attribute) {
            Some(value) if value.to_string().len() <= limits::ATTRIBUTE_VALUE_BYTES_MAX => {
                response.values.push(Released {
                    attribute,
                    value: value.clone(),
                    consent_id,
                    retrieved_at_ms: now_ms,
                });
            }
            Some(_) => response.withheld.push(Withheld {
                attribute,
                code: "too-large".into(),
                reason: "the stored value exceeds the size limit".into(),
                predicate: false,
            }),
            None => response.withheld.push(not_found(&attribute, false)),
        }
    }
    for (index, consent_id) in plan.verify {
        let Some(predicate) = request.predicates.get(index) else {
            continue;
        };
        match values
            .get(&predicate.attribute)
            .map(|v| evaluate(predicate, v))
        {
            Some(Some(holds)) => response.answers.push(Answer {
                predicate: predicate.clone(),
                holds,
                consent_id,
            }),
            Some(None) => response.withheld.push(Withheld {
                attribute: predicate.attribute.clone(),
                code: "type-mismatch".into(),
                reason: "the stored value does not fit the predicate's type".into(),
                predicate: true,
            }),
            None => response
                .withheld
                .push(not_found(&predicate.attribute, true)),
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn predicate(attribute: &str, op: &str, operand: serde_json::Value) -> Predicate {
        Predicate {
            attribute: Attribute::new(attribute).unwrap(),
            op: Op::parse(op).unwrap(),
            operand,
        }
    }

    fn check(value: serde_json::Value, p: Predicate, expected: Option<bool>) {
        assert_eq!(evaluate(&p, &value), expected, "{value} {p:?}");
    }

    #[test]
    fn predicates_evaluate_by_type() {
        check(
            json!(3150),
            predicate("income.gross_monthly", "<=", json!(4000)),
            Some(true),
        );
        check(
            json!(4000),
            predicate("income.gross_monthly", "<", json!(4000)),
            Some(false),
        );
        check(
            json!(4000.5),
            predicate("income.gross_monthly", ">", json!(4000)),
            Some(true),
        );
        check(
            json!(["B", "C1"]),
            predicate("licence.driving.classes", "contains", json!("B")),
            Some(true),
        );
        check(
            json!(["C1"]),
            predicate("licence.driving.classes", "contains", json!("B")),
            Some(false),
        );
        check(
            json!("2008-05-01"),
            predicate("person.birth_date", "<=", json!("2008-11-23")),
            Some(true),
        );
        check(
            json!(true),
            predicate("record.clean", "==", json!(true)),
            Some(true),
        );
        check(
            json!("x"),
            predicate("income.gross_monthly", "<=", json!(4000)),
            None,
        );
    }

    #[test]
    fn predicate_types_are_checked_against_the_catalogue() {
        let ok = |p: Predicate, t| check_predicate(&p, t).is_ok();
        assert!(ok(predicate("a", "<=", json!(1)), ValueType::Integer));
        assert!(!ok(predicate("a", "<=", json!("1")), ValueType::Integer));
        assert!(ok(
            predicate("a", "contains", json!("B")),
            ValueType::StringList
        ));
        assert!(!ok(predicate("a", "<", json!("B")), ValueType::StringList));
        assert!(ok(
            predicate("a", ">=", json!("2000-01-01")),
            ValueType::Date
        ));
        assert!(!ok(
            predicate("a", ">=", json!("01/01/2000")),
            ValueType::Date
        ));
        assert!(!ok(predicate("a", "<", json!("x")), ValueType::String));
        assert!(!ok(
            predicate("a", "==", json!("x".repeat(300))),
            ValueType::String
        ));
    }
}
