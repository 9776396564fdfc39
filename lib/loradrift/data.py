"""GLUE MRPC, SST-2 and RTE: loading, the one text format per task, and the study's splits.

Sources: a local folder in the classic GLUE TSV layout (``<dir>/RTE/train.tsv`` ...) or the
Hugging Face hub (``nyu-mll/glue``). Both are read with ``datasets`` and brought to one schema:
``text_a``, ``text_b`` (pairs only), ``label`` (a ClassLabel), ``idx``.

Splits (the same for every method and seed of a profile):

- **test**: the GLUE *validation* split (GLUE's own test labels are hidden). Never used to choose anything.
- **validation**: a stratified, seeded slice carved from GLUE train, for early stopping and model selection.
- **train**: the rest of GLUE train, optionally a stratified seeded subsample (the ``cpu`` profile).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict

from . import LoraDriftError
from .store import repo_root
from .tasks import get_task

HUB_ID = "nyu-mll/glue"


def texts(task: str, ds: datasets.Dataset) -> list[str]:
    t = get_task(task)
    return [t.text(a, b) for a, b in zip(ds["text_a"], ds["text_b"])]


def resolve_glue_source(source: str | None = "auto") -> str:
    """A local GLUE folder (as a string path) or the hub id.

    ``auto``: $LORADRIFT_GLUE_DIR, else ``../shared/data/glue`` beside the repository, else the hub.
    """
    if source in (None, "auto"):
        env = os.environ.get("LORADRIFT_GLUE_DIR")
        if env:
            source = env
        else:
            local = repo_root().parent / "shared" / "data" / "glue"
            return str(local) if local.is_dir() else HUB_ID
    if source == "hub" or source == HUB_ID:
        return HUB_ID
    if not Path(source).is_dir():
        raise LoraDriftError(
            f"GLUE folder {source} does not exist: point LORADRIFT_GLUE_DIR (or --glue-dir) at a folder "
            f"holding SST-2/, MRPC/ and RTE/ with train.tsv and dev.tsv, or use 'hub' to download {HUB_ID}")
    return str(Path(source).resolve())


def load_glue(task: str, source: str | None = "auto") -> DatasetDict:
    """GLUE ``train`` and ``validation`` of one task in the common schema."""
    get_task(task)
    src = resolve_glue_source(source)
    if src == HUB_ID:
        return _load_hub(task)
    return _load_local(task, Path(src))


def _load_local(task: str, root: Path) -> DatasetDict:
    info = get_task(task)
    folder = root / info.folder
    files = {"train": folder / "train.tsv", "validation": folder / "dev.tsv"}
    for f in files.values():
        if not f.exists():
            raise LoraDriftError(
                f"missing {f}: a GLUE folder needs {info.folder}/train.tsv and {info.folder}/dev.tsv "
                "(the classic GLUE TSV layout); set LORADRIFT_GLUE_DIR or --glue-dir to the right folder")
    out = {}
    for split, f in files.items():
        out[split] = _read_tsv(task, f)
    return DatasetDict(out)


def _read_tsv(task: str, path: Path) -> datasets.Dataset:
    """Read one GLUE TSV strictly: every row must have the header's number of fields and a known label."""
    info = get_task(task)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise LoraDriftError(f"{path} is empty: restore it from the GLUE distribution")
        need = [c for c in (info.a, info.b, info.label) if c]
        missing = [c for c in need if c not in header]
        if missing:
            raise LoraDriftError(f"{path}: header lacks columns {missing} (found {header}); "
                                 f"is this the {info.folder} file of the classic GLUE layout?")
        col = {c: header.index(c) for c in need}
        rows = {"text_a": [], "text_b": [], "label": [], "idx": []}
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise LoraDriftError(
                    f"{path}, line {lineno}: malformed row with {len(row)} tab-separated fields, "
                    f"expected {len(header)}; fix or re-download the file (GLUE TSVs have no quoting)")
            label = row[col[info.label]].strip()
            label_id = _label_id(task, label)
            if label_id is None:
                raise LoraDriftError(f"{path}, line {lineno}: unknown label {label!r}; "
                                     f"expected one of {list(info.names)} or their ids 0/1")
            rows["text_a"].append(row[col[info.a]])
            rows["text_b"].append(row[col[info.b]] if info.b else None)
            rows["label"].append(label_id)
            rows["idx"].append(len(rows["idx"]))
    if not rows["idx"]:
        raise LoraDriftError(f"{path} has a header but no rows: restore it from the GLUE distribution "
                             "(or point LORADRIFT_GLUE_DIR / --glue-dir at a complete GLUE folder)")
    feats = datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                               "label": ClassLabel(names=list(info.names)), "idx": datasets.Value("int32")})
    return datasets.Dataset.from_dict(rows, features=feats)


def _label_id(task: str, label: str) -> int | None:
    names = get_task(task).names
    if label in ("0", "1"):
        return int(label)
    return names.index(label) if label in names else None


