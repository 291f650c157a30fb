"""Training on phantom data: the loss goes down, checkpoints and metrics are written, resume continues;
losses, splits and clear errors."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.birads import MALIGNANCY_LIKELIHOOD
from engine.data.datasets import phantom_roi_arrays
from engine.data.manifest import ManifestRecord, read_manifest
from engine.networks import RoiCNN, RoiConfig
from engine.splits import SplitConfig, check_disjoint, folds_patient_disjoint, make_split
from engine.training.common import TrainConfig, TrainingError, load_checkpoint
from engine.training.grader_objective import allowed_set_loss, distillation_loss, malignancy_loss
from engine.training.roi import batch_tensors, roi_loss, train_roi
from sonograde.commands import train as train_command


def test_allowed_set_loss_is_cross_entropy_for_one_hot_and_sums_for_coarse(rng: np.random.Generator) -> None:
    logits = torch.from_numpy(rng.standard_normal((6, 5)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 5, 6))
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(allowed_set_loss(logits, one_hot), ce, atol=1e-6)
    four = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]).repeat(6, 1)
    expected = -torch.log(torch.softmax(logits, 1)[:, 1:4].sum(1)).mean()
    assert torch.allclose(allowed_set_loss(logits, four), expected, atol=1e-6)


def test_malignancy_loss_is_bce_on_implied_likelihood_and_ignores_unknown(rng: np.random.Generator) -> None:
    logits = torch.from_numpy(rng.standard_normal((5, 5)).astype(np.float32))
    malignant = torch.tensor([1, 0, -1, 1, -1])
    likelihood = torch.softmax(logits, 1) @ torch.tensor(MALIGNANCY_LIKELIHOOD)
    known = malignant >= 0
    expected = torch.nn.functional.binary_cross_entropy(likelihood[known], malignant[known].float())
    assert torch.allclose(malignancy_loss(logits, malignant), expected, atol=1e-6)
    assert float(malignancy_loss(logits, torch.full((5,), -1))) == 0.0


def test_pathology_moves_a_coarse_four_towards_the_matching_subcategory() -> None:
    """A BUS-BRA "4" (4A, 4B or 4C allowed) with a benign biopsy ends up mostly 4A, a malignant one 4C;
    without the pathology term the three stay level."""
    four = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    results = {}
    for name, weight, pathology in [("benign", 1.0, 0), ("malignant", 1.0, 1), ("none", 0.0, 0)]:
        logits = torch.zeros(1, 5, requires_grad=True)
        optimizer = torch.optim.SGD([logits], lr=0.5)
        for _ in range(200):
            pathology_loss = malignancy_loss(logits, torch.tensor([pathology]))
            loss = allowed_set_loss(logits, four) + weight * pathology_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results[name] = torch.softmax(logits.detach(), 1)[0].numpy()
    assert results["benign"].argmax() == 1 and results["benign"][1:4].sum() > 0.9
    assert results["malignant"].argmax() == 3 and results["malignant"][1:4].sum() > 0.9
    assert np.ptp(results["none"][1:4]) < 1e-6


@pytest.mark.slow
def test_roi_loss_decreases_on_phantom_batch() -> None:
    torch.manual_seed(0)
    # 160 x 160 instead of 288 keeps this fast; the network is fully convolutional.
    arrays = phantom_roi_arrays(4, seed=int(np.random.randint(1 << 30)), size=160)
    x, y = batch_tensors(arrays.images, arrays.masks)
    net = RoiCNN(RoiConfig(width=0.125))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss = roi_loss(net(x), y, "dice+bce")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < losses[0] - 0.05, losses


def _record(dataset: str, ident: str, patient: str | None, fold: int | None,
            birads: str = "3") -> ManifestRecord:
    return ManifestRecord(dataset=dataset, id=ident, image=Path(f"/x/{ident}.jpg"), mask=None, birads=birads,
                          patient=patient, fold=fold)


def test_split_is_patient_disjoint_and_holds_out_the_fold(rng: np.random.Generator) -> None:
    records = []
    for patient in range(60):
        fold = int(rng.integers(1, 6))
        for image in range(int(rng.integers(1, 4))):
            records.append(_record("busbra", f"p{patient}-{image}", str(patient), fold))
    records += [_record("busi", f"b{i}", None, None) for i in range(10)]
    records += [_record("usg", f"c{i}", None, None, birads=("3", "4A", "5")[i % 3]) for i in range(30)]
    split = make_split(records, SplitConfig(test_fold=2, val_fraction=0.2, test_fraction=0.3, seed=1))
    check_disjoint(split)
    assert all(r.fold == 2 for r in split.test if r.dataset == "busbra")
    assert not any(r.fold == 2 for r in split.train + split.val if r.dataset == "busbra")
    assert all(r.dataset != "busi" for r in split.test + split.val)
    usg_test = [r.birads for r in split.test if r.dataset == "usg"]
    assert sorted(usg_test) == ["3"] * 3 + ["4A"] * 3 + ["5"] * 3  # stratified: 30 % of each category
    shared = [_record("busbra", "a", "1", 1), _record("busbra", "b", "1", 2)]
    assert not folds_patient_disjoint(shared)
    with pytest.raises(ValueError, match="share patients"):
        make_split(shared)


def test_cross_validation_folds_partition_the_cases(rng: np.random.Generator) -> None:
    patient_fold = rng.integers(1, 6, 20)
    records = [_record("busbra", f"p{i}", str(i // 2), int(patient_fold[i // 2])) for i in range(40)]
    categories = ("3", "4A", "4B", "4C", "5")
    records += [_record("usg", f"c{i}", None, None, birads=categories[int(rng.integers(5))])
                for i in range(57)]
    seed = int(rng.integers(1000))
    tests = []
    for fold in range(1, 6):
        split = make_split(records, SplitConfig(test_fold=fold, val_fraction=0.1, seed=seed, folds=5))
        check_disjoint(split)
        assert {r.fold for r in split.test if r.dataset == "busbra"} <= {fold}
        assert split.val and all(r.dataset in ("busbra", "usg") for r in split.val)
        tests.append({r.id for r in split.test if r.dataset == "usg"})
        assert 57 // 5 - 1 <= len(tests[-1]) <= 57 // 5 + 2  # balanced folds
    assert set.union(*tests) == {f"c{i}" for i in range(57)}  # every case held out ...
    assert sum(len(t) for t in tests) == 57  # ... exactly once
    with pytest.raises(ValueError, match=r"test_fold must be 1\.\.5"):
        SplitConfig(test_fold=6, folds=5)
    with pytest.raises(ValueError, match="folds must be"):
        SplitConfig(folds=1)


@pytest.mark.realdata
def test_busbra_official_folds_are_patient_disjoint(shared_data: Path) -> None:
    records = read_manifest(shared_data / "busbra")
    assert folds_patient_disjoint(records)
    split = make_split(records)
    assert len(split.test) == sum(r.fold == 1 for r in records)


@pytest.mark.slow
def test_train_roi_on_phantom_writes_checkpoints_and_resumes(tmp_path: Path) -> None:
    config = TrainConfig(kind="roi", out=str(tmp_path), epochs=1, width=0.125, batch_size=2, phantom=5,
                         optimizer="adamw", max_steps=None, progress=False)
    state = train_roi(config)
    assert state.epoch == 1 and state.step == 2  # 4 training images (1 of 5 is validation), batch 2
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.png", "split.json"):
        assert (tmp_path / name).is_file(), name
    config.epochs = 2
    state = train_roi(config, resume=True)
    assert state.epoch == 2 and state.step == 4
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "val_dice_mean" in rows[0]
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 2


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return train_command.run(parser.parse_args(argv))


def test_train_command_rejects_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["roi", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert "no manifest.csv" in capsys.readouterr().err
    assert _cli(["grader", "--out", str(tmp_path / "run")]) == 2
    assert "nothing to train" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.csv").write_text("id,mask\na,b.png\n")
    assert _cli(["roi", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "run")]) == 2
    assert "missing column" in capsys.readouterr().err
    with pytest.raises(TrainingError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert _cli(["roi", "--phantom", "3", "--out", str(tmp_path), "--resume"]) == 2
    assert "last.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_train_grader_command_on_phantom(tmp_path: Path) -> None:
    out = tmp_path / "grader"
    code = _cli(["grader", "--phantom", "10", "--out", str(out), "--epochs", "1", "--width", "0.125",
                 "--input-size", "64", "--batch-size", "4", "--optimizer", "adamw", "--no-progress",
                 "--malignancy-weight", "0.5"])
    assert code == 0
    payload = load_checkpoint(out / "best.pt")
    assert payload["kind"] == "grader" and payload["net_config"]["input_size"] == 64
    assert payload["train_config"]["malignancy_weight"] == 0.5
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and "val_loss" in rows[0]
    # the selection loss is the training objective: category loss + weight x pathology loss
    row = {k: float(v) for k, v in rows[0].items() if k.startswith("val_") and "loss" in k}
    expected = row["val_category_loss"] + 0.5 * row["val_malignancy_loss"]
    assert row["val_loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_frame_view_grader_trains_and_exports_its_view(tmp_path: Path) -> None:
    out = tmp_path / "grader"
    code = _cli(["grader", "--phantom", "10", "--out", str(out), "--epochs", "1", "--width", "0.125",
                 "--input-size", "48", "--batch-size", "4", "--optimizer", "adamw", "--no-progress",
                 "--view", "frame", "--mask-channel"])
    assert code == 0
    payload = load_checkpoint(out / "best.pt")
    assert payload["train_config"]["view"] == "frame" and payload["net_config"]["in_channels"] == 2
    from sonograde.commands import export as export_command

    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "g.onnx"),
                              "--no-dynamo"])
    assert export_command.run(args) == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "g.onnx")).metadata_props}
    assert meta["sonograde.grader_view"] == "frame" and "-frame-" in meta["sonograde.model_id"]


def test_distillation_loss_is_kl_and_pulls_a_student_onto_its_teacher(rng: np.random.Generator) -> None:
    teacher = torch.softmax(torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32)) * 2, 1)
    student_logits = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    student = torch.softmax(student_logits, 1)
    expected = (teacher * (teacher.log() - student.log())).sum(1).mean()
    assert torch.allclose(distillation_loss(student_logits, teacher.log()), expected, atol=1e-6)
    assert float(distillation_loss(teacher.log(), teacher.log())) == pytest.approx(0.0, abs=1e-6)
    logits = student_logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(500):
        optimizer.zero_grad()
        distillation_loss(logits, teacher.log()).backward()
        optimizer.step()
    assert torch.allclose(torch.softmax(logits.detach(), 1), teacher, atol=5e-3)


def test_grader_distils_trained_graders_and_refuses_another_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A student trained with a large distillation weight ends closer to its teachers (validation KL)
    than the same run with weight 0, which only measures the KL."""
    common = ["--phantom", "16", "--width", "0.125", "--batch-size", "4", "--optimizer", "adamw", "--lr",
              "3e-3", "--no-progress", "--input-size", "48"]
    seed = int(np.random.randint(1000))
    for name, epochs, offset in (("t1", "3", 0), ("t2", "1", 1)):
        assert _cli(["grader", *common, "--epochs", epochs, "--seed", str(seed + offset),
                     "--out", str(tmp_path / name)]) == 0
    teachers = ["--distill-from", str(tmp_path / "t1" / "last.pt"),
                "--distill-from", str(tmp_path / "t2" / "last.pt")]
    final_kl = {}
    for weight in ("0", "20"):
        out = tmp_path / f"student{weight}"
        assert _cli(["grader", *common, "--epochs", "3", "--seed", str(seed + 2), "--out", str(out),
                     *teachers, "--distill-weight", weight]) == 0
        config = load_checkpoint(out / "last.pt")["train_config"]
        assert len(config["distill_from"]) == 2 and config["distill_weight"] == float(weight)
        final_kl[weight] = float(list(csv.DictReader((out / "metrics.csv").open()))[-1]["val_teacher_kl"])
    assert 0 <= final_kl["20"] < 0.8 * final_kl["0"], final_kl
    capsys.readouterr()
    assert _cli(["grader", *common, "--epochs", "1", "--input-size", "64", "--out", str(tmp_path / "bad"),
                 *teachers]) == 2
    assert "takes another input" in capsys.readouterr().err
    assert _cli(["roi", "--phantom", "4", "--out", str(tmp_path / "roi"), *teachers]) == 2
    assert "--distill-from is for train grader" in capsys.readouterr().err


