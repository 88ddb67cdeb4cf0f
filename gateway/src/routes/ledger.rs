//! `/v1/ledger` and `/v1/audit/export`: signed heads, proofs and evidence bundles for the
//! caller's tenant (owner, admin, auditor). See docs/verification.md.

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use countersign_app::evidence;
use countersign_verification::{ConsistencyProof, InclusionProof, SignedHead};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Acting, Reply, StrictQuery};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/ledger/head", get(head))
        .api_route("/v1/ledger/heads", get(heads))
        .api_route("/v1/ledger/proofs/inclusion", get(inclusion))
        .api_route("/v1/ledger/proofs/consistency", get(consistency))
        .api_route("/v1/audit/export", get(export))
}

/// The tenant's newest signed ledger head.
async fn head(
    State(state): State<AppState>,
    Acting(actor): Acting,
) -> Result<Reply<SignedHead>, ApiError> {
    Ok(Reply::new(evidence::head(&state.app, &actor).await?).no_store())
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeadsQuery {
    /// Only heads of trees larger than this.
    #[schemars(extend("maximum" = u64::MAX))]
    pub after: Option<u64>,
    /// 1–1000, default 100.
    #[schemars(extend("minimum" = 1, "maximum" = 1000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HeadList {
    pub heads: Vec<SignedHead>,
}

/// The tenant's signed heads, oldest first.
async fn heads(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<HeadsQuery>,
) -> Result<Reply<HeadList>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::bad_request("invalid_query", "limit: must be between 1 and 1000")
                .with_field("limit"),
        );
    }
    let after = query.after.unwrap_or(0);
    let heads = evidence::heads(&state.app, &actor, after, limit).await?;
    Ok(Reply::new(HeadList { heads }).no_store())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The event's global log position (as audit trails show it).
    #[schemars(extend("minimum" = i64::MIN, "maximum" = i64::MAX))]
    pub event: i64,
    /// The tree size to prove inclusion in (default: the newest signed head's); above the
    /// event's ledger sequence.
    #[schemars(extend("minimum" = 1, "maximum" = u64::MAX))]
    pub size: Option<u64>,
}

/// Proof that an event is in the tenant's tree of `size` leaves.
async fn inclusion(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<InclusionQuery>,
) -> Result<Reply<InclusionProof>, ApiError> {
    let proof = evidence::inclusion(&state.app, &actor, query.event, query.size).await?;
    Ok(Reply::new(proof).no_store())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree's size; at most `to`.
    #[schemars(extend("maximum" = u64::MAX))]
    pub from: u64,
    /// The newer tree's size; at most the sealed leaves.
    #[schemars(extend("maximum" = u64::MAX))]
    pub to: u64,
}

/// Proof that the tenant's tree of `from` leaves is a prefix of its tree of `to` leaves.
async fn consistency(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<ConsistencyQuery>,
) -> Result<Reply<ConsistencyProof>, ApiError> {
    let proof = evidence::consistency(&state.app, &actor, query.from, query.to).await?;
    Ok(Reply::new(proof).no_store())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// First ledger sequence (default 0); below `to`.
    #[schemars(extend("maximum" = u64::MAX))]
    pub from: Option<u64>,
    /// Ledger sequence after the last (default: the newest signed head's tree size); at most
    /// that size.
    #[schemars(extend("maximum" = u64::MAX))]
    pub to: Option<u64>,
}

/// An evidence bundle (JSON lines): the signed head, then each event with its leaf hash and
/// inclusion proof. Verify it offline with `countersign audit verify BUNDLE --public-key KEY`.
async fn export(
    State(state): State<AppState>,
    Acting(actor): Acting,
    StrictQuery(query): StrictQuery<ExportQuery>,
) -> Result<BundleResponse, ApiError> {
    let from = query.from.unwrap_or(0);
    let bundle = evidence::export(&state.app, &actor, from, query.to).await?;
    Ok(BundleResponse(bundle))
}

/// `application/x-ndjson` bytes.
#[derive(Debug)]
pub struct BundleResponse(Vec<u8>);

impl IntoResponse for BundleResponse {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::OK, self.0).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl aide::OperationOutput for BundleResponse {
    type Inner = String;

    fn operation_response(
        _ctx: &mut aide::generate::GenContext,
        _operation: &mut aide::openapi::Operation,
    ) -> Option<aide::openapi::Response> {
        Some(aide::openapi::Response {
            description: "JSON lines: the signed head, then one line per event with its leaf hash and inclusion proof.".into(),
            content: indexmap::IndexMap::from_iter([("application/x-ndjson".into(), aide::openapi::MediaType::default())]),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, aide::openapi::Response)> {
        Self::operation_response(ctx, operation)
            .map(|r| vec![(Some(aide::openapi::StatusCode::Code(200)), r)])
            .unwrap_or_default()
    }
}
