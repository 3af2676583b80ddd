//! Crash durability: a real `concord run` takes a burst of writes from
//! several concurrent API clients (so group commit batches them) and is
//! killed with SIGKILL at a random moment, round after round on one data
//! directory. After every kill the store must reopen, hold every change
//! that was acknowledged to a writer, and verify.
//!
//! `CONCORD_CRASH_ROUNDS` sets the number of rounds (default 100; 1000 for a
//! long run), `CONCORD_CRASH_SEED` replays a run (the seed is printed).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_node::api::{AssessmentInput, Request, Response};
use rand::RngExt;
use support::Federation;
use support::process::{Api, Proc, seeded_rng};

/// Concurrent writers per round.
const WRITERS: usize = 4;
/// The kill comes this long (at most) after the writers start.
const MAX_KILL_DELAY_MS: u64 = 120;
const DEFAULT_ROUNDS: usize = 100;

/// Writes until the node stops answering; returns the ids acknowledged.
fn writer(api: Api, round: usize, writer: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        let request = Request::AddAssessment(AssessmentInput {
            category: "algorithmic-bias".into(),
            title: format!("round {round} writer {writer} write {i}"),
            status: "open".into(),
            ..AssessmentInput::default()
        });
        match api.call(&request) {
            Ok(Response::Written(w)) => acked.push(w.id),
            Ok(other) => panic!("unexpected answer {other:?}"),
            // The node was killed: this write is in doubt, not acknowledged.
            Err(_) => break,
        }
    }
    acked
}

/// Up to this many rounds every restart checks everything (the list of all
/// assessments and a full verify); longer runs do so every
/// [`FULL_CHECK_EVERY`] rounds and at the end, and check the last round's
/// writes one by one in between, since a full check grows with the store.
const FULL_CHECK_UP_TO: usize = 100;
const FULL_CHECK_EVERY: usize = 10;

