"""A stable fingerprint of prepared data: same inputs, same hash, in any process.

It covers everything that changes the tokenised rows: the data itself (file hash, or hub id +
split + revision), the source settings (format, columns, max_examples), the data settings
(max_seq_len, packing, on_bad_row) and the tokenizer (its serialised model, special tokens and
the chat template rows are rendered with). `PIPELINE_VERSION` is bumped whenever this package
changes how rows are encoded, so caches written by older code are not reused. The source path
is left out on purpose: the same file read from another place is the same data.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from orchestrator.data.formats import chat_template_of

if TYPE_CHECKING:
    from orchestrator.spec.models import DataSourceSpec, DataSpec

PIPELINE_VERSION = 1


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of what decides token ids: the tokenizer model, its special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer's JSON holds the vocab, merges, normalisers and added tokens.
        model = backend.to_str()
    else:
        model = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = {name: getattr(tokenizer, name, None)
                for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    payload = json.dumps({"model": model, "specials": specials,
                          "chat_template": chat_template_of(tokenizer)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def data_fingerprint(content_id: str, source: DataSourceSpec, data: DataSpec, tokenizer: Any) -> str:
    """Hex sha256 naming the prepared dataset of `source` under `data`, tokenised by `tokenizer`."""
    payload = {
        "pipeline_version": PIPELINE_VERSION,
        "content": content_id,
        "format": source.format,
        "columns": source.columns.model_dump(mode="json"),
        "max_examples": source.max_examples,
        "max_seq_len": data.max_seq_len,
        "packing": data.packing,
        "on_bad_row": data.on_bad_row,
        "tokenizer": tokenizer_identity(tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
