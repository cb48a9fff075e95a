"""Load a feature/post engine pair and check it against the two-stage contract."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

from . import contract
from .contract import Geometry, ModelConfig, TensorSpec, check_contract
from .errors import ModelError
from .runners import HOST, Runner, backend_for, open_runner


@dataclasses.dataclass
class EnginePair:
    """Two runners that honour the contract, the sizes read from them, and the name mapping."""

    feature: Runner
    post: Runner
    geometry: Geometry
    config: ModelConfig
    backends: tuple[str, str]

    def close(self) -> None:
        self.feature.close()
        self.post.close()

    def device_bytes(self) -> int:
        return self.feature.device_bytes() + self.post.device_bytes()

    def bind(self, feature_io: Mapping[str, int], post_inputs: Mapping[str, int], disparity: int,
             scratch: Callable[[TensorSpec], int]) -> None:
        """Bind both stages by contract name: feature_io holds the addresses of the image inputs and the
        feature outputs, post_inputs those of the post stage's inputs; an output outside the contract gets
        the address scratch(spec) returns (it still needs somewhere to go)."""
        geo = self.geometry
        for name, spec in {**geo.image_inputs, **geo.feature_outputs}.items():
            self.feature.bind(spec.name, feature_io[name])
        for name, spec in geo.post_inputs.items():
            self.post.bind(spec.name, post_inputs[name])
        self.post.bind(geo.disparity.name, disparity)
        for runner, specs in ((self.feature, geo.feature_outputs), (self.post, {contract.DISPARITY: geo.disparity})):
            bound = {spec.name for spec in specs.values()}
            for name, spec in runner.outputs.items():
                if name not in bound:
                    runner.bind(name, scratch(spec))


def load_engine_pair(feat_path: str | Path, post_path: str | Path, backend: str | None = None,
                     memory: str = HOST, stream: int = 0, device_id: int = 0,
                     input_size: tuple[int | None, int | None] | None = None,
                     config: ModelConfig | None = None, threads: int | None = None) -> EnginePair:
    """Open both stages (backend from each file's suffix unless named) and check them together."""
    config = config if config is not None else ModelConfig.beside(feat_path, post_path)
    backends = (backend_for(feat_path, backend), backend_for(post_path, backend))
    feature = open_runner(feat_path, backends[0], memory, stream, device_id, threads)
    try:
        post = open_runner(post_path, backends[1], memory, stream, device_id, threads)
    except Exception:
        feature.close()
        raise
    try:
        geometry = check_contract((feature.inputs, feature.outputs), (post.inputs, post.outputs), config)
        if input_size is not None:
            wanted = tuple(input_size)
            have = (geometry.height, geometry.width)
            if any(w is not None and w != h for w, h in zip(wanted, have)):
                raise ModelError(f"the engines take {have[0]}x{have[1]} images but "
                                 f"input_h x input_w = {wanted[0]}x{wanted[1]} was asked for")
    except Exception:
        feature.close()
        post.close()
        raise
    return EnginePair(feature, post, geometry, config, backends)
