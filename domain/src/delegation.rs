//! Delegation windows: a member lends their eligibility to another member for a window (out of
//! office), kept as the tenant's `delegation_set` events.
//!
//! - Only the delegator grants, from their own credential: the delegation records the roles
//!   they held then, and a delegate's vote counts with those roles, in the delegator's place.
//! - The delegator, an owner or an admin revokes; a revoked or ended window lends nothing.
//! - A delegation never chains: a delegate votes for the member who delegated to them, never for
//!   whoever delegated to that member. The action's rules (never on one's own request, never twice
//!   in a stage) are the action aggregate's (`CastDelegatedVote`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tenant::{TenantCommandContext, TenantEventContext};
use crate::{ParseError, Principal, TenantId, Timestamp, UserId};

/// The longest window one delegation lends eligibility for, in days.
pub const MAX_WINDOW_DAYS: i64 = 90;

/// When a delegation was revoked, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Revocation {
    pub by: UserId,
    pub at: Timestamp,
}

/// One member's eligibility lent to another for a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Delegation {
    pub id: uuid::Uuid,
    /// Who lends their eligibility, with the roles they held when granting it.
    pub delegator: Principal,
    /// Who may vote in the delegator's place.
    pub delegate: UserId,
    pub starts_at: Timestamp,
    /// The window ends here (exclusive).
    pub ends_at: Timestamp,
    pub granted_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

impl Delegation {
    /// Whether it lends eligibility at `at`.
    pub fn is_active_at(&self, at: Timestamp) -> bool {
        self.starts_at <= at
            && at < self.ends_at
            && self.revoked.as_ref().is_none_or(|revoked| at < revoked.at)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum DelegationCommand {
    /// The principal of `context` lends their eligibility to `delegate`.
    GrantDelegation {
        context: TenantCommandContext,
        id: uuid::Uuid,
        delegate: UserId,
        starts_at: Timestamp,
        ends_at: Timestamp,
    },
    /// The delegator, an owner or an admin ends a delegation now.
    RevokeDelegation {
        context: TenantCommandContext,
        id: uuid::Uuid,
    },
}

impl DelegationCommand {
    fn context(&self) -> &TenantCommandContext {
        match self {
            Self::GrantDelegation { context, .. } | Self::RevokeDelegation { context, .. } => {
                context
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum DelegationEvent {
    DelegationGranted {
        #[serde(flatten)]
        context: TenantEventContext,
        delegation: Delegation,
    },
    DelegationRevoked {
        #[serde(flatten)]
        context: TenantEventContext,
        id: uuid::Uuid,
    },
}

impl cqrs_es::DomainEvent for DelegationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DelegationGranted { .. } => "DelegationGranted",
            Self::DelegationRevoked { .. } => "DelegationRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a delegation command was refused; nothing is recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// Handling: 422 naming the field.
    #[error(transparent)]
    InvalidInput(ParseError),
    /// Handling: 404 (another tenant's delegation looks the same).
    #[error("delegation not found")]
    NotFound,
    /// Handling: 409.
    #[error("a delegation with this id already exists")]
    Exists,
    /// Handling: 403.
    #[error("only the delegator, an owner or an admin may revoke a delegation")]
    NotPermitted,
}

impl DelegationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::NotFound => "delegation_not_found",
            Self::Exists => "delegation_exists",
            Self::NotPermitted => "not_permitted",
        }
    }
}

/// A tenant's delegations, revoked and ended ones included (they are history).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DelegationSet {
    pub tenant: Option<TenantId>,
    pub delegations: BTreeMap<uuid::Uuid, Delegation>,
}

fn event_context(context: &TenantCommandContext) -> TenantEventContext {
    TenantEventContext {
        tenant: context.tenant.clone(),
        actor: context.by.id.clone(),
        at: context.at,
        correlation_id: context.correlation_id.clone(),
    }
}

impl DelegationSet {
    /// The delegation that lets `delegate` vote in `delegator`'s place at `at`, if one does.
    pub fn active(
        &self,
        delegator: &UserId,
        delegate: &UserId,
        at: Timestamp,
    ) -> Option<&Delegation> {
        self.delegations.values().find(|delegation| {
            delegation.delegator.id == *delegator
                && delegation.delegate == *delegate
                && delegation.is_active_at(at)
        })
    }

    pub fn list(&self) -> Vec<Delegation> {
        self.delegations.values().cloned().collect()
    }

