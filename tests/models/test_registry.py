"""The model registry: every entry is configurable, states its width, budget and processor settings, and a
checkpoint that ships its own code fails offline with a message saying how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.models import registry, remote, twins
from tests.helpers import compose_config, index_config

CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"


def test_every_registered_model_has_a_config_group_entry_and_back():
    from omegaconf import OmegaConf

    from pipelines.models.registry import ModelConfig

    names = {path.stem for path in CONF_MODELS.glob("*.yaml")}
    assert names == set(registry.MODELS)
    for path in CONF_MODELS.glob("*.yaml"):  # each entry is a valid model node naming its own file
        node = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
        assert node.name == path.stem
    assert compose_config("index", ["model=tiny-colqwen3"]).model.name == "tiny-colqwen3"


def test_specs_state_width_budget_processor_settings_and_sources():
    spec = registry.get_spec
    assert spec("colqwen3-4b").dim == spec("colqwen3-8b").dim == spec("tiny-colqwen3").dim == 320
    assert {spec(n).dim for n in ("colpali-v1.3", "colqwen2.5-v0.2", "colmodernvbert", "colnomic-7b", "jina-v4")} == {
        128
    }
    # Qwen processors are capped at the token budget the checkpoints were trained with; the render budget agrees.
    for name, tokens, pixels_per_token in (("colqwen2.5-v0.2", 768, 28 * 28), ("colqwen3-4b", 1280, 32 * 32)):
        assert dict(spec(name).processor_kwargs) == {"max_num_visual_tokens": tokens}
        assert spec(name).max_pixels == tokens * pixels_per_token
    assert (spec("colnomic-7b").family, spec("colnomic-7b").model_class) == ("qwen2_5", "ColQwen2_5")
    assert spec("jina-v4").loader == "remote_code" and spec("jina-v4").single_vector_dim == 2048
    for model in registry.MODELS.values():
        assert model.licence, model.name
        assert model.is_test_model == (model.hub_id is None) == (model.name in twins.TWINS)
        if not model.is_test_model:
            assert model.card, model.name
    with pytest.raises(ValueError, match="multiple of 8"):
        registry.ModelSpec("bad", None, "qwen2", "ColQwen2", "ColQwen2Processor", 1, dim=100)


def test_a_remote_code_checkpoint_fails_offline_with_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = registry.get_spec("jina-v4")
    with pytest.raises(remote.ModelUnavailableError) as caught:
        registry.load_model(spec, spec.hub_id, device="cpu", trust_remote_code=True)
    message = str(caught.value)
    assert "trust_remote_code" in message and "offline" in message
    assert "huggingface-cli download jinaai/jina-embeddings-v4" in message and "model.name_or_path" in message
    # A local directory without the code fails the same way, before any work: the index job's config check.
    (tmp_path / "config.json").write_text("{}")
    cfg = index_config("model=jina-v4", f"model.name_or_path={tmp_path}", "source.location=x", "output.location=y")
    from pipelines.config import load_index_config

    with pytest.raises(ConfigError, match=r"add model\.trust_remote_code=true"):  # not the user's choice yet
        load_index_config(cfg)
    cfg.model.trust_remote_code = True
    with pytest.raises(ConfigError, match="ships its own modeling code"):
        load_index_config(cfg)


def test_remote_code_adapters_follow_the_checkpoints_interface():
    """The adapters' contract with jina-embeddings-v4's own code (its forward takes the LoRA ``task_label`` and
    returns ``multi_vec_emb`` / ``single_vec_emb``; queries get the ``Query`` prefix), checked on stand-ins: the
    real code cannot be fetched here."""
    import torch

    calls = []

    class Output:
        def __init__(self, batch):
            self.multi_vec_emb = torch.ones(2, 3, 128) * batch["attention_mask"][..., None]
            self.single_vec_emb = torch.ones(2, 2048)

    class Code(torch.nn.Module):
        def forward(self, task_label, **batch):
            calls.append(task_label)
            return Output(batch)

    class CodeProcessor:
        tokenizer = "tok"

        def process_texts(self, texts, prefix=None):
            return [f"{prefix}: {t}" for t in texts]

    model = remote.RemoteCodeModel(Code())
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert model(attention_mask=mask).shape == (2, 3, 128) and calls == ["retrieval"]
    assert model.single_vectors(attention_mask=mask).shape == (2, 2048)
    processor = remote.RemoteCodeProcessor(CodeProcessor())
    assert processor.process_queries(["revenue 2023"]) == ["Query: revenue 2023"]
    assert processor.tokenizer == "tok"
