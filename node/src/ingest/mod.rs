//! The one verification path every incoming change takes (bundle import now,
//! the network later), before anything is applied or stored.
//!
//! For a batch of envelopes it checks, in this order: the author is on the
//! roster as a member; the signature over (tag, network id, change hash)
//! verifies; only then does Automerge parse the change (under `catch_unwind`);
//! the parsed hash is the signed hash; the actor id is the author's key; the
//! author has not signed a different change with the same sequence number (a
//! fork); the change's predecessor in its author's chain and all its
//! dependencies are already stored or in the same batch; and every operation
//! is one Automerge could have made on Concord's document, against the batch
//! and the stored changes ([`opcheck`]).
//!
//! Pure: what the store holds comes in through [`Known`]; no IO here.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, Change, ChangeHash};

use crate::doc::{DocError, parse_change};
use crate::envelope::{ChangeHeader, Envelope, EnvelopeError, change_header};
use crate::genesis::NetworkId;
use crate::identity::PublicKey;
use crate::opcheck::{self, BadOp, OpIndex};
use crate::roster::{NotAuthorized, Roster};

/// What the store already holds, as the checks need it.
pub trait Known {
    fn has_change(&self, hash: &ChangeHash) -> bool;
    /// The hash of `author`'s change number `seq`, if stored.
    fn hash_at(&self, author: &PublicKey, seq: u64) -> Option<ChangeHash>;
    /// The dependencies, actor and seq of a stored change.
    fn header_of(&self, hash: &ChangeHash) -> Option<ChangeHeader>;
    /// Whether a stored change is rejected under the roster in force (its
    /// author's rights were revoked before it, or it builds on such a change).
    fn is_rejected(&self, _hash: &ChangeHash) -> bool {
        false
    }
    /// A stored change, parsed, for the operation checks ([`opcheck`]).
    /// Without it, a batch's operations may refer only to each other.
    fn change(&self, _hash: &ChangeHash) -> Option<Change> {
        None
    }
}

/// The stored changes as [`opcheck`] looks operations up in them: the
/// change holding an operation is found by its author's chain, whose start
/// ops grow with the sequence number. Rejected changes are not in the
/// document, so their operations are not found.
struct StoredOps<'a, K>(&'a K);

impl<K: Known> opcheck::Ops for StoredOps<'_, K> {
    fn change_with_op(&self, actor: &ActorId, counter: u64) -> Option<Change> {
        let bytes: [u8; 32] = actor.to_bytes().try_into().ok()?;
        let author = PublicKey::from_bytes(bytes).ok()?;
        // The change at `seq` and its start op.
        let at = |seq: u64| -> Option<(ChangeHash, u64)> {
            let hash = self.0.hash_at(&author, seq)?;
            Some((hash, self.0.header_of(&hash)?.start_op))
        };
        let holds = |seq: u64| at(seq).filter(|(_, start)| *start <= counter);
        // The last change whose start op is at most `counter`: double the
        // sequence number past it, then halve the gap. Chains have no gaps.
        let (mut below, mut above) = (1u64, 2u64);
        let mut hash = holds(below)?.0;
        while let Some((found, _)) = holds(above) {
            (below, hash) = (above, found);
            above = above.checked_mul(2)?;
        }
        while above - below > 1 {
            let mid = below + (above - below) / 2;
            match holds(mid) {
                Some((found, _)) => (below, hash) = (mid, found),
                None => above = mid,
            }
        }
        if self.0.is_rejected(&hash) {
            return None;
        }
        self.0.change(&hash)
    }
}

/// How many changes the walk looking for a change's predecessor may visit
/// before it gives up and refuses the change. An honest change's predecessor
/// is one of its dependencies or a few hops behind them.
const PREDECESSOR_WALK_MAX: usize = 100_000;

