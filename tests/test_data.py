"""GLUE loading, the one text format, splits, and the errors a user meets with bad data."""
from __future__ import annotations

import pytest

from loradrift import LoraDriftError
from loradrift.config import load_profile
from loradrift.data import load_glue, resolve_glue_source, study_splits
from loradrift.tasks import get_task, task_metric
from conftest import SHARED_GLUE


def test_local_glue_schema_and_labels(tiny_glue):
    for task in ("rte", "mrpc", "sst2"):
        ds = load_glue(task, str(tiny_glue))
        assert set(ds) == {"train", "validation"}
        assert ds["train"].features["label"].num_classes == 2
        assert set(ds["train"]["label"]) == {0, 1}
    mrpc = load_glue("mrpc", str(tiny_glue))["train"]
    assert mrpc[0]["text_a"] and mrpc[0]["text_b"]  # the BOM-prefixed header was read
    rte = load_glue("rte", str(tiny_glue))["train"]
    assert rte[0]["label"] == 0 and rte.features["label"].names[0] == "entailment"


def test_format_is_the_originals():
    assert get_task("sst2").text(" a fine film ") == "a fine film"
    assert get_task("rte").text("A man sleeps.", "Someone sleeps.") == "A man sleeps. [SEP] Someone sleeps."
    assert task_metric("mrpc") == "f1" and task_metric("rte") == "accuracy"


def test_splits_are_disjoint_stratified_and_seeded(tiny_profile, tiny_glue):
    prof = load_profile(str(tiny_profile))
    a = study_splits(prof, "sst2")
    b = study_splits(prof, "sst2")
    assert a["train"]["idx"] == b["train"]["idx"]  # deterministic
    assert not set(a["train"]["idx"]) & set(a["validation"]["idx"])  # validation carved from train
    assert len(a["train"]) == 40 and len(a["validation"]) == 16
    assert len(a["test"]) == len(load_glue("sst2", str(tiny_glue))["validation"])  # test = GLUE validation
    assert abs(sum(a["validation"]["label"]) / 16 - 0.5) <= 1 / 16  # stratified


def test_unknown_task_is_a_clear_error():
    with pytest.raises(LoraDriftError, match="unknown task 'cola'.*rte"):
        get_task("cola")


def test_missing_glue_folder_names_the_fix(tmp_path):
    with pytest.raises(LoraDriftError, match="LORADRIFT_GLUE_DIR"):
        resolve_glue_source(str(tmp_path / "nowhere"))
    (tmp_path / "RTE").mkdir()
    with pytest.raises(LoraDriftError, match="RTE/train.tsv"):
        load_glue("rte", str(tmp_path))


def test_malformed_row_names_file_and_line(tmp_path, tiny_glue):
    import shutil
    bad = tmp_path / "glue"
    shutil.copytree(tiny_glue, bad)
    f = bad / "RTE" / "train.tsv"
    lines = f.read_text().splitlines()
    lines[5] = lines[5].replace("\t", " ", 1)  # one field fewer
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(LoraDriftError, match=r"train.tsv, line 6: malformed row"):
        load_glue("rte", str(bad))


def test_unknown_label_is_reported(tmp_path, tiny_glue):
    import shutil
    bad = tmp_path / "glue"
    shutil.copytree(tiny_glue, bad)
    f = bad / "SST-2" / "dev.tsv"
    f.write_text(f.read_text().replace("\t1\n", "\tmaybe\n", 1))
    with pytest.raises(LoraDriftError, match="unknown label 'maybe'"):
        load_glue("sst2", str(bad))


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"{SHARED_GLUE} not present")
def test_official_glue_files_read_completely():
    sizes = {"rte": (2490, 277), "mrpc": (3668, 408), "sst2": (67349, 872)}
    for task, (n_train, n_val) in sizes.items():
        ds = load_glue(task, str(SHARED_GLUE))
        assert (len(ds["train"]), len(ds["validation"])) == (n_train, n_val)
    mrpc = load_glue("mrpc", str(SHARED_GLUE))["validation"]
    assert sum(mrpc["label"]) == 279  # SOURCES.md: dev has 279 positives


def test_header_without_rows_is_named_before_anything_is_written(tiny_profile, tiny_glue, book_root):
    """A TSV with its header and no rows: one line naming it, and no unit folder left behind."""
    import shutil

    from loradrift.train import train_unit
    bad = book_root / "glue"
    shutil.copytree(tiny_glue, bad)
    f = bad / "SST-2" / "train.tsv"
    f.write_text(f.read_text().splitlines()[0] + "\n")
    with pytest.raises(LoraDriftError, match=r"SST-2/train.tsv has a header but no rows"):
        train_unit(load_profile(str(tiny_profile)), "sst2", "lora", 1, glue_source=str(bad))
    assert not (book_root / "artifacts" / "tiny" / "runs").exists()  # no empty checkpoints/ folder


def test_a_validation_slice_larger_than_train_is_named(tiny_profile):
    prof = load_profile(str(tiny_profile))
    prof["data"]["tasks"]["rte"]["validation_size"] = 64  # tiny RTE train has 64 rows
    with pytest.raises(LoraDriftError, match=r"data.tasks.rte.validation_size is 64.*between 2 and 62"):
        study_splits(prof, "rte")
