"""The soil property a model learns and a cube holds. ECe is the default; any property is a ``Target``.

A target is defined by a table (a training config's ``[target]``, or ``TARGET_TABLES`` for the built-in ``ece`` and
``soc``): ``name``, ``column``, ``units``, ``valid_range`` (the bounded head's output range), ``log``, and its classes as
``thresholds`` with ``class_names`` (one more name than thresholds); optionally ``long_name``, ``short``, ``var``
(the cube variable; default the name), ``plausible`` (values outside are another unit) and ``unit_hint``.

A target fixes its table column and units, the range of the bounded output head, whether it is learnt in log
space (the read-out the auto-encoders learn, the distillation's response term, the 90 % interval, kriging and the
variogram that sizes the spatial blocks), the classes maps show it in, and its cube variable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Target:
    name: str  # what --target takes
    column: str  # the column of lab and site tables
    units: str  # CF units of the cube variable
    valid_range: tuple[float, float]  # the bounded head's output range, in ``units``
    log: bool  # learnt, and its intervals calibrated, in log space (right-skewed properties)
    classes: tuple[tuple[float, str], ...]  # (upper bound, label) for maps and the per-range metrics
    var: str  # the cube variable (its sd is ``<var>_sd``)
    long_name: str
    short: str  # for titles and axis labels
    #: the thresholds the cube's exceedance probabilities and the class figures (recall, precision, F1, AUC) use
    thresholds: tuple[float, ...] = ()
    #: values no soil has in ``units``: a table holding one is in another unit (``unit_hint`` says which, likely)
    plausible: tuple[float, float] | None = None
    unit_hint: str = ""

    def check_plausible(self, values, where: str, ids=None) -> None:
        """Refuse values outside ``plausible`` (or ``valid_range``) with one line: how many, an example, the unit hint."""
        from deepsalt.errors import DeepSaltInputError

        lo, hi = self.plausible or self.valid_range
        v = np.asarray(values, float)
        bad = np.isfinite(v) & ((v < lo) | (v > hi))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            name = f", {ids[i]}" if ids is not None else ""
            raise DeepSaltInputError(where, f"{int(bad.sum())} value(s) of {self.column} outside {lo:g}-{hi:g} {self.units} "
                                     f"(e.g. {v[i]:g}{name})", self.unit_hint or f"give {self.short} in {self.units}")

    def transform(self, y):
        """The space the target is learnt in: ln y (clipped at 1e-3) or y."""
        return np.log(np.clip(np.asarray(y, float), 1e-3, None)) if self.log else np.asarray(y, float)

    def inverse(self, z):
        return np.exp(z) if self.log else np.asarray(z, float)

    def range_class(self, y) -> np.ndarray:
        """The class label of each value (``classes``)."""
        y = np.asarray(y, float)
        out = np.full(len(y), self.classes[-1][1], dtype=object)
        for hi, label in reversed(self.classes):
            out[y < hi] = label
        return out.astype(str)

    def to_dict(self) -> dict:
        """JSON-ready (the last class's open bound as null)."""
        d = asdict(self)
        d["valid_range"] = list(self.valid_range)
        d["thresholds"] = list(self.thresholds)
        d["plausible"] = list(self.plausible) if self.plausible else None
        d["classes"] = [[hi if math.isfinite(hi) else None, label] for hi, label in self.classes]
        return d


#: the built-in targets, as a config's ``[target]`` table defines one
TARGET_TABLES: dict[str, dict] = {
    # FAO salinity classes (dS/m); the saturated-paste extract's EC at 0-12 cm. Exceedance at 4 (saline: USDA's and
    # FAO's saline soil), 8 and 16 dS/m (strongly and very strongly saline)
    "ece": dict(name="ece", column="ece_dsm", units="dS m-1", valid_range=(0.05, 77.0), log=True,
                class_bounds=(2, 4, 8, 16), class_names=("non-saline < 2", "slightly 2-4", "moderately 4-8", "strongly 8-16",
                                                          "very strongly > 16"),
                thresholds=(4.0, 8.0, 16.0), short="ECe", plausible=(0.0, 200.0),
                unit_hint="EC in mS/m? divide by 100; in uS/cm? divide by 1000",
                long_name="soil salinity, electrical conductivity of the saturated-paste extract, 0-12 cm"),
    # organic carbon, % by mass (OSSL's oc_usda.c729_w.pct); classes as soil-survey reports use them
    "soc": dict(name="soc", column="soc", units="%", valid_range=(0.01, 30.0), log=True, class_bounds=(0.5, 1, 2, 4),
                class_names=("very low < 0.5", "low 0.5-1", "moderate 1-2", "high 2-4", "very high > 4"),
                thresholds=(1.0, 2.0, 4.0), short="SOC", plausible=(0.0, 60.0), unit_hint="organic carbon in g/kg? divide by 10",
                long_name="soil organic carbon content (mass fraction), 0-12 cm"),
}

_REQUIRED = ("name", "column", "units", "valid_range", "log")


def target_from_table(table: dict, where: str = "[target]") -> "Target":
    """A ``Target`` from a config table (see the module doc); every fault is a ValueError naming the key."""
    t = dict(table)
    missing = [k for k in _REQUIRED if k not in t]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (a target needs {', '.join(_REQUIRED)}, and thresholds "
                         "with class_names)")
    name = str(t["name"])
    if not name.isidentifier():
        raise ValueError(f"{where}: name {name!r} must be a plain identifier (it names the cube's variables)")
    lo, hi = (float(v) for v in t["valid_range"])
    if not lo < hi:
        raise ValueError(f"{where}: valid_range {t['valid_range']} must be [low, high] with low < high")
    if bool(t["log"]) and lo <= 0:
        raise ValueError(f"{where}: a log target needs valid_range above 0 (got {lo:g})")
    bounds = tuple(float(v) for v in t.get("class_bounds", t.get("thresholds", ())))
    names = tuple(str(v) for v in t.get("class_names", ()))
    if not bounds or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"{where}: thresholds (or class_bounds) must be increasing numbers")
    if len(names) != len(bounds) + 1:
        raise ValueError(f"{where}: class_names needs {len(bounds) + 1} names for {len(bounds)} thresholds (one per class)")
    thresholds = tuple(float(v) for v in t.get("thresholds", bounds))
    plausible = t.get("plausible")
    return Target(name=name, column=str(t["column"]), units=str(t["units"]), valid_range=(lo, hi), log=bool(t["log"]),
                  classes=tuple(zip((*bounds, math.inf), names)), var=str(t.get("var", name)),
                  long_name=str(t.get("long_name", name)), short=str(t.get("short", name)), thresholds=thresholds,
                  plausible=tuple(float(v) for v in plausible) if plausible else None, unit_hint=str(t.get("unit_hint", "")))


