//! The libp2p `/mim4/envelope/1` frame reader: a length prefix checked
//! against the limit before the body is read, then a `PeerRequest`.
//!
//! Invariants: nothing panics; an oversized frame is reported from its
//! header alone; a request that decodes is within the limit and re-encodes
//! to a frame the reader accepts again.

#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec as _;
use mim4_node::transport::p2p::codec::{Codec, Inbound, PROTOCOL};

const CODEC: Codec = Codec {
    request_bytes_max: 64 * 1024,
    response_bytes_max: 64 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let mut codec = CODEC;
    let mut io = futures::io::Cursor::new(data.to_vec());
    match block_on(codec.read_request(&PROTOCOL, &mut io)) {
        Ok(Inbound::Request(request)) => {
            let mut out = futures::io::Cursor::new(Vec::new());
            block_on(codec.write_request(&PROTOCOL, &mut out, Inbound::Request(request.clone())))
                .expect("a request read within the limit is written again");
            let mut again = futures::io::Cursor::new(out.into_inner());
            match block_on(codec.read_request(&PROTOCOL, &mut again)) {
                Ok(Inbound::Request(read)) => assert_eq!(read, request),
                other => panic!("re-read: {other:?}"),
            }
        }
        Ok(Inbound::Oversized { len, max }) => assert!(len > max),
        Ok(Inbound::Malformed(_)) | Err(_) => {}
    }
});
