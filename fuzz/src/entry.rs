//! Fuzz entry points: one function per target, each taking the bytes a peer
//! or a file could supply and running them through the node's own decoders,
//! checks and ingest path.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and the stable
//! replay of the committed corpus (`tests/tests/fuzz_corpus.rs`, which
//! includes this file by path), so a crash found by the fuzzer replays on
//! stable in `cargo test --workspace`.
//!
//! Every entry returns `Ok` when the input was accepted and `Err` with the
//! node's error message when it was refused. It panics only when the node
//! does, or when an oracle fails: a value that decodes must encode and decode
//! back to itself. The targets that reach a replica run against a small
//! deterministic network (four fixed keys, a genesis, a few signed changes)
//! kept in a temporary directory; no entry opens a socket.

use std::cell::RefCell;
use std::fmt::Display;
use std::sync::OnceLock;

use concord_node::Replica;
use concord_node::bundle::{Bundle, EnvelopeBytes};
use concord_node::config::{Config, DataDir};
use concord_node::doc::{Document, NewAssessment, NewNote};
use concord_node::envelope::{Envelope, change_header};
use concord_node::genesis::{Genesis, GenesisBody};
use concord_node::governance::{Body, Op, Record, Seen};
use concord_node::identity::Identity;
use concord_node::model::{NoteKind, Status};
use concord_node::roster::{Role, RosterEntry};
use concord_node::sync::{self, ChainTip, Request, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every target, by the name of its cargo-fuzz binary and corpus folder.
pub const TARGETS: [&str; 9] = [
    "envelope",
    "sync_request",
    "sync_response",
    "record",
    "genesis",
    "bundle",
    "import",
    "ingest",
    "ingest_signed",
];

/// What an entry did with its input: `Err` holds the refusal's message.
pub type Outcome = Result<(), String>;

/// Runs `data` through the entry named `target`; `None` for an unknown name.
pub fn run(target: &str, data: &[u8]) -> Option<Outcome> {
    let entry: fn(&[u8]) -> Outcome = match target {
        "envelope" => envelope,
        "sync_request" => sync_request,
        "sync_response" => sync_response,
        "record" => record,
        "genesis" => genesis,
        "bundle" => bundle,
        "import" => import,
        "ingest" => ingest,
        "ingest_signed" => ingest_signed,
        _ => return None,
    };
    Some(entry(data))
}

fn refused(e: impl Display) -> String {
    e.to_string()
}

/// An envelope as it arrives from a peer or a bundle: decode, check the
/// signature against the fixture network, and read the change header the
/// ingest path follows before any signature is checked.
pub fn envelope(data: &[u8]) -> Outcome {
    // The header reader runs before any signature check, on whatever follows
    // the envelope's 97-byte header (version, key, signature).
    let _ = change_header(data.get(97..).unwrap_or_default());
    let envelope = Envelope::decode(data).map_err(refused)?;
    assert_eq!(
        envelope.encode(),
        data,
        "a decoded envelope re-encodes as its bytes"
    );
    change_header(envelope.change_bytes()).map_err(refused)?;
    envelope.verify(net().genesis.network_id()).map_err(refused)
}

/// A sync request body as the network layer hands it over.
pub fn sync_request(data: &[u8]) -> Outcome {
    let request = sync::decode_request(data).map_err(refused)?;
    let again = sync::decode_request(&sync::encode_request(&request)).map_err(refused)?;
    assert_eq!(again, request, "a decoded request round-trips");
    if let Request::Pull { have, .. } = &request {
        let tips = sync::tips_from_wire(have);
        assert!(tips.len() <= have.len());
        let _ = sync::lacking(&tips, &sync::Tips::new());
    }
    Ok(())
}

/// A sync response body as the network layer hands it over.
pub fn sync_response(data: &[u8]) -> Outcome {
    let response = sync::decode_response(data).map_err(refused)?;
    let again = sync::decode_response(&sync::encode_response(&response)).map_err(refused)?;
    assert_eq!(again, response, "a decoded response round-trips");
    Ok(())
}

/// A roster record: decode (which verifies its signatures) and check it
/// names the fixture network.
pub fn record(data: &[u8]) -> Outcome {
    let record = Record::decode(data).map_err(refused)?;
    let again = Record::decode(&record.encode()).map_err(refused)?;
    assert_eq!(again, record, "a decoded record round-trips");
    record
        .check_network(net().genesis.network_id())
        .map_err(refused)
}

/// A genesis file (`concord network join FILE`), and the same bytes read as
/// a genesis body signed afresh by a fixture key: the signature keeps
/// arbitrary bodies away from the validation behind it, so the second half
/// reaches it with any roster, name and quorum the fuzzer finds. Accepted
/// when either half accepts.
pub fn genesis(data: &[u8]) -> Outcome {
    let file = Genesis::decode(data).map(|genesis| {
        let again = Genesis::decode(&genesis.encode()).expect("a decoded genesis re-encodes");
        assert_eq!(again, genesis, "a decoded genesis round-trips");
        assert!(
            genesis.roster().members().count() > 0,
            "a valid genesis has a member"
        );
    });
    let Ok((body, _)) = postcard::take_from_bytes::<GenesisBody>(data) else {
        return file.map_err(refused);
    };
    let made = Genesis::create(
        &net().keys[0],
        &body.name,
        body.roster,
        Some(body.quorum),
        body.created_at_ms,
    )
    .map(|made| {
        let decoded = Genesis::decode(&made.encode()).expect("a created genesis decodes");
        assert_eq!(decoded, made, "a created genesis round-trips");
        assert!(
            made.roster().members().count() > 0,
            "a created genesis has a member"
        );
    });
    match (file, made) {
        (Ok(()), _) | (_, Ok(())) => Ok(()),
        (Err(file), Err(body)) => Err(format!("as a file: {file}; as a body: {body}")),
    }
}

/// A bundle file's bytes, decoded only (the `import` target applies them).
pub fn bundle(data: &[u8]) -> Outcome {
    let bundle = Bundle::decode(data).map_err(refused)?;
    let again = Bundle::decode(&bundle.encode()).map_err(refused)?;
    assert_eq!(again, bundle, "a decoded bundle round-trips");
    Ok(())
}

/// `concord import FILE` on the fixture node: decode the bundle, check its
/// genesis, add its roster records, verify and apply its envelopes.
pub fn import(data: &[u8]) -> Outcome {
    with_fixture(|replica| {
        replica.import(data).map_err(refused)?;
        read_everything(replica);
        Ok(())
    })
}

/// A sync request from a peer, handled as the node's event loop handles it:
/// a `Pull` is answered from the store; a `Push`'s records are added, then
/// its envelopes decoded, verified and applied. The request's network id is
/// not compared with ours (the node refuses another network's request at
/// once), so mutated envelopes reach the checks behind it.
pub fn ingest(data: &[u8]) -> Outcome {
    let request = sync::decode_request(data).map_err(refused)?;
    with_fixture(|replica| match request {
        Request::Pull { have, frozen, .. } => {
            let theirs = sync::tips_from_wire(&have);
            let their_frozen = concord_node::fork::frozen_from_wire(&frozen);
            // As the engine does: whether to pull from them in turn, and
            // what to answer.
            let _ = sync::lacking(&theirs, &replica.counting_tips());
            replica
                .proofs_for(&their_frozen, sync::RESPONSE_TARGET_LEN)
                .map_err(refused)?;
            replica
                .versions_for(&have, sync::RESPONSE_TARGET_LEN)
                .map_err(refused)?;
            let (envelopes, _more) = replica
                .changes_for(&theirs, &their_frozen, sync::RESPONSE_TARGET_LEN)
                .map_err(refused)?;
            for wire in &envelopes {
                Envelope::decode(&wire.0).expect("a stored envelope decodes");
            }
            Ok(())
        }
        Request::Push {
            records,
            envelopes,
            proofs,
            versions,
            ..
        } => {
            replica.add_records(&records).map_err(refused)?;
            replica.adopt_proofs(&proofs).map_err(refused)?;
            replica.take_versions(&versions).map_err(refused)?;
            replica.ingest_wire(&envelopes).map_err(refused)?;
            read_everything(replica);
            Ok(())
        }
    })
}

/// What `ingest_signed` reads: roster record bodies and change chunk data,
/// which the entry signs with the fixture's keys before handing them over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Signed {
    /// Signed by the fixture keys each body names; a body naming a key the
    /// fixture does not hold refuses the whole input.
    pub records: Vec<Body>,
    /// (signer index into the fixture's keys, chunk data after the header).
    pub changes: Vec<(u8, Vec<u8>)>,
}

