"""Geometry pre-training (stage 2): an offline nerfstudio method whose checkpoints
nerfstudio's own tools load, and training that resumes from its checkpoints.

The session fixture ``trained`` trains one tiny NeRF on a tiny procedural scene
(64x48, 40 train + 4 ground-truth test views) the way a killed-and-rerun Snakemake job
would: interrupted after a checkpoint, then rerun to completion. ``tests/test_render.py``
reuses it.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ITERATIONS = 300
INTERRUPT_AFTER = ITERATIONS // 2  # steps done before the simulated kill (a checkpoint is there)
TINY = [  # the smoke preset's sampling, smaller tables and batches for a 64x48 scene
    "pretrain.rays_per_batch=1024",
    "pretrain.proposal_log2_hashmap_size=12",
    "pretrain.log2_hashmap_size=13",
    "pretrain.max_res=256",
    "pretrain.eval_rays_per_chunk=4096",
    "pretrain.proposal_warmup=200",
    "pretrain.lr_decay_steps=2000",
    "pretrain.log_every_steps=40",
    "device=cpu",
]
SCENE = {"variant": "forward", "seed": 0, "n_train": 40, "n_test": 4, "width": 128, "height": 96}


class Interrupted(Exception):
    """Raised from the training callback to simulate a killed job."""


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="session")
def offline():
    """Any download attempt (sockets, urllib, the HF hub) fails the test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        mp.setattr(urllib.request, "urlopen", _refuse)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def make_scene(root: Path) -> Path:
    from innout.procedural import write_spinnerf_scene
    from innout.scene import import_scene

    s = SCENE
    write_spinnerf_scene(root / "src", s["variant"], s["seed"], s["n_train"], s["n_test"], s["width"], s["height"], (2,), progress=False)
    import_scene(root / "src", "spinnerf", root / "scene", downscale=2, spinnerf_n_test=s["n_test"], mask_dilation_iterations=1)
    return root / "scene" / "transforms.json"


def tiny_cfg(*extra: str):
    from innout.config import load_method_config

    return load_method_config("smoke", [*TINY, *extra])


def _record_and_stop_at(stop: int, seen: list | None = None):
    """An ``on_step`` that appends each finished step to ``seen`` and kills the run after ``stop``."""
    def on_step(step: int) -> None:
        if seen is not None:
            seen.append(step)
        if step == stop:
            raise Interrupted(step)
    return on_step


def _logger(name: str) -> tuple[logging.Logger, ListHandler]:
    log = logging.getLogger(f"innout.test.{name}")
    log.setLevel(logging.INFO)
    handler = ListHandler()
    log.addHandler(handler)
    return log, handler


# test_render.py imports these fixtures; pytest then holds one definition per module, so
# the work is memoised here to happen once per session.
_SHARED: dict = {}


@pytest.fixture(scope="session")
def scene(tmp_path_factory, offline) -> Path:
    if "scene" not in _SHARED:
        _SHARED["scene"] = make_scene(tmp_path_factory.mktemp("tiny_scene"))
    return _SHARED["scene"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, scene, offline) -> dict:
    """Train ITERATIONS steps, killed after INTERRUPT_AFTER and rerun (same work dir)."""
    if "trained" not in _SHARED:
        _SHARED["trained"] = _train_interrupted_and_resumed(tmp_path_factory, scene)
    return _SHARED["trained"]


def _train_interrupted_and_resumed(tmp_path_factory, scene: Path) -> dict:
    from innout.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("pretrain")
    out_dir, work_dir = root / "out", root / "work"
    cfg = tiny_cfg(f"pretrain.iterations={ITERATIONS}", f"pretrain.steps_per_checkpoint={INTERRUPT_AFTER}")

    def kill(step: int) -> None:
        if step + 1 == INTERRUPT_AFTER:
            raise Interrupted(step)

    log1, first = _logger("first")
    with pytest.raises(Interrupted):
        run_pretrain(scene, out_dir, work_dir, cfg, log1, on_step=kill)
    assert not out_dir.exists(), "an interrupted run must not leave outputs"
    log2, second = _logger("second")
    summary = run_pretrain(scene, out_dir, work_dir, cfg, log2)
    return {"scene": scene, "out_dir": out_dir, "work_dir": work_dir, "summary": summary, "cfg": cfg,
            "log_first": first.messages, "log_second": second.messages}


@pytest.fixture(scope="session")
def train_renders(tmp_path_factory, trained) -> Path:
    """Every train view of the trained NeRF rendered once (rgb/, depth/), for tests that
    need stand-ins of later stages' inputs."""
    if "train_renders" not in _SHARED:
        from innout.frames import read_scene
        from innout.render import render_train_views
        from innout.renderer import NerfRenderer

        _, _, train, _ = read_scene(trained["scene"])
        folder = tmp_path_factory.mktemp("train_renders")
        renderer = NerfRenderer.from_config(trained["out_dir"], device="cpu")
        render_train_views(renderer, train, folder, 1.0, logging.getLogger("innout.test.renders"))
        _SHARED["train_renders"] = folder
    return _SHARED["train_renders"]


