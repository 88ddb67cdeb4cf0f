//! The projection tables and their registry.

use anyhow::{Context, bail};
use countersign_ledger::{LogCursor, StoreConfig};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::Projection;

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationState {
    /// Being built from the start of the log; not read.
    Building,
    /// Serving reads.
    Live,
    /// Replaced; its tables are dropped shortly after.
    Retired,
}

impl GenerationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Live => "live",
            Self::Retired => "retired",
        }
    }

    fn parse(value: &str) -> Self {
        match value {
            "live" => Self::Live,
            "building" => Self::Building,
            _ => Self::Retired,
        }
    }
}

/// One generation of a projection's tables, with its checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub projection: Projection,
    pub generation: i64,
    pub version: i64,
    pub state: GenerationState,
    pub checkpoint: LogCursor,
    /// Events applied so far.
    pub events: i64,
    pub updated_at: i64,
}

/// The projection tables of one store, reached through sqlx's `Any` driver.
#[derive(Debug, Clone)]
pub struct ProjectionStore {
    pub(crate) pool: AnyPool,
    pub(crate) postgres: bool,
    /// On PostgreSQL, a few native connections for the runners' batches: sqlx's `Any` driver
    /// binds no arrays, and a batch is written with one `INSERT … SELECT FROM UNNEST(…)` per
    /// table instead of a statement with thousands of placeholders (see [`crate::apply`]).
    /// Connected lazily, on the first batch.
    pub(crate) batches: Option<PgPool>,
    /// Whether reads can run as `countersign_reader` under row-level security.
    pub(crate) reader_role: bool,
}

fn now_micros() -> i64 {
    crate::micros(chrono::Utc::now())
}

impl ProjectionStore {
    /// Opens the projection tables of the ledger's store (which must be migrated) on a pool of
    /// their own, for a command that needs no other tables beside the ledger. A process that also
    /// seals shares one pool: [`ProjectionStore::with_pool`].
    pub async fn open(config: &StoreConfig) -> anyhow::Result<Self> {
        let pool = config
            .any_pool(Self::connections(config))
            .await
            .context("opening the projection store")?;
        Self::with_pool(pool).await
    }

    /// The connections the projection runners and readers want of a pool: a pool shared with
    /// other stores adds these to theirs.
    pub fn connections(config: &StoreConfig) -> u32 {
        if config.is_postgres() { 16 } else { 4 }
    }

