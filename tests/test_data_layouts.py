"""Benchmark tables (Parquet, Arrow, save_to_disk folders, JSONL, CSV) in the common
multiple-choice layouts, detected from their columns; data.columns for the rest."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from ensemble.config.loader import ConfigError, load_config
from ensemble.data.formats import read_gold, read_items
from ensemble.data.items import Item
from ensemble.data.tables import item_group
from ensemble.errors import EnsembleError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

# Two rows per layout, with the columns the public datasets have on the Hub.
LAYOUT_ROWS: dict[str, list[dict[str, Any]]] = {
    "mmlu_pro": [
        {"question_id": 70, "question": "Which body regulates advertising?", "options": ["ASA", "FDA", "IMF", "WHO"],
         "answer": "A", "answer_index": 0, "cot_content": "", "category": "business", "src": "ori_mmlu-marketing"},
        {"question_id": 71, "question": "What is 2 + 2?", "options": ["3", "4", "5", "6"],
         "answer": "B", "answer_index": 1, "cot_content": "", "category": "math", "src": "stemez-Math"},
    ],
    "mmlu": [
        {"question": "Which body regulates advertising?", "subject": "marketing", "choices": ["ASA", "FDA", "IMF", "WHO"],
         "answer": 0},
        {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    ],
    "arc": [
        {"id": "Mercury_1", "question": "Which body regulates advertising?",
         "choices": {"text": ["ASA", "FDA", "IMF", "WHO"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "NYSED_2", "question": "What is 2 + 2?",
         "choices": {"text": ["3", "4", "5", "6"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
    ],
    "ceval": [
        {"id": 0, "question": "Which body regulates advertising?", "A": "ASA", "B": "FDA", "C": "IMF", "D": "WHO",
         "answer": "A", "explanation": ""},
        {"id": 1, "question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "B",
         "explanation": "2 + 2 = 4"},
    ],
}
IDS = {"mmlu_pro": ["70", "71"], "mmlu": ["0", "1"], "arc": ["Mercury_1", "NYSED_2"], "ceval": ["0", "1"]}
GROUPS = {"mmlu_pro": ["business", "math"], "mmlu": ["marketing", "elementary_mathematics"], "arc": [None, None],
          "ceval": [None, None]}


def write_table(rows: list[dict[str, Any]], tmp_path: Path, kind: str) -> Path:
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
        return tmp_path / "t.parquet"
    if kind == "arrow-file":
        with pa.ipc.new_file(tmp_path / "t.arrow", pa.Table.from_pylist(rows).schema) as w:
            w.write_table(pa.Table.from_pylist(rows))
        return tmp_path / "t.arrow"
    if kind == "arrow-stream":  # the format of datasets' own .arrow shards
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
        (shard,) = (tmp_path / "ds").glob("*.arrow")
        return shard
    if kind == "save_to_disk":
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
        return tmp_path / "folder"
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["parquet", "arrow-file", "arrow-stream", "save_to_disk", "jsonl"])
@pytest.mark.parametrize("layout", list(LAYOUT_ROWS))
def test_each_layout_is_detected_in_each_file_type(layout: str, kind: str, tmp_path: Path) -> None:
    items = read_items(write_table(LAYOUT_ROWS[layout], tmp_path, kind))
    assert [it.id for it in items] == IDS[layout]
    assert [it.question for it in items] == ["Which body regulates advertising?", "What is 2 + 2?"]
    assert [it.options for it in items] == [("ASA", "FDA", "IMF", "WHO"), ("3", "4", "5", "6")]
    assert [it.answer for it in items] == ["A", "B"]
    assert [item_group(it.meta) for it in items] == GROUPS[layout]


def test_named_layout_format_equals_auto(tmp_path: Path) -> None:
    path = write_table(LAYOUT_ROWS["mmlu"], tmp_path, "parquet")
    assert read_items(path, format="mmlu") == read_items(path)


def test_csv_ceval_and_cmmlu(tmp_path: Path) -> None:
    ceval = tmp_path / "ceval_val.csv"
    ceval.write_text("id,question,A,B,C,D,answer,explanation\n0,What is 2 + 2?,3,4,5,6,B,\n", encoding="utf-8")
    assert read_items(ceval) == [Item("0", "What is 2 + 2?", ("3", "4", "5", "6"), "B")]
    cmmlu = tmp_path / "cmmlu_test.csv"
    with cmmlu.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["", "Question", "A", "B", "C", "D", "Answer"], ["0", "二加二等于几？", "3", "4", "5", "6", "B"]])
    (item,) = read_items(cmmlu)
    assert (item.id, item.question, item.options, item.answer) == ("0", "二加二等于几？", ("3", "4", "5", "6"), "B")


def test_missing_column_names_file_column_and_found_columns(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "question"} for r in LAYOUT_ROWS["arc"]]
    path = write_table(rows, tmp_path, "parquet")
    with pytest.raises(EnsembleError, match=r"t.parquet: row 1: missing column 'question' \(arc layout\); "
                                            r"found columns: id, choices, answerKey"):
        read_items(path)


def test_unknown_layout_names_found_columns_and_data_columns(tmp_path: Path) -> None:
    path = write_table([{"qid": "a", "prompt": "Why?", "label": "because"}], tmp_path, "parquet")
    with pytest.raises(EnsembleError, match=r"t.parquet:1: missing required field 'id'.*found columns: qid, prompt, "
                                            r"label.*data.columns"):
        read_items(path)


def test_data_columns_maps_another_layout(tmp_path: Path) -> None:
    rows = [{"qid": "a", "prompt": "Pick one", "opts": ["x", "y"], "label": "y", "topic": "toy"}]
    path = write_table(rows, tmp_path, "parquet")
    columns = {"id": "qid", "question": "prompt", "options": "opts", "answer": "label", "group": "topic"}
    (item,) = read_items(path, columns=columns)
    assert item == Item("a", "Pick one", ("x", "y"), "B") and item_group(item.meta) == "toy"
    with pytest.raises(EnsembleError, match=r"t.parquet: data.columns maps 'answer' to column 'gold', which is "
                                            r"missing; found columns: qid, prompt, opts, label, topic"):
        read_items(path, columns={"answer": "gold"})


def test_dataset_dict_folder_names_its_splits(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_list(LAYOUT_ROWS["mmlu"])
    datasets.DatasetDict({"test": ds, "validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(EnsembleError, match=r"dd: a DatasetDict folder with splits test, validation; .*dd/test"):
        read_items(tmp_path / "dd")
    assert len(read_items(tmp_path / "dd" / "test")) == 2


def test_unreadable_table_and_plain_folder(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(EnsembleError, match=r"bad.parquet: cannot read the table"):
        read_items(tmp_path / "bad.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EnsembleError, match=r"empty: a folder but not a datasets.save_to_disk folder"):
        read_items(tmp_path / "empty")


def test_missing_datasets_library_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    path = write_table(LAYOUT_ROWS["mmlu"], tmp_path, "save_to_disk")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(EnsembleError, match=r"folder: reading this file needs datasets: pip install 'ensemble\[data\]'"):
        read_items(path)


def test_gold_from_a_parquet_benchmark(tmp_path: Path) -> None:
    assert read_gold(write_table(LAYOUT_ROWS["mmlu_pro"], tmp_path, "parquet")) == {"70": "A", "71": "B"}


# -- through the config: vote train / vote run readers -------------------------------
def test_training_rows_from_parquet_with_data_columns(tmp_path: Path) -> None:
    from ensemble.training import load_training_rows

    rows = [{"qid": f"q{k}", "prompt": f"Q{k}?", "opts": ["x", "y"], "label": "x"} for k in range(3)]
    path = write_table(rows, tmp_path, "parquet")
    (tmp_path / "c.yaml").write_text("data:\n  columns: {id: qid, question: prompt, options: opts, answer: label}\n")
    cfg = load_config(tmp_path / "c.yaml", [f"data.train={path}"])
    assert [r.id for r in load_training_rows(cfg, tmp_path / "out")] == ["q0", "q1", "q2"]


def test_run_split_from_save_to_disk_folder(tmp_path: Path) -> None:
    from ensemble.data.splits import load_split_items

    folder = write_table(LAYOUT_ROWS["mmlu_pro"], tmp_path, "save_to_disk")
    (tmp_path / "c.yaml").write_text("")
    cfg = load_config(tmp_path / "c.yaml", [f"data.test={folder}", "run.splits=[test]",
                                                    "run.methods=[majority]"])
    items = load_split_items(cfg, ["test"])["test"]
    assert [it.id for it in items] == ["70", "71"]


def test_data_columns_unknown_field_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("data:\n  columns: {questoin: prompt}\n")
    with pytest.raises(ConfigError, match=r"field 'data.columns' is 'questoin'.*Did you mean 'question'"):
        load_config(tmp_path / "c.yaml")
