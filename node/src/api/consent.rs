//! The consent calls of the local API: conversions, role checks and the
//! mapping of consent errors to gRPC statuses.

use mim4_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::clients::{Caller, ClientRole};
use crate::api::ApiService;
use crate::clock::now_ms;
use crate::core::consent::delegation::DelegationKind;
use crate::core::consent::index::{Decision, Query};
use crate::core::consent::{
    Action, Attribute, Audience, ConsentId, ConsentRecord, ConsentTerms, Purpose, ServiceId,
    SubjectId, TermsError,
};
use crate::core::ids::OperatorId;
use crate::core::reason::Reason;
use crate::core::wire;
use crate::node::consent::{terms_over_limit, ConsentError, GrantorAction};
use crate::store::OutgoingState;

/// Roles that may ask for consent.
pub(crate) const REQUESTERS: &[ClientRole] = &[ClientRole::Service, ClientRole::Admin];
/// Roles that act for citizens.
pub(crate) const CITIZEN: &[ClientRole] = &[ClientRole::CitizenApp, ClientRole::Admin];
/// Roles that may read records.
pub(crate) const READERS: &[ClientRole] = &[
    ClientRole::Service,
    ClientRole::CitizenApp,
    ClientRole::Admin,
];

/// Invalid terms: `RESOURCE_EXHAUSTED` with reason [`Reason::TermsTooLarge`]
/// when over a limit, else `INVALID_ARGUMENT`.
fn terms_status(error: &TermsError, message: String) -> Status {
    if terms_over_limit(error) {
        super::with_reason(Status::resource_exhausted(message), Reason::TermsTooLarge)
    } else {
        Status::invalid_argument(message)
    }
}

/// The one conversion from consent errors to gRPC statuses. Going over a
/// limit is `RESOURCE_EXHAUSTED` with the limit's reason, as an oversized
/// envelope is on the peer port.
pub(crate) fn status(error: ConsentError) -> Status {
    let message = error.to_string();
    if let Some(reason) = error.limit_reason() {
        return super::with_reason(Status::resource_exhausted(message), reason);
    }
    match error {
        ConsentError::NotFound(_) => Status::not_found(message),
        // Has its limit reason, above.
        ConsentError::SubjectFull { .. } => Status::resource_exhausted(message),
        ConsentError::NotHome(_) | ConsentError::Transition(_) | ConsentError::Exists(_) => {
            Status::failed_precondition(message)
        }
        ConsentError::Terms(_) | ConsentError::Delegation(_) | ConsentError::Notice(_) => {
            Status::invalid_argument(message)
        }
        ConsentError::Format(_) => Status::failed_precondition(message),
        ConsentError::NoAuthority { .. } => Status::permission_denied(message),
        ConsentError::UnknownOperator(_) => Status::not_found(message),
        ConsentError::Send(crate::node::SendError::TrustListExpired { .. }) => super::with_reason(
            Status::failed_precondition(message),
            Reason::TrustListExpired,
        ),
        ConsentError::Send(_) | ConsentError::Peer(_) | ConsentError::Store(_) => {
            Status::unavailable(message)
        }
    }
}

fn invalid(field: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {error}"))
}

fn consent_id(bytes: &[u8]) -> Result<ConsentId, Status> {
    ConsentId::from_slice(bytes)
        .ok_or_else(|| Status::invalid_argument("consent_id must be 16 bytes"))
}

fn subject(text: String, field: &str) -> Result<SubjectId, Status> {
    SubjectId::new(text).map_err(|e| invalid(field, e))
}

fn terms(raw: Option<pb::ConsentTerms>, fill_id: bool) -> Result<ConsentTerms, Status> {
    let mut raw = raw.ok_or_else(|| Status::invalid_argument("terms are missing"))?;
    if fill_id && raw.consent_id.is_empty() {
        raw.consent_id = vec![0; 16];
    }
    wire::terms_from_pb(raw).map_err(|e| terms_status(&e, format!("terms: {e}")))
}

