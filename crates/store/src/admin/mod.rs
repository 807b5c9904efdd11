//! The operators' statements (`idem outbox|quarantine|inbox ...`): read a row
//! with everything around it, and the few hand changes an operator may make.
//! A row change (retry, resolve) and its audit row are one transaction: never
//! one without the other. A replay publishes to the broker, outside any
//! transaction, so its audit row is committed first (`requested`) and
//! completed after the broker's answer (`published` or `failed`): no replay
//! is ever sent without its record.
//!
//! One module per table (and `bulk`, the outbox's one change in batches),
//! each importing only the ones below it (`bulk` reads `outbox`'s columns,
//! `outbox` uses `inbox`'s key syntax; the changes write through `audit`):
//! - `bulk`: dead rows retried by filter, in batches, as one audited action
//!   (its audit row committed first, its counts updated by every batch).
//! - `filter`: which dead rows a bulk retry takes, and the times its flags accept.
//! - `outbox`: rows by id, reference or key; retry a dead row, resolve by hand.
//! - `inbox`: a key and its conflicts.
//! - `quarantine`: kept messages; the two halves of a replay.
//! - `audit`: the record of every operator change.
//! - `page`: keyset pages of every list, newest first, O(page) each.

mod audit;
mod bulk;
mod filter;
mod inbox;
mod outbox;
mod page;
mod quarantine;

pub use audit::{Action, AuditRow, audit_of};
pub use bulk::{Preview, Progress, preview, retry_matching};
pub use filter::{BadFilter, RetryFilter, parse_time};
pub use inbox::{ConflictRow, InboxRow, conflicts_of, find_inbox, parse_key};
pub use outbox::{
    OutboxRow, OutboxSelector, Refused, Resolution, find_outbox, list_outbox, resolve, retry_dead,
};
pub use page::{
    MAX_FILTER_TEXT, MAX_LIMIT, OutboxFilter, Page, PageError, SCAN_BUDGET, audit_page,
    conflict_page, explain_outbox_page, outbox_page, quarantine_page,
};
pub use quarantine::{
    QuarantineRow, begin_replay, find_quarantine, finish_replay, list_quarantine,
};
