//! Each capability called directly (`Capability::execute` and `preview` with an `Invocation`)
//! against its real peer: `email.send` against an SMTP sink on loopback, `webhook.post` against an
//! axum receiver and against the Python receiver of docs/capabilities.md
//! (`scripts/webhook_receiver.sh` installs `blake3` from PyPI into a virtual environment under the
//! target directory), external capabilities against providers over NATS, and the example provider
//! (`examples/provider/inventory.rs`) itself. NATS is the tests' server
//! (`countersign_ledger::testing::nats_url`: `COUNTERSIGN_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`, started by `make test`); every test serves a module name of its own,
//! so tests run in parallel on one server.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

#[path = "../examples/provider/inventory.rs"]
mod inventory;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use axum::http::HeaderMap;
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::tenant::WebhookUrl;
use countersign_domain::{ActionId, ActionType, TenantId};
use countersign_executor::builtin::{
    Echo, Email, LoggedEmail, SIGNATURE_HEADER, Webhook, WebhooksDisabled,
};
use countersign_executor::external::{CapabilityReply, CapabilityRequest, External};
use countersign_executor::outbound::{Limits, Outbound};
use countersign_executor::{Capability, Failure, Invocation, Progress, ProgressHub};
use countersign_ledger::testing::{ChildGuard, nats_url};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{broadcast, mpsc};

/// The service's webhook key in these tests.
const WEBHOOK_KEY: [u8; 32] = [42; 32];

fn invocation(action_type: &str, payload: Value) -> Invocation {
    let action_type = ActionType::parse(action_type).expect("a valid action type");
    Invocation {
        tenant: TenantId::parse("acme").expect("a valid tenant"),
        action_id: ActionId::from_uuid(uuid::Uuid::new_v4()),
        execution_key: ExecutionKey::compute(&action_type, &payload),
        action_type,
        payload,
        attempt: 1,
        settings: Default::default(),
    }
}

/// A run's progress handle, and what it reported.
struct Reports {
    progress: Progress,
    action_id: ActionId,
    receiver: broadcast::Receiver<(ActionId, Value)>,
}

impl Reports {
    fn of(invocation: &Invocation) -> Self {
        let hub = ProgressHub::default();
        Self {
            receiver: hub.subscribe(),
            progress: Progress::new(hub, invocation.action_id),
            action_id: invocation.action_id,
        }
    }

    /// The progress messages reported so far, in order.
    fn taken(&mut self) -> Vec<Value> {
        let mut reported = Vec::new();
        while let Ok((action_id, progress)) = self.receiver.try_recv() {
            assert_eq!(action_id, self.action_id, "progress of another action");
            reported.push(progress);
        }
        reported
    }
}

fn failure<T: std::fmt::Debug>(outcome: Result<T, Failure>) -> Failure {
    match outcome {
        Ok(value) => panic!("expected a failure, got {value:?}"),
        Err(failure) => failure,
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

// ------------------------------------------------------------------------------------ email.send

/// Just enough of an SMTP server (RFC 5321) to receive and record messages.
mod smtp {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A message as the sink received it.
    #[derive(Debug)]
    pub struct Mail {
        pub from: String,
        pub recipients: Vec<String>,
        /// Headers and body, CRLF line ends, dots unstuffed.
        pub data: String,
    }

    impl Mail {
        /// A header's value, unfolded (the first one of that name).
        pub fn header(&self, name: &str) -> Option<String> {
            let (head, _) = self.data.split_once("\r\n\r\n")?;
            let mut value: Option<String> = None;
            for line in head.split("\r\n") {
                if line.starts_with([' ', '\t']) {
                    if let Some(value) = value.as_mut() {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                } else if value.is_some() {
                    break;
                } else if let Some((field, content)) = line.split_once(':')
                    && field.eq_ignore_ascii_case(name)
                {
                    value = Some(content.trim().to_owned());
                }
            }
            value
        }

        /// The body with LF line ends.
        pub fn body(&self) -> String {
            self.data
                .split_once("\r\n\r\n")
                .map_or("", |(_, body)| body)
                .replace("\r\n", "\n")
        }
    }

    pub struct Sink {
        pub url: String,
        delivered: mpsc::UnboundedReceiver<Mail>,
        sessions: Arc<AtomicUsize>,
    }

    impl Sink {
        /// A sink answering every `RCPT TO` with `rcpt` (`250 OK` accepts the recipient).
        pub async fn start(rcpt: &'static str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let (sender, delivered) = mpsc::unbounded_channel();
            let sessions = Arc::new(AtomicUsize::new(0));
            let counted = sessions.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(session(stream, rcpt, sender.clone()));
                }
            });
            Self {
                url: format!("smtp://{address}"),
                delivered,
                sessions,
            }
        }

        /// The messages accepted so far (each is recorded before its `250` is sent).
        pub fn delivered(&mut self) -> Vec<Mail> {
            let mut mails = Vec::new();
            while let Ok(mail) = self.delivered.try_recv() {
                mails.push(mail);
            }
            mails
        }

        /// How many connections were made to the sink.
        pub fn sessions(&self) -> usize {
            self.sessions.load(Ordering::SeqCst)
        }
    }

    fn address(command: &str) -> String {
        command
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(address, _)| address.to_owned())
            .unwrap_or_default()
    }

    async fn session(
        stream: TcpStream,
        rcpt: &'static str,
        delivered: mpsc::UnboundedSender<Mail>,
    ) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"220 sink.test ESMTP\r\n").await?;
        let (mut from, mut recipients) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_owned();
            let verb = command.to_ascii_uppercase();
            let reply = if verb.starts_with("EHLO") || verb.starts_with("HELO") {
                "250 sink.test"
            } else if verb.starts_with("MAIL FROM:") {
                from = address(&command);
                recipients.clear();
                "250 OK"
            } else if verb.starts_with("RCPT TO:") {
                if rcpt.starts_with('2') {
                    recipients.push(address(&command));
                }
                rcpt
            } else if verb == "DATA" {
                write
                    .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let _ = delivered.send(Mail {
                    from: from.clone(),
                    recipients: std::mem::take(&mut recipients),
                    data,
                });
                "250 OK queued"
            } else if verb == "RSET" {
                recipients.clear();
                "250 OK"
            } else if verb == "NOOP" {
                "250 OK"
            } else if verb == "QUIT" {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                "502 command not implemented"
            };
            write.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}

