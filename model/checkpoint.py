"""Checkpoints: safetensors for every array, JSON for everything else. Nothing is pickled.

A run directory holds
    model.json            ModelConfig, featurize config, class names, training summary, scorer params
    model.safetensors     network weights and buffers (best epoch)
    scorers.safetensors   fitted scorer arrays (closed-set, open-set, the attribution discriminant)
    train_state.*         last epoch's weights + optimizer, for --resume
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load
from safetensors.numpy import save_file as np_save
from safetensors.torch import load_file as t_load
from safetensors.torch import save_file as t_save
from sklearn.neighbors import KernelDensity

from leakstore.config import FeaturizeConfig
from leakstore.device import resolve_device
from leakstore.errors import LeakstoreError
from leakstore.features import BY_NAME, features_for
from leakstore.fsio import save_safetensors, write_text
from leakstore.model import scorers as S
from leakstore.model.config import ModelConfig
from leakstore.model.net import Ensemble, ProtoLeakNet, joined

FORMAT = "leakstore.model"
VERSION = 1


# ---------------------------------------------------------------------------- scorers <-> arrays
def _scorer_class(name: str):
    from leakstore.model import openset

    for mod in (S, openset):
        if hasattr(mod, name):
            return getattr(mod, name)
    raise LeakstoreError(f"model.json names an unknown scorer class {name!r}: it was written by a newer leakstore")


def pack_scorer(prefix: str, est) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A fitted scorer -> (arrays for safetensors, JSON metadata). Sub-estimators (estimators_) nest."""
    arrays, meta = {}, {"class": type(est).__name__, "params": est.get_params(deep=False), "scalars": {}}
    for k, v in vars(est).items():
        if not k.endswith("_") or k.startswith("_"):
            continue
        if isinstance(v, np.ndarray):
            arrays[f"{prefix}.{k}"] = np.ascontiguousarray(v)
        elif isinstance(v, (int, float, np.floating, np.integer)):
            meta["scalars"][k] = float(v)
        elif isinstance(v, str):
            meta.setdefault("strings", {})[k] = v
        elif k == "components_":
            meta["components"] = list(v)
        elif k == "estimators_":
            meta["estimators"] = []
            for i, sub in enumerate(v):
                a, m = pack_scorer(f"{prefix}.est{i}", sub)
                arrays.update(a)
                meta["estimators"].append(m)
        elif k == "kdes_":
            meta["kde_bandwidths"] = [float(x.bandwidth_) for x in v]
            for i, kd in enumerate(v):
                arrays[f"{prefix}.kdes_.{i}"] = np.ascontiguousarray(np.asarray(kd.tree_.data))
    return arrays, meta


# constructor parameters a saved scorer may lack, with what fitted it then (not today's default)
ABSENT_PARAMS = {"OpenSetScorer": {"outlier_components": 1}}


def unpack_scorer(prefix: str, meta: dict, arrays: dict[str, np.ndarray]):
    est = _scorer_class(meta["class"])(**{**ABSENT_PARAMS.get(meta["class"], {}), **meta["params"]})
    for name, v in arrays.items():
        if name.startswith(prefix + ".") and name.count(".") == prefix.count(".") + 1:
            setattr(est, name.rsplit(".", 1)[1], v)
    for k, v in meta["scalars"].items():
        if isinstance(getattr(type(est), k, None), property):
            continue
        setattr(est, k, int(v) if k == "n_features_in_" else v)
    for k, v in meta.get("strings", {}).items():
        setattr(est, k, v)
    if "components" in meta:
        est.components_ = tuple(meta["components"])
    if "estimators" in meta:
        est.estimators_ = [unpack_scorer(f"{prefix}.est{i}", m, arrays) for i, m in enumerate(meta["estimators"])]
    if "kde_bandwidths" in meta:
        est.kdes_ = [
            KernelDensity(bandwidth=bw).fit(arrays[f"{prefix}.kdes_.{i}"])
            for i, bw in enumerate(meta["kde_bandwidths"])
        ]
    if isinstance(est, S.OpenSetKDE):
        est.kde_ = KernelDensity(bandwidth=est.bandwidth_).fit(est.points_)
    return est