/// Why a batch was refused. Every variant names the change and its author.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("envelope #{index} is malformed: {source}")]
    Malformed {
        index: usize,
        #[source]
        source: EnvelopeError,
    },
    #[error("change {hash} is signed by {author}, a key that is not on the roster")]
    NotOnRoster { hash: ChangeHash, author: String },
    #[error("change {hash} by {name} is not accepted: {why}")]
    NotAuthorized {
        hash: ChangeHash,
        name: String,
        #[source]
        why: NotAuthorized,
    },
    #[error(
        "change {hash} by {name} builds on change {rejected}, which is rejected under the \
         roster in force"
    )]
    BuildsOnRejected {
        hash: ChangeHash,
        name: String,
        rejected: ChangeHash,
    },
    #[error("change {hash} is signed by observer {name} ({author}); observers cannot write")]
    Observer {
        hash: ChangeHash,
        author: String,
        name: String,
    },
    #[error("change {hash}: {source}")]
    Signature {
        hash: ChangeHash,
        #[source]
        source: EnvelopeError,
    },
    #[error("change {hash} by {author} is not a valid Automerge change: {source}")]
    Unparseable {
        hash: ChangeHash,
        author: String,
        #[source]
        source: Box<DocError>,
    },
    #[error("change {hash}: its actor id {actor} is not its signer's key {author}")]
    ActorMismatch {
        hash: ChangeHash,
        author: String,
        actor: String,
    },
    #[error(
        "fork: {} ({}) signed two different changes with sequence number {}: {} and {}; \
         the second is refused and kept as evidence",
        .0.name, .0.author, .0.seq, .0.existing, .0.conflicting
    )]
    Fork(Box<Fork>),
    #[error(
        "fork: {} ({}) signed yet another change with sequence number {}: {}; one proof of \
         its equivocation is kept already, so this one is not, and its sender is disconnected",
        .0.name, .0.author, .0.seq, .0.conflicting
    )]
    ForkAgain(Box<Fork>),
    #[error(
        "change {hash} by {name} holds {ops} operations in {bytes} bytes; Concord's own changes \
         never hold more operations than bytes, and each operation costs memory to check"
    )]
    TooManyOps {
        hash: ChangeHash,
        name: String,
        ops: usize,
        bytes: usize,
    },
    #[error(
        "change {hash} by {name} numbers its operations from {start}, but its dependency {dep} \
         already used numbers up to {dep_max}: Automerge numbers a change's operations after \
         everything it builds on, so this change reuses operation ids"
    )]
    OpsNotAfterDeps {
        hash: ChangeHash,
        name: String,
        start: u64,
        dep: ChangeHash,
        dep_max: u64,
    },
    #[error(
        "change {hash} by {name} depends on {missing}, which is neither stored nor in this batch"
    )]
    MissingDependency {
        hash: ChangeHash,
        name: String,
        missing: ChangeHash,
    },
    #[error(
        "change {hash} is {name}'s change number {seq}, but its change number {} is neither \
         stored nor in this batch", seq - 1
    )]
    MissingPredecessor {
        hash: ChangeHash,
        name: String,
        seq: u64,
    },
    #[error(
        "change {hash} is {name}'s change number {seq}, but it does not build on its change \
         number {}: an author's changes must form one chain", seq - 1
    )]
    BrokenChain {
        hash: ChangeHash,
        name: String,
        seq: u64,
    },
    #[error("change {} by {name} is not one Automerge could have made: {source}", .source.change)]
    BadOperation {
        name: String,
        #[source]
        source: BadOp,
    },
}

/// Two different changes signed by one author with one sequence number.
#[derive(Debug)]
pub struct Fork {
    pub author: String,
    pub name: String,
    pub seq: u64,
    /// The change already stored (or earlier in the batch).
    pub existing: ChangeHash,
    /// The change refused.
    pub conflicting: ChangeHash,
    /// The refused envelope, for the evidence record.
    pub evidence: Envelope,
}

/// How many more operations than bytes a change may hold (a change's
/// header alone is longer than this).
const OPS_OVER_BYTES: usize = 64;

