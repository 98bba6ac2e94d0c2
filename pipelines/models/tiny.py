"""Tiny random-weight ColQwen2 TEST model, built fully offline.

The pipeline's model-loading code must be exercised end to end (``ColQwen2.from_pretrained`` /
``ColQwen2Processor.from_pretrained`` on a local directory) in CI and on machines without Hugging Face hub
access. This module fabricates such a directory: a ColQwen2-architecture model with a few hundred thousand
random weights, a byte-level BPE tokenizer trained in code, and Qwen2-VL image/video processors with a small
pixel budget. Its embeddings are deterministic but meaningless: it is NOT a retriever.

Public API: ``TINY_MODEL_NAME``, ``TINY_MIN_PIXELS``, ``TINY_MAX_PIXELS``, ``build_tiny_colqwen2``,
``ensure_tiny_model``; and, for the other families' twins (:mod:`pipelines.models.twins`), the shared pieces
``qwen_tokenizer``, ``byte_level_tokenizer`` and ``build_model_dir`` (the atomic, idempotent directory build).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pathlib
import random
import shutil
import threading
import uuid
from collections.abc import Callable
from typing import Any

TINY_MODEL_NAME = "tiny"  # label: random-weight TEST model, not a retriever

# Qwen2-VL turns every 28x28 pixel block (14px patches, 2x2 spatial merge) into one LLM token, so the budget
# is expressed in tokens * 28 * 28. 256 tokens give a letter page 252 image tokens (263 vectors with the
# 11 prompt tokens): big enough to exercise padding/multi-vector logic, small enough for CPU tests.
_PIXELS_PER_TOKEN = 28 * 28
TINY_MAX_PIXELS: int = 256 * _PIXELS_PER_TOKEN  # 200_704
TINY_MIN_PIXELS: int = 4 * _PIXELS_PER_TOKEN  # 3_136, the Qwen2-VL default (56 * 56)

TINY_MODEL_DIRNAME = "tiny-colqwen2-test-model"
README_NAME = "TEST_MODEL_README.md"
# Written last (inside the staging dir, before the atomic rename): its presence means "complete build".
MARKER_NAME = ".complete"
# Bump when the recipe changes in a way that changes the produced files.
_RECIPE_VERSION = 1
# Seeding goes through torch's process-global RNG, so two builds in threads of one process could interleave
# their draws; builds are serialized per process (across processes the atomic rename is what matters).
_BUILD_LOCK = threading.Lock()

# Qwen2-VL's added tokens, in Qwen2-VL's own id order (151643..151656 there), so ids are base + the same offsets.
QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_BPE_VOCAB_SIZE = 1024  # upper bound; the trainer stops earlier if the corpus runs out of pairs

# Tiny architecture (cf. transformers' colqwen2/qwen2_vl unit tests). Text head_dim = 64 / 2 = 32, so the
# multimodal-rope sections (temporal, height, width) must sum to head_dim / 2 = 16; [4, 6, 6] keeps Qwen's
# 16:24:24 proportions.
_TEXT_HIDDEN = 64
_TEXT_HEADS = 2
_TEXT_KV_HEADS = 1  # < heads, so grouped-query attention (as in real Qwen2-VL) is exercised
_MROPE_SECTION = [4, 6, 6]
_VISION_EMBED_DIM = 32
_VISION_HEADS = 4
_PATCH_SIZE = 14
_MERGE_SIZE = 2
_TEMPORAL_PATCH_SIZE = 2


# Vocabulary of the generated tokenizer-training corpus: common English plus document/query words.
_CORPUS_WORDS = """
the of and to in a is that for it as was with be by on not he this are or his from at which but have an they
you were her she there been one all we their has would when if so what no can more out who up about into than
them only other new some time could these two may first then do any like my now over such our man me even most
made after also did many before must through back years where much your way well down should because each just
those people how too little state good very make world still own see men work long here get both between life
being under never day same another know while last might us great old year off come since against go came
right used take three page document report table figure chart image revenue income profit loss sales growth
market share price cost total annual quarter quarterly fiscal company business customer product service data
result results analysis summary section chapter appendix number percent rate value average increase decrease
compared previous period statement balance sheet cash flow assets liabilities equity operating net gross
margin tax dividend investment risk policy management energy water temperature pressure model system method
study research science experiment sample measure country city region government public health hospital school
student education law court contract million billion thousand dollars euros first second third fourth north
south east west high low level show shows shown list describe explain compare which when where why who whom
whose does did is are user assistant question answer find
"""


def _corpus(n_sentences: int = 4000) -> list[str]:
    """Deterministic English-like sentences (fixed internal seed) so ordinary queries tokenize into words.

    The tokenizer deliberately does not depend on the model seed: all seeds share one vocabulary.
    """
    words = _CORPUS_WORDS.split()
    punctuation = [".", ".", ".", "?", "!", ",", ";", ":"]
    rng = random.Random(1234)
    sentences = []
    for _ in range(n_sentences):
        toks = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.5:
            toks.insert(rng.randrange(len(toks)), str(rng.randint(1990, 2030)))
        if rng.random() < 0.3:
            toks.insert(rng.randrange(len(toks)), f"{rng.randint(0, 100)}%")
        if rng.random() < 0.3:
            toks.insert(rng.randrange(len(toks)), f"${rng.randint(1, 999)},{rng.randint(0, 999):03d}")
        if rng.random() < 0.3:
            i = rng.randrange(len(toks))
            toks[i] = toks[i].upper() if rng.random() < 0.2 else toks[i].capitalize()
        sentence = " ".join(toks)
        # Queries are often typed lowercase; sentence-initial words have no leading space in byte-level BPE.
        if rng.random() < 0.6:
            sentence = sentence[0].upper() + sentence[1:]
        sentences.append(sentence + rng.choice(punctuation))
    question_words = ["what", "which", "how", "who", "when", "where", "why", "show", "list", "find", "compare"]
    for _ in range(n_sentences // 4):
        toks = [rng.choice(question_words), *(rng.choice(words) for _ in range(rng.randint(3, 8)))]
        sentences.append(" ".join(toks) + "?")
    # ColQwen2Processor's document prompt; repeating it makes its words single tokens, as with Qwen's real
    # vocabulary, so a page yields the same number of vectors (image tokens + 11 prompt tokens) as a real ColQwen2.
    sentences += ["user\nDescribe the image."] * 200
    return sentences


@functools.lru_cache(maxsize=1)
def _trained_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """``(vocab items, merges)`` of a byte-level BPE trained on the generated corpus with Qwen2's normalizer and
    pre-tokenizer. Seed-independent and trained once per process (a few CPU seconds): every twin shares it."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    raw = Tokenizer(BPE())
    raw.normalizer = normalizers.NFC()
    # Same pre-tokenization as Qwen2Tokenizer builds, so merges learnt here are valid for it.
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        # All 256 byte symbols, so any text (accents, CJK, emoji) encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)

    model_json = json.loads(raw.to_str())["model"]
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"])
    return tuple(model_json["vocab"].items()), merges


