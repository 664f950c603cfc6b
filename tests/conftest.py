"""Shared fixtures: tiny random models, a tokenizer and a text, all made offline."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_text() -> str:
    return tiny_models.synthetic_text(n_lines=120, seed=1)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory, tiny_text) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    # CRLF line ends, like the shared WikiText file, to exercise universal newlines.
    path.write_bytes(tiny_text.replace("\n", "\r\n").encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-gpt2", arch="gpt2")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_models.make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


@pytest.fixture(params=["gpt2", "llama"])
def tiny_dir(request, gpt2_dir, llama_dir) -> Path:
    return {"gpt2": gpt2_dir, "llama": llama_dir}[request.param]


@pytest.fixture()
def cli_error(capsys):
    """cli_error(module, argv): run that script's CLI on argv, check that it ends in one line
    on stderr, a non-zero exit and no traceback, and return the line."""
    import evaluate as ev

    def run(module, argv) -> str:
        with pytest.raises(SystemExit) as e:
            ev.run_cli(module.main, module.build_parser(), argv)
        assert e.value.code != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err
    return run
