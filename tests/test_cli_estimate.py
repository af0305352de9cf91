"""`rainier estimate` and `rainier plan` as users run them. The analytic path never starts JAX, so
those commands run in-process through `cli.main`; `--compiled` runs in a subprocess (it sizes its
own set of CPU devices)."""

import json

import pytest

from cli_runner import rainier
from rainier_jax.cli import main as cli
from rainier_jax.perf import flops
from rainier_jax.spec.model import load_model

ESTIMATE = ["estimate", "--model", "llama-3.1-8b", "--mesh", "trn2-instance", "--parallel", "tp=16,dp=4",
            "--batch", "64", "--seq", "8192"]


def run(capsys, *args):
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_estimate_report_names_every_part(capsys):
    code, out, err = run(capsys, *ESTIMATE, "--zero1", "--remat", "selective", "--microbatches", "16")
    assert code == 0 and err == ""
    for needle in ("HBM per rank", "weights", "gradients", "optimizer state", "activations", "temporaries",
                   "of 24.0 GiB: fits", "FLOPs per step", "all-reduce", "torus", "ring", "Pipeline bubble",
                   "Step time", "tokens/s", "sequences/s", "MFU"):
        assert needle in out, needle


def test_estimate_json_has_the_promised_fields(capsys):
    code, out, _ = run(capsys, *ESTIMATE, "--parallel", "tp=16,pp=2,dp=2", "--microbatches", "8", "--json")
    assert code == 0
    e = json.loads(out)
    for key in ("step_time_s", "tokens_per_s", "seq_per_s", "mfu", "hbm_per_rank_bytes", "fits"):
        assert key in e, key
    assert 0 < e["mfu"] < 1 and isinstance(e["fits"], bool) and e["fits"]
    assert e["seq_per_s"] == pytest.approx(64 / e["step_time_s"])
    assert e["tokens_per_s"] == pytest.approx(64 * 8192 / e["step_time_s"])
    assert e["hbm_per_rank_bytes"] == sum(e["hbm"].values())
    assert e["model_flops_per_step"] == flops.model_flops(load_model("llama-3.1-8b"), batch=64, seq=8192)
    assert e["bubble"] > 0 and {c["axes"][0] for c in e["collectives"]} >= {"tp", "dp", "pp"}
    assert {c["link"] for c in e["collectives"] if c["axes"] == ["tp"]} == {"torus"}


def test_nodes_join_meshes_by_efa(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-ultraserver", "--nodes", "4",
                       "--parallel", "tp=16,pp=4,dp=16", "--batch", "256", "--seq", "8192", "--microbatches", "16",
                       "--zero1", "--json")
    e = json.loads(out)
    assert code == 0 and e["ranks"] == 1024 and e["nodes"] == 4
    assert {c["link"] for c in e["collectives"] if c["axes"] == ["pp"]} == {"efa"}


def test_a_layout_that_does_not_fit_says_so(capsys):
    code, out, _ = run(capsys, "estimate", "--model", "llama-3.1-70b", "--mesh", "trn2-instance",
                       "--parallel", "tp=16,dp=4", "--batch", "64", "--seq", "8192", "--json")
    assert code == 0 and json.loads(out)["fits"] is False


def test_plan_ranks_layouts_and_says_why(capsys):
    code, out, _ = run(capsys, "plan", "--model", "llama-3.1-8b", "--mesh", "trn2-instance", "--batch", "64",
                       "--seq", "8192", "--top", "5")
    assert code == 0
    assert "Why #1 wins" in out and "vs the best other layout" in out
    ranks = [line.split()[0] for line in out.splitlines() if line.strip()[:1].isdigit() and "·" in line]
    assert ranks == ["1", "2", "3", "4", "5"]
    code, out, _ = run(capsys, "plan", "--model", "llama-3.1-8b", "--mesh", "trn2-instance", "--batch", "64",
                       "--seq", "8192", "--top", "5", "--json")
    p = json.loads(out)
    speeds = [c["tokens_per_s"] for c in p["top"]]
    assert speeds == sorted(speeds, reverse=True) and all(c["fits"] for c in p["top"])
    # Every candidate's tp groups are rings of direct links: tp=8 (two chips, a line) never appears.
    assert p["dropped"].get("tp or pp groups are not rings of direct links (Neuron's rule)", 0) > 0
    assert all("tp=8," not in c["parallel"] + "," for c in p["top"])


