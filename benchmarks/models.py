"""The registered models side by side: architecture, vector width, pixel budget, vectors per page, licence.

    python -m benchmarks.models            # prints the Markdown table (US Letter and A4 portrait at 200 DPI)

Vectors per page are what the model stores for one page rendered the way the pipeline renders it
(:func:`pipelines.render.target_size` at the registry budget, 200 DPI at most): its image tokens, computed
by the family's own image processor (transformers' classes with the checkpoint family's settings, run on a
blank page of that size), plus marker and prompt tokens:

* Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the processor's ``image_grid_thw`` (smart resize to the budget; one token
  per 28x28 px, 32x32 for Qwen3-VL) plus the 11 tokens of colpali-engine's document prompt (exact: the tiny
  test model's tokenizer reproduces Qwen's count, ``tests/models/test_tiny.py``);
* PaliGemma (ColPali): every page is squashed to 448x448 -> 1024 image tokens plus 7 prompt tokens (``<bos>``
  twice: colpali-engine's prefix has one and transformers 5's PaliGemmaProcessor inserts another after the image
  tokens, as the tiny test model shows; then "Describe the image." in 4 Gemma tokens and a newline);
* Idefics3 / ModernVBERT (split image): the processor's tile grid (``rows x cols`` tiles of 512 px plus a
  global image, 64 tokens each, each tile wrapped in a marker and a position tag, a newline per row), plus
  the prompt; the prompt's text part is counted with the test tokenizer (a few tokens off at most).

Counts are for the stored vectors before pooling (``pooling.pool_factor`` divides them).
"""

from __future__ import annotations

from benchmarks.common import QWEN_PROMPT_VECTORS
from pipelines.models import registry
from pipelines.render import target_size

LETTER = (612.0, 792.0)
A4 = (595.276, 841.89)
DPI = 200.0
PALIGEMMA = {"image_tokens": 1024, "prompt_tokens": 7}
#: Split-image processors: (longest edge the processor resizes to, tile edge, tokens per tile), and where from.
SPLIT = {
    "idefics3": (1536, 512, 64, "colSmol processors resize the longest edge to 1536 px (registry)"),
    "modernvbert": (2048, 512, 64, "colpali-engine's ColModernVBertProcessor default longest edge (2048 px)"),
}
#: Text tokens of the split-image document prompts around the image, counted with the test tokenizer (which splits
#: "User" and "Assistant" in two; the checkpoints' tokenizers probably do not: 11).
SPLIT_PROMPT_TOKENS = {"idefics3": 13, "modernvbert": 13}
_QWEN_PATCH = {"qwen2": 14, "qwen2_5": 14, "qwen3": 16}


def qwen_image_tokens(family: str, width: int, height: int, max_pixels: int) -> int:
    """Image tokens of a Qwen-VL page: the image processor's grid (patches merged 2x2)."""
    import numpy as np
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor

    patch = _QWEN_PATCH[family]
    processor = Qwen2VLImageProcessor(
        min_pixels=4 * (2 * patch) ** 2, max_pixels=max_pixels, patch_size=patch, merge_size=2, temporal_patch_size=2
    )
    grid = processor(images=[np.zeros((height, width, 3), dtype=np.uint8)], return_tensors="np")["image_grid_thw"]
    return int(grid[0].prod()) // 4


def split_image_tokens(width: int, height: int, longest_edge: int, tile: int, per_tile: int) -> tuple[int, int, int]:
    """``(tokens, rows, cols)`` of an Idefics3-style page: the image processor's tile grid, then the processor's
    prompt layout (per tile: a marker, a position tag and ``per_tile`` image tokens; a newline per row; the global
    image: newline, marker, tag, ``per_tile`` tokens, marker)."""
    import numpy as np
    from transformers import Idefics3ImageProcessor

    processor = Idefics3ImageProcessor(
        size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, do_image_splitting=True
    )
    out = processor(images=[[np.zeros((height, width, 3), dtype=np.uint8)]], return_row_col_info=True)
    rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
    tiles = rows * cols * (2 + per_tile) + rows
    return tiles + (1 + 2 + per_tile + 1), rows, cols


def vectors_per_page(spec: registry.ModelSpec, page_pt: tuple[float, float] = LETTER) -> dict:
    """Vectors one page of ``page_pt`` (points) yields with ``spec``, rendered at its budget; with the source."""
    width, height = target_size(*page_pt, spec.max_pixels, DPI)
    if spec.family in _QWEN_PATCH:
        image = qwen_image_tokens(spec.family, width, height, spec.max_pixels)
        side = 2 * _QWEN_PATCH[spec.family]
        prompt = QWEN_PROMPT_VECTORS
        source = f"{image} image tokens ({side}x{side} px each) + {prompt} prompt tokens"
        if spec.loader == "remote_code":
            source += " (colpali-engine's prompt; the checkpoint's own prompt may differ by a few tokens)"
    elif spec.family == "paligemma":
        image, prompt = PALIGEMMA["image_tokens"], PALIGEMMA["prompt_tokens"]
        source = "squashed to 448x448: 32x32 patches + 7 prompt tokens (two <bos> under transformers 5)"
    else:
        edge, tile, per_tile, where = SPLIT[spec.family]
        image, rows, cols = split_image_tokens(width, height, edge, tile, per_tile)
        prompt = SPLIT_PROMPT_TOKENS[spec.family]
        source = (
            f"{rows}x{cols} tiles of {tile} px + global image, {per_tile} tokens each, with markers = {image}; "
            f"+ ~{prompt} prompt tokens; {where}"
        )
    return {"render": f"{width}x{height}", "vectors": image + prompt, "source": source}


def model_table() -> list[dict]:
    """One row per registered (real) model."""
    rows = []
    for spec in registry.MODELS.values():
        if spec.is_test_model:
            continue
        letter, a4 = vectors_per_page(spec, LETTER), vectors_per_page(spec, A4)
        rows.append(
            {
                "model": spec.name,
                "checkpoint": spec.hub_id,
                "architecture": f"{spec.model_class} ({spec.backbone})",
                "dim": spec.dim,
                "single_vector_dim": spec.single_vector_dim,
                "max_pixels": spec.max_pixels,
                "processor_kwargs": dict(spec.processor_kwargs),
                "letter_render": letter["render"],
                "letter_vectors": letter["vectors"],
                "a4_vectors": a4["vectors"],
                "source": letter["source"],
                "licence": spec.licence,
                "card": spec.card,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    header = "| model | architecture | dim | pixel budget | Letter page (render) | vectors / Letter page | licence |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        dim = f"{r['dim']}" + (f" (+{r['single_vector_dim']} single)" if r["single_vector_dim"] else "")
        budget = f"{r['max_pixels']:,} px" + "".join(f", {k}={v}" for k, v in r["processor_kwargs"].items())
        lines.append(
            f"| {r['model']} | {r['architecture']} | {dim} | {budget} | {r['letter_render']} | "
            f"{r['letter_vectors']} ({r['source']}) | {r['licence']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    print(markdown(model_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
