//! The framing of `/mim4/envelope/1`: one request and one response per
//! stream, each a 4-byte big-endian length and an encoded protobuf message.
//!
//! The length is checked against the node's limits before a byte of the body
//! is read, so an oversized frame costs the receiver four bytes of reading:
//! a request says so in [`Inbound::Oversized`] (the driver answers it with a
//! refusal), a response is an I/O error.
//!
//! After the refusal of an oversized request the stream is *reset*, not
//! closed: the sender may still be writing the body and, with no flow-control
//! credit left (the node reads no more of it), would otherwise wait forever.
//! The refusal is written and flushed first, so the sender can read it.

use std::io;

use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use mim4_proto::v1 as pb;
use prost::Message as _;

/// The protocol name of envelope exchange between operators.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/mim4/envelope/1");

/// Bytes of the length prefix.
const PREFIX_BYTES: usize = 4;

/// A request as read from a stream: decoded, or refused from its header.
#[derive(Debug)]
pub enum Inbound {
    /// A well-formed request.
    Request(pb::PeerRequest),
    /// The frame announced more bytes than the limit; its body was not read.
    Oversized {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a `PeerRequest`.
    Malformed(String),
}

/// Encodes and decodes frames within the given limits.
#[derive(Clone, Copy, Debug)]
pub struct Codec {
    /// Largest request body (an envelope plus its framing).
    pub request_bytes_max: usize,
    /// Largest response body (a trust list is the largest answer).
    pub response_bytes_max: usize,
}

/// Reads a length prefix and returns the announced length.
async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut prefix = [0u8; PREFIX_BYTES];
    io.read_exact(&mut prefix).await?;
    usize::try_from(u32::from_be_bytes(prefix))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length overflows usize"))
}

/// Reads exactly `len` bytes of body.
async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

/// The refusal reason of a frame longer than the limit.
pub const OVERSIZED_REASON: &str = crate::core::reason::Reason::Oversized.as_str();

/// Writes one frame and closes the writing half.
async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    body: &[u8],
    max: usize,
) -> io::Result<()> {
    write_prefixed(io, body, max).await?;
    io.close().await
}

/// Writes one frame (length and body).
async fn write_prefixed<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    body: &[u8],
    max: usize,
) -> io::Result<()> {
    if body.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the limit of {max}", body.len()),
        ));
    }
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = pb::PeerResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Inbound>
    where
        T: AsyncRead + Unpin + Send,
    {
        let len = read_len(io).await?;
        if len > self.request_bytes_max {
            return Ok(Inbound::Oversized {
                len,
                max: self.request_bytes_max,
            });
        }
        let body = read_body(io, len).await?;
        Ok(match pb::PeerRequest::decode(body.as_slice()) {
            Ok(request) => Inbound::Request(request),
            Err(e) => Inbound::Malformed(e.to_string()),
        })
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<pb::PeerResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let len = read_len(io).await?;
        if len > self.response_bytes_max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "response frame of {len} bytes exceeds the limit of {}",
                    self.response_bytes_max
                ),
            ));
        }
        let body = read_body(io, len).await?;
        pb::PeerResponse::decode(body.as_slice())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Inbound,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Inbound::Request(request) = request else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only decoded requests are sent",
            ));
        };
        write_frame(io, &request.encode_to_vec(), self.request_bytes_max).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: pb::PeerResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let unread_body = matches!(
            &response.kind,
            Some(pb::peer_response::Kind::Refusal(r)) if r.reason == OVERSIZED_REASON
        );
        if unread_body {
            write_prefixed(io, &response.encode_to_vec(), self.response_bytes_max).await?;
            io.flush().await?;
            // An error makes request-response drop the stream unclosed, which
            // resets it (see the module documentation).
            return Err(io::Error::other(
                "oversized request refused from its header; stream reset",
            ));
        }
        write_frame(io, &response.encode_to_vec(), self.response_bytes_max).await
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;
    use proptest::prelude::*;

    use super::*;

    const CODEC: Codec = Codec {
        request_bytes_max: 1024,
        response_bytes_max: 4096,
    };

    fn read_request(bytes: &[u8]) -> io::Result<Inbound> {
        let mut codec = CODEC;
        let mut io = futures::io::Cursor::new(bytes.to_vec());
        block_on(codec.read_request(&PROTOCOL, &mut io))
    }

    fn write_request(request: pb::PeerRequest) -> Vec<u8> {
        let mut codec = CODEC;
        let mut io = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_request(&PROTOCOL, &mut io, Inbound::Request(request))).unwrap();
        io.into_inner()
    }

    fn deliver(envelope: Vec<u8>) -> pb::PeerRequest {
        pb::PeerRequest {
            kind: Some(pb::peer_request::Kind::Deliver(pb::DeliverRequest {
                envelope,
            })),
        }
    }

    /// A frame announcing more than the limit is refused from its header:
    /// the body is never read (here it is not even there).
    #[test]
    fn an_oversized_header_is_refused_without_the_body() {
        let header = 5_000u32.to_be_bytes();
        match read_request(&header).unwrap() {
            Inbound::Oversized { len, max } => assert_eq!((len, max), (5_000, 1024)),
            other => panic!("{other:?}"),
        }
    }

    /// A truncated body is an I/O error, a body that is not a `PeerRequest`
    /// is `Malformed`, and the node's codec never writes a frame over its limit.
    #[test]
    fn truncated_malformed_and_too_long_frames() {
        let mut frame = write_request(deliver(vec![7; 100]));
        frame.truncate(frame.len() - 1);
        assert!(read_request(&frame).is_err());
        let garbage = [&8u32.to_be_bytes()[..], &[0xff; 8]].concat();
        assert!(matches!(
            read_request(&garbage).unwrap(),
            Inbound::Malformed(_)
        ));
        let mut codec = CODEC;
        let mut io = futures::io::Cursor::new(Vec::new());
        let too_long = block_on(codec.write_request(
            &PROTOCOL,
            &mut io,
            Inbound::Request(deliver(vec![0; 2048])),
        ));
        assert!(too_long.is_err());
        assert!(io.into_inner().is_empty(), "nothing written");
    }

    proptest! {
        /// Any bytes are read as a request, an oversized or malformed frame,
        /// or an I/O error: never a panic, never more than the limit buffered.
        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            match read_request(&bytes) {
                Ok(Inbound::Request(request)) => {
                    prop_assert!(request.encoded_len() <= CODEC.request_bytes_max);
                }
                Ok(Inbound::Oversized { len, max }) => prop_assert!(len > max),
                Ok(Inbound::Malformed(_)) | Err(_) => {}
            }
        }

        /// What the codec writes, it reads back unchanged.
        #[test]
        fn written_requests_read_back(envelope in proptest::collection::vec(any::<u8>(), 0..900)) {
            let request = deliver(envelope);
            match read_request(&write_request(request.clone())).unwrap() {
                Inbound::Request(read) => prop_assert_eq!(read, request),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
