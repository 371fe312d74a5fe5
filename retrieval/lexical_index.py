"""The retriever's lexical leg: one BM25 index per namespace, on disk, in tantivy.

Chosen by measurement over SQLite FTS5 and bm25s (2026-12-06, two shared cores,
`BENCH_LEXICAL_SIZES=100000,1000000 python -m tests.bench.bench_lexical`; synthetic
Zipfian 40-word texts, 10-word queries, k = 10, writes in upserts of 1,000):

                       tantivy     FTS5       bm25s
    query p95, 100k    4.9 ms      202 ms     5.1 ms
    query p95, 1M      12.4 ms     1,292 ms   27.9 ms
    writes/s, 1M       6,800       42,500     15 (every write rebuilds everything)
    RSS MB/100k (1M)   8.6         0.6        43
    disk MB/100k       8.6         50.5       29.4
    fingerprints(), 1M 0.45 s      0.50 s     (in memory)

FTS5 scores every row matching any query word (p95 x100 tantivy's at 1M); bm25s is
not incremental. Recall@5 (MuSiQue / HotpotQA): this analyzer 0.536 / 0.785, plain
BM25 (bm25s, Lucene idf, k1 1.2, b 0.75, stop list, Snowball) 0.512 / 0.780.

Scoring is tantivy's BM25 with its fixed k1 = 1.2, b = 0.75. Text and queries go
through the same analyzer: Unicode word split (runs of alphanumerics), words over 40
bytes dropped, lowercase, ASCII folding, Lucene's 33-word English stop list, English
Snowball stemming. On the multi-hop sets folding alone gains ~0.01 on MuSiQue;
stemming without the stop list loses 0.03 there, with it ties no stemming (0.536 vs
0.547 MuSiQue, 0.785 vs 0.770 HotpotQA: within noise on 100 questions). Queries are
never parsed: the analyzer's terms become a disjunction of term queries, so `title:x`,
quotes, `AND`, `*` and parentheses are only text.

Schema: `key` (u64, indexed for deletion, fast for reading back), `fp` (i64, fast: the
caller's fingerprint of the text) and `text` (indexed with term frequencies, not
stored: the store holds the texts). Key and fingerprint live in the same document as
the indexed text, and each `upsert`/`remove` call is one tantivy commit (atomic: a new
meta.json replaces the old), so after a crash the index holds exactly the last
committed state and never claims a fingerprint for text it does not hold.
`fingerprints()` reads both fast-field columns for the live documents of one searcher
snapshot.

Concurrency: writes are serialised by a lock and end with commit + reload of the reader,
so a write is visible and durable when it returns; a search takes the current searcher
(an immutable snapshot) and may run concurrently with a write.

Errors (two, apart on purpose: only the first means "delete the directory"):

    LexicalIndexError (Exception)   the directory is not a usable index (torn, foreign,
                                    corrupt): the caller deletes the directory and
                                    rebuilds from the store
    LexicalIndexBusy (Exception)    another writer (this process or another) holds the
                                    directory's lock: the index is open elsewhere
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tantivy

_T: Any = tantivy  # its stubs lack parts of the API used here (fast_field_values, Query builders)

FORMAT_TOKENIZER = "rolloutd_english_v1"  # the analyzer's name is saved in meta.json: a new chain, a new name
PLAIN_TOKENIZER = "rolloutd_plain_v1"
MAX_QUERY_TERMS = 1024  # a 4,096-character query has well under this; caps a pathological one
MAX_KEY = (1 << 63) - 1
_WRITER_HEAP = 32_000_000  # tantivy flushes a segment when this fills; one thread
_SCHEMA_FIELDS = {"key": "u64", "fp": "i64", "text": "text"}


TIE_SLACK = 16  # extra hits fetched so that ties at the k-th score are broken by key


class LexicalIndexError(Exception):
    """The on-disk index is missing parts, torn, foreign or locked: delete and rebuild it."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(f"lexical index {directory}: {problem}; delete the directory to rebuild it from the store")
        self.directory = directory
        self.problem = problem


