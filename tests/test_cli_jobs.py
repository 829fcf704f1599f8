"""`vote train / adapters add / serve --print / data generate` through CliRunner on the tiny model."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from click.testing import CliRunner

from ensemble.cli.app import main


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def config(tmp_path: Path, tiny_model: Path, voters: dict | None = None) -> Path:
    data = tmp_path / "train.jsonl"
    rows = [{"id": f"q{i}", "question": f"Is {i} even?", "options": ["yes", "no"], "answer": "A" if i % 2 == 0 else "B"}
            for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"model: {tiny_model}", f"out: {tmp_path / 'run'}", "prompt: mc", f"data: {{train: {data}}}",
             "train:", "  max_steps: 2", "  batch_size: 4", "  dtype: float32",
             "  grid: {seeds: [0, 1], ranks: [2], target_modules: [[q_proj, v_proj]]}"]
    if voters:
        lines += ["voters:"] + [f"  {k}: {v}" for k, v in voters.items()]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_then_rerun_skips(tmp_path, tiny_model):
    cfg = config(tmp_path, tiny_model)
    res = invoke("train", cfg)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [v["status"] for v in manifest["variants"].values()] == ["done", "done"]
    res = invoke("train", cfg)
    assert res.exit_code == 0 and res.output.count("already trained, skipped") == 2


def test_adapters_add_checks_the_base(tmp_path, tiny_model, tiny_adapters):
    from ensemble.testing import make_tiny_adapters, make_tiny_model

    cfg = config(tmp_path, tiny_model)
    res = invoke("adapters", "add", tiny_adapters["v1"], "--config", cfg, "--name", "outside")
    assert res.exit_code == 0, res.output
    assert "added voter 'outside'" in res.output
    assert json.loads((tmp_path / "run" / "voters.json").read_text()) == {"outside": str(tiny_adapters["v1"].resolve())}
    wide = make_tiny_model(tmp_path / "wide", hidden_size=64)
    other = make_tiny_adapters(wide, tmp_path / "wide_ad", ["w"])["w"]
    res = invoke("adapters", "add", other, "--config", cfg)
    assert res.exit_code == 2 and "trained for a different base" in res.output and "Traceback" not in res.output


def test_serve_vllm_print(tmp_path, tiny_model, tiny_adapters):
    cfg = config(tmp_path, tiny_model, voters={k: v for k, v in tiny_adapters.items()})
    res = invoke("serve", cfg, "--engine", "vllm", "--print", "--port", "8123")
    assert res.exit_code == 0, res.output
    cmd = shlex.split(res.output.strip())
    assert cmd[:3] == ["vllm", "serve", str(tiny_model)] and "--enable-lora" in cmd
    modules = [json.loads(x) for x in cmd[cmd.index("--lora-modules") + 1:cmd.index("--host")]]
    assert {"name": "v1", "path": str(tiny_adapters["v1"])} in [{k: m[k] for k in ("name", "path")} for m in modules]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8" and cmd[cmd.index("--port") + 1] == "8123"


def test_data_generate(tmp_path):
    res = invoke("data", "generate", tmp_path / "bench", "--n-train", 5, "--n-dev", 2, "--n-test", 3)
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "bench" / "test.jsonl").read_text().splitlines()) == 3
