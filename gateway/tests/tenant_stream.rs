//! `GET /v1/stream`: the tenant's live events, scoped to what the caller may see, resumable
//! with `Last-Event-ID` without losing or repeating an event. Everything through the router.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use countersign_ledger::on_both_stores;
use futures::StreamExt;
use serde_json::{Value, json};
use support::{TestApp, token};

fn refund(order: u32) -> Value {
    json!({
        "module": "billing", "capability": "refund",
        "payload": { "order": order, "amount": 25.5 },
        "summary": format!("Refund order {order}"),
    })
}

async fn submitted(app: &TestApp, credential: &str, order: u32) -> String {
    let answer = app.post("/v1/actions", credential, refund(order)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body["id"].as_str().expect("id").to_owned()
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A stream read event by event (keep-alive comments skipped).
struct Events {
    frames: axum::body::BodyDataStream,
    buffer: String,
}

impl Events {
    /// The next event, or `None` once the stream has ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    event: "message".into(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        event.id = Some(id.trim().to_owned());
                    } else if let Some(name) = line.strip_prefix("event:") {
                        name.trim().clone_into(&mut event.event);
                    } else if let Some(part) = line.strip_prefix("data:") {
                        data.push_str(part.trim());
                    }
                }
                if data.is_empty() && event.id.is_none() {
                    continue; // a comment: keep-alive
                }
                event.data = serde_json::from_str(&data).expect("JSON data");
                return Some(event);
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.frames.next())
                .await
                .expect("an event or the end within 20 s")?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&frame.expect("bytes")));
        }
    }

    /// The next event; the test fails when the stream ends first.
    async fn expect(&mut self) -> Sse {
        self.next().await.expect("the stream ended early")
    }

    /// Reads until an event of `action` of type `event_type`, answering everything read.
    async fn until(&mut self, action: &str, event_type: &str) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let event = self.expect().await;
            let done = event.event == event_type && event.data["action_id"] == action;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

async fn request_stream(
    app: &TestApp,
    uri: &str,
    credential: &str,
    last: Option<&str>,
) -> axum::response::Response {
    let mut request = Request::get(uri).header("authorization", format!("Bearer {credential}"));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    tower::ServiceExt::oneshot(
        countersign_gateway::app(app.state.clone()),
        request.body(Body::empty()).expect("request"),
    )
    .await
    .expect("response")
}

/// Opens the stream and reads its `ready` event (after which nothing committed is missed).
async fn open(app: &TestApp, credential: &str, last: Option<&str>) -> Events {
    let response = request_stream(app, "/v1/stream", credential, last).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an event stream"
    );
    let mut events = Events {
        frames: response.into_body().into_data_stream(),
        buffer: String::new(),
    };
    let ready = events.expect().await;
    assert_eq!(ready.event, "ready", "{ready:?}");
    if let Some(last) = last {
        assert_eq!(
            ready.id.as_deref(),
            Some(last),
            "ready names the resume point"
        );
    }
    events
}

