"""Typed, validated configuration: one source of truth, printed and saved beside every output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Preset = Literal["tiny", "demo", "benchmark"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


class WorldConfig(_Config):
    """The synthetic world's size and layout (the physics lives in ``synthetic.fields.SoilPhysics``)."""

    preset: Preset = "tiny"
    seed: int = 7
    scene_px: int = Field(128, ge=32, description="scene side in 30 m pixels (real EnMAP tiles are ~1244 x 1354)")
    n_seen_scenes: int = Field(2, ge=2, description="scenes in the seen region, alternating UTM zones 12 and 13")
    n_unseen_scenes: int = Field(1, ge=1, description="scenes in the held-out region (Great Basin)")
    sites_per_scene: int = Field(60, ge=10)
    n_lab: int = Field(1000, ge=50, description="lab MIR samples in the library")
    lab_near_site_fraction: float = Field(0.35, ge=0, le=1, description="share of lab samples taken within 1.5 km of a satellite site")
    max_cloud_cover: float = Field(0.25, ge=0, le=0.9)
    seen_bbox: tuple[float, float, float, float] = (-110.0, 37.5, -106.0, 39.5)
    unseen_bbox: tuple[float, float, float, float] = (-113.2, 40.6, -111.8, 41.6)
    covariate_res_deg: float = 0.01
    covariate_bbox: tuple[float, float, float, float] = (-114.0, 36.5, -105.0, 42.5)

    @classmethod
    def for_preset(cls, preset: Preset, seed: int = 7) -> "WorldConfig":
        sizes = {
            "tiny": dict(scene_px=128, n_seen_scenes=2, n_unseen_scenes=1, sites_per_scene=60, n_lab=1000),
            "demo": dict(scene_px=256, n_seen_scenes=4, n_unseen_scenes=1, sites_per_scene=150, n_lab=5000),
            "benchmark": dict(scene_px=512, n_seen_scenes=8, n_unseen_scenes=2, sites_per_scene=400, n_lab=20000),
        }[preset]
        return cls(preset=preset, seed=seed, **sizes)