def test_train_command_rejects_a_bad_cross_validation_fold(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["grader", "--phantom", "4", "--out", str(tmp_path), "--cv-folds", "5", "--test-fold", "7"]
    assert _cli(argv) == 2
    assert "test_fold must be 1..5" in capsys.readouterr().err


def test_grader_label_rules() -> None:
    from engine.data.datasets import grader_allowed

    assert grader_allowed("2").tolist() == [1, 0, 0, 0, 0]  # BI-RADS 2 merged into "3"
    assert grader_allowed("4").tolist() == [0, 1, 1, 1, 0]  # coarse 4: any of 4A, 4B, 4C
    assert grader_allowed("4B").tolist() == [0, 0, 1, 0, 0]
    assert grader_allowed("6").tolist() == [0, 0, 0, 0, 1]
    assert grader_allowed("1") is None and grader_allowed(None) is None


@pytest.mark.slow
def test_coarse_bias_keeps_a_coarse_datasets_base_rate_out_of_the_model(tmp_path: Path) -> None:
    """With --coarse-bias the lesions of a dataset without five-way labels train through their own logit
    offset: a coarse dataset that says "3" for everything pushes that offset towards "3", it is saved
    with the checkpoint (not in the model) and restored on resume."""
    from capture.phantom_dataset import write_dataset

    five_way = write_dataset(tmp_path / "five", 10, seed=int(np.random.randint(1 << 30)),
                             size=(160, 128))
    coarse = tmp_path / "coarse"
    coarse.mkdir()
    for sub in ("images", "masks"):
        (coarse / sub).symlink_to(five_way / sub)
    rows = list(csv.DictReader((five_way / "manifest.csv").open()))
    with (coarse / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "mask", "birads"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"id": row["id"], "image": row["image"], "mask": row["mask"], "birads": "3"})
    out = tmp_path / "run"
    common = ["grader", "--data", str(five_way), "--data", str(coarse), "--out", str(out),
              "--width", "0.125", "--input-size", "64", "--batch-size", "4", "--optimizer", "adamw",
              "--lr", "1e-2", "--coarse-bias", "--no-progress", "--test-fraction", "0.2"]
    assert _cli([*common, "--epochs", "1"]) == 0
    first = load_checkpoint(out / "last.pt")
    bias = first["extra"]["coarse_bias"]
    assert float(bias[0]) > float(bias[1:].max()) + 0.01, bias  # "3" is what the coarse dataset says
    assert "coarse_bias" not in str(list(first["model"]))  # not part of the exported network
    without = [a for a in common if a != "--coarse-bias"]
    assert _cli([*without, "--epochs", "2", "--resume"]) == 2  # the offset's optimizer state would be lost
    assert _cli([*common, "--epochs", "2", "--resume"]) == 0
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["state"]["epoch"] == 2 and len(resumed["optimizer"]["param_groups"]) == 2
    assert not torch.equal(resumed["extra"]["coarse_bias"], bias)  # kept training from the saved value


