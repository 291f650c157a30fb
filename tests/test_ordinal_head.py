"""The ordinal (cumulative-logit) head: fitting, probabilities, and its guarantees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.birads import MALIGNANCY_LIKELIHOOD, malignancy_score
from engine.data.datasets import load_records
from engine.networks import GCNN, GCNNConfig
from engine.ordinal_head import OrdinalHead, ordinal_probabilities, suspicion_score
from engine.splits import SplitConfig, make_split
from engine.training.common import RunState, TrainConfig, make_optimizer, save_checkpoint
from engine.training.ordinal import cross_validate_head, fit_ordinal_head
from sonograde.cli import main


def _draw(head: OrdinalHead, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.normal(0.0, 2.5, n)
    probs = ordinal_probabilities(head, scores)
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in probs])
    return scores, labels


def test_fit_recovers_the_generating_head() -> None:
    truth = OrdinalHead(slope=1.3, cuts=(-2.5, -0.8, 0.6, 2.2))
    scores, labels = _draw(truth, 4000, np.random.default_rng(11))
    fitted = fit_ordinal_head(scores, labels)
    assert fitted.slope == pytest.approx(truth.slope, rel=0.1)
    np.testing.assert_allclose(fitted.cuts, truth.cuts, atol=0.25)


def test_probabilities_are_distributions_and_shift_with_suspicion() -> None:
    head = OrdinalHead(slope=0.8, cuts=(-2.3, -1.3, -0.1, 1.3))
    scores = np.linspace(-8, 8, 101)
    probs = ordinal_probabilities(head, scores)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert (probs >= 0).all()
    assert probs[0].argmax() == 0 and probs[-1].argmax() == 4
    # the expected category rises with the score: the malignancy ranking of the base network is kept
    expected = probs @ np.arange(5)
    assert (np.diff(expected) > 0).all()
    assert (np.diff(malignancy_score(probs)) > 0).all()


def test_suspicion_score_is_the_logit_of_the_expected_likelihood() -> None:
    probs = np.array([[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(suspicion_score(probs), np.log([0.01 / 0.99, 0.30 / 0.70, 0.97 / 0.03]))
    assert np.isfinite(suspicion_score(np.array([[0.0, 0.0, 0.0, 0.0, 0.0]]))).all()  # clipped


def test_fit_refuses_too_little_data_and_bad_labels() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        fit_ordinal_head(np.zeros(5), np.arange(5))
    with pytest.raises(ValueError, match="two categories"):
        fit_ordinal_head(np.zeros(20), np.zeros(20, int))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        fit_ordinal_head(np.zeros(20), np.array([0, 5] * 10))


def test_fit_on_lesions_names_the_data_it_could_not_fit(rng: np.random.Generator) -> None:
    """The two head commands share one fit: allowed sets from the lesions, a TrainingError naming the
    folders where the cut points are not identifiable."""
    from types import SimpleNamespace

    from engine.training.common import TrainingError
    from engine.training.ordinal import fit_head_on_lesions

    head = OrdinalHead(slope=1.5, cuts=(-2.0, -0.5, 0.5, 2.0))
    scores, labels = _draw(head, 300, rng)
    lesions = [SimpleNamespace(allowed=np.eye(5, dtype=bool)[k]) for k in labels]
    fitted, allowed = fit_head_on_lesions(lesions, scores, ["five_way"])
    assert allowed.shape == (300, 5) and (allowed.argmax(1) == labels).all()
    assert fitted == fit_ordinal_head(scores, labels)
    coarse = [SimpleNamespace(allowed=np.array([False, True, True, True, False]))] * 20
    with pytest.raises(TrainingError, match=r"at least 10 .*\(in the fitted part of busbra\)"):
        fit_head_on_lesions(coarse, rng.normal(size=20), ["busbra"])


def test_head_round_trips_and_rejects_unordered_cuts() -> None:
    head = OrdinalHead(slope=0.9, cuts=(-2.0, -1.0, 0.0, 1.0))
    assert OrdinalHead.from_dict(head.to_dict()) == head
    with pytest.raises(ValueError, match="increasing"):
        OrdinalHead.from_dict({"slope": 1.0, "cuts": [0.0, -1.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="positive slope"):
        OrdinalHead.from_dict({"slope": 0.0, "cuts": [-1.0, 0.0, 1.0, 2.0]})


def _grader_checkpoint(path: Path, seed: int, data: tuple[str, ...] = ()) -> None:
    torch.manual_seed(seed)
    net = GCNN(GCNNConfig(width=0.125, input_size=32))
    config = TrainConfig(kind="grader", input_size=32, width=0.125, margin=0.25, data=list(data), seed=seed)
    save_checkpoint(path, net=net, optimizer=make_optimizer(config, net.parameters()), config=config,
                    net_config=net.config.__dict__, state=RunState())


@pytest.mark.slow
def test_train_head_fits_on_breast_lesions_and_exports_the_same_reading(
        tmp_path: Path, shared_data: Path, rng: np.random.Generator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`sonograde train head` on the real data, for a base "trained" on BUS-BRA: BrEaST's non-test cases and
    only the base run's BUS-BRA validation patients are fitted; the exported model carries the head."""
    busbra = str(shared_data / "busbra")
    seed = int(rng.integers(1 << 20))
    _grader_checkpoint(tmp_path / "base.pt", seed, data=(busbra,))
    data = str(shared_data / "breast_lesions_usg")
    argv = ["train", "head", "--init-from", str(tmp_path / "base.pt"), "--data", data, "--data", busbra,
            "--split-seed", "0", "--out", str(tmp_path / "oh"), "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    assert "ordinal head on" in capsys.readouterr().out
    summary = json.loads((tmp_path / "oh" / "head.json").read_text())
    fitted_ids = set(summary["ids"])
    breast = make_split(load_records([data]), SplitConfig(1, 0.1, 0.3, 0))
    assert not {f"{r.dataset}/{r.id}" for r in breast.test} & fitted_ids
    assert len({i for i in fitted_ids if i.startswith("breast_lesions_usg/")}) > 50
    base_split = make_split(load_records([busbra]), SplitConfig(1, 0.1, 0.3, seed))
    base_validation = {f"{r.dataset}/{r.id}" for r in base_split.val}
    fitted_busbra = {i for i in fitted_ids if i.startswith("busbra/")}
    assert fitted_busbra and fitted_busbra <= base_validation
    assert summary["base_validation_patients_of"] == ["busbra"] and "4A/4B/4C" in summary["counts"]["busbra"]
    assert (tmp_path / "oh" / "head.png").stat().st_size > 10_000
    fitted = OrdinalHead.from_dict(summary["head"])
    # a head fitted to an untrained network can have any slope, which magnifies float32 rounding: only
    # the metadata is checked here (the numbers: test_exported_head_reads_the_network_as_the_numpy_head)
    meta_of = _export(tmp_path / "oh" / "last.pt", tmp_path / "fitted.onnx", tolerance=1e-2)[1]
    exported = json.loads(meta_of["sonograde.ordinal_head"])
    assert exported["slope"] == pytest.approx(fitted.slope, rel=1e-6)
    assert exported["cuts"] == pytest.approx(fitted.cuts, rel=1e-6)


def _export(checkpoint: Path, out: Path,
            tolerance: float = 1e-4) -> tuple[ort.InferenceSession, dict[str, str]]:
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-dynamo",
            "--tolerance", str(tolerance)]
    assert main(argv) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]), meta


