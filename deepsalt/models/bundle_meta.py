"""A model bundle's record, read and checked without torch: what a mapping driver needs to refuse a bad bundle before
any work (format, versions, band list, scalers, target, output range, interval and area-of-applicability constants,
every tensor's shape, the weights file's out_range and reference rows). ``bundle.DeepSaltBundle.load`` runs the same
checks, then builds the networks and checks that the weights fit them.

The driver of a map run (``pipeline.prepare_inputs``) reads only this; the Ray Data actors that predict load the
whole bundle. Without torch (a 2.2 s import on 2 cores) the driver of a tiny-world map finished its STAC search after
2.1 s instead of 4.2 s (``bench/results/cli_overhead.json``).
"""

from __future__ import annotations

import json

import fsspec
import numpy as np

from deepsalt import __version__
from deepsalt.config import TrainConfig, spectral_path
from deepsalt.errors import DeepSaltInputError
from deepsalt.targets import get_target

FORMAT = "deepsalt-bundle/5"  # 2: interval90 and aoa; 3: the interval widens with the DI; 4: the target it predicts;
# 5: the students' spectral path (scaler "enmap_pcs")


def exceedance_decision(meta: dict) -> dict[str, float]:
    """A bundle's (``bundle.json``'s) decision probability per threshold, 0.5 where it records none."""
    got = meta["interval90"].get("exceedance_decision") or {}
    return {f"{t:g}": float(got.get(f"{t:g}", 0.5)) for t in get_target(meta["target"]).thresholds}


def read_parts(url: str) -> tuple[dict, bytes]:
    """(``bundle.json`` parsed, ``weights.safetensors`` bytes); a missing file or unreadable JSON names the bundle."""
    fs, path = fsspec.core.url_to_fs(str(url))
    try:
        raw = fs.cat(f"{path}/bundle.json")
        blob = fs.cat(f"{path}/weights.safetensors")
    except FileNotFoundError:
        raise DeepSaltInputError(url, "not a model bundle (bundle.json or weights.safetensors missing)",
                                 "pass the bundle folder written by `deepsalt train` (RUN/bundle)") from None
    try:
        return json.loads(raw), blob
    except ValueError as e:
        raise damaged(url, e) from None


