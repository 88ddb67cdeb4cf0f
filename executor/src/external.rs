//! External capabilities: any process answering NATS requests on
//! `countersign.capability.<module>.<capability>` (see docs/capabilities.md).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capability::{Capability, Completed, Failure, Invocation, Progress};

/// The request a provider receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilityRequest {
    /// `execute` or `preview`.
    pub operation: String,
    pub tenant: String,
    pub action_id: String,
    pub action_type: String,
    pub execution_key: String,
    pub attempt: u32,
    pub payload: Value,
    /// Publish progress messages (any JSON) here while executing.
    pub progress_subject: String,
}

/// The reply a provider sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilityReply {
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub undo_payload: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub retryable: bool,
}

impl CapabilityReply {
    /// The capability did its work: `result` is recorded, `undo_payload` enables a rollback.
    pub fn succeeded(result: Value, undo_payload: Option<Value>) -> Self {
        Self {
            ok: true,
            result,
            undo_payload,
            error: None,
            retryable: false,
        }
    }

    /// The capability failed; a `retryable` failure is tried again up to the policy's attempts.
    pub fn failed(error: impl Into<String>, retryable: bool) -> Self {
        Self {
            ok: false,
            result: Value::Null,
            undo_payload: None,
            error: Some(error.into()),
            retryable,
        }
    }
}

#[derive(Debug, Clone)]
pub struct External {
    client: async_nats::Client,
    timeout: Duration,
}

impl External {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    pub fn subject(action_type: &str) -> String {
        format!("countersign.capability.{action_type}")
    }

    async fn call(
        &self,
        invocation: &Invocation,
        operation: &str,
        progress: Option<&Progress>,
    ) -> Result<CapabilityReply, Failure> {
        let progress_subject = self.client.new_inbox();
        let mut progress_messages = match progress {
            Some(_) => Some(
                self.client
                    .subscribe(progress_subject.clone())
                    .await
                    .map_err(|err| Failure::retryable(format!("NATS: {err}")))?,
            ),
            None => None,
        };
        let request = CapabilityRequest {
            operation: operation.to_owned(),
            tenant: invocation.tenant.to_string(),
            action_id: invocation.action_id.to_string(),
            action_type: invocation.action_type.to_string(),
            execution_key: invocation.execution_key.to_string(),
            attempt: invocation.attempt,
            payload: invocation.payload.clone(),
            progress_subject,
        };
        let body =
            serde_json::to_vec(&request).map_err(|err| Failure::permanent(err.to_string()))?;
        // The timeout is the request's own: the client's default request timeout (10 s) must not
        // cut a longer one short, and progress messages must not extend it.
        let call = self.client.send_request(
            Self::subject(invocation.action_type.as_str()),
            async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(self.timeout)),
        );
        tokio::pin!(call);
        let reply = loop {
            tokio::select! {
                // Progress first: a provider's progress messages arrive before its reply, and
                // none already received may be dropped because the reply was picked first.
                biased;
                Some(message) = async { match progress_messages.as_mut() { Some(messages) => messages.next().await, None => None } } => {
                    if let (Some(progress), Ok(value)) = (progress, serde_json::from_slice::<Value>(&message.payload)) {
                        progress.report(value);
                    }
                }
                reply = &mut call => break reply,
            }
        };
        let reply = match reply {
            Err(err) if err.kind() == async_nats::client::RequestErrorKind::TimedOut => {
                return Err(Failure::retryable(format!(
                    "{} did not answer within {:?}",
                    invocation.action_type, self.timeout
                )));
            }
            Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                return Err(Failure::permanent(format!(
                    "unknown capability {}: no provider answers on {}",
                    invocation.action_type,
                    Self::subject(invocation.action_type.as_str())
                )));
            }
            Err(err) => return Err(Failure::retryable(format!("NATS request: {err}"))),
            Ok(message) => message,
        };
        serde_json::from_slice(&reply.payload).map_err(|err| {
            Failure::permanent(format!(
                "{} answered something else than a capability reply: {err}",
                invocation.action_type
            ))
        })
    }
}

#[async_trait]
impl Capability for External {
    async fn execute(
        &self,
        invocation: &Invocation,
        progress: &Progress,
    ) -> Result<Completed, Failure> {
        let reply = self.call(invocation, "execute", Some(progress)).await?;
        if reply.ok {
            Ok(Completed {
                result: reply.result,
                undo_payload: reply.undo_payload,
            })
        } else {
            let message = reply
                .error
                .unwrap_or_else(|| "the provider reported a failure".to_owned());
            Err(Failure {
                message,
                retryable: reply.retryable,
            })
        }
    }

    async fn preview(&self, invocation: &Invocation) -> Result<Value, Failure> {
        let reply = self.call(invocation, "preview", None).await?;
        if reply.ok {
            Ok(reply.result)
        } else {
            Err(Failure {
                message: reply
                    .error
                    .unwrap_or_else(|| "the provider reported a failure".to_owned()),
                retryable: reply.retryable,
            })
        }
    }
}