/// A service may only act as its own service id.
fn check_service(caller: &Caller, service: &ServiceId) -> Result<(), Status> {
    if caller.role == ClientRole::Service && caller.service_id.as_deref() != Some(service.as_str())
    {
        return Err(Status::permission_denied(format!(
            "client {} acts as service {}, not {service}",
            caller.id,
            caller.service_id.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(())
}

impl ApiService {
    /// The view of a record as the API returns it.
    fn view(&self, record: &ConsentRecord) -> Result<pb::ConsentView, Status> {
        let shared = &self.shared;
        let (_, log) = shared.consent(&record.id()).map_err(status)?;
        let deliveries = shared
            .consent_deliveries(&record.id())
            .map_err(status)?
            .into_iter()
            .map(|d| {
                let state = shared
                    .store()
                    .outgoing(&d.message_id)
                    .ok()
                    .flatten()
                    .map_or(pb::OutgoingState::Unspecified, |o| match o.state {
                        OutgoingState::Pending => pb::OutgoingState::Pending,
                        OutgoingState::Delivered => pb::OutgoingState::Delivered,
                        OutgoingState::Expired => pb::OutgoingState::Expired,
                    });
                pb::ConsentDelivery {
                    operator: d.operator.to_string(),
                    events: d.events,
                    message_id: d.message_id.as_bytes().to_vec(),
                    state: state as i32,
                }
            })
            .collect();
        Ok(pb::ConsentView {
            terms: Some(wire::terms_to_pb(record.terms())),
            status: record.status_at(now_ms()).as_str().to_owned(),
            granted: record.granted().iter().map(ToString::to_string).collect(),
            missing_grantors: record
                .missing_grantors()
                .iter()
                .map(ToString::to_string)
                .collect(),
            events: record.next_seq(),
            log: Some(wire::consent_log_to_pb(&log)),
            deliveries,
        })
    }

    /// A service may read only records whose audience is its own service.
    fn check_reader(&self, caller: &Caller, record: &ConsentRecord) -> Result<(), Status> {
        if caller.role != ClientRole::Service {
            return Ok(());
        }
        match &record.terms().audience {
            Audience::Service(s) if caller.service_id.as_deref() == Some(s.as_str()) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "client {} may read only consents given to its own service",
                caller.id
            ))),
        }
    }

    pub(crate) async fn request_consent_impl(
        &self,
        request: Request<pb::RequestConsentRequest>,
    ) -> Result<Response<pb::ConsentIdResponse>, Status> {
        let caller = self.authorize(&request, "RequestConsent", REQUESTERS)?;
        let terms = terms(request.into_inner().terms, true)?;
        let Audience::Service(service) = &terms.audience else {
            return Err(Status::invalid_argument(
                "a consent request names one service; use CreateArrangement for member or sector audiences",
            ));
        };
        check_service(&caller, service)?;
        let id = self.shared.request_consent(terms).await.map_err(status)?;
        Ok(Response::new(pb::ConsentIdResponse {
            consent_id: id.as_bytes().to_vec(),
        }))
    }

    pub(crate) async fn act_on_consent_impl(
        &self,
        request: Request<pb::ActOnConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let caller = self.authorize(&request, "ActOnConsent", CITIZEN)?;
        let request = request.into_inner();
        let action = match pb::ConsentAction::try_from(request.action) {
            Ok(pb::ConsentAction::Grant) => GrantorAction::Grant,
            Ok(pb::ConsentAction::Refuse) => GrantorAction::Refuse,
            Ok(pb::ConsentAction::Withdraw) => GrantorAction::Withdraw,
            _ => {
                return Err(Status::invalid_argument(
                    "action must be grant, refuse or withdraw",
                ))
            }
        };
        let person = subject(request.person, "person")?;
        let for_grantor = if request.for_grantor.is_empty() {
            None
        } else {
            Some(subject(request.for_grantor, "for_grantor")?)
        };
        let record = self
            .shared
            .act_on_consent(
                consent_id(&request.consent_id)?,
                action,
                person,
                for_grantor,
                format!("{}:{}", caller.role, caller.id),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(self.view(&record)?))
    }

    pub(crate) async fn narrow_consent_impl(
        &self,
        request: Request<pb::NarrowConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        self.authorize(&request, "NarrowConsent", CITIZEN)?;
        let request = request.into_inner();
        let id = consent_id(&request.consent_id)?;
        let terms = terms(request.terms, false)?;
        if terms.consent_id != id {
            return Err(Status::invalid_argument(
                "terms.consent_id differs from consent_id",
            ));
        }
        let record = self
            .shared
            .narrow_consent(id, terms, subject(request.person, "person")?)
            .await
            .map_err(status)?;
        Ok(Response::new(self.view(&record)?))
    }

    pub(crate) async fn create_arrangement_impl(
        &self,
        request: Request<pb::CreateArrangementRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let caller = self.authorize(&request, "CreateArrangement", CITIZEN)?;
        let request = request.into_inner();
        let terms = terms(request.terms, true)?;
        let record = self
            .shared
            .create_arrangement(
                terms,
                subject(request.person, "person")?,
                format!("{}:{}", caller.role, caller.id),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(self.view(&record)?))
    }

    pub(crate) async fn record_delegation_impl(
        &self,
        request: Request<pb::RecordDelegationRequest>,
    ) -> Result<Response<pb::ConsentIdResponse>, Status> {
        self.authorize(&request, "RecordDelegation", &[ClientRole::Admin])?;
        let r = request.into_inner();
        let kind = DelegationKind::parse(&r.kind)
            .ok_or_else(|| Status::invalid_argument("kind must be guardian or mandate"))?;
        let not_after_ms = if r.not_after_ms == 0 {
            u64::MAX
        } else {
            r.not_after_ms
        };
        let id = self
            .shared
            .record_delegation(
                subject(r.principal, "principal")?,
                subject(r.agent, "agent")?,
                kind,
                r.not_before_ms,
                not_after_ms,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ConsentIdResponse {
            consent_id: id.as_bytes().to_vec(),
        }))
    }

    pub(crate) async fn list_consents_impl(
        &self,
        request: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        let caller = self.authorize(&request, "ListConsents", READERS)?;
        let subject = subject(request.into_inner().subject, "subject")?;
        let mut consents = Vec::new();
        for id in self.shared.consents_of(&subject) {
            let (record, _) = self.shared.consent(&id).map_err(status)?;
            if self.check_reader(&caller, &record).is_ok() {
                consents.push(self.view(&record)?);
            }
        }
        Ok(Response::new(pb::ListConsentsResponse { consents }))
    }

    pub(crate) async fn get_consent_impl(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let caller = self.authorize(&request, "GetConsent", READERS)?;
        let id = consent_id(&request.into_inner().consent_id)?;
        let (record, _) = self.shared.consent(&id).map_err(status)?;
        self.check_reader(&caller, &record)?;
        Ok(Response::new(self.view(&record)?))
    }

    pub(crate) async fn pull_consent_impl(
        &self,
        request: Request<pb::PullConsentRequest>,
    ) -> Result<Response<pb::ConsentView>, Status> {
        let caller = self.authorize(&request, "PullConsent", READERS)?;
        let r = request.into_inner();
        let from = OperatorId::new(r.from_operator).map_err(|e| invalid("from_operator", e))?;
        let record = self
            .shared
            .pull_consent(consent_id(&r.consent_id)?, from)
            .await
            .map_err(status)?;
        self.check_reader(&caller, &record)?;
        Ok(Response::new(self.view(&record)?))
    }

    pub(crate) async fn decide_impl(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let caller = self.authorize(&request, "Decide", REQUESTERS)?;
        let r = request.into_inner();
        let service = ServiceId::new(r.service).map_err(|e| invalid("service", e))?;
        check_service(&caller, &service)?;
        let subject = subject(r.subject, "subject")?;
        let source = OperatorId::new(r.source).map_err(|e| invalid("source", e))?;
        let attribute = Attribute::new(r.attribute).map_err(|e| invalid("attribute", e))?;
        let purpose = Purpose::new(r.purpose).map_err(|e| invalid("purpose", e))?;
        let action = match r.action.as_str() {
            "read" | "" => Action::Read,
            "verify" => Action::Verify,
            other => {
                return Err(invalid(
                    "action",
                    format!("{other:?} is not read or verify"),
                ))
            }
        };
        let operator = service.operator().clone();
        let sectors = self.shared.sectors_of(&operator);
        let at_ms = if r.at_ms == 0 { now_ms() } else { r.at_ms };
        let decision = self.shared.decide(&Query {
            subject: &subject,
            operator: &operator,
            service: &service,
            sectors: &sectors,
            source: &source,
            attribute: &attribute,
            action,
            purpose: &purpose,
            at_ms,
        });
        Ok(Response::new(match decision {
            Decision::Allow { consent_id } => pb::DecideResponse {
                allow: true,
                consent_id: consent_id.as_bytes().to_vec(),
                deny_code: String::new(),
                reason: String::new(),
            },
            Decision::Deny(reason) => pb::DecideResponse {
                allow: false,
                consent_id: Vec::new(),
                deny_code: reason.code().to_owned(),
                reason: reason.to_string(),
            },
        }))
    }
}

