"""Load a multimodal checkpoint by hub id, local folder or the alias ``toy``.

Real transformers classes only; ``trust_remote_code`` is never enabled. Failures raise
:class:`ModelLoadError` with a message that names what was tried, within seconds when offline.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from halviz.engine.attention import ATTENTION_NAME, register_attention
from halviz.models.families import Family, family_for_config, raw_text_config, supported

TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy-llava"
TOY_ALIASES = ("toy", "toy-llava", "")
TOY_KEY = "toy"
HUB_HOST = "huggingface.co"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is meant for the person who asked."""


@dataclass
class LoadedModel:
    name: str  # what the user asked for
    source: str  # the folder or hub id it came from
    model: object  # the family's transformers model class
    processor: object
    adapter: Family  # the model's family, bound to this model and processor
    device: torch.device
    dtype: torch.dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _family(config: dict, where: str) -> type[Family]:
    family = family_for_config(config)
    if family is None:
        model_type = config.get("model_type")
        text_type = raw_text_config(config).get("model_type", "?")
        raise ModelLoadError(f"{where} is a {model_type!r} model (text: {text_type!r}); halviz supports {supported()}.")
    return family


def public_name(name: str) -> str:
    """What a trace or report may say about a model: a hub id as it is, a local folder by its own name
    only (a server's install path is nobody else's business)."""
    return Path(name.rstrip("/\\")).name if looks_like_path(name) else name


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def canonical_model_key(name: str, resolve_folders: bool = False) -> str:
    """One key per model, whatever way it was typed: the toy's aliases (any case, or its folder) are
    ``toy``; a folder is its normalised absolute path (``resolve_folders``: also symlinks resolved and
    a relative name found on disk); a hub id loses surrounding slashes. Without ``resolve_folders``
    the file system is never touched, so nothing is revealed about which paths exist."""
    text = name.strip()
    if text.lower() in TOY_ALIASES:
        return TOY_KEY
    folder = None
    if resolve_folders and Path(text).expanduser().is_dir():
        folder = Path(text).expanduser().resolve()
    elif looks_like_path(text):
        folder = Path(os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(text))))
    if folder is not None:
        return TOY_KEY if folder == TOY_MODEL_DIR else str(folder)
    return text.strip("/")


def _resolve(name: str) -> tuple[str, bool]:
    """Return (source, is_local_folder)."""
    if name.strip().lower() in TOY_ALIASES:
        if not (TOY_MODEL_DIR / "config.json").is_file():
            raise ModelLoadError(f"the bundled toy model is missing from {TOY_MODEL_DIR}")
        return str(TOY_MODEL_DIR), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"the folder {path} is not a model: it has no config.json")
        return str(path), True
    if path.exists():
        raise ModelLoadError(f"{path} is a file; give the folder that holds config.json")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"{name!r} is neither a local model folder nor a hub id of the form 'organisation/name'"
        )
    return name, False


def _read_config(source: str, local: bool) -> dict:
    if local:
        return json.loads((Path(source) / "config.json").read_text())
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:  # a cached copy works offline
        return json.loads(Path(hf_hub_download(source, "config.json", local_files_only=True)).read_text())
    except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError, OSError):
        pass
    if not _hub_reachable():
        error = ModelLoadError(
            f"{source!r} is not in the local Hugging Face cache and the hub ({HUB_HOST}) cannot be reached; "
            "use the bundled 'toy' model or a local folder"
        )
        error.offline = True  # callers that allow no local folders give their own advice
        raise error
    try:
        return json.loads(Path(hf_hub_download(source, "config.json")).read_text())
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model {source!r} on the Hugging Face hub (or it is private)") from None
    except Exception as exc:  # network faults surface here as many different types
        raise ModelLoadError(f"could not fetch {source!r} from the hub: {exc}") from None


def load_model(name: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load ``name`` (``toy``, a folder, or a hub id) with our attention function on the language model.

    float32 on CPU, bfloat16 on GPU, unless ``dtype`` says otherwise (tests use float64).
    """
    register_attention()
    source, local = _resolve(name)
    config = _read_config(source, local)
    family = _family(config, source)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        processor = family.load_processor(source, local)
        model = family.model_class().from_pretrained(
            source, dtype=dtype, local_files_only=local, attn_implementation=family.attn_implementation(ATTENTION_NAME),
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load {source!r}: {type(exc).__name__}: {exc}") from None
    if not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"{source!r} has no image processor: AutoProcessor returned {type(processor).__name__}")
    model.to(device).eval()
    return LoadedModel(name, source, model, processor, family(model, processor), device, dtype)
