//! The NGSI-LD adapter against a real HTTP server holding NGSI-LD entities.
//!
//! [`Broker`] is a small context broker started on `127.0.0.1:0` inside each
//! test. It serves `GET /ngsi-ld/v1/entities` as ETSI GS CIM 009 describes the
//! Query Entities operation: `type`, `id`, `attrs` (a filter as well as a
//! projection), `q` (`attr==value` and `attr!=value` terms joined by `;`, with
//! string, number and boolean literals), `limit`/`offset` pagination with
//! `count=true` → `NGSILD-Results-Count` and a `Link: <...>; rel="next"`
//! header, `options=keyValues`, and `Accept` negotiation between
//! `application/ld+json` (context in the body) and `application/json` (context
//! in a `Link` header). It holds the unmodified Smart Data Models examples and
//! our own entities from `tests/fixtures/ngsi-ld/`, and records every query
//! string it receives.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LINK};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mim4_node::core::consent::{Attribute, SubjectId};
use mim4_node::limits::ENTITIES_PER_SUBJECT_MAX;
use mim4_node::sources::ngsi_ld::{
    Config, Mapping, MediaType, Multiplicity, NgsiLdSource, Representation, SubjectKey,
};
use mim4_node::sources::registry::{LoadReport, Registry};
use mim4_node::sources::{DataSource, SourceError, Values};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ngsi-ld");
const FIXTURE_FILES: [&str; 3] = [
    "person-example-normalized.jsonld",
    "organization-example-normalized.jsonld",
    "subjects.jsonld",
];
const CORE_CONTEXT: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld";
/// The broker's page size when the client gives no `limit`, and its largest one.
const LIMIT_DEFAULT: usize = 20;
const LIMIT_MAX: usize = 1000;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// Every fixture entity: single-entity files and arrays alike.
fn fixture_entities() -> Vec<Value> {
    let mut entities = Vec::new();
    for name in FIXTURE_FILES {
        match serde_json::from_str(&fixture(name)).unwrap() {
            Value::Array(many) => entities.extend(many),
            one => entities.push(one),
        }
    }
    entities
}

// ---------------------------------------------------------------------------
// The test broker.

/// How the test server answers.
#[derive(Debug, Clone)]
enum Behaviour {
    /// A CIM 009 Query Entities implementation over these entities.
    /// `count_header` off ignores `count=true`; `page_cap` caps `limit` below
    /// what the client asked (the maximum is the broker's choice), so that
    /// only the `Link` header tells that more pages follow.
    Broker {
        entities: Arc<Vec<Value>>,
        count_header: bool,
        page_cap: Option<usize>,
    },
    /// The same answer to every request.
    Fixed {
        status: StatusCode,
        content_type: &'static str,
        body: Bytes,
    },
    /// Reads the request head and answers with these bytes as they are, then
    /// closes: chunked bodies, broken HTTP.
    Raw(Bytes),
    /// Accepts connections and never answers.
    Silent,
}

/// A running test server; dropping it stops the server and its connections.
#[derive(Debug)]
struct Broker {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    _tasks: JoinSet<()>,
}

impl Broker {
    async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, behaviour, Arc::clone(&queries)));
        Self {
            addr,
            queries,
            _tasks: tasks,
        }
    }

    async fn with_fixtures() -> Self {
        Self::start(Behaviour::Broker {
            entities: Arc::new(fixture_entities()),
            count_header: true,
            page_cap: None,
        })
        .await
    }

    async fn fixed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self::start(Behaviour::Fixed {
            status,
            content_type,
            body: body.into(),
        })
        .await
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The decoded parameters of every query received so far.
    fn queries(&self) -> Vec<BTreeMap<String, String>> {
        let raw = self.queries.lock().unwrap().clone();
        raw.iter().map(|q| parameters(q).unwrap()).collect()
    }

    fn raw_queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