    /// The projection tables reached through `pool` (from [`StoreConfig::any_pool`], on a
    /// migrated store), which other stores of the process may share.
    pub async fn with_pool(pool: AnyPool) -> anyhow::Result<Self> {
        let postgres = countersign_ledger::is_postgres_pool(&pool);
        let reader_role = postgres
            && sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = 'countersign_reader'")
                .fetch_optional(&pool)
                .await?
                .is_some();
        let batches = if postgres {
            let options: PgConnectOptions = pool
                .connect_options()
                .database_url
                .as_str()
                .parse()
                .context("the projection store's PostgreSQL URL")?;
            Some(
                PgPoolOptions::new()
                    // A live runner and a rebuild per projection.
                    .max_connections(4)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .idle_timeout(std::time::Duration::from_secs(60))
                    .test_before_acquire(false)
                    .after_release(|connection, _| {
                        use sqlx::Connection as _;
                        Box::pin(async move { Ok(!connection.is_in_transaction()) })
                    })
                    .connect_lazy_with(options),
            )
        } else {
            None
        };
        Ok(Self {
            pool,
            postgres,
            reader_role,
            batches,
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// A transaction that will write. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads, then writes after another connection
    /// committed, fails at once with `database is locked` instead of waiting its turn.
    pub(crate) async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.postgres {
            self.pool.begin().await
        } else {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        }
    }

    /// The transaction a runner applies one batch and moves its checkpoint in.
    pub(crate) async fn batch_transaction(&self) -> Result<BatchTransaction, sqlx::Error> {
        Ok(match &self.batches {
            Some(pool) => BatchTransaction::Postgres(pool.begin().await?),
            None => BatchTransaction::Portable(self.write_transaction().await?),
        })
    }

    /// Every generation of a projection, oldest first.
    pub async fn generations(&self, projection: Projection) -> anyhow::Result<Vec<Generation>> {
        let rows = sqlx::query(
            "SELECT generation, version, state, checkpoint_txid, checkpoint_position, events, updated_at
               FROM projections WHERE name = $1 ORDER BY generation",
        )
        .bind(projection.name())
        .fetch_all(&self.pool)
        .await
        .context("reading the projection registry")?;
        rows.iter()
            .map(|row| {
                Ok(Generation {
                    projection,
                    generation: row.try_get(0)?,
                    version: row.try_get(1)?,
                    state: GenerationState::parse(&row.try_get::<String, _>(2)?),
                    checkpoint: LogCursor {
                        txid: row.try_get(3)?,
                        position: row.try_get(4)?,
                    },
                    events: row.try_get(5)?,
                    updated_at: row.try_get(6)?,
                })
            })
            .collect()
    }

    pub async fn generation(
        &self,
        projection: Projection,
        generation: i64,
    ) -> anyhow::Result<Option<Generation>> {
        Ok(self
            .generations(projection)
            .await?
            .into_iter()
            .find(|candidate| candidate.generation == generation))
    }

    /// The generation serving reads.
    pub async fn live(&self, projection: Projection) -> anyhow::Result<Option<Generation>> {
        Ok(self
            .generations(projection)
            .await?
            .into_iter()
            .find(|generation| generation.state == GenerationState::Live))
    }

    /// Creates the next generation's tables and registers it, in one transaction.
    pub async fn create_generation(
        &self,
        projection: Projection,
        state: GenerationState,
    ) -> anyhow::Result<Generation> {
        let mut tx = self.write_transaction().await?;
        let next: i64 =
            sqlx::query("SELECT COALESCE(MAX(generation), 0) + 1 FROM projections WHERE name = $1")
                .bind(projection.name())
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        let now = now_micros();
        sqlx::query(
            "INSERT INTO projections (name, generation, version, state, checkpoint_txid, checkpoint_position,
                                      events, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 0, 0, 0, $5, $6)",
        )
        .bind(projection.name())
        .bind(next)
        .bind(projection.version())
        .bind(state.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("registering a generation (another instance may have created it)")?;
        let mut compress = false;
        if self.postgres {
            // The state and audit texts are TOASTed; lz4 compresses them several times faster
            // than the default pglz (which dominated the server's time in rebuilds).
            let lz4: bool = sqlx::query(
                "SELECT count(*) > 0 FROM pg_settings
                  WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)",
            )
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            compress = lz4;
        }
        let mut statements = projection.ddl(next);
        if state != GenerationState::Building {
            // A generation built from the start gets its indexes once it has caught up.
            statements.extend(projection.indexes(next));
        }
        for statement in statements {
            tx.execute(statement.as_str())
                .await
                .with_context(|| format!("creating {projection} generation {next}"))?;
        }
        if compress {
            for (table, column) in projection.large_texts(next) {
                tx.execute(
                    format!("ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")
                        .as_str(),
                )
                .await
                .with_context(|| format!("compressing {table}.{column}"))?;
            }
        }
        if self.postgres {
            for table in projection.tables(next) {
                for statement in row_level_security(&table, self.reader_role) {
                    tx.execute(statement.as_str())
                        .await
                        .with_context(|| format!("securing {table}"))?;
                }
            }
        }
        tx.commit().await?;
        tracing::info!(
            projection = projection.name(),
            generation = next,
            version = projection.version(),
            state = state.as_str(),
            "projection generation created"
        );
        Ok(Generation {
            projection,
            generation: next,
            version: projection.version(),
            state,
            checkpoint: LogCursor::START,
            events: 0,
            updated_at: now,
        })
    }

    /// Adds to an older generation's tables the nullable columns the code reads and writes
    /// since that generation's version (rows written before stay `NULL` there: the readers
    /// take a missing value as "not recorded"). The supervisor calls it before an older live
    /// generation serves beside the one that replaces it.
    pub async fn add_missing_columns(&self, generation: &Generation) -> anyhow::Result<()> {
        let projection = generation.projection;
        for (since, stem, column, kind) in projection.added_columns() {
            if *since <= generation.version {
                continue;
            }
            let table = format!("p_{stem}_g{}", generation.generation);
            let add = if self.postgres {
                format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            } else {
                // SQLite has no `ADD COLUMN IF NOT EXISTS`; two instances starting together are
                // serialized by its write lock, and the second sees the column here.
                let present: i64 =
                    sqlx::query("SELECT count(*) FROM pragma_table_info($1) WHERE name = $2")
                        .bind(&table)
                        .bind(*column)
                        .fetch_one(&self.pool)
                        .await
                        .with_context(|| format!("reading the columns of {table}"))?
                        .try_get(0)?;
                if present > 0 {
                    continue;
                }
                format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")
            };
            sqlx::query(&add)
                .execute(&self.pool)
                .await
                .with_context(|| format!("adding {table}.{column}"))?;
            tracing::info!(
                projection = projection.name(),
                generation = generation.generation,
                version = generation.version,
                table,
                column,
                "older generation: column added so it keeps serving while its successor builds"
            );
        }
        Ok(())
    }

    /// Creates the secondary indexes a generation's tables lack (a building generation is
    /// written without them; [`rebuild`](crate::rebuild) adds them once it has caught up, and
    /// [`Self::promote`] makes sure of them). Idempotent.
    pub async fn create_indexes(
        &self,
        projection: Projection,
        generation: i64,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        for statement in projection.indexes(generation) {
            sqlx::query(&statement)
                .execute(&self.pool)
                .await
                .with_context(|| format!("indexing {projection} generation {generation}"))?;
        }
        tracing::info!(
            projection = projection.name(),
            generation,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projection generation indexed"
        );
        Ok(())
    }

    /// Gathers the planner's statistics on a generation's tables: a freshly built generation has
    /// none until autovacuum comes by, and the inbox plans badly without them.
    pub async fn analyze(&self, projection: Projection, generation: i64) -> anyhow::Result<()> {
        for table in projection.tables(generation) {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(&self.pool)
                .await
                .with_context(|| format!("analyzing {table}"))?;
        }
        Ok(())
    }

    /// Makes `generation` the one that serves reads and retires the previous one, atomically.
    pub async fn promote(&self, projection: Projection, generation: i64) -> anyhow::Result<()> {
        self.create_indexes(projection, generation).await?;
        let mut tx = self.write_transaction().await?;
        let now = now_micros();
        sqlx::query("UPDATE projections SET state = 'retired', updated_at = $1 WHERE name = $2 AND state = 'live' AND generation <> $3")
            .bind(now)
            .bind(projection.name())
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        let promoted = sqlx::query("UPDATE projections SET state = 'live', updated_at = $1 WHERE name = $2 AND generation = $3 AND state <> 'retired'")
            .bind(now)
            .bind(projection.name())
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        if promoted.rows_affected() != 1 {
            bail!(
                "{projection} generation {generation} cannot be promoted: it is retired or unknown"
            );
        }
        tx.commit().await?;
        tracing::info!(
            projection = projection.name(),
            generation,
            "projection generation live"
        );
        Ok(())
    }

    /// Drops the tables of retired generations; returns how many generations were dropped.
    pub async fn drop_retired(&self, projection: Projection) -> anyhow::Result<usize> {
        let retired: Vec<i64> = self
            .generations(projection)
            .await?
            .into_iter()
            .filter(|generation| generation.state == GenerationState::Retired)
            .map(|generation| generation.generation)
            .collect();
        for generation in &retired {
            let mut tx = self.write_transaction().await?;
            for table in projection.tables(*generation) {
                tx.execute(format!("DROP TABLE IF EXISTS {table}").as_str())
                    .await?;
            }
            sqlx::query("DELETE FROM projections WHERE name = $1 AND generation = $2")
                .bind(projection.name())
                .bind(*generation)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(
                projection = projection.name(),
                generation,
                "retired projection generation dropped"
            );
        }
        Ok(retired.len())
    }

    /// Deletes the registry row and tables of a generation that never went live (a failed build).
    pub async fn discard(&self, projection: Projection, generation: i64) -> anyhow::Result<()> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("UPDATE projections SET state = 'retired' WHERE name = $1 AND generation = $2 AND state = 'building'")
            .bind(projection.name())
            .bind(generation)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.drop_retired(projection).await.map(drop)
    }

