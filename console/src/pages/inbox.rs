//! The inbox: the pending actions the signed-in person may vote on first ("for me"), then every
//! action matching the filters, with cursor paging; a count badge; bulk approve or reject with
//! one comment, each result shown per row.

use std::collections::BTreeSet;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use countersign_app::actions::{self, Ballot};
use countersign_domain::Comment;
use countersign_domain::action::ActionStatus;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::RiskLevel;
use countersign_projections::{InboxFilter, InboxItem, InboxSort};
use serde::Deserialize;

use crate::Console;
use crate::error::PageError;
use crate::pages::is_htmx;
use crate::session::{Posted, Session};
use crate::view::{self, Layout, Risk};

/// The inbox's query string; every field optional, unknown values refused like `/v1`'s.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct InboxQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub requested_by: Option<String>,
    /// `me`: only actions the person may vote on now.
    #[serde(default)]
    pub eligible: Option<String>,
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub notice: Option<String>,
    /// A log cursor (an event's `cursor` on the live stream): the lists wait until they reflect
    /// it.
    #[serde(default)]
    pub consistent_with: Option<String>,
}

/// The badge's query: the write it must reflect.
#[derive(Debug, Default, Deserialize)]
pub struct BadgeQuery {
    #[serde(default)]
    pub consistent_with: Option<String>,
}

fn cursor(raw: Option<&String>) -> Result<Option<countersign_ledger::LogCursor>, PageError> {
    countersign_gateway::extract::consistent_with(nonempty(raw)).map_err(PageError::from)
}

fn nonempty(value: Option<&String>) -> Option<&str> {
    value
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
}

impl InboxQuery {
    fn bad(field: &str, detail: String) -> PageError {
        PageError::Refused {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_query",
            detail: format!("{field}: {detail}"),
        }
    }

    fn filter(&self, session: &Session) -> Result<InboxFilter, PageError> {
        let statuses = match nonempty(self.status.as_ref()).unwrap_or("pending") {
            "all" => Vec::new(),
            "pending" => vec![ActionStatus::Pending, ActionStatus::Escalated],
            name => vec![
                ActionStatus::ALL
                    .into_iter()
                    .find(|status| status.as_str() == name)
                    .ok_or_else(|| Self::bad("status", format!("unknown status `{name}`")))?,
            ],
        };
        let risk_levels = match nonempty(self.risk.as_ref()) {
            None => Vec::new(),
            Some(level) => vec![
                RiskLevel::parse(level)
                    .ok_or_else(|| Self::bad("risk", format!("unknown level `{level}`")))?,
            ],
        };
        let sort = match nonempty(self.sort.as_ref()).unwrap_or("created") {
            "created" => InboxSort::Created,
            "risk" => InboxSort::Risk,
            "deadline" => InboxSort::Deadline,
            other => return Err(Self::bad("sort", format!("unknown order `{other}`"))),
        };
        let eligible = match nonempty(self.eligible.as_ref()) {
            None => None,
            Some("me") => Some(session.actor.principal.clone()),
            Some(other) => return Err(Self::bad("eligible", format!("`{other}` (use `me`)"))),
        };
        Ok(InboxFilter {
            statuses,
            risk_levels,
            module: nonempty(self.module.as_ref()).map(str::to_owned),
            requested_by: nonempty(self.requested_by.as_ref()).map(str::to_owned),
            eligible,
            sort,
            cursor: nonempty(self.cursor.as_ref()).map(str::to_owned),
            limit: 25,
            ..InboxFilter::default()
        })
    }

    /// The query string of these filters (without the cursor and the notice).
    fn query_string(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("status", &self.status),
            ("risk", &self.risk),
            ("module", &self.module),
            ("requested_by", &self.requested_by),
            ("eligible", &self.eligible),
            ("sort", &self.sort),
        ] {
            if let Some(value) = nonempty(value.as_ref()) {
                out.append_pair(name, value);
            }
        }
        out.finish()
    }
}

/// One row of the inbox.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub summary: String,
    pub module: String,
    pub capability: String,
    pub requested_by: String,
    pub status: &'static str,
    pub risk: Risk,
    pub created: String,
    pub created_at: String,
    pub deadline: String,
    pub deadline_at: String,
    pub stage: String,
    pub escalated: bool,
    pub open: bool,
    /// The person may vote on it now (and has not in this stage).
    pub votable: bool,
    /// The member in whose place the person may vote on it, through a delegation window active
    /// now (only in "For me").
    pub on_behalf_of: String,
    /// Its break-glass approval, when it had one.
    pub break_glass: Option<GlassTag>,
}