const FROM: &str = "countersign@example.test";

fn email_payload() -> Value {
    json!({
        "to": ["ana@example.test", "Bo Diallo <bo@example.test>"],
        "cc": ["audit@example.test"],
        "subject": "Refund 1042 approved",
        "text": "The refund of order 1042 was approved.\nIt ran once.",
    })
}

#[tokio::test]
async fn email_send_delivers_to_every_recipient_with_subject_body_and_the_execution_key_as_message_id()
 {
    let mut sink = smtp::Sink::start("250 OK").await;
    let email = Email::new(&sink.url, FROM).expect("an SMTP URL");
    let invocation = invocation("email.send", email_payload());
    let mut reports = Reports::of(&invocation);

    let completed = email
        .execute(&invocation, &reports.progress)
        .await
        .expect("the sink accepts the message");

    assert_eq!(completed.result["smtp"], "250", "{completed:?}");
    assert_eq!(completed.undo_payload, None);
    assert_eq!(reports.taken(), vec![json!({ "step": "sending" })]);
    let mails = sink.delivered();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.from, FROM);
    assert_eq!(
        mail.recipients
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["ana@example.test", "bo@example.test", "audit@example.test"])
    );
    let to = mail.header("To").expect("a To header");
    assert!(
        to.contains("ana@example.test") && to.contains("<bo@example.test>"),
        "{to}"
    );
    assert_eq!(mail.header("Cc").as_deref(), Some("audit@example.test"));
    assert!(mail.header("From").expect("a From header").contains(FROM));
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("Refund 1042 approved")
    );
    let message_id = mail.header("Message-ID").expect("a Message-ID header");
    assert!(
        message_id.contains(invocation.execution_key.as_str()),
        "{message_id} names the execution key, so that receivers drop a repeat"
    );
    assert_eq!(
        mail.body().trim_end(),
        "The refund of order 1042 was approved.\nIt ran once."
    );
}

#[tokio::test]
async fn email_send_payload_errors_are_permanent_and_reach_no_smtp_server() {
    let sink = smtp::Sink::start("250 OK").await;
    let email = Email::new(&sink.url, FROM).expect("an SMTP URL");
    let bad = [
        json!({ "subject": "s", "text": "t" }),
        json!({ "to": [], "subject": "s", "text": "t" }),
        json!({ "to": ["not an address"], "subject": "s", "text": "t" }),
        json!({ "to": ["ana@example.test"], "cc": ["@"], "subject": "s", "text": "t" }),
        json!({ "to": ["ana@example.test"], "subject": "s", "text": "t", "bcc": ["x@example.test"] }),
        json!({ "to": "ana@example.test", "subject": "s", "text": "t" }),
        json!(["ana@example.test"]),
    ];
    for payload in bad {
        let invocation = invocation("email.send", payload.clone());
        let reports = Reports::of(&invocation);
        let refused = failure(email.execute(&invocation, &reports.progress).await);
        assert!(!refused.retryable, "{payload}: {refused:?}");
        assert!(refused.message.contains("email.send"), "{refused:?}");
        let refused = failure(email.preview(&invocation).await);
        assert!(!refused.retryable, "{payload}: {refused:?}");
    }
    assert_eq!(sink.sessions(), 0, "a bad payload never connects");
}

#[tokio::test]
async fn email_send_to_an_unreachable_smtp_server_is_retryable() {
    let email =
        Email::new(&format!("smtp://127.0.0.1:{}", closed_port()), FROM).expect("an SMTP URL");
    let invocation = invocation("email.send", email_payload());
    let reports = Reports::of(&invocation);

    let failed = failure(email.execute(&invocation, &reports.progress).await);

    assert!(failed.retryable, "{failed:?}");
}

#[tokio::test]
async fn email_send_refused_by_the_server_is_permanent_and_deferred_is_retryable() {
    let mut refusing = smtp::Sink::start("550 5.1.1 no such mailbox").await;
    let email = Email::new(&refusing.url, FROM).expect("an SMTP URL");
    let invocation = invocation("email.send", email_payload());
    let reports = Reports::of(&invocation);
    let refused = failure(email.execute(&invocation, &reports.progress).await);
    assert!(!refused.retryable, "{refused:?}");
    assert!(refused.message.contains("no such mailbox"), "{refused:?}");
    assert!(refusing.delivered().is_empty());

    let mut deferring = smtp::Sink::start("451 4.3.0 try again later").await;
    let email = Email::new(&deferring.url, FROM).expect("an SMTP URL");
    let deferred = failure(email.execute(&invocation, &reports.progress).await);
    assert!(deferred.retryable, "{deferred:?}");
    assert!(deferring.delivered().is_empty());
}

