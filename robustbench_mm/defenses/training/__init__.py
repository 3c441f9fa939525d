"""Shared machinery of the training defenses (MMCoA / TeCoA, top-K RS, CRMT), as a package.

A training defense produces new weights. ``apply(model)`` returns the model with trained
weights loaded from, in order: a shipped directory inside the package
(``robustbench_mm/defenses/weights/<defense>-<model>/``) whose recorded recipe hash matches, or
the cache ``$MMROBUST_CACHE/defenses/<hash>`` (default ``~/.cache/mmrobust``); if neither holds
finished weights it trains on demand (seeded, resumable). The recipe hash covers the defense
implementation, its preset parameters, the model name and the model's weight revision, so a
grid trains once and a retrained base model never silently reuses stale defended weights.

The loop is deterministic and resumable exactly: the batch indices and the attack's random
start of step ``t`` come from a generator seeded with ``(seed, t)``; a checkpoint holds the
trainable weights and every optimizer state (safetensors + JSON, no pickle) and the step.
Progress, loss and the final clean / robust accuracy are logged through ``logging``. On CUDA the
forward passes run under bf16 autocast. Finished weights are saved in the model's own format
(``save_pretrained(safe_serialization=True)`` for transformers CLIP, a safetensors state dict
for open_clip), with ``defense.json`` (recipe, hash, time, measured accuracy) and
``DEFENSE_CARD.md``.

Training data [BENCH]: the Fashion-MNIST *train* split from the Debian package
``dataset-fashion-mnist`` (``tasks.bundled.read_raw_fmnist``), preprocessed by
``to_model_pixels`` at the model's resolution. It is needed only when weights are trained;
the shipped weights make the package run without it.

The package, one module per job: ``paths`` (where weights live), ``data`` (the train split),
``schedule`` (precision, learning rate), ``checkpoints``, ``clip_text`` (CLIP tower helpers),
``template`` (the loop), ``cards``, ``evaluation``, ``finetune`` (CLIP fine-tuning base) and
``command`` (``mmrobust train``). Everything is re-exported here, so
``from robustbench_mm.defenses.training import X`` keeps working.
"""

from __future__ import annotations

from robustbench_mm.defenses.training.cards import write_card
from robustbench_mm.defenses.training.checkpoints import load_checkpoint, save_checkpoint, unshared
from robustbench_mm.defenses.training.clip_text import (
    TextInput, embedding_offset, image_features, is_hf, load_clip_weights, mean_token_norm, save_clip_weights,
    text_features, token_embedding, tokenize, tower_parameters,
)
from robustbench_mm.defenses.training.command import train_command
from robustbench_mm.defenses.training.data import TrainData, sample_batch, step_generator, training_data
from robustbench_mm.defenses.training.evaluation import zero_shot_eval, zero_shot_logits
from robustbench_mm.defenses.training.finetune import ClipFinetuneDefense, model_source
from robustbench_mm.defenses.training.paths import (
    DONE_FILE, FORMAT_VERSION, SHIPPED_DIR, cache_root, finished, recorded_hash,
)
from robustbench_mm.defenses.training.schedule import autocast, cosine_lr
from robustbench_mm.defenses.training.template import TrainingDefense

__all__ = [
    "DONE_FILE", "FORMAT_VERSION", "SHIPPED_DIR", "ClipFinetuneDefense", "TextInput", "TrainData", "TrainingDefense",
    "autocast", "cache_root", "cosine_lr", "embedding_offset", "finished", "image_features", "is_hf",
    "load_checkpoint", "load_clip_weights", "mean_token_norm", "model_source", "recorded_hash", "sample_batch",
    "save_checkpoint", "save_clip_weights", "step_generator", "text_features", "token_embedding", "tokenize",
    "tower_parameters", "train_command", "training_data", "unshared", "write_card", "zero_shot_eval",
    "zero_shot_logits",
]
