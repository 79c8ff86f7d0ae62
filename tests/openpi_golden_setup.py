"""openpi setup script for the golden checkpoints (``openpi_setup_script`` parameter of the openpi runtime).

The golden checkpoints in ``shared/golden`` are openpi's own Pi0 shrunk in memory (see its README, section 1):
vocabulary 1024, SigLIP ``mu/14``, Gemma ``dummy`` for both experts, float32 compute. This script applies
the same changes to the installed openpi and re-registers the three golden configs under their names, so
``get_config("pi05_aloha")`` builds the small model. Only tests use it; a production image never does.

openpi's PyTorch model builds a full-size SigLIP with a 2048-wide projection whatever the config says; it is
shrunk too (a small vision tower projecting to the Gemma width), so the golden configs also build a small
PI0Pytorch. There is no PyTorch golden checkpoint: these sizes only have to agree between saving and loading.
"""

from __future__ import annotations

import dataclasses

from openpi.models import gemma, siglip
from openpi.models_pytorch import gemma_pytorch
from openpi.training import config as openpi_config

GOLDEN_CONFIGS = ("pi05_aloha", "pi05_droid", "pi0_aloha")

gemma.PALIGEMMA_VOCAB_SIZE = 1024

if not getattr(siglip.Module, "golden_small", False):  # the script may run twice in one process
    _original_siglip = siglip.Module

    def _small_siglip(*args, **kwargs):
        return _original_siglip(*args, **{**kwargs, "variant": "mu/14"})

    _small_siglip.golden_small = True  # type: ignore[attr-defined]
    siglip.Module = _small_siglip  # type: ignore[assignment, misc]

if not getattr(gemma_pytorch.PaliGemmaForConditionalGeneration, "golden_small", False):
    _original_paligemma = gemma_pytorch.PaliGemmaForConditionalGeneration

    def _small_paligemma(config):
        vision = config.vision_config
        vision.hidden_size, vision.intermediate_size = 64, 128
        vision.num_hidden_layers, vision.num_attention_heads = 2, 2
        vision.projection_dim = config.text_config.hidden_size
        return _original_paligemma(config=config)

    _small_paligemma.golden_small = True  # type: ignore[attr-defined]
    gemma_pytorch.PaliGemmaForConditionalGeneration = _small_paligemma  # type: ignore[assignment, misc]

for _name in GOLDEN_CONFIGS:
    _train = openpi_config.get_config(_name)
    _model = dataclasses.replace(
        _train.model,
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        dtype="float32",
        pytorch_compile_mode=None,
    )
    openpi_config._CONFIGS_DICT[_name] = dataclasses.replace(_train, model=_model)
