"""Training data: read a source, check every row, tokenise per format, pack, cache.

The entry point is `orchestrator.data.pipeline.prepare_dataset`: the driver calls it once, the
tokenised dataset lands in ``ftctl_home()/data-cache/<fingerprint>/``, and workers open it with
`load_prepared`. Batches are built by `collate`.

Modules, one concern each:

- `errors`: `DataError`, the one exception users see.
- `sources`: where rows come from (jsonl/json/csv/parquet files, `builtin:demo/...`, hub ids),
  each row with the number a user would look up in the file.
- `demo`: generates the built-in demo files on first use, safely across processes.
- `formats`: one row -> token ids and loss labels (text, instruction, alpaca, chat, sharegpt,
  classification, preference pairs).
- `packing`: concatenates examples into full rows without letting loss cross examples.
- `fingerprint`: a stable hash of data + settings + tokenizer, which names the cache entry.
- `collate`: pads examples into tensors (a preference pair into two rows).
- `pipeline`: ties them together (`prepare_dataset`, `load_prepared`, `PreparedData`).

Importing this package is cheap: torch and datasets are imported inside the functions that
need them, so `ftctl validate` never pays for them.
"""