#[tokio::test]
async fn email_preview_shows_the_message_and_sends_nothing() {
    let sink = smtp::Sink::start("250 OK").await;
    let email = Email::new(&sink.url, FROM).expect("an SMTP URL");
    let invocation = invocation("email.send", email_payload());

    let preview = email.preview(&invocation).await.expect("a preview");

    let message = preview["would_send"]
        .as_str()
        .expect("the formatted message");
    assert!(
        message.contains("Subject: Refund 1042 approved"),
        "{message}"
    );
    assert!(
        message.contains(invocation.execution_key.as_str()),
        "{message}"
    );
    assert_eq!(sink.sessions(), 0);
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn email_send_without_smtp_logs_the_email_and_refuses_what_smtp_would() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let invocation = invocation("email.send", email_payload());
    let reports = Reports::of(&invocation);

    let completed = LoggedEmail
        .execute(&invocation, &reports.progress)
        .await
        .expect("logged");

    assert_eq!(completed.result["delivered"], "log");
    assert_eq!(completed.result["to"], email_payload()["to"]);
    let logged = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(
        logged.contains("Refund 1042 approved") && logged.contains("ana@example.test"),
        "{logged}"
    );
    for payload in [
        json!({ "to": [], "subject": "s", "text": "t" }),
        json!({ "to": ["not an address"], "subject": "s", "text": "t" }),
        json!({ "subject": "s", "text": "t" }),
    ] {
        let invocation = self::invocation("email.send", payload.clone());
        let refused = failure(LoggedEmail.execute(&invocation, &reports.progress).await);
        assert!(!refused.retryable, "{payload}: {refused:?}");
        let refused = failure(LoggedEmail.preview(&invocation).await);
        assert!(!refused.retryable, "{payload}: {refused:?}");
    }
}

// ---------------------------------------------------------------------------------- webhook.post

/// An HTTP receiver on loopback: `POST /answer/<status>` records the request and answers
/// `<status>` with `{"received": true}`.
mod receiver {
    use axum::Json;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use countersign_domain::tenant::WebhookUrl;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    #[derive(Debug)]
    pub struct Received {
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    pub struct Receiver {
        base: String,
        received: mpsc::UnboundedReceiver<Received>,
    }

    async fn record(
        State(sender): State<mpsc::UnboundedSender<Received>>,
        Path(status): Path<u16>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, Json<Value>) {
        let _ = sender.send(Received { headers, body });
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            Json(json!({ "received": true })),
        )
    }

