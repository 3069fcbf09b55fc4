//! A catalog view that lets a commit land only on the table state its caller checked.
//!
//! iceberg-rust's `Transaction::commit` reloads the table and re-applies its actions on whatever
//! it finds, and retries a conflicting commit the same way: blindly. An appender that checked the
//! Kafka offsets in snapshot S must not commit on top of a snapshot S' that another writer added
//! meanwhile (a zombie after a rebalance, say), because S' may hold the very rows it is about to
//! add. [`PinnedCatalog`] wraps the real catalog for one commit attempt: every `load_table` of the
//! pinned table fails with a non-retryable [`ErrorKind::CatalogCommitConflicts`] unless the
//! table's current snapshot is still the pinned one. The transaction then writes its
//! `AssertRefSnapshotId` requirement against exactly that snapshot, so the catalog refuses the
//! commit if the table moves between that load and the update. The caller reloads the table,
//! checks what the newer snapshots hold, and pins again (see `Lake::append`).
//!
//! Everything else is passed through unchanged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent,
};

/// What a wrapping catalog changes; everything not overridden goes to the wrapped catalog.
#[async_trait]
pub trait Intercept: fmt::Debug + Send + Sync {
    async fn load_table(&self, inner: &dyn Catalog, table: &TableIdent) -> Result<Table> {
        inner.load_table(table).await
    }

    async fn update_table(&self, inner: &dyn Catalog, commit: TableCommit) -> Result<Table> {
        inner.update_table(commit).await
    }
}

/// `inner` with `intercept`'s changes.
#[derive(Debug)]
pub struct Intercepted<I> {
    inner: Arc<dyn Catalog>,
    intercept: I,
}

impl<I> Intercepted<I> {
    pub fn new(inner: Arc<dyn Catalog>, intercept: I) -> Self {
        Self { inner, intercept }
    }
}

/// Loads of `table` fail unless its current snapshot is `base` (`None`: it has none yet).
#[derive(Debug)]
pub struct Pin {
    pub table: TableIdent,
    pub base: Option<i64>,
}

/// The catalog one commit attempt goes through (see the module docs).
pub type PinnedCatalog = Intercepted<Pin>;

impl PinnedCatalog {
    pub fn pinned(inner: Arc<dyn Catalog>, table: TableIdent, base: Option<i64>) -> Self {
        Intercepted::new(inner, Pin { table, base })
    }
}

const MOVED: &str = "table moved past the snapshot the commit was checked against";

#[async_trait]
impl Intercept for Pin {
    async fn load_table(&self, inner: &dyn Catalog, table: &TableIdent) -> Result<Table> {
        let loaded = inner.load_table(table).await?;
        if *table != self.table {
            return Ok(loaded);
        }
        let current = loaded.metadata().current_snapshot_id();
        if current != self.base {
            let describe = |id: Option<i64>| id.map_or_else(|| "none".to_string(), |id| id.to_string());
            return Err(Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!("{MOVED} (checked: {}, now: {})", describe(self.base), describe(current)),
            )
            .with_retryable(false));
        }
        Ok(loaded)
    }
}

#[async_trait]
impl<I: Intercept> Catalog for Intercepted<I> {
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        self.intercept.load_table(self.inner.as_ref(), table).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.intercept.update_table(self.inner.as_ref(), commit).await
    }

    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
}