# ---------------------------------------------------------------------------------------


def test_method_is_registered():
    from nerfstudio.plugins.registry import discover_methods

    from innout.nerf import METHOD_NAME, InnoutNerfactoModelConfig

    methods, _ = discover_methods()
    assert METHOD_NAME in methods
    model = methods[METHOD_NAME].pipeline.model
    assert isinstance(model, InnoutNerfactoModelConfig)
    assert model.use_view_dependent_color is False
    assert model.camera_optimizer.mode == "off"


def test_fast_hash_encoding_matches_nerfstudio():
    from nerfstudio.field_components.encodings import HashEncoding

    from innout.nerf import use_fast_hash_encoding

    torch.manual_seed(0)
    ref = HashEncoding(num_levels=6, min_res=8, max_res=300, log2_hashmap_size=12, implementation="torch")
    fast = HashEncoding(num_levels=6, min_res=8, max_res=300, log2_hashmap_size=12, implementation="torch")
    fast.load_state_dict(ref.state_dict())
    assert use_fast_hash_encoding(fast) == 1
    x = torch.rand(5000, 3)
    x[:7] = torch.tensor([0.0, 0.5, 1.0])  # grid-aligned points (floor == ceil)
    g = torch.randn(5000, 12)
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=1e-7)
    (out_ref * g).sum().backward()
    (out_fast * g).sum().backward()
    torch.testing.assert_close(fast.hash_table.grad, ref.hash_table.grad, rtol=1e-4, atol=1e-6)


def test_view_independent_colour(offline):
    """With view dependence off the colour of a point does not depend on the direction."""
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.field_components.field_heads import FieldHeadNames

    from innout.nerf import NerfSettings, make_trainer_config

    settings = NerfSettings(num_levels=4, log2_hashmap_size=10, max_res=64, hidden_dim=16, hidden_dim_color=16, proposal_log2_hashmap_size=10)
    cfg = make_trainer_config(settings).pipeline.model
    model = cfg.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=3, metadata={})
    n = 16
    pos = torch.rand(n, 1, 3) - 0.5

    def colour(dirs):
        fr = Frustums(origins=pos, directions=dirs, starts=torch.zeros(n, 1, 1), ends=torch.zeros(n, 1, 1), pixel_area=torch.ones(n, 1, 1))
        samples = RaySamples(frustums=fr, camera_indices=torch.zeros(n, 1, 1, dtype=torch.long))
        return model.field(samples)[FieldHeadNames.RGB]

    d1 = torch.nn.functional.normalize(torch.randn(n, 1, 3), dim=-1)
    d2 = torch.nn.functional.normalize(torch.randn(n, 1, 3), dim=-1)
    torch.testing.assert_close(colour(d1), colour(d2))


def test_outputs(trained):
    out, summary = trained["out_dir"], trained["summary"]
    assert (out / "innout-nerfacto" / "config.yml").is_file()
    ckpts = list((out / "innout-nerfacto" / "nerfstudio_models").glob("step-*.ckpt"))
    assert [c.name for c in ckpts] == [f"step-{ITERATIONS - 1:09d}.ckpt"]
    assert (out / "innout-nerfacto" / "dataparser_transforms.json").is_file()
    assert (out / "config.yaml").is_file()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("iterations", "seconds", "rays_per_second", "psnr_train_unmasked", "psnr_test_outside_mask", "ssim_test_outside_mask"):
        assert summary[key] is not None, key
    assert summary["iterations"] == ITERATIONS
    assert summary["rays_per_second"] > 0
    assert 0.0 < summary["ssim_test_outside_mask"] <= 1.0
    # the tiny NeRF learned something (random colours are ~10 dB)
    assert summary["psnr_train_unmasked"] > 16, summary
    # nothing rendered in full: the quality figures come from a few patches per view
    assert not (out / "renders").exists()
    patches = summary["quality_patches"]
    assert patches["rays"] == (summary["n_train_views"] + summary["n_test_views"]) * patches["per_view"] * patches["size"] ** 2
    assert (out / "curves.png").is_file() and summary["tensorboard"] is None  # the smoke preset writes no TensorBoard
    ns_data = json.loads((out / "innout-nerfacto" / "transforms.json").read_text())
    assert not any(Path(f["file_path"]).is_absolute() for f in ns_data["frames"])  # relative to the NeRF folder
    assert all((out / "innout-nerfacto" / f["file_path"]).is_file() for f in ns_data["frames"])
    print(f"\ntiny pretrain: {json.dumps({k: summary[k] for k in ('seconds', 'rays_per_second', 'psnr_train_unmasked', 'psnr_test_outside_mask', 'ssim_test_outside_mask')})}")


