"""A page's model inputs as bytes, and micro-batches of them: the hand-off from the CPU stage to the model.

The processor's image preprocessing (resize, normalize, patchify: pixel values plus the patch grid, and the
prompt's token ids) runs once per page in a CPU stage (:class:`pipelines.stages.preprocess.PreprocessStage`).
What it produced travels to the model actor as one ``safetensors`` blob per page (:func:`encode` /
:func:`decode`); the actor only stacks them (:func:`collate`) into micro-batches (:func:`plan_batches`) and
runs forward passes. Preprocessing a page alone and collating gives exactly what the processor gives for a
batch: token-like tensors are padded on the tokenizer's side with its pad id, everything else (pixel values,
pixel masks) is zero-padded at the end, which is how colpali-engine's processors pad and how its models
unpad (Qwen: ``image_grid_thw``; Idefics3: all-zero tiles; PaliGemma: fixed shapes, never padded).

Floating-point inputs travel as float16: half the bytes of float32 through the object store, and exact for
what the model sees on a GPU (bfloat16 has fewer mantissa bits than float16; normalized pixels are a few
units in magnitude, far inside float16's range). On a float32 CPU model they are cast back up, which moves
a page's vectors by float noise only; the in-process path (:meth:`MultiVectorEncoder.embed_images`) takes the
same route, so "embedding a page alone" and the pipeline agree exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: dtype floating-point inputs travel in between the CPU stage and the model.
TRANSFER_FLOAT = "float16"
#: The key holding a page's token ids; its length is the page's sequence length (``n_tokens``).
TOKENS_KEY = "input_ids"


def to_numpy(features: Mapping) -> dict[str, np.ndarray]:
    """One page's processor output (a ``BatchFeature`` of batch size 1) as numpy arrays, floats in
    :data:`TRANSFER_FLOAT`. Raises ``ValueError`` when the batch does not hold exactly one page."""
    out: dict[str, np.ndarray] = {}
    for key, value in features.items():
        array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if array.ndim == 0 or array.shape[0] != 1:
            msg = f"expected one page's inputs, {key!r} has shape {tuple(array.shape)}"
            raise ValueError(msg)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(TRANSFER_FLOAT)
        out[key] = np.ascontiguousarray(array)
    return out


def encode(arrays: Mapping[str, np.ndarray]) -> bytes:
    """One page's inputs as a ``safetensors`` blob (a header plus raw little-endian buffers)."""
    from safetensors.numpy import save

    return save(dict(arrays))


def decode(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode`."""
    from safetensors.numpy import load

    return load(bytes(blob))


def n_tokens(arrays: Mapping[str, np.ndarray]) -> int:
    """The page's sequence length: what one forward pass spends on it (every token becomes a vector)."""
    return int(arrays[TOKENS_KEY].shape[-1])


def _sequence_keys(items: Sequence[Mapping[str, np.ndarray]]) -> set[str]:
    """Keys shaped ``(1, L)`` with ``L`` the page's token count in every item (ids, masks, token types)."""
    keys = set()
    for key in items[0]:
        if all(item[key].ndim == 2 and item[key].shape[1] == n_tokens(item) for item in items):
            keys.add(key)
    return keys


def collate(
    items: Sequence[Mapping[str, np.ndarray]], pad_token_id: int, padding_side: str = "left"
) -> dict[str, np.ndarray]:
    """Stack single-page inputs into one batch, padding as the processor would for the same pages.

    Token-like tensors (see :func:`_sequence_keys`) are padded on ``padding_side`` with ``pad_token_id``
    (ids) or 0 (masks, token types); any other tensor whose shapes differ is zero-padded at the end of
    every axis. Raises ``ValueError`` when the items do not have the same keys (in any order) and ranks.
    """
    if not items:
        msg = "collate needs at least one page"
        raise ValueError(msg)
    keys = list(items[0])
    if any(set(item) != set(keys) for item in items):  # the same tensors; the order they were stored in may differ
        msg = f"pages have different input keys: {sorted({tuple(item) for item in items})}"
        raise ValueError(msg)
    sequence = _sequence_keys(items)
    batch: dict[str, np.ndarray] = {}
    for key in keys:
        arrays = [item[key] for item in items]
        if len({a.ndim for a in arrays}) != 1:
            msg = f"pages have {key!r} of different ranks"
            raise ValueError(msg)
        shape = tuple(max(sizes) for sizes in zip(*(a.shape for a in arrays), strict=True))
        if all(a.shape == shape for a in arrays):
            batch[key] = np.concatenate(arrays, axis=0)
            continue
        fill = pad_token_id if key == TOKENS_KEY else 0
        out = np.full((len(arrays), *shape[1:]), fill, dtype=arrays[0].dtype)
        for i, a in enumerate(arrays):
            if key in sequence and padding_side == "left":
                out[i, ..., shape[-1] - a.shape[-1] :] = a[0]
            else:
                out[(i, *(slice(0, n) for n in a.shape[1:]))] = a[0]
        batch[key] = out
    return batch


def plan_batches(lengths: Sequence[int], max_pages: int, max_tokens: int | None = None) -> list[list[int]]:
    """Micro-batches of item indexes, grouped by similar length (less padding), in ascending length.

    Without ``max_tokens`` every batch has up to ``max_pages`` items. With it, a batch grows while its
    padded size (items x the longest item's length, which is what the forward pass computes) stays within
    ``max_tokens``, and ``max_pages`` only caps the item count; an item longer than the budget gets a
    batch of its own. Every index appears exactly once.
    """
    if max_pages < 1 or (max_tokens is not None and max_tokens < 1):
        msg = f"micro-batch limits must be >= 1, got max_pages={max_pages}, max_tokens={max_tokens}"
        raise ValueError(msg)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ``order`` is by ascending length: the page joining is the batch's longest
        fits_pages = len(current) < max_pages
        fits_tokens = max_tokens is None or (len(current) + 1) * longest <= max_tokens
        if current and not (fits_pages and fits_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