def unzero_pad_row(model, pad_id: int, std: float = 0.02) -> None:
    """Give the pad token's embedding row random values, as trained checkpoints have.

    ``pad_token_id`` makes ``nn.Embedding`` zero that row at init. In a trained checkpoint it is non-zero (it is
    also ColPali's query-augmentation token). Left as zero, a left-padding position under SDPA (fully masked row ->
    zero attention output) stays exactly zero through every layer, the zero-bias projection keeps it zero, and the
    models' ``proj / proj.norm()`` turns it into NaN, which the attention-mask multiply cannot undo (NaN * 0 =
    NaN) and which then poisons MaxSim scores.
    """
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[pad_id].normal_(mean=0.0, std=std)


def qwen_tokenizer():
    """The trained byte-level BPE wrapped as a ``Qwen2Tokenizer`` (what Qwen2-VL, Qwen2.5-VL and Qwen3-VL load).

    Every Qwen2-VL special token is registered (ids right after the BPE vocab) with Qwen2-VL-Instruct's
    conventions: no BOS, eos ``<|im_end|>``, pad ``<|endoftext|>``, no unk (byte-level covers every input).
    """
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    vocab_items, merges = _trained_bpe()
    vocab: dict[str, int] = dict(vocab_items)
    base = len(vocab)
    # Pinning the special tokens into the vocab fixes their ids in Qwen order regardless of the order in which
    # Qwen2Tokenizer/add_tokens would otherwise append them.
    for offset, token in enumerate(QWEN2_VL_SPECIAL_TOKENS):
        vocab[token] = base + offset

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=list(merges),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        # colpali-engine's processor sets left padding too; persisting it keeps bare-tokenizer use consistent.
        padding_side="left",
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN2_VL_SPECIAL_TOKENS])
    for offset, token in enumerate(QWEN2_VL_SPECIAL_TOKENS):
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != base + offset:
            msg = f"special token {token!r} got id {actual}, expected {base + offset}"
            raise RuntimeError(msg)
    return tokenizer