/// Accepts connections until the server is dropped; connections live in a
/// `JoinSet` owned by this task, so they end with it.
async fn accept(listener: TcpListener, behaviour: Behaviour, queries: Arc<Mutex<Vec<String>>>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let behaviour = behaviour.clone();
        let queries = Arc::clone(&queries);
        connections.spawn(async move {
            match &behaviour {
                Behaviour::Silent => {
                    let _held_open = stream;
                    std::future::pending::<()>().await;
                    return;
                }
                Behaviour::Raw(answer) => {
                    answer_raw(stream, answer, &queries).await;
                    return;
                }
                Behaviour::Broker { .. } | Behaviour::Fixed { .. } => {}
            }
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&behaviour, &queries, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads one request head (bounded), records its query, writes `answer` and closes.
async fn answer_raw(
    mut stream: tokio::net::TcpStream,
    answer: &[u8],
    queries: &Mutex<Vec<String>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    queries.lock().unwrap().push(query.to_owned());
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}

fn problem(status: StatusCode, kind: &str, title: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "type": format!("https://uri.etsi.org/ngsi-ld/errors/{kind}"),
        "title": title,
    });
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn respond(
    behaviour: &Behaviour,
    queries: &Mutex<Vec<String>>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("").to_owned();
    queries.lock().unwrap().push(query.clone());
    match behaviour {
        Behaviour::Fixed {
            status,
            content_type,
            body,
        } => Response::builder()
            .status(*status)
            .header(CONTENT_TYPE, *content_type)
            .body(Full::new(body.clone()))
            .unwrap(),
        Behaviour::Silent | Behaviour::Raw(_) => unreachable!("served without hyper"),
        Behaviour::Broker {
            entities,
            count_header,
            page_cap,
        } => {
            if request.uri().path() != "/ngsi-ld/v1/entities" {
                return problem(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    "No such resource",
                );
            }
            let accept = request
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("*/*");
            let ld = accept.contains("application/ld+json");
            if !ld && !accept.contains("application/json") && !accept.contains("*/*") {
                return problem(
                    StatusCode::NOT_ACCEPTABLE,
                    "NotAcceptable",
                    "Not acceptable",
                );
            }
            match query_entities(entities, &query, ld, *count_header, *page_cap) {
                Ok(response) => response,
                Err(title) => problem(StatusCode::BAD_REQUEST, "BadRequestData", &title),
            }
        }
    }
}

/// Splits and percent-decodes a query string (RFC 3986: `+` is not a space).
fn parameters(query: &str) -> Result<BTreeMap<String, String>, String> {
    let mut parameters = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("parameter {key} is not UTF-8"))?;
        if parameters
            .insert(key.to_owned(), value.into_owned())
            .is_some()
        {
            return Err(format!("parameter {key} given twice"));
        }
    }
    Ok(parameters)
}

/// Splits an `attrs` or `id` list; each element was percent-encoded on its own.
fn list(value: Option<&String>) -> Option<BTreeSet<String>> {
    value.map(|v| v.split(',').map(str::to_owned).collect())
}

/// The value of a normalized attribute, as `q` compares it (the default instance of a multi-attribute).
fn normalized_value(attribute: &Value) -> Option<&Value> {
    let instance = match attribute {
        Value::Array(instances) => instances.iter().find(|i| i.get("datasetId").is_none())?,
        other => other,
    };
    let member = match instance.get("type")?.as_str()? {
        "Relationship" => "object",
        "LanguageProperty" => "languageMap",
        "ListProperty" => "valueList",
        _ => "value",
    };
    instance.get(member)
}

/// One `q` term: attribute, whether it is `==` (else `!=`), and the literal.
type Term = (String, bool, Value);

/// Parses the supported part of the CIM 009 query language.
fn parse_q(q: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    // `;` inside a quoted string does not separate terms.
    let mut rest = q;
    while !rest.is_empty() {
        let (term, tail) = split_term(rest);
        rest = tail;
        let (attribute, equal, literal) = if let Some((a, l)) = term.split_once("==") {
            (a, true, l)
        } else if let Some((a, l)) = term.split_once("!=") {
            (a, false, l)
        } else {
            return Err(format!("unsupported q term {term:?}"));
        };
        if attribute.is_empty() || attribute.contains(['|', '(', ')', '<', '>', '~']) {
            return Err(format!("unsupported q term {term:?}"));
        }
        let literal = if let Some(s) = literal.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
            Value::String(s.to_owned())
        } else if literal == "true" || literal == "false" {
            Value::Bool(literal == "true")
        } else {
            let number: f64 = literal
                .parse()
                .map_err(|_| format!("unsupported q literal {literal:?}"))?;
            json!(number)
        };
        terms.push((attribute.to_owned(), equal, literal));
    }
    Ok(terms)
}