def damaged(url: str, e: Exception) -> DeepSaltInputError:
    return DeepSaltInputError(f"{url}/bundle.json", f"damaged or edited bundle ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                              "use the bundle exactly as `deepsalt train` wrote it, or retrain")


def checked(url: str, check):
    """``check()``, with any fault other than a DeepSaltInputError (KeyError, pydantic ValidationError, shape and dtype
    errors) reported as a damaged bundle."""
    try:
        return check()
    except DeepSaltInputError:
        raise
    except Exception as e:  # noqa: BLE001 - all of them mean "damaged"
        raise damaged(url, e) from None


def check_meta(url: str, meta: dict) -> None:
    """Every check of ``bundle.json`` alone (no weights, no torch): raises a DeepSaltInputError naming the fault."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise DeepSaltInputError(url, f"bundle format {fmt!r} is not {FORMAT!r}", "retrain with this version")
    if str(meta["deepsalt_version"]).split(".")[:2] != __version__.split(".")[:2]:
        raise DeepSaltInputError(url, f"bundle made by deepsalt {meta['deepsalt_version']}, this is {__version__}",
                                 "use the matching deepsalt release or retrain")
    cfg = TrainConfig(**meta["config"])
    pcs = spectral_path(cfg)
    if len(meta["band_names"]) != len(meta["band_centers_nm"]) \
            or set(meta["scalers"]) != {"enmap", "covariates", *(["enmap_pcs"] if pcs else [])}:
        raise DeepSaltInputError(f"{url}/bundle.json", "band list or scalers are inconsistent", "do not edit bundle.json; retrain")
    try:
        target = get_target(meta["target"])
    except (KeyError, TypeError, ValueError):
        raise DeepSaltInputError(f"{url}/bundle.json", "the bundle does not say which soil property it predicts",
                                 "do not edit bundle.json; retrain") from None
    if target.name != get_target(meta["config"].get("target", "ece")).name:
        raise DeepSaltInputError(f"{url}/bundle.json", f"the bundle's target {target.name!r} is not the one it was "
                                 f"trained for ({meta['config'].get('target')!r})", "do not edit bundle.json; retrain")
    aoa, iv = meta.get("aoa") or {}, meta.get("interval90") or {}
    if not float(aoa.get("mean_distance", 0)) > 0 or not np.isfinite(float(aoa.get("threshold", np.nan))) \
            or int(aoa.get("n_reference", 0)) < 1 or not float(iv.get("q", 0)) > 0 or int(iv.get("mc_samples", 0)) < 2 \
            or not float(iv.get("di_slope", -1)) >= 0:
        raise DeepSaltInputError(f"{url}/bundle.json", "the area of applicability or the 90 % interval calibration is "
                                 "missing or inconsistent", "do not edit bundle.json; retrain")
    from deepsalt.models.scalers import Projection, scaler_from_dict

    scalers = {k: scaler_from_dict(v) for k, v in meta["scalers"].items()}
    for name, n in (("enmap", len(meta["band_names"])), ("covariates", len(meta["covariates"]))):
        sc = scalers[name]
        if sc.kind not in ("minmax", "standard") or sc.shift.shape != (n,) or sc.scale.shape != (n,) \
                or not (np.isfinite(sc.shift).all() and (sc.scale > 0).all()):
            raise DeepSaltInputError(f"{url}/bundle.json", f"scaler '{name}' is not a valid {n}-column scaler", "do not edit bundle.json; retrain")
    if pcs:
        pr = scalers["enmap_pcs"]
        if not isinstance(pr, Projection) or pr.components.shape != (pcs, len(meta["band_names"])) \
                or not np.isfinite(pr.components).all() or pr.mean.shape != (len(meta["band_names"]),):
            raise DeepSaltInputError(f"{url}/bundle.json", f"the spectral path's projection is not {pcs} components of "
                                     f"{len(meta['band_names'])} bands", "do not edit bundle.json; retrain")
    if not np.allclose(cfg.out_range, meta["out_range"]):
        raise DeepSaltInputError(url, f"the bundle records output range {meta['out_range']} {target.units} but was trained for "
                                 f"{list(cfg.out_range)}", "do not edit out_range; retrain instead")


def check_weights(url: str, meta: dict, tensors) -> None:
    """The weights against ``bundle.json`` (``tensors``: name -> numpy array or torch tensor): every tensor's shape
    against bundle.json's ``weights`` record (a bundle written before it had one is checked where the networks are
    built, in the actors), the weights' own record of the output range, and the DI's reference rows."""
    if "weights" in meta:
        misfit = weights_misfit(meta["weights"], {k: list(v.shape) for k, v in tensors.items()})
        if misfit:
            raise DeepSaltInputError(url, f"weights do not fit the recorded architecture ({misfit})",
                                     "use the bundle exactly as `deepsalt train` wrote it, or retrain")
    weights_range = np.asarray(tensors["student.head.out_range"].tolist(), np.float64)
    if weights_range.shape != (2,) or not np.allclose(weights_range, meta["out_range"]):
        # DESIGN defect 7: a head trained for one range silently loaded into another
        raise DeepSaltInputError(url, f"weights were trained for output range {weights_range.tolist()} "
                                 f"{get_target(meta['target']).units} but the bundle records {meta['out_range']}",
                                 "do not edit out_range; retrain instead")
    ref = tensors.get("aoa.reference")
    if ref is None or len(ref.shape) != 2 or ref.shape[0] != int(meta["aoa"]["n_reference"]):
        raise DeepSaltInputError(f"{url}/bundle.json", "the area of applicability's reference sites are missing or "
                                 "inconsistent with bundle.json", "do not edit bundle.json; retrain")


def weights_misfit(recorded: dict, found: dict, most: int = 3) -> str:
    """How the weights file's tensor shapes (``found``) differ from ``bundle.json``'s record, '' where they do not."""
    faults = [f"{k}: shape {found[k]} in the weights, {list(recorded[k])} in bundle.json"
              for k in sorted(set(found) & set(recorded)) if found[k] != list(recorded[k])]
    faults += [f"{k}: missing from the weights" for k in sorted(set(recorded) - set(found))]
    faults += [f"{k}: in the weights, not in bundle.json" for k in sorted(set(found) - set(recorded))]
    more = f"; and {len(faults) - most} more" if len(faults) > most else ""
    return "; ".join(faults[:most]) + more


def load_meta(url: str) -> dict:
    """``bundle.json`` of a bundle whose record and weights file pass every check that needs no torch."""
    from safetensors.numpy import load

    meta, blob = read_parts(url)

    def check():
        check_meta(url, meta)
        check_weights(url, meta, load(blob))
        return meta

    return checked(url, check)