# ---------------------------------------------------------------------------- the bundle
def image_key_of(sha256) -> np.ndarray:
    """(N,) the uint64 key (the first 64 bits) of each SHA-256 hex digest given, 0 for an empty one. A
    re-saved or resized view of a file keeps its source's digest, so its key too."""
    return np.array([int(h[:16], 16) if isinstance(h, str) and len(h) >= 16 else 0 for h in sha256], dtype=np.uint64)


def image_keys(sha256) -> np.ndarray:
    """Sorted unique keys (image_key_of) of the digests given; empty ones skipped."""
    sha256 = list(sha256)
    valid = np.array([isinstance(h, str) and len(h) >= 16 for h in sha256], dtype=bool)
    return np.unique(image_key_of(sha256)[valid]) if valid.any() else np.zeros(0, dtype=np.uint64)


def images_among(sha256, keys: np.ndarray | None) -> int | None:
    """How many distinct images of the SHA-256 digests given have their key among `keys` (a model's record
    of the images it learned from); None without a record."""
    return None if keys is None else int(np.isin(image_keys(sha256), keys).sum())


@dataclass
class Bundle:
    net: ProtoLeakNet
    cfg: ModelConfig
    featurize: FeaturizeConfig
    class_names: list[str]  # the model's (known) classes, in logit order
    meta: dict
    closed: Any = None  # a fitted closed-set scorer
    open: Any = None  # a fitted open-set scorer (model/openset.py) with its threshold
    trained_images: np.ndarray | None = None  # image_keys of the images the networks trained on
    discriminant: Any = None  # a fitted ClassPosterior on the `features` block (known classes), for attribution
    outlier_photos: np.ndarray | None = None  # image_keys of the photographs the open-set scorer fitted as outliers
    small: Any = None  # the companion (a Bundle, RUN/small) beside which an image no larger than one crop is attributed

    @property
    def fuses(self) -> bool:
        """Whether attribution fuses the discriminant with the networks (cfg.discriminant > 0)."""
        return self.discriminant is not None and self.cfg.discriminant > 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every stored feature predictions read: the network's inputs, the open-set scorer's and the
        attribution discriminant's."""
        from leakstore.model.openset import stored_blocks

        blocks = tuple(getattr(self.open, "blocks_", ())) + (("features",) if self.fuses else ())
        held = {f.name for f in features_for(self.featurize)}  # `features` reads only what the store has
        extra = tuple(b for b in stored_blocks(blocks, self.cfg) if b not in self.net.inputs and b in held)
        names = tuple(self.net.inputs) + extra
        if self.small is not None:  # the companion reads the same rows
            names += tuple(n for n in self.small.feature_names if n not in names)
        return names


def model_inputs(cfg: ModelConfig, fcfg: FeaturizeConfig) -> tuple[str, ...]:
    """The features the model reads: every model input of the table that `fcfg` holds, minus those
    switched off in the model config (`use_<name>=False`, e.g. --no-residual)."""
    return tuple(f.name for f in features_for(fcfg) if f.model_input and cfg.uses(f.name))


def scorer_features(fcfg: FeaturizeConfig) -> tuple[str, ...]:
    """Stored features only the open-set scorers read (not the network), that `fcfg` holds."""
    from leakstore.model.openset import BLOCKS

    return tuple(f.name for f in features_for(fcfg) if not f.model_input and f.name in BLOCKS)


def build_member(cfg: ModelConfig, fcfg: FeaturizeConfig, n_classes: int) -> ProtoLeakNet:
    """One network for features of `fcfg` (shapes from the feature table)."""
    return ProtoLeakNet(
        cfg, {n: (BY_NAME[n].shape(fcfg), BY_NAME[n].per_timestep) for n in model_inputs(cfg, fcfg)}, n_classes
    )


