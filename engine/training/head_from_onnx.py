"""Refit the ordinal head of an exported G-CNN (such as the shipped ``models/g_cnn.onnx``) without its
training checkpoint: ``sonograde train head --init-from models/g_cnn.onnx --data YOUR_DATA``.

The shipped grader reads one suspicion score s through a cumulative-logit head (``engine.training.ordinal``):
P(Y > k) = sigmoid(a s - c_k). Its cut points carry the base rates of the cases it was fitted on; on a
population with other base rates (more benign lesions, another reader) refitting the five numbers is the
cheapest adaptation, and it needs only the network's suspicion score, which the model's output gives
back exactly: P(Y > 3) = 1 - p(3) = sigmoid(a s - c_1), so

    s = (log(1 - p(3)) - log(p(3)) + c_1) / a       with 1 - p(3) summed from the other four.

A G-CNN without a head gives s as the logit of its expected likelihood of malignancy. The refitted model
is the original graph with its output renamed and a small head graph appended (the old head inverted,
the new one applied): no network weight changes, and the malignancy ranking stays the same.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engine import contract
from engine.birads import MALIGNANCY_LIKELIHOOD
from engine.ordinal_head import SCORE_CLIP, OrdinalHead, ordinal_probabilities, suspicion_score
from engine.splits import SplitConfig
from engine.training.ordinal import (
    HeadFit,
    describe_fit,
    fit_head_on_lesions,
    plot_head,
)

TINY = 1e-30  # floor before a log: p(3) of a very suspicious lesion can round to 0 in float32
HEAD_PREFIX = "sonograde_refit_head/"
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                 "DynamicQuantizeLinear"}


def read_head(metadata: dict[str, str]) -> OrdinalHead | None:
    """The ordinal head recorded in a model's metadata (``sonograde.ordinal_head``), or None."""
    text = metadata.get(contract.ORDINAL_HEAD)
    return OrdinalHead.from_dict(json.loads(text)) if text else None


def scores_from_probabilities(probs: np.ndarray, head: OrdinalHead | None) -> np.ndarray:
    """The suspicion scores (N,) behind a model's five probabilities (N, 5): the inverse of ``head`` when
    the model carries one, else the logit of the expected likelihood of malignancy."""
    probs = np.asarray(probs, dtype=np.float64)
    if head is None:
        return suspicion_score(probs)
    above = np.maximum(probs[:, 1:].sum(axis=1), TINY)
    return (np.log(above) - np.log(np.maximum(probs[:, 0], TINY)) + head.cuts[0]) / head.slope


