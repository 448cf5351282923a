//! The Milvus store: collections in a Milvus cluster that every `aside` replica
//! shares. Built on the `milvus-sdk-rust` crate (its v2 client), Milvus's own Rust
//! SDK: it covers everything used here (JSON fields, upsert, consistency levels,
//! aliases, collection properties, the query iterator).
//!
//! ```text
//! collection `name`  ── alias      a_{hex(name)}            (what every replica opens)
//!                    └─ physical   a_{hex(name)}_{gen}       (one per embedding space)
//!     fields:     id VARCHAR(512) primary key, text VARCHAR(65535), meta JSON,
//!                 vector FLOAT_VECTOR(dim), HNSW (M, efConstruction) with the metric
//!     properties: aside.config  the collection's settings and embedding space (JSON)
//!                 aside.job     a re-embedding's progress (JSON), set by its holder
//! ```
//! A re-embedding writes a new physical collection (`gen + 1`) and moves the alias
//! to it in one step, then drops the old one. Names are hex-encoded because Milvus
//! names allow only letters, digits and `_`. Every read and search asks for Strong
//! consistency, so a write acknowledged through one replica is seen through all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use milvus::v2::prelude as mv;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::error::{IndexError, Result};
use crate::store::{JobState, LexicalQuery, Query, Store, StoreKind, StoredCollection};
use crate::{CollectionConfig, Doc, Filter, Hit, Metric, Stats};

/// Milvus's VARCHAR limit: the longest document text, in bytes.
pub const MAX_TEXT_BYTES: usize = 65_535;
/// The longest metadata object, serialised, in bytes (Milvus's JSON field limit).
pub const MAX_METADATA_BYTES: usize = 65_536;
/// Rows per insert request (Milvus refuses messages over 64 MiB).
const WRITE_CHUNK: usize = 1000;
const CONFIG_KEY: &str = "aside.config";
const JOB_KEY: &str = "aside.job";

/// Where the cluster is.
#[derive(Debug, Clone)]
pub struct MilvusOptions {
    /// `http://host:19530` (or `https://`).
    pub url: String,
    /// `user:password` or an API key.
    pub token: Option<String>,
    /// Database; Milvus's `default` when unset.
    pub database: Option<String>,
}

/// Collections in one Milvus database.
pub struct MilvusStore {
    opts: MilvusOptions,
    client: OnceCell<mv::ClientV2>,
}

impl std::fmt::Debug for MilvusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusStore")
            .field("url", &self.opts.url)
            .finish_non_exhaustive()
    }
}

fn alias_of(name: &str) -> String {
    format!("a_{}", hex::encode(name.as_bytes()))
}

fn physical(name: &str, gen: u64) -> String {
    format!("{}_{gen}", alias_of(name))
}

fn name_of_alias(alias: &str) -> Option<String> {
    let h = alias.strip_prefix("a_")?;
    String::from_utf8(hex::decode(h).ok()?).ok()
}

/// A Milvus string literal: the value can only ever be a string, whatever it holds.
pub fn quote(s: &str) -> Result<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                return Err(IndexError::BadFilter(format!(
                "control character U+{:04X} in a filter string; the Milvus store cannot compare it",
                c as u32
            )))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn literal(field: &str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => quote(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(i.to_string()),
            (None, Some(f)) if f.is_finite() => Ok(format!("{f:?}")),
            _ => Err(IndexError::BadFilter(format!(
                "`{field}`: the number {n} is out of the Milvus store's range"
            ))),
        },
        other => Err(IndexError::BadFilter(format!(
            "`{field}`: the Milvus store compares strings, numbers and booleans, not {other}"
        ))),
    }
}

