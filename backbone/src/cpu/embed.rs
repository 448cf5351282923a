//! The embedding sum at the encoder's input and mean pooling at its output.

use super::vector::{add_assign, add_to3};

/// `out[i] = word[index[0][i]] + types[index[1][i]] + position[index[2][i]]` for
/// tables of rows of `d` values: the three embeddings summed in one pass (no
/// gathered copies). Every index must be in range for its table (checked by the
/// caller); `out` is `[index[0].len(), d]`.
pub fn embed_sum(out: &mut [f32], tables: [&[f32]; 3], index: [&[u32]; 3], d: usize) {
    fn row(tab: &[f32], at: u32, d: usize) -> &[f32] {
        &tab[at as usize * d..][..d]
    }
    let [w, t, p] = tables;
    for (i, o) in out.chunks_exact_mut(d).enumerate() {
        let [a, b, c] = index.map(|idx| idx[i]);
        add_to3(o, row(w, a, d), row(t, b, d), row(p, c, d));
    }
}

/// Mean of each sequence's first `lengths[i]` token vectors of `h` `[b, t, d]` (the
/// real tokens of a right-padded batch), as one `Vec` per sequence.
pub fn mean_pool(h: &[f32], t: usize, d: usize, lengths: &[usize]) -> Vec<Vec<f32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let len = len.min(t);
            let mut v = vec![0f32; d];
            for row in h[i * t * d..].chunks_exact(d).take(len) {
                add_assign(&mut v, row);
            }
            let inv = 1.0 / (len as f32).max(1e-9);
            v.iter_mut().for_each(|x| *x *= inv);
            v
        })
        .collect()
}
