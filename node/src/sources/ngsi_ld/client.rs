//! The NGSI-LD HTTP adapter: reads a subject's attributes from an unchanged
//! context broker through `GET {base}/ngsi-ld/v1/entities` (OASC MIM1, ETSI GS
//! CIM 009 "Query Entities").
//!
//! A read asks the broker for exactly the NGSI-LD attributes behind the
//! requested catalogue attributes (`attrs`, data minimisation), selects the
//! subject's entities with `q=identifier=="..."` or `id=...`, follows
//! `limit`/`offset` pagination up to a bound, and checks that every entity
//! the broker returned really belongs to the subject before taking any value
//! from it: a broker that ignored the query must not leak another person's
//! data into an answer.
//!
//! Each page is fetched on its own HTTP/1.1 connection, driven inside the
//! read's future, so no task outlives a read and dropping the future closes
//! the connection (cancel-safe). Only plain `http://` is supported: the broker
//! sits next to the node in the operator's network, or behind a TLS-terminating
//! proxy; this keeps TLS stacks out of the build.

use std::collections::BTreeSet;
use std::fmt;
use std::pin::pin;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, LINK};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::net::TcpStream;

use super::entity::{Entity, Form, Mapping, Multiplicity, SubjectKey};
use super::ConfigError;
use crate::core::consent::{Attribute, SubjectId};
use crate::limits::ENTITIES_PER_SUBJECT_MAX;
pub use crate::limits::NGSI_LD_PAGES_MAX as PAGES_MAX;
pub use crate::limits::NGSI_LD_PAGE_SIZE_DEFAULT as PAGE_SIZE_DEFAULT;
pub use crate::limits::NGSI_LD_PAGE_SIZE_MAX as PAGE_SIZE_MAX;
use crate::limits::NGSI_LD_PROBLEM_BYTES_MAX as PROBLEM_BYTES_MAX;
pub use crate::limits::NGSI_LD_READ_TIMEOUT_DEFAULT as READ_TIMEOUT_DEFAULT;
pub use crate::limits::NGSI_LD_RESPONSE_BYTES_MAX as RESPONSE_BYTES_MAX;
use crate::sources::{BoxFuture, DataSource, SourceError, Values};

/// Path of the Query Entities resource under the base URL (CIM 009 clause 6.4).
const ENTITIES_PATH: &str = "/ngsi-ld/v1/entities";

/// Characters percent-encoded in query parameter values: all but RFC 3986 unreserved ones.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which representation the adapter asks the broker for (CIM 009 clause 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Representation {
    /// Attributes as `{"type": "Property", "value": ...}` objects (the default).
    #[default]
    Normalized,
    /// `options=keyValues`: attributes as bare values.
    KeyValues,
}

/// The media type the adapter accepts (CIM 009 clause 6.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaType {
    /// `application/ld+json`: the `@context` comes in the body.
    #[default]
    LdJson,
    /// `application/json`: the `@context` comes in a `Link` header.
    Json,
}

impl MediaType {
    fn as_str(self) -> &'static str {
        match self {
            MediaType::LdJson => "application/ld+json",
            MediaType::Json => "application/json",
        }
    }
}
impl From<Representation> for Form {
    fn from(representation: Representation) -> Self {
        match representation {
            Representation::Normalized => Form::Normalized,
            Representation::KeyValues => Form::KeyValues,
        }
    }
}
/// Configuration of an [`NgsiLdSource`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The broker's base URL, `http://host[:port][/path]`; the adapter appends
    /// `/ngsi-ld/v1/entities`.
    pub base_url: String,
    /// Which entities hold a subject and which attributes map to the catalogue.
    pub mapping: Mapping,
    /// The representation to ask for.
    pub representation: Representation,
    /// The media type to accept.
    pub media_type: MediaType,
    /// The JSON-LD `@context` URL the mapping's short names are defined in,
    /// sent as a `Link` header; `None` relies on the broker's core context.
    pub context: Option<String>,
    /// The NGSI-LD tenant (`NGSILD-Tenant` header), if the broker is multi-tenant.
    pub tenant: Option<String>,
    /// Entities per page (`limit`), 1..=[`PAGE_SIZE_MAX`].
    pub page_size: u32,
    /// Deadline of one whole read.
    pub timeout: Duration,
}