class LexicalIndexBusy(Exception):
    """Another IndexWriter holds the directory's lock: the index is open elsewhere."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"lexical index {directory} is locked by another writer (open in this or another process); "
            "close that one first -- do not delete the directory"
        )
        self.directory = directory


def _analyzer(english: bool) -> Any:
    builder = _T.TextAnalyzerBuilder(_T.Tokenizer.simple()).filter(_T.Filter.remove_long(40))
    builder = builder.filter(_T.Filter.lowercase()).filter(_T.Filter.ascii_fold())
    if english:
        builder = builder.filter(_T.Filter.stopword("english")).filter(_T.Filter.stemmer("english"))
    return builder.build()


def _schema(tokenizer: str) -> Any:
    builder = _T.SchemaBuilder()
    builder.add_unsigned_field("key", indexed=True, fast=True)
    builder.add_integer_field("fp", fast=True)
    builder.add_text_field("text", tokenizer_name=tokenizer, index_option="freq")
    return builder.build()


def _clean(text: str) -> str:
    """`text` as valid Unicode: a lone surrogate (which Rust strings cannot hold) becomes '?'."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _check_meta(directory: Path, tokenizer: str) -> None:
    """Raise unless `directory` holds a tantivy meta.json with this module's schema."""
    try:
        meta = json.loads((directory / "meta.json").read_bytes())
        fields = {f["name"]: f for f in meta["schema"]}
        types = {name: f["type"] for name, f in fields.items()}
        found = fields["text"]["options"]["indexing"]["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LexicalIndexError(
            directory, f"meta.json is unreadable or torn ({exc.__class__.__name__}: {exc})"
        ) from None
    if types != _SCHEMA_FIELDS or found != tokenizer:
        raise LexicalIndexError(directory, f"schema {types} tokenizer {found!r} is not {_SCHEMA_FIELDS} {tokenizer!r}")


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit)