    /// Redirects to `/answer/200` with `status`.
    async fn redirect(Path(status): Path<u16>) -> (StatusCode, [(&'static str, &'static str); 1]) {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
            [("location", "/answer/200")],
        )
    }

    impl Receiver {
        pub async fn start() -> Self {
            let (sender, received) = mpsc::unbounded_channel();
            let app = Router::new()
                .route("/answer/{status}", post(record))
                .route("/redirect/{status}", post(redirect))
                .with_state(sender);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("address"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            Self { base, received }
        }

        /// The URL answering `status`.
        pub fn url(&self, status: u16) -> WebhookUrl {
            WebhookUrl::parse(format!("{}/answer/{status}", self.base)).expect("a valid URL")
        }

        /// The URL redirecting to `url(200)` with `status`.
        pub fn redirecting(&self, status: u16) -> WebhookUrl {
            WebhookUrl::parse(format!("{}/redirect/{status}", self.base)).expect("a valid URL")
        }

        /// The requests received so far (each is recorded before it is answered).
        pub fn received(&mut self) -> Vec<Received> {
            let mut all = Vec::new();
            while let Ok(request) = self.received.try_recv() {
                all.push(request);
            }
            all
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .expect("a text header")
}

/// A receiver's check as docs/capabilities.md describes it, written without the executor's code:
/// the tenant's secret is blake3 keyed with the service key over "countersign webhook secret for
/// <tenant>", as hex; the signature is HMAC-SHA256 keyed with that hex text over
/// "<timestamp>.<body>".
fn receiver_verifies(
    service_key: &[u8; 32],
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> bool {
    let secret = blake3::keyed_hash(
        service_key,
        format!("countersign webhook secret for {tenant}").as_bytes(),
    )
    .to_hex();
    let timestamp = header(headers, "x-countersign-timestamp");
    let Some(signature) = header(headers, SIGNATURE_HEADER)
        .strip_prefix("sha256=")
        .and_then(|hex| hex::decode(hex).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The outbound client of these tests: receivers run on loopback, which the operator's
/// allow-list (`COUNTERSIGN_OUTBOUND_ALLOW`) must open.
fn outbound() -> Outbound {
    Outbound::new(
        "127.0.0.0/8".parse().expect("a CIDR"),
        Limits {
            timeout: Duration::from_secs(10),
            ..Limits::default()
        },
    )
    .expect("an HTTP client")
}

fn webhook() -> Webhook {
    Webhook::new(WEBHOOK_KEY, outbound())
}

#[tokio::test]
async fn webhook_post_sends_the_payload_signed_for_the_tenant_with_the_execution_key() {
    let mut receiver = receiver::Receiver::start().await;
    let payload = json!({ "order": 1042, "amount": "10.00", "note": "é" });
    let mut invocation = invocation("webhook.post", payload.clone());
    invocation.settings.webhook_url = Some(receiver.url(200));
    let mut reports = Reports::of(&invocation);

    let completed = webhook()
        .execute(&invocation, &reports.progress)
        .await
        .expect("posted");

    assert_eq!(
        completed.result,
        json!({ "status": 200, "body": { "received": true } })
    );
    let progress = reports.taken();
    assert_eq!(progress.len(), 1, "{progress:?}");
    assert_eq!(progress[0]["step"], "posting");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        serde_json::from_slice::<Value>(&request.body).expect("a JSON body"),
        payload
    );
    assert_eq!(header(&request.headers, "content-type"), "application/json");
    assert_eq!(
        header(&request.headers, "idempotency-key"),
        invocation.execution_key.as_str()
    );
    assert_eq!(
        header(&request.headers, "x-countersign-action"),
        invocation.action_id.to_string()
    );
    let timestamp: i64 = header(&request.headers, "x-countersign-timestamp")
        .parse()
        .expect("a Unix timestamp");
    assert!(
        (chrono::Utc::now().timestamp() - timestamp).abs() < 300,
        "{timestamp} is now"
    );
    assert_eq!(
        header(&request.headers, SIGNATURE_HEADER),
        Webhook::signature(
            &Webhook::tenant_secret(&WEBHOOK_KEY, "acme"),
            timestamp,
            &request.body
        )
    );
    assert!(receiver_verifies(
        &WEBHOOK_KEY,
        "acme",
        &request.headers,
        &request.body
    ));
    assert!(
        !receiver_verifies(&WEBHOOK_KEY, "globex", &request.headers, &request.body),
        "another tenant's secret does not verify"
    );
    let mut tampered = request.body.to_vec();
    tampered.extend_from_slice(b" ");
    assert!(
        !receiver_verifies(&WEBHOOK_KEY, "acme", &request.headers, &tampered),
        "a changed body does not verify"
    );
}

#[test]
fn webhook_signature_matches_the_documented_example() {
    // The worked example in docs/capabilities.md (computed there with Python's hmac and blake3).
    let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).expect("below 32"));
    let secret = Webhook::tenant_secret(&key, "acme");
    assert_eq!(
        secret,
        "3901f49e761a03d6bddb9588818e39ec6c6db798c6e938223ca00e5466b32a61"
    );
    assert_eq!(
        Webhook::signature(&secret, 1_767_225_600, br#"{"order":1042}"#),
        "sha256=a183c4b3e533c44802844f9af9d70bbaf6d21b89ec9ce4d50667788fd65a9654"
    );
}

/// `scripts/webhook_receiver.py` (the verification code docs/capabilities.md shows) running in
/// Python, killed on drop.
struct PythonReceiver {
    #[expect(dead_code, reason = "kills the receiver when dropped")]
    child: ChildGuard,
    port: u16,
}

impl PythonReceiver {
    async fn start(service_key: &[u8; 32], tenant: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/webhook_receiver.sh"
            ))
            .arg(hex::encode(service_key))
            .arg(tenant)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("bash runs the receiver");
        let stdout = child.stdout.take().expect("its standard output");
        let mut receiver = Self {
            child: child.into(),
            port: 0,
        };
        // The first run installs blake3 from PyPI into the virtual environment.
        let line = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .map(|_| line)
            }),
        )
        .await
        .expect("the receiver starts within 5 minutes")
        .expect("the reading task")
        .expect("its first line");
        receiver.port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the receiver said {line:?}"));
        receiver
    }

    fn url(&self) -> WebhookUrl {
        WebhookUrl::parse(format!("http://127.0.0.1:{}/hook", self.port)).expect("a URL")
    }
}

