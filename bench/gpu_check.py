"""One command for a GPU machine that is lent for minutes: the engine's figures on one sheet, with a JSON copy.

Builds real-size random-weight SD 1.5 and SDXL checkpoints from the shipped configs (fp16, no download) as single
files in the original layout on a temporary shelf, then, through the engine's own loader and pipelines:

  it/s          eager vs compile=on (torch.compile of the denoiser), at 512² (SD 1.5) and 1024² (SDXL)
  batch         one call of 4 images vs 4 calls of 1
  engine        a job through a real engine process (socket, queue, gallery) vs the bare pipeline call
  batching      cross-user batching: four users' jobs in one call vs one after another, images/s (in `engine`)
  memory        peak VRAM (CUDA; peak RSS on a CPU)
  switch        loading SDXL then SD 1.5 with room for one model (the cache makes room first)

    python bench/gpu_check.py [--json FIGURES.json] [--no-compile] [--steps 20]
    python bench/gpu_check.py --tiny      # the same code on the CPU with tiny models (the test suite runs it)

Made to finish within 8 minutes on an H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.device.device import Device  # noqa: E402
from engine.device.pipelines import PipelineCache  # noqa: E402
from engine.device.shelf import Shelf  # noqa: E402

CONFIGS = ROOT / "engine" / "device" / "configs"
PROMPT = "a red circle on a blue background"


def build_real(family: str, path: Path, device: torch.device) -> None:
    """A real-size random-weight checkpoint of `family` (sd1, sdxl) from the shipped configs, saved in fp16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.ldm_layout import save_single_file

    folder = CONFIGS / family
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds on a GPU instead of minutes on its host
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))}  # fmt: skip
        if (folder / "text_encoder_2").is_dir():
            config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(config)
    save_single_file(SimpleNamespace(**{k: v.half().cpu() for k, v in parts.items()}), path)


