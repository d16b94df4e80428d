"""The binding family's pipeline
(``omnibind-train all --config training/configs/sim_binding.yaml``):

``data -> spaces -> pairs -> bind -> af -> eval -> export``

* **data**: the binding data set and its frozen-trunk features (the default pipeline's cache);
* **spaces**: pre-train the specialist spaces (:mod:`.train_spaces`);
* **pairs**: embed the unpaired pools in every space, build the pseudo tuples
  (:mod:`.pseudo_pairs`);
* **bind**: projectors once (Eq. 1-2), then routers per variant and ablation (Eq. 5-7);
* **af**: the AF head (seed 000, Eq. 8-9) on the *bound* embeddings of the pool split's
  instances (every modality, labels used: this is the fusion stage, not binding);
* **eval**: retrieval / zero-shot tables in the seeds' shape, ablations, plots (:mod:`.report`);
* **export**: the bound bundle (:mod:`.export`).

Every stage stores its output under ``<cache>/runs/<name>/`` and reuses it when its inputs are
unchanged, so a killed run resumes at the first stage whose output is missing.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataConfig, hash_json, resolve_path
from ..pipeline.config import YamlConfig
from ..pipeline.family import FamilyRun
from ..trainers.af import AFConfig
from ..trainers.common import ConfigBase
from ..trainers.distributed import DistInfo
from .bank import EmbeddingBank, pool_bank, test_bank
from .captions import STYLES
from .data import POOL_MODALITIES, BindingData
from .model import BindingModel, RouterConfig, SpaceInfo
from .pseudo_pairs import PseudoTuples, build_tuples, parse_retrievers, tuple_purity
from .specialists import SimSpace, SpecialistSpec, get_specialist, list_specialists
from .train_binding import ProjectorTraining, RouterTraining, train_projectors, train_routers
from .train_spaces import stored_key, train_spaces

__all__ = ["BindingConfig", "BindingRun", "STAGES", "is_binding_config"]

STAGES = ("data", "spaces", "pairs", "bind", "af", "eval", "export")
FAMILY = "binding"

DEFAULT_RETRIEVERS: dict[str, list[str]] = {
    "image-text": ["image@s0", "text@s0"],
    "audio-text": ["audio@s4", "text@s4"],
    "audio-image": ["audio@s8", "image@s8"],
    "point_cloud-image": ["point_cloud@s6", "image@s1"],
    "point_cloud-text": ["point_cloud@s6", "text@s6"],
    "thermal-image": ["thermal@s9", "image@s1"],
    "thermal-text": ["thermal@s9", "text@s9"],
    "event-image": ["event@s10", "image@s1"],
    "event-text": ["event@s10", "text@s10"],
    "tactile-image": ["tactile@s11", "image@s1"],
    "tactile-text": ["tactile@s11", "text@s11"],
}
DEFAULT_VARIANTS: dict[str, list[str]] = {
    "base": ["s1", "s4", "s5", "s6", "s8"],
    "large": ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"],
    "full": ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11"],
}


@dataclass
class AblationSpec(ConfigBase):
    """A router variant retrained for an ablation: ``router``/``training`` override fields."""

    name: str = "align_only"
    variant: str = "full"
    router: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


def _default_ablations() -> list[AblationSpec]:
    return [AblationSpec("L_align only", "full", {}, {"use_dec": False}),
            AblationSpec("plain softmax router", "full", {"gate": "softmax"}, {}),
            AblationSpec("code router (3 layers, designated input)", "full",
                         {"depth": "code", "input": "designated"}, {}),
            AblationSpec("text sigmoid x10 before softmax (code)", "full",
                         {"scale": {"text": 10.0}}, {})]


@dataclass
class BindingExport(ConfigBase):
    """Which variant becomes the bound bundle, and where."""

    bundle: str = "binding"
    out: str | None = None
    variant: str = "full"
    sample_batch: int = 2
    exporter: str = "auto"


@dataclass
class BindingConfig(YamlConfig):
    """``training/configs/sim_binding.yaml`` (``family: binding``).

    Attributes
    ----------
    family : must be ``"binding"`` (how the CLI tells this config from the default family's).
    name, seed, cache_dir, device, threads, progress, data : as in ``PipelineConfig``.
    specialists : registry names of the pre-trained spaces (:mod:`.specialists`).
    specialist_overrides : name -> spec fields replaced (e.g. other phases or towers).
    specialist_epochs_scale : multiplies every specialist phase's epochs (at least 1 each;
        tests and smoke runs use a small value).
    target : the target space.
    retrievers : ``"a-b": ["a@space", "b@space"]`` per directly retrievable pair.
    hubs : modalities a pair without a retriever goes through.
    projector, router_training, router : stage settings (:mod:`.train_binding`, :mod:`.model`).
    variants : name -> spaces bound (Base / Large / Full).
    ablations : router variants retrained for the ablation table.
    af : the AF head trained on the bound embeddings.
    export : the bound bundle.
    """

    family: str = FAMILY
    name: str = "sim_binding"
    seed: int = 0
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    data: DataConfig = field(default_factory=lambda: DataConfig(
        dataset="config/sim_binding_dataset.yaml"))
    specialists: list[str] = field(default_factory=list_specialists)
    specialist_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    specialist_epochs_scale: float = 1.0
    target: str = "s0"
    retrievers: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(
        DEFAULT_RETRIEVERS))
    hubs: list[str] = field(default_factory=lambda: ["image", "text"])
    projector: ProjectorTraining = field(default_factory=ProjectorTraining)
    router_training: RouterTraining = field(default_factory=RouterTraining)
    router: RouterConfig = field(default_factory=RouterConfig)
    variants: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(
        DEFAULT_VARIANTS))
    ablations: list[AblationSpec] = field(default_factory=_default_ablations)
    af: AFConfig = field(default_factory=AFConfig)
    export: BindingExport = field(default_factory=BindingExport)

    def __post_init__(self) -> None:
        if self.family != FAMILY:
            raise ValueError(f"family must be {FAMILY!r} for a binding config, got "
                             f"{self.family!r}")
        for v, names in self.variants.items():
            unknown = sorted(set(names) - set(self.specialists))
            if unknown:
                raise ValueError(f"variant {v!r} binds {unknown}, not in specialists")
        if self.export.variant not in self.variants:
            raise ValueError(f"export.variant {self.export.variant!r} is not a variant "
                             f"({sorted(self.variants)})")


def is_binding_config(path: str | Path) -> bool:
    """Whether a pipeline YAML is the binding family's (``family: binding``)."""
    import yaml

    raw = yaml.safe_load(resolve_path(path).read_text()) or {}
    return isinstance(raw, Mapping) and raw.get("family") == FAMILY


