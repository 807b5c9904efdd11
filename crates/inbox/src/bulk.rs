//! The common path of a batch: every delivery validated in Rust, then a
//! handful of set-based statements for the whole batch (`idem_store::batch`)
//! instead of several round trips per message.
//!
//! Statements, each run only when it has rows: quarantine the rejections;
//! upsert one candidate per key (the first copy in arrival order); insert the
//! outbox rows of new keys in arrival order; read the outbox rows of keys the
//! inbox had forgotten (recall); correct the counters of keys with later
//! copies or a recall; record key conflicts; owe duplicates their result
//! events. A common batch of new messages is two statements, between the
//! savepoint and its release.
//!
//! The decisions are those the per-message path reaches recording the same
//! deliveries one by one in arrival order: a later copy of a key is judged
//! against the fingerprint the key holds after its earlier copies (the first
//! recorded copy's, or for a recalled key the one its outbox row charged).

use std::collections::HashMap;

use idem_message::{ChargeRequest, Rejection, fingerprint};
use idem_store::batch::{self as sql, Conflict, Duplicate, Key, Recount, StoredRow, Upserted};
use idem_store::quarantine::Quarantined;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::decision::{Decision, Incoming};
use crate::{delivery, trace};

/// Record `batch` (validated into `parsed`, same order) set-based inside the
/// caller's savepoint, returning one decision per delivery in delivery order.
/// `Ok(None)`: the statements' answers did not add up (a key the upsert did not
/// return, a delivery left undecided — a bug, never seen); the caller rolls the
/// savepoint back and decides message by message rather than ack a guess.
/// After an `Err`, too, the savepoint must be rolled back.
pub(crate) async fn record(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    parsed: &[Result<ChargeRequest, Rejection>],
) -> Result<Option<Vec<Decision>>, sqlx::Error> {
    let mut decisions: Vec<Option<Decision>> = vec![None; batch.len()];
    quarantine(conn, batch, parsed, &mut decisions).await?;
    let groups = group(parsed);
    if !groups.is_empty() {
        let Some(judgements) = decide(conn, &groups).await? else {
            return Ok(None);
        };
        write(conn, batch, &groups, &judgements).await?;
        for &(i, _, verdict) in judgements.iter().flat_map(|j| &j.verdicts) {
            decisions[i] = Some(match verdict {
                Verdict::New(outbox_id) => Decision::New { outbox_id },
                Verdict::Duplicate => Decision::Duplicate,
                Verdict::Conflict => Decision::Conflict,
            });
        }
    }
    let decided: Option<Vec<Decision>> = decisions.into_iter().collect();
    if decided.is_none() {
        tracing::error!(
            "the set-based inbox path left a delivery undecided; deciding the batch message by message"
        );
    }
    Ok(decided)
}

/// Upsert the keys, enqueue the new ones, read the outbox rows of recalled
/// ones, and judge every copy. `None` if a key went missing.
async fn decide<'r>(
    conn: &mut PgConnection,
    groups: &[Group<'r>],
) -> Result<Option<Vec<Judgement<'r>>>, sqlx::Error> {
    let seen = upsert(conn, groups).await?;
    let mut upserted = Vec::with_capacity(groups.len());
    for g in groups {
        let (_, candidate) = g.first;
        let Some(u) = seen.get(&(
            candidate.scope().to_owned(),
            candidate.message_id().to_owned(),
        )) else {
            tracing::error!(scope = %candidate.scope(), message_id = %candidate.message_id(), "the inbox upsert did not return a key; deciding the batch message by message");
            return Ok(None);
        };
        upserted.push(u);
    }
    // Arrival order: outbox ids follow insertion order.
    let fresh: Vec<&ChargeRequest> = groups
        .iter()
        .zip(&upserted)
        .filter(|(_, u)| u.inserted)
        .map(|(g, _)| g.first.1)
        .collect();
    let enqueued: HashMap<Uuid, i64> = if fresh.is_empty() {
        HashMap::new()
    } else {
        sql::enqueue(conn, &fresh).await?.into_iter().collect()
    };
    let forgotten: Vec<Uuid> = fresh
        .iter()
        .map(|r| r.reference_id())
        .filter(|r| !enqueued.contains_key(r))
        .collect();
    let stored: HashMap<Uuid, StoredRow> = if forgotten.is_empty() {
        HashMap::new()
    } else {
        let rows = sql::stored(conn, &forgotten).await?;
        rows.into_iter().map(|r| (r.reference_id, r)).collect()
    };
    Ok(Some(
        groups
            .iter()
            .zip(&upserted)
            .map(|(g, u)| {
                let reference = g.first.1.reference_id();
                let found = match enqueued.get(&reference) {
                    _ if !u.inserted => Found::Seen(&u.fingerprint),
                    Some(&id) => Found::New(id),
                    None => Found::Recalled(stored.get(&reference)),
                };
                judge(g, found)
            })
            .collect(),
    ))
}

