//! Consent calls: ask for consent, act as a citizen (grant, refuse,
//! withdraw, narrow, arrangements), read records and ask for decisions.

use std::fmt;

use crate::{pb, CallError, Client};

/// A 128-bit consent (or arrangement, or delegation) id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsentId(pub [u8; 16]);

impl ConsentId {
    /// The id in a [`pb::ConsentView`]'s terms (`consent_id` bytes).
    pub fn of(view: &pb::ConsentView) -> Result<Self, CallError> {
        Self::from_wire(view.terms.as_ref().map_or(&[][..], |t| &t.consent_id))
    }

    pub(crate) fn from_wire(bytes: &[u8]) -> Result<Self, CallError> {
        <[u8; 16]>::try_from(bytes)
            .map(Self)
            .map_err(|_| CallError::Other {
                code: tonic::Code::Internal,
                message: "node returned a consent id that is not 16 bytes".into(),
            })
    }
}

impl fmt::Display for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConsentId({self})")
    }
}

/// Builds the terms of a consent or an arrangement.
///
/// ```
/// let terms = mim4_sdk::Terms::consent(
///     "fi:hetu:010180-1234", "fi.helsinki", "fi.helsinki/early-education", "fi.incomeregister")
///     .read("income.gross_monthly")
///     .purpose("dpv:ServiceProvision")
///     .purpose_text("Setting the daycare fee")
///     .lawful_basis("dpv:PublicTask")
///     .valid(0, 4_102_444_800_000)
///     .build();
/// assert_eq!(terms.scope.len(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct Terms(pb::ConsentTerms);

impl Terms {
    /// A consent of `subject` (homed at `home`) for `service` to obtain data from `source`.
    /// The subject is its only grantor until [`Terms::grantors`] says otherwise.
    pub fn consent(subject: &str, home: &str, service: &str, source: &str) -> Self {
        Self(pb::ConsentTerms {
            kind: "consent".into(),
            subject: subject.into(),
            home: home.into(),
            grantors: vec![subject.into()],
            audience_service: service.into(),
            source: source.into(),
            lawful_basis: "dpv:Consent".into(),
            not_after_ms: u64::MAX,
            ..Default::default()
        })
    }

    /// A permission arrangement of `subject` for every member with the sector label.
    pub fn arrangement_for_sector(subject: &str, home: &str, sector: &str, source: &str) -> Self {
        let mut terms = Self::consent(subject, home, "", source);
        terms.0.kind = "arrangement".into();
        terms.0.audience_service.clear();
        terms.0.audience_sector = sector.into();
        terms
    }

    /// A permission arrangement of `subject` for one member.
    pub fn arrangement_for_member(subject: &str, home: &str, member: &str, source: &str) -> Self {
        let mut terms = Self::arrangement_for_sector(subject, home, "", source);
        terms.0.audience_sector.clear();
        terms.0.audience_member = member.into();
        terms
    }

    /// Sets the record's id (otherwise the node chooses one).
    pub fn id(mut self, id: ConsentId) -> Self {
        self.0.consent_id = id.0.to_vec();
        self
    }

    /// The people who must all grant (e.g. both guardians of a child).
    pub fn grantors<'a>(mut self, grantors: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.grantors = grantors.into_iter().map(str::to_owned).collect();
        self
    }

    /// Permission to read the attribute's value.
    pub fn read(self, attribute: &str) -> Self {
        self.scope(attribute, "read")
    }

    /// Permission to verify predicates about the attribute (yes/no answers only).
    pub fn verify(self, attribute: &str) -> Self {
        self.scope(attribute, "verify")
    }

    fn scope(mut self, attribute: &str, action: &str) -> Self {
        self.0.scope.push(pb::ScopeItem {
            attribute: attribute.into(),
            action: action.into(),
        });
        self
    }

    /// A purpose, as a W3C DPV term (`dpv:ServiceProvision`).
    pub fn purpose(mut self, purpose: &str) -> Self {
        self.0.purposes.push(purpose.into());
        self
    }

    /// The purpose in words, shown to the citizen.
    pub fn purpose_text(mut self, text: &str) -> Self {
        self.0.purpose_text = text.into();
        self
    }

    /// The lawful basis (`dpv:Consent`, `dpv:PublicTask`, ...).
    pub fn lawful_basis(mut self, basis: &str) -> Self {
        self.0.lawful_basis = basis.into();
        self
    }

    /// Validity window, ms since the epoch (`not_after` exclusive).
    pub fn valid(mut self, not_before_ms: u64, not_after_ms: u64) -> Self {
        self.0.not_before_ms = not_before_ms;
        self.0.not_after_ms = not_after_ms;
        self
    }

    /// The wire terms.
    pub fn build(self) -> pb::ConsentTerms {
        self.0
    }
}

/// The answer to [`Client::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed under this record.
    Allow {
        /// The record.
        consent_id: ConsentId,
    },
    /// Denied.
    Deny {
        /// Machine-readable reason (`withdrawn`, `purpose-not-covered`, ...).
        code: String,
        /// The reason in words.
        reason: String,
    },
}

/// One question for [`Client::decide`].
#[derive(Clone, Debug, Default)]
pub struct DecideQuery<'a> {
    /// Whose data.
    pub subject: &'a str,
    /// The requesting service (`fi.helsinki/early-education`).
    pub service: &'a str,
    /// The operator holding the data.
    pub source: &'a str,
    /// The attribute.
    pub attribute: &'a str,
    /// `read` or `verify`.
    pub action: &'a str,
    /// DPV purpose.
    pub purpose: &'a str,
    /// When (ms since the epoch); 0 for now.
    pub at_ms: u64,
}

