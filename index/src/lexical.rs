//! The lexical index of a local collection: BM25 over its documents' text, on tantivy.
//!
//! The collection's log stays the source of truth. A tantivy document is keyed by a
//! hash of (id, text), not by slot, so compaction (which renumbers slots) and a
//! re-embedding (which changes vectors only) leave it valid. On open, the keys in
//! tantivy are compared with the live documents and the difference is applied:
//! whatever a crash lost (or a damaged index, which is rebuilt) is restored.
//!
//! Writes reach tantivy through the background indexer, which commits at most every
//! [`COMMIT_INTERVAL`] (or every [`COMMIT_EVERY`] changes). Until a change is in the
//! searcher, its document sits in an in-memory tail, tokenised by the same analyzer
//! and scored with the same BM25 statistics (index plus tail, tantivy's fieldnorm
//! coding), so a write is found lexically as soon as it is acknowledged, with the
//! score it will have once committed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tantivy::collector::TopDocs;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::{Bm25StatisticsProvider, Bm25Weight, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term};

use crate::error::{IndexError, Result};

/// A commit is made at most this often while writes trickle in.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// ... or after this many changes, whichever comes first.
pub const COMMIT_EVERY: usize = 4096;
const TOKENIZER: &str = "aside";
const WRITER_BYTES: usize = 15_000_000;

/// The languages of the analyzer: code, name, tantivy's stemmer.
pub const LANGUAGES: &[(&str, &str, Language)] = &[
    ("ar", "arabic", Language::Arabic),
    ("da", "danish", Language::Danish),
    ("de", "german", Language::German),
    ("el", "greek", Language::Greek),
    ("en", "english", Language::English),
    ("es", "spanish", Language::Spanish),
    ("fi", "finnish", Language::Finnish),
    ("fr", "french", Language::French),
    ("hu", "hungarian", Language::Hungarian),
    ("it", "italian", Language::Italian),
    ("nl", "dutch", Language::Dutch),
    ("no", "norwegian", Language::Norwegian),
    ("pt", "portuguese", Language::Portuguese),
    ("ro", "romanian", Language::Romanian),
    ("ru", "russian", Language::Russian),
    ("sv", "swedish", Language::Swedish),
    ("ta", "tamil", Language::Tamil),
    ("tr", "turkish", Language::Turkish),
];

/// A collection's lexical settings (in its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LexicalSettings {
    /// The analyzer's language code (`en`, `de`, … — [`LANGUAGES`]).
    pub language: String,
}

impl LexicalSettings {
    pub fn validate(&self) -> Result<()> {
        self.lang().map(|_| ())
    }

    /// The analyzer of these settings.
    pub fn analyzer(&self) -> Result<TextAnalyzer> {
        Ok(analyzer(self.lang()?))
    }

    /// The analyzer Milvus runs for these settings (its BM25 function): the standard
    /// tokenizer, lower-casing, English stop words for `en`, the language's stemmer.
    /// (milvus-lite 3.2.2 knows no `english` analyzer type and ignores the filters:
    /// it splits and lower-cases only — measured.)
    pub fn milvus_analyzer(&self) -> Result<serde_json::Value> {
        self.lang()?;
        let name = LANGUAGES
            .iter()
            .find(|(c, _, _)| *c == self.language)
            .map(|(_, n, _)| *n)
            .expect("checked");
        let mut filter = vec![serde_json::json!("lowercase")];
        if name == "english" {
            filter.push(serde_json::json!({"type": "stop", "stop_words": ["_english_"]}));
        }
        filter.push(serde_json::json!({"type": "stemmer", "language": name}));
        Ok(serde_json::json!({"tokenizer": "standard", "filter": filter}))
    }

    pub(crate) fn lang(&self) -> Result<Language> {
        LANGUAGES
            .iter()
            .find(|(c, _, _)| *c == self.language)
            .map(|(_, _, l)| *l)
            .ok_or_else(|| {
                let codes: Vec<&str> = LANGUAGES.iter().map(|(c, _, _)| *c).collect();
                IndexError::BadConfig(format!(
                    "lexical.language `{}` is not supported (one of {}, or \"none\")",
                    self.language,
                    codes.join(", ")
                ))
            })
    }
}

