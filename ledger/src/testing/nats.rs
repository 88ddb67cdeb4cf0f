//! A JetStream stream of a test's own on the NATS server the tests share.

use super::block_on_aside;

/// The tests' NATS server when `COUNTERSIGN_TEST_NATS_URL` is not set (`make test` starts it).
pub const DEFAULT_TEST_NATS: &str = "nats://127.0.0.1:4222";

/// The NATS server (with JetStream) the tests share: `COUNTERSIGN_TEST_NATS_URL`, default
/// [`DEFAULT_TEST_NATS`].
pub fn nats_url() -> String {
    std::env::var("COUNTERSIGN_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_TEST_NATS.to_owned())
}

/// A stream name and a subject prefix no other test uses, on the tests' server: the stream
/// (created by whatever the test runs, a relay or a `serve`) is deleted when this is dropped,
/// however the test ends.
#[derive(Debug)]
pub struct TestStream {
    /// `LABEL_` and 12 hexadecimal digits.
    pub name: String,
    /// `label` and the same digits.
    pub prefix: String,
    url: String,
}

impl TestStream {
    pub fn new(label: &str) -> Self {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let unique = &unique[..12];
        Self {
            name: format!("{}_{unique}", label.to_uppercase()),
            prefix: format!("{}{unique}", label.to_lowercase()),
            url: nats_url(),
        }
    }

    /// The server the stream lives on.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        block_on_aside(async move {
            if let Ok(client) = async_nats::connect(url).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await;
            }
        });
    }
}