/// Authenticated garbage: what a member (or a stolen member key) could send.
/// The fuzzer's bytes become records and Automerge changes that carry valid
/// signatures, so they get past the signature checks to governance, the
/// Automerge parser, the chain checks and `apply`. The chunk header (length
/// and checksum) is written here, so mutations of the change data are not
/// all refused for a bad checksum.
pub fn ingest_signed(data: &[u8]) -> Outcome {
    let (signed, _) = postcard::take_from_bytes::<Signed>(data).map_err(refused)?;
    let keys = &net().keys;
    let network = net().genesis.network_id();
    let mut records = Vec::with_capacity(signed.records.len());
    for body in signed.records {
        let signers: Option<Vec<&Identity>> = body
            .signers()
            .iter()
            .map(|k| keys.iter().find(|i| i.public() == *k))
            .collect();
        let Some(signers) = signers else {
            return Err("a record names a key the fixture does not hold".into());
        };
        let record = Record::sign(body, &signers).map_err(refused)?;
        records.push(EnvelopeBytes(record.encode()));
    }
    let mut envelopes = Vec::with_capacity(signed.changes.len());
    for (signer, data) in signed.changes {
        let signer = &keys[usize::from(signer) % keys.len()];
        let envelope = Envelope::sign(signer, network, chunk(&data)).map_err(refused)?;
        envelopes.push(EnvelopeBytes(envelope.encode()));
    }
    with_fixture(|replica| {
        replica.add_records(&records).map_err(refused)?;
        replica.ingest_wire(&envelopes).map_err(refused)?;
        read_everything(replica);
        Ok(())
    })
}

