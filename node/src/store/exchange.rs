//! Data exchange: the responses this node served as a holder (`served`, so
//! a repeated request gets the same answer), the responses it received as a
//! requester (`received`), and each data request's state (`request_states`).
//!
//! Responses are sealed under their subject's data key, so erasing the
//! subject erases them; request states hold ids, states and times only, and
//! are kept in clear.

use prost::Message as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::subjects::{TAG_RECEIVED, TAG_SERVED};
use super::{decode, encode, Error, Result, Store};
use crate::core::consent::SubjectId;
use crate::core::exchange::DataResponse;
use crate::core::ids::{MessageId, OperatorId};
use crate::core::wire;

/// The life of a data request, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestState {
    /// Received or sent, not yet decided.
    Requested,
    /// Consent checked per attribute; reading what is allowed.
    Authorised,
    /// Something was released or answered.
    Fulfilled,
    /// Everything was withheld.
    Denied,
    /// A source failed or could not be reached.
    Failed,
}

impl Store {
    /// The response already given to `requester` for `request_id` (none
    /// either if there is none or if its subject was erased).
    pub fn served(
        &self,
        requester: &OperatorId,
        request_id: &MessageId,
    ) -> Result<Option<DataResponse>> {
        let key = served_key(requester, request_id);
        let Some(sealed) = self.served.get(&key)? else {
            return Ok(None);
        };
        self.open_record(TAG_SERVED, &key, &sealed)?
            .map(|bytes| served_from_bytes(&bytes))
            .transpose()
    }

    /// Stores the response given to `requester` about `subject`, encrypted
    /// with the subject's data key (call [`Store::durable`] before sending it).
    pub fn put_served(
        &self,
        requester: &OperatorId,
        subject: &SubjectId,
        response: &DataResponse,
    ) -> Result<()> {
        let key = served_key(requester, &response.request_id);
        let plain = Zeroizing::new(served_bytes(response));
        self.put_record(TAG_SERVED, &key, subject, &plain)
    }

    /// The responses received for a request made by this node (none either if
    /// there are none or if their subject was erased).
    pub fn received(&self, request_id: &MessageId) -> Result<Option<Vec<DataResponse>>> {
        let Some(sealed) = self.received.get(request_id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.open_record(TAG_RECEIVED, request_id.as_bytes(), &sealed)? else {
            return Ok(None);
        };
        received_from_bytes(&bytes).map(Some)
    }

    /// Stores the responses received for a request about `subject` (each
    /// value keeps its consent id), encrypted with the subject's data key.
    pub fn put_received(
        &self,
        request_id: &MessageId,
        subject: &SubjectId,
        responses: &[DataResponse],
    ) -> Result<()> {
        let plain = Zeroizing::new(received_bytes(responses));
        self.put_record(TAG_RECEIVED, request_id.as_bytes(), subject, &plain)
    }

    /// Records a data request's state: `side` is `requester` or `holder`,
    /// `state` one of requested, authorised, fulfilled, denied, failed.
    pub fn set_request_state(
        &self,
        side: &str,
        request_id: &MessageId,
        state: RequestState,
        at_ms: u64,
    ) -> Result<()> {
        self.request_states.insert(
            request_state_key(side, request_id),
            encode(&(state, at_ms))?,
        )?;
        Ok(())
    }

    /// A data request's last recorded state and when it was recorded.
    pub fn request_state(
        &self,
        side: &str,
        request_id: &MessageId,
    ) -> Result<Option<(RequestState, u64)>> {
        self.request_states
            .get(request_state_key(side, request_id))?
            .map(|bytes| decode("request_states", &bytes))
            .transpose()
    }
}

fn served_key(requester: &OperatorId, request_id: &MessageId) -> Vec<u8> {
    let mut key = requester.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

fn request_state_key(side: &str, request_id: &MessageId) -> Vec<u8> {
    let mut key = side.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// A served response as stored: the prost `DataResponse`.
pub(super) fn served_bytes(response: &DataResponse) -> Vec<u8> {
    wire::data_response_to_pb(response).encode_to_vec()
}

/// Decodes a stored served response ([`served_bytes`]).
pub(super) fn served_from_bytes(bytes: &[u8]) -> Result<DataResponse> {
    response_from_pb("served", decode_pb("served", bytes)?)
}

/// The responses received for one request as stored: the prost `ReceivedData`.
pub(super) fn received_bytes(responses: &[DataResponse]) -> Vec<u8> {
    mim4_proto::v1::ReceivedData {
        responses: responses.iter().map(wire::data_response_to_pb).collect(),
    }
    .encode_to_vec()
}

/// Decodes stored received responses ([`received_bytes`]).
pub(super) fn received_from_bytes(bytes: &[u8]) -> Result<Vec<DataResponse>> {
    let list: mim4_proto::v1::ReceivedData = decode_pb("received", bytes)?;
    list.responses
        .into_iter()
        .map(|raw| response_from_pb("received", raw))
        .collect()
}

fn decode_pb<T: prost::Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::Corrupt {
        tree,
        reason: e.to_string(),
    })
}

fn response_from_pb(tree: &'static str, raw: mim4_proto::v1::DataResponse) -> Result<DataResponse> {
    wire::data_response_from_pb(raw).map_err(|reason| Error::Corrupt {
        tree,
        reason: reason.to_string(),
    })
}
