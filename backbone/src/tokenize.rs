//! Tokenisation: the model's `tokenizer.json` with its own truncation and padding
//! replaced by ours (truncate at the requested max length, keep `[CLS]`…`[SEP]`;
//! no padding, since batches are padded to their own longest input).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tokenizers::{
    EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};

/// One input: a text, or a (query, document) pair for cross-encoders (token types 0/1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    Single(&'a str),
    Pair(&'a str, &'a str),
}

/// A tokenised input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// The model's tokenizer, with one configured copy per max length in use.
pub struct Tokens {
    base: Tokenizer,
    by_len: RwLock<HashMap<usize, Arc<Tokenizer>>>,
}

impl Clone for Tokens {
    fn clone(&self) -> Self {
        Tokens {
            base: self.base.clone(),
            by_len: RwLock::new(self.by_len.read().expect("tokenizer cache").clone()),
        }
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut base = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        base.with_padding(None);
        base.with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            base,
            by_len: RwLock::new(HashMap::new()),
        })
    }

    fn for_len(&self, max_length: usize) -> Result<Arc<Tokenizer>> {
        if let Some(t) = self
            .by_len
            .read()
            .expect("tokenizer cache")
            .get(&max_length)
        {
            return Ok(t.clone());
        }
        let mut t = self.base.clone();
        t.with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let t = Arc::new(t);
        self.by_len
            .write()
            .expect("tokenizer cache")
            .insert(max_length, t.clone());
        Ok(t)
    }

    /// Tokenises inputs (in parallel), truncating each to `max_length` tokens
    /// including the special tokens.
    pub fn encode(&self, inputs: &[Input<'_>], max_length: usize) -> Result<Vec<Encoded>> {
        if max_length < 4 {
            return Err(Error::Input(format!(
                "max length {max_length} is too small (at least 4 tokens)"
            )));
        }
        let tok = self.for_len(max_length)?;
        let batch: Vec<EncodeInput<'_>> = inputs
            .iter()
            .map(|i| match *i {
                Input::Single(a) => a.into(),
                Input::Pair(a, b) => (a, b).into(),
            })
            .collect();
        let encs = tok
            .encode_batch(batch, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encs
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    pub fn vocab_size(&self) -> usize {
        self.base.get_vocab_size(true)
    }
}