/// Translates a filter to a Milvus boolean expression over the `meta` JSON field.
/// Every field name and string is quoted by [`quote`]; `in` is expanded to `or`
/// (Milvus refuses `in` on a JSON path).
pub fn expression(f: &Filter) -> Result<String> {
    Ok(match f {
        Filter::Eq(field, v) => format!("meta[{}] == {}", quote(field)?, literal(field, v)?),
        Filter::In(field, vs) => {
            if vs.is_empty() {
                // Matches nothing, as with the embedded engine: no id is empty.
                return Ok("id == \"\"".into());
            }
            let parts = vs
                .iter()
                .map(|v| Ok(format!("meta[{}] == {}", quote(field)?, literal(field, v)?)))
                .collect::<Result<Vec<_>>>()?;
            format!("({})", parts.join(" or "))
        }
        Filter::And(fs) | Filter::Or(fs) => {
            let op = if matches!(f, Filter::And(_)) {
                " and "
            } else {
                " or "
            };
            let parts = fs.iter().map(expression).collect::<Result<Vec<_>>>()?;
            format!("({})", parts.join(op))
        }
    })
}

fn ids_expr(ids: &[String]) -> Result<String> {
    let q = ids.iter().map(|i| quote(i)).collect::<Result<Vec<_>>>()?;
    Ok(format!("id in [{}]", q.join(", ")))
}

fn metric_type(m: Metric) -> mv::MetricType {
    match m {
        Metric::Cosine => mv::MetricType::Cosine,
        Metric::Dot => mv::MetricType::Ip,
        Metric::L2 => mv::MetricType::L2,
    }
}

/// Milvus's score as ours: COSINE and IP as they are; L2 is the squared distance,
/// ours is minus the distance.
fn score(m: Metric, s: f32) -> f32 {
    match m {
        Metric::L2 => -s.max(0.0).sqrt(),
        _ => s,
    }
}

impl MilvusStore {
    /// Connects on first use, so a server starts while Milvus is still coming up.
    pub fn new(opts: MilvusOptions) -> Self {
        MilvusStore {
            opts,
            client: OnceCell::new(),
        }
    }

    pub fn url(&self) -> &str {
        &self.opts.url
    }

    async fn client(&self) -> Result<&mv::ClientV2> {
        self.client
            .get_or_try_init(|| async {
                // A cluster that is down answers 503 within seconds (the SDK's
                // default retries an RPC 75 times).
                let mut cfg = mv::ConnectConfig::new()
                    .uri(self.opts.url.clone())
                    .connect_timeout(Duration::from_secs(5))
                    .rpc_timeout(Duration::from_secs(60))
                    .retry(
                        mv::RetryConfig::new()
                            .max_attempts(3)
                            .max_retry_timeout(Duration::from_secs(5))
                            .initial_backoff(Duration::from_millis(100)),
                    );
                if let Some(t) = &self.opts.token {
                    cfg = cfg.token(t.clone());
                }
                if let Some(d) = &self.opts.database {
                    cfg = cfg.database(d.clone());
                }
                mv::ClientV2::new(&cfg).await.map_err(|e| {
                    IndexError::Unavailable(format!("Milvus at {}: {e}", self.opts.url))
                })
            })
            .await
    }

