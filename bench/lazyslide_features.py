#!/usr/bin/env python
"""LazySlide feature extraction, driven by bench_embed_patches.py: run with LazySlide's own venv.

    bench/out/venv-lazyslide/bin/python bench/lazyslide_features.py --serve     # JSON lines on stdin / stdout

Never import this file from the project venv: it needs lazyslide 0.13 / wsidata / torchvision, which live only in
bench/out/venv-lazyslide. bench_embed_patches.py starts it once as a long-lived subprocess, so the model is built
and warm once and LazySlide's runs can be interleaved with AtlasPatch's rep by rep (the caller holds the benchmark
lock around each timed request). Requests (one JSON object per line) and replies (one JSON line each):

- {"cmd": "setup", "slide", "coords": [[x, y, w, h, level], …], "model", "weights", "batch_size", "precision"}:
  opens the slide with `wsidata.open_wsi`, registers AtlasPatch's patches as LazySlide tiles (key `ap_tiles`:
  level-0 boxes + a `TileSpec` of 224 px at the slide's mpp, so `TileImagesDataset` reads exactly AtlasPatch's
  pixels at level 0), builds the *same architecture* as AtlasPatch's registry entry with timm and loads the *same
  random-init state dict* file (strict), and runs one warm-up batch. Reply: versions, build time, the transform.
- {"cmd": "run", "n", "workers"}: the first n tiles through
  `lazyslide.tl.feature_extraction(wsi, model, transform=T, device="cpu", batch_size=B, num_workers=W, pbar=False,
  amp=…, autocast_dtype=…, tile_key=…, return_features=True)`, timed from the call to its return (features stored
  in the WSIData too, as LazySlide always does). amp is on, with the setup's precision, unless that is float32: the
  way LazySlide runs a model in bfloat16 / float16. Reply: seconds, patches, patches/s, a checksum of the features.
- {"cmd": "quit"}.

The model is passed as a plain `torch.nn.Module` (LazySlide's "callable" path: `model(image)` under
`torch.inference_mode()`), and T is LazySlide's own eval transform (`lazyslide_models._utils.get_default_transform`:
ToImage → ToDtype(float32, scale) → Resize(img / crop_pct, antialias) → CenterCrop → Normalize) with the same
resize / interpolation / mean / std as AtlasPatch's registry entry, i.e. what `TimmModel.get_transform()` gives a
timm model.
"""

from __future__ import annotations

import json
import os
import sys
import time

# The models as AtlasPatch's registry builds them (python/atlaspatch/encoders/patch/{resnet,timm_models}.py),
# rebuilt here with timm so this venv never imports atlaspatch: architecture, head, preprocessing.
MODELS = {
    "resnet50": {  # timm resnet50 (full, so the state dict loads strictly), truncated after layer3 + avg pool: 1024-d
        "arch": "resnet50",
        "kwargs": {},
        "head": "resnet_layer3",
        "dim": 1024,
        "transform": {"img": 224, "resize": 224, "interpolation": "bilinear"},
    },
    "lunit_vit_small_patch8_dino": {  # timm vit_small_patch8_224, CLS token of forward_features: 384-d
        "arch": "vit_small_patch8_224",
        "kwargs": {"num_classes": 0, "dynamic_img_size": True, "img_size": 224, "weight_init": "skip"},
        "head": "vit_cls",
        "dim": 384,
        "transform": {"img": 224, "resize": 248, "interpolation": "bicubic"},
    },
    "bench_tiny": {  # bench_embed_patches.py's reading-bound stand-in: 4x4 average pool + linear, 64-d
        "arch": None,
        "kwargs": {},
        "head": "tiny",
        "dim": 64,
        "transform": {"img": 224, "resize": 224, "interpolation": "bilinear"},
    },
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(name: str, weights: str):  # type: ignore[no-untyped-def]
    import timm
    import torch
    from torch import nn

    cfg = MODELS[name]
    if cfg["head"] == "tiny":
        tiny = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(1), nn.Linear(48, cfg["dim"]))
        tiny.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return tiny.eval()
    trunk = timm.create_model(cfg["arch"], pretrained=False, **cfg["kwargs"])
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    trunk.load_state_dict(state, strict=True)
    if cfg["head"] == "resnet_layer3":
        model = nn.Sequential(
            trunk.conv1,
            trunk.bn1,
            trunk.act1,
            trunk.maxpool,
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
    else:

        class VitCls(nn.Module):
            def __init__(self, trunk: nn.Module) -> None:
                super().__init__()
                self.trunk = trunk

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                return self.trunk.forward_features(images)[:, 0]

        model = VitCls(trunk)
    return model.eval()


def float_output(model):  # type: ignore[no-untyped-def]
    """The model, returning float32: LazySlide 0.13's `feature_extraction(..., amp=True,
    autocast_dtype=torch.bfloat16)` fails on CPU converting the bfloat16 output to numpy ("Got unsupported ScalarType
    BFloat16"), so its reduced-precision run gets this one cast of the (B, dim) output, nothing else."""
    from torch import nn

    class _FloatOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images):  # type: ignore[no-untyped-def]
            return self.inner(images).float()

    return _FloatOutput(model).eval()


