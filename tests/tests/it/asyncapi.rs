//! `docs/asyncapi.yaml` against the code: the names it gives are the
//! daemon's defaults, its routing keys and header values are the ones the
//! publisher writes, its payloads are the JSON Schema files, and every
//! reference in it resolves.

use std::collections::BTreeSet;

use clap::{Args, Command};
use idem_events::wire::{self, KIND_HEADER, MESSAGE_TYPE};
use idem_events::{ResultBody, routing_key};
use idem_store::OutboxState;
use idem_store::event::EventKind;
use idem_tests::schema;
use lapin::types::AMQPValue;
use serde_json::Value;

use crate::schema::event;

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml");
    let yaml: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// `idem run`'s default for the flag read from `variable`.
fn default_of(variable: &str) -> String {
    let run = idem_daemon::RunArgs::augment_args(Command::new("idem"));
    let arg = run
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == variable))
        .unwrap_or_else(|| panic!("no flag reads {variable}"));
    arg.get_default_values()[0].to_str().unwrap().to_owned()
}

fn at<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("docs/asyncapi.yaml has nothing at {pointer}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every `$ref` in `v`, with where it stands.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// Invariants: AsyncAPI 3 at this crate's version; the work queue and the
/// results exchange are the daemon's defaults (a topic exchange); the
/// results' routing key is `charge.<state>` for exactly the final states;
/// `x-idem-kind` lists exactly the event kinds; every `$ref` resolves, the
/// payloads to the JSON Schema files.
#[test]
fn the_asyncapi_document_names_what_the_code_uses() {
    let doc = document();
    assert_eq!(at(&doc, "/asyncapi"), "3.0.0");
    assert_eq!(at(&doc, "/info/version"), env!("CARGO_PKG_VERSION"));

    let queue = default_of("IDEM_QUEUE");
    assert_eq!(at(&doc, "/channels/charges/address"), queue.as_str());
    assert_eq!(
        at(&doc, "/channels/charges/bindings/amqp/queue/name"),
        queue.as_str()
    );
    let exchange = at(&doc, "/channels/results/bindings/amqp/exchange");
    assert_eq!(
        exchange["name"],
        default_of("IDEM_RESULTS_EXCHANGE").as_str()
    );
    assert_eq!(exchange["type"], "topic");

    let address = at(&doc, "/channels/results/address").as_str().unwrap();
    let states = strings(at(&doc, "/channels/results/parameters/state/enum"));
    let finals = [
        OutboxState::Succeeded,
        OutboxState::Declined,
        OutboxState::Dead,
    ];
    assert_eq!(
        states,
        finals.iter().map(|s| s.as_str().to_owned()).collect()
    );
    for state in finals {
        assert_eq!(
            address.replace("{state}", state.as_str()),
            routing_key(state)
        );
    }

    let headers = "/components/messages/resultEvent/headers/properties";
    let kinds = [EventKind::Settled, EventKind::Replayed, EventKind::Reply];
    assert_eq!(
        strings(at(&doc, &format!("{headers}/{KIND_HEADER}/enum"))),
        kinds.iter().map(|k| k.as_str().to_owned()).collect()
    );

    let mut all = Vec::new();
    refs(&doc, &mut all);
    let mut files = BTreeSet::new();
    for r in &all {
        if let Some(pointer) = r.strip_prefix('#') {
            at(&doc, pointer);
        } else {
            let file = r.trim_start_matches("./");
            assert!(
                std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"))
                    .join(file)
                    .is_file(),
                "{r} does not resolve"
            );
            files.insert(file.to_owned());
        }
    }
    let want: BTreeSet<String> = [schema::REQUEST, schema::RESULT]
        .map(|f| format!("schema/{f}"))
        .into();
    assert_eq!(files, want);
}

/// Invariant: the properties and headers the publisher writes on a result
/// event are the ones the document declares: its constants (`type`,
/// `app_id`, `delivery_mode`, `content_type`), a `message_id` equal to the
/// body's `event_id`, and an `x-idem-kind` from its list.
#[test]
fn the_declared_result_headers_are_the_ones_the_publisher_writes() {
    let doc = document();
    let declared = at(&doc, "/components/messages/resultEvent/headers/properties");
    let e = event(OutboxState::Succeeded);
    let props = wire::properties(&e);
    let body = ResultBody::of(&e);
    let constant = |name: &str| declared[name]["const"].clone();
    assert_eq!(constant("type"), MESSAGE_TYPE);
    assert_eq!(
        props.kind().as_ref().map(|t| t.as_str()),
        constant("type").as_str()
    );
    assert_eq!(
        props.app_id().as_ref().map(|t| t.as_str()),
        constant("app_id").as_str()
    );
    assert_eq!(
        props.content_type().as_ref().map(|t| t.as_str()),
        constant("content_type").as_str()
    );
    assert_eq!(
        (*props.delivery_mode()).map(u64::from),
        constant("delivery_mode").as_u64()
    );
    assert_eq!(
        props.message_id().as_ref().map(|t| t.to_string()),
        Some(body.event_id.to_string())
    );
    let kind = match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(KIND_HEADER))
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{KIND_HEADER} is {other:?}"),
    };
    assert!(strings(&declared[KIND_HEADER]["enum"]).contains(&kind));
    // A request's declared persistent delivery mode is the one the
    // workload publisher (and idem publish) uses.
    assert_eq!(
        at(
            &doc,
            "/components/messages/chargeRequest/headers/properties/delivery_mode/const"
        )
        .as_u64(),
        (*idem_workload::traffic::Outgoing {
            message_id: Some("m".into()),
            app_id: None,
            body: vec![],
            kind: idem_workload::traffic::Kind::Original,
        }
        .properties()
        .delivery_mode())
        .map(u64::from)
    );
}