/// Every read a node serves over what it just accepted: the register and
/// the dialogue, each item's history, the briefing as Markdown and HTML,
/// the checkpoints. Whatever a member signs and the checks let in must
/// render: a panic here is a finding (a year-10000 time once panicked
/// every node on its first read).
fn read_everything(replica: &mut Replica) {
    use concord_node::replica::AssessmentFilter;
    let mut ids = Vec::new();
    if let Ok(assessments) = replica.assessments(&AssessmentFilter::default()) {
        ids.extend(assessments.into_iter().map(|a| a.id));
    }
    if let Ok(notes) = replica.notes() {
        ids.extend(notes.into_iter().map(|n| n.id));
    }
    for id in &ids {
        let _ = replica.history(id);
    }
    let _ = replica.categories();
    let _ = replica.checkpoints();
    if let Ok(briefing) = replica.briefing(None, None) {
        concord_node::report::to_markdown(&briefing.report);
        concord_node::report::to_html(&briefing.report);
    }
}

/// An uncompressed Automerge change chunk around `data`: magic, checksum
/// (the first four bytes of the change hash), type 1, LEB128 length, data.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut len = Vec::new();
    let mut n = data.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            len.push(byte);
            break;
        }
        len.push(byte | 0x80);
    }
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(&len);
    hasher.update(data);
    let hash: [u8; 32] = hasher.finalize().into();
    let mut out = Vec::with_capacity(9 + len.len() + data.len());
    out.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83]);
    out.extend_from_slice(&hash[..4]);
    out.push(1);
    out.extend_from_slice(&len);
    out.extend_from_slice(data);
    out
}

/// The change data of a chunk (what [`chunk`] wraps): after the nine header
/// bytes and the LEB128 length.
pub fn chunk_data(chunk: &[u8]) -> &[u8] {
    let rest = &chunk[9..];
    let len_bytes = rest.iter().take_while(|b| **b & 0x80 != 0).count() + 1;
    &rest[len_bytes..]
}

/// The fixture network: four fixed keys (three members and an observer), a
/// genesis founded by the first, and changes signed by the second and third.
#[derive(Debug)]
pub struct Net {
    /// Founder (the fixture node's own key), two more members, an observer.
    pub keys: Vec<Identity>,
    pub genesis: Genesis,
    /// Member 2's assessment, member 2's comment on it, member 3's note.
    pub changes: Vec<Envelope>,
    /// Member 1 proposes admitting a fifth key; member 2 approves.
    pub records: Vec<Record>,
}