fn split_term(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return (&text[..i], &text[i + 1..]),
            _ => {}
        }
    }
    (text, "")
}

fn literal_matches(value: &Value, literal: &Value) -> bool {
    match (value, literal) {
        // A list matches if any element does (CIM 009 clause 4.9).
        (Value::Array(items), _) => items.iter().any(|i| literal_matches(i, literal)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

fn entity_matches_q(entity: &Value, terms: &[Term]) -> bool {
    terms.iter().all(|(attribute, equal, literal)| {
        match entity.get(attribute).and_then(normalized_value) {
            // A term on a missing attribute matches nothing, not even `!=`.
            None => false,
            Some(value) => literal_matches(value, literal) == *equal,
        }
    })
}

fn entity_types(entity: &Value) -> Vec<&str> {
    match entity.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_member(name: &str) -> bool {
    matches!(name, "id" | "type" | "@context")
}

fn query_entities(
    entities: &[Value],
    query: &str,
    ld: bool,
    count_header: bool,
    page_cap: Option<usize>,
) -> Result<Response<Full<Bytes>>, String> {
    let parameters = parameters(query)?;
    let types = list(parameters.get("type"));
    let ids = list(parameters.get("id"));
    let attrs = list(parameters.get("attrs"));
    let q = parameters.get("q").map(|q| parse_q(q)).transpose()?;
    if types.is_none() && attrs.is_none() && q.is_none() && ids.is_none() {
        return Err("at least one of type, attrs, q or id is required".into());
    }
    let number = |name: &str, default: usize| -> Result<usize, String> {
        parameters.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("{name} is not a number"))
        })
    };
    let limit = number("limit", LIMIT_DEFAULT)?;
    let offset = number("offset", 0)?;
    if limit > LIMIT_MAX {
        return Err(format!("limit above {LIMIT_MAX}"));
    }
    let limit = page_cap.map_or(limit, |cap| limit.min(cap));
    let count = parameters.get("count").is_some_and(|c| c == "true");
    let key_values = parameters
        .get("options")
        .is_some_and(|o| o.split(',').any(|o| o == "keyValues"))
        || parameters.get("format").is_some_and(|f| f == "simplified");

    let matched: Vec<&Value> = entities
        .iter()
        .filter(|e| {
            types
                .as_ref()
                .is_none_or(|ts| entity_types(e).iter().any(|t| ts.contains(*t)))
        })
        .filter(|e| {
            ids.as_ref().is_none_or(|ids| {
                e.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| ids.contains(id))
            })
        })
        .filter(|e| q.as_ref().is_none_or(|terms| entity_matches_q(e, terms)))
        // `attrs` also selects: only entities with at least one of them.
        .filter(|e| {
            attrs.as_ref().is_none_or(|attrs| {
                e.as_object()
                    .is_some_and(|o| o.keys().any(|k| !is_member(k) && attrs.contains(k)))
            })
        })
        .collect();
    let total = matched.len();
    let page: Vec<Value> = matched
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|entity| {
            let mut out = serde_json::Map::new();
            for (name, value) in entity.as_object().into_iter().flatten() {
                let wanted = match name.as_str() {
                    "id" | "type" => true,
                    "@context" => ld,
                    other => attrs.as_ref().is_none_or(|a| a.contains(other)),
                };
                if !wanted {
                    continue;
                }
                let value = if key_values && !is_member(name) {
                    normalized_value(value).cloned().unwrap_or(Value::Null)
                } else {
                    value.clone()
                };
                out.insert(name.clone(), value);
            }
            Value::Object(out)
        })
        .collect();

    let mut response = Response::builder().status(StatusCode::OK).header(
        CONTENT_TYPE,
        if ld {
            "application/ld+json"
        } else {
            "application/json"
        },
    );
    if !ld {
        response = response.header(
            LINK,
            format!(
                "<{CORE_CONTEXT}>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\""
            ),
        );
    }
    if count && count_header {
        response = response.header("NGSILD-Results-Count", total.to_string());
    }
    if offset + limit < total {
        let next_query: Vec<String> = query
            .split('&')
            .filter(|p| !p.starts_with("offset=") && !p.starts_with("limit="))
            .map(str::to_owned)
            .chain([
                format!("offset={}", offset + limit),
                format!("limit={limit}"),
            ])
            .collect();
        let next = format!(
            "</ngsi-ld/v1/entities?{}>; rel=\"next\"; type=\"application/ld+json\"",
            next_query.join("&")
        );
        response = response.header(LINK, HeaderValue::from_str(&next).unwrap());
    }
    Ok(response
        .body(Full::new(Bytes::from(Value::Array(page).to_string())))
        .unwrap())
}

