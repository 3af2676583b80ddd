use futures::FutureExt;
use futures::io::Cursor;
use request_response::Codec;

use super::*;
use crate::bundle::EnvelopeBytes;
use crate::genesis::NetworkId;

fn protocol() -> StreamProtocol {
    StreamProtocol::new(sync::PROTOCOL)
}

/// A framed push whose body is `len` bytes (`len` over 2 MiB).
fn framed_push(len: usize) -> Vec<u8> {
    // Variant, network, no records, one envelope, its 4-byte length, no
    // proofs, no versions.
    let overhead = 1 + 32 + 1 + 1 + 4 + 1 + 1;
    let push = sync::Request::Push {
        network: NetworkId([1; 32]),
        records: Vec::new(),
        envelopes: vec![EnvelopeBytes(vec![7; len - overhead])],
        proofs: Vec::new(),
        versions: Vec::new(),
    };
    let body = sync::encode_request(&push);
    assert_eq!(body.len(), len);
    let mut framed = (len as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed
}

#[test]
fn each_connection_gets_its_own_budget_and_its_streams_share_it() {
    let behaviour = SyncCodec::default();
    let connection = behaviour.clone();
    let stream = connection.clone();
    let other = behaviour.clone();
    let (Some(a), Some(b), Some(c)) = (&connection.budget, &stream.budget, &other.budget) else {
        panic!("every clone has a budget");
    };
    assert!(Arc::ptr_eq(a, b), "a connection's streams share its budget");
    assert!(!Arc::ptr_eq(a, c), "connections do not share a budget");
    assert_eq!(a.available_permits(), MAX_INBOUND_BYTES_PER_CONNECTION);
}

/// Issue 14, item 7: a peer opening many streams had every message on
/// them read and decoded at once. Now a connection has at most
/// MAX_INBOUND_BYTES_PER_CONNECTION bytes of requests in flight; the
/// next waits, unread, until an earlier one is answered.
#[test]
fn a_request_waits_until_the_connections_earlier_ones_are_answered() {
    // Reading a request starts a timer; nothing here waits on one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    let connection = SyncCodec::default().clone();
    let full = framed_push(MAX_MESSAGE_LEN);
    let per_connection = MAX_INBOUND_BYTES_PER_CONNECTION / MAX_MESSAGE_LEN;
    let mut answered = Vec::new();
    for _ in 0..per_connection {
        let mut stream = connection.clone();
        let read = stream
            .read_request(&protocol(), &mut Cursor::new(full.clone()))
            .now_or_never()
            .expect("read at once")
            .expect("read");
        assert!(matches!(read, WireRequest::Valid(_)), "read as invalid");
        answered.push(stream);
    }
    let mut waiting = connection.clone();
    let mut io = Cursor::new(full.clone());
    let sync_protocol = protocol();
    let mut read = Box::pin(waiting.read_request(&sync_protocol, &mut io));
    assert!(
        (&mut read).now_or_never().is_none(),
        "a request over the budget was read"
    );
    // One answer written gives its bytes back.
    let mut first = answered.remove(0);
    first
        .write_response(
            &protocol(),
            &mut Cursor::new(Vec::new()),
            sync::Response::Ack {
                accepted: 0,
                have: Vec::new(),
                frozen: Vec::new(),
            },
        )
        .now_or_never()
        .expect("written at once")
        .expect("written");
    let read = read.now_or_never().expect("read once the budget allows");
    assert!(matches!(read, Ok(WireRequest::Valid(_))), "read failed");
    // A dropped stream (unanswered) gives its bytes back too, and
    // another connection never waited on this one.
    let budget = connection.budget.clone().expect("a budget");
    let held = per_connection * MAX_MESSAGE_LEN;
    assert_eq!(
        budget.available_permits(),
        MAX_INBOUND_BYTES_PER_CONNECTION - held
    );
    drop(answered);
    assert_eq!(
        budget.available_permits(),
        MAX_INBOUND_BYTES_PER_CONNECTION - MAX_MESSAGE_LEN
    );
    let mut other = SyncCodec::default().clone();
    assert!(
        other
            .read_request(&protocol(), &mut Cursor::new(full))
            .now_or_never()
            .is_some()
    );
}