def build_transform(name: str):  # type: ignore[no-untyped-def]
    from lazyslide_models._utils import get_default_transform

    t = MODELS[name]["transform"]
    return get_default_transform(
        (t["img"], t["img"]),
        interpolation=t["interpolation"],
        crop_pct=t["img"] / t["resize"],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


class Server:
    def __init__(self) -> None:
        self.wsi = None
        self.model = None
        self.transform = None
        self.batch_size = 32
        self.keys: dict[int, str] = {}
        self.coords = None
        self.precision = "float32"

    def setup(self, req: dict) -> dict:
        import lazyslide
        import timm
        import torch
        import wsidata
        from wsidata import open_wsi

        started = time.perf_counter()
        self.wsi = open_wsi(req["slide"])
        self.coords = np.asarray(req["coords"], dtype=np.int64)
        if not (self.coords[:, 4] == 0).all() or not (self.coords[:, 2:4] == 224).all():
            raise ValueError("expected level-0 reads of 224 px (AtlasPatch at the slide's own magnification)")
        self.mpp = float(self.wsi.properties.mpp)
        self.batch_size = int(req["batch_size"])
        self.precision = req.get("precision", "float32")
        self.model = build_model(req["model"], req["weights"])
        if self.precision != "float32":
            self.model = float_output(self.model)
        self.transform = build_transform(req["model"])
        build_s = time.perf_counter() - started
        # warm-up: one batch through LazySlide itself (oneDNN kernels for this batch shape, first reads)
        self._tiles(min(self.batch_size, len(self.coords)))
        self.run({"n": min(self.batch_size, len(self.coords)), "workers": 0})
        return {
            "versions": {
                "lazyslide": lazyslide.__version__,
                "wsidata": wsidata.__version__,
                "torch": torch.__version__,
                "timm": timm.__version__,
                "torch_threads": torch.get_num_threads(),
                "python": sys.version.split()[0],
            },
            "mpp": self.mpp,
            "build_s": build_s,
            "transform": repr(self.transform),
            "params": sum(p.numel() for p in self.model.parameters()),
        }

    def _tiles(self, n: int) -> str:
        """Tile key holding AtlasPatch's first n patches (level-0 boxes, TileSpec 224 px at the slide's mpp)."""
        if n in self.keys:
            return self.keys[n]
        import geopandas as gpd
        from lazyslide.preprocess._tiles import _add_tiles
        from shapely import box
        from wsidata import TileSpec

        rows = self.coords[:n]
        gdf = gpd.GeoDataFrame(
            {"tile_id": np.arange(n), "tissue_id": np.zeros(n, dtype=np.int64)},
            geometry=[box(x, y, x + w, y + h) for x, y, w, h, _ in rows.tolist()],
        )
        spec = TileSpec.from_wsidata(self.wsi, tile_px=224, stride_px=224, mpp=self.mpp, tissue_name="tissues")
        key = f"ap_tiles_{n}"
        _add_tiles(self.wsi, gdf, spec, key_added=key)
        self.keys[n] = key
        return key

    def run(self, req: dict) -> dict:
        import lazyslide as zs
        import torch

        n, workers = int(req["n"]), int(req["workers"])
        reduced = self.precision != "float32"
        key = self._tiles(n)
        started = time.perf_counter()
        features = zs.tl.feature_extraction(
            self.wsi,
            self.model,
            model_name="bench",
            transform=self.transform,
            device="cpu",
            batch_size=self.batch_size,
            num_workers=workers,
            pbar=False,
            amp=reduced,  # LazySlide's reduced precision: torch.autocast around the model
            autocast_dtype=getattr(torch, self.precision) if reduced else None,
            tile_key=key,
            return_features=True,
        )
        seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "patches": int(features.shape[0]),
            "dim": int(features.shape[1]),
            "patches_per_s": features.shape[0] / seconds,
            "workers": workers,
            "checksum": float(np.abs(features).sum()),
            "first": features[:8].tolist(),
        }


np = None  # numpy, imported in main (keeps the module importable for its docstring)


def main() -> int:
    global np
    import numpy

    np = numpy
    if "--serve" not in sys.argv:
        print(__doc__)
        return 2
    reply_fd = os.dup(1)  # replies only; everything LazySlide prints goes to stderr
    os.dup2(2, 1)
    replies = os.fdopen(reply_fd, "w", buffering=1)
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["cmd"] == "quit":
                break
            reply = {"ok": True, **getattr(server, req["cmd"])(req)}
        except Exception as exc:  # report to the driver, keep serving
            import traceback

            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
