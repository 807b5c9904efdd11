//! The golden fixtures: every body of the charge API written by hand from
//! `docs/contracts.md` (section "Charge API") as a JSON file in `src/golden/`,
//! and the value each one stands for. A fixture changes only when the contract
//! does; a serde attribute that changes the wire fails `golden_tests` first.
//!
//! Other crates' tests use them through the `golden` feature: the client checks
//! it sends [`CREATE_CHARGE`], the simulator that it accepts it.
//!
//! The refund request has no fixture: it has no body (the charge is in the path,
//! the key in `Idempotency-Key`).

use crate::{Charge, ChargeList, ChargeMetadata, CreateCharge, ErrorBody, ErrorDetail, Refund};

/// `POST /v1/charges` request body: [`create_charge`].
pub const CREATE_CHARGE: &str = include_str!("golden/create_charge.json");
/// `201` (and replayed `200`) answer to [`CREATE_CHARGE`]: [`charge`].
pub const CHARGE: &str = include_str!("golden/charge.json");
/// `GET /v1/charges?reference_id=R` answer, without `has_more` as the contract
/// writes it: [`charge_lookup`].
pub const CHARGE_LOOKUP: &str = include_str!("golden/charge_lookup.json");
/// A page of `GET /v1/charges?created_gte=..&limit=..` with a further page:
/// [`charge_page`].
pub const CHARGE_PAGE: &str = include_str!("golden/charge_page.json");
/// `201` answer to `POST /v1/charges/{id}/refunds`: [`refund`].
pub const REFUND: &str = include_str!("golden/refund.json");
/// `402` decline, exactly as the contract writes it (no message):
/// [`error_declined`].
pub const ERROR_DECLINED: &str = include_str!("golden/error_declined.json");
/// `422` same key with other parameters, with a human message:
/// [`error_conflict`].
pub const ERROR_CONFLICT: &str = include_str!("golden/error_conflict.json");

/// The reference id of the fixtures' first charge.
pub const REFERENCE_ID: &str = "6f1c3e2a-8b7d-5e4f-9a1b-2c3d4e5f6a7b";

/// The value of [`CREATE_CHARGE`].
pub fn create_charge() -> CreateCharge {
    CreateCharge {
        reference_id: REFERENCE_ID.to_owned(),
        account_id: "acc_4242".to_owned(),
        amount: 1250,
        currency: "EUR".to_owned(),
        metadata: ChargeMetadata {
            source: "shop-eu".to_owned(),
            message_id: "order-1001".to_owned(),
        },
    }
}

/// The value of [`CHARGE`]: the charge [`create_charge`] made.
pub fn charge() -> Charge {
    Charge {
        id: "ch_0000000001".to_owned(),
        reference_id: REFERENCE_ID.to_owned(),
        account_id: "acc_4242".to_owned(),
        amount: 1250,
        currency: "EUR".to_owned(),
        status: "succeeded".to_owned(),
        created: 1_767_225_600,
    }
}

/// The value of [`CHARGE_LOOKUP`]: `has_more` absent reads as `false`.
pub fn charge_lookup() -> ChargeList {
    ChargeList {
        data: vec![charge()],
        has_more: false,
    }
}

/// The value of [`CHARGE_PAGE`].
pub fn charge_page() -> ChargeList {
    let second = Charge {
        id: "ch_0000000002".to_owned(),
        reference_id: "0d9e8f7a-6b5c-5d4e-8f3a-2b1c0d9e8f7a".to_owned(),
        account_id: "acc_7".to_owned(),
        amount: 99,
        currency: "SEK".to_owned(),
        status: "succeeded".to_owned(),
        created: 1_767_225_660,
    };
    ChargeList {
        data: vec![charge(), second],
        has_more: true,
    }
}

/// The value of [`REFUND`]: the whole of [`charge`] refunded.
pub fn refund() -> Refund {
    Refund {
        id: "re_0000000001".to_owned(),
        charge: "ch_0000000001".to_owned(),
        amount: 1250,
    }
}

/// The value of [`ERROR_DECLINED`].
pub fn error_declined() -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            kind: "card_declined".to_owned(),
            message: None,
        },
    }
}

/// The value of [`ERROR_CONFLICT`].
pub fn error_conflict() -> ErrorBody {
    ErrorBody::new(
        "idempotency_conflict",
        format!("idempotency key {REFERENCE_ID:?} was used with other parameters"),
    )
}