def build_net(cfg: ModelConfig, fcfg: FeaturizeConfig, n_classes: int) -> ProtoLeakNet | Ensemble:
    """The model's network: one ProtoLeakNet, or an Ensemble of `cfg.members` of them."""
    return joined([build_member(cfg, fcfg, n_classes) for _ in range(cfg.members)])


def save_bundle(run_dir: Path, b: Bundle) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        t_save, {k: v.detach().cpu().contiguous() for k, v in b.net.state_dict().items()}, run_dir / "model.safetensors"
    )
    arrays, scorer_meta = {}, {}
    for name, est in (("closed", b.closed), ("open", b.open), ("discriminant", b.discriminant)):
        if est is not None:
            a, m = pack_scorer(name, est)
            arrays.update(a)
            scorer_meta[name] = m
    for name in ("trained_images", "outlier_photos"):
        if getattr(b, name) is not None:
            arrays[name] = np.ascontiguousarray(getattr(b, name), dtype=np.uint64)
    save_safetensors(np_save, arrays, run_dir / "scorers.safetensors")
    meta = {
        **b.meta,
        "format": FORMAT,
        "version": VERSION,
        "model_config": b.cfg.to_dict(),
        "featurize_config": b.featurize.to_dict(),
        "featurize_hash": b.featurize.hash,
        "inputs": list(b.net.inputs),
        "class_names": b.class_names,
        "scorers": scorer_meta,
        **({"trained_images": len(b.trained_images)} if b.trained_images is not None else {}),
        **({"outlier_photos": len(b.outlier_photos)} if b.outlier_photos is not None else {}),
    }
    write_text(run_dir / "model.json", json.dumps(meta, indent=2, default=float))  # last: the run is complete


def _broken(path: Path, e: Exception) -> LeakstoreError:
    why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return LeakstoreError(
        f"{path} is unreadable or incomplete ({type(e).__name__}: {why}): the run directory is "
        f"damaged; train again into a new --out (or restore the file from a copy)"
    )