// ---------------------------------------------------------------------------
// Helpers for the adapter.

fn attribute(name: &str) -> Attribute {
    Attribute::new(name).unwrap()
}

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id).unwrap()
}

fn person_mapping() -> Mapping {
    Mapping::new("Person", SubjectKey::Attribute("identifier".into()))
        .unwrap()
        .with_attribute(attribute("person.given_name"), "givenName")
        .unwrap()
        .with_attribute(attribute("person.family_name"), "familyName")
        .unwrap()
        .with_attribute(attribute("person.address"), "address")
        .unwrap()
        .with_attribute(attribute("person.email"), "email")
        .unwrap()
        .with_attribute(attribute("person.employer"), "worksFor")
        .unwrap()
}

fn credential_mapping() -> Mapping {
    Mapping::new(
        "EducationalOccupationalCredential",
        SubjectKey::Attribute("holder".into()),
    )
    .unwrap()
    .with_attribute(attribute("education.diplomas"), "name")
    .unwrap()
    .with_attribute(attribute("education.credits"), "credits")
    .unwrap()
    .with_multiplicity(Multiplicity::Many)
}

fn source(base_url: String, mapping: Mapping) -> NgsiLdSource {
    NgsiLdSource::new(Config::new(base_url, mapping)).unwrap()
}

async fn read(
    source: &dyn DataSource,
    subject_id: &str,
    names: &[&str],
) -> Result<Values, SourceError> {
    let attributes: Vec<Attribute> = names.iter().map(|n| attribute(n)).collect();
    source.read(&subject(subject_id), &attributes).await
}

