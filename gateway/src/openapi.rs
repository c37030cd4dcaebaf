//! `GET /openapi.json`: the surfaces as implemented (paths, methods, answers).

use serde_json::{json, Value};

fn op(summary: &str, answers: &[(&str, &str)]) -> Value {
    let mut responses = serde_json::Map::new();
    for (code, description) in answers {
        responses.insert((*code).to_string(), json!({"description": description}));
    }
    json!({"summary": summary, "responses": responses})
}

pub fn document() -> Value {
    let accepted = [
        ("202", "Accepted; the result follows as a callback"),
        ("400", "FSPIOP error 3100/3101/3102"),
        ("406", "FSPIOP error 3001"),
        ("503", "FSPIOP error 2003, Retry-After"),
    ];
    let admin = [
        ("200", "OK"),
        ("400", "FSPIOP error"),
        ("404", "Unknown participant or account"),
    ];
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Position engine hub", "version": env!("CARGO_PKG_VERSION"),
                 "description": "FSPIOP v1.1 transfers (FSPIOP listener) and the admin/operator API (admin listener)."},
        "paths": {
            "/transfers": {"post": op("Prepare a transfer (FSPIOP)", &accepted)},
            "/transfers/{ID}": {
                "put": op("Fulfil (COMMITTED or RESERVED) a transfer (FSPIOP, payee)", &accepted),
                "get": op("Ask for a transfer's state; answered by callback (FSPIOP)", &accepted)
            },
            "/transfers/{ID}/error": {"put": op("Reject a transfer (FSPIOP, payee)", &accepted)},
            "/participants": {"post": op("Create a participant account in a currency", &[("201", "Created"), ("400", "FSPIOP error")]),
                              "get": op("List participants", &admin)},
            "/participants/{name}": {"get": op("One participant", &admin), "put": op("Set isActive", &admin)},
            "/participants/{name}/initialPositionAndLimits": {"post": op("Initial position and NET_DEBIT_CAP (once)", &[("201", "Created"), ("400", "FSPIOP error")])},
            "/participants/{name}/limits": {"get": op("Limits", &admin), "put": op("Change the NET_DEBIT_CAP", &admin)},
            "/participants/{name}/accounts": {"get": op("POSITION and SETTLEMENT accounts", &admin)},
            "/participants/{name}/accounts/{id}": {"post": op("recordFundsIn or recordFundsOutPrepareReserve", &[("202", "Accepted"), ("400", "FSPIOP error")])},
            "/participants/{name}/accounts/{id}/transfers/{transferId}": {"put": op("recordFundsOutCommit or recordFundsOutAbort", &[("202", "Accepted"), ("400", "FSPIOP error")])},
            "/participants/{name}/endpoints": {"post": op("Register a callback endpoint", &[("201", "Created")]), "get": op("List endpoints", &admin)},
            "/participants/{name}/positions": {"get": op("Positions summed over all partitions", &admin)},
            "/partitions": {"get": op("Partitions: owner, epoch, committed batch, queue depth", &admin)},
            "/health/live": {"get": op("Liveness", &[("200", "OK")])},
            "/health/ready": {"get": op("Readiness (no stopped partition)", &[("200", "OK"), ("503", "A partition is stopped")])},
            "/metrics": {"get": op("Prometheus metrics", &[("200", "OK")])}
        }
    })
}