/// The analyzer: words split on anything not alphanumeric, tokens over 40 bytes
/// dropped, lower-cased, the language's stop words removed (where tantivy has a
/// list), then its Snowball stemmer.
pub fn analyzer(lang: Language) -> TextAnalyzer {
    let b = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .dynamic();
    let b = match StopWordFilter::new(lang) {
        Some(f) => b.filter_dynamic(f),
        None => b,
    };
    b.filter_dynamic(Stemmer::new(lang)).build()
}

/// The terms of a text, in order (repeats kept).
pub fn terms(analyzer: &TextAnalyzer, text: &str) -> Vec<String> {
    let mut a = analyzer.clone();
    let mut s = a.token_stream(text);
    let mut out = Vec::new();
    while s.advance() {
        out.push(s.token().text.clone());
    }
    out
}

/// The key of one version of a document: the first 8 bytes of
/// sha256(len(id) ‖ id ‖ text).
pub(crate) fn key(id: &str, text: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    h.update(text.as_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Hashes a lexical key by taking it as it is: keys are already the leading bytes
/// of a sha256, so hashing them again (SipHash) would only cost time on the search
/// path, where every top document's key is looked up.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this path keeps any other use correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Lexical key → slot, hashed by [`KeyHasher`].
pub(crate) type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A change the lexical index has to follow.
#[derive(Debug, Clone)]
pub(crate) enum LexOp {
    Add { key: u64, text: String },
    Delete(u64),
}

/// A document written but not in the searcher yet.
struct TailDoc {
    key: u64,
    seq: u64,
    len: u32,
    tf: HashMap<String, u32>,
}

struct View {
    searcher: Searcher,
    tail: Vec<TailDoc>,
    tail_tokens: u64,
}

struct Pending {
    ops: Vec<(u64, LexOp)>,
    next_seq: u64,
}

struct Writing {
    writer: IndexWriter,
    /// Changes given to the writer since the last commit, and the newest one's seq.
    uncommitted: usize,
    given_seq: u64,
    last_commit: Instant,
}

pub(crate) struct Lexical {
    dir: PathBuf,
    analyzer: TextAnalyzer,
    key_f: Field,
    text_f: Field,
    reader: IndexReader,
    writing: Mutex<Writing>,
    view: RwLock<View>,
    pending: Mutex<Pending>,
}

fn lex_err(what: &str) -> impl Fn(tantivy::TantivyError) -> IndexError + '_ {
    move |e| IndexError::Backend(format!("lexical index: {what}: {e}"))
}

fn schema() -> (Schema, Field, Field) {
    let mut b = Schema::builder();
    let key_f = b.add_u64_field("key", INDEXED | FAST);
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let text_f = b.add_text_field("text", text);
    (b.build(), key_f, text_f)
}

/// BM25 statistics of the searcher and the tail together.
struct Stats<'a> {
    view: &'a View,
}

impl Bm25StatisticsProvider for Stats<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        Ok(self.view.searcher.total_num_tokens(field)? + self.view.tail_tokens)
    }
    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(Bm25StatisticsProvider::total_num_docs(&self.view.searcher)?
            + self.view.tail.len() as u64)
    }
    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let value = term.value();
        let t = value.as_str().unwrap_or_default();
        let tail = self
            .view
            .tail
            .iter()
            .filter(|d| d.tf.contains_key(t))
            .count();
        Ok(self.view.searcher.doc_freq(term)? + tail as u64)
    }
}

