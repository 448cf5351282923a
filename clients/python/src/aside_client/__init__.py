"""The Python client of the aside server: adapters, collections, documents
(batched upserts with progress), search with filters and re-ranking, embed and
rerank. Standard library only; every refusal raises :class:`AsideError` with the
server's message."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

__all__ = [
    "AsideError", "Client", "AdapterInfo", "Collection", "Document", "Hit",
    "SearchResult", "RerankResult",
]


class AsideError(Exception):
    """A request the server refused: its HTTP status, its error type
    (`invalid_request`, `not_found`, ...) and its message."""

    def __init__(self, status: int, type: str, message: str):
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message


@dataclass
class AdapterInfo:
    name: str
    version: str
    kind: str
    task: str
    params: int
    params_percent: float
    size_bytes: int
    activation: str = ""
    r: Optional[int] = None
    ar: Optional[int] = None
    versions: List[str] = field(default_factory=list)
    created: Optional[bool] = None

    @classmethod
    def of(cls, v: dict, created: Optional[bool] = None) -> "AdapterInfo":
        return cls(
            name=v["name"], version=v["version"], kind=v["kind"], task=v["task"],
            params=v["params"], params_percent=v["params_percent"], size_bytes=v["size_bytes"],
            activation=v.get("activation", ""), r=v.get("r"), ar=v.get("ar"),
            versions=v.get("versions", []), created=created,
        )


@dataclass
class Collection:
    name: str
    adapter: Optional[str]
    adapter_version: Optional[str]
    dim: int
    metric: str
    count: int
    status: str
    details: Dict[str, Any]

    @classmethod
    def of(cls, v: dict) -> "Collection":
        return cls(
            name=v["name"], adapter=v.get("adapter"), adapter_version=v.get("adapter_version"),
            dim=v["dim"], metric=v["metric"], count=v["count"], status=v["status"], details=v,
        )


@dataclass
class Document:
    id: str
    text: str
    metadata: Dict[str, Any]


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: Dict[str, Any]
    # Lexical and hybrid searches: {"dense": {"rank", "score"}, "lexical": {...}},
    # each side present when it found the hit.
    found_by: Optional[Dict[str, Dict[str, float]]] = None


@dataclass
class SearchResult:
    hits: List[Hit]
    adapter_version: Optional[str]
    timings: Dict[str, Any]


@dataclass
class RerankResult:
    index: int
    score: float


class Client:
    """A connection to one aside server (HTTP)."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    # ---------------------------------------------------------------- plumbing

    def _request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
                 content_type: Optional[str] = None) -> Any:
        return self._call(method, path, body, raw, content_type)[1]

    def _call(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
              content_type: Optional[str] = None):
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["content-type"] = content_type or "application/octet-stream"
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                text = r.read()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                v = json.loads(text)
                raise AsideError(e.code, v.get("type", "error"), v.get("error", text)) from None
            except (ValueError, AttributeError):
                raise AsideError(e.code, "error", text) from None

    @staticmethod
    def _seg(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # ---------------------------------------------------------------- adapters

    def put_adapter(self, name: str, path: Union[str, os.PathLike]) -> AdapterInfo:
        """Uploads an adapter: a native `.safetensors` file, or a PEFT folder
        (adapter_config.json + adapter_model.safetensors). `created` is False when
        identical bytes were already the current version."""
        path = os.fspath(path)
        route = f"/v1/adapters/{self._seg(name)}"
        if os.path.isdir(path):
            boundary = uuid.uuid4().hex
            parts = []
            for fname in ("adapter_config.json", "adapter_model.safetensors"):
                with open(os.path.join(path, fname), "rb") as f:
                    content = f.read()
                parts.append(
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"{fname}\"; "
                    f"filename=\"{fname}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                    + content + b"\r\n"
                )
            raw = b"".join(parts) + f"--{boundary}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={boundary}"
        else:
            with open(path, "rb") as f:
                raw = f.read()
            ctype = "application/octet-stream"
        status, v = self._call("PUT", route, raw=raw, content_type=ctype)
        return AdapterInfo.of(v, created=status == 201)

    def list_adapters(self) -> List[AdapterInfo]:
        return [AdapterInfo.of(a) for a in self._request("GET", "/v1/adapters")["adapters"]]

    def get_adapter(self, name: str) -> AdapterInfo:
        return AdapterInfo.of(self._request("GET", f"/v1/adapters/{self._seg(name)}"))

    def delete_adapter(self, name: str) -> None:
        self._request("DELETE", f"/v1/adapters/{self._seg(name)}")

    # ---------------------------------------------------------------- collections

    def create_collection(self, name: str, adapter: Optional[str] = None, metric: Optional[str] = None,
                          hnsw: Optional[Dict[str, int]] = None, store: Optional[str] = None,
                          engine: Optional[str] = None, lexical: Optional[str] = None) -> Collection:
        """`store`: "local" or "milvus" (the server's --store when unset); `engine`:
        a local collection's graph, "graph" (default) or "hnsw_rs"; `lexical`: the
        BM25 index's language ("en" when unset) or "none"."""
        body: Dict[str, Any] = {}
        if lexical is not None:
            body["lexical"] = "none" if lexical == "none" else {"language": lexical}
        if store is not None:
            body["store"] = store
        if engine is not None:
            body["engine"] = engine
        if adapter is not None:
            body["adapter"] = adapter
        if metric is not None:
            body["metric"] = metric
        if hnsw is not None:
            body["hnsw"] = hnsw
        return Collection.of(self._request("PUT", f"/v1/collections/{self._seg(name)}", body))

    def get_collection(self, name: str) -> Collection:
        return Collection.of(self._request("GET", f"/v1/collections/{self._seg(name)}"))

    def list_collections(self) -> List[Collection]:
        return [Collection.of(c) for c in self._request("GET", "/v1/collections")["collections"]]

    def delete_collection(self, name: str) -> None:
        self._request("DELETE", f"/v1/collections/{self._seg(name)}")

    # ---------------------------------------------------------------- documents

    def upsert(self, collection: str, documents: Iterable[Dict[str, Any]], batch_size: int = 1000,
               progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Writes documents (`{id, text, metadata?}`) in requests of `batch_size`;
        each request is durable when it returns. `progress(done, total)` is called
        after each. Returns how many were written."""
        docs = list(documents)
        done = 0
        for i in range(0, len(docs), max(1, batch_size)):
            chunk = docs[i:i + batch_size]
            r = self._request("POST", f"/v1/collections/{self._seg(collection)}/documents",
                              {"documents": chunk})
            done += r["upserted"]
            if progress is not None:
                progress(done, len(docs))
        return done

    def get_document(self, collection: str, id: str) -> Document:
        v = self._request("GET", f"/v1/collections/{self._seg(collection)}/documents/{self._seg(id)}")
        return Document(id=v["id"], text=v["text"], metadata=v["metadata"])

    def delete_document(self, collection: str, id: str) -> None:
        self._request("DELETE", f"/v1/collections/{self._seg(collection)}/documents/{self._seg(id)}")

    # ---------------------------------------------------------------- search and inference

    def search(self, collection: str, query: str, k: Optional[int] = None, filter: Optional[dict] = None,
               threshold: Optional[float] = None, exact: Optional[bool] = None, ef: Optional[int] = None,
               rerank: Optional[Union[str, Dict[str, Any]]] = None, mode: Optional[str] = None,
               fusion: Optional[Union[str, Dict[str, Any]]] = None,
               candidates: Optional[int] = None) -> SearchResult:
        """Searches a collection; `rerank` is a rerank adapter's name or
        `{adapter, candidates?, fuse?}`; `mode` "dense" (default), "lexical" or
        "hybrid"; `fusion` (hybrid) "rrf", "weighted" or `{method, k?, dense_weight?}`;
        `candidates` (hybrid) per side."""
        body: Dict[str, Any] = {"query": query}
        if isinstance(fusion, str):
            fusion = {"method": fusion}
        for key, value in [("k", k), ("filter", filter), ("threshold", threshold), ("exact", exact), ("ef", ef),
                           ("mode", mode), ("fusion", fusion), ("candidates", candidates)]:
            if value is not None:
                body[key] = value
        if rerank is not None:
            body["rerank"] = {"adapter": rerank} if isinstance(rerank, str) else rerank
        v = self._request("POST", f"/v1/collections/{self._seg(collection)}/search", body)
        hits = [Hit(id=h["id"], score=h["score"], text=h["text"], metadata=h["metadata"],
                    found_by=h.get("found_by")) for h in v["hits"]]
        return SearchResult(hits=hits, adapter_version=v.get("adapter_version"), timings=v.get("timings", {}))

    def embed(self, inputs: Sequence[str], adapter: Optional[str] = None) -> List[List[float]]:
        body: Dict[str, Any] = {"inputs": list(inputs)}
        if adapter is not None:
            body["adapter"] = adapter
        return self._request("POST", "/v1/embed", body)["embeddings"]

    def rerank(self, query: str, texts: Sequence[str], adapter: str) -> List[RerankResult]:
        v = self._request("POST", "/v1/rerank", {"query": query, "texts": list(texts), "adapter": adapter})
        return [RerankResult(index=r["index"], score=r["score"]) for r in v["results"]]

    def info(self) -> Dict[str, Any]:
        return self._request("GET", "/info")