fn values(pairs: &[(&str, Value)]) -> Values {
    pairs
        .iter()
        .map(|(name, value)| (attribute(name), value.clone()))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn attrs_of(query: &BTreeMap<String, String>) -> BTreeSet<String> {
    query["attrs"].split(',').map(str::to_owned).collect()
}

fn aino() -> Values {
    values(&[
        ("person.given_name", json!("Aino")),
        ("person.family_name", json!("Virtanen")),
        (
            "person.employer",
            json!("urn:ngsi-ld:Organization:34f91f29-aadd-45f7-ab9e-4fca2baffdd7"),
        ),
    ])
}

// ---------------------------------------------------------------------------
// Tests.

/// A subject's mapped attributes are read from the broker by an encoded `q` on its identifier.
#[tokio::test]
async fn reads_mapped_attributes_of_a_subject() {
    let broker = Broker::with_fixtures().await;
    let source = source(broker.base_url(), person_mapping());
    let got = read(
        &source,
        "fi:hetu:010180-1234",
        &[
            "person.given_name",
            "person.family_name",
            "person.employer",
            "income.gross_monthly",
        ],
    )
    .await
    .unwrap();
    assert_eq!(got, aino());

    let queries = broker.queries();
    assert_eq!(queries.len(), 1);
    let query = &queries[0];
    assert_eq!(query["type"], "Person");
    assert_eq!(query["q"], r#"identifier=="fi:hetu:010180-1234""#);
    assert_eq!(
        (query["limit"].as_str(), query["offset"].as_str()),
        ("100", "0")
    );
    let raw = &broker.raw_queries()[0];
    assert!(
        raw.contains("q=identifier%3D%3D%22fi%3Ahetu%3A010180-1234%22"),
        "q must be percent-encoded: {raw}"
    );
    assert!(source.describe().starts_with("ngsi-ld http://127.0.0.1:"));
}

/// `attrs` lists exactly the NGSI-LD attributes behind the requested catalogue attributes,
/// plus the identifier that selects the subject (data minimisation).
#[tokio::test]
async fn asks_only_for_the_needed_attributes() {
    let broker = Broker::with_fixtures().await;
    let source = source(broker.base_url(), person_mapping());
    let cases: [(&[&str], &[&str]); 4] = [
        (&["person.given_name"], &["givenName", "identifier"]),
        (
            &["person.address", "person.email", "person.address"],
            &["address", "email", "identifier"],
        ),
        // Unmapped attributes are not asked for at all.
        (
            &["income.gross_monthly", "person.family_name"],
            &["familyName", "identifier"],
        ),
        // Nothing mapped: the identifier alone still tells whether the subject exists.
        (&["income.gross_monthly"], &["identifier"]),
    ];
    for (requested, _) in cases {
        read(&source, "fi:hetu:010180-1234", requested)
            .await
            .unwrap();
    }
    let queries = broker.queries();
    assert_eq!(queries.len(), cases.len());
    for ((requested, expected), query) in cases.iter().zip(&queries) {
        assert_eq!(attrs_of(query), set(expected), "for {requested:?}");
    }
    assert_eq!(
        read(&source, "fi:hetu:010180-1234", &["person.email"])
            .await
            .unwrap(),
        values(&[("person.email", json!("aino.virtanen@example.org"))])
    );
    assert_eq!(
        read(&source, "fi:hetu:010180-1234", &["income.gross_monthly"]).await,
        Ok(Values::new())
    );
}

/// keyValues and `application/json` give the same values as normalized `application/ld+json`.
#[tokio::test]
async fn key_values_and_plain_json() {
    let broker = Broker::with_fixtures().await;
    let mut config = Config::new(broker.base_url(), person_mapping());
    config.representation = Representation::KeyValues;
    config.media_type = MediaType::Json;
    let source = NgsiLdSource::new(config).unwrap();
    let got = read(
        &source,
        "fi:hetu:010180-1234",
        &["person.given_name", "person.family_name", "person.employer"],
    )
    .await
    .unwrap();
    assert_eq!(got, aino());
    assert_eq!(broker.queries()[0]["options"], "keyValues");
}

/// Unmodified Smart Data Models examples are read by entity id (`IdPrefix`), quirks included.
#[tokio::test]
async fn reads_an_unmodified_smart_data_models_example() {
    let broker = Broker::with_fixtures().await;
    let mapping = Mapping::new(
        "Person",
        SubjectKey::IdPrefix("urn:ngsi-ld:dataModel:id:".into()),
    )
    .unwrap()
    .with_attribute(attribute("person.family_name"), "familyName")
    .unwrap()
    .with_attribute(attribute("person.location"), "location")
    .unwrap()
    .with_attribute(attribute("person.created"), "dateCreated")
    .unwrap();
    let source = source(broker.base_url(), mapping);
    let got = read(
        &source,
        "UZHW:27495447",
        &["person.family_name", "person.location", "person.created"],
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        values(&[
            ("person.family_name", json!("Ahle")),
            (
                "person.location",
                json!({"type": "Point", "coordinates": [52.52, 13.4050]})
            ),
            (
                "person.created",
                json!({"@type": "date-time", "@value": "2022-05-07T06:43:37Z"})
            ),
        ])
    );
    let query = &broker.queries()[0];
    assert_eq!(query["id"], "urn:ngsi-ld:dataModel:id:UZHW:27495447");
    assert_eq!(
        attrs_of(query),
        set(&["dateCreated", "familyName", "location"])
    );
}

/// Pagination is followed across pages, by `NGSILD-Results-Count` or by `Link: rel="next"` alone.
#[tokio::test]
async fn follows_pagination() {
    // (count header, broker's page cap, client's page size)
    for (count_header, page_cap, page_size) in [(true, None, 1), (false, Some(1), 100)] {
        let broker = Broker::start(Behaviour::Broker {
            entities: Arc::new(fixture_entities()),
            count_header,
            page_cap,
        })
        .await;
        let mut config = Config::new(broker.base_url(), credential_mapping());
        config.page_size = page_size;
        let source = NgsiLdSource::new(config).unwrap();
        let got = read(
            &source,
            "se:pnr:19800101-1234",
            &["education.diplomas", "education.credits"],
        )
        .await
        .unwrap();
        // In entity id order (se-0001, -0002, -0003), not the broker's order.
        assert_eq!(
            got,
            values(&[
                (
                    "education.diplomas",
                    json!([
                        "Gymnasieexamen",
                        "Kandidatexamen i datavetenskap",
                        "Masterexamen i datavetenskap"
                    ])
                ),
                ("education.credits", json!([180, 120])),
            ]),
            "count header {count_header}"
        );
        let offsets: Vec<String> = broker
            .queries()
            .iter()
            .map(|q| q["offset"].clone())
            .collect();
        assert_eq!(offsets, ["0", "1", "2"], "count header {count_header}");
        let limit = page_size.to_string();
        assert!(broker
            .queries()
            .iter()
            .all(|q| q["limit"] == limit && q["count"] == "true"));
    }
}

/// A subject may match up to [`ENTITIES_PER_SUBJECT_MAX`] entities (across
/// pages): the read at the limit returns all of them, one more is
/// `TooManyEntities`, never a crash or a partial answer.
#[tokio::test]
async fn entities_per_subject_are_bounded() {
    for (count, want_ok) in [
        (ENTITIES_PER_SUBJECT_MAX, true),
        (ENTITIES_PER_SUBJECT_MAX + 1, false),
    ] {
        let entities: Vec<Value> = (0..count)
            .map(|i| {
                json!({
                    "id": format!("urn:ngsi-ld:EducationalOccupationalCredential:{i:05}"),
                    "type": "EducationalOccupationalCredential",
                    "holder": {"type": "Property", "value": "se:pnr:1"},
                    "credits": {"type": "Property", "value": 1},
                })
            })
            .collect();
        let broker = Broker::start(Behaviour::Broker {
            entities: Arc::new(entities),
            count_header: true,
            page_cap: None,
        })
        .await;
        let mut config = Config::new(broker.base_url(), credential_mapping());
        config.page_size = 400;
        let source = NgsiLdSource::new(config).unwrap();
        let got = read(&source, "se:pnr:1", &["education.credits"]).await;
        if want_ok {
            assert_eq!(
                got.unwrap(),
                values(&[("education.credits", json!(vec![1; count]))])
            );
        } else {
            assert_eq!(
                got,
                Err(SourceError::TooManyEntities {
                    max: ENTITIES_PER_SUBJECT_MAX
                })
            );
        }
    }
}

/// A subject the broker has no entity for is `UnknownSubject`, whether the answer is `[]` or 404.
#[tokio::test]
async fn unknown_subject() {
    let broker = Broker::with_fixtures().await;
    let source = source(broker.base_url(), person_mapping());
    assert_eq!(
        read(&source, "fi:hetu:999999-9999", &["person.given_name"]).await,
        Err(SourceError::UnknownSubject)
    );
    // A subject known to another register of the same broker is still unknown here.
    let credentials = self::source(broker.base_url(), credential_mapping());
    assert_eq!(
        read(&credentials, "fi:hetu:020280-2345", &["education.diplomas"]).await,
        Err(SourceError::UnknownSubject)
    );
    let not_found = Broker::fixed(
        StatusCode::NOT_FOUND,
        "application/json",
        r#"{"type": "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound", "title": "Not found"}"#,
    )
    .await;
    let source = self::source(not_found.base_url(), person_mapping());
    assert_eq!(
        read(&source, "fi:hetu:010180-1234", &["person.given_name"]).await,
        Err(SourceError::UnknownSubject)
    );
}

/// A broker that is down or never answers is `Unavailable` within the configured timeout, not a hang.
#[tokio::test]
async fn server_down_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let down = source(format!("http://{addr}"), person_mapping());
    let started = Instant::now();
    let got = read(&down, "fi:hetu:010180-1234", &["person.given_name"]).await;
    assert!(matches!(got, Err(SourceError::Unavailable(_))), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let silent = Broker::start(Behaviour::Silent).await;
    let mut config = Config::new(silent.base_url(), person_mapping());
    config.timeout = Duration::from_millis(300);
    let hanging = NgsiLdSource::new(config).unwrap();
    let started = Instant::now();
    let got = read(&hanging, "fi:hetu:010180-1234", &["person.given_name"]).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&got, Err(SourceError::Unavailable(reason)) if reason.contains("within 300 ms")),
        "{got:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    let failing = Broker::fixed(
        StatusCode::INTERNAL_SERVER_ERROR,
        "application/json",
        r#"{"type": "https://uri.etsi.org/ngsi-ld/errors/InternalError", "title": "Database down"}"#,
    )
    .await;
    let got = read(
        &source(failing.base_url(), person_mapping()),
        "fi:hetu:010180-1234",
        &["person.given_name"],
    )
    .await;
    assert!(
        matches!(&got, Err(SourceError::Unavailable(reason)) if reason.contains("500") && reason.contains("Database down")),
        "{got:?}"
    );
}