def with_refitted_head(model, new_head: OrdinalHead, old_head: OrdinalHead | None, *,
                       model_id: str, fitted_on: str):
    """A copy of the ONNX ``model`` (output ``probs``, (N, 5)) whose output is read through ``new_head``:
    the old output is renamed, its suspicion score recovered (``scores_from_probabilities`` as graph
    operations) and the new head applied. Metadata ``sonograde.ordinal_head`` and ``sonograde.model_id``
    are replaced; ``sonograde.ordinal_head_fitted_on`` says on what."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if outputs != ["probs"]:
        raise ValueError(f"expected one output named 'probs' (a G-CNN), got {outputs}")
    base = HEAD_PREFIX + "base_probs"
    for node in graph.node:
        node.output[:] = [base if name == "probs" else name for name in node.output]

    def name(short: str) -> str:
        return HEAD_PREFIX + short

    def const(short: str, values) -> str:  # initializers get their own prefix: no clash with node outputs
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32),
                                                         name("const/" + short)))
        return name("const/" + short)

    def axes(short: str, values) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64),
                                                         name("const/" + short)))
        return name("const/" + short)

    nodes = []

    def op(kind: str, inputs: list[str], short: str, **attributes) -> str:
        nodes.append(helper.make_node(kind, inputs, [name(short)], name=name(short), **attributes))
        return name(short)

    first = op("Slice", [base, axes("start0", [0]), axes("end1", [1]), axes("axis1", [1])], "p3")
    if old_head is not None:
        others = op("Slice", [base, axes("start1", [1]), axes("end5", [5]), axes("axis1b", [1])], "others")
        above = op("ReduceSum", [others, axes("sum_axis", [1])], "above", keepdims=1)
        log_above = op("Log", [op("Max", [above, const("tiny", TINY)], "above_floor")], "log_above")
        log_first = op("Log", [op("Max", [first, const("tiny2", TINY)], "p3_floor")], "log_p3")
        logit = op("Sub", [log_above, log_first], "logit_above")
        shifted = op("Add", [logit, const("old_cut1", old_head.cuts[0])], "shifted")
        score = op("Div", [shifted, const("old_slope", old_head.slope)], "score")
    else:
        # Mul + ReduceSum, not MatMul: calibration.quantize.float_nodes walks back from the output to the
        # last weighted layer (Conv / Gemm / MatMul) and keeps this whole tail in float
        weighted = op("Mul", [base, const("likelihood", [MALIGNANCY_LIKELIHOOD])], "weighted")
        likelihood = op("ReduceSum", [weighted, axes("likelihood_axis", [1])], "likelihood_raw", keepdims=1)
        clipped = op("Clip", [likelihood, const("clip_lo", SCORE_CLIP), const("clip_hi", 1 - SCORE_CLIP)],
                     "likelihood")
        complement = op("Sub", [const("one", 1.0), clipped], "complement")
        score = op("Sub", [op("Log", [clipped], "log_m"), op("Log", [complement], "log_1m")], "score")
    scaled = op("Mul", [score, const("new_slope", new_head.slope)], "scaled")
    above_k = op("Sigmoid", [op("Sub", [scaled, const("new_cuts", [list(new_head.cuts)])], "z")], "above_k")
    zeros = op("Sub", [first, first], "zeros")  # (N, 1) without shape arithmetic
    ones = op("Add", [zeros, const("one_b", 1.0)], "ones")
    upper = op("Concat", [ones, above_k], "upper", axis=1)
    lower = op("Concat", [above_k, zeros], "lower", axis=1)
    difference = op("Sub", [upper, lower], "difference")
    # ends in a Softmax of the log, as every exported grader does (engine.export): the output stays a
    # distribution and INT8 calibration recognizes the head as the float tail
    floor = op("Max", [difference, const("floor", 1e-12)], "floored")
    nodes.append(helper.make_node("Softmax", [op("Log", [floor], "log_probs")], ["probs"], name=name("probs"),
                                  axis=1))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5]))
    metadata = contract.read_metadata(model)
    metadata.update({contract.ORDINAL_HEAD: json.dumps(new_head.to_dict()), contract.MODEL_ID: model_id,
                     contract.ORDINAL_HEAD_FITTED_ON: fitted_on})
    contract.write_metadata(model, metadata)
    onnx.checker.check_model(model)
    return model


def fit_head_from_onnx(model_path: str | Path, data: list[str], out: str | Path, split: SplitConfig, *,
                       cache_dir: str | None = None, threads: int = 1, progress: bool = True,
                       model_id: str | None = None) -> HeadFit:
    """Fit a new ordinal head for the exported G-CNN ``model_path`` on the non-test part (training +
    validation patients) of ``split`` of each ``data`` folder, each lesion read through its annotated
    mask; write OUT/head.json, OUT/head.png and OUT/g_cnn.onnx (the model with the new head, checked
    against the numpy head on the fitted lesions). The model's metadata gives its input (size, margin,
    mask channel, view). An exported model does not say what it was trained on: give only data it has
    not seen. TrainingError for a model that is not an FP32 G-CNN, or fewer than 10 lesions labelled 4A,
    4B or 4C."""
    import onnx

    from engine.backends import load_backend
    from engine.backends.base import ModelLoadError
    from engine.data.datasets import load_grader_samples, load_records
    from engine.splits import make_split
    from engine.training.common import TrainConfig, TrainingError, write_json
    from engine.training.grader_data import sample_input

    model_path = Path(model_path)
    try:
        backend = load_backend(model_path, backend="onnxruntime", threads=threads)
    except ModelLoadError as error:
        raise TrainingError(str(error)) from error
    metadata = backend.metadata
    if metadata.get(contract.MODEL) != "grader":
        raise TrainingError(f"{model_path} is not a G-CNN (sonograde.model is "
                            f"{metadata.get(contract.MODEL)!r}); an ordinal head reads a grader")
    model = onnx.load(str(model_path))
    quantized = {n.op_type for n in model.graph.node} & QUANTIZED_OPS
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    if quantized or half:
        raise TrainingError(f"{model_path} is a {'quantized' if quantized else 'float16'} model; refit the "
                            "head of the FP32 model (g_cnn.onnx) and make its INT8 / FP16 variants from the "
                            "result with sonograde calibrate")
    if not data:
        raise TrainingError("an ordinal head needs --data: a folder with five-way labels (3, 4a, 4b, 4c, 5)")
    old_head = read_head(metadata)
    grader_input = contract.GraderInput.from_metadata(metadata)
    config = TrainConfig(kind="grader", input_size=grader_input.input_size, margin=grader_input.roi_margin,
                         mask_channel=grader_input.mask_channel, view=grader_input.view)
    parts = make_split(load_records(data), split)
    samples = load_grader_samples(parts.train + parts.val, cache_dir=cache_dir, progress=progress)
    batches = [np.stack([sample_input(s, config, None) for s in samples[i:i + 32]])
               for i in range(0, len(samples), 32)]
    probs = np.concatenate([backend.run(batch) for batch in batches]) if batches else np.zeros((0, 5))
    scores = scores_from_probabilities(probs, old_head)
    head, allowed = fit_head_on_lesions(samples, scores, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = "+".join(sorted({Path(d).name for d in data}))
    new_id = model_id or f"{metadata.get(contract.MODEL_ID, model_path.stem)}-head-{names}"
    fitted_on = f"{names}, split {json.dumps(asdict(split))}, training + validation"
    refitted = with_refitted_head(model, head, old_head, model_id=new_id, fitted_on=fitted_on)
    onnx.save(refitted, str(out / "g_cnn.onnx"))
    check = load_backend(out / "g_cnn.onnx", backend="onnxruntime", threads=threads)
    checked = np.concatenate(batches)[:64]  # the inputs already made for the fit
    difference = float(np.abs(check.run(checked) - ordinal_probabilities(head, scores[:64])).max())
    if difference > 1e-3:
        raise TrainingError(f"the refitted model differs from its head by {difference:.2g} on the fitted "
                            "lesions; this is a bug, please report it")
    counts, accuracy = describe_fit(head, scores, allowed, [s.id for s in samples])
    summary = {"bases": [str(model_path)], "previous_head": old_head.to_dict() if old_head else None,
               "data": list(data), "split": asdict(split), "head": head.to_dict(), "cases": len(samples),
               "counts": counts, "in_sample_accuracy": accuracy,
               "onnx_check_max_abs_diff": difference,
               "model_id": new_id, "ids": [s.id for s in samples]}
    write_json(out / "head.json", summary)
    plot_head(head, scores, allowed, out / "head.png")
    written = (f"{out / 'head.json'}, {out / 'head.png'} and {out / 'g_cnn.onnx'} (model id {new_id}; the "
               "network unchanged, read through the new head; max abs difference to the head "
               f"{difference:.1e}; make INT8 / FP16 variants with sonograde calibrate)")
    return HeadFit(head, summary["ids"], counts, summary["in_sample_accuracy"], written)