    pub fn decide(
        &self,
        command: DelegationCommand,
    ) -> Result<Vec<DelegationEvent>, DelegationError> {
        if self
            .tenant
            .as_ref()
            .is_some_and(|tenant| *tenant != command.context().tenant)
        {
            return Err(DelegationError::NotFound);
        }
        match command {
            DelegationCommand::GrantDelegation {
                context,
                id,
                delegate,
                starts_at,
                ends_at,
            } => {
                if self.delegations.contains_key(&id) {
                    return Err(DelegationError::Exists);
                }
                let invalid = |field: &str, message: &str| {
                    Err(DelegationError::InvalidInput(ParseError::new(
                        field, message,
                    )))
                };
                if delegate == context.by.id {
                    return invalid("delegate", "must be another member than the delegator");
                }
                if ends_at <= starts_at {
                    return invalid("ends_at", "must be after starts_at");
                }
                if ends_at <= context.at {
                    return invalid("ends_at", "must be in the future");
                }
                if ends_at - starts_at > chrono::Duration::days(MAX_WINDOW_DAYS) {
                    return invalid("ends_at", "a window is at most 90 days long");
                }
                Ok(vec![DelegationEvent::DelegationGranted {
                    context: event_context(&context),
                    delegation: Delegation {
                        id,
                        delegator: context.by.clone(),
                        delegate,
                        starts_at,
                        ends_at,
                        granted_at: context.at,
                        revoked: None,
                    },
                }])
            }
            DelegationCommand::RevokeDelegation { context, id } => {
                let delegation = self.delegations.get(&id).ok_or(DelegationError::NotFound)?;
                if delegation.delegator.id != context.by.id && !context.by.is_admin() {
                    return Err(DelegationError::NotPermitted);
                }
                if delegation.revoked.is_some() {
                    return Ok(Vec::new());
                }
                Ok(vec![DelegationEvent::DelegationRevoked {
                    context: event_context(&context),
                    id,
                }])
            }
        }
    }

    pub fn apply(&mut self, event: DelegationEvent) {
        match event {
            DelegationEvent::DelegationGranted {
                context,
                delegation,
            } => {
                self.tenant.get_or_insert(context.tenant);
                self.delegations.insert(delegation.id, delegation);
            }
            DelegationEvent::DelegationRevoked { context, id } => {
                if let Some(delegation) = self.delegations.get_mut(&id) {
                    delegation.revoked = Some(Revocation {
                        by: context.actor,
                        at: context.at,
                    });
                }
            }
        }
    }
}

decided_aggregate!(
    DelegationSet,
    "delegation_set",
    DelegationCommand,
    DelegationEvent,
    DelegationError
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use chrono::TimeZone;

    fn at(hours: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_800_000_000 + hours * 3600, 0)
            .single()
            .expect("time")
    }

    fn context(by: &str, roles: &[&str], hours: i64) -> TenantCommandContext {
        TenantCommandContext {
            tenant: TenantId::parse("acme").expect("tenant"),
            by: Principal::new(
                UserId::parse(by).expect("user"),
                roles.iter().map(|role| Role::parse(*role).expect("role")),
            ),
            at: at(hours),
            correlation_id: None,
        }
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("user")
    }

    fn run(set: &mut DelegationSet, command: DelegationCommand) -> Result<usize, &'static str> {
        let events = set.decide(command).map_err(|err| err.code())?;
        let count = events.len();
        for event in events {
            set.apply(event);
        }
        Ok(count)
    }

    fn grant(by: &str, to: &str, from: i64, until: i64) -> DelegationCommand {
        DelegationCommand::GrantDelegation {
            context: context(by, &["finance_ops"], 0),
            id: uuid::Uuid::from_u128(u128::from(from.unsigned_abs()) << 8 | 1),
            delegate: user(to),
            starts_at: at(from),
            ends_at: at(until),
        }
    }

    #[test]
    fn a_delegation_lends_the_delegators_roles_for_its_window_only() {
        let mut set = DelegationSet::default();
        assert_eq!(run(&mut set, grant("ada", "bob", 1, 48)), Ok(1));
        let lent = set
            .active(&user("ada"), &user("bob"), at(2))
            .expect("active");
        assert!(
            lent.delegator
                .has_role(&Role::parse("finance_ops").expect("role"))
        );
        assert!(set.active(&user("ada"), &user("bob"), at(0)).is_none());
        assert!(set.active(&user("ada"), &user("bob"), at(48)).is_none());
        assert!(set.active(&user("bob"), &user("ada"), at(2)).is_none());
    }

    #[test]
    fn bad_windows_and_self_delegation_are_refused_naming_the_field() {
        let set = DelegationSet::default();
        for (command, field) in [
            (grant("ada", "ada", 1, 2), "delegate"),
            (grant("ada", "bob", 2, 1), "ends_at"),
            (grant("ada", "bob", -3, -1), "ends_at"),
            (grant("ada", "bob", 0, 24 * 91), "ends_at"),
        ] {
            match set.decide(command) {
                Err(DelegationError::InvalidInput(error)) => assert_eq!(error.field, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(set.delegations.is_empty());
    }

    #[test]
    fn the_delegator_or_an_admin_revokes_and_nobody_else() {
        let mut set = DelegationSet::default();
        run(&mut set, grant("ada", "bob", 0, 48)).expect("granted");
        let id = *set.delegations.keys().next().expect("one");
        let revoke = |by: &str, roles: &[&str], hours: i64| DelegationCommand::RevokeDelegation {
            context: context(by, roles, hours),
            id,
        };
        assert_eq!(
            run(&mut set, revoke("bob", &["approver"], 1)),
            Err("not_permitted")
        );
        assert_eq!(run(&mut set, revoke("olga", &["owner"], 2)), Ok(1));
        assert!(set.active(&user("ada"), &user("bob"), at(1)).is_some());
        assert!(set.active(&user("ada"), &user("bob"), at(3)).is_none());
        assert_eq!(
            run(&mut set, revoke("ada", &[], 4)),
            Ok(0),
            "revoking again records nothing"
        );
    }
}
