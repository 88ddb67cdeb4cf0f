//! The notifier: a tailer of the log with its own checkpoint (`notifier`, behind its tailer
//! lock). For each action event it folds the action as it stood before and after the event and
//! the tenant's member directory as it stood when the event was recorded, decides who hears about
//! it ([`plan`]), applies their preferences and writes one row per (event, recipient, channel).
//! Rows are keyed, so a replay after a crash or a restart writes nothing twice; the checkpoint
//! moves only after a batch's rows are committed, so nothing is skipped.
//!
//! Reminders: while an action waits for votes, a reminder row says when 75% of its current
//! deadline has passed; a sweep writes a `reminder` notification to every eligible member who
//! has not voted then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use countersign_domain::action::{Action, ActionEvent, ActionState};
use countersign_domain::members::{
    Member, MemberDirectory, MemberEvent, NotificationChannel, NotificationKind,
};
use countersign_domain::tenant::TenantSettings;
use countersign_domain::{ActionId, Principal, TenantId, UserId};
use countersign_ledger::{Ledger, LogCursor, LoggedEvent};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::store::{self, Change, NewNotification};

/// The stored aggregate type of [`Action`] (a stored contract, never renamed).
const ACTION: &str = "action";

/// The tailer's name: its checkpoint, its lock and its health reports.
pub const NOTIFIER: &str = "notifier";

/// How the notifier runs.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Channels this deployment can deliver besides in-app (email needs SMTP, webhook a signing
    /// key). Rows are written only for these.
    pub channels: BTreeSet<NotificationChannel>,
    /// Where links in notifications point: `<base>/actions/<id>` (none: a relative link).
    pub link_base: Option<String>,
    /// Events read per batch.
    pub batch: u32,
    /// Rows a batch holds at most: it ends after the event that reaches this many (an event's
    /// rows are never split), the rest of what was read is read again as the next batch.
    pub max_rows: usize,
    /// How often due reminders are looked for.
    pub reminder_interval: Duration,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            channels: BTreeSet::new(),
            link_base: None,
            batch: 2000,
            max_rows: 20_000,
            reminder_interval: Duration::from_secs(5),
        }
    }
}

/// Who hears about one event, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub recipient: UserId,
    pub kind: NotificationKind,
}

/// Members who may vote in the action's current stage now (by their directory roles or by
/// name), never the requester unless self-approval is allowed.
pub fn eligible<'a>(
    state: &'a ActionState,
    directory: &'a MemberDirectory,
) -> impl Iterator<Item = &'a Member> + 'a {
    directory
        .members
        .values()
        .filter(move |member| state.may_vote(&member.user_id, &member.roles))
}

