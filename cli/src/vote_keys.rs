//! `countersign keys vote generate|sign`: a member's Ed25519 key for signing votes
//! (docs/governance.md, "Signed votes"). `generate` writes the secret key (64 hex digits, mode
//! 0600) and `FILE.pub`, the public key to register with `PUT /v1/members/me/signing-key`;
//! `sign` prints the JSON body of a signed vote for `POST /v1/actions/{id}/votes`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use countersign_domain::canonical::ExecutionKey;
use countersign_domain::quorum::Vote;
use countersign_domain::signing::{VoteSigner, format_signed_at};
use countersign_domain::{ActionId, TenantId, Timestamp};
use countersign_verification::HeadSigner;

#[derive(Debug, Subcommand)]
pub enum VoteKeysCommand {
    /// Create an Ed25519 key for signing your votes: FILE (secret, mode 0600) and FILE.pub (the
    /// public key to register).
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a vote and print its JSON body (for `POST /v1/actions/{id}/votes`).
    Sign {
        /// The secret key file written by `keys vote generate`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The action's id.
        #[arg(long)]
        action: String,
        /// The execution key the action detail shows (the payload you approve).
        #[arg(long)]
        execution_key: String,
        /// approve, reject or abstain.
        #[arg(long, default_value = "approve")]
        vote: String,
        /// When the vote is signed (RFC 3339); default now. The server accepts it within five
        /// minutes of receipt.
        #[arg(long)]
        signed_at: Option<String>,
        /// A comment to send with the vote (not covered by the signature).
        #[arg(long)]
        comment: Option<String>,
    },
}

pub fn run(command: VoteKeysCommand) -> anyhow::Result<()> {
    match command {
        VoteKeysCommand::Generate { out } => {
            // The same file format as head keys: 32 random bytes from the operating system.
            let key = HeadSigner::generate();
            let public = key.write(&out)?;
            writeln!(
                std::io::stdout(),
                "vote key {}: secret {} (keep it to yourself), public {} (register it: PUT /v1/members/me/signing-key)",
                key.id(),
                out.display(),
                public.display()
            )?;
            Ok(())
        }
        VoteKeysCommand::Sign {
            key,
            tenant,
            action,
            execution_key,
            vote,
            signed_at,
            comment,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("--key: reading {}", key.display()))?;
            let signer = VoteSigner::from_hex(&text)
                .with_context(|| format!("--key: {} is not a vote key", key.display()))?;
            let tenant = TenantId::parse(tenant.as_str()).context("--tenant")?;
            let action = ActionId::parse(&action).context("--action")?;
            let execution_key: ExecutionKey =
                serde_json::from_value(serde_json::Value::String(execution_key))
                    .context("--execution-key")?;
            let vote: Vote = serde_json::from_value(serde_json::Value::String(vote))
                .context("--vote: approve, reject or abstain")?;
            let signed_at: Timestamp = match signed_at {
                Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
                    .context("--signed-at: RFC 3339")?
                    .into(),
                None => chrono::Utc::now(),
            };
            let signed_at = chrono::DateTime::from_timestamp(signed_at.timestamp(), 0)
                .context("--signed-at: out of range")?;
            let signature = signer.sign(&tenant, &action, &execution_key, vote, signed_at);
            let mut body = serde_json::json!({
                "vote": vote,
                "execution_key": execution_key,
                "signature": signature.signature,
                "signed_at": format_signed_at(signed_at),
                "key_id": signature.key_id,
            });
            if let Some(comment) = comment {
                body["comment"] = serde_json::Value::String(comment);
            }
            writeln!(std::io::stdout(), "{body}")?;
            Ok(())
        }
    }
}