@pytest.mark.slow
def test_exported_head_reads_the_network_as_the_numpy_head(tmp_path: Path, rng: np.random.Generator) -> None:
    """The ONNX graph (network + head) gives the five probabilities ``ordinal_probabilities`` gives from
    the network's own output, over a wide range of suspicion scores."""
    torch.manual_seed(int(rng.integers(1 << 20)))
    net = GCNN(GCNNConfig(width=0.125, input_size=32)).eval()
    # per-image brightness offsets; then the head's batch norms get these images' statistics, so the
    # logits spread (a fresh network maps every input to nearly one output) and the scores cover the head
    x = (rng.standard_normal((64, 1, 32, 32)) + rng.uniform(-6, 6, (64, 1, 1, 1))).astype(np.float32)
    for norm in [m for m in net.head if isinstance(m, torch.nn.BatchNorm1d)]:
        seen: list[torch.Tensor] = []
        hook = norm.register_forward_hook(lambda _m, inputs, _o, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            net(torch.from_numpy(x))
        hook.remove()
        norm.running_mean.copy_(seen[0].mean(0))
        norm.running_var.copy_(seen[0].var(0) + 1e-6)
    with torch.no_grad():
        net.head[-1].weight.mul_(3.0 / net.head[-1].weight.std())
    with torch.no_grad():
        scores = suspicion_score(torch.softmax(net(torch.from_numpy(x)), dim=1).numpy())
    assert scores.std() > 0.5
    # cut points inside the scores' range, so the comparison covers all five categories' curves
    head = OrdinalHead(1.4, tuple(float(c) for c in 1.4 * np.quantile(scores, [0.2, 0.4, 0.6, 0.8])))
    config = TrainConfig(kind="grader", input_size=32, width=0.125, margin=0.25)
    save_checkpoint(tmp_path / "base.pt", net=net, optimizer=make_optimizer(config, net.parameters()),
                    config=config, net_config=net.config.__dict__, state=RunState(),
                    extra={"ordinal_head": head.to_dict()})
    session, meta = _export(tmp_path / "base.pt", tmp_path / "g.onnx")
    assert meta["sonograde.model_id"].endswith(f"-oh-{meta['sonograde.model_id'][-10:]}")
    got = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(got, ordinal_probabilities(head, scores), atol=1e-4)


def test_train_head_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "head", "--data", "x", "--out", str(tmp_path / "oh")]) == 2
    assert "--init-from" in capsys.readouterr().err
    _grader_checkpoint(tmp_path / "base.pt", 0)
    payload = torch.load(tmp_path / "base.pt", weights_only=False)
    payload["extra"] = {"ordinal_head": {"slope": 1.0, "cuts": [-1.0, 0.0, 1.0, 2.0]}}
    torch.save(payload, tmp_path / "headed.pt")
    assert main(["train", "head", "--init-from", str(tmp_path / "headed.pt"), "--data", "x",
                 "--out", str(tmp_path / "oh")]) == 2
    assert "already carries an ordinal head" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "headed.pt"), "--checkpoint",
                 str(tmp_path / "base.pt"), "--average-weights", "--out", str(tmp_path / "m.onnx"),
                 "--no-dynamo"]) == 2
    assert "does not average" in capsys.readouterr().err