def test_resumed_from_checkpoint(trained):
    first, second, summary = trained["log_first"], trained["log_second"], trained["summary"]
    assert not any("resuming" in m for m in first)
    assert any(m.startswith(f"resuming from step {INTERRUPT_AFTER} ") for m in second), second
    # the rerun trained only the remaining steps and ended at the total count
    assert summary["resumed_from_step"] == INTERRUPT_AFTER
    assert summary["steps_this_run"] == ITERATIONS - INTERRUPT_AFTER
    assert any(m.startswith(f"step {ITERATIONS}/{ITERATIONS} ") for m in second)
    assert not any(m.startswith(f"step {INTERRUPT_AFTER}/") or m.startswith("step 1/") for m in second)


def test_nerfstudio_eval_setup_loads_and_agrees(trained, offline):
    """nerfstudio's eval_setup (what ns-viewer / ns-render use) loads the checkpoint, and
    its renders of its own (normalised-frame) cameras equal ours of the scene cameras."""
    from nerfstudio.utils.eval_utils import eval_setup

    from innout.frames import read_scene
    from innout.renderer import NerfRenderer

    config_path = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    _, pipeline, ckpt, step = eval_setup(config_path, test_mode="test")
    assert step == ITERATIONS - 1 and ckpt.is_file()
    renderer = NerfRenderer.from_config(trained["out_dir"], device="cpu")
    _, _, train, _ = read_scene(trained["scene"])
    by_path = {f.image.resolve(): f for f in train}  # nerfstudio's paths are relative to the NeRF folder
    cameras = pipeline.datamanager.train_dataset.cameras
    for i in (0, len(cameras) - 1):
        path = str(pipeline.datamanager.train_dataset.image_filenames[i])
        ns = pipeline.model.get_outputs_for_camera(cameras[i : i + 1].to(pipeline.device))
        ours = renderer.render_camera(by_path[Path(path).resolve()].camera, return_samples=False)
        torch.testing.assert_close(ours["rgb"], ns["rgb"].cpu(), atol=2e-3, rtol=0)
        torch.testing.assert_close(ours["depth"] * renderer.frame.scale, ns["expected_depth"][..., 0].cpu(), atol=2e-3, rtol=1e-3)


def test_resume_reproduces_uninterrupted_run(tmp_path, scene, offline):
    """Same seed, same steps: an uninterrupted run and a killed-and-resumed one end with
    identical checkpoints (resume restores model, optimisers, schedulers and RNG states).
    The rerun must really resume (a fresh run with the same seed would end identical too):
    it starts at step 2 and runs fewer steps than the uninterrupted one."""
    from innout.pretrain import run_pretrain

    cfg = tiny_cfg("pretrain.iterations=6", "pretrain.steps_per_checkpoint=2", "pretrain.rays_per_batch=128")

    log, _ = _logger("exact")
    steps_a, steps_b1, steps_b2 = [], [], []
    with pytest.raises(Interrupted):  # uninterrupted up to the checkpoint after 4 steps
        run_pretrain(scene, tmp_path / "a_out", tmp_path / "a_work", cfg, log, on_step=_record_and_stop_at(5, steps_a))
    with pytest.raises(Interrupted):  # killed after the first checkpoint (2 steps) ...
        run_pretrain(scene, tmp_path / "b_out", tmp_path / "b_work", cfg, log, on_step=_record_and_stop_at(1, steps_b1))
    log_b2, rerun = _logger("exact-rerun")
    with pytest.raises(Interrupted):  # ... rerun: resumes at step 2
        run_pretrain(scene, tmp_path / "b_out", tmp_path / "b_work", cfg, log_b2, on_step=_record_and_stop_at(5, steps_b2))
    assert steps_a == list(range(6)) and steps_b1 == [0, 1]
    assert steps_b2 == [2, 3, 4, 5], steps_b2  # resumed from a step > 0: fewer steps than run a
    assert any(m.startswith("resuming from step 2 ") for m in rerun.messages), rerun.messages
    a = torch.load(tmp_path / "a_work" / "checkpoints" / "step-000000003.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b_work" / "checkpoints" / "step-000000003.ckpt", weights_only=False)
    assert a["pipeline"].keys() == b["pipeline"].keys()
    for key in a["pipeline"]:
        assert torch.equal(a["pipeline"][key], b["pipeline"][key]), key
    assert torch.equal(a["innout"]["rng"]["torch"], b["innout"]["rng"]["torch"])