impl Config {
    /// A configuration with defaults: normalized, `application/ld+json`, no
    /// context or tenant, [`PAGE_SIZE_DEFAULT`] and [`READ_TIMEOUT_DEFAULT`].
    pub fn new(base_url: impl Into<String>, mapping: Mapping) -> Self {
        Self {
            base_url: base_url.into(),
            mapping,
            representation: Representation::Normalized,
            media_type: MediaType::LdJson,
            context: None,
            tenant: None,
            page_size: PAGE_SIZE_DEFAULT,
            timeout: READ_TIMEOUT_DEFAULT,
        }
    }
}

/// The broker's address, parsed from the base URL once.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port` as the URL gave it, for the `Host` header.
    authority: String,
    host: String,
    port: u16,
    /// The URL's path without its trailing slash ("" for none).
    path_prefix: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::BaseUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    "https is not supported: reach the broker over the operator's network or a TLS-terminating proxy",
                ))
            }
            _ => return Err(invalid("the scheme must be http")),
        }
        let authority = uri.authority().ok_or(invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query is not allowed"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Self {
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// The NGSI-LD HTTP adapter; see the module documentation.
#[derive(Debug, Clone)]
pub struct NgsiLdSource {
    config: Config,
    endpoint: Endpoint,
    accept: HeaderValue,
    /// The `Link` header value naming the JSON-LD context, if configured.
    context_link: Option<HeaderValue>,
    tenant: Option<HeaderValue>,
}

/// One page of a query's results.
#[derive(Debug)]
struct Page {
    entities: Vec<Value>,
    /// `NGSILD-Results-Count`, if the broker sent it.
    total: Option<u64>,
    /// Whether a `Link` header announced a next page.
    next: bool,
}

fn unavailable(what: impl fmt::Display) -> SourceError {
    SourceError::Unavailable(what.to_string())
}

fn malformed(what: impl fmt::Display) -> SourceError {
    SourceError::Malformed(what.to_string())
}

impl NgsiLdSource {
    /// Checks `config` and builds the adapter. Does not contact the broker.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let endpoint = Endpoint::parse(&config.base_url)?;
        if config.page_size == 0 || config.page_size > PAGE_SIZE_MAX {
            return Err(ConfigError::PageSize(config.page_size));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        let context_link = match &config.context {
            None => None,
            Some(url) if url.contains(['<', '>']) => return Err(ConfigError::Header("context URL")),
            Some(url) => Some(
                HeaderValue::try_from(format!(
                    "<{url}>; rel=\"http://www.w3.org/ns/json-ld#context\"; type=\"application/ld+json\""
                ))
                .map_err(|_| ConfigError::Header("context URL"))?,
            ),
        };
        let tenant = match &config.tenant {
            None => None,
            Some(tenant) => Some(
                HeaderValue::try_from(tenant.as_str())
                    .map_err(|_| ConfigError::Header("tenant"))?,
            ),
        };
        Ok(Self {
            accept: HeaderValue::from_static(config.media_type.as_str()),
            config,
            endpoint,
            context_link,
            tenant,
        })
    }

    /// The adapter's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The query string of one page, without `?`: `type`, `attrs`, the
    /// subject selector (`q` or `id`), `limit`, `offset`, `count=true`, and
    /// `options=keyValues` when asked for.
    fn query(&self, attrs: &BTreeSet<&str>, selector: &Selector, offset: u64) -> String {
        let encode = |value: &str| utf8_percent_encode(value, QUERY_VALUE).to_string();
        let mut query = format!("type={}", encode(self.config.mapping.entity_type()));
        if !attrs.is_empty() {
            let list: Vec<String> = attrs.iter().map(|name| encode(name)).collect();
            query.push_str("&attrs=");
            query.push_str(&list.join(","));
        }
        match selector {
            Selector::Q(q) => {
                query.push_str("&q=");
                query.push_str(&encode(q));
            }
            Selector::Id(id) => {
                query.push_str("&id=");
                query.push_str(&encode(id));
            }
        }
        query.push_str(&format!(
            "&limit={}&offset={offset}&count=true",
            self.config.page_size
        ));
        if self.config.representation == Representation::KeyValues {
            query.push_str("&options=keyValues");
        }
        query
    }

    /// Fetches one page on its own connection.
    ///
    /// Cancel-safe: the connection lives inside this future and closes when it is dropped.
    async fn fetch_page(&self, query: &str) -> Result<Page, SourceError> {
        let endpoint = &self.endpoint;
        let path_and_query = format!("{}{ENTITIES_PATH}?{query}", endpoint.path_prefix);
        let mut request = Request::get(path_and_query)
            .header(HOST, endpoint.authority.as_str())
            .header(ACCEPT, self.accept.clone());
        if let Some(link) = &self.context_link {
            request = request.header(LINK, link.clone());
        }
        if let Some(tenant) = &self.tenant {
            request = request.header("NGSILD-Tenant", tenant.clone());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| malformed(format!("cannot build the request: {e}")))?;

        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| unavailable(format!("cannot connect to {}: {e}", endpoint.authority)))?;
        // Best effort: a failure only costs latency.
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("HTTP handshake with {}: {e}", endpoint.authority)))?;

        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unavailable(format!("request to {}: {e}", endpoint.authority)))?;
            read_page(response).await
        };
        let mut connection = pin!(connection);
        let mut exchange = pin!(exchange);
        // The connection future drives the socket; the exchange only sees
        // the response through it. Poll both until the exchange is done.
        tokio::select! {
            page = &mut exchange => page,
            closed = &mut connection => match closed {
                // Closed cleanly after sending the whole response: the
                // exchange can still finish from what was received.
                Ok(()) => exchange.await,
                Err(e) => Err(unavailable(format!("connection to {}: {e}", endpoint.authority))),
            },
        }
    }

    /// Fetches every page of the subject's entities, bounded by [`PAGES_MAX`]
    /// and [`ENTITIES_PER_SUBJECT_MAX`].
    async fn fetch_entities(
        &self,
        attrs: &BTreeSet<&str>,
        selector: &Selector,
    ) -> Result<Vec<Value>, SourceError> {
        let page_size = u64::from(self.config.page_size);
        let mut entities = Vec::new();
        let mut offset = 0_u64;
        for _ in 0..PAGES_MAX {
            let page = self
                .fetch_page(&self.query(attrs, selector, offset))
                .await?;
            let received = page.entities.len();
            if entities.len() + received > ENTITIES_PER_SUBJECT_MAX {
                return Err(SourceError::TooManyEntities {
                    max: ENTITIES_PER_SUBJECT_MAX,
                });
            }
            entities.extend(page.entities);
            offset += received as u64;
            // The count is authoritative when present (a broker may cap the
            // page below our limit); otherwise a `Link: rel="next"` or a full
            // page means there may be more.
            let more = match page.total {
                Some(total) => offset < total,
                None => page.next || received as u64 >= page_size,
            };
            if !more || received == 0 {
                return Ok(entities);
            }
        }
        Err(malformed(format!(
            "the broker announced more than {PAGES_MAX} pages for one subject"
        )))
    }

    async fn read_values(
        &self,
        subject: &SubjectId,
        attributes: &[Attribute],
    ) -> Result<Values, SourceError> {
        let mapping = &self.config.mapping;
        let wanted: Vec<(&Attribute, &str)> = attributes
            .iter()
            .filter_map(|a| mapping.attributes().get(a).map(|name| (a, name.as_str())))
            .collect();
        let mut attrs: BTreeSet<&str> = wanted.iter().map(|(_, name)| *name).collect();
        let Some(selector) = select(mapping, subject, &wanted, &mut attrs)? else {
            return Ok(Values::new());
        };
        let entities = self.fetch_entities(&attrs, &selector).await?;
        if entities.is_empty() {
            return Err(SourceError::UnknownSubject);
        }
        let form = Form::from(self.config.representation);
        let parsed = subject_entities(mapping, subject, &entities, form)?;
        values_of(mapping, &wanted, &parsed, form)
    }
}

