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

/// One token of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    pub text: String,
    /// [CLS], [SEP] and the like.
    pub special: bool,
    /// Byte offsets in the text.
    pub start: usize,
    pub stop: usize,
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
    by_len: RwLock<HashMap<(usize, bool), Arc<Tokenizer>>>,
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

    fn for_len(&self, max_length: usize, left: bool) -> Result<Arc<Tokenizer>> {
        let key = (max_length, left);
        if let Some(t) = self.by_len.read().expect("tokenizer cache").get(&key) {
            return Ok(t.clone());
        }
        let mut t = self.base.clone();
        t.with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: if left {
                TruncationDirection::Left
            } else {
                TruncationDirection::Right
            },
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let t = Arc::new(t);
        self.by_len
            .write()
            .expect("tokenizer cache")
            .insert(key, t.clone());
        Ok(t)
    }

    /// Token ids given by a client, laid out as the tokenizer lays out a text:
    /// `[CLS] ids [SEP]`, truncated to `max_length` tokens (from the end, or from the
    /// start when `left`). Ids outside the vocabulary are refused.
    pub fn wrap_ids(&self, ids: &[u32], max_length: usize, left: bool) -> Result<Encoded> {
        let vocab = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary (0..{vocab})"
            )));
        }
        let special = |t: &str| {
            self.base.token_to_id(t).ok_or_else(|| {
                Error::Input(format!(
                    "this model's tokenizer has no {t} token, so token-id input is not supported"
                ))
            })
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let keep = max_length.saturating_sub(2).min(ids.len());
        let body = if left {
            &ids[ids.len() - keep..]
        } else {
            &ids[..keep]
        };
        let mut out = Vec::with_capacity(keep + 2);
        out.push(cls);
        out.extend_from_slice(body);
        out.push(sep);
        Ok(Encoded {
            type_ids: vec![0; out.len()],
            ids: out,
        })
    }

    /// The text of token ids (special tokens skipped when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.base
            .decode(ids, skip_special)
            .map_err(|e| Error::Input(format!("cannot decode: {e}")))
    }

    /// Each token of a text (special tokens included), truncated to `max_length`.
    pub fn tokens_of(&self, text: &str, max_length: usize) -> Result<Vec<Token>> {
        let enc = self
            .for_len(max_length, false)?
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_tokens())
            .zip(enc.get_special_tokens_mask())
            .zip(enc.get_offsets())
            .map(|(((id, t), sp), (start, stop))| Token {
                id: *id,
                text: t.clone(),
                special: *sp == 1,
                start: *start,
                stop: *stop,
            })
            .collect())
    }

    /// Tokenises inputs (in parallel), truncating each to `max_length` tokens
    /// including the special tokens.
    pub fn encode(&self, inputs: &[Input<'_>], max_length: usize) -> Result<Vec<Encoded>> {
        self.encode_from(inputs, max_length, false)
    }

    /// [`Tokens::encode`], truncating from the start of each text when `left`.
    pub fn encode_from(
        &self,
        inputs: &[Input<'_>],
        max_length: usize,
        left: bool,
    ) -> Result<Vec<Encoded>> {
        if max_length < 4 {
            return Err(Error::Input(format!(
                "max length {max_length} is too small (at least 4 tokens)"
            )));
        }
        let tok = self.for_len(max_length, left)?;
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
