"""lm-evaluation-harness as a real client: the same two small tasks (one scored by loglikelihood, one by
generate_until) through lm-eval's `local-completions` model against `turnout serve`, and through its `hf` model on
the exported directory (transformers' DeepseekV3 on the same weights) give the same scores."""

from __future__ import annotations

import json

import pytest

from turnout.data import Tokenizer, load_shakespeare

from .conftest import ServerProcess, cli

lm_eval = pytest.importorskip("lm_eval")

LL_ABS_TOL = 1e-4  # nats per 8-token continuation: both routes compute in fp32; measured at most 4.3e-6
DOCS = 8


def task_files(root, tok: Tokenizer) -> None:
    """Two lm-eval tasks over held-out text: pick the true 8-token continuation of a 24-token context among four
    (three taken from elsewhere in the text), and continue a prompt greedily for 6 tokens."""
    text = "".join(d.text for d in list(load_shakespeare())[-2:])
    ids = tok.encode(text)
    span = lambda at, n: tok.decode(ids[at:at + n])  # noqa: E731
    choice, gen = [], []
    for k in range(DOCS):
        at = 1000 + 400 * k
        alts = [span(at + 24, 8)] + [span(at + 24 + 97 * (j + 1), 8) for j in range(3)]
        choice.append({"context": span(at, 24), "choices": alts, "label": 0})
        gen.append({"prompt": span(at + 200, 24), "target": span(at + 224, 6)})
    for name, rows in (("choice", choice), ("gen", gen)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = "dataset_path: json\ntest_split: test\n"
    (root / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'choice.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (root / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {root / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "target_delimiter: ''\ngeneration_kwargs:\n  until: ['<|none|>']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")


def evaluate(model: str, model_args: dict, tasks_dir) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=["tiny_choice", "tiny_gen"], batch_size=1,
                           task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                           random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)


@pytest.mark.slow
def test_lm_eval_scores_turnout_serve_as_it_scores_transformers(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    hf_dir = tmp_path / "hf"
    assert cli(["export", str(trained_run), "--hf", str(hf_dir)]) == 0
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task_files(tasks, Tokenizer.load(hf_dir / "tokenizer.json"))

    server = ServerProcess("--model", str(trained_run), "--target", "cpu")
    try:
        name = __import__("httpx").get(server.base + "/v1/models").json()["data"][0]["id"]
        api = evaluate("local-completions", {"base_url": server.base + "/v1/completions", "model": name,
                                             "tokenizer": str(hf_dir), "tokenizer_backend": "huggingface",
                                             "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1},
                       tasks)
    finally:
        server.close()
    hf = evaluate("hf", {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu"}, tasks)

    assert api["results"]["tiny_choice"]["acc,none"] == hf["results"]["tiny_choice"]["acc,none"]
    assert api["results"]["tiny_gen"]["exact_match,none"] == hf["results"]["tiny_gen"]["exact_match,none"]
    # per request, not only per score: every continuation's loglikelihood and every generated text
    ll = lambda r: [x[0] for s in r["samples"]["tiny_choice"] for x in s["filtered_resps"]]  # noqa: E731
    a, b = ll(api), ll(hf)
    assert len(a) == len(b) == 4 * DOCS
    assert max(abs(x - y) for x, y in zip(a, b)) <= LL_ABS_TOL, list(zip(a, b))
    assert len(set(a)) > DOCS  # real, distinct scores (not one value repeated)
    texts = lambda r: [s["filtered_resps"][0] for s in r["samples"]["tiny_gen"]]  # noqa: E731
    assert texts(api) == texts(hf) and all(texts(api)), (texts(api), texts(hf))
