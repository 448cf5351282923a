//! A small synthetic BEIR folder for tests: each query shares a made-up code word with
//! exactly one document, among distractor documents of random words.

use std::path::Path;

use aside_backbone::testing::Rng;

fn word(rng: &mut Rng, len: usize) -> String {
    let letters: Vec<char> = ('a'..='z').collect();
    (0..len)
        .map(|_| letters[(rng.next_u64() % 26) as usize])
        .collect()
}

/// Writes `corpus.jsonl`, `queries.jsonl`, `qrels/train.tsv` and `qrels/test.tsv`
/// with `queries` queries (the first three quarters train, the rest test) and twice
/// as many documents.
pub fn write_synthetic_beir(dir: &Path, queries: usize, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(dir.join("qrels"))?;
    let fillers = [
        "the", "cell", "cells", "protein", "gene", "cancer", "of", "and", "in",
    ];
    let mut corpus = String::new();
    let mut qs = String::new();
    let mut train = String::from("query-id\tcorpus-id\tscore\n");
    let mut test = train.clone();
    for i in 0..queries * 2 {
        let code = word(&mut rng, 4);
        let mut text: Vec<String> = (0..6)
            .map(|_| fillers[(rng.next_u64() % fillers.len() as u64) as usize].to_owned())
            .collect();
        text.insert((rng.next_u64() % 6) as usize, code.clone());
        corpus.push_str(&format!(
            "{}\n",
            serde_json::json!({"_id": format!("d{i}"), "title": "", "text": text.join(" ")})
        ));
        if i < queries {
            let q = format!("{code} {}", fillers[(rng.next_u64() % 3) as usize]);
            qs.push_str(&format!(
                "{}\n",
                serde_json::json!({"_id": format!("q{i}"), "text": q})
            ));
            let line = format!("q{i}\td{i}\t1\n");
            if i < queries * 3 / 4 {
                train.push_str(&line);
            } else {
                test.push_str(&line);
            }
        }
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus)?;
    std::fs::write(dir.join("queries.jsonl"), qs)?;
    std::fs::write(dir.join("qrels/train.tsv"), train)?;
    std::fs::write(dir.join("qrels/test.tsv"), test)?;
    Ok(())
}