/// The last round's acknowledged writes are there one by one; with `full`,
/// every acknowledged write is listed and the store verifies. Returns the
/// number of changes the node holds.
fn check(
    api: &Api,
    acked: &HashSet<String>,
    last_round: &[String],
    full: bool,
    round: usize,
    seed_note: &str,
) -> usize {
    for id in last_round {
        match api.call(&Request::ShowAssessment { id: id.clone() }) {
            Ok(Response::Assessment(_)) => {}
            other => panic!(
                "after kill {round}, acknowledged write {id} is missing: {other:?}; {seed_note}"
            ),
        }
    }
    let held = api.status().envelopes;
    assert!(
        held >= acked.len(),
        "after kill {round} the node holds {held} changes, fewer than the {} acknowledged; \
         {seed_note}",
        acked.len()
    );
    if !full {
        return held;
    }
    let listed: HashSet<String> = match api.call(&Request::ListAssessments {
        category: None,
        status: None,
    }) {
        Ok(Response::Assessments(list)) => list.into_iter().map(|a| a.id).collect(),
        other => panic!("list: {other:?}"),
    };
    let lost: Vec<&String> = acked.difference(&listed).collect();
    assert!(
        lost.is_empty(),
        "after kill {round}, {} acknowledged writes are missing (e.g. {:?}); {seed_note}",
        lost.len(),
        lost.iter().take(3).collect::<Vec<_>>()
    );
    match api.call(&Request::Verify) {
        Ok(Response::Audit(audit)) => {
            assert!(
                audit.ok && audit.problems.is_empty(),
                "after kill {round} the store does not verify: {:?}; {seed_note}",
                audit.problems
            );
        }
        other => panic!("verify: {other:?}"),
    }
    held
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let rounds: usize = std::env::var("CONCORD_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let mut rng = seeded_rng("CONCORD_CRASH_SEED");
    let seed_note = "replay with the seed printed above";
    let fed = Federation::new(&["A"], &[]);
    let dir = fed.nodes[0].dir();
    let started = Instant::now();
    let mut acked: HashSet<String> = HashSet::new();
    let mut corruptions = Vec::new();
    let mut in_doubt_kept = 0usize;
    let mut envelopes = 0;
    let mut last_round: Vec<String> = Vec::new();
    let mut full_checks = 0;
    for round in 0..=rounds {
        let node = match Proc::start(dir, &[]) {
            Ok(node) => node,
            Err(failure) => {
                // The store did not reopen: say so (and count it) rather
                // than hide it; a corrupt store is reported by the node.
                assert!(
                    failure.stderr.contains("corrupt"),
                    "the node does not restart after kill {round} (exit {:?}):\n{}\n{seed_note}",
                    failure.code,
                    failure.stderr
                );
                corruptions.push((round, failure.stderr));
                break;
            }
        };
        let api = node.api();
        let full = rounds <= FULL_CHECK_UP_TO || round % FULL_CHECK_EVERY == 0 || round == rounds;
        full_checks += usize::from(full);
        let now = check(&api, &acked, &last_round, full, round, seed_note);
        in_doubt_kept += now.saturating_sub(envelopes);
        if round == rounds {
            assert_eq!(node.stop(), Some(0), "the last start stops cleanly");
            envelopes = now;
            break;
        }
        let kill_after = Duration::from_millis(rng.random_range(0..=MAX_KILL_DELAY_MS));
        let results = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let api = api.clone();
                let results = Arc::clone(&results);
                std::thread::spawn(move || {
                    let ids = writer(api, round, w);
                    results.lock().expect("results").extend(ids);
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        node.kill();
        for w in writers {
            w.join().expect("writer");
        }
        let round_acked = std::mem::take(&mut *results.lock().expect("results"));
        envelopes = now + round_acked.len();
        acked.extend(round_acked.iter().cloned());
        last_round = round_acked;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "crash: {rounds} SIGKILLs in {elapsed:.1?}; {} acknowledged writes all kept; {} \
         unacknowledged writes found durable anyway; {} envelopes at the end; {} corrupt \
         stores; {full_checks} full checks",
        acked.len(),
        in_doubt_kept,
        envelopes,
        corruptions.len()
    );
    assert!(
        corruptions.is_empty(),
        "the store was reported corrupt after kill {}: {}\n{seed_note}",
        corruptions[0].0,
        corruptions[0].1
    );
    assert!(!acked.is_empty(), "the writers got no write through");
}

/// Flips bytes across the start of sled's data file, as a failing disk
/// might.
fn damage_store(dir: &std::path::Path) {
    let path = dir.join("store").join("db");
    let mut bytes = std::fs::read(&path).expect("read the store");
    for i in (100..bytes.len().min(4000)).step_by(7) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&path, bytes).expect("damage the store");
}

#[test]
fn a_corrupt_store_is_named_and_recovered_from_a_peer_without_forking() {
    let fed = Federation::new(&["A", "B"], &[]);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    for i in 0..3 {
        support::add_assessment(a, "algorithmic-bias", &format!("before the damage {i}"));
    }
    fed.exchange_all();
    assert_eq!(b.json(&["status"])["envelopes"], 3);
    damage_store(a.dir());

    // The node says what is wrong, where, and what to do; it changes nothing.
    let stderr = a.refuses(&["status"], "is corrupt");
    assert!(
        stderr.contains(&a.dir().join("store").display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("concord network recover"), "{stderr}");
    let genesis = support::path_str(&fed.genesis);
    b.refuses(&["network", "recover", genesis], "nothing to recover");

    // Recovery moves the store aside and starts empty, writes refused.
    let out = a.ok(&["network", "recover", genesis]);
    assert!(out.contains("store.corrupt-"), "{out}");
    let aside = std::fs::read_dir(a.dir())
        .expect("data dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.corrupt-")
        })
        .count();
    assert_eq!(aside, 1, "the corrupt store is kept aside");
    assert_eq!(a.json(&["status"])["envelopes"], 0);
    assert_eq!(a.json(&["status"])["resyncing"], true);
    let status = a.ok(&["status"]);
    assert!(status.contains("concord network resynced"), "{status}");

    // Sync refills it from B; until the operator says so it writes nothing,
    // so it cannot sign its change number 1 again.
    let node_b = Proc::start(b.dir(), &[]).expect("B starts");
    let b_status = node_b.api().status();
    let bootstrap = format!("{}/p2p/{}", b_status.listen[0], b_status.node_id);
    let node_a = Proc::start(a.dir(), &["--bootstrap", &bootstrap]).expect("A starts");
    let api_a = node_a.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api_a.status().envelopes < 3 {
        assert!(Instant::now() < deadline, "A did not re-sync from B");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = api_a
        .call(&Request::AddAssessment(AssessmentInput {
            category: "algorithmic-bias".into(),
            title: "too early".into(),
            status: "open".into(),
            ..AssessmentInput::default()
        }))
        .expect_err("refused while re-syncing");
    assert!(refused.contains("re-syncing"), "{refused}");
    assert!(
        api_a.status().resyncing,
        "the running node says it re-syncs"
    );
    assert_eq!(node_a.stop(), Some(0));
    a.ok(&["network", "resynced"]);
    assert_eq!(a.json(&["status"])["resyncing"], false);

    // A writes again, at change number 4, and B takes it: no fork.
    let node_a = Proc::start(a.dir(), &["--bootstrap", &bootstrap]).expect("A starts");
    let id = support::add_assessment(a, "algorithmic-bias", "after the recovery");
    let api_b = node_b.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api_b.status().envelopes < 4 {
        assert!(Instant::now() < deadline, "B did not take A's new change");
        std::thread::sleep(Duration::from_millis(50));
    }
    match api_b.call(&Request::Verify) {
        Ok(Response::Audit(audit)) => {
            assert!(audit.ok && audit.forks.is_empty(), "{audit:?}");
        }
        other => panic!("verify: {other:?}"),
    }
    match api_b.call(&Request::ShowAssessment { id }) {
        Ok(Response::Assessment(view)) => assert_eq!(view.title, "after the recovery"),
        other => panic!("show: {other:?}"),
    }
    assert_eq!(node_a.stop(), Some(0));
    assert_eq!(node_b.stop(), Some(0));
}
