//! The typed requests and responses of every core operation. The HTTP API reads
//! and writes exactly these shapes as JSON (so the OpenAPI document is generated
//! from them), and the gRPC API converts its messages to and from them. A request
//! type refuses unknown fields; an absent optional field means its default.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

// ---------------------------------------------------------------- inference

/// Texts to embed, with an adapter or the bare backbone.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The texts (at least one; at most the server's `max_inputs`).
    pub inputs: Vec<String>,
    /// A retrieval adapter's name; absent: the bare backbone.
    #[serde(default)]
    pub adapter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// The adapter version that made them (absent for the bare backbone).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adapter_version: Option<String>,
}

/// Texts to score against a query with a rerank adapter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    /// A rerank adapter's name.
    pub adapter: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// The text's position in the request.
    pub index: usize,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    /// Best first (ties by index).
    pub results: Vec<RerankResult>,
    pub adapter_version: String,
}

// ---------------------------------------------------------------- collections

/// How similar two vectors are; scores are "higher is better".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity (vectors are L2-normalised).
    #[default]
    Cosine,
    /// Dot product.
    Dot,
    /// Minus the Euclidean distance.
    L2,
}

impl From<Metric> for aside_index::Metric {
    fn from(m: Metric) -> Self {
        match m {
            Metric::Cosine => aside_index::Metric::Cosine,
            Metric::Dot => aside_index::Metric::Dot,
            Metric::L2 => aside_index::Metric::L2,
        }
    }
}

impl From<aside_index::Metric> for Metric {
    fn from(m: aside_index::Metric) -> Self {
        match m {
            aside_index::Metric::Cosine => Metric::Cosine,
            aside_index::Metric::Dot => Metric::Dot,
            aside_index::Metric::L2 => Metric::L2,
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<aside_index::Metric>().map(Metric::from)
    }
}

/// HNSW settings; an absent field takes its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswSpec {
    /// Links per node (2..=256; default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// Candidates while building (1..=4096; default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_construction: Option<usize>,
    /// Candidates while searching (1..=4096; default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef: Option<usize>,
}

/// The HNSW settings a collection runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct Hnsw {
    pub m: usize,
    pub ef_construction: usize,
    pub ef: usize,
}

/// A new collection's settings (the body may be empty: the bare backbone, cosine,
/// default HNSW settings).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollectionRequest {
    /// The retrieval adapter whose vectors the collection holds; absent: the bare
    /// backbone.
    #[serde(default)]
    pub adapter: Option<String>,
    #[serde(default)]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub hnsw: Option<HnswSpec>,
    /// Where the collection lives: `local` (this server's disk) or `milvus` (the
    /// cluster given by --milvus-url, shared by every replica); absent: --store.
    #[serde(default)]
    pub store: Option<Store>,
    /// The graph of a local collection: `graph` (aside's own, the default) or
    /// `hnsw_rs` (the hnsw_rs crate; cosine or l2).
    #[serde(default)]
    pub engine: Option<Engine>,
    /// The lexical (BM25) index: `{"language": "en"}` (the default), another
    /// language code, or `"none"` for no lexical index.
    #[serde(default)]
    pub lexical: Option<LexicalSpec>,
}

/// A collection's lexical index: `"none"`, or `{"language": code}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LexicalSpec {
    /// `"none"`: no lexical index.
    Off(String),
    On(Lexical),
}

/// A lexical index's analyzer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lexical {
    /// ar, da, de, el, en, es, fi, fr, hu, it, nl, no, pt, ro, ru, sv, ta, tr
    /// (lower-casing, the language's stop words where tantivy has a list, its
    /// Snowball stemmer).
    pub language: String,
}

impl LexicalSpec {
    /// The settings a new collection gets (absent: English).
    pub fn settings(spec: Option<&LexicalSpec>) -> Result<Option<Lexical>, String> {
        match spec {
            None => Ok(Some(Lexical {
                language: "en".into(),
            })),
            Some(LexicalSpec::Off(s)) if s == "none" => Ok(None),
            Some(LexicalSpec::Off(s)) => {
                Err(format!("`{s}`: give \"none\" or {{\"language\": code}}"))
            }
            Some(LexicalSpec::On(l)) if l.language == "none" => Ok(None),
            Some(LexicalSpec::On(l)) => Ok(Some(l.clone())),
        }
    }
}

/// The graph engine of a local collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Graph,
    HnswRs,
}

impl From<Engine> for aside_index::Engine {
    fn from(e: Engine) -> Self {
        match e {
            Engine::Graph => aside_index::Engine::Graph,
            Engine::HnswRs => aside_index::Engine::HnswRs,
        }
    }
}

impl From<aside_index::Engine> for Engine {
    fn from(e: aside_index::Engine) -> Self {
        match e {
            aside_index::Engine::Graph => Engine::Graph,
            aside_index::Engine::HnswRs => Engine::HnswRs,
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<aside_index::Engine>().map(Engine::from)
    }
}

/// Which store holds a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    Local,
    Milvus,
}