async fn new_submission_and_vote_reach_the_tenant_and_no_other(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let adam = token("adam", "acme", &["admin"]);
    let olga = token("olga", "acme", &["owner"]);
    let globex = token("gus", "globex", &["owner", "requester"]);
    let mut acme_stream = open(&app, &olga, None).await;
    let mut globex_stream = open(&app, &globex, None).await;

    let id = submitted(&app, &rita, 1042).await;
    let theirs = submitted(&app, &globex, 7).await;
    let voted = app
        .post(
            &format!("/v1/actions/{id}/approve"),
            &adam,
            json!({ "comment": "ok" }),
        )
        .await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
    let marker = submitted(&app, &rita, 1043).await;

    let seen = acme_stream.until(&marker, "ActionSubmitted").await;
    let submission = seen
        .iter()
        .find(|event| event.event == "ActionSubmitted" && event.data["action_id"] == id.as_str())
        .expect("the submission is streamed");
    let data = &submission.data;
    assert_eq!(data["event_type"], "ActionSubmitted");
    assert_eq!(data["status"], "pending");
    assert_eq!(data["summary"], "Refund order 1042");
    assert_eq!(data["requested_by"], "rita");
    assert_eq!(data["module"], "billing");
    assert_eq!(data["capability"], "refund");
    assert!(
        data["risk"]["level"].is_string() && data["risk"]["score"].is_number(),
        "{data}"
    );
    assert_eq!(
        data["eligible"], true,
        "olga, an owner, may vote on it (the default policy): {data}"
    );
    assert_eq!(
        submission.id.as_deref(),
        data["cursor"].as_str(),
        "id is the log cursor"
    );
    let vote = seen
        .iter()
        .find(|event| event.event == "VoteCast" && event.data["action_id"] == id.as_str())
        .expect("the vote is streamed");
    assert_eq!(vote.data["actor"], "adam");
    assert!(vote.data["progress"]["rules"].is_array(), "{}", vote.data);
    assert!(
        seen.iter()
            .all(|event| event.data["action_id"] != theirs.as_str()),
        "another tenant's action never shows: {seen:?}"
    );
    // Ids follow the log: strictly increasing positions.
    let positions: Vec<i64> = seen
        .iter()
        .map(|event| event.data["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "{positions:?}"
    );

    let first = globex_stream.expect().await;
    assert_eq!(
        first.data["action_id"],
        theirs.as_str(),
        "globex sees its own first: {first:?}"
    );
    let again = submitted(&app, &globex, 8).await;
    let seen = globex_stream.until(&again, "ActionSubmitted").await;
    assert!(
        seen.iter()
            .all(|event| event.data["action_id"] != id.as_str()
                && event.data["action_id"] != marker.as_str()),
        "acme's actions never show to globex: {seen:?}"
    );
}
on_both_stores!(new_submission_and_vote_reach_the_tenant_and_no_other);

async fn reconnecting_with_last_event_id_replays_exactly_the_missed_events(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let olga = token("olga", "acme", &["owner"]);
    let mut live = open(&app, &olga, None).await;
    let mut ids = Vec::new();
    for order in 0..3 {
        let id = submitted(&app, &rita, 100 + order).await;
        let voted = app
            .post(
                &format!("/v1/actions/{id}/reject"),
                &olga,
                json!({ "comment": "no" }),
            )
            .await;
        assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
        ids.push(id);
    }
    let last = ids.last().expect("three actions").clone();
    let everything = live.until(&last, "ActionRejected").await;
    assert!(everything.len() >= 6, "{everything:?}");

    // A client that saw two events and went away: it gets the rest, in order, once each.
    let resume_at = everything[1].id.clone().expect("an id");
    let mut resumed = open(&app, &olga, Some(&resume_at)).await;
    let missed = &everything[2..];
    for expected in missed {
        let got = resumed.expect().await;
        assert_eq!(got.id, expected.id, "replayed in order: {got:?}");
        assert_eq!(got.event, expected.event);
        assert_eq!(got.data, expected.data, "the same description");
    }
    // Then it continues live, without a gap or a repeat.
    let later = submitted(&app, &rita, 200).await;
    let next = resumed.expect().await;
    assert_eq!(
        next.data["action_id"],
        later.as_str(),
        "the next live event, nothing twice: {next:?}"
    );
    let live_next = live.expect().await;
    assert_eq!(
        live_next.id, next.id,
        "both see the same event with the same id"
    );

    // `?after=` works like the header.
    let response =
        request_stream(&app, &format!("/v1/stream?after={resume_at}"), &olga, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut after = Events {
        frames: response.into_body().into_data_stream(),
        buffer: String::new(),
    };
    assert_eq!(after.expect().await.event, "ready");
    assert_eq!(after.expect().await.id, missed[0].id);
}
on_both_stores!(reconnecting_with_last_event_id_replays_exactly_the_missed_events);

async fn a_requester_sees_only_the_actions_whose_history_they_may_read(kind: &str) {
    let app = TestApp::spawn(kind).await;
    let rita = token("rita", "acme", &["requester"]);
    let rob = token("rob", "acme", &["requester"]);
    let adam = token("adam", "acme", &["admin"]);
    let anna = token("anna", "acme", &["approver"]);
    let mut stream = open(&app, &rita, None).await;
    let mut approvers = open(&app, &anna, None).await;
    let robs = submitted(&app, &rob, 1).await;
    let voted = app
        .post(&format!("/v1/actions/{robs}/approve"), &adam, json!({}))
        .await;
    assert_eq!(voted.status, StatusCode::OK, "{}", voted.body);
    let ritas = submitted(&app, &rita, 2).await;
    let seen = stream.until(&ritas, "ActionSubmitted").await;
    assert_eq!(seen.len(), 1, "only rita's own submission: {seen:?}");
    assert_eq!(seen[0].data["eligible"], false, "a requester does not vote");

    // An approver's stream shows every action of the tenant, as the inbox does.
    let seen = approvers.until(&ritas, "ActionSubmitted").await;
    assert!(
        seen.iter()
            .any(|event| event.data["action_id"] == robs.as_str()),
        "{seen:?}"
    );

    // An owner's stream, replayed from the start of the log, shows both.
    let olga = token("olga", "acme", &["owner"]);
    let mut all = open(&app, &olga, Some("0.0")).await;
    let seen = all.until(&ritas, "ActionSubmitted").await;
    assert!(
        seen.iter()
            .any(|event| event.data["action_id"] == robs.as_str()),
        "{seen:?}"
    );
}
on_both_stores!(a_requester_sees_only_the_actions_whose_history_they_may_read);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settings_change_is_streamed_with_the_mode() {
    let app = TestApp::spawn("sqlite").await;
    let olga = token("olga", "acme", &["owner"]);
    let rita = token("rita", "acme", &["requester"]);
    let mut stream = open(&app, &rita, None).await;
    app.set_setting(&olga, "mode", json!("safe")).await;
    let event = stream.expect().await;
    assert_eq!(event.event, "SettingsUpdated", "{event:?}");
    assert_eq!(event.data["mode"], "safe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_resume_point_is_refused_with_its_code() {
    let app = TestApp::spawn("sqlite").await;
    let olga = token("olga", "acme", &["owner"]);
    submitted(&app, &olga, 1).await;
    for (last, code) in [
        ("nonsense", "invalid_last_event_id"),
        ("-1.2", "invalid_last_event_id"),
        ("1.", "invalid_last_event_id"),
        ("0.99999999", "last_event_id_ahead"),
        ("99999999999999999999.1", "last_event_id_ahead"),
    ] {
        let answer = app
            .raw(
                Request::get("/v1/stream")
                    .header("authorization", format!("Bearer {olga}"))
                    .header("last-event-id", last)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{last}: {}",
            answer.body
        );
        assert_eq!(answer.code(), code, "{last}");
        assert_eq!(answer.body["field"], "Last-Event-ID");
    }
    let answer = app.get("/v1/stream?after=x", &olga).await;
    assert_eq!(answer.code(), "invalid_last_event_id", "{}", answer.body);
    let answer = app.get("/v1/stream?since=1", &olga).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    let answer = app.call(Method::GET, "/v1/stream", None, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_closes_when_its_api_key_is_revoked() {
    let mut app = TestApp::spawn("sqlite").await;
    app.state.limits.credential_recheck = Duration::from_millis(100);
    let adam = token("adam", "acme", &["admin"]);
    let created = app
        .post(
            "/v1/api-keys",
            &adam,
            json!({ "name": "board", "roles": ["requester"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["api_key"].as_str().expect("secret").to_owned();
    let key_id = created.body["key_id"].as_str().expect("id").to_owned();
    let mut stream = open(&app, &key, None).await;
    let mine = submitted(&app, &key, 5).await;
    stream.until(&mine, "ActionSubmitted").await;

    let revoked = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&adam),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let closed = loop {
        let event = stream.expect().await;
        if event.event == "closed" {
            break event;
        }
    };
    assert_eq!(closed.data["code"], "api_key_revoked", "{closed:?}");
    assert!(stream.next().await.is_none(), "nothing after closed");
}
