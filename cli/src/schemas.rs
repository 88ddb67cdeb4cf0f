//! `countersign schemas`: writes or checks `schemas/*.json`.

use std::path::Path;

use anyhow::{Context, bail};

/// The file content for a schema: pretty JSON with a trailing newline.
fn render(schema: &schemars::Schema) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(schema)? + "\n")
}

pub fn run(out: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    if !check {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    use countersign_domain::schema::named;
    let mut documents: Vec<(&str, String)> = Vec::new();
    let mut schemas = countersign_domain::schema::all();
    schemas.extend([
        named::<countersign_projections::InboxPage>("view-inbox-page.json"),
        named::<countersign_projections::ActionDetail>("view-action-detail.json"),
        named::<countersign_projections::AuditEntry>("view-audit-entry.json"),
        named::<countersign_projections::TenantStats>("view-tenant-stats.json"),
        named::<countersign_projections::VoteRecord>("view-vote-record.json"),
        named::<countersign_gateway::error::Problem>("problem.json"),
        named::<countersign_domain::delegation::DelegationCommand>("delegation-command.json"),
        named::<countersign_domain::delegation::DelegationEvent>("delegation-event.json"),
    ]);
    for (file, schema) in schemas {
        documents.push((file, render(&schema)?));
    }
    documents.push((
        "openapi.json",
        serde_json::to_string_pretty(&countersign_gateway::openapi())? + "\n",
    ));
    for (file, wanted) in documents {
        let path = out.join(file);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != wanted {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if !stale.is_empty() {
        bail!(
            "schemas are out of date (run `make schemas` and commit): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