/// The counter of a change's last operation (its start op less one if it
/// has none).
fn max_op(change: &Change) -> u64 {
    (change.start_op().get() + change.len() as u64).saturating_sub(1)
}

/// A change that passed every check.
#[derive(Debug)]
pub struct Accepted {
    pub envelope: Envelope,
    pub change: Change,
    pub seq: u64,
}

/// The outcome of checking a batch: the new changes, and how many were
/// already known (a batch may be imported twice; that is not an error).
#[derive(Debug, Default)]
pub struct Checked {
    pub accepted: Vec<Accepted>,
    pub already_known: usize,
    /// Indices into `accepted` whose own signature has not been checked yet:
    /// their author's signature on a later change vouches for their content,
    /// and the caller verifies them (see [`verify_rest`]) while it applies the
    /// batch, before anything is stored.
    pub unchecked: Vec<usize>,
}

/// Checks a batch of decoded envelopes. Refuses the whole batch on the first
/// problem, so the caller applies all of it or nothing.
pub fn check_batch(
    envelopes: Vec<Envelope>,
    network: NetworkId,
    roster: &Roster,
    known: &impl Known,
) -> Result<Checked, IngestError> {
    check_batch_indexed(envelopes, network, roster, known, &mut OpIndex::default())
}

/// [`check_batch`], with the operations of stored changes met by earlier
/// batches in `index`. The caller calls [`OpIndex::keep`] once the batch is
/// stored, and [`OpIndex::clear`] whenever it rebuilds the document.
pub fn check_batch_indexed(
    envelopes: Vec<Envelope>,
    network: NetworkId,
    roster: &Roster,
    known: &impl Known,
    index: &mut OpIndex,
) -> Result<Checked, IngestError> {
    let mut checked = Checked::default();
    let mut fresh = Vec::with_capacity(envelopes.len());
    let mut seen = HashSet::with_capacity(envelopes.len());
    for envelope in envelopes {
        if known.has_change(&envelope.hash()) || !seen.insert(envelope.hash()) {
            checked.already_known += 1;
            continue;
        }
        check_author(&envelope, roster)?;
        fresh.push(envelope);
    }
    let vouched = verify_signatures(&fresh, network)?;

    // Signatures hold: now Automerge may look at the bytes.
    let mut chain: HashMap<(PublicKey, u64), ChangeHash> = HashMap::new();
    let mut parsed = Vec::with_capacity(fresh.len());
    for envelope in fresh {
        let hash = envelope.hash();
        let author = envelope.author();
        let change =
            parse_change(envelope.change_bytes()).map_err(|source| IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(source),
            })?;
        if change.hash() != hash {
            return Err(IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(DocError::BadChange(
                    "Automerge computes a different hash".into(),
                )),
            });
        }
        // Automerge's columns run-length encode, so a few bytes can hold
        // any number of operations, and everything after this point costs
        // per operation. Concord's own changes carry at least a byte of key
        // or value per operation.
        let bytes = envelope.change_bytes().len();
        if change.len() > bytes + OPS_OVER_BYTES {
            return Err(IngestError::TooManyOps {
                hash,
                name: roster.display_name(&author),
                ops: change.len(),
                bytes,
            });
        }
        if change.actor_id().to_bytes() != author.as_bytes() {
            return Err(IngestError::ActorMismatch {
                hash,
                author: author.node_id().to_string(),
                actor: hex::encode(change.actor_id().to_bytes()),
            });
        }
        let seq = change.seq();
        if seq == 0 {
            return Err(IngestError::Unparseable {
                hash,
                author: author.node_id().to_string(),
                source: Box::new(DocError::BadChange("sequence number 0".into())),
            });
        }
        roster
            .may_write(&author, seq)
            .map_err(|why| IngestError::NotAuthorized {
                hash,
                name: roster.display_name(&author),
                why,
            })?;
        let existing = known
            .hash_at(&author, seq)
            .or_else(|| chain.get(&(author, seq)).copied());
        if let Some(existing) = existing.filter(|e| *e != hash) {
            return Err(IngestError::Fork(Box::new(Fork {
                author: author.node_id().to_string(),
                name: roster.display_name(&author),
                seq,
                existing,
                conflicting: hash,
                evidence: envelope,
            })));
        }
        chain.insert((author, seq), hash);
        parsed.push(Accepted {
            envelope,
            change,
            seq,
        });
    }

    let batch: HashSet<ChangeHash> = parsed.iter().map(|a| a.envelope.hash()).collect();
    // The last operation counter of each change in the batch.
    let batch_max_op: HashMap<ChangeHash, u64> = parsed
        .iter()
        .map(|a| (a.envelope.hash(), max_op(&a.change)))
        .collect();
    let batch_deps: HashMap<ChangeHash, (&[ChangeHash], &[u8], u64)> = parsed
        .iter()
        .map(|a| {
            (
                a.envelope.hash(),
                (a.change.deps(), a.change.actor_id().to_bytes(), a.seq),
            )
        })
        .collect();
    for accepted in &parsed {
        let author = accepted.envelope.author();
        let hash = accepted.envelope.hash();
        let name = || roster.display_name(&author);
        if let Some(rejected) = accepted.change.deps().iter().find(|d| known.is_rejected(d)) {
            return Err(IngestError::BuildsOnRejected {
                hash,
                name: name(),
                rejected: *rejected,
            });
        }
        if let Some(missing) = accepted
            .change
            .deps()
            .iter()
            .find(|d| !known.has_change(d) && !batch.contains(d))
        {
            return Err(IngestError::MissingDependency {
                hash,
                name: name(),
                missing: *missing,
            });
        }
        let seq = accepted.seq;
        if seq > 1 {
            let Some(predecessor) = known
                .hash_at(&author, seq - 1)
                .or_else(|| chain.get(&(author, seq - 1)).copied())
            else {
                return Err(IngestError::MissingPredecessor {
                    hash,
                    name: name(),
                    seq,
                });
            };
            // Automerge applies an author's changes in sequence order, so the
            // previous one must be in this change's causal past.
            if !reaches(
                accepted.change.deps(),
                predecessor,
                &author,
                seq,
                &batch_deps,
                known,
            ) {
                return Err(IngestError::BrokenChain {
                    hash,
                    name: name(),
                    seq,
                });
            }
        }
        // Automerge numbers a change's operations after every operation in
        // its causal past; so does every change it makes. A change that
        // starts lower reuses operation ids (its author's own among them):
        // the operation check and Automerge would then take one operation
        // for another, and nodes that hold different batches decide apart.
        let start = accepted.change.start_op().get();
        for dep in accepted.change.deps() {
            let dep_max = match batch_max_op.get(dep) {
                Some(max) => Some(*max),
                None => known.change(dep).map(|c| max_op(&c)),
            };
            if let Some(dep_max) = dep_max
                && start <= dep_max
            {
                return Err(IngestError::OpsNotAfterDeps {
                    hash,
                    name: name(),
                    start,
                    dep: *dep,
                    dep_max,
                });
            }
        }
    }
    let hashes: Vec<ChangeHash> = parsed.iter().map(|a| a.envelope.hash()).collect();
    let changes: Vec<&Change> = causal_indices(&hashes, |i| parsed[i].change.deps())
        .into_iter()
        .map(|i| &parsed[i].change)
        .collect();
    let started = std::time::Instant::now();
    let ops_checked = index.check(&changes, &StoredOps(known));
    tracing::debug!(
        changes = changes.len(),
        elapsed = ?started.elapsed(),
        indexed = index.len(),
        "operations checked"
    );
    ops_checked.map_err(|source| {
        let author = parsed
            .iter()
            .find(|a| a.envelope.hash() == source.change)
            .map(|a| a.envelope.author());
        IngestError::BadOperation {
            name: author.map_or_else(String::new, |a| roster.display_name(&a)),
            source,
        }
    })?;
    checked.unchecked = vouched;
    checked.accepted = parsed;
    Ok(checked)
}