/// How a query selects `subject`'s entities, adding to `attrs` what the
/// selection needs; `None` when nothing needs asking (nothing this source
/// holds is `wanted` and the selection would return whole entities).
fn select<'a>(
    mapping: &'a Mapping,
    subject: &SubjectId,
    wanted: &[(&Attribute, &str)],
    attrs: &mut BTreeSet<&'a str>,
) -> Result<Option<Selector>, SourceError> {
    match mapping.subject_key() {
        SubjectKey::Attribute(name) => {
            // The identifier is asked for too: CIM 009 uses `attrs` as a
            // filter, so without it a subject lacking the requested
            // attributes would look unknown; and it lets us check that
            // each returned entity is the subject's. It reveals nothing
            // the requester does not already know.
            attrs.insert(name.as_str());
            // A q string literal cannot hold a double quote; no entity
            // can be selected by such an identifier.
            if subject.as_str().contains(['"', '\\']) {
                return Err(SourceError::UnknownSubject);
            }
            Ok(Some(Selector::Q(format!(
                "{name}==\"{}\"",
                subject.as_str()
            ))))
        }
        SubjectKey::IdPrefix(prefix) => {
            if wanted.is_empty() {
                // Nothing this source holds was asked for, and without
                // `attrs` the broker would return the whole entity.
                return Ok(None);
            }
            // `id` takes a comma-separated list.
            if subject.as_str().contains(',') {
                return Err(SourceError::UnknownSubject);
            }
            Ok(Some(Selector::Id(format!("{prefix}{}", subject.as_str()))))
        }
    }
}

