"""The grader's own path: the defaults (`gpt2`, WikiText-2, PTB, the Hub push), run as
commands against a local imitation of the Hub (tests/hub_imitation.py) on 127.0.0.1.

Each command is a separate process with HF_ENDPOINT pointing at the imitation, a fresh
HF_HOME and no HF_HUB_OFFLINE, so huggingface_hub, transformers and datasets go through
their ordinary online code. The imitated gpt2 has the Hub's file layout (keys without
'transformer.', the h.N.attn.bias buffers, vocab.json/merges.txt), at tiny sizes."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_imitation import HubImitation, default_repos

import tiny_models

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--device", "cpu", "--quiet", "--max-tokens", "1500", "--per-line", "20", "--repeats", "2",
         "--warmup", "1"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubImitation(max_seconds=5400)                             # a safety net: the fixture stops it
    h.rows = default_repos(h, tiny_models.synthetic_text(n_lines=300, seed=3))
    h.home = tmp_path_factory.mktemp("hf-home")                    # one user's cache for the module
    with h:
        yield h


def run(hub, script: str, *argv: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()                     # none of the user's Hub settings
           if not k.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hub.home), HF_HUB_DISABLE_XET="1", NO_PROXY="127.0.0.1,localhost",
               HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_VERBOSITY="error")
    if token is not None:
        env["HF_TOKEN"] = token
    p = subprocess.run([sys.executable, *([str(ROOT / script)] if script.endswith(".py") else ["-c", script]),
                        *argv], env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if check:
        assert p.returncode == 0, f"{script} exited {p.returncode}:\n{p.stderr[-3000:]}"
    return p


def only_json(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_evaluate_defaults_read_gpt2_and_wikitext_from_the_hub(hub, tmp_path):
    run(hub, "evaluate.py", *SMALL, "--results-dir", str(tmp_path))
    [rec] = only_json(tmp_path)
    assert rec["model"]["id"] == "gpt2" and rec["model"]["local"] is False
    gpt2 = hub.repos[("model", "openai-community/gpt2")]
    assert rec["model"]["revision"] == gpt2.branches["main"]                  # the commit that was measured
    wiki = hub.repos[("dataset", "Salesforce/wikitext")]
    assert rec["dataset"]["id"] == "wikitext2" and rec["dataset"]["revision"] == wiki.branches["main"]
    assert rec["dataset"]["sha256"] == hashlib.sha256("\n\n".join(hub.rows["wikitext2"]).encode()).hexdigest()
    assert rec["perplexity"]["n_tokens_scored"] == 1499 and rec["latency"]["prefill"]["tokens"] == 512
    paths = [r["path"] for r in hub.requests]
    assert any(p.startswith("/openai-community/gpt2/resolve/") and "model.safetensors" in p for p in paths)


def test_ptb_loads_from_its_parquet_conversion(hub, tmp_path):
    run(hub, "evaluate.py", *SMALL, "--skip-latency", "--dataset", "ptb", "--results-dir", str(tmp_path))
    [rec] = only_json(tmp_path)
    ptb = hub.repos[("dataset", "ptb-text-only/ptb_text_only")]
    assert rec["dataset"]["id"] == "ptb" and rec["dataset"]["revision"] == ptb.branches["refs/convert/parquet"]
    assert rec["dataset"]["sha256"] == hashlib.sha256("\n".join(hub.rows["ptb"]).encode()).hexdigest()


def test_part1_and_part2_on_the_hub_id(hub, tmp_path):
    run(hub, "part1_quantize_scratch.py", *SMALL, "--skip-latency", "--results-dir", str(tmp_path))
    run(hub, "part2_bnb_nf4.py", "--mode", "nf4", *SMALL, "--skip-latency", "--results-dir", str(tmp_path))
    names = sorted(r["method"]["name"] for r in only_json(tmp_path))
    assert names == ["bnb-nf4", "scratch-int8-per_channel"]
    assert all(r["model"]["revision"] for r in only_json(tmp_path))


def test_gguf_converts_the_hub_layout_and_the_push_round_trips(hub, tmp_path):
    """The Hub's gpt2 carries h.N.attn.bias: the conversion must drop them. Then the push: the
    real create_repo / create_commit against the imitation, the files read back byte for byte."""
    gguf_dir, results = tmp_path / "gguf", tmp_path / "r"
    p = run(hub, "bonus_gguf.py", *SMALL, "--skip-latency", "--types", "F32,Q8_0", "--gguf-dir", str(gguf_dir),
            "--results-dir", str(results), "--push-to-hub", "tester/tiny-gpt2-gguf", token=hub.token)
    recs = {r["method"]["settings"]["gguf_type"]: r for r in only_json(results) if "push" not in r}
    assert set(recs) == {"F32", "Q8_0"}
    assert recs["F32"]["model"]["revision"] == hub.repos[("model", "openai-community/gpt2")].branches["main"]
    hf = run(hub, "evaluate.py", *SMALL, "--skip-latency", "--per-line", "0", "--results-dir", str(tmp_path / "hf"))
    assert hf.returncode == 0
    [base] = only_json(tmp_path / "hf")
    assert recs["F32"]["perplexity"]["ppl"] == pytest.approx(base["perplexity"]["ppl"], rel=1e-3)

    repo = hub.repos[("model", "tester/tiny-gpt2-gguf")]
    pushed = repo.commits[repo.branches["main"]]
    local = {f.name: f for f in gguf_dir.glob("*.gguf")}
    assert sorted(pushed) == [".gitattributes", "README.md", "gpt2-F32.gguf", "gpt2-Q8_0.gguf"]
    back = run(hub, "import json, hashlib; from huggingface_hub import hf_hub_download as d; print(json.dumps("
                    "{f: hashlib.sha256(open(d('tester/tiny-gpt2-gguf', f), 'rb').read()).hexdigest() "
                    "for f in ['gpt2-F32.gguf', 'gpt2-Q8_0.gguf', 'README.md']}))")
    got = json.loads(back.stdout)
    for name, path in local.items():
        hub_file = name.split("-")[0] + "-" + name.rsplit("-", 1)[1]          # gpt2-<hash>-F32 -> gpt2-F32
        assert got[hub_file] == hashlib.sha256(path.read_bytes()).hexdigest(), name
    card = pushed["README.md"].decode()
    assert "base_model: gpt2" in card and "| gpt2-Q8_0.gguf | Q8_0 |" in card

    # the token went only into Authorization headers, never into any output, file or URL
    assert hub.token not in p.stdout + p.stderr
    for f in [*results.rglob("*"), *gguf_dir.rglob("*")]:
        if f.is_file() and f.suffix == ".json":
            assert hub.token not in f.read_text()
    for r in hub.requests:
        assert hub.token not in r["path"]
        assert all(hub.token not in v for k, v in r["headers"].items() if k.lower() != "authorization")
    writes = [r for r in hub.requests if r["method"] == "POST" and ("/api/repos/create" in r["path"]
                                                                   or "/commit/" in r["path"])]
    assert len(writes) == 2, [(r["method"], r["path"]) for r in writes]
    assert all({k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {hub.token}"
               for r in writes), [r["headers"] for r in writes]
    [rec] = [json.loads(f.read_text()) for f in results.glob("gguf-push__*.json")]     # what was pushed where
    assert rec["push"]["commit"] == repo.branches["main"] and rec["push"]["url"] == f"{hub.url}/tester/tiny-gpt2-gguf"
    assert {f["name"]: f["bytes"] for f in rec["push"]["files"]} == {
        "gpt2-F32.gguf": len(pushed["gpt2-F32.gguf"]), "gpt2-Q8_0.gguf": len(pushed["gpt2-Q8_0.gguf"]),
        "README.md": None}
    print("pushed:", {k: len(v) for k, v in pushed.items()})


def test_a_wrong_token_is_one_clear_line_before_any_work(hub, tmp_path):
    p = run(hub, "bonus_gguf.py", *SMALL, "--push-to-hub", "tester/x", "--gguf-dir", str(tmp_path / "g"),
            "--results-dir", str(tmp_path / "r"), token="hf_wrong_token", check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "bonus_gguf.py: error: the Hub refused the token (HTTP 401): check HF_TOKEN or run `hf auth login`; "
        "nothing was created"]
    assert not (tmp_path / "g").exists() and not (tmp_path / "r").exists()
    assert "hf_wrong_token" not in p.stdout + p.stderr


def test_the_whole_study_with_its_defaults_reaches_the_pdf(hub, tmp_path):
    r = tmp_path / "results"
    p = run(hub, "run_study.py", "--max-tokens", "1200", "--quiet", "--results-dir", str(r),
            "--figures-dir", str(tmp_path / "figures"), "--report", str(tmp_path / "report.pdf"),
            "--gguf-dir", str(tmp_path / "gguf"))
    methods = sorted(x["method"]["name"] for x in only_json(r))
    assert "baseline-fp32" in methods and "bnb-nf4-dq" in methods and "gguf-q4_k_m" in methods
    assert "gptq-w4-g64" in methods and "baseline-bf16" in methods
    assert len(methods) == 23, methods
    gptq = next(x for x in only_json(r) if x["method"]["name"] == "gptq-w4-g64")
    cal = gptq["method"]["settings"]["calibration"]                  # the scored dataset's train split
    assert cal["source"] == "wikitext2-train" and cal["overlap_check"]["shared_spans"] == 0
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "FAILED" not in p.stdout + p.stderr
