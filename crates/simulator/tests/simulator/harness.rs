//! A simulator on 127.0.0.1:0 and a reqwest client for it.

use std::time::Duration;

use idem_charge_api::{
    ChargeMetadata, CreateCharge, ErrorBody, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
};
use idem_simulator::{Faults, Ledger, Running, Simulator, Stats};
use reqwest::{Client, StatusCode};

/// A running simulator and a client for it.
pub struct Sim {
    /// The simulator, for direct inspection.
    pub sim: Simulator,
    /// Its background server.
    pub running: Running,
    /// A client with a 10 s timeout.
    pub http: Client,
}

/// Starts a simulator with these faults on a free port.
pub async fn start(faults: Faults) -> Sim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::new(faults);
    let running = sim.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Sim {
        sim,
        running,
        http: client(Duration::from_secs(10)),
    }
}

/// A client that gives up after `timeout`.
pub fn client(timeout: Duration) -> Client {
    Client::builder().timeout(timeout).build().unwrap()
}

/// A valid charge request in EUR.
pub fn request(reference: &str, account: &str, amount: i64) -> CreateCharge {
    CreateCharge {
        reference_id: reference.to_owned(),
        account_id: account.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        metadata: ChargeMetadata {
            source: "default".to_owned(),
            message_id: format!("msg-{reference}"),
        },
    }
}

impl Sim {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    pub async fn charge_with(
        &self,
        http: &Client,
        key: Option<&str>,
        body: &CreateCharge,
    ) -> reqwest::Result<reqwest::Response> {
        let mut call = http.post(self.url("/v1/charges")).json(body);
        if let Some(key) = key {
            call = call.header(IDEMPOTENCY_KEY, key);
        }
        call.send().await
    }

    pub async fn charge(&self, key: Option<&str>, body: &CreateCharge) -> reqwest::Response {
        self.charge_with(&self.http, key, body).await.unwrap()
    }

    pub async fn refund(&self, charge: &str, key: &str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/charges/{charge}/refunds")))
            .header(IDEMPOTENCY_KEY, key)
            .send()
            .await
            .unwrap()
    }

    pub async fn list(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .get(self.url("/v1/charges"))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_ledger(&self) -> Ledger {
        let response = self
            .http
            .get(self.url("/_sim/ledger"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn admin_stats(&self) -> Stats {
        let response = self.http.get(self.url("/_sim/stats")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// Whether the answer carries `Idempotent-Replayed: true`.
pub fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(IDEMPOTENT_REPLAYED)
        .is_some_and(|v| v == "true")
}

/// The `error.type` of an error body.
pub async fn error_kind(response: reqwest::Response) -> String {
    response.json::<ErrorBody>().await.unwrap().error.kind
}
