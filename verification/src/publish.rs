//! Publishing signed heads outside the database: a head kept only next to the data it seals
//! proves little, since whoever can rewrite the data can drop or replace heads beside it.
//!
//! [`FilePublisher`] writes each head to `DIR/<tenant>/<tree size, 20 digits>.json` and
//! `DIR/<tenant>/latest.json` (written to a temporary file, then renamed). Point `DIR` at storage
//! the database's operators cannot rewrite (another machine's mount, a WORM bucket synced from it,
//! a git repository pushed elsewhere). Webhook and NATS publishers are follow-ups: they implement
//! [`Publisher`] the same way.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::Context;

use crate::head::SignedHead;

/// A future returned by a publisher.
pub type PublishFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// Somewhere signed heads are sent. Publishing the same head twice must be harmless: after a
/// crash the sealer publishes again the heads it had not recorded as published.
pub trait Publisher: fmt::Debug + Send + Sync {
    /// A short description for logs (`file:/var/lib/heads`).
    fn describe(&self) -> String;
    fn publish<'a>(&'a self, head: &'a SignedHead) -> PublishFuture<'a>;
}

/// Writes heads as JSON files under a directory.
#[derive(Debug, Clone)]
pub struct FilePublisher {
    dir: PathBuf,
}

impl FilePublisher {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory of a tenant's heads (a tenant name that is not a plain slug is hex-encoded).
    pub fn tenant_dir(&self, tenant: &str) -> PathBuf {
        let plain = !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !tenant.starts_with('-');
        self.dir.join(if plain {
            tenant.to_owned()
        } else {
            format!("x-{}", hex::encode(tenant))
        })
    }

    /// Where the head of `tree_size` is written.
    pub fn head_path(&self, tenant: &str, tree_size: u64) -> PathBuf {
        self.tenant_dir(tenant)
            .join(format!("{tree_size:020}.json"))
    }

    fn write(&self, head: &SignedHead) -> anyhow::Result<()> {
        let dir = self.tenant_dir(&head.tenant);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(head)? + "\n";
        write_atomically(&self.head_path(&head.tenant, head.tree_size), &text)?;
        // latest.json only moves forward.
        let latest = dir.join("latest.json");
        let newer = match std::fs::read_to_string(&latest) {
            Ok(current) => serde_json::from_str::<SignedHead>(&current)
                .map_or(true, |current| current.tree_size <= head.tree_size),
            Err(_) => true,
        };
        if newer {
            write_atomically(&latest, &text)?;
        }
        Ok(())
    }
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))
}

impl Publisher for FilePublisher {
    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    fn publish<'a>(&'a self, head: &'a SignedHead) -> PublishFuture<'a> {
        Box::pin(async move {
            let publisher = self.clone();
            let head = head.clone();
            tokio::task::spawn_blocking(move || publisher.write(&head))
                .await
                .context("the file publisher's task failed")?
        })
    }
}

/// Reads every head published by a [`FilePublisher`] under `dir`, by tenant and size.
pub fn read_published(dir: &Path) -> anyhow::Result<Vec<SignedHead>> {
    let mut heads = Vec::new();
    let tenants = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for tenant in tenants {
        let tenant = tenant?.path();
        if !tenant.is_dir() {
            continue;
        }
        for file in
            std::fs::read_dir(&tenant).with_context(|| format!("reading {}", tenant.display()))?
        {
            let path = file?.path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("");
            if !name.ends_with(".json") || name == "latest.json" {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            heads.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a signed head", path.display()))?,
            );
        }
    }
    heads.sort_by(|a: &SignedHead, b| (&a.tenant, a.tree_size).cmp(&(&b.tenant, b.tree_size)));
    Ok(heads)
}