/// Write what the judgements owe beyond the upsert and the outbox rows:
/// counters of later copies and recalls, key conflicts, and the result events
/// of duplicates — conflicts and duplicates in delivery order.
async fn write(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    groups: &[Group<'_>],
    judgements: &[Judgement<'_>],
) -> Result<(), sqlx::Error> {
    let recounts: Vec<Recount<'_>> = groups
        .iter()
        .zip(judgements)
        .filter(|(_, j)| j.restored.is_some() || j.duplicates + j.conflicts > 0)
        .map(|(g, j)| Recount {
            scope: g.first.1.scope(),
            message_id: g.first.1.message_id(),
            fingerprint: j.restored.as_ref().map(|f| &f[..]),
            duplicates: j.duplicates,
            conflicts: j.conflicts,
        })
        .collect();
    if !recounts.is_empty() {
        sql::recount(conn, &recounts).await?;
    }

    let mut copies: Vec<(usize, &ChargeRequest, Verdict, &[u8])> = judgements
        .iter()
        .flat_map(|j| j.verdicts.iter().map(|&(i, r, v)| (i, r, v, &j.holds[..])))
        .filter(|c| !matches!(c.2, Verdict::New(_)))
        .collect();
    copies.sort_by_key(|c| c.0);
    let conflicts: Vec<Conflict<'_>> = copies
        .iter()
        .filter(|c| c.2 == Verdict::Conflict)
        .map(|&(i, request, _, holds)| {
            tracing::warn!(scope = %request.scope(), message_id = %request.message_id(), trace_id = trace::of_request(request), "key conflict: same key, other payload; not charged");
            Conflict {
                scope: request.scope(),
                message_id: request.message_id(),
                stored_fingerprint: holds,
                received_fingerprint: request.fingerprint(),
                body: batch[i].body,
            }
        })
        .collect();
    if !conflicts.is_empty() {
        sql::conflicts(conn, &conflicts).await?;
    }
    let duplicates: Vec<Duplicate<'_>> = copies
        .iter()
        .filter(|c| c.2 == Verdict::Duplicate)
        .map(|&(_, request, _, _)| {
            tracing::debug!(message_id = %request.message_id(), trace_id = trace::of_request(request), "duplicate absorbed");
            Duplicate {
                reference_id: request.reference_id(),
                reply_to: request.reply_to.as_deref(),
                correlation_id: request.correlation_id.as_deref(),
            }
        })
        .collect();
    if !duplicates.is_empty() {
        // A duplicate of a settled charge gets its stored result again (never
        // a new charge); one of an open charge is owed a reply if it asked.
        let (replayed, owed) = sql::on_duplicates(conn, &duplicates).await?;
        tracing::debug!(
            duplicates = duplicates.len(),
            replayed,
            owed,
            "results owed to duplicates"
        );
    }
    Ok(())
}

async fn quarantine(
    conn: &mut PgConnection,
    batch: &[Incoming<'_>],
    parsed: &[Result<ChargeRequest, Rejection>],
    decisions: &mut [Option<Decision>],
) -> Result<(), sqlx::Error> {
    let rejected: Vec<(usize, &Rejection)> = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().err().map(|r| (i, r)))
        .collect();
    if rejected.is_empty() {
        return Ok(());
    }
    let owned: Vec<(serde_json::Value, String)> = rejected
        .iter()
        .map(|&(i, r)| {
            let item = &batch[i];
            (
                delivery::properties_json(item.properties, item.redelivered),
                r.to_string(),
            )
        })
        .collect();
    let rows: Vec<Quarantined<'_>> = rejected
        .iter()
        .zip(&owned)
        .map(|(&(i, r), (properties, reason))| Quarantined {
            reason_code: r.code(),
            reason,
            message_id: batch[i]
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().as_bytes()),
            properties,
            body: batch[i].body,
        })
        .collect();
    sql::quarantine(conn, &rows).await?;
    for (i, rejection) in rejected {
        let message_id = batch[i]
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str());
        let trace_id = trace::of_properties(batch[i].properties);
        tracing::warn!(code = rejection.code(), reason = %rejection, ?message_id, trace_id, "quarantining bad message");
        decisions[i] = Some(Decision::Quarantined {
            code: rejection.code(),
        });
    }
    Ok(())
}

/// The valid copies of one key in a batch.
#[derive(Debug)]
struct Group<'r> {
    /// The first copy in arrival order (delivery index, request): the
    /// candidate recorded for the key.
    first: (usize, &'r ChargeRequest),
    /// The later copies, in arrival order.
    later: Vec<(usize, &'r ChargeRequest)>,
}

type KeyRef<'r> = (&'r str, &'r str);

fn key(request: &ChargeRequest) -> KeyRef<'_> {
    (request.scope(), request.message_id())
}

