//! Each golden fixture against the value it stands for, both ways: serialising
//! the value gives the fixture (as JSON values, so layout does not matter), and
//! parsing the fixture gives the value. Then what a provider may add: unknown
//! fields in every answer the client parses are ignored, not refused.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::golden::*;
use crate::{
    Charge, ChargeList, CreateCharge, ErrorBody, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, Refund,
    TRACEPARENT,
};

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture is not JSON: {e}"))
}

fn parsed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("does not parse: {e}"))
}

/// Both directions of one fixture.
fn pin<T>(fixture: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let written = serde_json::to_value(value).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(written, json_of(fixture), "serialised value != fixture");
    assert_eq!(
        &parsed::<T>(json_of(fixture)),
        value,
        "parsed fixture != value"
    );
}

/// `value` with `extra` merged into its top-level object.
fn with_fields(mut value: Value, extra: &Value) -> Value {
    let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) else {
        panic!("both must be JSON objects");
    };
    object.extend(extra.clone());
    value
}

#[test]
fn create_charge_body() {
    pin(CREATE_CHARGE, &create_charge());
}

#[test]
fn charge_answer() {
    pin(CHARGE, &charge());
}

#[test]
fn charge_page_answer_with_has_more() {
    pin(CHARGE_PAGE, &charge_page());
}

#[test]
fn lookup_answer_without_has_more_reads_as_the_last_page() {
    assert_eq!(
        parsed::<ChargeList>(json_of(CHARGE_LOOKUP)),
        charge_lookup()
    );
    // Written back, `has_more` is always present.
    let written = serde_json::to_value(charge_lookup()).unwrap_or_else(|e| panic!("{e}"));
    let expected = with_fields(json_of(CHARGE_LOOKUP), &json!({"has_more": false}));
    assert_eq!(written, expected);
}

#[test]
fn refund_answer() {
    pin(REFUND, &refund());
}

#[test]
fn decline_body_without_message() {
    pin(ERROR_DECLINED, &error_declined());
}

#[test]
fn error_body_with_message() {
    pin(ERROR_CONFLICT, &error_conflict());
}

#[test]
fn header_names() {
    // HTTP matches header names case-insensitively; these are the contract's
    // spellings.
    assert_eq!(IDEMPOTENCY_KEY, "Idempotency-Key");
    assert_eq!(IDEMPOTENT_REPLAYED, "Idempotent-Replayed");
    assert_eq!(TRACEPARENT, "traceparent");
}

#[test]
fn answers_tolerate_fields_the_provider_adds() {
    let extra = json!({"object": "charge", "livemode": false, "metadata": {"k": "v"}});
    let charge_plus = with_fields(json_of(CHARGE), &extra);
    assert_eq!(parsed::<Charge>(charge_plus.clone()), charge());

    let mut page = with_fields(
        json_of(CHARGE_PAGE),
        &json!({"object": "list", "url": "/v1"}),
    );
    page["data"][0] = charge_plus;
    assert_eq!(parsed::<ChargeList>(page), charge_page());

    let refund_plus = with_fields(json_of(REFUND), &json!({"status": "succeeded"}));
    assert_eq!(parsed::<Refund>(refund_plus), refund());

    let mut declined = with_fields(json_of(ERROR_DECLINED), &json!({"request_id": "req_1"}));
    declined["error"]["decline_code"] = json!("insufficient_funds");
    assert_eq!(parsed::<ErrorBody>(declined), error_declined());
}

#[test]
fn create_charge_tolerates_fields_a_newer_client_adds() {
    // The simulator parses this body: like a provider, it ignores what it does
    // not know instead of refusing the request.
    let plus = with_fields(
        json_of(CREATE_CHARGE),
        &json!({"description": "order 1001"}),
    );
    assert_eq!(parsed::<CreateCharge>(plus), create_charge());
}