impl ApiService {
    pub(crate) async fn export_consent_impl(
        &self,
        request: Request<pb::ExportConsentRequest>,
    ) -> Result<Response<pb::ExportConsentResponse>, Status> {
        let caller = self.authorize(&request, "ExportConsent", READERS)?;
        let r = request.into_inner();
        let (record, _) = self
            .shared
            .consent(&consent_id(&r.consent_id)?)
            .map_err(status)?;
        self.check_reader(&caller, &record)?;
        let (content, media_type) = self
            .shared
            .export_consent(&record, &r.format)
            .map_err(status)?;
        Ok(Response::new(pb::ExportConsentResponse {
            content,
            media_type: media_type.to_owned(),
        }))
    }
}

impl ApiService {
    pub(crate) async fn request_data_impl(
        &self,
        request: Request<pb::RequestDataRequest>,
    ) -> Result<Response<pb::RequestDataResponse>, Status> {
        use crate::core::exchange::DataRequest;
        use crate::core::ids::MessageId;
        use crate::node::exchange::{ExchangeError, SourceOutcome};
        let caller = self.authorize(&request, "RequestData", REQUESTERS)?;
        let r = request.into_inner();
        let service = ServiceId::new(r.service).map_err(|e| invalid("service", e))?;
        check_service(&caller, &service)?;
        let request_id = if r.idempotency_key.is_empty() {
            MessageId::from_bytes(rand::random())
        } else {
            MessageId::from_slice(&r.idempotency_key)
                .ok_or_else(|| Status::invalid_argument("idempotency_key must be 16 bytes"))?
        };
        let raw = pb::DataRequest {
            request_id: request_id.as_bytes().to_vec(),
            subject: r.subject,
            service: service.to_string(),
            purpose: r.purpose,
            attributes: r.attributes,
            predicates: r.predicates,
        };
        let data_request: DataRequest = wire::data_request_from_pb(raw).map_err(|e| {
            self.shared
                .counter_table()
                .count(Reason::DataRequestInvalid);
            Status::invalid_argument(e.to_string())
        })?;
        let outcomes = self
            .shared
            .request_data(data_request)
            .await
            .map_err(|e| match e {
                ExchangeError::Invalid(e) => Status::invalid_argument(e.to_string()),
                other => Status::unavailable(other.to_string()),
            })?;
        let mut response = pb::RequestDataResponse {
            request_id: request_id.as_bytes().to_vec(),
            responses: Vec::new(),
            failures: Vec::new(),
        };
        for outcome in outcomes {
            match outcome {
                SourceOutcome::Answered(r) => {
                    response.responses.push(wire::data_response_to_pb(&r))
                }
                SourceOutcome::Failed {
                    source,
                    code,
                    reason,
                } => response.failures.push(pb::SourceFailure {
                    source: source.to_string(),
                    code: code.to_owned(),
                    reason,
                }),
            }
        }
        Ok(Response::new(response))
    }
}