def byte_level_tokenizer(special_tokens: list[str], **special_roles: str):
    """The trained byte-level BPE as a ``PreTrainedTokenizerFast`` with ``special_tokens`` added.

    ``special_roles`` names the roles (``bos_token="<bos>"``, ``pad_token=...``, ``padding_side=...``); each
    role's token is added too. Used by the families whose processors take any fast tokenizer (PaliGemma,
    Idefics3, ModernVBERT); the special-token strings are the ones their processors look up.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import AddedToken, PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab_items, merges = _trained_bpe()
    raw = Tokenizer(BPE(vocab=dict(vocab_items), merges=list(merges)))
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, model_max_length=32768, **special_roles)
    roles = [v for k, v in special_roles.items() if k.endswith("_token") and v]
    extra = list(dict.fromkeys([*special_tokens, *roles]))
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in extra]}
    )
    return tokenizer


#: The special tokens Idefics3's processor looks up (image markers, tile position tags, end of turn).
IDEFICS3_SPECIAL_TOKENS = [
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]


def smollm_tokenizer():
    """An offline stand-in for SmolLM's tokenizer as Idefics3 (ColSmol) processors use it: Idefics3's special tokens,
    left padding with ``<|im_end|>``."""
    return byte_level_tokenizer(
        [*IDEFICS3_SPECIAL_TOKENS, "<|im_end|>"],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        padding_side="left",
    )


def gemma_tokenizer():
    """An offline stand-in for Gemma's tokenizer as PaliGemma (ColPali) processors use it: right padding with
    ``<pad>``."""
    return byte_level_tokenizer([], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="right")


def _build_model(tokenizer, seed: int):
    """Instantiate a random-weight ``ColQwen2`` whose config ids agree with ``tokenizer``."""
    import torch
    from colpali_engine.models import ColQwen2
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIAL_TOKENS}
    head_dim = _TEXT_HIDDEN // _TEXT_HEADS
    if sum(_MROPE_SECTION) != head_dim // 2:
        msg = f"mrope_section {_MROPE_SECTION} must sum to head_dim/2 = {head_dim // 2}"
        raise ValueError(msg)

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": _TEXT_HEADS,
            "num_key_value_heads": _TEXT_KV_HEADS,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _MROPE_SECTION},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "use_cache": False,
        },
        vision_config={
            "depth": 2,
            "embed_dim": _VISION_EMBED_DIM,
            "hidden_size": _TEXT_HIDDEN,  # the patch merger projects straight into the LM width
            "mlp_ratio": 2,
            "num_heads": _VISION_HEADS,
            "in_channels": 3,
            "patch_size": _PATCH_SIZE,
            "spatial_merge_size": _MERGE_SIZE,
            "temporal_patch_size": _TEMPORAL_PATCH_SIZE,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # fork_rng: seed deterministically without clobbering the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ColQwen2(config).to(torch.float32).eval()
        unzero_pad_row(model, ids["<|endoftext|>"], std=config.text_config.initializer_range)
    return model


def _build_processor(tokenizer):
    from colpali_engine.models import ColQwen2Processor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    common = {
        "min_pixels": TINY_MIN_PIXELS,
        "max_pixels": TINY_MAX_PIXELS,
        "patch_size": _PATCH_SIZE,
        "merge_size": _MERGE_SIZE,
        "temporal_patch_size": _TEMPORAL_PATCH_SIZE,
    }
    image_processor = Qwen2VLImageProcessor(**common)
    video_processor = Qwen2VLVideoProcessor(**common)
    return ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)


def _readme(seed: int) -> str:
    return (
        "# RANDOM-WEIGHT TEST MODEL - NOT A RETRIEVER\n\n"
        f"Built offline by `pipelines.models.tiny.build_tiny_colqwen2(seed={seed})` "
        f"(recipe v{_RECIPE_VERSION}, model name `{TINY_MODEL_NAME}`).\n\n"
        "- Architecture: `colpali_engine.models.ColQwen2` (Qwen2-VL), 2 text layers of width 64, "
        "2 vision blocks of width 32, 128-d multi-vector output.\n"
        "- Weights: random (seeded). Scores and rankings produced with it are meaningless.\n"
        "- Tokenizer: byte-level BPE trained on generated English with Qwen2-VL special tokens.\n"
        f"- Image budget: {TINY_MIN_PIXELS}..{TINY_MAX_PIXELS} pixels "
        f"({TINY_MIN_PIXELS // _PIXELS_PER_TOKEN}..{TINY_MAX_PIXELS // _PIXELS_PER_TOKEN} image tokens per image, "
        "plus 11 prompt tokens; every token yields one 128-d vector).\n\n"
        "It exists so that the production loading path (`ColQwen2.from_pretrained`, "
        "`ColQwen2Processor.from_pretrained`) can be tested without network access.\n"
    )


def _is_complete(path: pathlib.Path) -> bool:
    return (path / MARKER_NAME).is_file()


def _check_marker_seed(path: pathlib.Path, seed: int) -> None:
    try:
        recorded = json.loads((path / MARKER_NAME).read_text())["seed"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        msg = f"{path} has an unreadable build marker {MARKER_NAME!r}; delete the directory to rebuild"
        raise RuntimeError(msg) from exc
    if recorded != seed:
        msg = f"{path} holds a tiny model built with seed={recorded}, not seed={seed}; use another directory"
        raise ValueError(msg)


def make_colqwen2(seed: int):
    """The tiny ColQwen2 TEST model and its processor, built from ``seed`` (no files)."""
    tokenizer = qwen_tokenizer()
    return _build_model(tokenizer, seed), _build_processor(tokenizer)


def build_tiny_colqwen2(out_dir: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Build the tiny random-weight ColQwen2 TEST model + processor into ``out_dir`` and return its path.

    The result loads with the production code path, offline::

        ColQwen2.from_pretrained(str(path), dtype=torch.float32)
        ColQwen2Processor.from_pretrained(str(path))

    The build follows :func:`build_model_dir`'s contract (deterministic, idempotent, atomic). It takes well under
    a second on CPU once ``colpali_engine``/``transformers`` are imported (that import dominates); the directory
    is ~1 MB.
    """

    return build_model_dir(
        out_dir, seed, name=TINY_MODEL_NAME, make=make_colqwen2, readme=_readme, recipe_version=_RECIPE_VERSION
    )


