"""Tests for turnrl.scenarios: loading scenarios from data, and splitting them."""

import builtins
import json
from pathlib import Path

import pytest

from turnrl.environments import check_env
from turnrl.environments.tasks import ArithmeticEnvironment
from turnrl.scenarios import load_scenarios, record_to_scenario, split_scenarios
from turnrl.types import Message, Scenario, assistant, system, user

SAMPLE = Path(__file__).parent.parent / "examples" / "data" / "arithmetic_sample.jsonl"

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
RECORDS = [
    {"id": "q1", "prompt": "What is 3+4?", "answer": "7"},
    {"id": "q2", "prompt": CHAT, "answer": "hello", "persona": "terse"},
]
# The same, with a chat-style prompt in every row: an Arrow column holds one type.
CHAT_RECORDS = [{**RECORDS[0], "prompt": [{"role": "user", "content": "What is 3+4?"}]}, RECORDS[1]]


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def datasets(tmp_path, monkeypatch):
    """The datasets package, caching under tmp_path; the test is skipped without it."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


def to_dataset(datasets, records):
    """A Dataset of the records; a key missing from a record is None, as in Arrow files."""
    # (Dataset.from_list would take its columns from the first record only.)
    keys = list(dict.fromkeys(k for r in records for k in r))
    return datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys})


def check_records_loaded(scenarios):
    """RECORDS (or an equivalent source) loaded with the default field mapping."""
    assert [s.id for s in scenarios] == ["q1", "q2"]
    assert scenarios[0].prompt == [user("What is 3+4?")]
    assert scenarios[0].data == {"answer": "7"}
    assert scenarios[1].prompt == [system("Be brief."), user("Hi")]
    assert scenarios[1].data == {"answer": "hello", "persona": "terse"}


# --- in-memory sources -----------------------------------------------------------


def test_list_of_strings_gives_user_prompts_with_index_ids():
    scenarios = load_scenarios(["What is 1+1?", "What is 2+2?"])
    assert [s.id for s in scenarios] == ["scenario-0", "scenario-1"]
    assert scenarios[1].prompt == [user("What is 2+2?")]
    assert scenarios[1].data == {}
    assert [s.id for s in load_scenarios(["a", "b"], name="mine")] == ["mine-0", "mine-1"]


def test_list_of_dicts_maps_prompt_id_and_data():
    check_records_loaded(load_scenarios(RECORDS))


def test_list_of_scenarios_passes_through_unchanged():
    given = [Scenario(id="s", prompt=[user("x")], data={"k": 1}), Scenario(id="t")]
    assert load_scenarios(given, system="ignored for Scenario objects") == given


def test_mixed_list_and_generator_source():
    scenarios = load_scenarios(item for item in ["plain", {"id": "d", "prompt": "dict"}])
    assert [s.id for s in scenarios] == ["scenario-0", "d"]


def test_custom_fields_and_system_default():
    records = [
        {"qid": 5, "question": "What is 2*3?", "id": "kept-in-data"},
        {"qid": "x", "question": CHAT},
    ]
    scenarios = load_scenarios(records, prompt_field="question", id_field="qid", system="Sys.")
    assert [s.id for s in scenarios] == ["5", "x"]
    # Prepended where the prompt has no system message; the record's own one wins.
    assert scenarios[0].prompt == [system("Sys."), user("What is 2*3?")]
    assert scenarios[1].prompt == [system("Be brief."), user("Hi")]
    assert scenarios[0].data == {"id": "kept-in-data"}


def test_prompt_field_none_puts_every_field_in_data():
    (scenario,) = load_scenarios([{"a": 3, "op": "+", "b": 4}], prompt_field=None)
    assert scenario.prompt == [] and scenario.data == {"a": 3, "op": "+", "b": 4}


def test_scenario_dumps_load_back_unchanged(tmp_path):
    given = [
        Scenario(id="s1", prompt=[user("What is 3+4?")], data={"answer": 7}),
        Scenario(id="s2", prompt=[system("Sys"), user("Hi")], data={"persona": {"age": 3}}),
    ]
    path = write_jsonl(tmp_path / "dump.jsonl", [s.model_dump_json() for s in given])
    assert load_scenarios(path) == given


def test_record_to_scenario_reports_where():
    with pytest.raises(ValueError, match=r"^record 4: no prompt field 'prompt'"):
        record_to_scenario({"question": "x"}, index=4)


# --- files -----------------------------------------------------------------------


def test_jsonl_with_chat_and_string_prompts(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps(r) for r in RECORDS])
    check_records_loaded(load_scenarios(path))
    check_records_loaded(load_scenarios(str(path)))  # str and Path both work


def test_jsonl_skips_blank_lines_and_ids_use_the_stem(tmp_path):
    lines = ['{"prompt": "a"}', "", '{"prompt": "b"}']
    scenarios = load_scenarios(write_jsonl(tmp_path / "qs.jsonl", lines))
    assert [s.id for s in scenarios] == ["qs-0", "qs-1"]


def test_json_list(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    check_records_loaded(load_scenarios(path))


def test_json_file_of_json_lines(tmp_path):
    # datasets reads a .json file that is not a list as JSON Lines; so do we.
    path = write_jsonl(tmp_path / "qa.json", [json.dumps(r) for r in RECORDS])
    check_records_loaded(load_scenarios(path))


def test_parquet_through_datasets(tmp_path, datasets):
    path = tmp_path / "qa.parquet"
    to_dataset(datasets, CHAT_RECORDS).to_parquet(str(path))
    # Arrow gives q1 persona=None; a None field of a dataset row counts as missing.
    check_records_loaded(load_scenarios(path))


def test_parquet_chat_messages_with_sparse_keys(tmp_path, datasets):
    # One message has a key the others lack; Parquet fills None, which is dropped.
    records = [
        {"id": "a", "prompt": [{"role": "user", "content": "Hi", "token_ids": [1, 2]}]},
        {"id": "b", "prompt": [{"role": "user", "content": "Yo"}]},
    ]
    path = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(records).to_parquet(str(path))
    scenarios = load_scenarios(path)
    assert scenarios[1].prompt == [user("Yo")]
    assert scenarios[0].prompt == [Message(role="user", content="Hi", token_ids=[1, 2])]


def test_csv_through_datasets(tmp_path, datasets):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,answer\nWhat is 3+4?,7\nWhat is 1+1?,2\n", encoding="utf-8")
    scenarios = load_scenarios(path)
    assert [s.id for s in scenarios] == ["qa-0", "qa-1"]
    assert scenarios[0].prompt == [user("What is 3+4?")]
    assert scenarios[1].data == {"answer": 2}


def test_save_to_disk_directory_and_splits(tmp_path, datasets):
    dataset = to_dataset(datasets, CHAT_RECORDS)
    dataset.save_to_disk(str(tmp_path / "one"))
    check_records_loaded(load_scenarios(tmp_path / "one"))

    other = datasets.Dataset.from_list([{"id": "t", "prompt": "test question"}])
    datasets.DatasetDict({"train": dataset, "test": other}).save_to_disk(str(tmp_path / "two"))
    check_records_loaded(load_scenarios(tmp_path / "two"))  # "train" by default
    assert [s.id for s in load_scenarios(tmp_path / "two", split="test")] == ["t"]
    with pytest.raises(ValueError, match=r"no split 'dev'; pass split= one of \['test', 'train'\]"):
        load_scenarios(tmp_path / "two", split="dev")


def test_dataset_objects(datasets):
    dataset = to_dataset(datasets, CHAT_RECORDS)
    check_records_loaded(load_scenarios(dataset))
    check_records_loaded(load_scenarios(datasets.DatasetDict({"only": dataset})))
    bad = datasets.Dataset.from_list([{"prompt": "ok"}, {"prompt": ""}])
    with pytest.raises(ValueError, match=r"^dataset row 1: field 'prompt' is an empty string"):
        load_scenarios(bad)


def test_missing_datasets_package_names_the_install(tmp_path, monkeypatch):
    path = tmp_path / "qa.parquet"
    path.write_bytes(b"not read")
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_scenarios(path)


# --- errors ----------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b",'])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        load_scenarios(path)


def test_missing_prompt_field_names_the_field_and_line(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ['{"prompt": "a"}', '{"question": "b"}'])
    with pytest.raises(ValueError, match=r"qa\.jsonl:2: no prompt field 'prompt'.*'question'"):
        load_scenarios(path)
    with pytest.raises(ValueError, match=r"item 0: no prompt field 'text'"):
        load_scenarios([{"prompt": "x"}], prompt_field="text")


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ('"just a string"', None),  # a string line is a prompt: not an error
        ("[1, 2]", r"expected an object with a 'prompt' field, got list"),
        ('{"prompt": 3}', r"field 'prompt' must be a string or a non-empty list"),
        ('{"prompt": []}', r"field 'prompt' must be a string or a non-empty list"),
        ('{"prompt": [{"role": "robot", "content": "x"}]}', r"prompt\[0\] is not a valid message"),
        ('{"prompt": [{"content": "x"}]}', r"prompt\[0\] is not a valid message"),
        ('{"prompt": "x", "id": null}', r"field 'id' must be a non-empty string or an integer"),
        ('{"prompt": "x", "answer": 1, "data": {"answer": 2}}', r"fields \['answer'\] are both"),
    ],
)
def test_bad_records_name_the_line_and_problem(tmp_path, record, problem):
    path = write_jsonl(tmp_path / "qa.jsonl", ['{"prompt": "fine"}', record])
    if problem is None:
        assert load_scenarios(path)[1].prompt == [user("just a string")]
        return
    with pytest.raises(ValueError, match=r"qa\.jsonl:2: " + problem):
        load_scenarios(path)


def test_bad_item_in_json_list_names_the_item(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"nope": 1}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"qa\.json: item 1: no prompt field"):
        load_scenarios(path)


def test_duplicate_ids_are_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl", ['{"id": 1, "prompt": "a"}', '{"id": "1", "prompt": "b"}']
    )
    with pytest.raises(
        ValueError, match=r"qa\.jsonl:2: duplicate scenario id '1' \(first at .*:1\)"
    ):
        load_scenarios(path)


def test_explicit_id_field_must_exist():
    with pytest.raises(ValueError, match=r"item 0: no id field 'qid'"):
        load_scenarios([{"prompt": "x"}], id_field="qid")


@pytest.mark.parametrize("source", ["org/some-dataset", "missing.jsonl"])
def test_nonexistent_path_says_only_local_files(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"only loads local files.*never the Hugging Face Hub"
    ):
        load_scenarios(source)


def test_unsupported_sources(tmp_path):
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_scenarios(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"not one written by Dataset\.save_to_disk"):
        load_scenarios(tmp_path)
    with pytest.raises(TypeError, match="source must be a path"):
        load_scenarios({"prompt": "a single record is not a source"})
    with pytest.raises(TypeError, match="source must be a path"):
        load_scenarios(42)


# --- the example data set --------------------------------------------------------


@pytest.mark.anyio
async def test_arithmetic_sample_plays_in_arithmetic_environment():
    scenarios = load_scenarios(SAMPLE)
    assert len(scenarios) == 20 and len({s.id for s in scenarios}) == 20
    env = ArithmeticEnvironment(scenarios)
    await check_env(env)
    for scenario in scenarios:
        episode = env.clone()
        observation, info = await episode.reset(options={"scenario": scenario})
        assert info == {"scenario_id": scenario.id}
        a, op, b = (scenario.data[k] for k in ("a", "op", "b"))
        assert observation == [user(f"What is {a}{op}{b}?")]
        result = await episode.step(assistant(str(scenario.data["answer"])))
        assert result.reward == 1.0 and result.terminated
        assert scenario.data["answer"] == {"+": a + b, "-": a - b, "*": a * b}[op]


# --- split_scenarios --------------------------------------------------------------


def numbered(n):
    return [Scenario(id=f"s{i}") for i in range(n)]


def test_split_is_deterministic_disjoint_and_ordered():
    scenarios = numbered(50)
    train, held_out = split_scenarios(scenarios, seed=3)
    assert (train, held_out) == split_scenarios(scenarios, seed=3)
    assert (len(train), len(held_out)) == (45, 5)  # default eval_fraction=0.1
    assert {s.id for s in train}.isdisjoint(s.id for s in held_out)
    assert sorted(train + held_out, key=lambda s: int(s.id[1:])) == scenarios
    assert train == [s for s in scenarios if s in train]  # input order kept
    assert split_scenarios(scenarios, seed=4)[1] != held_out


@pytest.mark.parametrize(
    ("n", "kwargs", "sizes"),
    [
        (10, {"eval_fraction": 0.25}, (8, 2)),  # round(2.5) == 2 (banker's rounding)
        (10, {"eval_fraction": 0.01}, (9, 1)),  # at least one held out
        (3, {"eval_fraction": 0.99}, (1, 2)),  # at least one left to train
        (10, {"eval_size": 3}, (7, 3)),
        (2, {"eval_size": 1}, (1, 1)),
    ],
)
def test_split_sizes(n, kwargs, sizes):
    train, held_out = split_scenarios(numbered(n), **kwargs)
    assert (len(train), len(held_out)) == sizes


@pytest.mark.parametrize(
    ("scenarios", "kwargs", "message"),
    [
        (numbered(10), {"eval_fraction": 0.0}, r"eval_fraction must be in \(0, 1\), got 0.0"),
        (numbered(10), {"eval_fraction": 1.0}, r"eval_fraction must be in \(0, 1\)"),
        (numbered(10), {"eval_fraction": -0.5}, r"eval_fraction must be in \(0, 1\)"),
        (numbered(10), {"eval_size": 10}, r"eval_size must be in \[1, 9\]"),
        (numbered(10), {"eval_size": 0}, r"eval_size must be in \[1, 9\]"),
        (numbered(10), {"eval_size": 2.5}, "eval_size must be an integer"),
        (numbered(10), {"eval_size": 2, "eval_fraction": 0.2}, "not both"),
        (numbered(1), {}, "at least 2 scenarios"),
        ([Scenario(id="x"), Scenario(id="x")], {}, r"duplicated: \['x'\]"),
    ],
)
def test_split_errors(scenarios, kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_scenarios(scenarios, **kwargs)
