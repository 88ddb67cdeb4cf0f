//! `countersign schemas`: writes or checks `schemas/*.json`.

use std::path::Path;

use anyhow::{Context, bail};

/// The file content for a schema: pretty JSON with a trailing newline.
pub fn render(schema: &schemars::Schema) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(schema)? + "\n")
}

pub fn run(out: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    if !check {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    for (file, schema) in countersign_domain::schema::all() {
        let path = out.join(file);
        let wanted = render(&schema)?;
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