/// Garbage, oversized, non-JSON and wrong-subject answers are `Malformed`.
#[tokio::test]
async fn bad_answers_are_malformed() {
    let oversized = format!(
        "[{}]",
        vec![r#"{"id": "urn:x", "type": "Person"}"#; 200_000].join(",")
    );
    assert!(oversized.len() > mim4_node::sources::ngsi_ld::RESPONSE_BYTES_MAX);
    let aino = fixture_entities()
        .into_iter()
        .find(|e| e["id"] == "urn:ngsi-ld:Person:fi-hetu-010180-1234")
        .unwrap();
    let two_ainos = json!([aino.clone(), {"id": "urn:other", "type": "Person", "identifier": aino["identifier"].clone()}]);
    let cases: Vec<(&str, &'static str, String, &str)> = vec![
        ("garbage", "application/json", "[{not json".into(), "not JSON"),
        ("oversized", "application/ld+json", oversized, "larger than"),
        ("an object", "application/json", "{}".into(), "not a JSON array"),
        ("html", "text/html", "<html></html>".into(), "not JSON"),
        ("no id", "application/json", r#"[{"type": "Person"}]"#.into(), "no string \"id\""),
        (
            "another type",
            "application/json",
            r#"[{"id": "urn:x", "type": "Organization"}]"#.into(),
            "not of type \"Person\"",
        ),
        // A broker that ignored `q` must not leak another person's values.
        (
            "another subject",
            "application/json",
            fixture_entities()
                .into_iter()
                .find(|e| e["id"] == "urn:ngsi-ld:Person:se-pnr-19800101-1234")
                .map(|e| Value::Array(vec![e]).to_string())
                .unwrap(),
            "belongs to another subject",
        ),
        ("two entities", "application/json", two_ainos.to_string(), "2 entities match one subject"),
        (
            "bad attribute",
            "application/json",
            r#"[{"id": "urn:x", "type": "Person", "identifier": {"type": "Property", "value": "fi:hetu:010180-1234"}, "givenName": {"type": "Property"}}]"#.into(),
            "without \"value\"",
        ),
    ];
    for (name, content_type, body, expected) in cases {
        let broker = Broker::fixed(StatusCode::OK, content_type, body).await;
        let got = read(
            &source(broker.base_url(), person_mapping()),
            "fi:hetu:010180-1234",
            &["person.given_name"],
        )
        .await;
        assert!(
            matches!(&got, Err(SourceError::Malformed(reason)) if reason.contains(expected)),
            "{name}: {got:?}"
        );
    }

    // Without a Content-Length, the body is cut off at the bound while it streams in.
    let mut chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let chunk = vec![b' '; 1024 * 1024];
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let broker = Broker::start(Behaviour::Raw(chunked.into())).await;
    let got = read(
        &source(broker.base_url(), person_mapping()),
        "fi:hetu:010180-1234",
        &["person.given_name"],
    )
    .await;
    assert!(
        matches!(&got, Err(SourceError::Malformed(reason)) if reason.contains("larger than")),
        "{got:?}"
    );
}

/// Broken HTTP (not HTTP at all, or a body cut short) is `Unavailable`: the broker failed, the data may be fine.
#[tokio::test]
async fn broken_http_is_unavailable() {
    let cut_short =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{";
    for answer in [&b"SSH-2.0-OpenSSH_9.6\r\n"[..], &cut_short[..]] {
        let broker = Broker::start(Behaviour::Raw(Bytes::from_static(answer))).await;
        let got = read(
            &source(broker.base_url(), person_mapping()),
            "fi:hetu:010180-1234",
            &["person.given_name"],
        )
        .await;
        assert!(matches!(got, Err(SourceError::Unavailable(_))), "{got:?}");
        assert_eq!(broker.queries().len(), 1, "the request reached the server");
    }
}

/// `Registry::load_ngsi_ld` loads the same fixture files and answers as the HTTP adapter does.
#[tokio::test]
async fn registry_loads_the_fixture_files() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        mim4_node::store::Store::open(dir.path(), &mim4_node::store::StorageKey::generate())
            .unwrap();
    let registry = Registry::new(store.registry_tree().unwrap(), store.vault().clone());
    let subjects = fixture("subjects.jsonld");
    let report = registry.load_ngsi_ld(&subjects, &person_mapping()).unwrap();
    assert_eq!(
        report,
        LoadReport {
            subjects: 3,
            values: 11,
            entities_skipped: 4
        }
    );
    let report = registry
        .load_ngsi_ld(&subjects, &credential_mapping())
        .unwrap();
    assert_eq!(
        (report.subjects, report.values, report.entities_skipped),
        (2, 3, 3)
    );
    let by_id = Mapping::new(
        "Person",
        SubjectKey::IdPrefix("urn:ngsi-ld:dataModel:id:".into()),
    )
    .unwrap()
    .with_attribute(attribute("person.family_name"), "familyName")
    .unwrap();
    let report = registry
        .load_ngsi_ld(&fixture("person-example-normalized.jsonld"), &by_id)
        .unwrap();
    assert_eq!((report.subjects, report.values), (1, 1));
    let report = registry
        .load_ngsi_ld(&fixture("organization-example-normalized.jsonld"), &by_id)
        .unwrap();
    assert_eq!((report.subjects, report.entities_skipped), (0, 1));

    let broker = Broker::with_fixtures().await;
    let http_people = source(broker.base_url(), person_mapping());
    let http_credentials = source(broker.base_url(), credential_mapping());
    // (adapter, registry, subject, attributes)
    type Read<'a> = (
        &'a dyn DataSource,
        &'a dyn DataSource,
        &'a str,
        &'a [&'a str],
    );
    let reads: [Read<'_>; 4] = [
        (
            &http_people,
            &registry,
            "fi:hetu:010180-1234",
            &[
                "person.given_name",
                "person.family_name",
                "person.employer",
                "person.address",
            ],
        ),
        (
            &http_people,
            &registry,
            "se:pnr:19800101-1234",
            &["person.address", "person.email"],
        ),
        (
            &http_credentials,
            &registry,
            "se:pnr:19800101-1234",
            &["education.diplomas", "education.credits"],
        ),
        (
            &http_credentials,
            &registry,
            "fi:hetu:010180-1234",
            &["education.credits"],
        ),
    ];
    for (http, registry, subject_id, names) in reads {
        let over_http = read(http, subject_id, names).await.unwrap();
        assert_eq!(
            read(registry, subject_id, names).await.unwrap(),
            over_http,
            "{subject_id}"
        );
    }
    assert_eq!(
        read(&registry, "UZHW:27495447", &["person.family_name"])
            .await
            .unwrap(),
        values(&[("person.family_name", json!("Ahle"))])
    );
    assert_eq!(
        read(&registry, "fi:hetu:999999-9999", &["person.family_name"]).await,
        Err(SourceError::UnknownSubject)
    );
}