/// Who hears about `event`, given the action before and after it and the directory when it was
/// recorded. The actor of the event is never told about their own act.
pub fn plan(
    event: &ActionEvent,
    before: Option<&ActionState>,
    after: &ActionState,
    directory: &MemberDirectory,
) -> Vec<Planned> {
    let actor = &event.context().actor;
    let mut planned: BTreeMap<UserId, NotificationKind> = BTreeMap::new();
    let mut add = |user: &UserId, kind: NotificationKind| {
        if user != actor && directory.members.contains_key(user) {
            planned.entry(user.clone()).or_insert(kind);
        }
    };
    // A new stage asks its voters; an escalation tells the escalation role (below) without
    // asking the stage's voters again.
    let opened = after.status.is_open()
        && before.is_none_or(|before| !before.status.is_open() || before.stage != after.stage);
    if let ActionEvent::ActionEscalated(escalated) = event {
        for member in directory.members.values() {
            if member.roles.contains(&escalated.escalation_role) {
                add(&member.user_id, NotificationKind::Escalated);
            }
        }
    }
    // A break-glass approval tells, at once, everyone who could have approved the action in
    // any of its stages and the tenant's owners.
    if let (ActionEvent::BreakGlassApproved(_), Some(before)) = (event, before) {
        for member in directory.members.values() {
            let principal = Principal::new(member.user_id.clone(), member.roles.iter().cloned());
            if principal.has_role(&countersign_domain::Role::owner())
                || before.could_approve(&principal)
            {
                add(&member.user_id, NotificationKind::BreakGlass);
            }
        }
    }
    // An overdue break-glass review tells the escalation role's holders and the owners (never
    // the breaker, who may not review it), as a break-glass notice: always delivered.
    if let (ActionEvent::BreakGlassReviewOverdue(overdue), Some(glass)) =
        (event, after.break_glass.as_ref())
    {
        for member in directory.members.values() {
            let owner = member.roles.contains(&countersign_domain::Role::owner());
            let escalation = overdue
                .escalation_role
                .as_ref()
                .is_some_and(|role| member.roles.contains(role));
            if (owner || escalation) && member.user_id != glass.by {
                add(&member.user_id, NotificationKind::BreakGlass);
            }
        }
    }
    if opened {
        for member in eligible(after, directory) {
            add(&member.user_id, NotificationKind::Assigned);
        }
    }
    let decided = before.is_some_and(|before| before.status.is_open()) && !after.status.is_open();
    if decided {
        add(&after.requester.id, NotificationKind::Decided);
    }
    let outcome = match event {
        ActionEvent::ExecutionSucceeded(_) | ActionEvent::ExecutionSkipped(_) => true,
        ActionEvent::ExecutionFailed(failed) => !failed.will_retry,
        _ => false,
    };
    if outcome {
        add(&after.requester.id, NotificationKind::Outcome);
        let voters: BTreeSet<&UserId> = after.ballots.iter().flat_map(BTreeMap::keys).collect();
        for voter in voters {
            add(voter, NotificationKind::Outcome);
        }
    }
    planned
        .into_iter()
        .map(|(recipient, kind)| Planned { recipient, kind })
        .collect()
}