impl Lexical {
    /// Opens (or creates) the index in `dir` and brings it to `live`, the collection's
    /// live documents as (key, text). A missing or unreadable index is rebuilt; what
    /// was done is pushed to `warnings`.
    pub(crate) fn open<'a>(
        dir: &Path,
        settings: &LexicalSettings,
        live: impl Iterator<Item = (u64, &'a str)>,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        let analyzer = analyzer(settings.lang()?);
        let (schema, key_f, text_f) = schema();
        let index = match Self::open_index(dir, &schema) {
            Ok(ix) => ix,
            Err(e) => {
                if dir.exists() {
                    warnings.push(format!(
                        "lexical index unreadable ({e}): rebuilt from the documents"
                    ));
                    std::fs::remove_dir_all(dir).map_err(crate::error::io_err(dir))?;
                }
                std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
                tantivy::Index::create_in_dir(dir, schema.clone()).map_err(lex_err("creating"))?
            }
        };
        index.tokenizers().register(TOKENIZER, analyzer.clone());
        let writer = index
            .writer_with_num_threads(1, WRITER_BYTES)
            .map_err(lex_err("opening its writer"))?;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(lex_err("opening its reader"))?;
        let lx = Lexical {
            dir: dir.to_owned(),
            analyzer,
            key_f,
            text_f,
            view: RwLock::new(View {
                searcher: reader.searcher(),
                tail: Vec::new(),
                tail_tokens: 0,
            }),
            reader,
            writing: Mutex::new(Writing {
                writer,
                uncommitted: 0,
                given_seq: 0,
                last_commit: Instant::now(),
            }),
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                next_seq: 1,
            }),
        };
        let (added, removed) = lx.reconcile(live)?;
        if added + removed > 0 {
            warnings.push(format!(
                "lexical index: {added} documents added and {removed} removed to match the log"
            ));
        }
        Ok(lx)
    }

    fn open_index(dir: &Path, schema: &Schema) -> std::result::Result<tantivy::Index, String> {
        if !dir.join("meta.json").is_file() {
            return Err("no index".into());
        }
        let ix = tantivy::Index::open_in_dir(dir).map_err(|e| e.to_string())?;
        if ix.schema() != *schema {
            return Err("another schema".into());
        }
        // Every segment must be readable.
        let r = ix.reader().map_err(|e| e.to_string())?;
        for s in r.searcher().segment_readers() {
            s.fast_fields().u64("key").map_err(|e| e.to_string())?;
            s.inverted_index(schema.get_field("text").expect("field"))
                .map_err(|e| e.to_string())?;
        }
        Ok(ix)
    }

    /// Applies the difference between the committed index and `live`.
    fn reconcile<'a>(&self, live: impl Iterator<Item = (u64, &'a str)>) -> Result<(usize, usize)> {
        let mut have: HashMap<u64, u32> = HashMap::new();
        for s in self.view.read().searcher.segment_readers() {
            let col = s
                .fast_fields()
                .u64("key")
                .map_err(lex_err("reading keys"))?;
            let alive = s.alive_bitset();
            for d in 0..s.max_doc() {
                if alive.is_none_or(|a| a.is_alive(d)) {
                    if let Some(k) = col.first(d) {
                        *have.entry(k).or_default() += 1;
                    }
                }
            }
        }
        let mut w = self.writing.lock();
        let (mut added, mut removed) = (0, 0);
        let mut seen = HashSet::new();
        for (k, text) in live {
            seen.insert(k);
            match have.get(&k) {
                Some(1) => continue,
                Some(_) => {
                    w.writer.delete_term(Term::from_field_u64(self.key_f, k));
                }
                None => {}
            }
            self.add(&mut w, k, text)?;
            added += 1;
        }
        for k in have.keys().filter(|k| !seen.contains(k)) {
            w.writer.delete_term(Term::from_field_u64(self.key_f, *k));
            removed += 1;
        }
        if added + removed > 0 {
            w.uncommitted = added + removed;
            self.commit(&mut w)?;
        }
        Ok((added, removed))
    }

    /// Queues changes; their documents are searchable (in the tail) on return.
    pub(crate) fn enqueue(&self, ops: Vec<LexOp>) {
        if ops.is_empty() {
            return;
        }
        let mut p = self.pending.lock();
        let mut fresh = Vec::new();
        for op in ops {
            let seq = p.next_seq;
            p.next_seq += 1;
            if let LexOp::Add { key, text } = &op {
                let mut tf: HashMap<String, u32> = HashMap::new();
                let ts = terms(&self.analyzer, text);
                let len = ts.len() as u32;
                for t in ts {
                    *tf.entry(t).or_default() += 1;
                }
                fresh.push(TailDoc {
                    key: *key,
                    seq,
                    len,
                    tf,
                });
            }
            p.ops.push((seq, op));
        }
        let mut v = self.view.write();
        for d in fresh {
            v.tail_tokens += d.len as u64;
            v.tail.push(d);
        }
    }

    /// Whether changes wait for the writer or for a commit.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.lock().ops.is_empty() || self.writing.lock().uncommitted > 0
    }

    /// Hands queued changes to the writer, and commits when enough have gathered, or
    /// when `idle` and the commit interval has passed. Returns how long to wait before
    /// a commit is due (None: nothing waits).
    pub(crate) fn flush(&self, idle: bool) -> Option<Duration> {
        let mut w = self.writing.lock();
        if let Err(e) = self.hand_over(&mut w) {
            // Searchable from the tail meanwhile; the next open adds it from the log.
            tracing::warn!(dir = %self.dir.display(), "lexical index: {e}");
        }
        if w.uncommitted == 0 {
            return None;
        }
        let since = w.last_commit.elapsed();
        if w.uncommitted >= COMMIT_EVERY || (idle && since >= COMMIT_INTERVAL) {
            if let Err(e) = self.commit(&mut w) {
                // The tail keeps the documents searchable; the next turn tries again,
                // and the next open rebuilds from the log whatever was lost.
                tracing::warn!(dir = %self.dir.display(), "lexical commit failed: {e}");
                w.last_commit = Instant::now();
                return Some(COMMIT_INTERVAL);
            }
            return None;
        }
        Some(COMMIT_INTERVAL.saturating_sub(since))
    }

    /// Commits what the writer holds now (before the directory is linked elsewhere).
    pub(crate) fn commit_now(&self) -> Result<()> {
        let mut w = self.writing.lock();
        self.hand_over(&mut w)?;
        if w.uncommitted > 0 {
            self.commit(&mut w)?;
        }
        Ok(())
    }

    /// Gives every queued change to the writer, in order. A document the writer
    /// refuses is skipped (the rest still go) and the first such fault returned.
    fn hand_over(&self, w: &mut Writing) -> Result<()> {
        let ops = std::mem::take(&mut self.pending.lock().ops);
        let mut first = Ok(());
        for (seq, op) in ops {
            let r = match op {
                LexOp::Add { key, text } => self.add(w, key, &text),
                LexOp::Delete(key) => {
                    w.writer.delete_term(Term::from_field_u64(self.key_f, key));
                    Ok(())
                }
            };
            if first.is_ok() {
                first = r;
            }
            w.uncommitted += 1;
            w.given_seq = seq;
        }
        first
    }

    fn add(&self, w: &mut Writing, key: u64, text: &str) -> Result<()> {
        w.writer
            .add_document(doc!(self.key_f => key, self.text_f => text))
            .map(|_| ())
            .map_err(lex_err("adding"))
    }

    fn commit(&self, w: &mut Writing) -> Result<()> {
        w.writer.commit().map_err(lex_err("committing"))?;
        self.reader.reload().map_err(lex_err("reloading"))?;
        let searcher = self.reader.searcher();
        let upto = w.given_seq;
        let mut v = self.view.write();
        v.searcher = searcher;
        v.tail.retain(|d| d.seq > upto);
        v.tail_tokens = v.tail.iter().map(|d| d.len as u64).sum();
        w.uncommitted = 0;
        w.last_commit = Instant::now();
        Ok(())
    }

    /// Links the committed files into `dest` (a staging copy's lexical directory), so
    /// that a re-embedded copy of the same documents opens with nothing to rebuild.
    pub(crate) fn link_into(&self, dest: &Path) -> Result<()> {
        self.commit_now()?;
        // The writer lock keeps a commit from rewriting the files while they are linked.
        let _w = self.writing.lock();
        let _ = std::fs::remove_dir_all(dest);
        std::fs::create_dir_all(dest).map_err(crate::error::io_err(dest))?;
        let entries = std::fs::read_dir(&self.dir).map_err(crate::error::io_err(&self.dir))?;
        for e in entries {
            let e = e.map_err(crate::error::io_err(&self.dir))?;
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".lock") {
                continue;
            }
            let to = dest.join(&name);
            std::fs::hard_link(e.path(), &to)
                .or_else(|_| std::fs::copy(e.path(), &to).map(|_| ()))
                .map_err(crate::error::io_err(&to))?;
        }
        crate::sync_dir(dest)
    }

    /// The `k` best (BM25 score, slot) for `query`; `resolve` gives the slot of a key
    /// that is live and accepted (filter), None otherwise. `selective`: a filter
    /// applies, so many of tantivy's top documents may be refused.
    pub(crate) fn search(
        &self,
        query: &str,
        k: usize,
        selective: bool,
        resolve: &dyn Fn(u64) -> Option<usize>,
    ) -> Result<Vec<(f32, usize)>> {
        let terms = terms(&self.analyzer, query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let v = self.view.read();
        let stats = Stats { view: &v };
        if stats.total_num_docs().unwrap_or(0) == 0 {
            return Ok(Vec::new());
        }
        let mut best: HashMap<usize, f32> = HashMap::new();
        // The committed part: tantivy's top documents, widened until k are accepted
        // or every match has been seen.
        let clauses: Vec<(Occur, Box<dyn Query>)> = terms
            .iter()
            .map(|t| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_text(self.text_f, t),
                    IndexRecordOption::WithFreqs,
                ));
                (Occur::Should, q)
            })
            .collect();
        let q = BooleanQuery::new(clauses);
        let cols = v
            .searcher
            .segment_readers()
            .iter()
            .map(|s| s.fast_fields().u64("key"))
            .collect::<tantivy::Result<Vec<_>>>()
            .map_err(lex_err("reading keys"))?;
        // Unfiltered, the only refused documents are versions deleted or replaced
        // since the last commit (still in the searcher): a few spare places, then
        // the search widens if even those were not enough. A smaller n lets
        // tantivy's block-max WAND skip more. Filtered, start wider.
        let mut n = if selective { k * 2 + 16 } else { k + 16 };
        loop {
            let top = v
                .searcher
                .search_with_statistics_provider(
                    &q,
                    &TopDocs::with_limit(n).order_by_score(),
                    &stats,
                )
                .map_err(lex_err("searching"))?;
            best.clear();
            for (score, addr) in &top {
                let key = cols[addr.segment_ord as usize].first(addr.doc_id);
                if let Some(slot) = key.and_then(resolve) {
                    best.insert(slot, *score);
                }
            }
            if best.len() >= k || top.len() < n {
                break;
            }
            n *= 4;
        }
        // The tail, scored with the same statistics.
        if !v.tail.is_empty() {
            let n_docs = stats.total_num_docs().map_err(lex_err("statistics"))?;
            let avg = stats
                .total_num_tokens(self.text_f)
                .map_err(lex_err("statistics"))? as f32
                / n_docs as f32;
            let weights: Vec<(&str, Bm25Weight)> = terms
                .iter()
                .map(|t| {
                    let df = stats
                        .doc_freq(&Term::from_field_text(self.text_f, t))
                        .unwrap_or(0);
                    (
                        t.as_str(),
                        Bm25Weight::for_one_term_without_explain(df, n_docs, avg),
                    )
                })
                .collect();
            for d in &v.tail {
                let mut s = 0.0f32;
                let norm = FieldNormReader::fieldnorm_to_id(d.len);
                for (t, w) in &weights {
                    if let Some(&tf) = d.tf.get(*t) {
                        s += w.score(norm, tf);
                    }
                }
                if s > 0.0 {
                    if let Some(slot) = resolve(d.key) {
                        best.insert(slot, s);
                    }
                }
            }
        }
        let mut out: Vec<(f32, usize)> = best.into_iter().map(|(s, sc)| (sc, s)).collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out.truncate(k);
        Ok(out)
    }

    /// Documents in the tail (written, not committed yet).
    pub(crate) fn tail_len(&self) -> usize {
        self.view.read().tail.len()
    }
}