@pytest.mark.slow
def test_ensemble_head_is_fitted_on_the_mean_and_exported_with_ordinal_head(
        tmp_path: Path, shared_data: Path, rng: np.random.Generator,
        capsys: pytest.CaptureFixture[str]) -> None:
    busbra, data = str(shared_data / "busbra"), str(shared_data / "breast_lesions_usg")
    seeds = [int(s) for s in rng.integers(1 << 20, size=2)]
    for name, seed in zip("ab", seeds, strict=True):
        _grader_checkpoint(tmp_path / f"{name}.pt", seed, data=(busbra,))
    two = ["--init-from", str(tmp_path / "a.pt"), "--init-from", str(tmp_path / "b.pt")]
    # members that held out other BUS-BRA validation patients: no lesion is unseen by both
    assert main(["train", "head", *two, "--data", data, "--data", busbra, "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "--split-seed" in capsys.readouterr().err
    assert main(["train", "head", *two, "--data", data, "--split-seed", "0", "--out", str(tmp_path / "oh"),
                 "--threads", "1", "--no-progress"]) == 0
    assert "--ordinal-head" in capsys.readouterr().out and not (tmp_path / "oh" / "last.pt").exists()
    assert json.loads((tmp_path / "oh" / "head.json").read_text())["cases"] > 50
    # export the ensemble through a head placed on its actual scores: a head fitted to two untrained
    # networks can have any slope, and float32 rounding grows with it
    x = rng.standard_normal((5, 1, 32, 32)).astype(np.float32)
    mean = np.zeros((5, 5))
    for name in "ab":
        payload = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        net = GCNN(GCNNConfig(**payload["net_config"])).eval()
        net.load_state_dict(payload["model"])
        with torch.no_grad():
            mean += torch.softmax(net(torch.from_numpy(x)), dim=1).numpy() / 2
    scores = suspicion_score(mean)
    cuts = np.quantile(scores, [0.1, 0.4, 0.6, 0.9]) + np.array([0.0, 1e-3, 2e-3, 3e-3])  # increasing
    head = OrdinalHead(1.0, tuple(float(c) for c in cuts))
    head_json = tmp_path / "head.json"
    head_json.write_text(json.dumps({"head": head.to_dict()}))
    argv = ["export", "--checkpoint", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "b.pt"),
            "--ordinal-head", str(head_json), "--out", str(tmp_path / "e.onnx"), "--no-dynamo"]
    assert main(argv) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    assert meta["sonograde.ensemble_members"] == "2" and "-ens2-oh-" in meta["sonograde.model_id"]
    got = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(got, ordinal_probabilities(head, scores), atol=1e-4)
    (tmp_path / "bad.json").write_text('{"slope": 1.0}')
    bad = [*argv[:5], "--ordinal-head", str(tmp_path / "bad.json"), "--out", str(tmp_path / "f.onnx")]
    assert main(bad) == 2
    assert "is not an ordinal head" in capsys.readouterr().err


def test_cross_validation_fits_each_head_without_its_fold(rng: np.random.Generator) -> None:
    """Every fold's head is fitted on the other folds only: a fold whose cases are relabelled changes the
    other folds' heads, never its own."""
    truth = OrdinalHead(slope=1.0, cuts=(-2.0, -1.0, 0.0, 1.0))
    scores, labels = _draw(truth, 300, rng)
    likelihood = 1 / (1 + np.exp(-scores))
    # five probabilities whose expected likelihood is the drawn one (mix of two categories around it)
    probs = np.zeros((300, 5))
    grid = np.array([0.01, 0.06, 0.30, 0.72, 0.97])
    for i, m in enumerate(np.clip(likelihood, 0.011, 0.969)):
        k = int(np.searchsorted(grid, m)) - 1
        w = (m - grid[k]) / (grid[k + 1] - grid[k])
        probs[i, k], probs[i, k + 1] = 1 - w, w
    cases = [{"id": f"d/{i}", "label": int(labels[i]), "ground_truth_masks": probs[i].tolist(),
              "two_stage_masks": probs[i].tolist()} for i in range(300)]
    fold_of = {f"d/{i}": 1 + i % 3 for i in range(300)}
    rows, heads = cross_validate_head(cases, fold_of)
    assert len(rows) == 300 and len(heads) == 3
    np.testing.assert_allclose(suspicion_score(probs), scores.clip(*np.log([0.011 / 0.989, 0.969 / 0.031])),
                               atol=1e-6)
    for head in heads:
        assert head.slope == pytest.approx(1.0, rel=0.35)
    changed = [dict(c, label=4) if fold_of[c["id"]] == 1 else c for c in cases]
    _, new_heads = cross_validate_head(changed, fold_of)
    assert new_heads[0] == heads[0] and new_heads[1] != heads[1] and new_heads[2] != heads[2]
    with pytest.raises(ValueError, match="no fold"):
        cross_validate_head([*cases, {**cases[0], "id": "d/extra"}], fold_of)


def test_scores_are_recovered_from_a_heads_probabilities(rng: np.random.Generator) -> None:
    """The suspicion score behind a headed model's output comes back from its five probabilities, also
    after float32 rounding, over the whole range the score is clipped to."""
    from engine.training.head_from_onnx import scores_from_probabilities

    cuts = tuple(float(c) for c in np.sort(rng.uniform(-3, 2, 4)))
    head = OrdinalHead(float(rng.uniform(0.5, 2.0)), cuts)  # type: ignore[arg-type]
    scores = rng.uniform(-9.2, 9.2, 200)
    probs = ordinal_probabilities(head, scores)
    np.testing.assert_allclose(scores_from_probabilities(probs, head), scores, atol=1e-6)
    recovered = scores_from_probabilities(probs.astype(np.float32), head)
    np.testing.assert_allclose(recovered, scores, atol=0.05)
    plain = rng.dirichlet(np.ones(5), 50)
    np.testing.assert_allclose(scores_from_probabilities(plain, None), suspicion_score(plain))


def _phantom_base(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray]:
    """A width-0.125 G-CNN checkpoint (OUT/base.pt) whose suspicion scores spread over the crops of a
    phantom dataset (batch norms set to those crops' statistics), the dataset relabelled 3 / 4A / 4B / 4C
    / 5 by those scores plus noise (so a head has something to fit), the crops and their scores."""
    import csv

    from capture.phantom_dataset import write_dataset
    from engine.data.datasets import load_grader_samples
    from engine.training.grader_data import sample_input

    data = write_dataset(tmp_path / "data", 60, seed=int(rng.integers(1000)))
    config = TrainConfig(kind="grader", input_size=32, width=0.125, margin=0.25)
    samples = load_grader_samples(load_records([str(data)]), progress=False)
    x = np.stack([sample_input(s, config, None) for s in samples])
    torch.manual_seed(int(rng.integers(1 << 20)))
    net = GCNN(GCNNConfig(width=0.125, input_size=32)).eval()
    for norm in [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]:
        seen: list[torch.Tensor] = []
        hook = norm.register_forward_hook(lambda _m, inputs, _o, seen=seen: seen.append(inputs[0]))
        with torch.no_grad():
            net(torch.from_numpy(x))
        hook.remove()
        dims = [0] if seen[0].dim() == 2 else [0, 2, 3]
        norm.running_mean.copy_(seen[0].mean(dims))
        norm.running_var.copy_(seen[0].var(dims) + 1e-6)
    with torch.no_grad():
        net.head[-1].weight.mul_(3.0 / net.head[-1].weight.std())
        scores = suspicion_score(torch.softmax(net(torch.from_numpy(x)), dim=1).numpy())
    save_checkpoint(tmp_path / "base.pt", net=net, optimizer=make_optimizer(config, net.parameters()),
                    config=config, net_config=net.config.__dict__, state=RunState())
    noisy = scores + rng.normal(0, 0.3 * scores.std(), len(scores))
    category = {s.id.split("/")[1]: ("3", "4A", "4B", "4C", "5")[int(rank * 5 // len(noisy))]
                for s, rank in zip(samples, np.argsort(np.argsort(noisy)), strict=True)}
    rows = list(csv.DictReader((data / "manifest.csv").open()))
    for row in rows:
        row["birads"] = category[row["id"]]
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return data, x, scores


@pytest.mark.slow
def test_refit_of_an_exported_model_matches_a_fit_on_its_checkpoint(
        tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]) -> None:
    """`train head --init-from MODEL.onnx`: from a model exported with some head, and from one exported
    without a head, the refit reads the network as a head fitted on the checkpoint itself does, and the
    written model gives exactly that reading; the network's ranking of lesions is untouched."""
    data, x, scores = _phantom_base(tmp_path, rng)
    assert scores.std() > 0.3
    common = ["--data", str(data), "--split-seed", "1", "--threads", "1", "--no-progress"]
    assert main(["train", "head", "--init-from", str(tmp_path / "base.pt"), "--out", str(tmp_path / "pt"),
                 *common]) == 0
    reference = OrdinalHead.from_dict(json.loads((tmp_path / "pt" / "head.json").read_text())["head"])
    assert reference.slope > 0.3  # the relabelled data follow the scores: the head has a real slope
    _export(tmp_path / "base.pt", tmp_path / "plain.onnx")
    payload = torch.load(tmp_path / "base.pt", weights_only=False)
    old = OrdinalHead(0.8, tuple(float(c) for c in 0.8 * np.quantile(scores, [0.1, 0.3, 0.6, 0.9])))
    payload["extra"] = {"ordinal_head": old.to_dict()}
    torch.save(payload, tmp_path / "headed.pt")
    _export(tmp_path / "headed.pt", tmp_path / "headed.onnx")
    for name in ("plain", "headed"):
        out = tmp_path / f"refit-{name}"
        capsys.readouterr()
        assert main(["train", "head", "--init-from", str(tmp_path / f"{name}.onnx"), "--out", str(out),
                     *common]) == 0
        assert "network unchanged" in capsys.readouterr().out
        summary = json.loads((out / "head.json").read_text())
        refit = OrdinalHead.from_dict(summary["head"])
        assert summary["ids"] == json.loads((tmp_path / "pt" / "head.json").read_text())["ids"]
        np.testing.assert_allclose(ordinal_probabilities(refit, scores),
                                   ordinal_probabilities(reference, scores), atol=2e-3)
        session = ort.InferenceSession(str(out / "g_cnn.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x})[0]
        np.testing.assert_allclose(got, ordinal_probabilities(refit, scores), atol=2e-3)
        order = np.argsort(scores)
        assert np.all(np.diff(got[order] @ np.array(MALIGNANCY_LIKELIHOOD)) > -1e-4)  # ranking kept
        meta = {p.key: p.value for p in onnx.load(str(out / "g_cnn.onnx")).metadata_props}
        assert OrdinalHead.from_dict(json.loads(meta["sonograde.ordinal_head"])) == refit
        # INT8 calibration keeps the appended head in float, as it does the exported one
        from calibration.quantize import float_nodes

        graph = onnx.load(str(out / "g_cnn.onnx"))
        appended = {n.name for n in graph.graph.node if n.name.startswith("sonograde_refit_head/")}
        assert appended and appended <= set(float_nodes(graph, ("Sigmoid", "Softmax")))
        assert meta["sonograde.model_id"].endswith("-head-data") and meta["sonograde.input_size"] == "32"


def test_refit_refuses_models_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = Path(__file__).resolve().parents[1] / "models"
    refusals = ((models / "roi_cnn.onnx", "not a G-CNN"), (models / "g_cnn.int8.onnx", "quantized"),
                (tmp_path / "missing.onnx", "missing.onnx"))
    for model, message in refusals:
        assert main(["train", "head", "--init-from", str(model), "--data", str(tmp_path), "--out",
                     str(tmp_path / "oh"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert main(["train", "head", "--init-from", str(models / "g_cnn.onnx"), "--init-from",
                 str(models / "g_cnn.onnx"), "--data", str(tmp_path), "--out", str(tmp_path / "oh")]) == 2
    assert "one exported model at a time" in capsys.readouterr().err
