//! The producer contract's JSON Schemas as published in `docs/schema/`,
//! compiled once (formats checked: `uuid`, `date-time`), so that a suite
//! checks what the code accepts and emits against the very files producers
//! and consumers read.

use std::path::PathBuf;
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::Value;

/// The charge request body's schema file name.
pub const REQUEST: &str = "charge-request.v1.schema.json";
/// The result event body's schema file name.
pub const RESULT: &str = "result-event.v1.schema.json";

/// `docs/schema/<name>`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schema")
        .join(name)
}

fn compile(name: &str) -> Validator {
    let text = std::fs::read_to_string(path(name)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

/// The charge request's validator.
pub fn request() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| compile(REQUEST))
}

/// The result event's validator.
pub fn result() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| compile(RESULT))
}

/// Panic with every error unless `body` is a result event the schema accepts.
pub fn assert_result_event(body: &[u8]) {
    let value: Value = serde_json::from_slice(body).expect("a result event is JSON");
    let errors: Vec<String> = result()
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "result event refused by docs/schema/{RESULT}: {errors:?}\n{value}"
    );
}