TARGETS: dict[str, Target] = {k: target_from_table(v, f"built-in target {k}") for k, v in TARGET_TABLES.items()}


def get_target(name_or_dict) -> Target:
    """A target by name, or rebuilt from its ``to_dict`` (as bundles and cubes record it)."""
    if isinstance(name_or_dict, Target):
        return name_or_dict
    if isinstance(name_or_dict, dict) and "classes" not in name_or_dict:  # a config's [target] table
        return target_from_table(name_or_dict)
    if isinstance(name_or_dict, dict):
        d = dict(name_or_dict)
        # a bundle or cube written before targets had thresholds: the built-in target's
        thresholds = d.get("thresholds") or (TARGETS[d["name"]].thresholds if d.get("name") in TARGETS else ())
        plausible = d.get("plausible") or (TARGETS[d["name"]].plausible if d.get("name") in TARGETS else None)
        return Target(**{**d, "valid_range": tuple(d["valid_range"]), "thresholds": tuple(float(v) for v in thresholds),
                         "plausible": tuple(plausible) if plausible else None,
                         "classes": tuple((math.inf if hi is None else float(hi), str(lb)) for hi, lb in d["classes"])})
    if name_or_dict not in TARGETS:
        raise ValueError(f"unknown target '{name_or_dict}' (built in: {', '.join(TARGETS)})")
    return TARGETS[name_or_dict]
