"""The OpenAI-compatible endpoint, misbehaving on purpose (a stub on 127.0.0.1): every failure is
retried or ends in one line naming the record; a stopped run resumes asking nothing it has; nothing
is written for a record that failed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from openai_stub import StubEndpoint, refused_url

from hermesflow.api import ApiError, ChatClient, ReplyCache
from hermesflow.cli import main
from hermesflow.judges import VLMJudge
from hermesflow.questions import parse_questions

CAPTIONS = ["a red circle", "two blue squares", "a green triangle"]


@pytest.fixture
def stub():
    endpoint = StubEndpoint()
    yield endpoint
    endpoint.close()


def client(url: str, retries: int = 2, timeout: float = 2.0) -> ChatClient:
    return ChatClient(url, "stub-model", timeout=timeout, retries=retries, backoff=0.01)


def ask(c: ChatClient, caption: str = "a red circle"):
    messages = [{"role": "user", "content": f"Caption: {caption}"}]
    return c.ask(messages, parse_questions, what='data.jsonl line 1 (id "r0")')


@pytest.mark.parametrize("behaviour", ["slow", "429", "500", "envelope", "not-json", "not-a-choice", "repeat"])
def test_each_failure_is_retried(stub, behaviour):
    stub.plan, stub.slow_seconds = [behaviour], 0.6
    c = client(stub.url, timeout=0.3)
    questions = ask(c)
    assert [q["question"] for q in questions] == ["is there a circle?", "is there a square?"]
    assert c.usage.retries == 1 and c.usage.calls == 2


@pytest.mark.parametrize("behaviour, reason", [
    ("slow", "no reply within 0.3 s"),
    ("429", "HTTP 429"),
    ("500", "HTTP 500"),
    ("envelope", "the reply is not a chat completion"),
    ("not-json", "unusable reply (not JSON"),
    ("not-a-choice", "unusable reply (question 1 ('is there a circle?'): answer 'maybe' is not among the choices ['yes', 'no'])"),
    ("repeat", "unusable reply (question 3 repeats 'is there a circle?')"),
])
def test_a_failure_that_stays_is_one_line_naming_the_record(stub, behaviour, reason):
    stub.plan, stub.slow_seconds = [behaviour] * 3, 0.6
    with pytest.raises(ApiError) as err:
        ask(client(stub.url, retries=2, timeout=0.3))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f'data.jsonl line 1 (id "r0"): {reason}'), message
    assert message.endswith(f"gave up after 3 attempts to {stub.url}/chat/completions")


def test_refused_connection_and_unauthorised_key(stub):
    with pytest.raises(ApiError, match=r'id "r0"\): cannot connect \(.*refused.*\); gave up after 2 attempts'):
        ask(client(refused_url(), retries=1))
    stub.plan = ["401"]
    c = client(stub.url)
    with pytest.raises(ApiError, match="HTTP 401 .*not retried"):
        ask(c)
    assert c.usage.calls == 1


def write_data(folder: Path) -> Path:
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    lines = []
    for i, caption in enumerate(CAPTIONS):
        Image.new("RGB", (40 + 8 * i, 32), (40 * i, 90, 200)).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{i}.png", "caption": caption}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_questions_resume_and_write_nothing_for_a_failed_record(stub, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    out = tmp_path / "questions.json"
    args = ["questions", "--data", str(data), "--out", str(out), "--endpoint", stub.url, "--api-model", "stub-model",
            "--retries", "1", "--backoff", "0.01", "--workers", "1"]
    stub.plan_for["two blue squares"] = ["not-a-choice"] * 2
    assert main(args) == 2
    err = capsys.readouterr().err
    assert ('error: data.jsonl line 2 (id "r1"): unusable reply (question 1 (\'is there a square?\'): answer \'maybe\' '
            "is not among the choices ['yes', 'no']); gave up after 2 attempts") in err
    assert "api: 3 calls (1 retries, 0 answered from the cache), 30 prompt + 15 completion tokens" in err
    assert not out.exists()  # nothing written while a record has no questions
    cache = out.with_name("questions.json.cache.jsonl")
    cached = [json.loads(line)["value"] for line in cache.read_text().splitlines()]
    assert len(cached) == 1  # r0 only: the failed record left no trace
    with open(cache, "a") as f:
        f.write('{"key": "cut by a ki')  # a run killed while writing its cache
    stub.requests.clear()

    assert main(args) == 0  # the rerun asks only what it does not have
    assert [StubEndpoint.key_of(b)[1] for b in stub.requests] == ["two blue squares", "a green triangle"]
    entries = json.loads(out.read_text())
    assert [e["id"] for e in entries] == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert entries[2] == {"id": "r1", "caption": "two blue squares", "element": "square", "element_type": "object",
                          "question": "is there a square?", "choices": ["yes", "no"], "answer": "yes"}
    stub.requests.clear()
    assert main(args) == 0 and stub.requests == []  # a third run asks nothing at all
    assert "3 answered from the cache" in capsys.readouterr().err
    # the file gives every record its questions
    assert main(["validate", str(data), "--questions", str(out)]) == 0
    assert "without_qa        0" in capsys.readouterr().out


def test_vlm_judge_answers_about_images_and_caches(stub, tmp_path):
    judge = VLMJudge(client(stub.url), ReplyCache(tmp_path / "judge.jsonl"))
    images = [np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)]
    stub.judge_answers = {"is there a square?": "no"}
    stub.plan = ["not-a-choice"]
    answers = judge.answer(images, [0, 0, 1], ["is there a circle?", "is there a square?", "what color is the circle?"],
                           [["yes", "no"], ["yes", "no"], ["red", "blue"]], ["item a", "item b"])
    assert answers == ["yes", "no", "red"] and judge.client.usage.retries == 1
    first = stub.requests[1]["messages"][-1]["content"]
    assert first[1]["image_url"]["url"].startswith("data:image/png;base64,")
    stub.requests.clear()
    again = VLMJudge(client(stub.url), ReplyCache(tmp_path / "judge.jsonl"))
    assert again.answer(images, [0, 0, 1], ["is there a circle?", "is there a square?", "what color is the circle?"],
                        [["yes", "no"], ["yes", "no"], ["red", "blue"]], ["item a", "item b"]) == answers
    assert stub.requests == []
    stub.plan = ["not-a-choice"] * 3
    with pytest.raises(ApiError, match=r"^item b, question 'is there a triangle\?': unusable reply \(answer 'maybe'"):
        again.answer(images, [1], ["is there a triangle?"], [["yes", "no"]], ["item a", "item b"])


def test_parallel_requests_keep_their_order_and_match_one_at_a_time(stub, tmp_path):
    data = write_data(tmp_path / "data")
    outs = []
    for workers in ("1", "3"):
        out = tmp_path / f"q{workers}.json"
        stub.plan = ["500", "slow"]
        assert main(["questions", "--data", str(data), "--out", str(out), "--endpoint", stub.url, "--api-model", "m",
                     "--backoff", "0.01", "--timeout", "0.5", "--workers", workers]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    stub.plan = []
    judge = VLMJudge(client(stub.url), ReplyCache(tmp_path / "judge.jsonl"), workers=4)
    stub.judge_answers = {f"q{i}": ("no" if i % 3 else "yes") for i in range(12)}
    images = [np.zeros((8, 8, 3), np.uint8)]
    answers = judge.answer(images, [0] * 12, [f"q{i}" for i in range(12)], [["yes", "no"]] * 12, ["item a"])
    assert answers == [stub.judge_answers[f"q{i}"] for i in range(12)] and judge.client.usage.calls == 12
