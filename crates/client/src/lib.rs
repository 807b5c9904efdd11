//! # idem-client
//!
//! For Rust services that ask idem to charge: build a request (key, scope,
//! body), publish it the way idem's contract wants it (persistent, JSON,
//! `message_id` = the key, `app_id` = the scope, stamped, with a publisher
//! confirm, `mandatory` so a missing queue is an error and not a silent
//! drop), and optionally wait for its result over RabbitMQ's Direct
//! Reply-To, matched by correlation id. A request is validated here by the
//! very rules idem applies (`idem_message`), so a body idem would quarantine
//! is refused before it leaves the process. The contract itself:
//! `docs/contracts.md`, `docs/schema/`, `docs/asyncapi.yaml`.
//!
//! ```no_run
//! # async fn run() -> Result<(), idem_client::Error> {
//! use std::time::Duration;
//! use idem_client::{Client, Request, State};
//!
//! let client = Client::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "idem.charges").await?;
//! let request = Request::new("order-17", br#"{"account_id":"acc_1","amount":1250,"currency":"EUR"}"#)
//!     .in_scope("shop-a");
//! // Fire and forget (the broker confirmed it: idem will charge it once)...
//! let sent = client.publish(&request).await?;
//! println!("reference {}", sent.reference_id);
//! // ...or wait for the outcome. Publishing the same key again is safe: idem
//! // answers a duplicate with the stored result and never charges twice.
//! let outcome = client.call(&request, Duration::from_secs(30)).await?;
//! assert_eq!(outcome.state, State::Succeeded);
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - `request`: a request, its validation and its AMQP properties.
//! - `outcome`: the result event as a producer reads it.
//! - `client`: the connection, publishing with confirms, waiting for replies.

mod client;
mod outcome;
mod request;

pub use client::{Client, Error, Published};
pub use outcome::{Kind, Outcome, State};
pub use request::Request;