/// The broker's answer as `subject`'s entities, in entity id order: each
/// must be of the mapped type and belong to `subject`, and there may be
/// more than one only if the mapping allows it.
fn subject_entities<'a>(
    mapping: &Mapping,
    subject: &SubjectId,
    entities: &'a [Value],
    form: Form,
) -> Result<Vec<Entity<'a>>, SourceError> {
    let mut parsed = Vec::with_capacity(entities.len());
    for (index, value) in entities.iter().enumerate() {
        let entity = Entity::parse(value)
            .map_err(|reason| malformed(format!("entity {index} of the answer: {reason}")))?;
        if !entity.has_type(mapping.entity_type()) {
            return Err(malformed(format!(
                "entity {index} of the answer is not of type {:?}",
                mapping.entity_type()
            )));
        }
        // Never take values from an entity of someone else.
        match mapping.subject_of(&entity, form) {
            Ok(found) if found == subject.as_str() => {}
            Ok(_) => {
                return Err(malformed(format!(
                    "entity {index} of the answer belongs to another subject"
                )))
            }
            Err(reason) => {
                return Err(malformed(format!("entity {index} of the answer: {reason}")))
            }
        }
        parsed.push(entity);
    }
    if mapping.multiplicity() == Multiplicity::One && parsed.len() > 1 {
        return Err(malformed(format!(
            "{} entities match one subject, the mapping expects one",
            parsed.len()
        )));
    }
    parsed.sort_by(|a, b| a.id.cmp(b.id));
    Ok(parsed)
}

