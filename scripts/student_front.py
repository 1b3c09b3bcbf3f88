"""The student's accuracy/latency front: width, stem stride and normalisation against val Dice and end-to-end time
on one core, and the 5-seed teacher ensemble as the distillation target (issue #30, items 3 and 4).

Each configuration is one change to params.yaml's ``distill.student`` (CONFIGS below; everything else as committed,
``distill.epochs`` included), distilled exactly as the distill stage does (ultraseg.pipeline.distill.run) from the
teacher trained exactly as the train stage does (train.seed), or, for ``*-ensemble`` configurations, from the mean of
the logits and presence logits of the teachers trained at train.seed, train.seed + 1, ... (ultraseg.ensemble.Ensemble,
standing where the stage loads its teacher checkpoint). The input resolution (preprocess.size) is not searched: it
would need the preprocess stage rerun on the device. The students are not pruned (the prune_finetune stage would
follow any of them alike).

Two modes, run where each belongs:

  training (a GPU; several teachers and students at once, each in its own process) scores every student on the VAL
  split as scripts/ensemble_probe.py scores a teacher:
    val_dice          lesion-image mean Dice at the student's own best val threshold (the evaluate stage's grid),
                      probabilities resized to each image's original resolution
    val_presence_auc  ROC AUC of the presence logit, lesion against normal val images
    shift             the moderate scanner-shift suite on val: mean and worst Dice drop against the unshifted images
  with its parameters and MACs at the training input, and packs every student checkpoint (as the distill stage saves
  it) into students-<k>.pt archives of at most --archive-mb each beside the JSON.

  --latency (this CPU, after the training run; reads the JSON and its archives) exports each student to ONNX
  (ultraseg.onnx_io.export, as the export stage), quantizes it to int8 (ultraseg.quantization.quantize, calibrated on
  the preprocessed train images, as the quantize stage), makes the int8 file deployable as the deploy stage does (rule,
  presence calibration and out-of-distribution check chosen on val: ultraseg.pipeline.deploy.run; the fp32 file gets
  the same deploy metadata), and times each file end to end on ONE thread through the runtime (Segmenter: frame in,
  answer out, ultraseg.pipeline.benchmark.measure_end_to_end) on a real val scan and on it enlarged to 640x480. The
  machine is shared and noisy: configurations are measured in interleaved rounds, and each is reported as its median
  ratio to ``base`` within a round, beside the absolute p50s. The front: configurations that no other beats on both
  val Dice and end-to-end int8 time on the scan.

Nothing reads the test split. The JSON (default experiments/front.json) is rewritten after every finished
teacher, student, and latency measurement, so an interrupted run leaves what it finished.

    python scripts/student_front.py --out $OUT/student_front.json               # GPU: every configuration
    python scripts/student_front.py --latency --out experiments/front.json \\
        --archives RETURNED_FOLDER --repeats SEEDS_RUN.json --raw data/raw      # then here, on the returned files
    python scripts/student_front.py --configs base,base-ensemble --members 2 --teacher-epochs 1 --epochs 1 \\
        --train-images 48 --val-images 24 --device cpu --parallel 2 --out /tmp/front/front.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing
import os
import platform
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import yaml
from tqdm import tqdm

from ultraseg import params as params_mod
from ultraseg.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- configurations


class Config(NamedTuple):
    """One student: its changes to ``distill.student`` and the teacher it is distilled from."""

    student: dict[str, Any]
    teacher: str = "single"  # single (train.seed) | ensemble (the --members teachers)


CONFIGS: dict[str, Config] = {
    "base": Config({}),
    "base-ensemble": Config({}, teacher="ensemble"),
    "batchnorm": Config({"norm": "batch"}),
    "stride2": Config({"stem_stride": 2}),
    "wide": Config({"widths": [48, 96, 144]}),
    "wider": Config({"widths": [64, 128, 192]}),
    "narrow": Config({"widths": [24, 48, 64]}),
    "stride2-batchnorm": Config({"stem_stride": 2, "norm": "batch"}),
}
"""Every configuration searched; ``base`` is the committed student and the reference of every latency ratio."""


def student_params(data: dict, student: dict[str, Any], train: dict[str, Any] | None = None,
                   distill: dict[str, Any] | None = None) -> params_mod.Params:
    """The params ``data`` (params.yaml as a dict, not changed) with ``student`` merged into ``distill.student``,
    ``train`` into ``train`` and ``distill`` into ``distill``, validated. A key the section does not have is refused
    (a misspelt override would otherwise train the committed student under another name)."""
    data = copy.deepcopy(data)
    for where, section, updates in (("distill.student", data["distill"]["student"], student),
                                    ("train", data["train"], train or {}), ("distill", data["distill"], distill or {})):
        unknown = sorted(set(updates) - set(section))
        if unknown:
            raise KeyError(f"{where} has no {', '.join(unknown)}; its keys: {', '.join(section)}")
        section.update(updates)
    return params_mod.from_dict(data)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names whose (score, cost) no other point beats: at least as high a score and at most the cost, and
    strictly better in one. Points with a non-finite score or cost are left out. Sorted by cost."""
    finite = {name: p for name, p in points.items() if np.isfinite(p).all()}
    front = [name for name, (score, cost) in finite.items()
             if not any(s >= score and c <= cost and (s > score or c < cost) for s, c in finite.values())]
    return sorted(front, key=lambda name: (finite[name][1], -finite[name][0]))