/// Indices of `hashes` in an order where each comes after those of its
/// dependencies that are among them (Kahn's algorithm, stable for sorted
/// input).
pub fn causal_indices<'a>(
    hashes: &[ChangeHash],
    deps: impl Fn(usize) -> &'a [ChangeHash],
) -> Vec<usize> {
    let index: HashMap<ChangeHash, usize> =
        hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut waiting = vec![0usize; hashes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); hashes.len()];
    for (i, wait) in waiting.iter_mut().enumerate() {
        for dep in deps(i) {
            if let Some(&j) = index.get(dep) {
                *wait += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..hashes.len())
        .filter(|&i| waiting[i] == 0)
        .rev()
        .collect();
    let mut out = Vec::with_capacity(hashes.len());
    while let Some(i) = ready.pop() {
        out.push(i);
        for &d in dependents[i].iter().rev() {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    out
}

/// Whether the author's change number `seq - 1`, `target`, is among `deps`
/// or their causal past (through the batch and the store). Breadth first, so
/// an honest change, whose predecessor is a dependency or a few hops behind
/// one, is settled at once; the author's own older changes are not walked
/// past, since the predecessor cannot lie behind them.
fn reaches(
    deps: &[ChangeHash],
    target: ChangeHash,
    author: &PublicKey,
    seq: u64,
    batch: &HashMap<ChangeHash, (&[ChangeHash], &[u8], u64)>,
    known: &impl Known,
) -> bool {
    let mut queue: std::collections::VecDeque<ChangeHash> = deps.iter().copied().collect();
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    while let Some(hash) = queue.pop_front() {
        if hash == target {
            return true;
        }
        if !seen.insert(hash) {
            continue;
        }
        if seen.len() > PREDECESSOR_WALK_MAX {
            return false;
        }
        let (deps, actor, their_seq) = match batch.get(&hash) {
            Some((deps, actor, s)) => (deps.to_vec(), actor.to_vec(), *s),
            None => match known.header_of(&hash) {
                Some(h) => (h.deps, h.actor, h.seq),
                None => continue,
            },
        };
        if actor == author.as_bytes() && their_seq < seq {
            continue;
        }
        queue.extend(deps);
    }
    false
}

/// The checks that need no parsing: the author is or was on the roster, and
/// has been a member at some point (so some of its changes may count). The
/// exact change number is checked against the author's spans once parsed.
fn check_author(envelope: &Envelope, roster: &Roster) -> Result<(), IngestError> {
    let author = envelope.author();
    if !roster.knows(&author) {
        return Err(IngestError::NotOnRoster {
            hash: envelope.hash(),
            author: author.node_id().to_string(),
        });
    }
    // A forked key's changes are refused per number, below, saying why.
    if roster.spans(&author).is_empty() && roster.forked_at(&author).is_none() {
        return Err(IngestError::Observer {
            hash: envelope.hash(),
            author: author.node_id().to_string(),
            name: roster.display_name(&author),
        });
    }
    Ok(())
}

/// Batches below this size are verified on the calling thread.
const PARALLEL_VERIFY_MIN: usize = 256;
/// Batches of at least this many envelopes take the chain shortcut.
const CHAIN_SHORTCUT_MIN: usize = 64;

/// Verifies a batch's signatures before Automerge sees any of its bytes.
///
/// A change's hash covers its dependencies' hashes, and each author's changes
/// form one chain, so a valid signature by author A on a change also vouches
/// for every change *by A* in its causal past. For a large batch this checks
/// the signature of each author's highest change, follows the hash links
/// (read by [`change_header`], not Automerge) from it through the batch, and
/// verifies at once only the changes no such walk reached. It returns the
/// indices of the vouched-for changes, whose own signatures the caller checks
/// with [`verify_rest`] while Automerge applies the batch: every stored
/// signature is verified, and the two costs overlap.
pub fn verify_signatures(
    envelopes: &[Envelope],
    network: NetworkId,
) -> Result<Vec<usize>, IngestError> {
    if envelopes.len() < CHAIN_SHORTCUT_MIN {
        verify_each(&envelopes.iter().collect::<Vec<_>>(), network)?;
        return Ok(Vec::new());
    }
    let headers: Vec<Option<ChangeHeader>> = envelopes
        .iter()
        .map(|e| change_header(e.change_bytes()).ok())
        .collect();
    let index: HashMap<ChangeHash, usize> = envelopes
        .iter()
        .enumerate()
        .map(|(i, e)| (e.hash(), i))
        .collect();
    // Each author's highest change whose actor is its signer.
    let mut tops: HashMap<PublicKey, usize> = HashMap::new();
    for (i, (e, h)) in envelopes.iter().zip(&headers).enumerate() {
        let Some(h) = h.as_ref().filter(|h| h.actor == e.author().as_bytes()) else {
            continue;
        };
        let top = tops.entry(e.author()).or_insert(i);
        if headers[*top].as_ref().is_some_and(|t| t.seq < h.seq) {
            *top = i;
        }
    }
    let top_envelopes: Vec<&Envelope> = tops.values().map(|&i| &envelopes[i]).collect();
    verify_each(&top_envelopes, network)?;
    let mut vouched = vec![false; envelopes.len()];
    let mut seen = vec![false; envelopes.len()];
    for (author, &top) in &tops {
        seen.iter_mut().for_each(|s| *s = false);
        let mut stack = vec![top];
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let Some(h) = &headers[i] else { continue };
            if envelopes[i].author() == *author && h.actor == author.as_bytes() {
                vouched[i] = true;
            }
            stack.extend(h.deps.iter().filter_map(|d| index.get(d).copied()));
        }
    }
    let rest: Vec<&Envelope> = envelopes
        .iter()
        .zip(&vouched)
        .filter(|(_, v)| !**v)
        .map(|(e, _)| e)
        .collect();
    verify_each(&rest, network)?;
    Ok(vouched
        .iter()
        .enumerate()
        .filter(|(_, v)| **v)
        .map(|(i, _)| i)
        .collect())
}

/// Verifies the signatures [`check_batch`] left for later (`unchecked`), each
/// on its own. The content of those changes is already authenticated; this
/// keeps every stored signature valid, so the audit trail holds and no node
/// relays a bad signature.
pub fn verify_rest(checked: &Checked, network: NetworkId) -> Result<(), IngestError> {
    let rest: Vec<&Envelope> = checked
        .unchecked
        .iter()
        .filter_map(|&i| checked.accepted.get(i).map(|a| &a.envelope))
        .collect();
    verify_each(&rest, network)
}

/// Verifies every signature on its own with `verify_strict`, spreading large
/// batches over the cores. Randomised batch verification is not used: it can
/// accept a crafted signature that strict verification refuses, and then
/// nodes would disagree about what is valid.
fn verify_each(envelopes: &[&Envelope], network: NetworkId) -> Result<(), IngestError> {
    let check = |chunk: &[&Envelope]| -> Result<(), IngestError> {
        for e in chunk {
            e.verify(network).map_err(|source| IngestError::Signature {
                hash: e.hash(),
                source,
            })?;
        }
        Ok(())
    };
    if envelopes.len() < PARALLEL_VERIFY_MIN {
        return check(envelopes);
    }
    // Asked only for large batches: it reads the cgroup's files each time.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 {
        return check(envelopes);
    }
    let chunk_len = envelopes.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = envelopes
            .chunks(chunk_len)
            .map(|chunk| scope.spawn(move || check(chunk)))
            .collect();
        // Report the first failure in batch order.
        let mut result = Ok(());
        for handle in handles {
            let outcome = handle.join().unwrap_or_else(|_| {
                Err(IngestError::Signature {
                    hash: ChangeHash([0; 32]),
                    source: EnvelopeError::BadChunk("signature check panicked"),
                })
            });
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    })
}

#[cfg(test)]
mod tests;