impl From<Store> for aside_index::StoreKind {
    fn from(s: Store) -> Self {
        match s {
            Store::Local => aside_index::StoreKind::Local,
            Store::Milvus => aside_index::StoreKind::Milvus,
        }
    }
}

impl From<aside_index::StoreKind> for Store {
    fn from(s: aside_index::StoreKind) -> Self {
        match s {
            aside_index::StoreKind::Local => Store::Local,
            aside_index::StoreKind::Milvus => Store::Milvus,
        }
    }
}

impl std::str::FromStr for Store {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<aside_index::StoreKind>().map(Store::from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CollectionStatus {
    Ready,
    /// A new adapter version is being applied; document writes answer 409 meanwhile.
    Reembedding,
}

/// Progress of a collection's background re-embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reembed {
    pub target_version: String,
    pub done: usize,
    pub total: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    /// Where the collection lives.
    pub store: Store,
    /// The graph engine (local collections; Milvus collections use Milvus's).
    pub engine: Engine,
    /// The lexical index's analyzer; null: no lexical index.
    pub lexical: Option<Lexical>,
    pub adapter: Option<String>,
    pub adapter_version: Option<String>,
    /// sha256 of the backbone the vectors were made with.
    pub backbone: String,
    pub dim: usize,
    pub metric: Metric,
    pub hnsw: Hnsw,
    /// Live documents.
    pub count: usize,
    pub tombstones: usize,
    /// Documents not yet in the graph (searched exactly meanwhile).
    pub unindexed: usize,
    pub status: CollectionStatus,
    pub reembed: Option<Reembed>,
    /// What opening the collection found lost (corrupt log records skipped, each
    /// named); empty when healthy.
    pub damage: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// 1-512 bytes; an existing id is replaced.
    pub id: String,
    pub text: String,
    /// A JSON object (filters match its fields).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    pub documents: Vec<NewDocument>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpsertResponse {
    /// Documents written (durable when this answer is sent).
    pub upserted: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Document {
    pub id: String,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// Re-ranking of a search's candidates with a rerank adapter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankSpec {
    /// A rerank adapter's name.
    pub adapter: String,
    /// Candidates retrieved and re-ranked (k..=1000; default 100).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// Score = head + fuse × the retrieval score (>= 0; default 0: the head alone).
    #[serde(default)]
    pub fuse: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    /// Hits returned (1..=1000; default 10).
    #[serde(default)]
    pub k: Option<usize>,
    /// Graph candidates while searching (default: the collection's).
    #[serde(default)]
    pub ef: Option<usize>,
    /// Over metadata fields: `{"lang": "en"}`, `{"year": {"in": [2020, 2021]}}`,
    /// `{"and": [...]}`, `{"or": [...]}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    /// Hits scoring below this are left out.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Score every document instead of walking the graph.
    #[serde(default)]
    pub exact: Option<bool>,
    #[serde(default)]
    pub rerank: Option<RerankSpec>,
    /// `dense` (default: the query's embedding), `lexical` (BM25 over the text) or
    /// `hybrid` (both, fused). Filters and threshold apply in every mode; the
    /// threshold is on the mode's score (similarity, BM25, fused).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// hybrid: how the two lists become one (default `{"method": "rrf", "k": 60}`).
    #[serde(default)]
    pub fusion: Option<FusionSpec>,
    /// hybrid: candidates taken from each side (1..=1000; default max(100, k or
    /// rerank.candidates)).
    #[serde(default)]
    pub candidates: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Dense,
    Lexical,
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dense" => Ok(Mode::Dense),
            "lexical" => Ok(Mode::Lexical),
            "hybrid" => Ok(Mode::Hybrid),
            _ => Err(format!(
                "unknown mode `{s}` (expected dense, lexical or hybrid)"
            )),
        }
    }
}

/// Fusion of the dense and lexical lists: `rrf` scores 1 / (k + rank) summed over
/// the lists; `weighted` min-max normalises each list's scores to 0..1, then adds
/// dense_weight × dense + (1 − dense_weight) × lexical (0 for a list without the hit).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionSpec {
    pub method: FusionMethod,
    /// rrf's k (> 0; default 60).
    #[serde(default)]
    pub k: Option<f32>,
    /// weighted: the dense list's weight (0..=1; default 0.5).
    #[serde(default)]
    pub dense_weight: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    Rrf,
    Weighted,
}

impl std::str::FromStr for FusionMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rrf" => Ok(FusionMethod::Rrf),
            "weighted" => Ok(FusionMethod::Weighted),
            _ => Err(format!("unknown fusion `{s}` (expected rrf or weighted)")),
        }
    }
}