    fn err(&self, what: &str) -> impl Fn(mv::Error) -> IndexError + '_ {
        let what = what.to_owned();
        move |e| classify(&self.opts.url, &what, e)
    }

    /// The physical collection behind `name` and its properties.
    async fn describe(&self, name: &str) -> Result<(String, HashMap<String, String>)> {
        let c = self.client().await?;
        let r = c
            .describe_collection(
                mv::DescribeCollectionRequest::builder()
                    .collection_name(alias_of(name))
                    .build()
                    .map_err(self.err("describe"))?,
            )
            .await
            .map_err(|e| match classify(&self.opts.url, "describe", e) {
                IndexError::Backend(m) if is_not_found(&m) => {
                    IndexError::UnknownCollection(name.to_owned())
                }
                other => other,
            })?;
        let d = r.description();
        Ok((
            d.get_collection_name().to_owned(),
            d.get_properties().clone(),
        ))
    }

    fn handle(
        self: &Arc<Self>,
        physical: String,
        props: &HashMap<String, String>,
    ) -> Result<Arc<dyn StoredCollection>> {
        let raw = props.get(CONFIG_KEY).ok_or_else(|| {
            IndexError::Corrupt(format!(
                "Milvus collection `{physical}` has no `{CONFIG_KEY}` property"
            ))
        })?;
        let config: CollectionConfig = serde_json::from_str(raw)
            .map_err(|e| IndexError::Corrupt(format!("`{CONFIG_KEY}` of `{physical}`: {e}")))?;
        let job = props
            .get(JOB_KEY)
            .filter(|s| !s.is_empty())
            .and_then(|s| serde_json::from_str(s).ok());
        Ok(Arc::new(MilvusCollection {
            store: self.clone(),
            physical,
            config,
            job,
        }))
    }

    /// Creates, indexes and loads one physical collection.
    async fn create_physical(&self, physical: &str, config: &CollectionConfig) -> Result<()> {
        let c = self.client().await?;
        let mut text = mv::FieldSchema::new()
            .name("text")
            .data_type(mv::DataType::VarChar)
            .max_length(MAX_TEXT_BYTES as u32);
        if let Some(l) = &config.lexical {
            text = text
                .enable_analyzer(true)
                .analyzer_params(l.milvus_analyzer()?);
        }
        let mut schema = mv::CollectionSchema::new()
            .add_field(
                mv::FieldSchema::new()
                    .name("id")
                    .data_type(mv::DataType::VarChar)
                    .max_length(512)
                    .primary_key(true),
            )
            .add_field(text)
            .add_field(
                mv::FieldSchema::new()
                    .name("meta")
                    .data_type(mv::DataType::Json),
            )
            .add_field(
                mv::FieldSchema::new()
                    .name("vector")
                    .data_type(mv::DataType::FloatVector)
                    .dimension(config.dim as u32),
            );
        // Lexical search: Milvus's BM25 function turns the text into a sparse vector.
        let mut indexes = vec![mv::IndexParam::new()
            .field_name("vector")
            .index_type(mv::IndexType::Hnsw)
            .metric_type(metric_type(config.metric))
            .extra_params(HashMap::from([
                ("M".to_owned(), config.hnsw.m.to_string()),
                (
                    "efConstruction".to_owned(),
                    config.hnsw.ef_construction.to_string(),
                ),
            ]))];
        if config.lexical.is_some() {
            schema = schema
                .add_field(
                    mv::FieldSchema::new()
                        .name("sparse")
                        .data_type(mv::DataType::SparseFloatVector),
                )
                .add_function(
                    mv::Function::new()
                        .name("text_bm25")
                        .function_type(mv::FunctionType::Bm25)
                        .input_fields(["text"])
                        .output_fields(["sparse"]),
                );
            indexes.push(
                mv::IndexParam::new()
                    .field_name("sparse")
                    .index_type(mv::IndexType::SparseInvertedIndex)
                    .metric_type(mv::MetricType::Bm25),
            );
        }
        let cfg_json = serde_json::to_string(config)
            .map_err(|e| IndexError::Backend(format!("encoding the collection settings: {e}")))?;
        c.create_collection(
            mv::CreateCollectionRequest::builder()
                .collection_name(physical)
                .schema(schema)
                .consistency_level(mv::ConsistencyLevel::Strong)
                .properties(HashMap::from([(CONFIG_KEY.to_owned(), cfg_json)]))
                .build()
                .map_err(self.err("create"))?,
        )
        .await
        .map_err(self.err("create"))?;
        c.create_index(
            mv::CreateIndexRequest::builder()
                .collection_name(physical)
                .index_params(indexes)
                .sync(false)
                .build()
                .map_err(self.err("create index"))?,
        )
        .await
        .map_err(self.err("create index"))?;
        c.load_collection(
            mv::LoadCollectionRequest::builder()
                .collection_name(physical)
                .sync(false)
                .build()
                .map_err(self.err("load"))?,
        )
        .await
        .map_err(self.err("load"))?;
        self.wait_loaded(physical).await
    }

    /// Waits until Milvus serves the collection (a cluster loads it in the background).
    /// The names of its collections (one call: the aliases), sorted.
    pub async fn names(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let r = c
            .list_aliases(
                mv::ListAliasesRequest::builder()
                    .build()
                    .map_err(self.err("list aliases"))?,
            )
            .await
            .map_err(self.err("list aliases"))?;
        let mut names: Vec<String> = r
            .aliases()
            .iter()
            .filter_map(|a| name_of_alias(a))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn wait_loaded(&self, physical: &str) -> Result<()> {
        let c = self.client().await?;
        for _ in 0..600 {
            let r = c
                .get_load_state(
                    mv::GetLoadStateRequest::builder()
                        .collection_name(physical)
                        .build()
                        .map_err(self.err("load state"))?,
                )
                .await;
            match r {
                Ok(s) if s.state() == mv::LoadState::Loaded => return Ok(()),
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                // A server without the call (milvus-lite) serves what it loaded.
                Err(_) => return Ok(()),
            }
        }
        Err(IndexError::Unavailable(format!(
            "Milvus did not load `{physical}` within 60 s"
        )))
    }

    /// Seals what `name` holds so Milvus indexes it (a cluster also does this by
    /// itself as segments fill; milvus-lite searches unsealed data by brute force).
    pub async fn flush(&self, name: &str) -> Result<()> {
        let (p, _) = self.describe(name).await?;
        self.flush_physical(&p).await
    }

    async fn flush_physical(&self, physical: &str) -> Result<()> {
        let c = self.client().await?;
        c.flush(
            mv::FlushRequest::builder()
                .collection_names([physical])
                .build()
                .map_err(self.err("flush"))?,
        )
        .await
        .map_err(self.err("flush"))?;
        Ok(())
    }

    async fn drop_physical(&self, physical: &str) -> Result<()> {
        let c = self.client().await?;
        c.drop_collection(
            mv::DropCollectionRequest::builder()
                .collection_name(physical)
                .build()
                .map_err(self.err("drop"))?,
        )
        .await
        .map_err(self.err("drop"))
    }

    async fn exists(&self, physical: &str) -> Result<bool> {
        let c = self.client().await?;
        let r = c
            .has_collection(
                mv::HasCollectionRequest::builder()
                    .collection_name(physical)
                    .build()
                    .map_err(self.err("has collection"))?,
            )
            .await
            .map_err(self.err("has collection"))?;
        Ok(r.exists())
    }
}