def test_with_offset_equals_softmax_of_shifted_logits(rng: np.random.Generator) -> None:
    from engine.training.grader_data import with_offset

    logits = torch.from_numpy(rng.standard_normal((4, 5)).astype(np.float32))
    offset = torch.from_numpy(rng.standard_normal(5).astype(np.float32))
    probs = torch.softmax(logits, 1).numpy()
    rows = [True, False, True, False]
    out = with_offset(probs, rows, offset)
    np.testing.assert_allclose(out[[0, 2]], torch.softmax(logits[[0, 2]] + offset, 1).numpy(), atol=1e-6)
    np.testing.assert_array_equal(out[[1, 3]], probs[[1, 3]])


def test_train_command_explains_an_unusable_device(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["roi", "--phantom", "3", "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "1"]
    assert _cli([*argv, "--device", "tpu"]) == 2
    assert "unknown training device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _cli([*argv, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "sees no CUDA GPU" in err and "--device cpu" in err
        assert not (tmp_path / "run" / "last.pt").exists()
    else:
        assert _cli([*argv, "--device", f"cuda:{torch.cuda.device_count()}"]) == 2
        assert "CUDA device(s) here" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of PyTorch and an NVIDIA GPU")
def test_grader_trained_on_a_gpu_resumes_on_the_cpu(tmp_path: Path) -> None:
    base = ["grader", "--phantom", "10", "--out", str(tmp_path), "--width", "0.125", "--input-size", "48",
            "--batch-size", "4", "--optimizer", "adamw", "--no-progress", "--mask-channel"]
    assert _cli([*base, "--epochs", "1", "--device", "cuda"]) == 0
    assert _cli([*base, "--epochs", "2", "--device", "cpu", "--resume"]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["state"]["epoch"] == 2
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "metrics.csv").open())] == ["1", "2"]