def pack(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """``sizes`` (name -> bytes, in order) into as few bins of at most ``limit`` bytes as first fit gives; a name
    bigger than ``limit`` gets a bin of its own."""
    bins: list[list[str]] = []
    used: list[int] = []
    for name, size in sizes.items():
        k = next((k for k, u in enumerate(used) if u + size <= limit), None)
        if k is None:
            bins.append([]), used.append(0)
            k = len(bins) - 1
        bins[k].append(name)
        used[k] += size
    return bins


# ---------------------------------------------------------------------------------------------------- training


def _probe():
    """scripts/ensemble_probe.py, a sibling script (not a package): its teacher training, split subset and scoring."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import ensemble_probe

    return ensemble_probe


def train_teacher(params_path: Path, overrides: dict, data: Path, split: Path, work: Path) -> dict:
    """One teacher as the train stage trains it (scripts/ensemble_probe.py's train_member, in its own process)."""
    return _probe().train_member(params_path, overrides, data, split, work)


class EnsembleCheckpoints:
    """Stands for :mod:`ultraseg.checkpoint` inside the distill stage's code: loading the teacher gives the
    :class:`~ultraseg.ensemble.Ensemble` of ``members`` (checkpoint paths) instead of one network."""

    def __init__(self, members: list[Path]) -> None:
        self.members = members

    def load(self, _path, device="cpu"):
        from ultraseg import checkpoint
        from ultraseg.ensemble import Ensemble

        loaded = [checkpoint.load(path, device) for path in self.members]
        meta = {**loaded[0][1], "val": {"dice": None}, "members": [str(p) for p in self.members]}
        return Ensemble([model for model, _ in loaded]).to(device).eval(), meta


def distil_student(data_yaml: dict, name: str, student: dict, train: dict, distill: dict, teachers: list[Path],
                   data: Path, split: Path, work: Path) -> dict:
    """One student as the distill stage distils it (in its own process), from ``teachers[0]`` or, with several, from
    their ensemble; its stage summary, checkpoint path and wall time."""
    from ultraseg import training
    from ultraseg.io import write_text
    from ultraseg.pipeline import distill as distill_stage

    params = student_params(data_yaml, student, train, distill)
    out, folder = work / f"student_{name}.pt", work / f"distill_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    if len(teachers) == 1:
        teacher, loader = teachers[0], contextlib.nullcontext()
    else:  # the stage reads the teacher path's bytes into its run id: a manifest of the members stands for it
        teacher = folder / "ensemble.txt"
        write_text(teacher, "\n".join(str(p) for p in teachers) + "\n")
        loader = mock.patch.object(distill_stage, "checkpoint", EnsembleCheckpoints(teachers))
    start = time.perf_counter()
    with loader, mock.patch.object(training, "open_live", lambda _folder: contextlib.nullcontext()):
        summary = distill_stage.run(params, data, split, teacher, out, folder / "live", folder / "live_baseline",
                                    folder / "resume")
    return {"name": name, "checkpoint": str(out), "wall_seconds": round(time.perf_counter() - start, 1), **summary}


def score_student(path: Path, val, suite, params: params_mod.Params, device) -> dict:
    from ultraseg import checkpoint
    from ultraseg.models.registry import count_macs, count_parameters

    model, meta = checkpoint.load(path, device)
    score = _probe().score_model(model, val, suite, params, device)
    return {"params": count_parameters(model), "gmacs": round(count_macs(model.cpu(), meta["size"]) / 1e9, 4),
            **score}


def write_archives(result: dict, work: Path, out_dir: Path, limit_mb: float) -> None:
    """Every finished student's checkpoint (the distill stage's file, read back whole) into students-<k>.pt."""
    import torch

    from ultraseg.io import atomic_path

    names = [n for n in result["students"] if "checkpoint" in result["students"][n]]
    paths = {n: Path(result["students"][n]["checkpoint"]) for n in names}
    bins = pack({n: paths[n].stat().st_size for n in names}, int(limit_mb * 1e6))
    result["archives"] = {}
    for k, members in enumerate(bins, 1):
        blob = {n: torch.load(paths[n], map_location="cpu", weights_only=True) for n in members}
        with atomic_path(out_dir / f"students-{k}.pt") as tmp:
            torch.save(blob, tmp)
        result["archives"][f"students-{k}.pt"] = members


def train_all(args: argparse.Namespace) -> None:
    import torch

    from ultraseg import checkpoint
    from ultraseg.ensemble import Ensemble
    from ultraseg.pipeline.evaluate import Split
    from ultraseg.training import select_device

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as seed_everything asks
    started = time.perf_counter()
    probe = _probe()
    data_yaml = yaml.safe_load(args.params.read_text())
    params = params_mod.from_dict(data_yaml)
    configs = {name: CONFIGS[name] for name in args.configs}
    device = select_device(args.device or params.train.device)
    cores = len(os.sched_getaffinity(0))
    seed = params.train.seed
    members = args.members if any(c.teacher == "ensemble" for c in configs.values()) else 1
    seeds = [seed + k for k in range(members)]
    parallel = args.parallel or (8 if device.type == "cuda" else 1)
    teacher_threads = max(1, cores // min(parallel, members))
    student_seeds = args.student_seeds or [seed]
    student_threads = max(1, cores // min(parallel, len(configs) * len(student_seeds)))
    train = {"device": device.type, **({} if args.teacher_epochs is None else {"epochs": args.teacher_epochs})}
    distill = {} if args.epochs is None else {"epochs": args.epochs}
    work, out_dir = args.work, args.out.parent
    work.mkdir(parents=True, exist_ok=True)
    split = probe.subset_split(args.split, work / "split.csv", args.train_images, args.val_images)
    result: dict[str, Any] = {
        "question": "which student width, stem stride and normalisation are on the val Dice / one-core end-to-end "
                    "time front, and is the teacher ensemble the better distillation target? (issue #30)",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "split": "val", "test_read": False,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cores": cores, "parallel": parallel,
        "teacher_threads": teacher_threads, "student_threads": student_threads,
        "epochs": {"teacher": params.train.epochs if args.teacher_epochs is None else args.teacher_epochs,
                   "student": params.distill.epochs if args.epochs is None else args.epochs},
        "subset": {"train_images": args.train_images, "val_images": args.val_images},
        "configs": {name: {"student": c.student, "teacher": c.teacher} for name, c in configs.items()},
        "ensemble_seeds": seeds, "student_seeds": student_seeds, "scoring": __doc__.split("\n\n")[3].strip(),
        "teachers": {}, "teacher_scores": {}, "students": {}, "failed": {}, "complete": False,
    }
    write_json(args.out, result)

    def record(name: str, value: dict) -> None:
        result["students"][name] = value
        write_json(args.out, result)

    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict[Future, tuple[str, Any]] = {
            pool.submit(train_teacher, args.params, {**train, "seed": s, "threads": teacher_threads}, args.data,
                        split, work): ("teacher", s) for s in seeds}
        val = Split(args.data, args.raw, split, "val", params.preprocess.normalize)  # while the teachers train
        suite = probe.ShiftSuite(val, params, args.severity)

        def submit(kind: str) -> None:
            paths = [Path(result["teachers"][s]["checkpoint"]) for s in (seeds if kind == "ensemble" else seeds[:1])]
            for name, c in configs.items():
                for s in student_seeds if c.teacher == kind else []:
                    key = name if s == seed else f"{name}@seed{s}"
                    job = pool.submit(distil_student, data_yaml, key, c.student,
                                      {"device": device.type, "threads": student_threads, "seed": s},
                                      distill, paths, args.data, split, work)
                    pending[job] = ("student", key)

        bar = tqdm(total=len(seeds) + len(configs) * len(student_seeds), desc="teachers and students", unit="model")
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for job in done:
                kind, key = pending.pop(job)
                bar.update()
                try:
                    value = job.result()
                except Exception as err:  # recorded and reported; the other configurations go on
                    result["failed"][f"{kind}_{key}"] = f"{type(err).__name__}: {err}"
                    tqdm.write(f"FAILED {kind} {key}: {err}")
                    write_json(args.out, result)
                    continue
                if kind == "teacher":
                    result["teachers"][key] = value
                    tqdm.write(f"teacher seed {key}: val Dice {value['val_dice']} in {value['wall_seconds']} s")
                    if key == seeds[0]:
                        submit("single")
                    if len(result["teachers"]) == len(seeds):
                        models = [checkpoint.load(result["teachers"][s]["checkpoint"], device)[0] for s in seeds]
                        if len(seeds) > 1:
                            submit("ensemble")
                        for name, model in (("single", models[0]), (f"ensemble{len(seeds)}", Ensemble(models))):
                            if name != "ensemble1":
                                result["teacher_scores"][name] = probe.score_model(model, val, suite, params, device)
                    write_json(args.out, result)
                    continue
                value |= score_student(Path(value["checkpoint"]), val, suite, params, device)
                record(key, value)
                write_archives(result, work, out_dir, args.archive_mb)
                tqdm.write(f"student {key}: val Dice {value['val_dice']:.4f} (distill {value['student']['val_dice']}),"
                           f" AUC {value['val_presence_auc']:.4f}, shift drop {value['shift']['mean_drop']:.4f}, "
                           f"{value['gmacs']} GMACs, {value['wall_seconds']} s")
        bar.close()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = not result["failed"]
    write_json(args.out, result)
    print(f"student front: {len(result['students'])} students in {result['wall_seconds']} s -> {args.out}")


# ---------------------------------------------------------------------------------------------------- latency


DEPLOY_KEYS = ("postprocess", "threshold", "flip", "stream", "presence", "ood", "deploy_params_hash")
"""What the deploy stage adds to a network file's metadata; the fp32 file gets the int8 file's (for its timing)."""


def seed_summary(runs: list[dict]) -> dict:
    """The val figures of one configuration's students from several seeds: per figure the values, mean and sd."""
    out = {"seeds": len(runs)}
    for key, get in (("val_dice", lambda r: r["val_dice"]), ("val_presence_auc", lambda r: r["val_presence_auc"]),
                     ("shift_mean_drop", lambda r: r["shift"]["mean_drop"])):
        values = np.array([get(r) for r in runs], dtype=np.float64)
        out[key] = {"values": [round(float(v), 4) for v in values], "mean": round(float(values.mean()), 4),
                    "sd": round(float(values.std(ddof=1)), 4) if len(values) > 1 else None}
    return out


def deployable_files(name: str, blob: dict, params: params_mod.Params, calibration: np.ndarray, raw: Path,
                     split: Path, work: Path) -> dict:
    """The student's fp32 and int8 ONNX files, as the export and quantize stages write them, each made deployable:
    the int8 one by the deploy stage's work, the fp32 one with the int8 one's deploy metadata."""
    from ultraseg import onnx_io, ood, quantization
    from ultraseg.models.registry import rebuild_from_state_dict
    from ultraseg.pipeline import deploy

    model = rebuild_from_state_dict(blob["meta"]["model"], blob["state"]).eval()
    fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
    onnx_io.export(model, fp32, params.export, blob["meta"] | {"params_hash": params_mod.digest(params.export)})
    check = onnx_io.parity(model, fp32, params.export)
    report = quantization.quantize(fp32, int8, calibration, params.quantize)
    files = {"int8": work / f"{name}.int8.deploy.onnx", "fp32": work / f"{name}.fp32.deploy.onnx"}
    deployed = deploy.run(params, int8, raw, split, files["int8"])
    ood.write_with_features(fp32, files["fp32"])
    stored = onnx_io.read_metadata(files["int8"])
    onnx_io.write_with_metadata(files["fp32"], files["fp32"], {k: stored[k] for k in DEPLOY_KEYS if k in stored})
    return {"files": {k: str(v) for k, v in files.items()}, "parity_max_abs": float(f"{check['max_abs']:.3g}"),
            "fp32_bytes": report["fp32_bytes"], "int8_bytes": report["int8_bytes"],
            "float_ops": report["float_ops"], "narrow_convs_float": report["narrow_convs_float"],
            "deployed_int8_val": deployed["val_chosen"], "deployed_int8_rule": deployed["postprocess"]}


def interleaved(files: dict[str, Path], frames: dict[str, np.ndarray], cfg, rounds: int, on_round) -> list[dict]:
    """Every file end to end on every frame, one thread, in ``rounds`` rounds; each round visits the files in
    another order (rotated, and reversed every other round), so slow spells of the shared machine fall on all."""
    from ultraseg.pipeline.benchmark import measure_end_to_end

    keys, out = list(files), []
    for r in tqdm(range(rounds), desc="end-to-end rounds", unit="round"):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        row = {}
        for key in tqdm(order[::-1] if r % 2 else order, desc=f"round {r + 1}", unit="file", leave=False):
            measured = measure_end_to_end(files[key], frames, cfg)
            row[key] = {name: {"p50_ms": f["p50_ms"], "model_p50_ms": f.get("model_p50_ms"),
                               "disturbance": f["disturbance"]} for name, f in measured["frames"].items()}
            row[key]["peak_rss_mb"] = measured["peak_rss_mb"]
        out.append(row)
        on_round(out)
    return out


def timing_summary(rounds: list[dict], frames: list[str], base: str = "base") -> dict:
    """Per file key (``name/precision``) and frame: the median p50 over rounds, and the median over rounds of its
    ratio to ``base``'s file of the same precision in the same round; per name, the median int8 speed-up
    (fp32 / int8 within a round)."""
    out: dict[str, dict] = {}
    for key in rounds[0]:
        name, precision = key.split("/")
        ref = f"{base}/{precision}"
        row = {}
        for frame in frames:
            p50 = [r[key][frame]["p50_ms"] for r in rounds]
            row[frame] = {"p50_ms": round(float(np.median(p50)), 3),
                          "ratio_to_base": round(float(np.median([r[key][frame]["p50_ms"] / r[ref][frame]["p50_ms"]
                                                                  for r in rounds])), 3) if ref in rounds[0] else None}
            if precision == "int8" and f"{name}/fp32" in rounds[0]:
                row[frame]["int8_speedup"] = round(float(np.median(
                    [r[f"{name}/fp32"][frame]["p50_ms"] / r[key][frame]["p50_ms"] for r in rounds])), 3)
        out[key] = row
    return out


def latency(args: argparse.Namespace) -> None:
    import dataclasses

    import cv2
    import torch

    from ultraseg.data.busi import load_raw
    from ultraseg.data.dataset import load_split
    from ultraseg.io import split_ids
    from ultraseg.pipeline.benchmark import environment

    started = time.perf_counter()
    params = params_mod.load(args.params)
    result = read_json(args.out)
    built = result.get("latency", {}).get("students", {})  # an earlier --latency run's files, reused where present
    archives = args.archives or args.out.parent
    students = {}
    for file, names in result["archives"].items():
        blob = torch.load(archives / file, map_location="cpu", weights_only=True)
        students |= {name: blob[name] for name in names}
    names = [name for name in CONFIGS if name in students and name in args.configs]
    if "base" not in names:
        raise SystemExit("--latency needs the 'base' student: every ratio is to it")
    if args.repeats:
        repeats = read_json(args.repeats)
        result["seed_repeats"] = {"command": repeats["command"], "device": repeats["device"],
                                  "student_seeds": repeats["student_seeds"], "wall_seconds": repeats["wall_seconds"],
                                  "students": repeats["students"]}
    runs = {name: [result["students"][name]] + [v for k, v in result.get("seed_repeats", {}).get("students", {}).items()
                                               if k.split("@")[0] == name] for name in names}
    work = args.work / "latency"
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    cfg = dataclasses.replace(params.benchmark, runs=args.runs or params.benchmark.runs, retries=0)
    lat = result["latency"] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "environment": environment(),
        "load_average_at_start": os.getloadavg(), "cores": cores, "threads": 1, "rounds": args.rounds,
        "runs_per_round": cfg.runs, "warmup": cfg.warmup, "reference": None if args.reference is None
        else str(args.reference), "method": __doc__.split("\n\n")[4].strip(), "students": {}}
    write_json(args.out, result)
    calibration = load_split(args.data, args.split, "train", params.preprocess.normalize)[0]
    torch.set_num_threads(max(1, cores))
    for name in tqdm(names, desc="export, quantize, deploy", unit="student"):
        earlier = built.get(name)
        if earlier and all(Path(f).is_file() for f in earlier["files"].values()):
            lat["students"][name] = earlier
            continue
        lat["students"][name] = deployable_files(name, students[name], params, calibration, args.raw, args.split,
                                                 work)
        write_json(args.out, result)
    lat["build_seconds"] = round(time.perf_counter() - started, 1)

    scan = load_raw(args.raw, split_ids(args.split, "val")[0])[0]  # a real scan: only its time is taken
    frames = {"scan": scan, "scanner_640x480": cv2.resize(scan, (640, 480), interpolation=cv2.INTER_LINEAR)}
    lat["frames"] = {name: list(frame.shape[:2]) for name, frame in frames.items()}
    files = {f"{name}/{precision}": Path(lat["students"][name]["files"][precision])
             for name in names for precision in ("int8", "fp32")}
    if args.reference is not None:
        files["reference/int8"] = args.reference

    def on_round(rounds: list[dict]) -> None:
        lat["rounds"] = rounds
        lat["summary"] = timing_summary(rounds, list(frames))
        write_json(args.out, result)

    interleaved(files, frames, cfg, args.rounds, on_round)
    lat["load_average_at_end"] = os.getloadavg()
    lat["seconds"] = round(time.perf_counter() - started, 1)
    timing = lat["summary"]
    table = {}
    for name in names:
        student, seeds = result["students"][name], seed_summary(runs[name])
        table[name] = {
            "student": result["configs"][name]["student"], "teacher": result["configs"][name]["teacher"],
            "val_dice": student["val_dice"], "val_presence_auc": student["val_presence_auc"],
            "shift_mean_drop": student["shift"]["mean_drop"], "over_seeds": seeds,
            "deployed_int8_val_dice": round(lat["students"][name]["deployed_int8_val"]["dice"], 4),
            "gmacs": student["gmacs"], "params": student["params"],
            **{f"{precision}_{frame}_p50_ms": timing[f"{name}/{precision}"][frame]["p50_ms"]
               for precision in ("fp32", "int8") for frame in frames},
            **{f"int8_{frame}_ratio_to_base": timing[f"{name}/int8"][frame]["ratio_to_base"] for frame in frames},
            **{f"fp32_{frame}_ratio_to_base": timing[f"{name}/fp32"][frame]["ratio_to_base"] for frame in frames},
            **{f"int8_speedup_{frame}": timing[f"{name}/int8"][frame]["int8_speedup"] for frame in frames},
        }
    result["table"] = table
    result["front"] = {
        "axes": "val Dice (mean over the student seeds; seed-noise sd beside it in the table) against the int8 "
                "deployable file's end-to-end time on the scan, one thread, as a ratio to base's in the same round",
        "over_seeds": pareto_front({n: (r["over_seeds"]["val_dice"]["mean"], r["int8_scan_ratio_to_base"])
                                    for n, r in table.items()}),
        "seed_42_only": pareto_front({n: (r["val_dice"], r["int8_scan_ratio_to_base"]) for n, r in table.items()}),
        "fp32_over_seeds": pareto_front({n: (r["over_seeds"]["val_dice"]["mean"], r["fp32_scan_ratio_to_base"])
                                         for n, r in table.items()}),
    }
    write_json(args.out, result)
    print(f"{'config':18s} {'val Dice':>8s} {'mean(sd)':>14s} {'AUC':>6s} {'drop':>6s} {'GMACs':>6s} "
          f"{'int8 scan':>9s} {'int8 640':>8s} {'fp32 scan':>9s} {'ratio':>6s} {'int8 x':>6s}")
    for name, r in table.items():
        s = r["over_seeds"]["val_dice"]
        print(f"{name:18s} {r['val_dice']:8.4f} {s['mean']:7.4f}({s['sd'] or 0:.4f}) {r['val_presence_auc']:6.3f} "
              f"{r['shift_mean_drop']:6.3f} {r['gmacs']:6.3f} {r['int8_scan_p50_ms']:9.2f} "
              f"{r['int8_scanner_640x480_p50_ms']:8.2f} {r['fp32_scan_p50_ms']:9.2f} "
              f"{r['int8_scan_ratio_to_base']:6.2f} {r['int8_speedup_scan']:6.2f}")
    print(f"front (seed-mean val Dice vs int8 end-to-end time): {', '.join(result['front']['over_seeds'])}")


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.strip().partition("\n\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details.strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", action="store_true",
                    help="export, quantize, deploy and time the students of --out's JSON (its archives beside it)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--data", type=Path, default=REPO / "data/preprocessed", help="preprocess stage output")
    ap.add_argument("--raw", type=Path, default=REPO / "data/raw",
                    help="fetch stage output: val images are read, and with --latency train images too (the deploy "
                         "stage's out-of-distribution fit)")
    ap.add_argument("--split", type=Path, default=REPO / "data/split.csv", help="split stage output")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated configurations (default: all: {', '.join(CONFIGS)})")
    ap.add_argument("--members", type=int, default=5, help="teachers in the ensemble target (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: distill.epochs)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="teacher epochs (default: train.epochs)")
    ap.add_argument("--parallel", type=int, default=None,
                    help="models trained at once, one process each (default: 8 on CUDA, 1 on a CPU)")
    ap.add_argument("--student-seeds", default=None, help="comma-separated train.seed values each student is "
                    "distilled with, to see seed noise; a seed other than train.seed is named NAME@seedS "
                    "(default: train.seed alone)")
    ap.add_argument("--device", default=None, help="train.device for training and scoring (default: params')")
    ap.add_argument("--severity", default="moderate", choices=("mild", "moderate", "strong"),
                    help="shift-suite severity (default: %(default)s)")
    ap.add_argument("--train-images", type=int, default=None, help="first N train images only (smoke tests)")
    ap.add_argument("--val-images", type=int, default=None, help="first N val images only (smoke tests)")
    ap.add_argument("--archive-mb", type=float, default=12.0,
                    help="largest students-<k>.pt archive written beside --out (default: %(default)s MB)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/student_front"),
                    help="checkpoints and ONNX files (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="--latency: interleaved timing rounds (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=None, help="--latency: timed frames per file and round "
                    "(default: benchmark.runs)")
    ap.add_argument("--archives", type=Path, default=None,
                    help="--latency: folder of the students-<k>.pt archives (default: --out's folder)")
    ap.add_argument("--repeats", type=Path, default=None,
                    help="--latency: the JSON of a training run with --student-seeds, merged as seed_repeats")
    ap.add_argument("--reference", type=Path, default=None,
                    help="--latency: a deployable file timed alongside, e.g. the pipeline's models/deploy/"
                         "ultraseg.int8.onnx (pruned, int8)")
    ap.add_argument("--out", type=Path, default=REPO / "experiments/front.json", help="default: %(default)s")
    args = ap.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    args.student_seeds = [int(x) for x in args.student_seeds.split(",")] if args.student_seeds else None
    if args.members < 1 or args.members == 1 and any(CONFIGS[c].teacher == "ensemble" for c in args.configs):
        ap.error("--members must be at least 1, and at least 2 with an ensemble configuration")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    latency(args) if args.latency else train_all(args)


if __name__ == "__main__":
    main()
