//! Charge once and print the result:
//!
//! ```sh
//! cargo run -p idem-client --example charge -- order-17 acc_1 1250 EUR
//! ```
//!
//! Run it twice with the same key: the second run prints the stored result
//! (`Replayed`), and the provider holds one charge. `IDEM_AMQP_URL` and
//! `IDEM_QUEUE` say where idem listens (the local broker and `idem.charges`
//! by default).

use std::time::Duration;

use idem_client::{Client, Request};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key, account, amount, currency] = args.as_slice() else {
        return Err("usage: charge <key> <account_id> <amount in minor units> <currency>".into());
    };
    let url = std::env::var("IDEM_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = std::env::var("IDEM_QUEUE").unwrap_or_else(|_| "idem.charges".into());
    let body = serde_json::json!({
        "account_id": account,
        "amount": amount.parse::<i64>()?,
        "currency": currency,
    });
    let request = Request::new(key.as_str(), serde_json::to_vec(&body)?);
    let client = Client::connect(&url, &queue).await?;
    let outcome = client.call(&request, Duration::from_secs(30)).await?;
    println!(
        "{key}: {:?} ({:?}), charge {}, reference {}",
        outcome.state,
        outcome.kind,
        outcome.charge_id.as_deref().unwrap_or("-"),
        outcome.reference_id
    );
    Ok(())
}
