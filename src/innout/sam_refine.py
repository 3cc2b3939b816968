"""Optional refinement of propagated masks with Segment Anything (transformers ``SamModel``).

A propagated mask follows the NeRF's depth, so its outline is only as sharp as the
geometry. SAM snaps it to the image's edges: each view is prompted with the propagated
mask's bounding box and a few positive points (the pixels deepest inside it), SAM's
three candidate masks are scored against the propagated one, and the best replaces it
only when it overlaps the propagated mask by ``min_iou`` or more (SAM sometimes segments
a part, or the whole table: the geometry then wins).

``spec`` is a hub id (``facebook/sam-vit-base``, ``facebook/sam-vit-huge``) or a local
folder written by ``save_pretrained``; ``random`` builds a small SamModel with random
weights (offline tests: its masks are noise and say so through ``random_weights``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from innout.devices import resolve_device
from innout.errors import InputError

RANDOM_SAM = "random"
_log = logging.getLogger("innout.sam_refine")


@dataclass
class SamRefiner:
    model: object
    processor: object
    device: torch.device
    random_weights: bool
    spec: str


def build_random_sam(seed: int = 0):
    """A small ``SamModel`` (random weights) and its ``SamProcessor``, built offline."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    image_size, patch = 256, 16
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                             output_channels=32, image_size=image_size, patch_size=patch, window_size=4,
                             global_attn_indexes=[1], num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=image_size, patch_size=patch,
                                    image_embedding_size=image_size // patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = SamModel(config)
    finally:
        torch.random.set_rng_state(generator_state)
    image_processor = SamImageProcessor(size={"longest_edge": image_size}, pad_size={"height": image_size, "width": image_size})
    return model, SamProcessor(image_processor=image_processor)


def load_sam(spec: str, device: str | torch.device = "cpu", cache_dir: str | None = None) -> SamRefiner:
    """The model and processor named by ``spec`` (see the module docstring), on ``device``
    as every stage resolves it (``auto``; ``cuda`` without a GPU: one line)."""
    dev = resolve_device(device)
    if spec == RANDOM_SAM:
        model, processor = build_random_sam()
        random_weights = True
    else:
        from transformers import SamModel, SamProcessor

        try:
            model = SamModel.from_pretrained(spec, cache_dir=cache_dir)
            processor = SamProcessor.from_pretrained(spec, cache_dir=cache_dir)
        except (OSError, ValueError) as exc:
            raise InputError(spec, f"cannot load a SAM model from this hub id or folder "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        random_weights = False
    model.eval().to(dev)
    return SamRefiner(model, processor, dev, random_weights, spec)


def prompt_points(mask: np.ndarray, count: int) -> list[list[float]]:
    """Up to ``count`` (x, y) pixel centres deepest inside ``mask``, spread apart (each next
    one is the deepest pixel outside a disc around those already taken)."""
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    points: list[list[float]] = []
    radius = max(2.0, float(depth.max()) * 0.75)
    work = depth.copy()
    for _ in range(max(0, int(count))):
        y, x = np.unravel_index(int(np.argmax(work)), work.shape)
        if work[y, x] <= 0:
            break
        points.append([float(x) + 0.5, float(y) + 0.5])
        cv2.circle(work, (int(x), int(y)), int(radius), 0.0, -1)
    return points


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def refine(refiner: SamRefiner, rgb: np.ndarray, mask: np.ndarray, n_points: int, min_iou: float) -> tuple[np.ndarray, dict]:
    """(mask, record): SAM's mask when it agrees with ``mask`` well enough, else ``mask``."""
    if not mask.any():
        return mask, {"used": False, "why": "empty mask"}
    ys, xs = np.nonzero(mask)
    box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
    points = prompt_points(mask, n_points)
    inputs = refiner.processor(images=rgb, input_boxes=[[box]], input_points=[[points]],
                               input_labels=[[[1] * len(points)]], return_tensors="pt")
    inputs = {k: v.to(refiner.device) if hasattr(v, "to") else v for k, v in inputs.items()}
    with torch.no_grad():
        out = refiner.model(**inputs, multimask_output=True)
    candidates = refiner.processor.image_processor.post_process_masks(
        out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())[0]
    candidates = candidates.reshape(-1, *mask.shape).numpy().astype(bool)
    ious = [_iou(c, mask) for c in candidates]
    best = int(np.argmax(ious))
    record = {"iou_with_propagated": round(ious[best], 4), "candidate": best}
    if ious[best] >= min_iou:
        return candidates[best], {"used": True, **record}
    return mask, {"used": False, "why": f"best SAM mask overlaps the propagated one by {ious[best]:.2f} < {min_iou}", **record}