def load_bundle(run_dir: str | Path, device: str | torch.device = "cpu") -> Bundle:
    run_dir = Path(run_dir)
    meta_path = run_dir / "model.json"
    if not meta_path.is_file():
        hint = " (an interrupted training: rerun it with --resume)" if (run_dir / "train_state.json").is_file() else ""
        raise LeakstoreError(
            f"{run_dir} holds no trained model (model.json){hint}: run `leakstore train STORE --out {run_dir}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise _broken(meta_path, e) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise LeakstoreError(f"{meta_path} is not a leakstore model of version {VERSION}")
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
        fcfg = FeaturizeConfig.from_dict(meta["featurize_config"])
        classes = list(meta["class_names"])
    except LeakstoreError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise _broken(meta_path, e) from None
    net = build_net(cfg, fcfg, len(classes))
    weights = run_dir / "model.safetensors"
    try:
        net.load_state_dict(t_load(str(weights)))
    except Exception as e:  # missing, empty, truncated, corrupt or from another model: never a traceback
        raise _broken(weights, e) from None
    net.to(resolve_device(str(device))).eval()
    scorers = run_dir / "scorers.safetensors"
    sm = meta.get("scorers", {})
    try:
        arrays = np_load(str(scorers)) if sm or "trained_images" in meta or "outlier_photos" in meta else {}
        closed = unpack_scorer("closed", sm["closed"], arrays) if "closed" in sm else None
        opn = unpack_scorer("open", sm["open"], arrays) if "open" in sm else None
        disc = unpack_scorer("discriminant", sm["discriminant"], arrays) if "discriminant" in sm else None
        trained = arrays["trained_images"] if "trained_images" in meta else None  # older models: not recorded
        photos = arrays["outlier_photos"] if "outlier_photos" in meta else None  # no photographs, or older
    except LeakstoreError:
        raise
    except Exception as e:
        raise _broken(scorers, e) from None
    small = _companion(run_dir, fcfg, classes, trained, device)
    return Bundle(net, cfg, fcfg, classes, meta, closed, opn, trained, disc, photos, small)


SMALL = "small"  # RUN/small: a model of images no larger than one crop, trained beside RUN's


def _companion(
    run_dir: Path, fcfg: FeaturizeConfig, classes: list[str], trained: np.ndarray | None, device
) -> Bundle | None:
    """The model in RUN/small, when there is one: trained on downscaled copies of the training images
    (one row an image), it attributes, beside the model, the images whose crops are one window. It must
    know the same classes, read the same features (its crops and view aside) and have learned the same
    images (a view keeps its file's digest; models too old to record them are not compared)."""
    from leakstore.config import check_compatible

    where = run_dir / SMALL
    if not (where / "model.json").is_file():
        return None
    if fcfg.crops == 1:
        raise LeakstoreError(
            f"{where} is a companion for images no larger than one crop, but {run_dir} judges one crop per "
            "image: remove it, or train the model with --crops"
        )
    small = load_bundle(where, device)
    if small.class_names != classes:
        raise LeakstoreError(
            f"{where} knows the classes {small.class_names}, {run_dir} {classes}: train it on a store of the same "
            "training data"
        )
    check_compatible(fcfg, small.featurize, f"the companion {where}", ignore=("crops", "view"))
    theirs = small.trained_images
    if trained is not None and theirs is not None and not np.array_equal(trained, theirs):
        shared = int(np.isin(theirs, trained).sum())
        raise LeakstoreError(
            f"{where} learned other images than {run_dir} ({shared} of its {len(theirs)} training images among "
            f"the model's {len(trained)}): a companion left from an earlier model, or trained on other data. Train "
            f"it again on the model's training images at half size (leakstore train STORE --out {where} "
            "--overwrite; docs: Training), or remove it"
        )
    return small


# ---------------------------------------------------------------------------- resume state
def train_state_name(member: int = 0) -> str:
    """File stem of a member's training state: train_state (the first, or a single network),
    train_state.member<k> for the others."""
    return "train_state" if member == 0 else f"train_state.member{member}"


def save_train_state(
    run_dir: Path,
    net,
    opt: torch.optim.Optimizer,
    state: dict,
    best: dict | None = None,
    member: int = 0,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """The last epoch's weights and optimiser, the best epoch's weights (`best`), so that a resumed
    run selects among every epoch as an uninterrupted one does, and the random generators' states
    (`rng`, uint8 tensors), so that it draws the same batches, noise and dropout."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in (best or {}).items()})
    tensors.update({f"rng.{k}": v.detach().cpu().contiguous() for k, v in (rng or {}).items()})
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    name = train_state_name(member)
    meta = json.dumps({**state, "param_groups": osd["param_groups"]}, default=float)
    # one file holds weights and state (the state as its metadata), replaced whole: a disk that fills
    # up mid-save leaves the previous epoch's state as it was; the .json beside it is for readers
    save_safetensors(t_save, tensors, run_dir / f"{name}.safetensors", metadata={"state": meta})
    write_text(run_dir / f"{name}.json", meta)


def read_train_state_meta(run_dir: Path, member: int = 0) -> dict:
    """The training state saved with member `member`'s weights (in the weights file's metadata)."""
    name = train_state_name(member)
    with safe_open(str(run_dir / f"{name}.safetensors"), "pt") as f:
        saved = (f.metadata() or {}).get("state")
    if saved is None:
        raise ValueError(f"{run_dir / name}.safetensors holds no training state")
    return json.loads(saved)


def load_train_state(
    run_dir: Path, net, opt: torch.optim.Optimizer, member: int = 0
) -> tuple[dict, dict | None, dict[str, torch.Tensor]]:
    """(state, best weights, the random generators' states)."""
    name = train_state_name(member)
    tensors = t_load(str(run_dir / f"{name}.safetensors"))
    meta = read_train_state_meta(run_dir, member)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta, best, rng
