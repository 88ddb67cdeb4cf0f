//! `countersign verify`, `seal`, `audit export|verify` and `keys generate`, and the sealer's
//! settings for `serve`. See docs/verification.md.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use countersign_ledger::Ledger;
use countersign_verification::decisions::check_decisions;
use countersign_verification::export::{export, verify_bundle};
use countersign_verification::keys::read_public_key;
use countersign_verification::publish::read_published;
use countersign_verification::{
    FilePublisher, HeadSigner, KeyRing, Publisher, SealStore, Sealer, SealerConfig, VerifyOptions,
    verify,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::store::StoreArgs;

/// How the sealer signs and publishes ledger heads (`serve` and `seal`).
#[derive(Debug, Clone, Args)]
pub struct SealArgs {
    /// The Ed25519 key that signs ledger heads (`countersign keys generate`). Without one, events
    /// are sealed but no head is signed.
    #[arg(long, env = "COUNTERSIGN_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Sign a tenant's head once this many of its events wait for one.
    #[arg(long, env = "COUNTERSIGN_SEAL_EVERY_EVENTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub seal_every_events: u64,
    /// Sign a tenant's head once its events have waited this many seconds.
    #[arg(long, env = "COUNTERSIGN_SEAL_EVERY_SECONDS", default_value_t = 10.0)]
    pub seal_every_seconds: f64,
    /// Also write every signed head as JSON under this directory (one folder per tenant), ideally
    /// storage that the database's operators cannot rewrite.
    #[arg(long, env = "COUNTERSIGN_PUBLISH_HEADS_DIR")]
    pub publish_heads_dir: Option<PathBuf>,
}

impl SealArgs {
    pub fn config(&self) -> anyhow::Result<SealerConfig> {
        if !(self.seal_every_seconds.is_finite() && self.seal_every_seconds > 0.0) {
            bail!(
                "--seal-every-seconds must be a positive number of seconds, not {}",
                self.seal_every_seconds
            );
        }
        let signer = self
            .signing_key
            .as_deref()
            .map(HeadSigner::read)
            .transpose()
            .context("--signing-key")?;
        let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
        if let Some(dir) = &self.publish_heads_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--publish-heads-dir: creating {}", dir.display()))?;
            publishers.push(Arc::new(FilePublisher::new(dir.clone())));
        }
        Ok(SealerConfig {
            every_events: self.seal_every_events,
            every_seconds: Duration::from_secs_f64(self.seal_every_seconds),
            signer,
            publishers,
            ..SealerConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct SealCommand {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub seal: SealArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// A public key heads may be signed with (a file or 64 hex digits); repeat after a rotation.
    #[arg(long)]
    pub public_key: Vec<String>,
    /// Trust the public half of this signing key too.
    #[arg(long, env = "COUNTERSIGN_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Heads published outside the database (a --publish-heads-dir): each must be in the
    /// database, unchanged, and match the recomputed tree.
    #[arg(long)]
    pub published_heads: Option<PathBuf>,
    /// Also decide every action's recorded commands again with the current code and report any
    /// action whose recorded decisions it would not reproduce.
    #[arg(long)]
    pub decisions: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write a tenant's events with their leaf hashes, inclusion proofs and the signed head that
    /// covers them, as JSON lines.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        tenant: String,
        /// First ledger sequence (0-based).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One past the last ledger sequence (default: the size of the newest signed head).
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an export offline: the head's signature, every event's leaf hash and inclusion
    /// proof, and that no line is missing. Needs no database.
    Verify {
        bundle: PathBuf,
        /// The public key the head must be signed with (a file or 64 hex digits); repeatable.
        #[arg(long, required = true)]
        public_key: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an Ed25519 key for signing ledger heads: FILE (secret, mode 0600) and FILE.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// A member's key for signing votes: `generate` one, `sign` a vote with it.
    #[command(subcommand)]
    Vote(crate::vote_keys::VoteKeysCommand),
}

fn progress_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} events · {per_sec} · eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

async fn open(store: &StoreArgs) -> anyhow::Result<(Ledger, SealStore)> {
    let ledger = store.open_migrated().await?;
    let seals = SealStore::open(&store.config()).await?;
    Ok((ledger, seals))
}

/// `countersign seal`: seal the log to its end, sign a head for every tenant with unsigned
/// events, and publish.
pub async fn seal(command: &SealCommand) -> anyhow::Result<()> {
    let config = command.seal.config()?;
    let signing = config.signer.is_some();
    let (ledger, store) = open(&command.store).await?;
    let Some(lock) = ledger
        .lock_tailer(countersign_verification::sealer::SEALER_LOCK)
        .await?
    else {
        bail!("another instance (a running `serve`?) is sealing this store");
    };
    let mut sealer = Sealer::new(ledger.clone(), store.clone(), config);
    // Everything committed when the command started: on PostgreSQL some of it may not be
    // readable yet (an older transaction elsewhere holds the horizon), so wait for it, bounded.
    let committed = ledger.committed_events().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sealed = sealer.run_until_idle().await?;
    while store.checkpoint().await?.events < committed {
        if Instant::now() > deadline {
            tracing::warn!(
                committed,
                sealed,
                "events committed before the seal are still unreadable after 60 s (a long \
                 transaction holds the horizon); sealed what is readable"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sealed += sealer.run_until_idle().await?;
    }
    let heads = sealer.sign_heads(true).await?;
    sealer.publish_pending().await;
    lock.release().await;
    let mut out = std::io::stdout();
    writeln!(out, "sealed {sealed} events; signed {heads} heads")?;
    if !signing {
        writeln!(
            out,
            "no signing key (--signing-key or COUNTERSIGN_SIGNING_KEY): no head was signed"
        )?;
    }
    for tree in store.trees().await? {
        writeln!(
            out,
            "tenant {}: {} leaves, newest head at {}",
            tree.tenant,
            tree.frontier.size(),
            tree.head_size
        )?;
    }
    store.close().await;
    ledger.close().await;
    Ok(())
}

pub async fn run_verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for key in &args.public_key {
        keys.push(read_public_key(key).with_context(|| format!("--public-key {key}"))?);
    }
    if let Some(path) = &args.signing_key {
        keys.push(
            HeadSigner::read(path)
                .context("--signing-key")?
                .public_key(),
        );
    }
    let published = match &args.published_heads {
        Some(dir) => read_published(dir).context("--published-heads")?,
        None => Vec::new(),
    };
    let (ledger, store) = open(&args.store).await?;
    let signed = store.trees().await?.iter().any(|tree| tree.head_size > 0);
    if keys.is_empty() && (signed || !published.is_empty()) {
        bail!(
            "the store holds signed heads but no public key was given: pass --public-key FILE (or --signing-key)"
        );
    }
    let options = VerifyOptions {
        tenant: args.tenant.clone(),
        keys: KeyRing::new(keys),
        published,
        batch: 1000,
    };
    let total = u64::try_from(ledger.log_head().await?.position).unwrap_or_default();
    let bar = progress_bar(total, "verify");
    let started = Instant::now();
    let mut last_log = Instant::now();
    let report = verify(&ledger, &store, &options, |read, cursor| {
        bar.set_position(u64::try_from(cursor.position).unwrap_or(read));
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(
                events = read,
                position = cursor.position,
                rate = format!(
                    "{:.0}/s",
                    read as f64 / started.elapsed().as_secs_f64().max(1e-3)
                ),
                "verify progress"
            );
        }
    })
    .await?;
    bar.finish_and_clear();
    if let Some(tenant) = &args.tenant
        && report.tenants.is_empty()
    {
        bail!("--tenant {tenant}: the log holds no event of this tenant");
    }
    let decisions = if args.decisions {
        let bar = progress_bar(total, "decisions");
        let report = check_decisions(&ledger, args.tenant.as_deref(), |_, cursor| {
            bar.set_position(u64::try_from(cursor.position).unwrap_or_default());
        })
        .await?;
        bar.finish_and_clear();
        Some(report)
    } else {
        None
    };
    store.close().await;
    ledger.close().await;

    let mut out = std::io::stdout();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": report.is_ok() && decisions.as_ref().is_none_or(|d| d.is_ok()),
                "rate": report.rate(),
                "tree": report,
                "decisions": decisions,
            }))?
        )?;
    } else {
        writeln!(
            out,
            "verified {} events of {} tenant(s) in {:.2} s ({:.0} events/s)",
            report.events,
            report.tenants.len(),
            report.seconds,
            report.rate()
        )?;
        for tenant in &report.tenants {
            writeln!(
                out,
                "tenant {}: {} events, {} sealed, {} heads checked{}, root {}{}",
                tenant.tenant,
                tenant.events,
                tenant.sealed,
                tenant.heads_checked,
                tenant
                    .newest_head
                    .map(|size| format!(" (newest at size {size})"))
                    .unwrap_or_default(),
                tenant.root,
                if tenant.diverged { " — DIVERGES" } else { "" }
            )?;
        }
        for divergence in &report.divergences {
            writeln!(out, "DIVERGENCE {divergence}")?;
        }
        if report.unsealed() > 0 {
            writeln!(
                out,
                "{} event(s) are not sealed yet (after the sealer's checkpoint): they are not covered by any head",
                report.unsealed()
            )?;
        }
        if let Some(decisions) = &decisions {
            writeln!(
                out,
                "decisions: {} actions, {} events, {} commands decided again in {:.2} s",
                decisions.actions, decisions.events, decisions.commands, decisions.seconds
            )?;
            for mismatch in &decisions.mismatches {
                writeln!(out, "DECISION MISMATCH {mismatch}")?;
            }
        }
    }
    let mismatches = decisions.as_ref().map_or(0, |d| d.mismatches.len());
    if !report.is_ok() || mismatches > 0 {
        bail!(
            "verification failed: {} divergence(s){}",
            report.divergences.len(),
            if args.decisions {
                format!(
                    ", {mismatches} action(s) whose decisions the current code does not reproduce"
                )
            } else {
                String::new()
            }
        );
    }
    if !args.json {
        writeln!(
            out,
            "OK: every sealed event matches its leaf and every head its events and signature{}",
            if args.decisions {
                "; every recorded decision is reproduced"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}

pub async fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export {
            store,
            tenant,
            from,
            to,
            out,
        } => {
            let (ledger, seals) = open(&store).await?;
            let temporary = out.with_extension("partial");
            let file = std::fs::File::create(&temporary)
                .with_context(|| format!("--out: creating {}", temporary.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let summary = export(&ledger, &seals, &tenant, from, to, &mut writer).await;
            drop(writer);
            let summary = match summary {
                Ok(summary) => summary,
                Err(err) => {
                    let _ = std::fs::remove_file(&temporary);
                    return Err(err);
                }
            };
            std::fs::rename(&temporary, &out)
                .with_context(|| format!("--out: writing {}", out.display()))?;
            writeln!(
                std::io::stdout(),
                "exported {} events of tenant {} (ledger sequences {}..{}) with proofs against the head of size {} to {}",
                summary.events,
                summary.tenant,
                summary.from,
                summary.to,
                summary.head_size,
                out.display()
            )?;
            seals.close().await;
            ledger.close().await;
            Ok(())
        }
        AuditCommand::Verify { bundle, public_key } => {
            let mut keys = Vec::new();
            for key in &public_key {
                keys.push(read_public_key(key).with_context(|| format!("--public-key {key}"))?);
            }
            let file = std::fs::File::open(&bundle)
                .with_context(|| format!("opening {}", bundle.display()))?;
            let report = verify_bundle(std::io::BufReader::new(file), &KeyRing::new(keys))
                .with_context(|| format!("{} does not verify", bundle.display()))?;
            writeln!(
                std::io::stdout(),
                "OK: {} events of tenant {} (ledger sequences {}..{}) are in the tree of size {} with root {}, signed at {} by key {}",
                report.to - report.from,
                report.tenant,
                report.from,
                report.to,
                report.head.tree_size,
                report.head.root,
                report.head.signed_at,
                report.head.key_id
            )?;
            let votes = &report.signed_votes;
            if votes.checked > 0 {
                writeln!(
                    std::io::stdout(),
                    "OK: {} signed vote(s) verify with their voters' registered keys{}",
                    votes.checked,
                    if votes.registered_outside > 0 {
                        format!(
                            " ({} key registration(s) precede the bundle: export from 0 to check them too)",
                            votes.registered_outside
                        )
                    } else {
                        String::new()
                    }
                )?;
            }
            Ok(())
        }
    }
}

pub fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate { out } => {
            let signer = HeadSigner::generate();
            let public = signer.write(&out)?;
            writeln!(
                std::io::stdout(),
                "key {}: secret {} (keep it off the database host), public {}",
                signer.id(),
                out.display(),
                public.display()
            )?;
            Ok(())
        }
        KeysCommand::Vote(command) => crate::vote_keys::run(command),
    }
}
