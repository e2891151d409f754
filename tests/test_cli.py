"""python -m mxmoe: quantize | eval | plan | bench kernels, driven in-process through mxmoe.cli.main."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxmoe.cli import main

ROOT = Path(__file__).resolve().parent.parent
MINI = ROOT / "models" / "qwen2moe-mini"
VALID = ROOT / "data" / "wikitext-2" / "valid.txt"


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(VALID.read_text()[:30000])
    return path


def test_cli_eval(short_text, capsys, mini_model, mini_tokenizer):
    from mxmoe.evaluate import perplexity
    assert main(["eval", "--model", str(MINI), "--text", str(short_text), "--seq-len", "64",
                 "--max-windows", "2"]) == 0
    printed = capsys.readouterr().out
    expected = perplexity(mini_model, mini_tokenizer, short_text.read_text(), seq_len=64, max_windows=2,
                          progress=False)
    assert f"perplexity {expected:.3f}" in printed


@pytest.mark.slow
def test_cli_plan_quantize_eval(short_text, tmp_path, capsys):
    pytest.importorskip("mxmoe.loss")
    plan_path = tmp_path / "plan.json"
    assert main(["plan", "--model", str(MINI), "--calib", str(short_text), "--wbits", "4.25", "--seq-len", "128",
                 "--n-samples", "4", "--plan-out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["model_type"] == "qwen2_moe" and len(plan["schemes"]) == 6 * 33 * 3
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(MINI), "--calib", str(short_text), "--plan", str(plan_path),
                 "--method", "rtn", "--seq-len", "128", "--n-samples", "4", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["plan"]["schemes"] == plan["schemes"]
    assert (out / "tokenizer.json").exists()
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--text", str(short_text), "--seq-len", "64",
                 "--max-windows", "1"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing"), "--text", str(VALID)]) == 1
    assert "is not a model directory" in capsys.readouterr().err
    assert main(["eval", "--model", str(MINI), "--text", str(tmp_path / "missing.txt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    short = tmp_path / "tiny.txt"
    short.write_text("only a few words")
    assert main(["quantize", "--model", str(MINI), "--calib", str(short), "--out", str(tmp_path / "q")]) == 1
    assert "shorter than one window" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
    with pytest.raises(SystemExit):
        main(["quantize", "--model", str(MINI)])  # argparse: missing --calib / --out


def test_cli_bench_kernels_without_cuda(capsys):
    import mxmoe
    if mxmoe.cuda_available():
        pytest.skip("CUDA build usable: bench kernels would run")
    assert main(["bench", "kernels"]) == 2
    assert "mxmoe._cuda" in capsys.readouterr().err


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "mxmoe", "--help"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 0
    for command in ("quantize", "eval", "plan", "demo", "bench"):
        assert command in result.stdout
