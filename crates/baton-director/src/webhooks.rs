//! Webhook notifications: the director POSTs a JSON event to each
//! configured URL when something needs a person's attention (a refused
//! enrolment, a revoked certificate; later failed jobs, failovers and
//! refused runs). Each body is signed with HMAC-SHA256 under a shared
//! secret (`baton-signature: sha256=<hex>`), so the receiver knows it came
//! from the director. Deliveries run in the background (blocking HTTP on
//! tokio's blocking threads), three attempts each; they never hold up the
//! request that caused them.

use hmac::{KeyInit, Mac};
use serde::Serialize;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `node_enrolled`, `enrolment_refused`, `certificate_revoked`.
    pub event: &'static str,
    /// Unix seconds.
    pub time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where events go.
#[derive(Clone)]
pub struct Webhooks {
    tx: Option<tokio::sync::mpsc::Sender<Event>>,
}

impl Webhooks {
    /// Starts the delivery task (on the current runtime) for these URLs.
    pub fn start(urls: Vec<String>, secret: Option<Vec<u8>>) -> Webhooks {
        if urls.is_empty() {
            return Webhooks { tx: None };
        }
        // Bounded: events beyond it (a flood, an endpoint down) are
        // dropped and said, not held without limit.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1024);
        tokio::spawn(async move {
            let agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_global(Some(std::time::Duration::from_secs(10)))
                .build()
                .new_agent();
            while let Some(ev) = rx.recv().await {
                let body = serde_json::to_vec(&ev).expect("events serialize");
                for url in &urls {
                    for attempt in 0..3u32 {
                        if attempt > 0 {
                            tokio::time::sleep(std::time::Duration::from_secs(1 << (2 * attempt)))
                                .await;
                        }
                        let (agent, to, body, secret) =
                            (agent.clone(), url.clone(), body.clone(), secret.clone());
                        let ok = tokio::task::spawn_blocking(move || {
                            let mut req = agent
                                .post(&to)
                                .header("content-type", "application/json")
                                .header("baton-event", ev_name(&body));
                            if let Some(s) = &secret {
                                req = req.header("baton-signature", sign(s, &body));
                            }
                            req.send(&body[..]).is_ok_and(|r| r.status().is_success())
                        })
                        .await
                        .unwrap_or(false);
                        if ok {
                            break;
                        }
                        if attempt == 2 {
                            eprintln!("director: webhook {url}: not delivered after 3 attempts");
                        }
                    }
                }
            }
        });
        Webhooks { tx: Some(tx) }
    }

    /// Queues an event (dropped if no webhook is configured).
    pub fn send(&self, event: &'static str, node: Option<&str>, message: String) {
        if let Some(tx) = &self.tx {
            let queued = tx.try_send(Event {
                event,
                time: crate::server::now(),
                node: node.map(str::to_string),
                message,
            });
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(ev)) = queued {
                eprintln!(
                    "director: webhook queue full; event {} not sent: {}",
                    ev.event, ev.message
                );
            }
        }
    }
}

fn ev_name(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