class BindingRun(FamilyRun):
    """The binding pipeline's shared state: workspace, data, trained parts, timings."""

    def __init__(self, cfg: BindingConfig, dist: DistInfo | None = None) -> None:
        super().__init__(cfg, dist)
        self.data = BindingData(self.ws, seed=cfg.seed)
        self._models: dict[str, BindingModel] = {}

    @property
    def out_dir(self) -> Path:
        return self.ws.run_dir / "binding"

    # -- stages ---------------------------------------------------------------------------------

    def run_data(self, *, overwrite: bool = False) -> Path:
        root = self.ws.ensure_data(overwrite=overwrite)
        for kind, split, mods in (("teacher", "train", ["image"]), ("student", "train",
                                                                    list(POOL_MODALITIES)),
                                  ("student", "val", list(POOL_MODALITIES)),
                                  ("student", "test", list(POOL_MODALITIES))):
            self.ws.features(kind, split, mods)
        return root

    @cached_property
    def specs(self) -> list[SpecialistSpec]:
        specs = [get_specialist(n, self.cfg.specialist_overrides.get(n)) for n in
                 self.cfg.specialists]
        scale = float(self.cfg.specialist_epochs_scale)
        if scale != 1.0:
            for spec in specs:
                for phase in spec.phases:
                    phase.epochs = max(1, int(round(phase.epochs * scale)))
        return specs

    @cached_property
    def spaces(self) -> dict[str, SimSpace]:
        return train_spaces(self.specs, self.data, seed=self.cfg.seed,
                            progress=self.ws.progress, log=self.say)

    def bank_key(self, what: str) -> str:
        """Content key of an embedding bank: the stored spaces' keys, the pool seed, styles."""
        keys = {s.name: stored_key(self.ws.run_dir, s.name) for s in self.specs}
        return hash_json({"what": what, "spaces": keys, "pool_seed": self.cfg.seed,
                          "styles": list(STYLES)})

    def cached_bank(self, name: str, key: str, build: Callable[[], EmbeddingBank]
                    ) -> EmbeddingBank:
        """``<run>/binding/<name>-bank-<key>.safetensors``, built and stored when absent."""
        path = self.out_dir / f"{name}-bank-{key}.safetensors"
        if path.exists():
            return EmbeddingBank.load(path)
        bank = build()
        bank.save(path)
        return bank

    @cached_property
    def pools(self) -> EmbeddingBank:
        return self.cached_bank("pool", self.bank_key("pool"),
                                lambda: pool_bank(self.spaces, self.data))

    @cached_property
    def test(self) -> EmbeddingBank:
        return self.cached_bank("test", self.bank_key("test"),
                                lambda: test_bank(self.spaces, self.data))

    @cached_property
    def tuples(self) -> PseudoTuples:
        key = hash_json({"bank": self.bank_key("pool"), "retrievers": self.cfg.retrievers,
                         "hubs": self.cfg.hubs})
        path = self.out_dir / f"pairs-{key}.npz"
        if path.exists():
            return PseudoTuples.load(path)
        tuples = build_tuples(self.pools, parse_retrievers(self.cfg.retrievers),
                              list(POOL_MODALITIES), hubs=self.cfg.hubs,
                              progress=self.ws.progress)
        purity = tuple_purity(tuples, self.pools)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tuples.save(path)
        (self.out_dir / "pairs.json").write_text(json.dumps(
            {"tuples": len(tuples), "purity": purity, "file": path.name}, indent=1))
        self.say(f"[pairs] {len(tuples)} tuples; hidden-label purity (diagnostic only): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in purity.items()))
        return tuples

    def run_pairs(self) -> dict[str, Any]:
        tuples = self.tuples
        return {"tuples": len(tuples), "purity": tuple_purity(tuples, self.pools)}

    # -- binding --------------------------------------------------------------------------------

    def space_info(self, name: str) -> SpaceInfo:
        s = self.spaces[name]
        return SpaceInfo(name, s.embed_dim, s.modalities)

    def new_model(self, names: Sequence[str], router: RouterConfig | None = None
                  ) -> BindingModel:
        torch.manual_seed(self.cfg.seed + 4242)
        return BindingModel([self.space_info(n) for n in names],
                            self.space_info(self.cfg.target),
                            router=router or self.cfg.router,
                            projector_heads=self.cfg.projector.heads,
                            projector_hidden=self.cfg.projector.hidden_dim)

    @cached_property
    def space_corpus(self) -> dict[str, int]:
        return {s.name: STYLES.index(s.corpus) for s in self.specs}

    def _projectors_path(self) -> Path:
        key = hash_json({"bank": self.bank_key("pool"), "projector": self.cfg.projector.to_dict(),
                         "retrievers": self.cfg.retrievers, "target": self.cfg.target})
        return self.out_dir / f"projectors-{key}.safetensors"

    @cached_property
    def projected_model(self) -> BindingModel:
        """Every space's projector (trained once, shared by every variant)."""
        from safetensors.torch import load_file, save_file

        model = self.new_model(self.cfg.specialists)
        path = self._projectors_path()
        if path.exists():
            model.projectors.load_state_dict(load_file(str(path)))
            return model.eval()
        t0 = time.perf_counter()
        curve = train_projectors(model, self.pools, self.tuples, self.cfg.projector,
                                 seed=self.cfg.seed, progress=self.ws.progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.projectors.state_dict().items()},
                  str(path))
        self.say(f"[bind] projectors: {len(curve)} steps in {time.perf_counter() - t0:.1f} s, "
                 f"loss {curve[0]:.3f} -> {curve[-1]:.3f}")
        return model.eval()

    def bound_model(self, variant: str, *, router: Mapping[str, Any] | None = None,
                    training: Mapping[str, Any] | None = None, tag: str | None = None
                    ) -> BindingModel:
        """A variant's model: shared projectors + routers trained for it (cached on disk)."""
        from safetensors.torch import load_file, save_file

        tag = tag or variant
        if tag in self._models:
            return self._models[tag]
        rcfg = dataclasses.replace(self.cfg.router, **dict(router or {}))
        tcfg = self.cfg.router_training.replace(**dict(training or {}))
        names = self.cfg.variants[variant]
        model = self.new_model(names, rcfg)
        shared = self.projected_model.projectors
        for n in names:
            model.projectors[n].load_state_dict(shared[n].state_dict())
        path = self.routers_path(variant, rcfg, tcfg, tag)
        if path.exists():
            model.routers.load_state_dict(load_file(str(path)))
        else:
            t0 = time.perf_counter()
            curves = train_routers(model, self.pools, self.tuples, tcfg,
                                   space_corpus=self.space_corpus, seed=self.cfg.seed,
                                   progress=self.ws.progress)
            save_file({k: v.contiguous() for k, v in model.routers.state_dict().items()},
                      str(path))
            self.say(f"[bind] routers {tag}: {len(curves['loss'])} steps in "
                     f"{time.perf_counter() - t0:.1f} s, L_align {curves['align'][0]:.2f} -> "
                     f"{curves['align'][-1]:.2f}, L_dec {curves['dec'][0]:.3f} -> "
                     f"{curves['dec'][-1]:.3f}")
        model.eval()
        self._models[tag] = model
        return model

    def routers_path(self, variant: str, rcfg: RouterConfig | None = None,
                     tcfg: RouterTraining | None = None, tag: str | None = None) -> Path:
        """Where a variant's routers are stored (named by everything they depend on)."""
        rcfg = rcfg or self.cfg.router
        tcfg = tcfg or self.cfg.router_training
        key = hash_json({"proj": self._projectors_path().name, "router": dataclasses.asdict(rcfg),
                         "training": tcfg.to_dict(), "names": self.cfg.variants[variant]})
        return self.out_dir / f"routers-{_slug(tag or variant)}-{key}.safetensors"

    def run_bind(self) -> dict[str, BindingModel]:
        out = {v: self.bound_model(v) for v in self.cfg.variants}
        for ab in self.cfg.ablations:
            out[ab.name] = self.bound_model(ab.variant, router=ab.router, training=ab.training,
                                            tag=ab.name)
        return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")[:40]


def bound_embeddings(model: BindingModel, bank: EmbeddingBank, modality: str,
                     rows: np.ndarray | None = None, *, fixed: bool = False) -> torch.Tensor:
    """Bound (routed, or fixed-average) unit embeddings of bank rows of one modality."""
    raw = bank.raw(modality, rows, spaces=model.slots.get(modality, []))
    if not raw:
        raise KeyError(modality)
    with torch.no_grad():
        return model.fixed_average(modality, raw) if fixed else model.route(modality, raw)[0]