/// What a notification says, for every channel: a title and a JSON body.
pub fn render(
    kind: NotificationKind,
    event: Option<&ActionEvent>,
    state: &ActionState,
    link_base: Option<&str>,
) -> (String, serde_json::Value) {
    let summary = state.submission.summary.to_string();
    let title = match kind {
        NotificationKind::Assigned => format!("Approval needed: {summary}"),
        NotificationKind::Reminder => format!("Reminder, approval needed: {summary}"),
        NotificationKind::BreakGlass
            if matches!(event, Some(ActionEvent::BreakGlassReviewOverdue(_))) =>
        {
            format!("Break-glass review overdue: {summary}")
        }
        NotificationKind::BreakGlass => format!("Break-glass approval: {summary}"),
        NotificationKind::Escalated => format!("Escalated to you: {summary}"),
        NotificationKind::Decided => format!("{}: {summary}", capitalized(state.status.as_str())),
        NotificationKind::Outcome => format!("{}: {summary}", capitalized(state.status.as_str())),
    };
    let link = format!(
        "{}/actions/{}",
        link_base.unwrap_or("").trim_end_matches('/'),
        state.id
    );
    let body = json!({
        "action_id": state.id.to_string(),
        "action_type": state.action_type.to_string(),
        "summary": summary,
        "status": state.status.as_str(),
        "risk": { "score": state.risk.score.value(), "level": state.risk.level.as_str() },
        "requested_by": state.requester.id.to_string(),
        "expires_at": state.expires_at,
        "stage": state.stage,
        "execution_key": state.execution_key.to_string(),
        "event": event.map(ActionEvent::event_type),
        "link": link,
    });
    (title, body)
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// The key that makes a notification unique: the event (or reminder round), recipient and
/// channel, within the tenant.
pub fn key(tenant: &str, source: &str, recipient: &str, channel: NotificationChannel) -> String {
    blake3::hash(format!("{tenant}\n{source}\n{recipient}\n{}", channel.as_str()).as_bytes())
        .to_hex()
        .to_string()
}

/// The outside channels a tenant configured.
#[derive(Debug, Clone, Copy, Default)]
struct TenantRoutes {
    webhook: bool,
    slack: bool,
}

/// An action's stream, each event with its decoded form.
fn decoded(stream: Vec<LoggedEvent>) -> anyhow::Result<Vec<(i64, ActionEvent)>> {
    stream
        .into_iter()
        .map(|logged| Ok((logged.sequence, logged.decode::<Action>()?)))
        .collect()
}

/// The tailer.
#[derive(Debug, Clone)]
pub struct Notifier {
    ledger: Ledger,
    config: NotifierConfig,
    /// The tenants' directory streams, kept between batches: a batch reads only what was
    /// appended to a stream since the one before (a tenant of 1,000 members has 1,000 events).
    directories: Arc<std::sync::Mutex<BTreeMap<String, DirectoryStream>>>,
    /// The batch after the last one written, prepared while that one was being written.
    ahead: Arc<std::sync::Mutex<Option<Prepared>>>,
}

/// A batch read and turned into its rows, not yet written.
#[derive(Debug)]
struct Prepared {
    /// The cursor the batch was read after.
    after: LogCursor,
    /// Its last event's cursor: the checkpoint once its rows are written.
    last: LogCursor,
    /// Events read.
    count: usize,
    /// More may be waiting: the read filled the batch, or the batch stopped at its rows' limit.
    full: bool,
    changes: Vec<Change>,
}

/// Tenants whose directory streams are kept between batches; beyond it the copies start over.
const KEPT_DIRECTORIES: usize = 1024;

/// What one batch reads once: every action stream it touches (in one read), each tenant's
/// directory stream (brought up to date once) and its outside channels.
#[derive(Default)]
struct BatchCache {
    /// Each touched action's events by sequence, and the action folded so far: the batch's
    /// events of an action come in sequence order, so each is applied once.
    actions: BTreeMap<String, ActionStream>,
    directories: BTreeMap<String, DirectoryStream>,
    routes: BTreeMap<String, TenantRoutes>,
}

/// One action's events (sequence, event) as far as the batch needs them, and the action folded
/// from the first `folded` of them.
#[derive(Default)]
struct ActionStream {
    events: Vec<(i64, ActionEvent)>,
    folded: usize,
    action: Action,
}

impl ActionStream {
    /// The action as it stood before the event of `sequence` and after it, and the event; none
    /// when the stream does not hold it.
    fn step(&mut self, sequence: i64) -> Option<(Option<ActionState>, ActionEvent, ActionState)> {
        let at = self
            .events
            .iter()
            .position(|(known, _)| *known == sequence)?;
        if at < self.folded {
            // Not in sequence order (never from the log): fold again from the start.
            self.action = Action::default();
            self.folded = 0;
        }
        while self.folded < at {
            self.action.apply(self.events[self.folded].1.clone());
            self.folded += 1;
        }
        let before = self.action.state().cloned();
        let this = self.events[at].1.clone();
        self.action.apply(this.clone());
        self.folded += 1;
        let after = self.action.state()?.clone();
        Some((before, this, after))
    }
}

/// A tenant's directory events (position, event), and the directory folded from the first
/// `folded.0` of them: the events of a batch mostly see the same directory, so it is folded once
/// per batch, not once per event (a tenant of 1,000 members has 1,000 events to fold).
#[derive(Debug)]
struct DirectoryStream {
    events: Vec<(i64, MemberEvent)>,
    /// The sequence of the last event read: the next read starts after it.
    last_sequence: i64,
    /// Brought up to date in the current batch (every event the batch may need is before the
    /// batch's last position, committed before the batch was read).
    current: bool,
    /// The positions ascend with the stream's sequence (the ledger appends a stream in order),
    /// so the directory before a position is a prefix; checked, never assumed.
    ascending: bool,
    folded: Option<(usize, Arc<MemberDirectory>)>,
}

impl Notifier {
    pub fn new(ledger: Ledger, config: NotifierConfig) -> Self {
        Self {
            ledger,
            config,
            directories: Arc::default(),
            ahead: Arc::default(),
        }
    }

    /// Processes the next batch of the log after `checkpoint` (read from the store when
    /// unknown); answers how many events it read. While a full batch's rows are written, the
    /// next batch is read and prepared, to be written by the next call.
    pub async fn process_next(&self, checkpoint: &mut Option<LogCursor>) -> anyhow::Result<usize> {
        let after = match *checkpoint {
            Some(after) => after,
            None => self.ledger.load_checkpoint(NOTIFIER).await?,
        };
        *checkpoint = Some(after);
        let ahead = self.ahead.lock().ok().and_then(|mut ahead| ahead.take());
        let prepared = match ahead {
            Some(prepared) if prepared.after == after => prepared,
            _ => match self.prepare(after).await? {
                Some(prepared) => prepared,
                None => return Ok(0),
            },
        };
        let Prepared {
            last,
            count,
            full,
            changes,
            ..
        } = prepared;
        let (written, next) = tokio::join!(self.write(changes, last), async {
            if !full {
                return None;
            }
            // A failure here is met again, and reported, when the next call reads this batch.
            self.prepare(last).await.ok().flatten()
        });
        written?;
        *checkpoint = Some(last);
        if let Ok(mut ahead) = self.ahead.lock() {
            *ahead = next;
        }
        Ok(count)
    }

    /// Writes a batch's rows, then moves the checkpoint past it (to `last`).
    async fn write(&self, changes: Vec<Change>, last: LogCursor) -> anyhow::Result<()> {
        let written = store::apply(self.ledger.backend(), changes).await?;
        if written > 0 {
            metrics::counter!("countersign_notifications_written_total").increment(written);
        }
        self.ledger.save_checkpoint(NOTIFIER, last).await
    }

    /// Reads the batch after `after` and decides its rows; none at the end of the log.
    async fn prepare(&self, after: LogCursor) -> anyhow::Result<Option<Prepared>> {
        let events = self.ledger.read_log(after, self.config.batch).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            return Ok(None);
        };
        let mut cache = BatchCache {
            directories: self.kept_directories(),
            ..BatchCache::default()
        };
        // The batch's action events, decoded once, by action.
        for event in events.iter().filter(|event| event.aggregate_type == ACTION) {
            let decoded = event.decode::<Action>().with_context(|| {
                format!(
                    "decoding event {} of action {}",
                    event.sequence, event.aggregate_id
                )
            })?;
            cache
                .actions
                .entry(event.aggregate_id.clone())
                .or_default()
                .events
                .push((event.sequence, decoded));
        }
        // An action whose stream began before the batch is read whole, all such in one read.
        let earlier: Vec<String> = cache
            .actions
            .iter()
            .filter(|(_, stream)| {
                !stream
                    .events
                    .iter()
                    .zip(1..)
                    .all(|((sequence, _), expected)| *sequence == expected)
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !earlier.is_empty() {
            let streams = self.ledger.streams_of::<Action, _>(&earlier).await?;
            for (id, stream) in earlier.into_iter().zip(streams) {
                cache.actions.insert(
                    id,
                    ActionStream {
                        events: decoded(stream)?,
                        ..ActionStream::default()
                    },
                );
            }
        }
        let mut changes = Vec::new();
        let (mut last, mut count) = (last, events.len());
        let mut full = events.len() >= self.config.batch as usize;
        for (index, event) in events.iter().enumerate() {
            if event.aggregate_type != ACTION {
                continue;
            }
            self.changes_for(event, &mut cache, &mut changes)
                .await
                .with_context(|| {
                    format!(
                        "notifying about event {} of action {}",
                        event.sequence, event.aggregate_id
                    )
                })?;
            if changes.len() >= self.config.max_rows && index + 1 < events.len() {
                // The rest of the batch is the next batch's: a tenant of many approvers must
                // not hold a batch's millions of rows in memory.
                (last, count, full) = (event.cursor, index + 1, true);
                break;
            }
        }
        self.keep_directories(cache.directories);
        Ok(Some(Prepared {
            after,
            last,
            count,
            full,
            changes,
        }))
    }

    /// The directory streams kept from the batches before, each to be brought up to date.
    fn kept_directories(&self) -> BTreeMap<String, DirectoryStream> {
        let mut kept = match self.directories.lock() {
            Ok(mut kept) => std::mem::take(&mut *kept),
            Err(_) => BTreeMap::new(),
        };
        for stream in kept.values_mut() {
            stream.current = false;
        }
        kept
    }

    fn keep_directories(&self, streams: BTreeMap<String, DirectoryStream>) {
        if streams.len() > KEPT_DIRECTORIES {
            return;
        }
        if let Ok(mut kept) = self.directories.lock() {
            *kept = streams;
        }
    }

    async fn changes_for(
        &self,
        event: &LoggedEvent,
        cache: &mut BatchCache,
        changes: &mut Vec<Change>,
    ) -> anyhow::Result<()> {
        let Some((before, this, after)) = cache
            .actions
            .get_mut(&event.aggregate_id)
            .and_then(|stream| stream.step(event.sequence))
        else {
            return Ok(());
        };
        let directory = self
            .directory_at(&event.tenant, event.cursor, cache)
            .await?;
        let source = format!("{}/{}", event.aggregate_id, event.sequence);
        let routes = self.tenant_routes(&event.tenant, cache).await?;
        // What a notification says depends on its kind and the event, not on who hears it.
        let mut rendered: BTreeMap<NotificationKind, (String, String)> = BTreeMap::new();
        for planned in plan(&this, before.as_ref(), &after, &directory) {
            let text = rendered.entry(planned.kind).or_insert_with(|| {
                let (title, body) = render(
                    planned.kind,
                    Some(&this),
                    &after,
                    self.config.link_base.as_deref(),
                );
                (title, body.to_string())
            });
            self.rows(
                &planned,
                &after,
                text,
                &directory,
                routes,
                &source,
                event.cursor.position,
                changes,
            );
        }
        let round = format!("{}.{}", after.stage, after.escalations);
        let same_round = before.as_ref().is_some_and(|before| {
            before.status.is_open() && format!("{}.{}", before.stage, before.escalations) == round
        });
        if after.status.is_open() && !same_round {
            let at = this.context().at;
            let span = after.expires_at - at;
            let remind = at + span * 3 / 4;
            changes.push(Change::Remind {
                tenant: event.tenant.clone(),
                action_id: event.aggregate_id.clone(),
                round,
                remind_us: remind.timestamp_micros(),
                position: event.cursor.position,
            });
        } else if !after.status.is_open() && before.is_some_and(|before| before.status.is_open()) {
            changes.push(Change::Forget {
                action_id: event.aggregate_id.clone(),
            });
        }
        Ok(())
    }

    /// The rows of one planned notification: one per channel the recipient's preferences,
    /// their entry and this deployment allow.
    #[expect(clippy::too_many_arguments, reason = "one row's every input, named")]
    fn rows(
        &self,
        planned: &Planned,
        state: &ActionState,
        (title, body): &(String, String),
        directory: &MemberDirectory,
        routes: TenantRoutes,
        source: &str,
        position: i64,
        changes: &mut Vec<Change>,
    ) {
        let Some(member) = directory.members.get(&planned.recipient) else {
            return;
        };
        let preferences = directory.preferences_of(member);
        let now = chrono::Utc::now().timestamp_micros();
        for channel in NotificationChannel::ALL {
            if !preferences.wants(channel, planned.kind, state.risk.level) {
                continue;
            }
            let address = match channel {
                NotificationChannel::InApp => None,
                _ if !self.config.channels.contains(&channel) => continue,
                NotificationChannel::Email => match &member.email {
                    Some(email) => Some(email.to_string()),
                    None => continue,
                },
                NotificationChannel::Slack => match &member.slack_user_id {
                    Some(slack) if routes.slack => Some(slack.as_str().to_owned()),
                    _ => continue,
                },
                NotificationChannel::Webhook if routes.webhook => None,
                NotificationChannel::Webhook => continue,
            };
            changes.push(Change::Notify(NewNotification {
                key: key(
                    state.tenant.as_str(),
                    source,
                    planned.recipient.as_str(),
                    channel,
                ),
                tenant: state.tenant.to_string(),
                recipient: planned.recipient.to_string(),
                channel: channel.as_str().to_owned(),
                kind: planned.kind.as_str().to_owned(),
                source: source.to_owned(),
                action_id: Some(state.id.to_string()),
                title: title.clone(),
                body: body.clone(),
                address,
                position,
                created_us: now,
                status: match channel {
                    NotificationChannel::InApp => "delivered",
                    NotificationChannel::Email if preferences.daily_digest => "digest",
                    _ => "pending",
                },
            }));
        }
    }

    /// The tenant's directory as it stood just before `cursor`.
    async fn directory_at(
        &self,
        tenant: &str,
        cursor: LogCursor,
        cache: &mut BatchCache,
    ) -> anyhow::Result<Arc<MemberDirectory>> {
        let stream = cache
            .directories
            .entry(tenant.to_owned())
            .or_insert_with(|| DirectoryStream {
                events: Vec::new(),
                last_sequence: -1,
                current: false,
                ascending: true,
                folded: None,
            });
        if !stream.current {
            let id = TenantId::parse(tenant)
                .map_err(|err| anyhow::anyhow!("an event names no tenant: {err}"))?;
            let appended = self
                .ledger
                .stream_after::<MemberDirectory>(&id, stream.last_sequence)
                .await?;
            for logged in &appended {
                let position = logged.cursor.position;
                if stream
                    .events
                    .last()
                    .is_some_and(|(last, _)| *last >= position)
                {
                    stream.ascending = false;
                }
                stream
                    .events
                    .push((position, logged.decode::<MemberDirectory>()?));
                stream.last_sequence = logged.sequence;
            }
            stream.current = true;
        }
        if !stream.ascending {
            let mut directory = MemberDirectory::default();
            for (position, event) in &stream.events {
                if *position < cursor.position {
                    directory.apply(event.clone());
                }
            }
            return Ok(Arc::new(directory));
        }
        let before = stream
            .events
            .partition_point(|(position, _)| *position < cursor.position);
        if let Some((count, directory)) = &stream.folded
            && *count == before
        {
            return Ok(directory.clone());
        }
        let mut directory = MemberDirectory::default();
        for (_, event) in &stream.events[..before] {
            directory.apply(event.clone());
        }
        let directory = Arc::new(directory);
        stream.folded = Some((before, directory.clone()));
        Ok(directory)
    }

    /// Which outside channels the tenant configured: a webhook URL in its settings, Slack's
    /// incoming webhook among its secrets.
    async fn tenant_routes(
        &self,
        tenant: &str,
        cache: &mut BatchCache,
    ) -> anyhow::Result<TenantRoutes> {
        if let Some(known) = cache.routes.get(tenant) {
            return Ok(*known);
        }
        let mut routes = TenantRoutes::default();
        if self.config.channels.contains(&NotificationChannel::Webhook) {
            let id = TenantId::parse(tenant)
                .map_err(|err| anyhow::anyhow!("an event names no tenant: {err}"))?;
            let (settings, _) = self.ledger.load::<TenantSettings>(&id).await?;
            routes.webhook = settings.settings.webhook_url.is_some();
        }
        if self.config.channels.contains(&NotificationChannel::Slack) {
            routes.slack = self
                .ledger
                .secret(tenant, super::slack::WEBHOOK_SECRET)
                .await?
                .is_some();
        }
        cache.routes.insert(tenant.to_owned(), routes);
        Ok(routes)
    }

    /// Writes the reminders due now: to every eligible member who has not voted in the round
    /// the reminder was set for (nothing when the action moved on meanwhile).
    pub async fn remind_due(&self) -> anyhow::Result<usize> {
        let now = chrono::Utc::now();
        let due = store::due_reminders(self.ledger.backend(), now.timestamp_micros(), 100).await?;
        let mut written = 0;
        for reminder in due {
            let Ok(id) = ActionId::parse(&reminder.action_id) else {
                store::finish_reminder(self.ledger.backend(), &reminder.action_id, &reminder.round)
                    .await?;
                continue;
            };
            let events = self.ledger.stream_of::<Action>(&id).await?;
            let mut action = Action::default();
            for logged in &events {
                action.apply(logged.decode::<Action>()?);
            }
            let mut changes = Vec::new();
            if let Some(state) = action.state()
                && state.status.is_open()
                && format!("{}.{}", state.stage, state.escalations) == reminder.round
            {
                let tenant = TenantId::parse(&reminder.tenant)
                    .map_err(|err| anyhow::anyhow!("a reminder names no tenant: {err}"))?;
                let (directory, _) = self.ledger.load::<MemberDirectory>(&tenant).await?;
                let voted: BTreeSet<&UserId> = state.current_voters().collect();
                let mut cache = BatchCache::default();
                let routes = self.tenant_routes(&reminder.tenant, &mut cache).await?;
                let source = format!("reminder:{}:{}", reminder.action_id, reminder.round);
                let waiting: Vec<UserId> = eligible(state, &directory)
                    .filter(|member| !voted.contains(&member.user_id))
                    .map(|member| member.user_id.clone())
                    .collect();
                let (title, body) = render(
                    NotificationKind::Reminder,
                    None,
                    state,
                    self.config.link_base.as_deref(),
                );
                let text = (title, body.to_string());
                for recipient in waiting {
                    self.rows(
                        &Planned {
                            recipient,
                            kind: NotificationKind::Reminder,
                        },
                        state,
                        &text,
                        &directory,
                        routes,
                        &source,
                        reminder.position,
                        &mut changes,
                    );
                }
            }
            written += store::apply(self.ledger.backend(), changes).await?;
            store::finish_reminder(self.ledger.backend(), &reminder.action_id, &reminder.round)
                .await?;
        }
        Ok(usize::try_from(written).unwrap_or(usize::MAX))
    }

    /// Tails the log until `shutdown`, behind the `notifier` tailer lock; reports to the
    /// ledger's health; sweeps due reminders between batches.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let ledger = self.ledger.clone();
        let lock = loop {
            if let Some(lock) = ledger.lock_tailer(NOTIFIER).await? {
                break lock;
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        let mut waker = ledger.log_waker().await?;
        let mut checkpoint = None;
        let mut next_sweep = tokio::time::Instant::now();
        info!("notifier tailing the log");
        while !*shutdown.borrow() {
            let mut step = self.process_next(&mut checkpoint).await;
            if tokio::time::Instant::now() >= next_sweep {
                next_sweep = tokio::time::Instant::now() + self.config.reminder_interval;
                if let Err(err) = self.remind_due().await {
                    step = Err(err.context("writing due reminders"));
                }
            }
            match step {
                Ok(read) => {
                    ledger.health().progressed(NOTIFIER);
                    if read == 0 {
                        let wait = self.config.reminder_interval.min(Duration::from_secs(1));
                        tokio::select! {
                            _ = shutdown.changed() => {}
                            () = waker.wait(wait) => {}
                        }
                    }
                }
                Err(err) => {
                    warn!(error = format!("{err:#}"), "notifier: a batch failed");
                    let pause = ledger.health().failed(NOTIFIER, checkpoint, &err);
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        lock.release().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone as _, Utc};
    use countersign_domain::action::{ActionCommand, ExpireAction, RecordExecutionSuccess};
    use countersign_domain::members::{MemberCommand, MemberDraft};
    use countersign_domain::quorum::Vote;
    use countersign_domain::tenant::TenantCommandContext;
    use countersign_domain::{Role, TenantMode};
    use countersign_ledger::testing::actions::{
        context, new_id, principal, request_execution, start_execution, submission, submit, tenant,
        vote,
    };
    use serde_json::json;

    use super::*;

    fn directory(members: &[(&str, &[&str])]) -> MemberDirectory {
        let mut directory = MemberDirectory::default();
        for (user, roles) in members {
            let command = MemberCommand::AddMember {
                context: TenantCommandContext {
                    tenant: tenant("acme"),
                    by: principal("olga", &["owner"]),
                    at: Utc::now(),
                    correlation_id: None,
                },
                user_id: UserId::parse(*user).expect("user"),
                draft: MemberDraft {
                    display_name: None,
                    email: None,
                    slack_user_id: None,
                    roles: roles
                        .iter()
                        .map(|r| Role::parse(*r).expect("role"))
                        .collect(),
                    preferences: None,
                },
            };
            for event in directory.decide(command).expect("added") {
                directory.apply(event);
            }
        }
        directory
    }

    /// Decides `command` on `action`, applies its events and answers who hears of each.
    fn step(
        action: &mut Action,
        directory: &MemberDirectory,
        command: ActionCommand,
    ) -> Vec<(&'static str, Vec<(String, NotificationKind)>)> {
        let mut heard = Vec::new();
        for event in action.decide(command).expect("decided") {
            let before = action.state().cloned();
            action.apply(event.clone());
            let after = action.state().expect("submitted");
            let planned = plan(&event, before.as_ref(), after, directory)
                .into_iter()
                .map(|planned| (planned.recipient.to_string(), planned.kind))
                .collect();
            heard.push((event.event_type(), planned));
        }
        heard
    }

    #[test]
    fn approvers_the_escalation_role_the_requester_and_the_voters_hear_in_turn_never_the_actor() {
        use NotificationKind::{Assigned, Decided, Escalated, Outcome};
        let directory = directory(&[
            ("fay", &["finance_ops"]),
            ("fox", &["finance_ops"]),
            ("carl", &["cfo"]),
            ("rita", &["requester", "finance_ops"]),
            ("ana", &["approver"]),
        ]);
        let start = Utc.timestamp_opt(1_800_000_000, 0).single().expect("time");
        let acme = tenant("acme");
        let rita = principal("rita", &["requester", "finance_ops"]);
        let id = new_id();
        let mut action = Action::default();
        let requirements = json!({
            "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }],
            "timeout_seconds": 60, "escalation_role": "cfo", "max_escalations": 1
        });
        let at = |seconds| start + TimeDelta::seconds(seconds);
        let heard = step(
            &mut action,
            &directory,
            submit(
                context(&acme, &rita, at(0)),
                id,
                submission("billing", "refund", "Refund order 1042", json!({})),
                &requirements,
                TenantMode::RequireApproval,
            ),
        );
        assert_eq!(
            heard,
            [(
                "ActionSubmitted",
                vec![("fay".into(), Assigned), ("fox".into(), Assigned)]
            )],
            "the stage's voters, not the requester (no self-approval), not the escalation role yet"
        );
        let system = principal("system:deadlines", &[]);
        let heard = step(
            &mut action,
            &directory,
            ActionCommand::ExpireAction(ExpireAction {
                context: context(&acme, &system, at(61)),
            }),
        );
        assert_eq!(
            heard,
            [("ActionEscalated", vec![("carl".into(), Escalated)])]
        );
        let fay = principal("fay", &["finance_ops"]);
        let heard = step(
            &mut action,
            &directory,
            vote(context(&acme, &fay, at(70)), Vote::Approve, None),
        );
        let decided: Vec<_> = heard
            .iter()
            .filter(|(_, planned)| !planned.is_empty())
            .cloned()
            .collect();
        assert_eq!(
            decided,
            [("ActionApproved", vec![("rita".into(), Decided)])],
            "the requester hears of the decision; fay, who decided it, hears nothing"
        );
        step(
            &mut action,
            &directory,
            request_execution(context(&acme, &rita, at(80))),
        );
        let executor = principal("executor:1", &[]);
        step(
            &mut action,
            &directory,
            start_execution(context(&acme, &executor, at(81)), 30),
        );
        let heard = step(
            &mut action,
            &directory,
            ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                context: context(&acme, &executor, at(82)),
                attempt: 1,
                result: json!({}),
                undo_payload: None,
                duration_ms: 5,
            }),
        );
        assert_eq!(
            heard,
            [(
                "ExecutionSucceeded",
                vec![("fay".into(), Outcome), ("rita".into(), Outcome)]
            )],
            "the requester and the voters hear of the outcome"
        );
    }
}