def _export_cli(argv: list[str]) -> int:
    from sonograde.commands import export as export_command

    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args(argv))


@pytest.mark.slow
def test_several_grader_checkpoints_export_as_one_averaging_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx
    import onnxruntime as ort

    base = ["grader", "--phantom", "10", "--epochs", "1", "--width", "0.125", "--input-size", "48",
            "--batch-size", "4", "--optimizer", "adamw", "--no-progress", "--mask-channel"]
    for seed in (1, 2):
        assert _cli([*base, "--view", "frame", "--seed", str(seed), "--out", str(tmp_path / f"f{seed}")]) == 0
    assert _cli([*base, "--view", "crop", "--out", str(tmp_path / "crop")]) == 0
    members = [tmp_path / "f1" / "last.pt", tmp_path / "f2" / "last.pt"]
    for i, member in enumerate(members):
        out = tmp_path / f"m{i}.onnx"
        assert _export_cli(["--checkpoint", str(member), "--out", str(out), "--no-dynamo"]) == 0
    ensemble = tmp_path / "ens.onnx"
    argv = [a for m in members for a in ("--checkpoint", str(m))]
    assert _export_cli([*argv, "--out", str(ensemble), "--no-dynamo"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(ensemble)).metadata_props}
    assert meta["sonograde.ensemble_members"] == "2" and meta["sonograde.grader_view"] == "frame"
    assert "-ens2" in meta["sonograde.model_id"]

    x = np.random.default_rng(7).standard_normal((3, 2, 48, 48)).astype(np.float32)
    x[:, 1] = x[:, 1] > 0

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})[0]

    singles = [run(tmp_path / f"m{i}.onnx") for i in range(2)]
    assert not np.allclose(singles[0], singles[1], atol=1e-3)  # two different networks
    np.testing.assert_allclose(run(ensemble), (singles[0] + singles[1]) / 2, atol=1e-5)

    capsys.readouterr()
    crop = tmp_path / "crop" / "last.pt"
    mixed = [*argv[:2], "--checkpoint", str(crop), "--out", str(tmp_path / "bad.onnx")]
    assert _export_cli(mixed) == 2
    err = capsys.readouterr().err
    assert "different input" in err and "view 'crop' vs 'frame'" in err
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["grader", "--phantom", "10", "--epochs", "1", "--width", "0.125", "--input-size", "48",
            "--batch-size", "4", "--optimizer", "adamw", "--no-progress", "--mask-channel"]
    assert _cli([*base, "--out", str(tmp_path / "source"), "--seed", "1"]) == 0
    source = load_checkpoint(tmp_path / "source" / "last.pt")["model"]
    # a learning rate of 1e-12 leaves the weights where they started: the source's, not a fresh seed-2 init
    assert _cli([*base, "--out", str(tmp_path / "tuned"), "--seed", "2", "--lr", "1e-12", "--max-steps", "1",
                 "--init-from", str(tmp_path / "source" / "last.pt")]) == 0
    fresh_argv = ["--out", str(tmp_path / "fresh"), "--seed", "2", "--lr", "1e-12", "--max-steps", "1"]
    assert _cli([*base, *fresh_argv]) == 0
    tuned = load_checkpoint(tmp_path / "tuned" / "last.pt")
    fresh = load_checkpoint(tmp_path / "fresh" / "last.pt")["model"]
    weights = [k for k in source if k.endswith("weight") and source[k].dim() == 4]
    assert weights
    for key in weights:
        torch.testing.assert_close(tuned["model"][key], source[key], atol=1e-6, rtol=0)
    assert any(not torch.allclose(fresh[k], source[k]) for k in weights)
    assert tuned["state"]["epoch"] == 1 and tuned["train_config"]["init_from"].endswith("last.pt")

    capsys.readouterr()
    other = [a if a != "48" else "64" for a in base]
    source_pt = str(tmp_path / "source" / "last.pt")
    assert _cli([*other, "--out", str(tmp_path / "bad"), "--init-from", source_pt]) == 2
    assert "input_size 48 there, 64 here" in capsys.readouterr().err
    roi = ["roi", "--phantom", "3", "--out", str(tmp_path / "roi"), "--no-progress", "--max-steps", "1"]
    assert _cli([*roi, "--init-from", str(tmp_path / "source" / "last.pt")]) == 2
    assert "is a grader checkpoint" in capsys.readouterr().err
    # the same command re-run with --resume continues the run; other starting weights are refused
    tuned_argv = [*base, "--out", str(tmp_path / "tuned"), "--seed", "2", "--lr", "1e-12"]
    assert _cli([*tuned_argv, "--epochs", "2", "--resume", "--init-from", source_pt]) == 0
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["state"]["epoch"] == 2
    assert _cli([*tuned_argv, "--epochs", "3", "--resume", "--init-from",
                 str(tmp_path / "fresh" / "last.pt")]) == 2
    assert "not --init-from" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["state"]["epoch"] == 2