/// The `wanted` catalogue attributes as the subject's `entities` hold them:
/// one value, or with [`Multiplicity::Many`] an array of every entity's value.
fn values_of(
    mapping: &Mapping,
    wanted: &[(&Attribute, &str)],
    entities: &[Entity<'_>],
    form: Form,
) -> Result<Values, SourceError> {
    let mut values = Values::new();
    for &(attribute, name) in wanted {
        let mut found = Vec::new();
        for entity in entities {
            if let Some(value) = entity.value(name, form).map_err(malformed)? {
                found.push(value);
            }
        }
        let value = match mapping.multiplicity() {
            Multiplicity::One => found.pop(),
            Multiplicity::Many if found.is_empty() => None,
            Multiplicity::Many => Some(Value::Array(found)),
        };
        if let Some(value) = value {
            values.insert(attribute.clone(), value);
        }
    }
    Ok(values)
}

/// How a query selects the subject's entities.
#[derive(Debug)]
enum Selector {
    /// `q=<query>`.
    Q(String),
    /// `id=<entity id>`.
    Id(String),
}

/// Reads a response into a page, bounded by [`RESPONSE_BYTES_MAX`].
async fn read_page(response: hyper::Response<hyper::body::Incoming>) -> Result<Page, SourceError> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(SourceError::UnknownSubject);
    }
    if status != StatusCode::OK {
        return Err(refusal(response).await);
    }
    let headers = response.headers();
    let declared_bytes = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(content_type) = headers.get(CONTENT_TYPE) {
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && essence != "application/ld+json" {
            return Err(malformed(format!("content type {essence:?} is not JSON")));
        }
    }
    if declared_bytes.is_some_and(|bytes| bytes > RESPONSE_BYTES_MAX as u64) {
        return Err(malformed(format!(
            "the answer is larger than {RESPONSE_BYTES_MAX} bytes"
        )));
    }
    let total = match headers.get("NGSILD-Results-Count") {
        None => None,
        Some(count) => Some(
            count
                .to_str()
                .ok()
                .and_then(|c| c.trim().parse::<u64>().ok())
                .ok_or_else(|| malformed("NGSILD-Results-Count is not a number"))?,
        ),
    };
    let next = headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(announces_next);
    let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                malformed(format!(
                    "the answer is larger than {RESPONSE_BYTES_MAX} bytes"
                ))
            } else {
                unavailable(format!("reading the answer: {e}"))
            }
        })?
        .to_bytes();
    let entities = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(entities)) => entities,
        Ok(_) => return Err(malformed("the answer is not a JSON array of entities")),
        Err(e) => return Err(malformed(format!("the answer is not JSON: {e}"))),
    };
    Ok(Page {
        entities,
        total,
        next,
    })
}

/// The error for an answer other than 200 or 404, with the `title` of its
/// ProblemDetails body if it has one (a bounded piece of it).
async fn refusal(response: hyper::Response<hyper::body::Incoming>) -> SourceError {
    let status = response.status();
    let body = Limited::new(response.into_body(), PROBLEM_BYTES_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let title = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|problem| {
            problem
                .get("title")
                .and_then(Value::as_str)
                .map(|t| t.chars().take(200).collect::<String>())
        })
        .unwrap_or_default();
    unavailable(format!("the broker answered {status} {title}"))
}

/// Whether a `Link` header value (RFC 8288) has a link with `rel="next"`.
fn announces_next(header: &str) -> bool {
    // Link values are `<uri>; param=value; ...`, separated by commas; commas
    // inside `<...>` belong to the URI, so split on `<` first.
    header.split('<').skip(1).any(|link| {
        let params = link.split_once('>').map_or("", |(_, params)| params);
        params.split(';').any(|param| {
            let Some((key, value)) = param.split_once('=') else {
                return false;
            };
            key.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim_matches('"')
                    .split_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        })
    })
}