def test_plan_with_nothing_that_fits(capsys):
    code, _, err = run(capsys, "plan", "--model", "llama-3.1-70b", "--mesh", "trn2-mini-8", "--batch", "8")
    assert code == 1 and "no layout" in err and "does not fit" in err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "partial.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    mesh = (cli_root() / "meshes" / "trn2-mini-8.toml").read_text()
    cut = mesh[:mesh.index("[links.efa]")]
    (tmp_path / "noefa.toml").write_text(cut)
    gpt2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256, "n_positions": 64}
    (tmp_path / "gpt2.json").write_text(json.dumps(gpt2))
    return tmp_path


def cli_root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args,needle", [
    (["--parallel", "tp=16,dp=3"], "--parallel tp=16,dp=3"),
    (["--model", "{d}/partial.json"], "missing intermediate_size"),
    (["--mesh", "{d}/noefa.toml"], "links.efa"),
    (["--nodes", "0"], "--nodes 0"),
    (["--recipe", "fast"], "--recipe fast"),
    (["--batch", "63"], "--batch 63"),
    (["--remat", "some"], "--remat some"),
    (["--parallel", "tp=16,pp=4", "--microbatches", "2"], "--microbatches"),
    (["--mesh", "trn2-ultraserver", "--nodes", "16", "--parallel", "tp=16,dp=256", "--batch", "256",
      "--compiled"], "--compiled: 4,096 ranks"),
    (["--model", "{d}/gpt2.json", "--mesh", "trn2-mini-8", "--parallel", "dp=8", "--batch", "8", "--compiled"],
     "--compiled"),
    (["--model", "{d}/gpt2.json", "--mesh", "trn2-mini-8", "--parallel", "dp=8", "--batch", "8",
      "--recipe", "rainier"], "--recipe rainier"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, files, args, needle):
    base = {"--model": "llama-3.1-8b", "--mesh": "trn2-instance", "--parallel": "tp=16,dp=4", "--batch": "64"}
    flags = [a.format(d=files) for a in args]
    merged = [x for k, v in base.items() if k not in flags for x in (k, v)] + flags
    code, out, err = run(capsys, "estimate", *merged)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("rainier: error:") and needle in err, err


def test_gpt2_config_is_estimated_analytically(capsys, files):
    code, out, _ = run(capsys, "estimate", "--model", f"{files}/gpt2.json", "--mesh", "trn2-mini-8",
                       "--parallel", "dp=4,tp=2", "--batch", "16", "--seq", "64", "--json")
    assert code == 0 and json.loads(out)["step_time_s"] > 0


def test_compiled_compares_the_real_step_with_the_model():
    """Lowers the tiny model's real step for trn2-mini-8 in a fresh process (8 CPU devices)."""
    proc = rainier("estimate", "--model", "tiny", "--mesh", "trn2-mini-8", "--parallel", "dp=2,fsdp=2,tp=2",
                   "--batch", "16", "--seq", "64", "--precision", "fp32", "--compiled", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    e = json.loads(proc.stdout)
    c = e["compiled"]
    assert c["compile_seconds"] > 0 and c["hbm_per_rank_bytes"] > 0
    assert c["dot_flops_per_rank"] == flops.hardware_flops(load_model("tiny"), batch=16, seq=64, remat="full") / 8
    kinds = {(x["kind"], tuple(x["axes"])) for x in c["collective_bytes"]}
    assert ("all-gather", ("fsdp",)) in kinds and ("all-reduce", ("tp",)) in kinds
    assert not [line for line in c["exceeds_model"] if "sends" in line]
    text = rainier("estimate", "--model", "tiny", "--mesh", "trn2-mini-8", "--parallel", "dp=2,fsdp=2,tp=2",
                   "--batch", "16", "--seq", "64", "--compiled", timeout=300)
    assert text.returncode == 0 and "Compiled: rainier's train step lowered for 8 CPU devices" in text.stdout
