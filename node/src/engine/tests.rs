use super::*;
use crate::config::DataDir;
use crate::identity::Identity;
use crate::roster::RosterEntry;

/// Records what the engine sends; peers are named by their keys.
#[derive(Debug, Default)]
struct Recorder {
    sent: Vec<(PublicKey, Purpose)>,
}

impl Transport for Recorder {
    type Peer = PublicKey;
    fn peer_of(key: &PublicKey) -> Option<PublicKey> {
        Some(*key)
    }
    fn send(&mut self, peer: PublicKey, purpose: Purpose, _request: sync::Request) {
        self.sent.push((peer, purpose));
    }
    fn disconnect(&mut self, _peer: PublicKey) {}
    fn allow(&mut self, _peer: PublicKey, _key: PublicKey) {}
    fn disallow(&mut self, _peer: PublicKey) {}
    fn changed(&mut self) {}
}

/// An engine for a fresh member of a two-member network, and the other
/// member's key.
fn engine(now: Instant) -> (tempfile::TempDir, Engine<Recorder>, PublicKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    Replica::init(&data, "Me").expect("init");
    let mut replica = Replica::open(&data).expect("open");
    let other = Identity::generate().expect("key").public();
    let roster = vec![RosterEntry {
        key: other,
        name: "Other".into(),
        role: Role::Member,
    }];
    replica
        .create_network("Engine test", roster, None)
        .expect("create");
    let engine = Engine::new(replica, Recorder::default(), now).expect("engine");
    (dir, engine, other)
}

#[test]
fn a_failed_pull_is_tried_again_soon_while_the_peer_stays_connected() {
    // Found by the simulation: a pull whose answer was lost waited for
    // the next periodic reconcile, so convergence after a heal could
    // take over a minute.
    let t0 = Instant::now();
    let (_dir, mut engine, other) = engine(t0);
    assert!(engine.connected(other, t0));
    assert_eq!(engine.transport().sent, vec![(other, Purpose::Pull)]);
    engine.handle_outcome(other, Purpose::Pull, Err("timed out".into()), t0);
    engine.tick(t0 + PULL_RETRY / 2);
    assert_eq!(engine.transport().sent.len(), 1, "retried too early");
    engine.tick(t0 + PULL_RETRY);
    assert_eq!(
        engine.transport().sent,
        vec![(other, Purpose::Pull), (other, Purpose::Pull)]
    );
    // Once the retry is under way, ticks do not pile more pulls on it.
    engine.tick(t0 + PULL_RETRY * 2);
    assert_eq!(engine.transport().sent.len(), 2);
    // A dropped peer is not pulled from.
    engine.handle_outcome(other, Purpose::Pull, Err("timed out".into()), t0);
    engine.disconnected(other);
    engine.tick(t0 + RECONCILE_EVERY * 2);
    assert_eq!(engine.transport().sent.len(), 2);
}

#[test]
fn a_stranger_is_refused_and_gets_nothing() {
    let t0 = Instant::now();
    let (_dir, mut engine, _) = engine(t0);
    let stranger = Identity::generate().expect("key").public();
    assert!(!engine.connected(stranger, t0));
    let pull = sync::Request::Pull {
        network: engine.network(),
        have: Vec::new(),
        records: [0; 32],
        frozen: Vec::new(),
    };
    let answer = engine.handle_request(stranger, pull, t0);
    assert!(
        matches!(&answer, sync::Response::Refused { reason } if reason == "not on the roster"),
        "{answer:?}"
    );
    assert!(engine.transport().sent.is_empty());
}

#[test]
fn chunks_stay_under_the_target_unless_one_envelope_is_larger() {
    let sizes = [3, 3, 3, 10, 1, 1, 5];
    let envelopes: Vec<EnvelopeBytes> = sizes.iter().map(|&n| EnvelopeBytes(vec![0; n])).collect();
    let chunks = chunks(&envelopes, 6);
    let lens: Vec<Vec<usize>> = chunks
        .iter()
        .map(|c| c.iter().map(|e| e.0.len()).collect())
        .collect();
    assert_eq!(
        lens,
        vec![vec![3, 3], vec![3], vec![10], vec![1, 1], vec![5]]
    );
    assert_eq!(
        chunks.iter().map(|c| c.len()).sum::<usize>(),
        envelopes.len()
    );
}
