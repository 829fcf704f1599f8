"""Dataset readers: items (jsonl / csv / nested / .json list), gold files, chat examples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ensemble.data.chat import CHAT_FORMATS, ChatExample, read_chat_examples
from ensemble.data.formats import FORMATS, read_gold, read_items
from ensemble.data.items import Item
from ensemble.errors import EnsembleError

DATA = Path(__file__).parent / "data"
BOXES = ("有三个盒子，分别标记为红、绿、蓝。每个盒子里恰好有一枚硬币、一把钥匙或一张卡片中的一种，"
         "且各不相同。红盒里不是钥匙；绿盒里是卡片。")
SORTING = "A list holds the numbers 4, 9 and 2. Sorting puts the smallest first."
BIRDS = "Every bird in the park can fly. Tom is a bird in the park."
SAMPLE_ITEMS = [
    Item("sample_000#1", "选择题 1：\n红盒里是什么？", ("硬币", "钥匙", "卡片"), "A", BOXES),
    Item("sample_000#2", "选择题 2：\n蓝盒里是什么？", ("硬币", "钥匙", "卡片"), "B", BOXES),
    Item("sample_001#1", "Question 1:\nWhich number comes first after sorting?", ("4", "9", "2", "none of them"),
         "C", SORTING),
    Item("sample_002#1", "Question 1:\nCan Tom fly?", ("yes", "no"), "A", BIRDS),
    Item("sample_002#2", "Question 2:\nIs every animal in the park able to fly?", ("yes", "no", "cannot be decided"),
         "C", BIRDS),
]


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ---------------------------------------------------------------------------
# The shared samples (nested competition format).

def test_reads_sample_train_file_exactly() -> None:
    items = read_items(DATA / "logic_nested_train.jsonl")
    assert items == SAMPLE_ITEMS
    assert [it.meta for it in items] == [{"problem_id": "sample_000", "k": 1}, {"problem_id": "sample_000", "k": 2},
                                         {"problem_id": "sample_001", "k": 1}, {"problem_id": "sample_002", "k": 1},
                                         {"problem_id": "sample_002", "k": 2}]


def test_reads_sample_test_file_without_answers() -> None:
    items = read_items(DATA / "logic_nested_test.jsonl", format="nested")
    assert [it.id for it in items] == [it.id for it in SAMPLE_ITEMS]
    assert [it.answer for it in items] == [None] * 5
    assert [(it.question, it.options, it.context) for it in items] == \
        [(it.question, it.options, it.context) for it in SAMPLE_ITEMS]


def test_nested_int_id_extra_fields_go_to_meta(tmp_path: Path) -> None:
    row = {"id": 7, "kind": "boxes", "problem": "P", "questions": [
        {"question": "q1", "options": ["a", "b"], "answer": "b", "note": "x"}]}
    (item,) = read_items(write(tmp_path, "n.jsonl", jsonl(row)))
    assert item == Item("7#1", "q1", ("a", "b"), "B", "P")
    assert item.meta == {"kind": "boxes", "note": "x", "problem_id": "7", "k": 1}


# ---------------------------------------------------------------------------
# Flat rows: JSONL, a .json list, CSV.

def test_flat_jsonl_fields_meta_and_answer_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "flat.jsonl", jsonl(
        {"id": 1, "question": "2+2?", "options": ["3", "4"], "answer": "4", "source": "math"},
        {"id": "q2", "question": "Pick B", "options": ["x", "y", "z"], "answer": "B", "context": "ctx"},
        {"id": "q3", "question": "Open question", "answer": "  forty two "},
        {"id": "q4", "question": "Unanswered", "options": ["p", "q"]}))
    items = read_items(path)
    assert items == [Item("1", "2+2?", ("3", "4"), "B"), Item("q2", "Pick B", ("x", "y", "z"), "B", "ctx"),
                     Item("q3", "Open question", (), "forty two"), Item("q4", "Unanswered", ("p", "q"), None)]
    assert items[0].meta == {"source": "math"} and items[1].meta == {}


def test_letter_wins_over_an_option_whose_text_is_a_letter(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl({"id": "a", "question": "q", "options": ["B", "A"], "answer": "A"},
                                            {"id": "b", "question": "q", "options": ["B", "A"], "answer": 3},
                                            {"id": "c", "question": "q", "options": ["1", "3"], "answer": 3}))
    with pytest.raises(EnsembleError, match=r"f\.jsonl:2: field 'answer': '3' is neither"):
        read_items(path)
    path = write(tmp_path, "g.jsonl", jsonl({"id": "a", "question": "q", "options": ["B", "A"], "answer": "A"},
                                            {"id": "c", "question": "q", "options": ["1", "3"], "answer": 3}))
    assert [it.answer for it in read_items(path)] == ["A", "B"]


def test_json_list_file(tmp_path: Path) -> None:
    rows = [{"id": "a", "question": "q", "options": ["x", "y"], "answer": "y"}, {"id": "b", "question": "r"}]
    items = read_items(write(tmp_path, "list.json", json.dumps(rows, indent=2)))
    assert items == [Item("a", "q", ("x", "y"), "B"), Item("b", "r")]


def test_json_list_errors_name_the_element_line(tmp_path: Path) -> None:
    text = '[\n  {"id": "a", "question": "q"},\n\n  {"id": "b"}\n]\n'
    with pytest.raises(EnsembleError, match=r"list\.json:4: missing required field 'question'"):
        read_items(write(tmp_path, "list.json", text))
    with pytest.raises(EnsembleError, match=r"bad\.json:3: invalid JSON .*one list of objects"):
        read_items(write(tmp_path, "bad.json", '[\n {"id": "a"},\n {"id": }\n]'))


def test_csv_with_letter_columns_and_answer_text(tmp_path: Path) -> None:
    text = ("id,question,A,B,C,D,answer,topic\n"
            "1,哪个数最大？,3,9,5,,9,数字\n"
            "2,\"Two, options\",yes,no,,,A,\n"
            "3,Open one,,,,,forty,\n")
    items = read_items(write(tmp_path, "mc.csv", text))
    assert items == [Item("1", "哪个数最大？", ("3", "9", "5"), "B"), Item("2", "Two, options", ("yes", "no"), "A"),
                     Item("3", "Open one", (), "forty")]
    assert items[0].meta == {"topic": "数字"} and items[1].meta == {}


def test_csv_with_json_options_cell_and_bom(tmp_path: Path) -> None:
    text = ('id,question,options,answer,context\n'
            'q1,红盒里是什么？,"[""硬币"", ""钥匙""]",钥匙,盒子\n'
            '\n'
            'q2,Pick,"[""a"",""b""]",A,\n')
    items = read_items(write(tmp_path, "opts.csv", "\ufeff" + text))
    assert items == [Item("q1", "红盒里是什么？", ("硬币", "钥匙"), "B", "盒子"), Item("q2", "Pick", ("a", "b"), "A")]


def test_bom_blank_lines_and_chinese_in_jsonl(tmp_path: Path) -> None:
    row = {"id": "z", "question": "谁最高？", "options": ["小明", "小红"], "answer": "小红"}
    text = "\ufeff\n" + jsonl(row) + "\n\n"
    assert read_items(write(tmp_path, "zh.jsonl", text)) == [Item("z", "谁最高？", ("小明", "小红"), "B")]


def test_format_names_are_registered() -> None:
    assert FORMATS.names() == ["jsonl", "csv", "nested", "mmlu_pro", "mmlu", "arc", "ceval"]
    assert CHAT_FORMATS.names() == ["alpaca", "sharegpt"]


def test_explicit_csv_format_on_another_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, "table.txt", "id,question\nq,what?\n")
    assert read_items(path, format="csv") == [Item("q", "what?")]


# ---------------------------------------------------------------------------
# Errors: each names file:line and the fix.

Q = {"id": "q1", "question": "q", "options": ["a", "b", "c"]}
ERRORS = [
    ("bad.jsonl", jsonl(Q) + '{"id": "q2", "question": }\n', r"bad\.jsonl:2: invalid JSON \(Expecting value"),
    ("f.jsonl", jsonl({"id": "q1"}), r"f\.jsonl:1: missing required field 'question'; every row needs"),
    ("f.jsonl", "\n" + jsonl({"question": "q"}), r"f\.jsonl:2: missing required field 'id'"),
    ("f.jsonl", jsonl({**Q, "answer": "D"}), r"f\.jsonl:1: field 'answer': 'D' is neither an option letter \(A-C\)"),
    ("f.jsonl", jsonl({**Q, "answer": "d"}), r"f\.jsonl:1: field 'answer': 'd' is neither .* exact text"),
    ("f.jsonl", jsonl({**Q, "options": ["a", "a"], "answer": "a"}),
     r"f\.jsonl:1: field 'answer': 'a' matches options A and B"),
    ("f.jsonl", jsonl(Q, {**Q, "id": "q2"}, Q), r"f\.jsonl:3: duplicate id 'q1' \(first on line 1\)"),
    ("f.jsonl", "", r"f\.jsonl: the file is empty"),
    ("f.jsonl", "\n  \n", r"f\.jsonl: the file is empty"),
    ("f.csv", "id,question\n", r"f\.csv: the file is empty"),
    ("f.jsonl", jsonl({**Q, "options": ["a", 2]}), r"f\.jsonl:1: field 'options': options must be a list of strings"),
    ("f.jsonl", jsonl({**Q, "options": "a, b"}), r"f\.jsonl:1: field 'options': options must be a list of strings"),
    ("f.jsonl", jsonl({**Q, "options": ["only"]}), r"f\.jsonl:1: field 'options': 1 options; .* needs 2 to 26"),
    ("f.jsonl", jsonl({**Q, "id": 1.5}), r"f\.jsonl:1: field 'id': expected a string or integer id"),
    ("f.jsonl", jsonl({**Q, "question": ["q"]}), r"f\.jsonl:1: field 'question': expected a non-empty string"),
    ("f.jsonl", "[1, 2]\n", r"f\.jsonl:1: expected a JSON object \{\.\.\.\}, got int"),
    ("f.jsonl", jsonl(Q) + "[1]\n", r"f\.jsonl:2: expected a JSON object \{\.\.\.\}, got list"),
    ("n.jsonl", jsonl({"id": "p", "problem": "x", "questions": [{"question": "a", "options": ["x", "y"]},
                                                                {"question": "b"}]}),
     r"n\.jsonl:1: field 'questions\[1\]': each sub-question needs 'question' and 'options'"),
    ("n.jsonl", jsonl({"id": "p", "questions": [{"question": "a", "options": ["x", "y"], "answer": "C"}]}),
     r"n\.jsonl:1: field 'questions\[0\]\.answer': 'C' is neither an option letter \(A-B\)"),
    ("n.jsonl", jsonl({"id": "p", "questions": "a"}), r"n\.jsonl:1: field 'questions': expected a list"),
    ("n.jsonl", jsonl({"id": "p", "questions": [{"question": "a", "options": ["x", "y"]}]},
                      {"id": "p", "questions": [{"question": "b", "options": ["x", "y"]}]}),
     r"n\.jsonl:2: duplicate id 'p#1' \(first on line 1\)"),
    ("f.csv", "id,question,A,B,C\nq,x,a,,c\n", r"f\.csv:2: option column B is empty but a later one is set"),
    ("f.csv", "id,question,options\nq,x,a b\n", r"f\.csv:2: field 'options': not a JSON list"),
    ("f.csv", "id,question,options,A\nq,x,\"[\"\"a\"\"]\",b\n", r"f\.csv:2: both an 'options' cell and option columns"),
    ("f.csv", "id,question\n\nq,x,extra\n", r"f\.csv:3: 3 cells but the header has 2; quote cells"),
    ("f.csv", "id,id\n1,2\n", r"f\.csv:1: duplicate column 'id' in the header"),
    ("latin.jsonl", None, r"latin\.jsonl: not UTF-8 text .*save it as UTF-8"),
]


@pytest.mark.parametrize("name, text, match", ERRORS)
def test_read_items_errors(tmp_path: Path, name: str, text: str | None, match: str) -> None:
    path = write(tmp_path, name, jsonl({"id": "é", "question": "é"}), "latin-1") if text is None else \
        write(tmp_path, name, text)
    with pytest.raises(EnsembleError, match=match):
        read_items(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match=r"Unknown data format 'nestd'\. Did you mean 'nested'\? "
                                            r"Available: jsonl, csv, nested"):
        read_items(DATA / "logic_nested_test.jsonl", format="nestd")
    with pytest.raises(EnsembleError, match=r"nope\.jsonl: cannot read the file \(No such file"):
        read_items(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------
# Gold files.

def test_read_gold_rows_and_items_files(tmp_path: Path) -> None:
    assert read_gold(write(tmp_path, "g.jsonl", jsonl({"item": "a#1", "answer": "B"}, {"item": 2, "answer": " C "}))) \
        == {"a#1": "B", "2": "C"}
    assert read_gold(write(tmp_path, "g.csv", "id,answer\nx,A\ny,D\n")) == {"x": "A", "y": "D"}
    assert read_gold(DATA / "logic_nested_train.jsonl") == \
        {"sample_000#1": "A", "sample_000#2": "B", "sample_001#1": "C", "sample_002#1": "A", "sample_002#2": "C"}
    assert read_gold(DATA / "logic_nested_test.jsonl") == {}


def test_read_gold_errors(tmp_path: Path) -> None:
    with pytest.raises(EnsembleError, match=r"g\.jsonl:2: duplicate id 'a' \(first on line 1\)"):
        read_gold(write(tmp_path, "g.jsonl", jsonl({"item": "a", "answer": "B"}, {"item": "a", "answer": "C"})))
    with pytest.raises(EnsembleError, match=r"h\.jsonl:1: missing required field 'answer'"):
        read_gold(write(tmp_path, "h.jsonl", jsonl({"item": "a"})))
    with pytest.raises(EnsembleError, match=r"i\.csv:2: missing required field 'id'"):
        read_gold(write(tmp_path, "i.csv", "name,answer\na,B\n"))


# ---------------------------------------------------------------------------
# Chat examples (LLaMA-Factory formats).

def test_alpaca_with_system_history_and_input(tmp_path: Path) -> None:
    path = write(tmp_path, "alpaca.json", json.dumps([
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be brief.",
         "history": [["Hi", "Hello!"]]},
        {"id": "x", "instruction": "翻译：猫", "output": "cat"},
    ], ensure_ascii=False))
    assert read_chat_examples(path) == [
        ChatExample("alpaca:1", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"},
                                 {"role": "user", "content": "Add the numbers.\n2 and 3"}), "5"),
        ChatExample("x", ({"role": "user", "content": "翻译：猫"},), "cat"),
    ]


def test_sharegpt_conversations_and_messages(tmp_path: Path) -> None:
    path = write(tmp_path, "chat.jsonl", jsonl(
        {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                           {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}], "system": "S"},
        {"id": "m", "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "你好"},
                                 {"role": "assistant", "content": "您好"}]}))
    assert read_chat_examples(path) == [
        ChatExample("chat:1", ({"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                               {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}), "A2"),
        ChatExample("m", ({"role": "system", "content": "sys"}, {"role": "user", "content": "你好"}), "您好"),
    ]
    assert read_chat_examples(path, format="sharegpt") == read_chat_examples(path)


TURN = {"from": "human", "value": "q"}
CHAT_ERRORS = [
    (jsonl({"instruction": "do"}), "alpaca",
     r"c\.jsonl:1: missing required field 'output'; every row needs instruction"),
    (jsonl({"instruction": "do", "output": "x", "history": [["only one"]]}), "auto",
     r"c\.jsonl:1: field 'history\[0\]': expected a \[user, assistant\] pair"),
    (jsonl({"conversations": [TURN, {"from": "bot", "value": "a"}]}), "auto",
     r"c\.jsonl:1: field 'conversations\[1\]': expected \{'from': human\|gpt\|system"),
    (jsonl({"conversations": [TURN, TURN]}), "auto",
     r"c\.jsonl:1: field 'conversations\[1\]': a user turn where a assistant turn belongs"),
    (jsonl({"conversations": [{"from": "gpt", "value": "a"}]}), "auto",
     r"c\.jsonl:1: field 'conversations\[0\]': a assistant turn where a user turn belongs"),
    (jsonl({"messages": [{"role": "user", "content": "q"}]}), "auto",
     r"c\.jsonl:1: field 'messages': the last turn must be the assistant reply"),
    (jsonl({"messages": [{"role": "user", "content": [{"type": "text"}]}]}), "auto",
     r"c\.jsonl:1: field 'messages\[0\]': expected"),
    # regression: an unhashable role was a raw TypeError ("unhashable type: 'list'")
    (jsonl({"conversations": [{"from": ["human"], "value": "q"}]}), "auto",
     r"c\.jsonl:1: field 'conversations\[0\]': expected \{'from': human\|gpt\|system"),
    (jsonl({"prompt": "q", "completion": "a"}), "auto",
     r"c\.jsonl:1: cannot tell the chat format from fields \['completion', 'prompt'\]"),
    (jsonl({"id": 1, "instruction": "a", "output": "b"}, {"id": 1, "instruction": "a", "output": "b"}), "auto",
     r"c\.jsonl:2: duplicate id '1' \(first on line 1\)"),
    (jsonl({"instruction": "a", "output": "b"}), "alpca", r"Unknown chat format 'alpca'\. Did you mean 'alpaca'\?"),
]


@pytest.mark.parametrize("text, fmt, match", CHAT_ERRORS)
def test_chat_errors(tmp_path: Path, text: str, fmt: str, match: str) -> None:
    with pytest.raises(EnsembleError, match=match):
        read_chat_examples(write(tmp_path, "c.jsonl", text), format=fmt)