fn is_not_found(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("not found") || m.contains("not exist") || m.contains("can't find")
}

fn classify(url: &str, what: &str, e: mv::Error) -> IndexError {
    if let mv::Error::RetryExhausted { source, .. } = e {
        return classify(url, what, *source);
    }
    match &e {
        mv::Error::Grpc(s)
            // UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED: the cluster is not reachable.
            if matches!(i32::from(s.code()), 14 | 4 | 1) =>
        {
            IndexError::Unavailable(format!("Milvus at {url} ({what}): {}", s.message()))
        }
        mv::Error::Timeout(m) => IndexError::Unavailable(format!("Milvus at {url} ({what}): {m}")),
        _ => IndexError::Backend(format!("Milvus {what}: {e}")),
    }
}

fn gen_of(physical: &str) -> u64 {
    physical
        .rsplit('_')
        .next()
        .and_then(|g| g.parse().ok())
        .unwrap_or(1)
}

#[async_trait]
impl Store for Arc<MilvusStore> {
    fn kind(&self) -> StoreKind {
        StoreKind::Milvus
    }

    async fn create(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>> {
        config.validate()?;
        let name = config.name.clone();
        match self.describe(&name).await {
            Ok(_) => return Err(IndexError::CollectionExists(name)),
            Err(IndexError::UnknownCollection(_)) => {}
            Err(e) => return Err(e),
        }
        let p = physical(&name, 1);
        // A leftover of a create cut short (no alias points to it) is replaced.
        if self.exists(&p).await? {
            self.drop_physical(&p).await?;
        }
        self.create_physical(&p, &config).await?;
        let c = self.client().await?;
        let aliased = c
            .create_alias(
                mv::CreateAliasRequest::builder()
                    .collection_name(p.clone())
                    .alias(alias_of(&name))
                    .build()
                    .map_err(self.err("create alias"))?,
            )
            .await;
        if let Err(e) = aliased {
            // Another replica created the same name first.
            let _ = self.drop_physical(&p).await;
            return match self.describe(&name).await {
                Ok(_) => Err(IndexError::CollectionExists(name)),
                Err(_) => Err(classify(&self.opts.url, "create alias", e)),
            };
        }
        self.open(&name).await
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn StoredCollection>> {
        let (p, props) = self.describe(name).await?;
        self.handle(p, &props)
    }

    async fn list(&self) -> Result<Vec<Arc<dyn StoredCollection>>> {
        let mut out = Vec::new();
        for n in self.names().await? {
            match self.open(&n).await {
                Ok(h) => out.push(h),
                // Dropped between the listing and now.
                Err(IndexError::UnknownCollection(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let (p, _) = self.describe(name).await?;
        let c = self.client().await?;
        c.drop_alias(
            mv::DropAliasRequest::builder()
                .alias(alias_of(name))
                .build()
                .map_err(self.err("drop alias"))?,
        )
        .await
        .map_err(self.err("drop alias"))?;
        self.drop_physical(&p).await
    }

    async fn create_staging(&self, config: CollectionConfig) -> Result<Arc<dyn StoredCollection>> {
        let (live, _) = self.describe(&config.name).await?;
        let p = physical(&config.name, gen_of(&live) + 1);
        if self.exists(&p).await? {
            self.drop_physical(&p).await?;
        }
        self.create_physical(&p, &config).await?;
        let cfg_json = serde_json::to_string(&config).unwrap_or_default();
        self.handle(p, &HashMap::from([(CONFIG_KEY.to_owned(), cfg_json)]))
    }

    async fn promote(&self, name: &str, staging: Arc<dyn StoredCollection>) -> Result<()> {
        let (old, _) = self.describe(name).await?;
        let new = physical(name, gen_of(&old) + 1);
        if staging.config().name != name {
            return Err(IndexError::Backend(format!(
                "staging copy of `{}` promoted as `{name}`",
                staging.config().name
            )));
        }
        // A bulk load: sealed, so Milvus indexes it before it serves searches.
        self.flush_physical(&new).await?;
        let c = self.client().await?;
        c.alter_alias(
            mv::AlterAliasRequest::builder()
                .collection_name(new)
                .alias(alias_of(name))
                .build()
                .map_err(self.err("alter alias"))?,
        )
        .await
        .map_err(self.err("alter alias"))?;
        // Searches that opened the old version before the switch may still be
        // running on it: it goes after a grace period.
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Err(e) = store.drop_physical(&old).await {
                tracing::warn!(collection = %old, error = %e, "dropping a replaced Milvus collection");
            }
        });
        Ok(())
    }

    async fn set_job(&self, name: &str, job: Option<JobState>) -> Result<()> {
        let (p, _) = self.describe(name).await?;
        let value = match job {
            Some(j) => serde_json::to_string(&j).unwrap_or_default(),
            None => String::new(),
        };
        let c = self.client().await?;
        c.alter_collection_properties(
            mv::AlterCollectionPropertiesRequest::builder()
                .collection_name(p)
                .properties(HashMap::from([(JOB_KEY.to_owned(), value)]))
                .build()
                .map_err(self.err("alter properties"))?,
        )
        .await
        .map_err(self.err("alter properties"))
    }
}

/// One Milvus collection as opened: a physical collection, so one embedding space.
struct MilvusCollection {
    store: Arc<MilvusStore>,
    physical: String,
    config: CollectionConfig,
    job: Option<JobState>,
}

impl MilvusCollection {
    fn gone(&self, e: IndexError) -> IndexError {
        match e {
            IndexError::Backend(m) if is_not_found(&m) => {
                IndexError::UnknownCollection(self.config.name.clone())
            }
            e => e,
        }
    }

    /// Documents Milvus can hold, checked before anything is sent.
    fn check(&self, docs: &mut [Doc]) -> Result<()> {
        crate::collection::check_docs(docs, self.config.dim, self.config.metric)?;
        for d in docs.iter() {
            if d.text.len() > MAX_TEXT_BYTES {
                return Err(IndexError::TooLarge(format!(
                    "document `{}`: text of {} bytes; the Milvus store holds at most {MAX_TEXT_BYTES} bytes of text (Milvus's VARCHAR limit)",
                    d.id,
                    d.text.len()
                )));
            }
            let meta = d.metadata.to_string().len();
            if meta > MAX_METADATA_BYTES {
                return Err(IndexError::TooLarge(format!(
                    "document `{}`: metadata of {meta} bytes; the Milvus store holds at most {MAX_METADATA_BYTES} (Milvus's JSON field limit)",
                    d.id
                )));
            }
        }
        Ok(())
    }

    async fn stats_once(&self) -> Result<Stats> {
        let c = self.store.client().await?;
        let r = c
            .query(
                mv::QueryRequest::builder()
                    .collection_name(self.physical.clone())
                    .output_fields(["count(*)"])
                    .consistency_level(mv::ConsistencyLevel::Strong)
                    .build()
                    .map_err(self.store.err("count"))?,
            )
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "count", e)))?;
        let mut count = 0;
        for row in r.results().rows().map_err(self.store.err("count"))? {
            count = row.get_i64("count(*)").map_err(self.store.err("count"))? as usize;
        }
        Ok(Stats {
            count,
            tombstones: 0,
            unindexed: 0,
            wal_bytes: 0,
        })
    }

    /// Loads the collection again when Milvus says it is released (a restarted
    /// Milvus serves only what is loaded); true when the caller should retry.
    async fn reloaded(&self, e: &IndexError) -> bool {
        let IndexError::Backend(m) = e else {
            return false;
        };
        if !(m.contains("released") || m.contains("not loaded") || m.contains("call load()")) {
            return false;
        }
        let Ok(c) = self.store.client().await else {
            return false;
        };
        let Ok(req) = mv::LoadCollectionRequest::builder()
            .collection_name(self.physical.clone())
            .sync(false)
            .build()
        else {
            return false;
        };
        tracing::info!(collection = %self.config.name, "loading the Milvus collection again");
        c.load_collection(req).await.is_ok() && self.store.wait_loaded(&self.physical).await.is_ok()
    }

    async fn query(&self, filter: String, limit: Option<i64>, vectors: bool) -> Result<Vec<Doc>> {
        match self.query_once(filter.clone(), limit, vectors).await {
            Err(e) if self.reloaded(&e).await => self.query_once(filter, limit, vectors).await,
            r => r,
        }
    }

    async fn query_once(
        &self,
        filter: String,
        limit: Option<i64>,
        vectors: bool,
    ) -> Result<Vec<Doc>> {
        let c = self.store.client().await?;
        let mut fields = vec!["id", "text", "meta"];
        if vectors {
            fields.push("vector");
        }
        let mut b = mv::QueryRequest::builder()
            .collection_name(self.physical.clone())
            .filter(filter)
            .output_fields(fields)
            .consistency_level(mv::ConsistencyLevel::Strong);
        if let Some(l) = limit {
            b = b.limit(l);
        }
        let r = c
            .query(b.build().map_err(self.store.err("query"))?)
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "query", e)))?;
        rows_to_docs(
            r.results().rows().map_err(self.store.err("query"))?,
            vectors,
        )
    }
}