/// A break-glass approval as an inbox row tags it.
#[derive(Debug, Clone)]
pub struct GlassTag {
    /// Who approved it alone.
    pub by: String,
    /// Where its review stands: `pending`, `overdue`, `upheld` or `disputed`.
    pub review: &'static str,
}

/// Which listed open actions the person may vote on now as themselves and has not in this
/// stage. The "for me" items listed in their own right are so by construction, and when that
/// section is whole they are all there are; otherwise the other section's are asked of the
/// read model in one read for the page's ids.
async fn votable_of(
    console: &Console,
    session: &Session,
    mine: &countersign_projections::InboxPage,
    all: &[InboxItem],
) -> Result<BTreeSet<String>, PageError> {
    let mut votable: BTreeSet<String> = mine
        .items
        .iter()
        .filter(|item| item.on_behalf_of.is_none())
        .map(|item| item.id.clone())
        .collect();
    if mine.next_cursor.is_none() {
        return Ok(votable);
    }
    let mut ids: Vec<String> = all
        .iter()
        .filter(|item| item.status.is_open() && !votable.contains(&item.id))
        .map(|item| item.id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    votable.extend(
        console
            .gateway
            .app
            .projections()
            .votable_among(&session.actor.tenant, &session.actor.principal, &ids)
            .await
            .map_err(countersign_app::AppError::from)?,
    );
    Ok(votable)
}

fn row(item: InboxItem, votable: &BTreeSet<String>) -> Row {
    let status = item.status;
    let stage = if status.is_open() {
        view::item_progress(&item)
    } else {
        None
    }
    .unwrap_or_else(|| status.as_str().to_owned());
    let votable = votable.contains(&item.id);
    Row {
        summary: item.summary,
        module: item.module,
        capability: item.capability,
        requested_by: item.requested_by,
        status: status.as_str(),
        risk: Risk::new(item.risk_level, item.risk_score),
        created: view::relative(item.submitted_at),
        created_at: view::stamp(item.submitted_at),
        deadline: if status.is_open() {
            view::relative(item.expires_at)
        } else {
            String::new()
        },
        deadline_at: view::stamp(item.expires_at),
        stage,
        escalated: item.escalations > 0 || status == ActionStatus::Escalated,
        open: status.is_open(),
        // A vote from the row is the person's own: an item listed in another's place is voted
        // on from its drawer (which offers the vote in that member's place).
        votable: votable && item.on_behalf_of.is_none(),
        on_behalf_of: item.on_behalf_of.unwrap_or_default(),
        break_glass: item.break_glass.map(|mark| GlassTag {
            review: mark.review.as_str(),
            by: mark.by,
        }),
        id: item.id,
    }
}

/// Both sections of the inbox, as the page and the live refresh render them.
#[derive(Debug)]
pub struct Sections {
    pub mine: Vec<Row>,
    pub all: Vec<Row>,
    pub next: Option<String>,
    pub query: String,
    pub cursor: bool,
}

async fn sections(
    console: &Console,
    session: &Session,
    query: &InboxQuery,
) -> Result<Sections, PageError> {
    let app = &console.gateway.app;
    let filter = query.filter(session)?;
    let mine_filter = InboxFilter {
        statuses: vec![ActionStatus::Pending, ActionStatus::Escalated],
        eligible: Some(session.actor.principal.clone()),
        sort: InboxSort::Deadline,
        limit: 50,
        ..InboxFilter::default()
    };
    let wanted = cursor(query.consistent_with.as_ref())?;
    let (mine, all) = tokio::try_join!(
        actions::inbox(app, &session.actor, &mine_filter, wanted),
        actions::inbox(app, &session.actor, &filter, wanted),
    )?;
    let votable = votable_of(console, session, &mine, &all.items).await?;
    let mine = mine
        .items
        .into_iter()
        .map(|item| row(item, &votable))
        .collect();
    let rows = all
        .items
        .into_iter()
        .map(|item| row(item, &votable))
        .collect();
    Ok(Sections {
        mine,
        all: rows,
        next: all.next_cursor,
        query: query.query_string(),
        cursor: filter.cursor.is_some(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "inbox.html")]
struct InboxPage {
    layout: Layout,
    sections: Sections,
    filters: InboxQuery,
    statuses: Vec<&'static str>,
}

impl InboxPage {
    /// Whether the filter `name` currently has `value` (for `selected`/`checked`).
    fn sel(&self, name: &str, value: &str) -> bool {
        let field = match name {
            "status" => &self.filters.status,
            "risk" => &self.filters.risk,
            "eligible" => &self.filters.eligible,
            "sort" => &self.filters.sort,
            _ => return false,
        };
        field.as_deref().unwrap_or_default() == value
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "inbox_sections.html")]
struct SectionsFragment {
    sections: Sections,
}

/// `GET /inbox`.
pub async fn page(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let layout = Layout::new(&console, &session, "inbox")
        .await?
        .with_notice(query.notice.as_deref());
    let sections = sections(&console, &session, &query).await?;
    let statuses = ActionStatus::ALL
        .iter()
        .map(|status| status.as_str())
        .filter(|status| *status != "pending")
        .collect();
    Ok(InboxPage {
        layout,
        sections,
        filters: query,
        statuses,
    }
    .into_response())
}

/// `GET /inbox/rows`: both sections, for the live refresh.
pub async fn rows(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let sections = sections(&console, &session, &query).await?;
    Ok(SectionsFragment { sections }.into_response())
}

/// `GET /inbox/badge`: how many open actions wait for the person's vote.
pub async fn badge(
    State(console): State<Console>,
    session: Session,
    Query(query): Query<BadgeQuery>,
) -> Result<Response, PageError> {
    let wanted = cursor(query.consistent_with.as_ref())?;
    let filter = InboxFilter {
        statuses: vec![ActionStatus::Pending, ActionStatus::Escalated],
        eligible: Some(session.actor.principal.clone()),
        limit: 100,
        ..InboxFilter::default()
    };
    let page = actions::inbox(&console.gateway.app, &session.actor, &filter, wanted).await?;
    let count = page.items.len();
    let text = if page.next_cursor.is_some() {
        format!("{count}+")
    } else {
        count.to_string()
    };
    Ok(text.into_response())
}

/// One line of a bulk vote's results.
#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub summary: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "bulk_results.html")]
struct BulkResults {
    outcomes: Vec<Outcome>,
    vote: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "bulk_page.html")]
struct BulkPage {
    layout: Layout,
    outcomes: Vec<Outcome>,
    vote: &'static str,
}

/// `POST /inbox/votes`: one vote and one comment for every selected action, each answered on
/// its own.
pub async fn bulk_vote(
    State(console): State<Console>,
    headers: HeaderMap,
    posted: Posted,
) -> Result<Response, PageError> {
    let vote = match posted.get("vote") {
        Some("approve") => Vote::Approve,
        Some("reject") => Vote::Reject,
        _ => {
            return Err(PageError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "vote: choose approve or reject",
            ));
        }
    };
    let comment = posted
        .get("comment")
        .map(Comment::parse)
        .transpose()
        .map_err(|err| PageError::from(countersign_app::AppError::InvalidInput(err)))?;
    let ids: Vec<String> = posted.all("id").map(str::to_owned).collect();
    let ballots = ids
        .iter()
        .map(|id| Ballot {
            action_id: id.clone(),
            vote,
            comment: comment.clone(),
        })
        .collect();
    let session = &posted.session;
    let results = actions::vote_many(&console.gateway.app, &session.actor, ballots).await?;
    let outcomes = ids
        .into_iter()
        .zip(results)
        .map(|(id, result)| match result {
            Ok(written) => Outcome {
                summary: written.value.request.summary.to_string(),
                ok: true,
                message: format!("recorded · now {}", written.value.status),
                id,
            },
            Err(err) => {
                let refusal = countersign_gateway::error::ApiError::from(err);
                Outcome {
                    summary: String::new(),
                    ok: false,
                    message: format!("{} ({})", refusal.detail, refusal.code),
                    id,
                }
            }
        })
        .collect();
    let vote = match vote {
        Vote::Approve => "approve",
        Vote::Reject => "reject",
        Vote::Abstain => "abstain",
    };
    if is_htmx(&headers) {
        return Ok(BulkResults { outcomes, vote }.into_response());
    }
    let layout = Layout::new(&console, session, "inbox").await?;
    Ok(BulkPage {
        layout,
        outcomes,
        vote,
    }
    .into_response())
}