impl Client {
    /// Asks for consent. Returns the record's id once the request is stored
    /// (at the home operator, or in this node's outbox on its way there).
    pub async fn request_consent(&self, terms: pb::ConsentTerms) -> Result<ConsentId, CallError> {
        let mut inner = self.inner.clone();
        let r = inner
            .request_consent(self.with_credential(pb::RequestConsentRequest { terms: Some(terms) }))
            .await?
            .into_inner();
        ConsentId::from_wire(&r.consent_id)
    }

    async fn act(
        &self,
        id: ConsentId,
        action: pb::ConsentAction,
        person: &str,
        for_grantor: Option<&str>,
    ) -> Result<pb::ConsentView, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .act_on_consent(self.with_credential(pb::ActOnConsentRequest {
                consent_id: id.0.to_vec(),
                action: action as i32,
                person: person.into(),
                for_grantor: for_grantor.unwrap_or_default().into(),
            }))
            .await?
            .into_inner())
    }

    /// `person` grants the consent (for `for_grantor`, if acting for someone else).
    pub async fn grant(
        &self,
        id: ConsentId,
        person: &str,
        for_grantor: Option<&str>,
    ) -> Result<pb::ConsentView, CallError> {
        self.act(id, pb::ConsentAction::Grant, person, for_grantor)
            .await
    }

    /// `person` refuses the consent.
    pub async fn refuse(
        &self,
        id: ConsentId,
        person: &str,
        for_grantor: Option<&str>,
    ) -> Result<pb::ConsentView, CallError> {
        self.act(id, pb::ConsentAction::Refuse, person, for_grantor)
            .await
    }

    /// `person` withdraws the consent; the home pushes the withdrawal to every party.
    pub async fn withdraw(
        &self,
        id: ConsentId,
        person: &str,
        for_grantor: Option<&str>,
    ) -> Result<pb::ConsentView, CallError> {
        self.act(id, pb::ConsentAction::Withdraw, person, for_grantor)
            .await
    }

    /// Narrows a consent's scope, purposes or window.
    pub async fn narrow(
        &self,
        id: ConsentId,
        terms: pb::ConsentTerms,
        person: &str,
    ) -> Result<pb::ConsentView, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .narrow_consent(self.with_credential(pb::NarrowConsentRequest {
                consent_id: id.0.to_vec(),
                terms: Some(terms),
                person: person.into(),
            }))
            .await?
            .into_inner())
    }

    /// Sets a permission arrangement on behalf of `person`.
    pub async fn create_arrangement(
        &self,
        terms: pb::ConsentTerms,
        person: &str,
    ) -> Result<pb::ConsentView, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .create_arrangement(self.with_credential(pb::CreateArrangementRequest {
                terms: Some(terms),
                person: person.into(),
            }))
            .await?
            .into_inner())
    }

    /// Records that `agent` may act for `principal` (`guardian` or `mandate`).
    pub async fn record_delegation(
        &self,
        principal: &str,
        agent: &str,
        kind: &str,
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Result<ConsentId, CallError> {
        let mut inner = self.inner.clone();
        let r = inner
            .record_delegation(self.with_credential(pb::RecordDelegationRequest {
                principal: principal.into(),
                agent: agent.into(),
                kind: kind.into(),
                not_before_ms,
                not_after_ms,
            }))
            .await?
            .into_inner();
        ConsentId::from_wire(&r.consent_id)
    }

    /// The records about `subject` that the node holds (and the caller may see).
    pub async fn consents(&self, subject: &str) -> Result<Vec<pb::ConsentView>, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .list_consents(self.with_credential(pb::ListConsentsRequest {
                subject: subject.into(),
            }))
            .await?
            .into_inner()
            .consents)
    }

    /// One record, with its status and (at the home) its delivery to every party.
    pub async fn consent(&self, id: ConsentId) -> Result<pb::ConsentView, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .get_consent(self.with_credential(pb::GetConsentRequest {
                consent_id: id.0.to_vec(),
            }))
            .await?
            .into_inner())
    }

    /// Fetches `from`'s copy of a record (usually the home's) and keeps it if newer.
    pub async fn pull_consent(
        &self,
        id: ConsentId,
        from: &str,
    ) -> Result<pb::ConsentView, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .pull_consent(self.with_credential(pb::PullConsentRequest {
                consent_id: id.0.to_vec(),
                from_operator: from.into(),
            }))
            .await?
            .into_inner())
    }

    /// Asks the node's decision index.
    pub async fn decide(&self, query: DecideQuery<'_>) -> Result<Decision, CallError> {
        let mut inner = self.inner.clone();
        let r = inner
            .decide(self.with_credential(pb::DecideRequest {
                subject: query.subject.into(),
                service: query.service.into(),
                source: query.source.into(),
                attribute: query.attribute.into(),
                action: query.action.into(),
                purpose: query.purpose.into(),
                at_ms: query.at_ms,
            }))
            .await?
            .into_inner();
        Ok(if r.allow {
            Decision::Allow {
                consent_id: ConsentId::from_wire(&r.consent_id)?,
            }
        } else {
            Decision::Deny {
                code: r.deny_code,
                reason: r.reason,
            }
        })
    }

    /// Exports a record: `kantara` (compact JWS) or `iso27560` (JSON-LD).
    pub async fn export_consent(&self, id: ConsentId, format: &str) -> Result<String, CallError> {
        let mut inner = self.inner.clone();
        Ok(inner
            .export_consent(self.with_credential(pb::ExportConsentRequest {
                consent_id: id.0.to_vec(),
                format: format.into(),
            }))
            .await?
            .into_inner()
            .content)
    }
}