/// The test broker's `q` supports `;` conjunctions, `!=`, and string, number and boolean literals.
#[test]
fn test_broker_query_language() {
    let entities = fixture_entities();
    let check = |q: &str, expected: &[&str]| {
        let terms = parse_q(q).unwrap();
        let ids: Vec<&str> = entities
            .iter()
            .filter(|e| entity_matches_q(e, &terms))
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, expected, "{q}");
    };
    check(
        r#"holder=="se:pnr:19800101-1234";credits==180"#,
        &["urn:ngsi-ld:EducationalOccupationalCredential:se-0002"],
    );
    check(
        r#"holder=="se:pnr:19800101-1234";credits!=180"#,
        &["urn:ngsi-ld:EducationalOccupationalCredential:se-0003"],
    );
    check(
        r#"familyName=="Ahle""#,
        &["urn:ngsi-ld:dataModel:id:UZHW:27495447"],
    );
    check(r#"identifier=="a;b";familyName=="Ahle""#, &[]);
    check(
        r#"taxID=="12345678900""#,
        &["urn:ngsi-ld:Organization:34f91f29-aadd-45f7-ab9e-4fca2baffdd7"],
    );
    check(
        "credits==120.0",
        &["urn:ngsi-ld:EducationalOccupationalCredential:se-0003"],
    );
    check("credits==true", &[]);
    assert!(parse_q("credits>100").is_err());
    assert!(parse_q("name==unquoted").is_err());
    assert!(parse_q("(a==1|b==2)").is_err());
}