#[tokio::test]
async fn a_python_receiver_written_from_the_docs_verifies_the_signature_and_drops_repeats() {
    let receiver = PythonReceiver::start(&WEBHOOK_KEY, "acme").await;
    let payload = json!({ "order": 1042, "note": "é" });
    let mut invocation = invocation("webhook.post", payload.clone());
    invocation.settings.webhook_url = Some(receiver.url());
    let reports = Reports::of(&invocation);

    let completed = webhook()
        .execute(&invocation, &reports.progress)
        .await
        .expect("the receiver verifies the signature");
    assert_eq!(
        completed.result,
        json!({ "status": 200, "body": {
            "verified": true,
            "idempotency_key": invocation.execution_key.as_str(),
            "duplicate": false,
            "payload": payload,
        } })
    );
    let repeated = webhook()
        .execute(&invocation, &reports.progress)
        .await
        .expect("verified again");
    assert_eq!(repeated.result["body"]["duplicate"], true);

    let other_key = Webhook::new([7; 32], outbound());
    let refused = failure(other_key.execute(&invocation, &reports.progress).await);
    assert!(
        !refused.retryable && refused.message.contains("401"),
        "{refused:?}"
    );
    let mut other_tenant = invocation.clone();
    other_tenant.tenant = TenantId::parse("globex").expect("a tenant");
    let refused = failure(webhook().execute(&other_tenant, &reports.progress).await);
    assert!(
        !refused.retryable && refused.message.contains("401"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn webhook_post_server_errors_and_throttling_are_retryable_client_errors_permanent() {
    let mut receiver = receiver::Receiver::start().await;
    for (status, retryable) in [
        (500, true),
        (502, true),
        (503, true),
        (429, true),
        (408, true),
        (400, false),
        (401, false),
        (404, false),
        (422, false),
    ] {
        let mut invocation = invocation("webhook.post", json!({ "status": status }));
        invocation.settings.webhook_url = Some(receiver.url(status));
        let reports = Reports::of(&invocation);

        let failed = failure(webhook().execute(&invocation, &reports.progress).await);

        assert_eq!(failed.retryable, retryable, "{status}: {failed:?}");
        assert!(failed.message.contains(&status.to_string()), "{failed:?}");
        assert_eq!(receiver.received().len(), 1, "{status} was posted once");
    }
}

#[tokio::test]
async fn webhook_post_does_not_follow_redirects_and_fails_for_good() {
    let mut receiver = receiver::Receiver::start().await;
    for status in [301, 302, 303, 307, 308] {
        let mut invocation = invocation("webhook.post", json!({ "status": status }));
        invocation.settings.webhook_url = Some(receiver.redirecting(status));
        let reports = Reports::of(&invocation);

        let failed = failure(webhook().execute(&invocation, &reports.progress).await);

        assert!(!failed.retryable, "{status}: {failed:?}");
        assert!(failed.message.contains(&status.to_string()), "{failed:?}");
        assert!(
            receiver.received().is_empty(),
            "{status}: the redirect's target was never called"
        );
    }
}

#[tokio::test]
async fn webhook_post_without_a_webhook_url_is_permanent_and_posts_nothing() {
    let mut receiver = receiver::Receiver::start().await;
    let invocation = invocation("webhook.post", json!({ "order": 1042 }));
    let reports = Reports::of(&invocation);

    let failed = failure(webhook().execute(&invocation, &reports.progress).await);

    assert!(!failed.retryable, "{failed:?}");
    assert!(failed.message.contains("webhook_url"), "{failed:?}");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn webhook_post_to_an_unreachable_receiver_is_retryable() {
    let mut invocation = invocation("webhook.post", json!({ "order": 1042 }));
    invocation.settings.webhook_url =
        Some(WebhookUrl::parse(format!("http://127.0.0.1:{}/hook", closed_port())).expect("a URL"));
    let reports = Reports::of(&invocation);

    let failed = failure(webhook().execute(&invocation, &reports.progress).await);

    assert!(failed.retryable, "{failed:?}");
}

#[tokio::test]
async fn webhook_preview_names_the_destination_and_key_and_posts_nothing() {
    let mut receiver = receiver::Receiver::start().await;
    let mut invocation = invocation("webhook.post", json!({ "order": 1042 }));
    invocation.settings.webhook_url = Some(receiver.url(200));

    let preview = webhook().preview(&invocation).await.expect("a preview");

    assert_eq!(
        preview,
        json!({
            "would_post_to": receiver.url(200).as_str(),
            "idempotency_key": invocation.execution_key.as_str(),
            "body": { "order": 1042 },
        })
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn webhook_preview_hides_the_credentials_of_the_destination() {
    let mut invocation = invocation("webhook.post", json!({ "order": 1042 }));
    invocation.settings.webhook_url =
        Some(WebhookUrl::parse("https://crm:s3cret@hooks.example/in?x=1").expect("a URL"));

    let preview = webhook().preview(&invocation).await.expect("a preview");

    assert_eq!(preview["would_post_to"], "https://***@hooks.example/in?x=1");
}

#[tokio::test]
async fn webhook_post_without_a_signing_key_refuses_to_run_or_preview() {
    let mut receiver = receiver::Receiver::start().await;
    let mut invocation = invocation("webhook.post", json!({ "order": 1042 }));
    invocation.settings.webhook_url = Some(receiver.url(200));
    let reports = Reports::of(&invocation);

    let refused = failure(
        WebhooksDisabled
            .execute(&invocation, &reports.progress)
            .await,
    );
    assert!(!refused.retryable);
    assert!(refused.message.contains("COUNTERSIGN_WEBHOOK_SECRET"));
    assert!(!failure(WebhooksDisabled.preview(&invocation).await).retryable);
    assert!(receiver.received().is_empty(), "never posts unsigned");
}

// ------------------------------------------------------------------------ external (NATS) providers

async fn nats() -> Client {
    nats_with(async_nats::ConnectOptions::new()).await
}

async fn nats_with(options: async_nats::ConnectOptions) -> Client {
    let url = nats_url();
    options
        .connect(url.as_str())
        .await
        .unwrap_or_else(|err| panic!("NATS at {url} (make services): {err}"))
}

/// A module name of the test's own.
fn module() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Returns once the server has processed every earlier operation of `client` (its
/// subscriptions): a message the client sends itself comes back only after them.
async fn settled(client: &Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, "".into()).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(5), echo.next())
        .await
        .expect("the server answers")
        .expect("the echo");
}

/// What a test provider does with one request.
struct Answer {
    progress: Vec<Value>,
    /// Waits this long before replying.
    delay: Duration,
    /// The reply's bytes; `None` never replies.
    reply: Option<Vec<u8>>,
}

impl Answer {
    fn reply(reply: CapabilityReply) -> Self {
        Self {
            progress: Vec::new(),
            delay: Duration::ZERO,
            reply: Some(serde_json::to_vec(&reply).expect("JSON")),
        }
    }
}

/// A provider on a connection of its own, serving `countersign.capability.<action_type>`:
/// records every request and answers as `answer` says. Ready when this returns.
async fn provider(
    action_type: &str,
    answer: impl Fn(&CapabilityRequest) -> Answer + Send + 'static,
) -> mpsc::UnboundedReceiver<CapabilityRequest> {
    let client = nats().await;
    let mut requests = client
        .subscribe(External::subject(action_type))
        .await
        .expect("subscribe");
    settled(&client).await;
    let (record, recorded) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: CapabilityRequest =
                serde_json::from_slice(&message.payload).expect("a capability request");
            let answer = answer(&request);
            for progress in &answer.progress {
                client
                    .publish(
                        request.progress_subject.clone(),
                        progress.to_string().into(),
                    )
                    .await
                    .expect("publish progress");
            }
            let _ = record.send(request);
            // No sleep at all without a delay: the reply follows the progress immediately.
            if !answer.delay.is_zero() {
                tokio::time::sleep(answer.delay).await;
            }
            if let (Some(reply), Some(to)) = (answer.reply, message.reply) {
                client.publish(to, reply.into()).await.expect("reply");
            }
        }
    });
    recorded
}

#[tokio::test]
async fn external_execute_sends_the_invocation_and_returns_result_undo_payload_and_every_progress_message()
 {
    let action_type = format!("{}.refund", module());
    let mut requests = provider(&action_type, |request| Answer {
        progress: (1..=50).map(|step| json!({ "step": step })).collect(),
        ..Answer::reply(CapabilityReply::succeeded(
            json!({ "refunded": request.payload["order"] }),
            Some(json!({ "charge": request.payload["order"] })),
        ))
    })
    .await;
    let external = External::new(nats().await, Duration::from_secs(10));
    let mut invocation = invocation(&action_type, json!({ "order": 1042 }));
    invocation.attempt = 2;
    let mut reports = Reports::of(&invocation);

    let completed = external
        .execute(&invocation, &reports.progress)
        .await
        .expect("the provider succeeds");

    assert_eq!(completed.result, json!({ "refunded": 1042 }));
    assert_eq!(completed.undo_payload, Some(json!({ "charge": 1042 })));
    assert_eq!(
        reports.taken(),
        (1..=50)
            .map(|step| json!({ "step": step }))
            .collect::<Vec<_>>(),
        "every progress message, in order, none dropped because the reply came right after"
    );
    let request = requests.try_recv().expect("the provider was asked");
    assert_eq!(request.operation, "execute");
    assert_eq!(request.tenant, "acme");
    assert_eq!(request.action_id, invocation.action_id.to_string());
    assert_eq!(request.action_type, action_type);
    assert_eq!(request.execution_key, invocation.execution_key.as_str());
    assert_eq!(request.attempt, 2);
    assert_eq!(request.payload, json!({ "order": 1042 }));
    assert!(requests.try_recv().is_err(), "asked once");
}

#[tokio::test]
async fn external_preview_asks_the_provider_for_a_preview() {
    let action_type = format!("{}.refund", module());
    let mut requests = provider(&action_type, |request| {
        Answer::reply(CapabilityReply::succeeded(
            json!({ "would_refund": request.payload["order"], "operation": request.operation }),
            None,
        ))
    })
    .await;
    let external = External::new(nats().await, Duration::from_secs(10));
    let invocation = invocation(&action_type, json!({ "order": 7 }));

    let preview = external.preview(&invocation).await.expect("a preview");

    assert_eq!(
        preview,
        json!({ "would_refund": 7, "operation": "preview" })
    );
    assert_eq!(requests.try_recv().expect("asked").operation, "preview");
}

#[tokio::test]
async fn external_provider_failures_keep_their_message_and_retryable_flag() {
    let action_type = format!("{}.charge", module());
    let _requests = provider(&action_type, |request| {
        Answer::reply(match request.payload["case"].as_str() {
            Some("busy") => CapabilityReply::failed("the ledger is busy", true),
            Some("declined") => CapabilityReply::failed("card declined", false),
            // A failure that names no error.
            _ => CapabilityReply {
                error: None,
                ..CapabilityReply::failed("", false)
            },
        })
    })
    .await;
    let external = External::new(nats().await, Duration::from_secs(10));

    for (case, message, retryable) in [
        ("busy", "the ledger is busy", true),
        ("declined", "card declined", false),
        ("silent", "the provider reported a failure", false),
    ] {
        let invocation = invocation(&action_type, json!({ "case": case }));
        let reports = Reports::of(&invocation);
        let executed = failure(external.execute(&invocation, &reports.progress).await);
        assert_eq!(
            executed,
            Failure {
                message: message.into(),
                retryable
            },
            "{case}"
        );
        let previewed = failure(external.preview(&invocation).await);
        assert_eq!(
            previewed,
            Failure {
                message: message.into(),
                retryable
            },
            "{case} (preview)"
        );
    }
}

#[tokio::test]
async fn external_reply_that_is_not_a_capability_reply_is_permanent() {
    let action_type = format!("{}.refund", module());
    let _requests = provider(&action_type, |_| Answer {
        progress: Vec::new(),
        delay: Duration::ZERO,
        reply: Some(b"OK".to_vec()),
    })
    .await;
    let external = External::new(nats().await, Duration::from_secs(10));
    let invocation = invocation(&action_type, json!({}));
    let reports = Reports::of(&invocation);

    let failed = failure(external.execute(&invocation, &reports.progress).await);

    assert!(!failed.retryable, "{failed:?}");
    assert!(failed.message.contains("capability reply"), "{failed:?}");
}

#[tokio::test]
async fn external_provider_that_never_answers_times_out_retryably() {
    let action_type = format!("{}.refund", module());
    let mut requests = provider(&action_type, |_| Answer {
        progress: Vec::new(),
        delay: Duration::ZERO,
        reply: None,
    })
    .await;
    let external = External::new(nats().await, Duration::from_millis(300));
    let invocation = invocation(&action_type, json!({}));
    let reports = Reports::of(&invocation);

    let failed = failure(external.execute(&invocation, &reports.progress).await);

    assert!(failed.retryable, "{failed:?}");
    assert!(
        failed.message.contains("did not answer within"),
        "{failed:?}"
    );
    // The provider records a request as it receives it, whenever that is relative to the
    // caller's timeout.
    tokio::time::timeout(Duration::from_secs(60), requests.recv())
        .await
        .expect("the provider was asked")
        .expect("a request");
    let failed = failure(external.preview(&invocation).await);
    assert!(failed.retryable, "{failed:?}");
}

#[tokio::test]
async fn external_progress_messages_do_not_extend_the_timeout() {
    let action_type = format!("{}.refund", module());
    let client = nats().await;
    let mut requests = client
        .subscribe(External::subject(&action_type))
        .await
        .expect("subscribe");
    settled(&client).await;
    // Reports progress every 50 ms and never answers.
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: CapabilityRequest =
                serde_json::from_slice(&message.payload).expect("a capability request");
            let client = client.clone();
            tokio::spawn(async move {
                for step in 0.. {
                    let progress = json!({ "step": step }).to_string();
                    if client
                        .publish(request.progress_subject.clone(), progress.into())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let external = External::new(nats().await, Duration::from_millis(400));

    // Every call ends at its timeout. Whether progress reached a call before its timeout depends
    // on scheduling, so calls are repeated until one did (the case this test is about).
    let mut calls = 0;
    loop {
        calls += 1;
        let invocation = invocation(&action_type, json!({}));
        let mut reports = Reports::of(&invocation);
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            external.execute(&invocation, &reports.progress),
        )
        .await
        .expect("the call ends at its timeout although progress keeps coming");
        let failed = failure(outcome);
        assert!(failed.retryable, "{failed:?}");
        assert!(
            failed.message.contains("did not answer within"),
            "{failed:?}"
        );
        if !reports.taken().is_empty() {
            break;
        }
        assert!(calls < 20, "no call received progress before its timeout");
    }
}

#[tokio::test]
async fn external_timeout_is_the_capabilitys_not_the_nats_clients_default() {
    let action_type = format!("{}.refund", module());
    let _requests = provider(&action_type, |_| Answer {
        delay: Duration::from_millis(800),
        ..Answer::reply(CapabilityReply::succeeded(json!({ "slow": true }), None))
    })
    .await;
    // A client whose own request timeout is shorter than the provider takes.
    let client = nats_with(
        async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_millis(200))),
    )
    .await;
    let external = External::new(client, Duration::from_secs(10));
    let invocation = invocation(&action_type, json!({}));
    let reports = Reports::of(&invocation);

    let completed = external
        .execute(&invocation, &reports.progress)
        .await
        .expect("answered within the capability's timeout");

    assert_eq!(completed.result, json!({ "slow": true }));
}

#[tokio::test]
async fn external_capability_without_a_provider_is_an_unknown_capability_and_fails_for_good() {
    let external = External::new(nats().await, Duration::from_secs(10));
    let invocation = invocation(&format!("{}.refund", module()), json!({}));
    let reports = Reports::of(&invocation);

    let failed = failure(external.execute(&invocation, &reports.progress).await);
    assert!(!failed.retryable, "{failed:?}");
    assert!(failed.message.contains("unknown capability"), "{failed:?}");

    let failed = failure(external.preview(&invocation).await);
    assert!(!failed.retryable, "{failed:?}");
    assert!(failed.message.contains("unknown capability"), "{failed:?}");
}

#[tokio::test]
async fn the_registry_runs_built_ins_by_name_and_every_other_action_type_through_nats() {
    let action_type = format!("{}.refund", module());
    let mut requests = provider(&action_type, |_| {
        Answer::reply(CapabilityReply::succeeded(
            json!({ "by": "provider" }),
            None,
        ))
    })
    .await;
    let registry = countersign_executor::registry(Some(WEBHOOK_KEY), None, Some(nats().await))
        .expect("a registry");

    let external = invocation(&action_type, json!({}));
    let capability = registry
        .resolve(&external.action_type)
        .expect("external types go to NATS");
    let reports = Reports::of(&external);
    let completed = capability
        .execute(&external, &reports.progress)
        .await
        .expect("the provider answers");
    assert_eq!(completed.result, json!({ "by": "provider" }));
    assert!(requests.try_recv().is_ok());

    let echo = invocation("noop.echo", json!({ "hello": "world" }));
    let completed = registry
        .resolve(&echo.action_type)
        .expect("built in")
        .execute(&echo, &reports.progress)
        .await
        .expect("echoed");
    assert_eq!(completed.result, json!({ "echo": { "hello": "world" } }));
    let email = invocation("email.send", email_payload());
    let completed = registry
        .resolve(&email.action_type)
        .expect("built in")
        .execute(&email, &reports.progress)
        .await
        .expect("logged without SMTP");
    assert_eq!(completed.result["delivered"], "log");
    assert!(requests.try_recv().is_err(), "built-ins never ask NATS");

    let embedded = countersign_executor::registry(None, None, None).expect("a registry");
    assert!(
        embedded.resolve(&external.action_type).is_none(),
        "without NATS an unknown type has no capability"
    );
    let webhook = invocation("webhook.post", json!({}));
    let refused = failure(
        embedded
            .resolve(&webhook.action_type)
            .expect("built in")
            .execute(&webhook, &reports.progress)
            .await,
    );
    assert!(!refused.retryable, "no signing key: {refused:?}");
    let echoed = Echo.preview(&echo).await.expect("a preview");
    assert_eq!(echoed, json!({ "would_echo": { "hello": "world" } }));
}

// ------------------------------------------------------------------------ the example provider

/// Runs the example provider (`examples/provider.rs`) on a module of the test's own.
async fn example_provider() -> (String, External) {
    let module = module();
    let client = nats().await;
    let requests = inventory::subscribe(&client, &module)
        .await
        .expect("subscribe");
    settled(&client).await;
    tokio::spawn(inventory::serve(client, requests));
    (
        format!("{module}.reserve"),
        External::new(nats().await, Duration::from_secs(10)),
    )
}

#[tokio::test]
async fn the_example_provider_reserves_with_progress_and_an_undo_payload_once_per_execution_key() {
    let (action_type, external) = example_provider().await;
    let reserve = invocation(&action_type, json!({ "sku": "widget", "quantity": 3 }));
    let mut reports = Reports::of(&reserve);

    let preview = external.preview(&reserve).await.expect("a preview");
    assert_eq!(
        preview,
        json!({
            "would_reserve": { "sku": "widget", "quantity": 3 },
            "available": inventory::INITIAL_STOCK,
            "enough": true,
        })
    );

    let completed = external
        .execute(&reserve, &reports.progress)
        .await
        .expect("reserved");
    let reservation = format!("rsv-{}", &reserve.execution_key.as_str()[..16]);
    assert_eq!(completed.result["reservation"], reservation.as_str());
    assert_eq!(completed.result["available"], inventory::INITIAL_STOCK - 3);
    assert_eq!(
        completed.undo_payload,
        Some(json!({ "release": reservation }))
    );
    assert_eq!(
        reports.taken(),
        vec![
            json!({ "step": "checking stock", "sku": "widget", "available": inventory::INITIAL_STOCK }),
            json!({ "step": "reserved", "reservation": reservation }),
        ]
    );

    // A retry with the same execution key finds the reservation: nothing is reserved twice.
    let mut retry = reserve.clone();
    retry.attempt = 2;
    let repeated = external
        .execute(&retry, &reports.progress)
        .await
        .expect("answered again");
    assert_eq!(repeated.result["reservation"], reservation.as_str());
    assert_eq!(repeated.result["repeated"], true);
    let preview = external.preview(&reserve).await.expect("a preview");
    assert_eq!(preview["available"], inventory::INITIAL_STOCK - 3);

    // A rollback runs the undo payload through the same capability.
    let undo = completed.undo_payload.expect("an undo payload");
    let rollback = invocation(&action_type, undo);
    let preview = external.preview(&rollback).await.expect("a preview");
    assert_eq!(preview["would_release"], reservation.as_str());
    assert_eq!(preview["already_released"], false);
    let released = external
        .execute(&rollback, &reports.progress)
        .await
        .expect("released");
    assert_eq!(released.result["available"], inventory::INITIAL_STOCK);
    assert_eq!(released.result["repeated"], false);
    let again = external
        .execute(&rollback, &reports.progress)
        .await
        .expect("released again");
    assert_eq!(again.result["repeated"], true);
    assert_eq!(again.result["available"], inventory::INITIAL_STOCK);
}

#[tokio::test]
async fn the_example_provider_refuses_what_cannot_succeed_for_good() {
    let (action_type, external) = example_provider().await;
    let module = action_type.split_once('.').map_or("", |(module, _)| module);
    for (action_type, payload, reason) in [
        (
            action_type.clone(),
            json!({ "sku": "widget", "quantity": inventory::INITIAL_STOCK + 1 }),
            "available",
        ),
        (
            action_type.clone(),
            json!({ "sku": "widget", "quantity": 0 }),
            "at least 1",
        ),
        (action_type.clone(), json!({ "sku": "widget" }), "quantity"),
        (
            action_type.clone(),
            json!({ "release": "rsv-none" }),
            "no reservation",
        ),
        (format!("{module}.count"), json!({}), "not served here"),
    ] {
        let invocation = invocation(&action_type, payload.clone());
        let reports = Reports::of(&invocation);
        let refused = failure(external.execute(&invocation, &reports.progress).await);
        assert!(!refused.retryable, "{payload}: {refused:?}");
        assert!(refused.message.contains(reason), "{payload}: {refused:?}");
    }
}
