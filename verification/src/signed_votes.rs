//! The offline check of signed votes in an audit bundle: each `VoteCast` that carries a
//! signature is verified with the public key it records, over the message of
//! `countersign_domain::signing`, and its key is matched with the voter's registration in the
//! member directory (`SigningKeyRegistered`, `SigningKeyRemoved`) when the bundle holds it. No
//! database and no trust in the server: a signature the server altered or made up fails here
//! even when the event is sealed.

use std::collections::BTreeMap;

use countersign_domain::action::VoteCast;
use countersign_domain::members::MemberEvent;
use countersign_domain::{ActionId, TenantId, UserId};

use crate::leaf::SealedEvent;

/// One registration of a key, as the bundle shows it.
#[derive(Debug, Clone)]
struct Registration {
    user: UserId,
    public_key: String,
    registered: u64,
    retired: Option<u64>,
}

/// A signed vote waiting for the registrations of the whole bundle.
#[derive(Debug, Clone)]
struct SignedVote {
    line: usize,
    ledger_sequence: u64,
    voter: UserId,
    key_id: String,
    public_key: String,
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedVotesReport {
    /// Signed votes checked.
    pub checked: u64,
    /// Signed votes whose key was registered before the bundle's first event (the signature
    /// itself was checked; export from ledger sequence 0 to check the registration too).
    pub registered_outside: u64,
    /// One line per signed vote that does not verify, naming the bundle line and why.
    pub failures: Vec<String>,
}

/// Collects the bundle's signed votes and key registrations, line by line.
#[derive(Debug, Default)]
pub struct SignedVoteCheck {
    registrations: BTreeMap<String, Registration>,
    votes: Vec<SignedVote>,
    report: SignedVotesReport,
}

impl SignedVoteCheck {
    /// Looks at one verified line of the bundle.
    pub fn observe(&mut self, line: usize, event: &SealedEvent) {
        match (event.aggregate_type.as_str(), event.event_type.as_str()) {
            ("action", "VoteCast") => self.vote(line, event),
            ("member_directory", "SigningKeyRegistered" | "SigningKeyRemoved") => {
                self.registration(line, event);
            }
            _ => {}
        }
    }

    fn fail(&mut self, line: usize, event: &SealedEvent, why: impl std::fmt::Display) {
        self.report.failures.push(format!(
            "line {line} (ledger sequence {}, {}): {why}",
            event.ledger_sequence,
            event.name()
        ));
    }

    fn vote(&mut self, line: usize, event: &SealedEvent) {
        let Some(signature) = event
            .payload
            .get("VoteCast")
            .and_then(|vote| vote.get("signature"))
        else {
            return;
        };
        if signature.is_null() {
            return;
        }
        self.report.checked += 1;
        let vote: VoteCast = match event
            .payload
            .get("VoteCast")
            .cloned()
            .map(serde_json::from_value)
        {
            Some(Ok(vote)) => vote,
            Some(Err(err)) => {
                return self.fail(line, event, format!("unreadable signed vote: {err}"));
            }
            None => return,
        };
        let Some(signature) = &vote.signature else {
            return;
        };
        let (Ok(tenant), Ok(action)) = (
            TenantId::parse(event.tenant.as_str()),
            ActionId::parse(&event.aggregate_id),
        ) else {
            return self.fail(line, event, "the vote's tenant or action id is not one");
        };
        let Some(execution_key) = &vote.execution_key else {
            return self.fail(line, event, "a signed vote without its execution key");
        };
        if vote.on_behalf_of.is_some() {
            return self.fail(line, event, "a signed vote cast in another member's place");
        }
        if let Err(problem) = signature.verify(&tenant, &action, execution_key, vote.vote) {
            return self.fail(
                line,
                event,
                format!(
                    "the signature of {}'s vote does not verify: {problem}",
                    vote.context.actor
                ),
            );
        }
        self.votes.push(SignedVote {
            line,
            ledger_sequence: event.ledger_sequence,
            voter: vote.context.actor.clone(),
            key_id: signature.key_id.clone(),
            public_key: signature.public_key.to_string(),
        });
    }

    fn registration(&mut self, line: usize, event: &SealedEvent) {
        match serde_json::from_value::<MemberEvent>(event.payload.clone()) {
            Ok(MemberEvent::SigningKeyRegistered {
                user_id,
                key_id,
                public_key,
                ..
            }) => {
                for registration in self.registrations.values_mut() {
                    if registration.user == user_id && registration.retired.is_none() {
                        registration.retired = Some(event.ledger_sequence);
                    }
                }
                self.registrations.insert(
                    key_id,
                    Registration {
                        user: user_id,
                        public_key: public_key.to_string(),
                        registered: event.ledger_sequence,
                        retired: None,
                    },
                );
            }
            Ok(MemberEvent::SigningKeyRemoved { key_id, .. }) => {
                if let Some(registration) = self.registrations.get_mut(&key_id) {
                    registration.retired = Some(event.ledger_sequence);
                }
            }
            Ok(_) => {}
            Err(err) => self.fail(line, event, format!("unreadable key registration: {err}")),
        }
    }

    /// Matches every signed vote with its key's registration. `from` is the bundle's first
    /// ledger sequence: a registration before it cannot be in the bundle.
    pub fn finish(mut self, from: u64) -> SignedVotesReport {
        for vote in std::mem::take(&mut self.votes) {
            let prefix = format!(
                "line {} (ledger sequence {}, vote of {})",
                vote.line, vote.ledger_sequence, vote.voter
            );
            match self.registrations.get(&vote.key_id) {
                None if from > 0 => self.report.registered_outside += 1,
                None => self.report.failures.push(format!(
                    "{prefix}: key {} was never registered in the member directory",
                    vote.key_id
                )),
                Some(registration) => {
                    let why = if registration.user != vote.voter {
                        Some(format!(
                            "key {} is {}'s, not the voter's",
                            vote.key_id, registration.user
                        ))
                    } else if registration.public_key != vote.public_key {
                        Some(format!(
                            "the vote records another public key than the one registered as {}",
                            vote.key_id
                        ))
                    } else if registration.registered > vote.ledger_sequence {
                        Some(format!("key {} was registered after the vote", vote.key_id))
                    } else if registration
                        .retired
                        .is_some_and(|retired| retired < vote.ledger_sequence)
                    {
                        Some(format!("key {} was retired before the vote", vote.key_id))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        self.report.failures.push(format!("{prefix}: {why}"));
                    }
                }
            }
        }
        self.report
    }
}