impl DataSource for NgsiLdSource {
    fn read<'a>(
        &'a self,
        subject: &'a SubjectId,
        attributes: &'a [Attribute],
    ) -> BoxFuture<'a, Result<Values, SourceError>> {
        Box::pin(async move {
            let timeout = self.config.timeout;
            match tokio::time::timeout(timeout, self.read_values(subject, attributes)).await {
                Ok(result) => result,
                Err(_) => Err(unavailable(format!(
                    "no answer from {} within {} ms",
                    self.endpoint.authority,
                    timeout.as_millis()
                ))),
            }
        })
    }

    fn describe(&self) -> String {
        format!(
            "ngsi-ld http://{}{} ({})",
            self.endpoint.authority,
            self.endpoint.path_prefix,
            self.config.mapping.entity_type()
        )
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ngsi_ld::NGSI_LD_NAME_BYTES_MAX;

    fn attribute(name: &str) -> Attribute {
        Attribute::new(name).unwrap()
    }

    fn person_mapping() -> Mapping {
        Mapping::new("Person", SubjectKey::Attribute("identifier".into()))
            .unwrap()
            .with_attribute(attribute("person.family_name"), "familyName")
            .unwrap()
            .with_attribute(attribute("person.given_name"), "givenName")
            .unwrap()
    }

    /// The query asks for exactly the given attributes and percent-encodes `q` and names.
    #[test]
    fn query_is_minimal_and_encoded() {
        let source =
            NgsiLdSource::new(Config::new("http://broker:1026/", person_mapping())).unwrap();
        let attrs = BTreeSet::from(["givenName", "identifier"]);
        let selector = Selector::Q("identifier==\"fi:hetu:010180-1234\"".into());
        assert_eq!(
            source.query(&attrs, &selector, 100),
            "type=Person&attrs=givenName,identifier\
             &q=identifier%3D%3D%22fi%3Ahetu%3A010180-1234%22&limit=100&offset=100&count=true"
        );
        let mut config = Config::new("http://broker:1026", person_mapping());
        config.representation = Representation::KeyValues;
        config.page_size = 5;
        let source = NgsiLdSource::new(config).unwrap();
        let selector = Selector::Id("urn:ngsi-ld:Person:a b".into());
        assert_eq!(
            source.query(&BTreeSet::from(["https://schema.org/name"]), &selector, 0),
            "type=Person&attrs=https%3A%2F%2Fschema.org%2Fname&id=urn%3Angsi-ld%3APerson%3Aa%20b\
             &limit=5&offset=0&count=true&options=keyValues"
        );
    }

    /// `Link` headers announce a next page only with `rel="next"`, wherever it appears.
    #[test]
    fn link_header_next() {
        assert!(announces_next(
            "</ngsi-ld/v1/entities?offset=2&limit=1>; rel=\"next\"; type=\"application/ld+json\""
        ));
        assert!(announces_next("<a?x=1,2>; rel=prev, <b>; rel=\"next\""));
        assert!(announces_next("<b>; REL=\"prev next\""));
        assert!(!announces_next("<a>; rel=\"prev\""));
        assert!(!announces_next(
            "<https://example.org/ctx.jsonld>; rel=\"http://www.w3.org/ns/json-ld#context\""
        ));
        assert!(!announces_next("garbage"));
    }

    /// Only `http://host[:port][/path]` base URLs are accepted.
    #[test]
    fn base_urls() {
        let endpoint = Endpoint::parse("http://127.0.0.1:1026/broker/").unwrap();
        assert_eq!(
            (
                endpoint.host.as_str(),
                endpoint.port,
                endpoint.path_prefix.as_str()
            ),
            ("127.0.0.1", 1026, "/broker")
        );
        let endpoint = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 80));
        for bad in [
            "https://broker",
            "ftp://broker",
            "broker:1026",
            "http://broker/?x=1",
            "http://user:pw@broker",
            "not a url",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(ConfigError::BaseUrl { .. })),
                "{bad}"
            );
        }
    }

    /// Mappings and configurations reject names and settings that would break a query.
    #[test]
    fn invalid_configuration() {
        let by_attribute = SubjectKey::Attribute("identifier".into());
        assert!(Mapping::new("", by_attribute.clone()).is_err());
        assert!(Mapping::new("Per son", by_attribute.clone()).is_err());
        assert!(Mapping::new("Person", SubjectKey::Attribute("a,b".into())).is_err());
        assert!(Mapping::new("Person", SubjectKey::IdPrefix("urn\"x".into())).is_err());
        let too_long = "a".repeat(NGSI_LD_NAME_BYTES_MAX + 1);
        assert!(Mapping::new(&too_long, by_attribute.clone()).is_err());
        assert!(person_mapping()
            .with_attribute(attribute("x"), "a==b")
            .is_err());
        let mut config = Config::new("http://broker", person_mapping());
        config.page_size = 0;
        assert_eq!(
            NgsiLdSource::new(config.clone()).unwrap_err(),
            ConfigError::PageSize(0)
        );
        config.page_size = 10;
        config.timeout = Duration::ZERO;
        assert_eq!(
            NgsiLdSource::new(config.clone()).unwrap_err(),
            ConfigError::Timeout
        );
        config.timeout = Duration::from_secs(1);
        config.tenant = Some("bad\ntenant".into());
        assert_eq!(
            NgsiLdSource::new(config).unwrap_err(),
            ConfigError::Header("tenant")
        );
    }
}