/// When the fixture network was founded (fixed, so every run builds the
/// same bytes and the committed corpus stays meaningful).
const FOUNDED_MS: i64 = 1_750_000_000_000;

/// The fixture network, built once per process.
pub fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(build_net)
}

fn build_net() -> Net {
    let keys: Vec<Identity> = (1..=4u8).map(|n| Identity::from_secret([n; 32])).collect();
    let names = ["Fuzz One", "Fuzz Two", "Fuzz Three", "Fuzz Observer"];
    let roster = keys
        .iter()
        .zip(names)
        .enumerate()
        .map(|(i, (key, name))| RosterEntry {
            key: key.public(),
            name: name.into(),
            role: if i == 3 { Role::Observer } else { Role::Member },
        })
        .collect();
    let genesis = Genesis::create(&keys[0], "Fuzz network", roster, None, FOUNDED_MS)
        .expect("the fixture genesis is valid");
    let network = genesis.network_id();

    let mut two = Document::new(keys[1].public());
    let assessment = NewAssessment {
        category: "algorithmic-bias".into(),
        title: "Fuzzed title".into(),
        summary: "A summary".into(),
        likelihood: None,
        severity: None,
        mitigations: vec!["one".into()],
        status: Status::Open,
    };
    let first = two
        .add_assessment("ra-fuzz", &assessment, FOUNDED_MS + 1)
        .expect("add assessment");
    let second = two
        .comment("ra-fuzz", "a comment", FOUNDED_MS + 2)
        .expect("comment");
    let mut three = Document::new(keys[2].public());
    three
        .apply(vec![first.clone(), second.clone()])
        .expect("apply");
    let note = NewNote {
        topic: "Topic".into(),
        body: "Body".into(),
        kind: NoteKind::Consensus,
        round: None,
        assessments: vec!["ra-fuzz".into()],
    };
    let third = three
        .add_note("cn-fuzz", &note, FOUNDED_MS + 3)
        .expect("add note");
    let changes = [(&keys[1], first), (&keys[1], second), (&keys[2], third)]
        .into_iter()
        .map(|(key, change)| {
            Envelope::sign(key, network, change.raw_bytes().to_vec()).expect("sign")
        })
        .collect();

    let fifth = Identity::from_secret([5; 32]).public();
    let propose = Record::sign(
        Body::Propose {
            network,
            proposer: keys[0].public(),
            after: None,
            op: Op::Add {
                key: fifth,
                name: "Fuzz Five".into(),
                role: Role::Member,
            },
            seen: Seen::default(),
            at_ms: FOUNDED_MS + 4,
        },
        &[&keys[0]],
    )
    .expect("propose");
    let approve = Record::sign(
        Body::Approve {
            network,
            approver: keys[1].public(),
            proposal: propose.id(),
            seen: Seen::default(),
            at_ms: FOUNDED_MS + 5,
        },
        &[&keys[1]],
    )
    .expect("approve");
    Net {
        keys,
        genesis,
        changes,
        records: vec![propose, approve],
    }
}