fn rows_to_docs<'a>(
    rows: impl Iterator<Item = mv::ResultRow<'a>>,
    vectors: bool,
) -> Result<Vec<Doc>> {
    let bad = |e: mv::Error| IndexError::Backend(format!("Milvus answered an unexpected row: {e}"));
    rows.map(|row| {
        Ok(Doc {
            id: row.get_str("id").map_err(bad)?.to_owned(),
            text: row.get_str("text").map_err(bad)?.to_owned(),
            metadata: row.get_json("meta").map_err(bad)?.clone(),
            vector: if vectors {
                row.get_float_vector("vector").map_err(bad)?.to_vec()
            } else {
                Vec::new()
            },
        })
    })
    .collect()
}

#[async_trait]
impl StoredCollection for MilvusCollection {
    fn kind(&self) -> StoreKind {
        StoreKind::Milvus
    }

    fn config(&self) -> &CollectionConfig {
        &self.config
    }

    fn job(&self) -> Option<JobState> {
        self.job.clone()
    }

    async fn stats(&self) -> Result<Stats> {
        match self.stats_once().await {
            Err(e) if self.reloaded(&e).await => self.stats_once().await,
            r => r,
        }
    }

    async fn upsert(&self, mut docs: Vec<Doc>) -> Result<usize> {
        self.check(&mut docs)?;
        let n = docs.len();
        let c = self.store.client().await?;
        for chunk in docs.chunks(WRITE_CHUNK) {
            let rows: Vec<Value> = chunk
                .iter()
                .map(
                    |d| json!({"id": d.id, "text": d.text, "meta": d.metadata, "vector": d.vector}),
                )
                .collect();
            let insert = mv::InsertRequest::builder()
                .collection_name(self.physical.clone())
                .rows(rows)
                .build()
                .map_err(self.store.err("upsert"))?;
            c.upsert(
                mv::UpsertRequest::builder()
                    .insert(insert)
                    .build()
                    .map_err(self.store.err("upsert"))?,
            )
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "upsert", e)))?;
        }
        Ok(n)
    }

    async fn delete(&self, ids: Vec<String>) -> Result<usize> {
        let mut n = 0;
        for chunk in ids.chunks(WRITE_CHUNK) {
            let expr = ids_expr(chunk)?;
            n += self.query(expr.clone(), None, false).await?.len();
            let c = self.store.client().await?;
            c.delete(
                mv::DeleteRequest::builder()
                    .collection_name(self.physical.clone())
                    .filter(expr)
                    .build()
                    .map_err(self.store.err("delete"))?,
            )
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "delete", e)))?;
        }
        Ok(n)
    }

    async fn get(&self, id: &str) -> Result<Option<Doc>> {
        Ok(self
            .query(format!("id == {}", quote(id)?), Some(1), true)
            .await?
            .pop())
    }

    async fn documents(&self) -> Result<Vec<Doc>> {
        // Every id first (small), then the documents by id, a page at a time. (The
        // SDK's query iterator needs collection ids milvus-lite does not return.)
        let c = self.store.client().await?;
        let r = c
            .query(
                mv::QueryRequest::builder()
                    .collection_name(self.physical.clone())
                    .filter("id != \"\"")
                    .output_fields(["id"])
                    .consistency_level(mv::ConsistencyLevel::Strong)
                    .build()
                    .map_err(self.store.err("query"))?,
            )
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "query", e)))?;
        let ids = r
            .results()
            .rows()
            .map_err(self.store.err("query"))?
            .map(|row| {
                row.get_str("id")
                    .map(str::to_owned)
                    .map_err(self.store.err("query"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(WRITE_CHUNK) {
            out.extend(self.query(ids_expr(chunk)?, None, true).await?);
        }
        Ok(out)
    }

    async fn search(&self, q: Query) -> Result<Vec<Hit>> {
        match self.search_once(q.clone()).await {
            Err(e) if self.reloaded(&e).await => self.search_once(q).await,
            r => r,
        }
    }

    async fn search_lexical(&self, q: LexicalQuery) -> Result<Vec<Hit>> {
        match self.lexical_once(q.clone()).await {
            Err(e) if self.reloaded(&e).await => self.lexical_once(q).await,
            r => r,
        }
    }
}

impl MilvusCollection {
    /// BM25 through Milvus's function on the text field.
    async fn lexical_once(&self, q: LexicalQuery) -> Result<Vec<Hit>> {
        if self.config.lexical.is_none() {
            return Err(crate::collection::no_lexical(&self.config.name));
        }
        let mut b = mv::SearchRequest::builder()
            .collection_name(self.physical.clone())
            .vector_field("sparse")
            .vectors(mv::SearchVectors::EmbeddedText(vec![q.text]))
            .metric_type(mv::MetricType::Bm25)
            .output_fields(["id", "text", "meta"])
            .limit(q.k as i64)
            .consistency_level(mv::ConsistencyLevel::Strong);
        if let Some(f) = &q.filter {
            b = b.filter(expression(f)?);
        }
        let c = self.store.client().await?;
        let r = c
            .search(b.build().map_err(self.store.err("lexical search"))?)
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "lexical search", e)))?;
        // BM25 scores are positive; milvus-lite answers them negated (measured).
        self.hits(r, q.threshold, f32::abs)
    }

    fn hits(
        &self,
        r: mv::SearchResponse,
        threshold: Option<f32>,
        score: impl Fn(f32) -> f32,
    ) -> Result<Vec<Hit>> {
        let mut hits = Vec::new();
        for res in r.results().iter() {
            let scores = res.get_scores().to_vec();
            for (i, row) in res.rows().map_err(self.store.err("search"))?.enumerate() {
                let bad = |e: mv::Error| {
                    IndexError::Backend(format!("Milvus answered an unexpected hit: {e}"))
                };
                let s = score(scores.get(i).copied().unwrap_or(f32::MIN));
                if threshold.is_some_and(|t| s < t) {
                    continue;
                }
                hits.push(Hit {
                    id: row.get_str("id").map_err(bad)?.to_owned(),
                    score: s,
                    text: row.get_str("text").map_err(bad)?.to_owned(),
                    metadata: row.get_json("meta").map_err(bad)?.clone(),
                });
            }
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(hits)
    }

    async fn search_once(&self, q: Query) -> Result<Vec<Hit>> {
        if q.exact {
            return Err(IndexError::BadSearch(
                "`exact` is not available on the Milvus store (Milvus searches its HNSW index); raise `ef` instead".into(),
            ));
        }
        if q.vector.len() != self.config.dim {
            return Err(IndexError::WrongQueryDimension {
                expected: self.config.dim,
                got: q.vector.len(),
            });
        }
        let ef = q.ef.unwrap_or(self.config.hnsw.ef).max(q.k);
        let mut b = mv::SearchRequest::builder()
            .collection_name(self.physical.clone())
            .vector_field("vector")
            .vectors(mv::SearchVectors::Float(vec![q.vector]))
            .output_fields(["id", "text", "meta"])
            .limit(q.k as i64)
            .consistency_level(mv::ConsistencyLevel::Strong)
            .extra_params(HashMap::from([("ef".to_owned(), ef.to_string())]));
        if let Some(f) = &q.filter {
            b = b.filter(expression(f)?);
        }
        let c = self.store.client().await?;
        let r = c
            .search(b.build().map_err(self.store.err("search"))?)
            .await
            .map_err(|e| self.gone(classify(&self.store.opts.url, "search", e)))?;
        let metric = self.config.metric;
        self.hits(r, q.threshold, |s| score(metric, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_stay_strings() {
        assert_eq!(quote(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        let f = Filter::parse(&json!({"k": "x\" or 1==1 or meta[\"k\"] == \""})).unwrap();
        assert_eq!(
            expression(&f).unwrap(),
            r#"meta["k"] == "x\" or 1==1 or meta[\"k\"] == \"""#
        );
        assert!(quote("a\u{1}b").is_err());
    }

    #[test]
    fn in_expands_to_or_and_values_are_typed() {
        let f = Filter::parse(&json!({"y": {"in": [2020, 2.5, true, "s"]}, "z": 1})).unwrap();
        let e = expression(&f).unwrap();
        assert!(e.contains(r#"(meta["y"] == 2020 or meta["y"] == 2.5 or meta["y"] == true or meta["y"] == "s")"#), "{e}");
        assert!(e.contains(r#"meta["z"] == 1"#), "{e}");
        assert!(expression(&Filter::parse(&json!({"k": null})).unwrap()).is_err());
        assert!(expression(&Filter::parse(&json!({"k": [1]})).unwrap()).is_err());
    }

    #[test]
    fn names_round_trip_through_aliases() {
        for n in ["a", "My.Col-1_x", "0"] {
            assert_eq!(name_of_alias(&alias_of(n)).as_deref(), Some(n));
            assert!(alias_of(n)
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
        assert_eq!(gen_of(&physical("x", 7)), 7);
        assert_eq!(score(Metric::L2, 4.0), -2.0);
    }
}
