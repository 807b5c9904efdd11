//! Message validation over any bytes: `Inbound::parse` must decide every
//! input, the same way twice, and a valid decision must hold the contract's
//! invariants (docs/contracts.md, "Inbound message").
//!
//! Input layout, fields split on the byte 0xFF (never part of UTF-8):
//! `message_id, app_id, content_type, reply_to, correlation_id, traceparent,
//! max_body, body`. A property field starting with 0xFE is absent; other
//! bytes are read as UTF-8, lossily (the contract takes `&str`). `max_body` is
//! decimal ASCII, else 65536. The body is the rest, 0xFF bytes included.

#![no_main]

use std::borrow::Cow;

use idem_message::{DEFAULT_SCOPE, Inbound, MAX_KEY_LEN, fingerprint, reference_id};
use libfuzzer_sys::fuzz_target;

const CODES: [&str; 6] = [
    "missing_message_id",
    "bad_key",
    "content_type",
    "too_large",
    "not_json",
    "schema",
];

fn property(field: Option<&[u8]>) -> Option<Cow<'_, str>> {
    match field {
        None | Some([0xFE, ..]) => None,
        Some(bytes) => Some(String::from_utf8_lossy(bytes)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(8, |b| *b == 0xFF);
    let message_id = property(fields.next());
    let app_id = property(fields.next());
    let content_type = property(fields.next());
    let reply_to = property(fields.next());
    let correlation_id = property(fields.next());
    let traceparent = property(fields.next());
    let max_body = fields
        .next()
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(65536);
    let body = fields.next().unwrap_or(&[]);
    let inbound = Inbound {
        message_id: message_id.as_deref(),
        app_id: app_id.as_deref(),
        content_type: content_type.as_deref(),
        reply_to: reply_to.as_deref(),
        correlation_id: correlation_id.as_deref(),
        traceparent: traceparent.as_deref(),
        body,
    };
    let decision = inbound.parse(max_body);
    assert_eq!(decision, inbound.parse(max_body), "not deterministic");
    match decision {
        Err(rejection) => assert!(CODES.contains(&rejection.code()), "{rejection:?}"),
        Ok(request) => {
            let id = request.message_id();
            assert!((1..=MAX_KEY_LEN).contains(&id.len()) && !id.contains('\0'));
            assert_eq!(Some(id), inbound.message_id);
            let scope = inbound
                .app_id
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_SCOPE);
            assert_eq!(request.scope(), scope);
            let b = request.body();
            assert!(b.amount > 0);
            assert!(b.currency.len() == 3 && b.currency.bytes().all(|c| c.is_ascii_uppercase()));
            assert!(body.len() <= max_body);
            assert_eq!(
                request.fingerprint(),
                &fingerprint(&b.account_id, b.amount, &b.currency)
            );
            assert_eq!(request.reference_id(), reference_id(scope, id));
        }
    }
});