class LexicalIndex:
    """One namespace's BM25 index over memory texts, keyed by memory_vid (positive int64)."""

    def __init__(self, directory: Path, index: Any, writer: Any, schema: Any, analyzer: Any) -> None:
        self.directory = directory
        self._index = index
        self._writer = writer
        self._schema = schema
        self._analyzer = analyzer
        self._write_lock = threading.Lock()

    @classmethod
    def open(cls, directory: Path, *, english: bool = True) -> LexicalIndex:
        """Create the index in `directory` (absent or empty) or open the one there.

        `english=False` (for comparison only) leaves out the stop list and the stemmer.
        """
        tokenizer = FORMAT_TOKENIZER if english else PLAIN_TOKENIZER
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "meta.json").exists():
            _check_meta(directory, tokenizer)
        elif visible := sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")):
            raise LexicalIndexError(directory, f"holds {visible[:3]} but no meta.json")
        schema, analyzer = _schema(tokenizer), _analyzer(english)
        try:  # tantivy panics (a BaseException) on some damage: translate everything at this boundary
            index = _T.Index(schema, path=str(directory), reuse=True)
            index.register_tokenizer(tokenizer, analyzer)
            index.config_reader(reload_policy="Manual")
            writer = index.writer(heap_size=_WRITER_HEAP, num_threads=1)
            index.searcher().num_docs  # noqa: B018  (opens every segment's readers)
        except BaseException as exc:  # noqa: BLE001
            if _is_fatal(exc):
                raise
            if "LockBusy" in str(exc):
                raise LexicalIndexBusy(directory) from None
            raise LexicalIndexError(directory, f"tantivy cannot open it ({exc.__class__.__name__}: {exc})") from None
        return cls(directory, index, writer, schema, analyzer)

    def upsert(self, items: Sequence[tuple[int, str, int]]) -> None:
        """Index (key, text, fingerprint) items, replacing any doc of the same key; one commit."""
        latest = {_valid_key(key): (text, fp) for key, text, fp in items}  # the last of a repeated key wins
        if not latest:
            return
        docs = [self._document(key, text, fp) for key, (text, fp) in latest.items()]
        with self._write_lock:
            writer = self._open_writer()

            def write() -> None:
                self._delete(writer, list(latest))
                for doc in docs:
                    writer.add_document(doc)

            self._commit(writer, write)

    def remove(self, keys: Sequence[int]) -> None:
        """Delete the docs of `keys`; absent keys are ignored."""
        wanted = [key for key in dict.fromkeys(keys) if 0 < key <= MAX_KEY]
        if not wanted:
            return
        with self._write_lock:
            writer = self._open_writer()
            self._commit(writer, lambda: self._delete(writer, wanted))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The `k` best (key, BM25 score), best first; [] when the query has no indexable term."""
        terms = list(dict.fromkeys(token for token in self._analyzer.analyze(_clean(query))))[:MAX_QUERY_TERMS]
        if not terms or k <= 0:
            return []
        should = _T.Occur.Should
        clauses = [(should, _T.Query.term_query(self._schema, "text", t, index_option="freq")) for t in terms]
        searcher = self._searcher()
        # A few more than k, ordered by (score, key): which of two equal scores comes first must
        # not depend on how tantivy's background merges happened to lay out the segments.
        hits = self._guard(lambda: searcher.search(_T.Query.boolean_query(clauses), k + TIE_SLACK, count=False).hits)
        keys = self._guard(lambda: searcher.fast_field_values("key", [address for _, address in hits]))
        ranked = sorted(((key, float(score)) for (score, _), key in zip(hits, keys, strict=True)), key=_best_first)
        return ranked[:k]

    def fingerprints(self) -> dict[int, int]:
        """key → fingerprint of every live doc, from one snapshot."""
        searcher = self._searcher()
        if searcher.num_docs == 0:
            return {}

        def read() -> dict[int, int]:
            hits = searcher.search(_T.Query.all_query(), searcher.num_docs, count=False).hits
            addresses = [address for _, address in hits]
            keys = searcher.fast_field_values("key", addresses)
            return dict(zip(keys, searcher.fast_field_values("fp", addresses), strict=True))

        return self._guard(read)

    def __len__(self) -> int:
        return int(self._searcher().num_docs)

    def close(self) -> None:
        """Release the writer (and its directory lock); pending merges are abandoned, not lost."""
        with self._write_lock:
            self._writer = None
            self._index = None

    def _document(self, key: int, text: str, fp: int) -> Any:
        doc = _T.Document()
        doc.add_unsigned("key", key)
        doc.add_integer("fp", fp)
        doc.add_text("text", _clean(text))
        return doc

    def _delete(self, writer: Any, keys: list[int]) -> None:
        # Not delete_documents_by_term: given a Python int it builds an i64 term, which
        # never matches the u64 field, and deletes nothing without a word.
        writer.delete_documents_by_query(_T.Query.term_set_query(self._schema, "key", keys))

    def _commit(self, writer: Any, operations: Callable[[], None]) -> None:
        """Run `operations` on the writer and commit them all, or none: a failure rolls back."""
        index = self._index

        def commit() -> None:
            try:
                operations()
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            index.reload()

        self._guard(commit)

    def _open_writer(self) -> Any:
        if self._writer is None:
            raise ValueError(f"lexical index {self.directory} is closed")  # a caller's bug, not damage: no rebuild
        return self._writer

    def _searcher(self) -> Any:
        index = self._index
        if index is None:
            raise ValueError(f"lexical index {self.directory} is closed")  # a caller's bug, not damage: no rebuild
        return self._guard(index.searcher)

    def _guard(self, call: Any) -> Any:
        try:
            return call()
        except BaseException as exc:  # noqa: BLE001  (tantivy's panics are BaseExceptions)
            if _is_fatal(exc):
                raise
            raise LexicalIndexError(self.directory, f"{exc.__class__.__name__}: {exc}") from exc


def _best_first(hit: tuple[int, float]) -> tuple[float, int]:
    return (-hit[1], hit[0])


def _valid_key(key: int) -> int:
    if not 0 < key <= MAX_KEY:
        raise ValueError(f"key {key} is not a positive int64")
    return key
