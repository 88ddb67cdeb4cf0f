//! What a process runs: the front doors, the tailers, or both.

use std::fmt;
use std::str::FromStr;

/// The part of countersign one process runs (see the crate documentation for what each starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    /// The HTTP API and the event hub its streams read: stateless, as many as wanted.
    Api,
    /// The tailers — projections, sealer, relay, executor, deadline sweep — each singleton behind
    /// its tailer lock: run two or more for a standby.
    Worker,
    /// Both in one process (a single-node deployment, development).
    #[default]
    All,
}

impl Role {
    /// Every role, in the order of [`Role::NAMES`].
    pub const EVERY: [Self; 3] = [Self::Api, Self::Worker, Self::All];
    /// The names roles are parsed from and shown as.
    pub const NAMES: [&'static str; 3] = ["api", "worker", "all"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Worker => "worker",
            Self::All => "all",
        }
    }

    /// Whether the process serves the `/v1` API (and its streams, docs and metrics).
    pub fn serves_api(self) -> bool {
        matches!(self, Self::Api | Self::All)
    }

    /// Whether the process runs the tailers (projections, sealer, relay, executor, sweep).
    pub fn runs_workers(self) -> bool {
        matches!(self, Self::Worker | Self::All)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role `{}` (expected {})",
            self.0,
            Role::NAMES.join(", ")
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::EVERY
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_their_names_and_nothing_else() {
        for (role, name) in Role::EVERY.into_iter().zip(Role::NAMES) {
            assert_eq!(name.parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), name);
        }
        assert_eq!(
            "API".parse::<Role>(),
            Err(UnknownRole("API".into())),
            "names are exact"
        );
        assert_eq!(Role::default(), Role::All);
        assert!(Role::All.serves_api() && Role::All.runs_workers());
        assert!(Role::Api.serves_api() && !Role::Api.runs_workers());
        assert!(!Role::Worker.serves_api() && Role::Worker.runs_workers());
    }
}