/// Group the valid deliveries by key, groups in arrival order of their first
/// copy. One upsert must not name a key twice, and the first copy is the one
/// the per-message path would have recorded.
fn group(parsed: &[Result<ChargeRequest, Rejection>]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<KeyRef<'_>, usize> = HashMap::new();
    for (i, request) in parsed
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().ok().map(|r| (i, r)))
    {
        match index.get(&key(request)) {
            Some(&g) => groups[g].later.push((i, request)),
            None => {
                index.insert(key(request), groups.len());
                groups.push(Group {
                    first: (i, request),
                    later: Vec::new(),
                });
            }
        }
    }
    groups
}

/// Upsert the candidates, locking in key order (see `sql::upsert_keys`).
async fn upsert(
    conn: &mut PgConnection,
    groups: &[Group<'_>],
) -> Result<HashMap<(String, String), Upserted>, sqlx::Error> {
    let mut keys: Vec<Key<'_>> = groups
        .iter()
        .map(|g| Key {
            scope: g.first.1.scope(),
            message_id: g.first.1.message_id(),
            fingerprint: g.first.1.fingerprint(),
        })
        .collect();
    keys.sort_by(|a, b| (a.scope, a.message_id).cmp(&(b.scope, b.message_id)));
    let rows = sql::upsert_keys(conn, &keys).await?;
    Ok(rows
        .into_iter()
        .map(|u| ((u.scope.clone(), u.message_id.clone()), u))
        .collect())
}

/// What the statements found for a key's candidate.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    /// The key was recorded before and holds this fingerprint; the upsert
    /// already counted the candidate against it.
    Seen(&'a [u8]),
    /// A new key: its outbox row.
    New(i64),
    /// The key was new to the inbox but its outbox row already existed
    /// (retention removed the key first): that row, or `None` if it has been
    /// removed since the insert ran into it.
    Recalled(Option<&'a StoredRow>),
}

/// How one copy was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// First of its key: this outbox row.
    New(i64),
    /// Same key and payload as what the key holds.
    Duplicate,
    /// Same key, other payload than what the key holds.
    Conflict,
}

/// What the batch decided for one key.
#[derive(Debug)]
struct Judgement<'r> {
    /// Every copy (delivery index, request, verdict), in arrival order.
    verdicts: Vec<(usize, &'r ChargeRequest, Verdict)>,
    /// The fingerprint the key holds once the batch is recorded: what its
    /// conflicts are recorded against.
    holds: Vec<u8>,
    /// The fingerprint a recall restores.
    restored: Option<[u8; 32]>,
    /// Duplicates the upsert did not count.
    duplicates: i32,
    /// Conflicts the upsert did not count.
    conflicts: i32,
}

impl Judgement<'_> {
    fn count(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Duplicate => self.duplicates += 1,
            Verdict::Conflict => self.conflicts += 1,
            Verdict::New(_) => {}
        }
    }
}

fn against(holds: &[u8], copy: &ChargeRequest) -> Verdict {
    if holds == copy.fingerprint() {
        Verdict::Duplicate
    } else {
        Verdict::Conflict
    }
}

/// Judge every copy of a key as the per-message path would, one by one: the
/// candidate from what the statements found, each later copy against what
/// the key holds by then.
fn judge<'r>(group: &Group<'r>, found: Found<'_>) -> Judgement<'r> {
    let (index, candidate) = group.first;
    let (first, holds, restored) = match found {
        Found::Seen(holds) => (against(holds, candidate), holds.to_vec(), None),
        Found::New(id) => (Verdict::New(id), candidate.fingerprint().to_vec(), None),
        // Absorbed as a duplicate; the key keeps the candidate's fingerprint.
        Found::Recalled(None) => (Verdict::Duplicate, candidate.fingerprint().to_vec(), None),
        Found::Recalled(Some(row)) => {
            let original = fingerprint(&row.account_id, row.amount, &row.currency);
            tracing::info!(
                scope = %candidate.scope(),
                message_id = %candidate.message_id(),
                trace_id = trace::of_request(candidate),
                same_payload = (original == *candidate.fingerprint()),
                state = row.state.as_str(),
                "key no longer in the inbox but its outbox row is: not charged again, key restored"
            );
            (
                against(&original, candidate),
                original.to_vec(),
                Some(original),
            )
        }
    };
    let mut judgement = Judgement {
        verdicts: vec![(index, candidate, first)],
        holds,
        restored,
        duplicates: 0,
        conflicts: 0,
    };
    if judgement.restored.is_some() {
        // The upsert inserted the key, so it counted nothing for the candidate.
        judgement.count(first);
    }
    for &(i, copy) in &group.later {
        let verdict = against(&judgement.holds, copy);
        judgement.count(verdict);
        judgement.verdicts.push((i, copy, verdict));
    }
    judgement
}

#[cfg(test)]
#[path = "bulk_tests.rs"]
mod tests;
