//! `countersign simulate`: risk and policy for a hypothetical submission.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use countersign_domain::UserId;
use countersign_domain::policy::{Policy, Requirements, resolve};
use countersign_domain::risk::assess;
use countersign_domain::submission::Submission;
use serde_json::json;

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(policies: Option<&Path>, requester: &str, submission: &Path) -> anyhow::Result<()> {
    let requester = UserId::parse(requester).context("--requester")?;
    let text = read(submission)?;
    let submission: Submission = serde_path_json(&text)
        .with_context(|| format!("{} is not a valid submission", submission.display()))?;
    let policies: Vec<Policy> = match policies {
        Some(path) => serde_path_json(&read(path)?)
            .with_context(|| format!("{} is not a valid list of policies", path.display()))?,
        None => Vec::new(),
    };
    let risk = assess(&submission);
    let policy = resolve(
        &policies,
        &submission.facts(&requester, &risk),
        &Requirements::builtin_default(),
    );
    let answer = json!({ "action_type": submission.action_type(), "risk": risk, "policy": policy });
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&answer)?
    )?;
    Ok(())
}

/// Parses JSON, naming the path of the first offending field.
fn serde_path_json<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        anyhow::Error::new(err.into_inner()).context(format!("at `{path}`"))
    })
}