def test_changed_setting_discards_the_checkpoint(tmp_path, scene, offline):
    """A checkpoint trained with other settings is not resumed: the rerun warns and starts
    at step 0. A setting that does not change the model (logging) keeps it resumable."""
    from innout.pretrain import run_pretrain

    base = ("pretrain.iterations=4", "pretrain.steps_per_checkpoint=2", "pretrain.rays_per_batch=128")

    out, work = tmp_path / "out", tmp_path / "work"
    log, _ = _logger("discard")
    with pytest.raises(Interrupted):  # a checkpoint after 2 steps
        run_pretrain(scene, out, work, tiny_cfg(*base), log, on_step=_record_and_stop_at(1))
    assert (work / "checkpoints" / "step-000000001.ckpt").is_file()

    same_model = tiny_cfg(*base, "pretrain.log_every_steps=1")  # not in the fingerprint
    kept, kept_log = [], _logger("kept")
    with pytest.raises(Interrupted):
        run_pretrain(scene, out, work, same_model, kept_log[0], on_step=_record_and_stop_at(2, kept))
    assert kept == [2], kept
    assert any(m.startswith("resuming from step 2 ") for m in kept_log[1].messages)

    changed = tiny_cfg(*base[:2], "pretrain.rays_per_batch=256")  # another model
    seen, (changed_log, handler) = [], _logger("changed")
    with pytest.raises(Interrupted):
        run_pretrain(scene, out, work, changed, changed_log, on_step=_record_and_stop_at(0, seen))
    assert seen == [0], seen  # started over
    assert any("other settings or data: starting over" in m for m in handler.messages), handler.messages
    assert not any(m.startswith("resuming") for m in handler.messages)
    assert not (work / "checkpoints" / "step-000000001.ckpt").exists()


def test_a_cpu_checkpoint_is_not_continued_on_a_gpu(tmp_path, scene, offline, monkeypatch):
    """A run killed on a CPU and rerun on a GPU starts over there (a GPU trains in mixed
    precision with other kernels, and its gradient scaler refuses the CPU's empty state); the
    GPU run's checkpoint keeps that GPU's generator state. On a virtual GPU (tests/virtual_gpu.py)."""
    from virtual_gpu import pretend_cuda, virtual_gpu

    from innout.pretrain import run_pretrain

    base = ("pretrain.iterations=4", "pretrain.steps_per_checkpoint=2", "pretrain.rays_per_batch=128")
    out, work = tmp_path / "out", tmp_path / "work"

    with pytest.raises(Interrupted):  # killed on the CPU after its checkpoint at 2 steps
        run_pretrain(scene, out, work, tiny_cfg(*base), _logger("cpu-run")[0], on_step=_record_and_stop_at(1))
    pretend_cuda(monkeypatch)
    seen, (gpu_log, handler) = [], _logger("gpu-rerun")
    with virtual_gpu(), pytest.raises(Interrupted):
        run_pretrain(scene, out, work, tiny_cfg(*base, "device=cuda"), gpu_log, on_step=_record_and_stop_at(1, seen))
    assert seen == [0, 1], seen  # started over
    assert any("other settings or data: starting over" in m for m in handler.messages), handler.messages
    state = torch.load(work / "checkpoints" / "step-000000001.ckpt", weights_only=False)
    assert "cuda_device" in state["innout"]["rng"]


def test_bad_input(tmp_path, scene):
    from innout.errors import InputError
    from innout.frames import read_scene

    meta = json.loads(scene.read_text())
    for frame in meta["frames"]:
        frame.pop("transform_matrix")
    bad = scene.parent / "no_poses.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="transform_matrix"):
        read_scene(bad)


def test_nan_loss_is_a_one_line_stage_error(tmp_path, scene, offline):
    """A training step whose loss is not finite stops the stage with one line naming it,
    and no output is left (the parameters are poisoned after the first step)."""
    from innout.errors import StageError
    from innout.pretrain import run_pretrain

    out_dir = tmp_path / "out"
    cfg = tiny_cfg("pretrain.iterations=5", "pretrain.steps_per_checkpoint=100")

    def poison(step: int) -> None:
        # the training callback sees only the step: find the live model to poison it
        if step == 0:
            import gc

            for obj in gc.get_objects():
                if type(obj).__name__ == "InnoutNerfactoModel":
                    with torch.no_grad():
                        for p in obj.field.mlp_head.parameters():
                            p.fill_(float("nan"))

    with pytest.raises(StageError) as exc:
        run_pretrain(scene, out_dir, tmp_path / "work", cfg, on_step=poison)
    message = str(exc.value)
    assert "\n" not in message and "pretrain" in message and "nan" in message.lower(), message
    assert not out_dir.exists()