def build_model_dir(
    out_dir: str | os.PathLike,
    seed: int,
    *,
    name: str,
    make: Callable[[int], tuple[Any, Any]],
    readme: Callable[[int], str],
    recipe_version: int,
) -> pathlib.Path:
    """Build a random-weight TEST model directory with ``make(seed) -> (model, processor)``; return its path.

    Contract:
      - Deterministic: the same ``seed`` yields identical weights and tokenizer (also across processes), as long
        as ``make`` seeds from ``seed`` only.
      - Idempotent: if ``out_dir`` already holds a complete build (marker ``.complete`` present), returns
        immediately without touching it. Raises ``ValueError`` if that build used a different seed or name.
      - Atomic and concurrency-safe: files are written into a unique sibling staging directory which is then
        ``os.rename``d to ``out_dir``; a reader therefore never sees a partial build. If another process wins
        the rename race, its (equivalent) build is kept and ours discarded.
      - ``out_dir`` may pre-exist only if empty; a non-empty directory without the marker raises
        ``FileExistsError`` (it is never deleted, as it may hold someone else's files).
      - The caller's torch RNG state is left untouched (``make`` must seed under ``torch.random.fork_rng``).
    """
    out = pathlib.Path(out_dir).absolute()
    if _is_complete(out):
        _check_marker(out, seed, name)
        return out
    with _BUILD_LOCK:
        if _is_complete(out):  # another thread finished it while we waited
            _check_marker(out, seed, name)
            return out
        return _build_atomically(out, seed, name, make, readme, recipe_version)


def _check_marker(path: pathlib.Path, seed: int, name: str) -> None:
    _check_marker_seed(path, seed)
    recorded = json.loads((path / MARKER_NAME).read_text()).get("name")
    if recorded != name:
        msg = f"{path} holds the test model {recorded!r}, not {name!r}; use another directory"
        raise ValueError(msg)


def _build_atomically(out: pathlib.Path, seed: int, name, make, readme, recipe_version) -> pathlib.Path:
    """Build into a private staging dir, then publish it as ``out`` with one atomic rename."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        msg = f"{out} exists and is not a complete tiny-model build; remove it or choose another directory"
        raise FileExistsError(msg)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Same parent => same filesystem, which os.rename needs to be atomic.
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model, processor = make(seed)
        processor.save_pretrained(str(staging))
        model.save_pretrained(str(staging))
        (staging / README_NAME).write_text(readme(seed))
        marker = {"name": name, "seed": seed, "recipe_version": recipe_version, "random_weights": True}
        (staging / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True) + "\n")
        try:
            # rename(2) replaces an empty directory and fails on a non-empty one, which is exactly the race
            # semantics we want: the first complete build wins.
            os.rename(staging, out)
        except OSError:
            if not _is_complete(out):
                raise
            _check_marker(out, seed, name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return out


def ensure_tiny_model(cache_dir: str | os.PathLike) -> pathlib.Path:
    """Return ``cache_dir/tiny-colqwen2-test-model``, building it (seed 0) if it is not already complete.

    Safe to call concurrently from several processes or Ray workers sharing ``cache_dir`` (see
    ``build_tiny_colqwen2``'s atomic-rename contract); ``cache_dir`` is created if missing.
    """
    return build_tiny_colqwen2(pathlib.Path(cache_dir) / TINY_MODEL_DIRNAME, seed=0)
