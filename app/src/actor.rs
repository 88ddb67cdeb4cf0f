//! Who asks: the typed actor every use case takes.

use countersign_domain::action::CommandContext;
use countersign_domain::tenant::TenantCommandContext;
use countersign_domain::{CorrelationId, Principal, TenantId};
use countersign_ledger::Metadata;

use crate::AppError;

/// Role names, as credentials carry them.
pub mod roles {
    pub const OWNER: &str = "owner";
    pub const ADMIN: &str = "admin";
    pub const APPROVER: &str = "approver";
    pub const REQUESTER: &str = "requester";
    pub const AUDITOR: &str = "auditor";
    /// Publishes domain events to the intake (`POST /v1/events`).
    pub const PUBLISHER: &str = "publisher";
    /// May approve a pending action alone in an emergency (`POST /v1/actions/{id}/break-glass`).
    pub const BREAK_GLASS: &str = countersign_domain::action::BREAK_GLASS_ROLE;
}

/// The front door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The `/v1` HTTP API.
    Api,
    /// The `countersign` command line, run by an operator on the store.
    Cli,
    /// The browser console.
    Console,
    /// A one-click approval link from a notification email.
    Email,
    /// A Slack interaction (a button on a notification message).
    Slack,
    /// The service itself (deadlines, the executor, workflows).
    System,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cli => "cli",
            Self::Console => "console",
            Self::Email => "email",
            Self::Slack => "slack",
            Self::System => "system",
        }
    }
}

/// An authenticated actor: the tenant comes only from the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub tenant: TenantId,
    pub principal: Principal,
    pub channel: Channel,
    /// The request that carried the use case (`X-Request-Id`), recorded in the events' metadata.
    pub request_id: Option<String>,
    /// The work this belongs to (`X-Correlation-Id`), recorded in the events.
    pub correlation_id: Option<CorrelationId>,
}

impl Actor {
    pub fn new(tenant: TenantId, principal: Principal, channel: Channel) -> Self {
        Self {
            tenant,
            principal,
            channel,
            request_id: None,
            correlation_id: None,
        }
    }

    #[must_use]
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: Option<CorrelationId>) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    pub fn has_any(&self, roles: &[&str]) -> bool {
        self.principal
            .roles
            .iter()
            .any(|role| roles.contains(&role.as_str()))
    }

    /// Refuses actors holding none of `roles`; `what` names the use case in the refusal.
    pub fn require(&self, roles: &[&str], what: &str) -> Result<(), AppError> {
        if self.has_any(roles) {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "{what} requires one of the roles: {}",
                roles.join(", ")
            )))
        }
    }

    pub fn is(&self, user: &str) -> bool {
        self.principal.id.as_str() == user
    }

    /// Whether the actor may see what `user` requested or voted: their own history, or any with
    /// the owner, admin or auditor role. One rule for the user histories and for the inbox's
    /// `requested_by` filter, so a filter never reveals what the resource refuses.
    pub fn may_read_history_of(&self, user: &str) -> Result<(), AppError> {
        if self.is(user) || self.has_any(&[roles::OWNER, roles::ADMIN, roles::AUDITOR]) {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "reading another user's history requires the owner, admin or auditor role".into(),
            ))
        }
    }

    /// The context of an action command decided now.
    pub fn context(&self) -> CommandContext {
        CommandContext {
            tenant: self.tenant.clone(),
            by: self.principal.clone(),
            at: chrono::Utc::now(),
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// The context of a tenant command decided now.
    pub fn tenant_context(&self) -> TenantCommandContext {
        TenantCommandContext {
            tenant: self.tenant.clone(),
            by: self.principal.clone(),
            at: chrono::Utc::now(),
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// The metadata of the events this actor causes.
    pub fn metadata(&self, correlation_id: Option<CorrelationId>) -> Metadata {
        Metadata {
            correlation_id,
            request_id: self.request_id.clone(),
            channel: Some(self.channel.as_str()),
            ..Metadata::new(self.tenant.clone(), self.principal.id.clone())
        }
    }
}