def build_tiny(family: str, path: Path, shelf: Path) -> None:
    """The test suite's tiny random-weight pipeline of `family`, saved as the real ones are (its configs on the
    shelf, since its architecture is not the shipped one)."""
    from tests.ldm_layout import save_config_folder, save_single_file
    from tests.tiny_pipeline import family_pipeline

    pipe = family_pipeline(shelf / "_build", family)
    save_single_file(pipe, path)
    save_config_folder(pipe, shelf / "configs" / family)


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls (after the caller's warm-up)."""
    spent = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        spent.append(time.perf_counter() - started)
    return sorted(spent)[len(spent) // 2]


def peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def family_figures(cache: PipelineCache, name: str, size: int, steps: int, compile_too: bool, repeat: int) -> dict:
    model = cache.model(name)
    common = {"prompt": PROMPT, "negative_prompt": "", "steps": steps, "cfg_scale": 7.0, "sampler": "k_euler"}

    def one(seeds: list[int]) -> None:
        model.txt2img(width=size, height=size, seeds=seeds, **common)

    one([1])  # warm-up: kernels, allocator
    single = timed(lambda: one([1]), repeat)
    four = timed(lambda: one([1, 2, 3, 4]), max(1, repeat // 2))
    out = {"size": size, "steps": steps, "it_s_eager": round(steps / single, 2), "batch4_one_call_s": round(four, 3),
           "batch4_four_calls_s": round(4 * single, 3), "batch4_speedup": round(4 * single / four, 2)}  # fmt: skip
    if compile_too:
        started = time.perf_counter()
        model.compile()
        one([1])  # compiles here (from inductor's cache when this machine compiled it before)
        out["compile_first_call_s"] = round(time.perf_counter() - started, 1)
        out["it_s_compiled"] = round(steps / timed(lambda: one([1]), repeat), 2)
    out["peak_memory_gb"] = round(peak_memory(), 2)
    return out


def engine_round_trip(shelf: Path, name: str, size: int, steps: int, repeat: int, bare_s: float) -> dict:
    """The same image through a real engine process (socket, queue, worker, PNG, gallery) vs the bare call."""
    from bench.engine_process import running_engine
    from engine.client.schema import DreamRequest

    home = Path(tempfile.mkdtemp(prefix="dh-gpu-check-"))
    settings = {"DREAMHALL_MODELS_DIR": str(shelf), "DREAMHALL_MODEL": name, "HF_HUB_OFFLINE": "1"}
    with running_engine(home, settings, timeout=300, client_timeout=600) as client:

        def job() -> None:
            request = DreamRequest(prompt=PROMPT, seed=1, steps=steps, width=size, height=size, sampler="k_euler",
                                       cfg_scale=7.0, fresh=True)  # fmt: skip
            done = client.wait(client.submit(request).id)
            if done.status != "done":
                raise RuntimeError(f"the job {done.status}: {done.error}")

        job()  # warm: the model loads in the engine
        engine_s = timed(job, repeat)
        batching = cross_user_batching(client, size, steps)
    return {"engine_job_s": round(engine_s, 3), "bare_call_s": round(bare_s, 3),
            "engine_overhead_ms": round((engine_s - bare_s) * 1000, 1), "cross_user_batching": batching}  # fmt: skip


def cross_user_batching(client, size: int, steps: int, users: int = 4) -> dict:
    """Four users' one-image jobs queued together (one pipeline call) vs the same four one after another."""
    from engine.client.schema import DreamRequest, Requester

    def requests(round_no: int) -> list[DreamRequest]:
        return [DreamRequest(prompt=f"{PROMPT}, take {i}", seed=10 * round_no + i, steps=steps, width=size,
                             height=size, sampler="k_euler", cfg_scale=7.0, fresh=True,
                             requester=Requester(source="discord", user=f"user{i}")) for i in range(users)]  # fmt: skip

    t = time.perf_counter()
    for request in requests(1):
        client.wait(client.submit(request).id)
    one_by_one = time.perf_counter() - t
    blocker = client.submit(DreamRequest(prompt=PROMPT, steps=150, width=size, height=size, fresh=True)).id
    ids = [client.submit(request).id for request in requests(2)]  # queued behind it: they share one call
    t = time.perf_counter()
    client.cancel(blocker)
    done = [client.wait(job_id) for job_id in ids]
    together = time.perf_counter() - t
    if any(job.status != "done" for job in done):
        raise RuntimeError(f"batched jobs: {[job.error for job in done]}")
    return {
        "users": users,
        "one_by_one_images_s": round(users / one_by_one, 2),
        "batched_images_s": round(users / together, 2),
        "speedup": round(one_by_one / together, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU: the same code, in seconds")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    device = Device("cpu" if args.tiny else "auto")
    started = time.perf_counter()
    figures: dict = {"device": device.describe(), "torch": torch.__version__, "python": platform.python_version(),
                     "tiny": args.tiny}  # fmt: skip
    shelf = Path(tempfile.mkdtemp(prefix="dh-gpu-shelf-"))
    (shelf / "Stable-diffusion").mkdir()
    sizes = {"sd1": 64 if args.tiny else 512, "sdxl": 64 if args.tiny else 1024}
    for family in sizes:
        t = time.perf_counter()
        path = shelf / "Stable-diffusion" / f"{family}.safetensors"
        if args.tiny:
            build_tiny(family, path, shelf)
        else:
            build_real(family, path, device.torch_device)
        figures[f"build_{family}_s"] = round(time.perf_counter() - t, 1)
    steps = 4 if args.tiny else args.steps
    compile_too = not args.no_compile and not args.tiny  # on a CPU, compiling tiny models measures nothing
    room_for_one = PipelineCache(device, None, shelf=Shelf(shelf), safety_check=False, budget_bytes=1)
    for family, size in sizes.items():
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        room_for_one.model(family)  # the switch: the other model is unloaded first
        figures[f"{family}_load_s"] = round(time.perf_counter() - t, 1)
        figures[family] = family_figures(room_for_one, family, size, steps, compile_too, args.repeat)
        print(f"{family} {size}²: {json.dumps(figures[family])} (load {figures[f'{family}_load_s']} s)", flush=True)
    t = time.perf_counter()
    room_for_one.model("sd1")
    figures["switch_sdxl_to_sd1_s"] = round(time.perf_counter() - t, 1)
    figures["switch_peak_weights_gb"] = round(room_for_one.peak_bytes / 1e9, 2)
    bare = timed(lambda: room_for_one.model("sd1").txt2img(
        width=sizes["sd1"], height=sizes["sd1"], seeds=[1], prompt=PROMPT, negative_prompt="", steps=steps,
        cfg_scale=7.0, sampler="k_euler"), args.repeat)  # fmt: skip
    room_for_one.unload()
    figures["engine"] = engine_round_trip(shelf, "sd1", sizes["sd1"], steps, args.repeat, bare)
    figures["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