    /// Every row of a generation's tables, as text, in primary-key order: for comparing a
    /// rebuild with the incrementally maintained tables.
    pub async fn dump(
        &self,
        projection: Projection,
        generation: i64,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let mut dump = Vec::new();
        for table in projection.tables(generation) {
            let order = if table.starts_with("p_stats") {
                "tenant, metric, key"
            } else if table.starts_with("p_eligibility") {
                "action_id, kind, principal"
            } else if table.starts_with("p_actions") {
                "action_id"
            } else {
                "action_id, sequence"
            };
            for row in sqlx::query(&format!("SELECT * FROM {table} ORDER BY {order}"))
                .fetch_all(&self.pool)
                .await?
            {
                let mut values = vec![table.split("_g").next().unwrap_or_default().to_owned()];
                for index in 0..row.len() {
                    let value = match row.try_get::<Option<i64>, _>(index) {
                        Ok(number) => number.map(|n| n.to_string()),
                        Err(_) => row.try_get::<Option<String>, _>(index)?,
                    };
                    values.push(value.unwrap_or_else(|| "NULL".to_owned()));
                }
                dump.push(values);
            }
        }
        Ok(dump)
    }

    /// Closes the pool (shared with the other stores given it, if any).
    pub async fn close(&self) {
        if let Some(batches) = &self.batches {
            batches.close().await;
        }
        self.pool.close().await;
    }
}

/// One runner batch's transaction: native on PostgreSQL (arrays), portable on SQLite.
#[derive(Debug)]
pub(crate) enum BatchTransaction {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Portable(sqlx::Transaction<'static, sqlx::Any>),
}

impl BatchTransaction {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Portable(tx) => tx.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Portable(tx) => tx.rollback().await,
        }
    }
}

/// Row-level security for one projection table: `countersign_reader` sees only the rows of the
/// tenant named by the `countersign.tenant` setting.
fn row_level_security(table: &str, reader_role: bool) -> Vec<String> {
    let mut statements = vec![format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")];
    if reader_role {
        statements.push(format!(
            "CREATE POLICY {table}_tenant ON {table} FOR SELECT TO countersign_reader
                 USING (tenant = current_setting('countersign.tenant', true))"
        ));
        statements.push(format!("GRANT SELECT ON {table} TO countersign_reader"));
    }
    statements
}
