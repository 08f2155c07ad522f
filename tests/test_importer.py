"""Importing the official repo's pair_dpo_data.json (format of Gen-Verse/HermesFlow's
datasets/journeydb/get_dpo_data.py and README)."""

import json

import pytest

from hermesflow.errors import DataError, UsageError
from hermesflow.importer import OfficialPair, import_official


def official_record(record_id: int = 7, **changes) -> dict:
    record = {
        "id": record_id,
        "img_path": f"datasets/journeydb/initial_images/{record_id}.jpg",
        "prompt": "a red fox reading a newspaper, watercolor",
        "caption": "A red fox reading a newspaper, painted in watercolor.",
        "caption_win": " A fox reading a newspaper.",
        "caption_lose": " A dog sitting on a bench in a park.",
        "bert_score_win": 0.91,
        "bert_score_lose": 0.55,
        "image_win": f"datasets/journeydb/generated_images/{record_id}/3.png",
        "image_lose": f"datasets/journeydb/generated_images/{record_id}/11.png",
        "vqa_score_win": 0.833,
        "vqa_score_lose": 0.5,
    }
    record.update(changes)
    return record


def write(tmp_path, text: str):
    path = tmp_path / "pair_dpo_data.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_official_array(tmp_path):
    path = write(tmp_path, json.dumps([official_record(7), official_record(12)], indent=4))
    pairs = import_official(path)
    assert [p.id for p in pairs] == ["7", "12"]
    assert pairs[0] == OfficialPair(
        id="7", image="datasets/journeydb/initial_images/7.jpg",
        prompt="a red fox reading a newspaper, watercolor",
        caption="A red fox reading a newspaper, painted in watercolor.",
        caption_chosen=" A fox reading a newspaper.", caption_rejected=" A dog sitting on a bench in a park.",
        image_chosen="datasets/journeydb/generated_images/7/3.png",
        image_rejected="datasets/journeydb/generated_images/7/11.png",
        caption_chosen_score=0.91, caption_rejected_score=0.55,
        image_chosen_score=0.833, image_rejected_score=0.5,
    )


def test_reads_the_writers_raw_output_and_the_readmes_trailing_comma(tmp_path):
    # get_dpo_data.py appends json.dump(record, indent=4) + ",\n" for each record
    raw = "".join(json.dumps(official_record(i), indent=4) + ",\n" for i in (1, 2, 3))
    assert [p.id for p in import_official(write(tmp_path, raw))] == ["1", "2", "3"]
    assert [p.id for p in import_official(write(tmp_path, "\ufeff[\n" + raw + "]\n"))] == ["1", "2", "3"]


def test_scores_are_optional(tmp_path):
    record = official_record()
    for key in ("bert_score_win", "bert_score_lose", "vqa_score_win", "vqa_score_lose"):
        del record[key]
    (pair,) = import_official(write(tmp_path, json.dumps([record])))
    assert pair.caption_chosen_score is None and pair.image_rejected_score is None


def test_every_bad_record_is_listed(tmp_path):
    records = [
        official_record(1),
        {k: v for k, v in official_record(2).items() if k != "image_lose"},   # missing field
        official_record(3, bert_score_win=float("nan")),                       # non-finite score
        official_record(4, vqa_score_win=0.4, vqa_score_lose=0.5),             # inverted image pair
        official_record(5, caption_win=""),                                    # empty caption
        official_record(1),                                                    # repeated id
        "not an object",
    ]
    with pytest.raises(DataError) as err:
        import_official(write(tmp_path, json.dumps(records)))
    assert err.value.problems == [
        'pair_dpo_data.json record 2 (id 2): missing field "image_lose"',
        'pair_dpo_data.json record 3 (id 3): field "bert_score_win" must be a finite number, got NaN',
        'pair_dpo_data.json record 4 (id 4): image pair is not ordered: "vqa_score_win" 0.4 is below '
        '"vqa_score_lose" 0.5; remove this record',
        'pair_dpo_data.json record 5 (id 5): field "caption_win" must be a non-empty string, got ""',
        "pair_dpo_data.json record 6 (id 1): id repeats record 1 (pairs are joined by id)",
        "pair_dpo_data.json record 7: must be an object, got str",
    ]


def test_broken_json_names_the_record_and_position(tmp_path):
    text = json.dumps(official_record(1)) + ",\n" + '{"id": 2, "img_path": }'
    with pytest.raises(DataError, match=r"pair_dpo_data.json record 2: not valid JSON \(line 2 column 23"):
        import_official(write(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    ("[]", "no records"),
    ("[" + json.dumps(official_record()), "never closed"),
    (json.dumps([official_record()]) + " extra", "unexpected text"),
    (json.dumps(official_record()) + " " + json.dumps(official_record(2)), "expected ','"),
])
def test_malformed_files(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        import_official(write(tmp_path, text))


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        import_official(tmp_path / "absent.json")


def test_equal_scores_are_accepted_and_reported(tmp_path, capsys):
    from hermesflow.cli import main

    records = [official_record(1), official_record(2, vqa_score_win=0.5, vqa_score_lose=0.5),
               official_record(3, bert_score_win=0.7, bert_score_lose=0.7, vqa_score_win=0.5, vqa_score_lose=0.5)]
    path = write(tmp_path, json.dumps(records))
    pairs = import_official(path)
    assert [p.tied() for p in pairs] == [[], ["image"], ["caption", "image"]]
    assert main(["import-official", str(path), "--out", str(tmp_path / "pairs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "records           3" in out and "caption_ties      1" in out and "image_ties        2" in out
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3"] and rows[1]["image_chosen"] == records[1]["image_win"]