/// A node of the fixture network in a temporary data directory: it holds
/// the genesis and member 2's first change.
struct Fixture {
    replica: Replica,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let net = net();
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = DataDir::new(dir.path());
        net.keys[0]
            .save_new(&data.key_file())
            .expect("write the key");
        Config::new("Fuzz One")
            .expect("config")
            .write_new(&data.config_file())
            .expect("write the config");
        let mut replica = Replica::open(&data).expect("open the fixture node");
        replica.join(net.genesis.clone()).expect("join");
        replica.key_is_new().expect("the fixture's key is new");
        replica
            .ingest_wire(&[EnvelopeBytes(net.changes[0].encode())])
            .expect("the fixture's first change is accepted");
        Self { replica, _dir: dir }
    }

    /// What an input can change: the records, the chains and the changes
    /// that count. An input that changed none of them leaves the fixture as
    /// it found it, so the next input may reuse it.
    fn state(&self) -> ([u8; 32], sync::Tips, usize) {
        (
            self.replica.records_digest(),
            self.replica.tips().clone(),
            self.replica.change_count(),
        )
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Runs `f` on a fixture node in its initial state: a node left changed by
/// an input is dropped and the next input gets a fresh one, so an input's
/// outcome never depends on the inputs before it.
fn with_fixture(f: impl FnOnce(&mut Replica) -> Outcome) -> Outcome {
    let mut fixture = FIXTURE
        .with(|cell| cell.borrow_mut().take())
        .unwrap_or_else(Fixture::new);
    let before = fixture.state();
    let outcome = f(&mut fixture.replica);
    // Automerge panicking inside `apply` is caught and the batch refused,
    // but it means the node's own checks (`opcheck`) let through a change
    // Automerge cannot take: in a release build it may instead corrupt the
    // document silently. So it is a finding.
    if let Err(message) = &outcome {
        assert!(
            !message.contains("automerge panicked while applying"),
            "the node's checks let through a change Automerge panics on: {message}"
        );
    }
    if fixture.state() == before {
        FIXTURE.with(|cell| *cell.borrow_mut() = Some(fixture));
    }
    outcome
}

/// Valid inputs for every target, built from the fixture network: the seed
/// corpus (written by `cargo run --example seeds`) and the inputs the replay
/// test expects to be accepted.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let net = net();
    let network = net.genesis.network_id();
    let wire = |e: &Envelope| EnvelopeBytes(e.encode());
    let records: Vec<EnvelopeBytes> = net
        .records
        .iter()
        .map(|r| EnvelopeBytes(r.encode()))
        .collect();
    let later: Vec<EnvelopeBytes> = net.changes[1..].iter().map(wire).collect();
    let have = vec![ChainTip {
        author: net.keys[1].public(),
        seq: 1,
        hash: net.changes[0].hash().0,
    }];
    let push = Request::Push {
        network,
        records: records.clone(),
        envelopes: later.clone(),
        proofs: Vec::new(),
        versions: Vec::new(),
    };
    let pull = Request::Pull {
        network,
        have: have.clone(),
        records: [0; 32],
        frozen: Vec::new(),
    };
    let pull_nothing = Request::Pull {
        network,
        have: Vec::new(),
        records: [0; 32],
        frozen: Vec::new(),
    };
    let bundle = Bundle {
        genesis: net.genesis.encode(),
        records: records.clone(),
        envelopes: net.changes.iter().map(wire).collect(),
    }
    .encode();
    let signed = Signed {
        records: net.records.iter().map(|r| r.body().clone()).collect(),
        changes: net.changes[1..]
            .iter()
            .map(|e| {
                let signer = net
                    .keys
                    .iter()
                    .position(|k| k.public() == e.author())
                    .expect("signed by a fixture key");
                (signer as u8, chunk_data(e.change_bytes()).to_vec())
            })
            .collect(),
    };
    let mut seeds = Vec::new();
    for envelope in &net.changes {
        seeds.push(("envelope", envelope.encode()));
    }
    seeds.push(("sync_request", sync::encode_request(&push)));
    seeds.push(("sync_request", sync::encode_request(&pull)));
    for response in [
        Response::Changes {
            records: records.clone(),
            envelopes: later.clone(),
            more: true,
            have: have.clone(),
            frozen: Vec::new(),
            proofs: Vec::new(),
            versions: Vec::new(),
        },
        Response::Ack {
            accepted: 2,
            have,
            frozen: Vec::new(),
        },
        Response::Refused {
            reason: "wrong network".into(),
        },
    ] {
        seeds.push(("sync_response", sync::encode_response(&response)));
    }
    for record in &records {
        seeds.push(("record", record.0.clone()));
    }
    seeds.push(("genesis", net.genesis.encode()));
    seeds.push((
        "genesis",
        postcard::to_stdvec(net.genesis.body()).expect("encode a genesis body"),
    ));
    seeds.push(("bundle", bundle.clone()));
    seeds.push(("import", bundle));
    seeds.push(("ingest", sync::encode_request(&push)));
    seeds.push(("ingest", sync::encode_request(&pull)));
    seeds.push(("ingest", sync::encode_request(&pull_nothing)));
    seeds.push((
        "ingest_signed",
        postcard::to_stdvec(&signed).expect("encode signed input"),
    ));
    seeds
}
