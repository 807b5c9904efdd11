//! The client on the wire, against the golden fixtures of `idem-charge-api`: a
//! one-request server captures what the client really sends and answers with a
//! fixture, so a refactor of the client cannot change a body or a header
//! without failing here.

use std::time::Duration;

use idem_charge_api::golden;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{Attempt, Capabilities, ChargeClient};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const API_KEY: &str = "sk_test_golden";
const REFUND_KEY: &str = "refund-6f1c3e2a";

/// One request as it arrived.
struct Captured {
    /// `METHOD target HTTP/1.1`.
    request_line: String,
    /// Header names lower-cased (HTTP ignores their case), values as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON: {e}"))
    }
}

/// A client with every capability and an API key, and a server that captures
/// one request and answers it with `status` and `body`.
async fn client_and_server(
    status: &'static str,
    body: &'static str,
) -> (ChargeClient, JoinHandle<Captured>) {
    // reqwest has no crypto provider of its own (one backend only: ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let captured = read_request(&mut stream).await;
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(answer.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        captured
    });
    let client = ChargeClient::new(
        &format!("http://{addr}"),
        Duration::from_secs(5),
        Capabilities::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .with_api_key(Some(API_KEY.to_owned()));
    (client, server)
}

/// Reads one HTTP/1.1 request: the head up to the blank line, then
/// `content-length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> Captured {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "connection closed inside the request head");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap_or_else(|e| panic!("{e}")));
    let mut body = bytes.split_off(head_end + 4);
    while body.len() < length {
        let n = stream
            .read(&mut chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(n > 0, "connection closed inside the request body");
        body.extend_from_slice(&chunk[..n]);
    }
    Captured {
        request_line,
        headers,
        body,
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn create_charge_sends_the_golden_body_and_headers() {
    let (client, server) = client_and_server("201 Created", golden::CHARGE).await;
    let (attempt, call) = client
        .create_charge(&golden::create_charge(), Some(TRACE))
        .await;
    let sent = server.await.unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(sent.request_line, "POST /v1/charges HTTP/1.1");
    assert_eq!(sent.body_json(), json_of(golden::CREATE_CHARGE));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.header(crate::IDEMPOTENCY_KEY),
        Some(golden::REFERENCE_ID)
    );
    assert_eq!(sent.header(crate::TRACEPARENT), Some(TRACE));
    let bearer = format!("Bearer {API_KEY}");
    assert_eq!(sent.header("authorization"), Some(bearer.as_str()));

    assert_eq!(
        attempt,
        Attempt::Succeeded {
            charge: golden::charge(),
            replayed: false
        }
    );
    assert_eq!(call.http_status, Some(201));
    assert_eq!(call.provider_id, Some(golden::charge().id));
}

#[tokio::test]
async fn golden_decline_is_declined() {
    let (client, server) = client_and_server("402 Payment Required", golden::ERROR_DECLINED).await;
    let (attempt, _) = client.create_charge(&golden::create_charge(), None).await;
    let sent = server.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent.header(crate::TRACEPARENT), None);
    assert_eq!(
        attempt,
        Attempt::Declined {
            code: "card_declined".to_owned()
        }
    );
}

#[tokio::test]
async fn lookup_asks_by_reference_and_reads_the_golden_answer() {
    let (client, server) = client_and_server("200 OK", golden::CHARGE_LOOKUP).await;
    let (charges, call) = client.lookup(golden::REFERENCE_ID, Some(TRACE)).await;
    let sent = server.await.unwrap_or_else(|e| panic!("{e}"));

    let target = format!(
        "GET /v1/charges?reference_id={} HTTP/1.1",
        golden::REFERENCE_ID
    );
    assert_eq!(sent.request_line, target);
    assert!(sent.body.is_empty());
    assert_eq!(sent.header(crate::TRACEPARENT), Some(TRACE));
    assert_eq!(charges.ok(), Some(golden::charge_lookup().data));
    assert_eq!(call.provider_id, Some(golden::charge().id));
}

#[tokio::test]
async fn refund_sends_no_body_and_its_own_key() {
    let (client, server) = client_and_server("201 Created", golden::REFUND).await;
    let (refund, call) = client.refund(&golden::charge().id, REFUND_KEY).await;
    let sent = server.await.unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(
        sent.request_line,
        "POST /v1/charges/ch_0000000001/refunds HTTP/1.1"
    );
    assert!(sent.body.is_empty(), "the refund request has no body");
    assert_eq!(sent.header(crate::IDEMPOTENCY_KEY), Some(REFUND_KEY));
    assert_eq!(refund.ok(), Some(golden::refund()));
    assert_eq!(call.provider_id, Some(golden::refund().id));
}

/// A provider's hostile answers, as the dispatcher and reconciler get them:
/// a decline code full of terminal controls is `unrecognised`; a success
/// whose charge id could break out of a path is uncertain (money may have
/// moved), never stored; a body past the read bound is not read; a lookup
/// keeps only the charges it can use; a refund's id is one path segment.
#[tokio::test]
async fn hostile_answers_are_bounded_before_use() {
    let (client, server) = client_and_server(
        "402 Payment Required",
        "{\"error\":{\"type\":\"\\u001b]0;pwned\\u0007\\u202e\"}}",
    )
    .await;
    let (attempt, _) = client.create_charge(&golden::create_charge(), None).await;
    server.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        attempt,
        Attempt::Declined {
            code: crate::hygiene::UNRECOGNISED.into()
        }
    );

    let (client, server) = client_and_server(
        "201 Created",
        r#"{"id":"ch/../../v1/admin","reference_id":"r","account_id":"a","amount":1,"currency":"EUR","status":"succeeded","created":1}"#,
    )
    .await;
    let (attempt, _) = client.create_charge(&golden::create_charge(), None).await;
    server.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&attempt, Attempt::Uncertain { reason } if reason.contains("unusable charge")),
        "{attempt:?}"
    );

    let huge: &'static str = Box::leak(
        format!("{{\"pad\":\"{}\"}}", "x".repeat(crate::hygiene::MAX_BODY)).into_boxed_str(),
    );
    let (client, server) = client_and_server("201 Created", huge).await;
    let (attempt, _) = client.create_charge(&golden::create_charge(), None).await;
    let _ = server.await;
    assert!(
        matches!(&attempt, Attempt::Uncertain { reason } if reason.contains("not read")),
        "{attempt:?}"
    );

    let (client, server) = client_and_server(
        "200 OK",
        r#"{"data":[{"id":"ch\u001b[2J","reference_id":"r","account_id":"a","amount":1,"currency":"EUR","status":"succeeded","created":1},{"id":"ch_ok","reference_id":"r","account_id":"a","amount":1,"currency":"EUR","status":"succeeded","created":2}],"has_more":false}"#,
    )
    .await;
    let (found, _) = client.lookup("r", None).await;
    server.await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<String> = found
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["ch_ok"]);

    let (client, server) = client_and_server("200 OK", golden::REFUND).await;
    let _ = client.refund("ch_1/../x?y", REFUND_KEY).await;
    let sent = server.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        sent.request_line,
        "POST /v1/charges/ch_1%2F%2E%2E%2Fx%3Fy/refunds HTTP/1.1"
    );
}
