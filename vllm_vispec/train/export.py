"""Writing a trained draft in the published checkpoint layout (loadable by the plugin)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ..model.layout import check_shapes, published_config
from .draft import TrainableDraft


def export_draft(model: TrainableDraft, target_config: dict, out: Path) -> Path:
    state = model.published_state_dict()
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, model.dims, where=str(out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(published_config(model.dims, target_config),
                                                indent=2))
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out
