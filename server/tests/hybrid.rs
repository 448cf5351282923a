//! Lexical and hybrid search through `aside serve` (real model, 500 SciFact
//! documents, HTTP and gRPC on loopback): each mode, the fused scores and per-side
//! ranks, filters and threshold on the lexical side, re-ranking of the fused list,
//! a collection without a lexical index, the errors, and writes found lexically at
//! once and after a restart.

mod common;

use aside_adapters::testing::{random_adapter, test_metas};
use aside_adapters::{format, Dims};
use aside_backbone::testing::real_model;
use aside_backbone::{Backbone, LoadOptions};
use aside_server::grpc::pb;
use common::{corpus, ids, put_docs, queries, scifact, search, Server};
use serde_json::{json, Value};

fn hits(r: &Value) -> &Vec<Value> {
    r["hits"].as_array().unwrap()
}

#[test]
fn lexical_and_hybrid_search_over_http_and_grpc() {
    let Some(model) = real_model(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let Some(data) = scifact() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&model, dir.path(), &[]);
    let (st, c) = s.call("PUT", "/v1/collections/sci", None);
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["lexical"], json!({"language": "en"}), "{c}");
    let docs = corpus(&data, 500);
    put_docs(&s, "sci", &docs);

    // Lexical: a document's own title finds it first, and only the lexical side.
    for d in docs.iter().step_by(50) {
        let title = d["metadata"]["title"].as_str().unwrap();
        let r = search(
            &s,
            "sci",
            json!({"query": title, "k": 5, "mode": "lexical"}),
        );
        assert_eq!(ids(&r)[0], d["id"].as_str().unwrap(), "{title}: {r}");
        let h = &hits(&r)[0];
        assert_eq!(h["found_by"]["lexical"]["rank"], 1, "{h}");
        assert!(h["found_by"].get("dense").is_none(), "{h}");
        assert_eq!(h["found_by"]["lexical"]["score"], h["score"]);
        assert_eq!(
            r["timings"]["embed_ms"], 0.0,
            "no embedding in lexical mode"
        );
    }
    // Dense answers are unchanged: no found_by.
    let qs = queries(&data, 20);
    let d = search(&s, "sci", json!({"query": qs[0], "k": 10}));
    assert!(hits(&d)[0].get("found_by").is_none(), "{d}");

    // Hybrid (rrf): the fused score is the sum of 1 / (60 + rank) over the sides
    // that found the hit, and the sides are those of the single-mode searches.
    for q in &qs[..5] {
        let h = search(
            &s,
            "sci",
            json!({"query": q, "k": 10, "mode": "hybrid", "candidates": 50}),
        );
        let dense = ids(&search(&s, "sci", json!({"query": q, "k": 50})));
        let lex = ids(&search(
            &s,
            "sci",
            json!({"query": q, "k": 50, "mode": "lexical"}),
        ));
        assert_eq!(hits(&h).len(), 10);
        let mut prev = f64::INFINITY;
        for hit in hits(&h) {
            let id = hit["id"].as_str().unwrap();
            let mut want = 0.0;
            for (side, list) in [("dense", &dense), ("lexical", &lex)] {
                match list.iter().position(|x| x == id) {
                    Some(p) => {
                        assert_eq!(hit["found_by"][side]["rank"], p + 1, "{side} {hit}");
                        want += 1.0 / (60.0 + (p + 1) as f64);
                    }
                    None => assert!(hit["found_by"].get(side).is_none(), "{hit}"),
                }
            }
            let got = hit["score"].as_f64().unwrap();
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
            assert!(got <= prev);
            prev = got;
        }
    }
    // Weighted: scores in 0..=1, a hit found by both sides first on this query.
    let w = search(
        &s,
        "sci",
        json!({"query": qs[1], "k": 10, "mode": "hybrid", "fusion": {"method": "weighted", "dense_weight": 0.7}}),
    );
    for hit in hits(&w) {
        let sc = hit["score"].as_f64().unwrap();
        assert!((0.0..=1.0 + 1e-6).contains(&sc), "{hit}");
    }

    // Filters and threshold on the lexical side, and in hybrid.
    for mode in ["lexical", "hybrid"] {
        let f = search(
            &s,
            "sci",
            json!({"query": qs[2], "k": 20, "mode": mode, "filter": {"part": {"in": [1, 3]}, "even": false}}),
        );
        assert!(!hits(&f).is_empty(), "{mode}");
        for h in hits(&f) {
            let p = h["metadata"]["part"].as_u64().unwrap();
            assert!((p == 1 || p == 3) && h["metadata"]["even"] == false, "{h}");
        }
        let all = search(&s, "sci", json!({"query": qs[2], "k": 10, "mode": mode}));
        let t = hits(&all)[4]["score"].as_f64().unwrap();
        let th = search(
            &s,
            "sci",
            json!({"query": qs[2], "k": 10, "mode": mode, "threshold": t}),
        );
        assert!(ids(&th).len() >= 5, "{mode}");
        assert_eq!(ids(&th), ids(&all)[..ids(&th).len()].to_vec(), "{mode}");
        assert!(hits(&th).iter().all(|h| h["score"].as_f64().unwrap() >= t));
    }

    // Re-ranking re-orders the fused list by the head; each hit keeps its sides.
    let b = Backbone::load(&model, &LoadOptions::default()).unwrap();
    let meta = test_metas(b.sha256())
        .into_iter()
        .find(|(l, _)| *l == "rerank-iaa-l")
        .unwrap()
        .1;
    let bytes = format::write_adapter(&random_adapter(&meta, &Dims::of(&b), b.bert(), 7)).unwrap();
    let (st, _, r) = s.raw("PUT", "/v1/adapters/rr", &[], Some(&bytes));
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&r));
    let fused = search(
        &s,
        "sci",
        json!({"query": qs[3], "k": 30, "mode": "hybrid", "candidates": 30}),
    );
    let rr = search(
        &s,
        "sci",
        json!({"query": qs[3], "k": 30, "mode": "hybrid", "candidates": 30, "rerank": {"adapter": "rr", "candidates": 30}}),
    );
    let mut a = ids(&fused);
    let mut b2 = ids(&rr);
    assert_ne!(a, b2, "re-ranking changed nothing");
    a.sort();
    b2.sort();
    assert_eq!(a, b2, "re-ranking works on the fused candidates");
    for h in hits(&rr) {
        let f = hits(&fused).iter().find(|x| x["id"] == h["id"]).unwrap();
        assert_eq!(h["found_by"], f["found_by"]);
    }

    // gRPC: the same hits, scores and sides.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = common::grpc_channel(&s).await;
        let mut cc = pb::collections_client::CollectionsClient::new(ch);
        for (mode, fusion) in [
            ("lexical", None),
            ("hybrid", None),
            (
                "hybrid",
                Some(pb::Fusion {
                    method: "weighted".into(),
                    k: None,
                    dense_weight: Some(0.3),
                }),
            ),
        ] {
            let g = cc
                .search(pb::SearchRequest {
                    collection: "sci".into(),
                    query: qs[4].clone(),
                    k: Some(10),
                    mode: mode.into(),
                    fusion: fusion.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut body = json!({"query": qs[4], "k": 10, "mode": mode});
            if fusion.is_some() {
                body["fusion"] = json!({"method": "weighted", "dense_weight": 0.3});
            }
            let h = search(&s, "sci", body);
            let gi: Vec<String> = g.hits.iter().map(|h| h.id.clone()).collect();
            assert_eq!(gi, ids(&h), "{mode}");
            for (gh, hh) in g.hits.iter().zip(hits(&h)) {
                assert!((gh.score as f64 - hh["score"].as_f64().unwrap()).abs() < 1e-6);
                let fb = gh.found_by.as_ref().unwrap();
                assert_eq!(
                    fb.lexical.as_ref().map(|x| x.rank as u64),
                    hh["found_by"]["lexical"]["rank"].as_u64()
                );
                assert_eq!(
                    fb.dense.as_ref().map(|x| x.rank as u64),
                    hh["found_by"]["dense"]["rank"].as_u64()
                );
            }
        }
        let bad = cc
            .search(pb::SearchRequest {
                collection: "sci".into(),
                query: "x".into(),
                mode: "sparse".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("mode"), "{bad:?}");
        let mut col =
            pb::collections_client::CollectionsClient::new(common::grpc_channel(&s).await);
        let c = col
            .create_collection(pb::CreateCollectionRequest {
                name: "g-none".into(),
                lexical: "none".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.lexical, "");
        let c = col
            .create_collection(pb::CreateCollectionRequest {
                name: "g-de".into(),
                lexical: "de".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.lexical, "de");
    });

    // Errors name the fault.
    let (st, c) = s.call(
        "PUT",
        "/v1/collections/plain",
        Some(&json!({"lexical": "none"})),
    );
    assert_eq!((st, &c["lexical"]), (201, &Value::Null), "{c}");
    put_docs(&s, "plain", &docs[..10]);
    for (coll, body, field) in [
        (
            "plain",
            json!({"query": "x", "mode": "lexical"}),
            "lexical index",
        ),
        ("sci", json!({"query": "x", "mode": "sparse"}), "mode"),
        (
            "sci",
            json!({"query": "x", "fusion": {"method": "rrf"}}),
            "fusion",
        ),
        (
            "sci",
            json!({"query": "x", "mode": "hybrid", "fusion": {"method": "weighted", "dense_weight": 2}}),
            "dense_weight",
        ),
        (
            "sci",
            json!({"query": "x", "mode": "hybrid", "fusion": {"method": "rrf", "k": 0}}),
            "fusion.k",
        ),
        ("sci", json!({"query": "x", "candidates": 5}), "candidates"),
        ("sci", json!({"query": "  ", "mode": "lexical"}), "query"),
    ] {
        let (st, r) = s.call(
            "POST",
            &format!("/v1/collections/{coll}/search"),
            Some(&body),
        );
        assert_eq!(st, 400, "{body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(field), "{body}: {r}");
    }
    let (st, r) = s.call(
        "PUT",
        "/v1/collections/xx",
        Some(&json!({"lexical": {"language": "klingon"}})),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("klingon"), "{r}");

    // A write is found lexically as soon as it is acknowledged, and after a restart;
    // a replaced text is not found by its old words; a deleted document not at all.
    let doc = |id: &str, text: &str| json!({"documents": [{"id": id, "text": text}]});
    let (st, _) = s.call(
        "POST",
        "/v1/collections/sci/documents",
        Some(&doc("new1", "quasicrystalline zeolite lattices")),
    );
    assert_eq!(st, 200);
    let r = search(
        &s,
        "sci",
        json!({"query": "zeolite", "k": 3, "mode": "lexical"}),
    );
    assert_eq!(ids(&r), vec!["new1"]);
    let first = docs[0]["id"].as_str().unwrap().to_owned();
    let (st, _) = s.call(
        "POST",
        "/v1/collections/sci/documents",
        Some(&doc(&first, "replaced with xylophone words")),
    );
    assert_eq!(st, 200);
    let (st, _) = s.call("DELETE", "/v1/collections/sci/documents/new1", None);
    assert_eq!(st, 200);
    let title0 = docs[0]["metadata"]["title"].as_str().unwrap().to_owned();
    let check = |s: &Server| {
        let r = search(
            s,
            "sci",
            json!({"query": "zeolite", "k": 3, "mode": "lexical"}),
        );
        assert!(ids(&r).is_empty(), "{r}");
        let r = search(
            s,
            "sci",
            json!({"query": "xylophone", "k": 3, "mode": "lexical"}),
        );
        assert_eq!(ids(&r), vec![first.clone()]);
        let r = search(
            s,
            "sci",
            json!({"query": title0, "k": 20, "mode": "lexical"}),
        );
        assert!(!ids(&r).contains(&first), "old text still found: {r}");
    };
    check(&s);
    drop(s); // SIGKILL
    let s = Server::start(&model, dir.path(), &[]);
    check(&s);
    let (_, c) = s.call("GET", "/v1/collections/sci", None);
    assert_eq!(c["count"], 500, "{c}");
}