def _load_hub(task: str) -> DatasetDict:
    from .models import hub_unreachable
    offline = hub_unreachable()
    if offline and offline != "HF_HUB_OFFLINE is set":  # offline mode reads the local cache of datasets
        raise LoraDriftError(f"could not load {HUB_ID}/{task}: the Hugging Face hub is unreachable ({offline}). "
                             "Point LORADRIFT_GLUE_DIR (or --glue-dir) at a local GLUE folder, or set "
                             "HF_HUB_OFFLINE=1 to use a copy downloaded before")
    try:
        raw = datasets.load_dataset(HUB_ID, task)
    except Exception as e:  # offline, no such dataset, ...
        raise LoraDriftError(
            f"could not load {HUB_ID}/{task} from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Offline? Point LORADRIFT_GLUE_DIR (or --glue-dir) at a local GLUE folder") from e
    a, b = get_task(task).hub
    out = {}
    for split in ("train", "validation"):
        ds = raw[split]
        out[split] = datasets.Dataset.from_dict({
            "text_a": ds[a], "text_b": ds[b] if b else [None] * len(ds),
            "label": ds["label"], "idx": list(range(len(ds)))},
            features=datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                                        "label": ClassLabel(names=list(get_task(task).names)),
                                        "idx": datasets.Value("int32")}))
    return DatasetDict(out)


def study_splits(prof: dict, task: str, source: str | None = None, unit: dict | None = None) -> DatasetDict:
    """``train`` / ``validation`` (carved from GLUE train) / ``test`` (GLUE validation) for a profile.

    The validation carve and the test split are the same for every unit. The training subset of
    ``train_size`` examples is drawn with ``data.split_seed`` (stratified; the same for every unit), or,
    with ``data.train_subset: seed``, with the unit's seed (``unit``: its config): then a seed varies the
    subset as well as the initialisation and data order, and one seed's subsets are nested (its first
    500 examples are its 250 and 250 more), so a learning curve adds data without swapping it."""
    d = prof["data"]
    sizes = (unit or {}).get("data", {}).get("sizes") or d["tasks"][task]
    seed = int(d.get("split_seed", 0))
    glue = load_glue(task, source if source is not None else d.get("source", "auto"))
    n, n_val = len(glue["train"]), int(sizes["validation_size"])
    if not 2 <= n_val <= n - 2:
        raise LoraDriftError(f"data.tasks.{task}.validation_size is {n_val}, but GLUE {task} train has {n} examples: "
                             f"set it between 2 and {n - 2} in profile {prof['name']!r}")
    carve = glue["train"].train_test_split(test_size=n_val,
                                           stratify_by_column="label", seed=seed)
    train, validation = carve["train"], carve["test"]
    per_seed = d.get("train_subset", "split_seed") == "seed"
    if per_seed and unit is None:
        pass   # no unit: the whole training pool (setup statistics, baselines)
    elif per_seed:
        n_sub = min(int(sizes.get("train_size") or len(train)), len(train))
        order = np.random.default_rng([int(seed), int(unit["seed"])]).permutation(len(train))
        train = train.select(np.sort(order[:n_sub]).tolist())
    elif sizes.get("train_size") and sizes["train_size"] < len(train):
        train = train.train_test_split(train_size=int(sizes["train_size"]),
                                       stratify_by_column="label", seed=seed)["train"]
    test = glue["validation"]
    if d.get("test_size") and d["test_size"] < len(test):
        test = test.train_test_split(train_size=int(d["test_size"]), stratify_by_column="label",
                                     seed=seed)["train"]
    return DatasetDict({"train": train, "validation": validation, "test": test})


def tokenize(task: str, ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids (no padding: batches are padded dynamically), labels and lengths."""
    fmt = get_task(task).text

    def enc(batch):
        t = [fmt(a, b) for a, b in zip(batch["text_a"], batch["text_b"])]
        out = tokenizer(t, truncation=True, max_length=max_length)
        out["labels"] = batch["label"]
        out["length"] = [len(x) for x in out["input_ids"]]
        return out
    return ds.map(enc, batched=True, remove_columns=ds.column_names, desc=f"tokenize {task}")


def tokenize_original_eval(task: str, ds: datasets.Dataset, tokenizer, max_length: int = 128) -> datasets.Dataset:
    """The original study's offline re-evaluation format for its full fine-tuned models: a pair as the
    tokenizer's own pair encoding (``tokenizer(a, b)``: no "[SEP]" text between the sentences, unlike
    training), truncated at 128 tokens. Padding does not change a Llama classifier's prediction (it reads
    the last real token), so batches are padded dynamically. A single sentence is as in `tokenize`."""
    def enc(batch):
        pair = get_task(task).b is not None
        out = tokenizer(batch["text_a"], batch["text_b"] if pair else None, truncation=True, max_length=max_length)
        out["labels"] = batch["label"]
        out["length"] = [len(x) for x in out["input_ids"]]
        return out
    return ds.map(enc, batched=True, remove_columns=ds.column_names, desc=f"tokenize {task} (original eval)")


def split_stats(task: str, splits: DatasetDict, tokenizer, max_length: int) -> list[dict]:
    """Size, label balance and token lengths of each split (the setup chapter's table)."""
    import numpy as np
    rows = []
    for name, ds in splits.items():
        lengths = np.array([len(x) for x in tokenizer(texts(task, ds))["input_ids"]])
        labels = np.array(ds["label"])
        rows.append({"task": task, "split": name, "n": len(ds), "positive_rate": float(labels.mean()),
                     "tokens_mean": float(lengths.mean()), "tokens_p95": float(np.percentile(lengths, 95)),
                     "tokens_max": int(lengths.max()), "truncated": float((lengths > max_length).mean()),
                     "tokens_total": int(np.minimum(lengths, max_length).sum())})
    return rows