impl FusionSpec {
    pub fn fusion(&self) -> Result<aside_index::Fusion, (&'static str, String)> {
        match self.method {
            FusionMethod::Rrf => {
                if self.dense_weight.is_some() {
                    return Err(("fusion.dense_weight", "applies to method weighted".into()));
                }
                let k = self.k.unwrap_or(60.0);
                if !k.is_finite() || k <= 0.0 {
                    return Err(("fusion.k", format!("{k} must be a finite number > 0")));
                }
                Ok(aside_index::Fusion::Rrf { k })
            }
            FusionMethod::Weighted => {
                if self.k.is_some() {
                    return Err(("fusion.k", "applies to method rrf".into()));
                }
                let w = self.dense_weight.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&w) {
                    return Err(("fusion.dense_weight", format!("{w} is out of range 0..=1")));
                }
                Ok(aside_index::Fusion::Weighted { dense_weight: w })
            }
        }
    }
}

/// Where one side ranked a hit (from 1), with that side's own score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SideRank {
    pub rank: usize,
    pub score: f32,
}

/// Which side(s) found a hit (lexical and hybrid searches).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FoundBy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<SideRank>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<SideRank>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hit {
    pub id: String,
    /// The mode's score: similarity (dense), BM25 (lexical), fused (hybrid); the
    /// rerank head's score after re-ranking.
    pub score: f32,
    pub text: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Lexical and hybrid searches: each side's rank and score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_by: Option<FoundBy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    pub embed_ms: f64,
    pub search_ms: f64,
    pub rerank_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// Best first.
    pub hits: Vec<Hit>,
    /// The adapter version the query was embedded with (the collection's).
    pub adapter_version: Option<String>,
    pub timings: Timings,
}

// ---------------------------------------------------------------- adapters

/// One version of an adapter, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdapterInfo {
    pub name: String,
    /// sha256 of the stored file.
    pub version: String,
    /// iaa-l, iaa-b, houlsby, lora, bitfit, ...
    pub kind: String,
    /// retrieval or rerank.
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub r: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ar: Option<usize>,
    pub activation: String,
    pub params: usize,
    /// Parameters as a percentage of the backbone's.
    pub params_percent: f64,
    pub size_bytes: u64,
}

impl From<aside_adapters::AdapterInfo> for AdapterInfo {
    fn from(i: aside_adapters::AdapterInfo) -> Self {
        AdapterInfo {
            name: i.name,
            version: i.version,
            kind: i.kind,
            task: i.task,
            r: i.r,
            ar: i.ar,
            activation: i.activation,
            params: i.params,
            params_percent: i.params_percent,
            size_bytes: i.size_bytes,
        }
    }
}

/// An adapter's current version and every stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdapterDetails {
    #[serde(flatten)]
    pub current: AdapterInfo,
    pub versions: Vec<String>,
}

/// Counters of the resident-adapter cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    pub evictions: u64,
    pub resident: usize,
    pub resident_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdapterList {
    pub adapters: Vec<AdapterInfo>,
    pub cache: CacheStats,
}

/// What an upload did: a new current version, or identical bytes (unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct PutAdapterResponse {
    pub info: AdapterInfo,
    pub created: bool,
}

/// An adapter upload: the native file, or a PEFT folder's two files.
#[derive(Debug, Clone)]
pub enum AdapterUpload {
    Native(Vec<u8>),
    Peft { config: Vec<u8>, weights: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdapterDeleted {
    pub deleted: String,
    pub version: String,
}

// ---------------------------------------------------------------- server

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The name or id deleted.
    pub deleted: String,
}

/// Model and server facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    pub version: String,
    /// The model folder.
    pub model: String,
    pub backbone_sha256: String,
    /// f32, int8 or int8-fast.
    pub precision: String,
    pub hidden_size: usize,
    pub layers: usize,
    pub backbone_params: usize,
    pub pooling: String,
    pub normalize: bool,
    pub max_length: usize,
    pub max_inputs: usize,
    pub adapters: usize,
    pub collections: usize,
    pub uptime_seconds: u64,
    // The fields text-embeddings-inference's clients read.
    /// The backbone's id (its folder's name).
    pub model_id: String,
    /// = backbone_sha256.
    pub model_sha: String,
    /// float32 (weights and activations; int8 precisions quantise inside).
    pub model_dtype: String,
    /// `{"embedding": {"pooling": "mean"}}`.
    #[schema(value_type = Object)]
    pub model_type: serde_json::Value,
    pub max_concurrent_requests: usize,
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_client_batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` (liveness), `ready`, `damaged` (503: a collection lost data or could
    /// not be opened; `damaged` says which and what) or `store_unavailable` (503:
    /// the Milvus store does not answer; `store` says why).
    pub status: String,
    /// Collection name → what was lost or why it did not open.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub damaged: std::collections::BTreeMap<String, Vec<String>>,
    /// Why the Milvus store cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub store: Option<String>,
}

/// Every error: a message that names the fault, and its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// invalid_request, unauthorized, forbidden, not_found, method_not_allowed,
    /// conflict, too_large, unprocessable, overloaded, insufficient_storage,
    /// unavailable, timeout, internal.
    #[serde(rename = "type")]
    pub kind: String,
}
