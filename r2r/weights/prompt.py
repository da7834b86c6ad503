"""The empty-prompt CLIP embedding R2R conditions on, computed once and cached as safetensors.

R2R always uses the empty prompt (ref §a.3). Its CLIP embedding (tokenizer padded to 77 tokens,
``last_hidden_state``) is computed from the release's text encoder once and written next to the
weights (``<release>/r2r_empty_prompt.safetensors``) or, when that folder is read-only or the source
is the hub cache, into the user cache (``$R2R_CACHE_DIR``, default ``~/.cache/r2r``). After that the
0.5 GB text encoder is never loaded again. :func:`encode_prompt` keeps custom prompts possible.

This module depends on :mod:`r2r.weights.layout`, :mod:`r2r.weights.statedict` and :mod:`r2r.weights.hub`; the model loading
(:mod:`r2r.weights.loading`) depends on it, never the reverse.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from ..devices import resolve_dtype
from ..errors import R2RUserError, R2RWeightsNotFound
from ..fileio import atomic_write_bytes
from .convert import text_encoder_sd_to_transformers
from .hub import hub_snapshot, looks_like_repo_id
from .layout import (
    OFFICIAL_CONFIGS,
    OFFICIAL_REPO,
    SD_FOLDER,
    describe_path,
    find_weights_file,
    official_config,
    read_json,
    release_paths,
)
from .statedict import check_weight, read_state_dict

CACHE_NAME = "r2r_empty_prompt.safetensors"
FORMAT = "r2r-empty-prompt-v1"


def user_cache_dir() -> Path:
    """``$R2R_CACHE_DIR``, else ``$XDG_CACHE_HOME/r2r``, else ``~/.cache/r2r``."""
    if os.environ.get("R2R_CACHE_DIR"):
        return Path(os.environ["R2R_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "r2r"


def _identity(text_encoder) -> str:
    """Name and size of the text encoder weights (detects a replaced encoder)."""
    if text_encoder is None:
        return ""
    p = Path(text_encoder)
    if p.is_dir():
        try:
            p = find_weights_file(p, "text encoder")
        except R2RWeightsNotFound:
            return ""
    return f"{p.name}:{p.stat().st_size}" if p.is_file() else ""


def _user_cache_file(key: str) -> Path:
    return user_cache_dir() / f"empty_prompt-{hashlib.sha1(key.encode()).hexdigest()[:16]}.safetensors"


def _candidates(root, key) -> list[Path]:
    out = []
    if root is not None:
        out.append(Path(root) / CACHE_NAME)
        out.append(_user_cache_file(str(Path(root).resolve())))
    if key is not None:
        out.append(_user_cache_file(key))
    return out


def _read_cache(path: Path, identity: str):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "prompt_embeds" not in f.keys():
                return None
            if identity and meta.get("text_encoder") and meta["text_encoder"] != identity:
                return None  # the text encoder was replaced: recompute
            t = f.get_tensor("prompt_embeds")
    except Exception:  # unreadable / foreign file: ignore it and recompute
        return None
    if not t.is_floating_point() or not bool(t.isfinite().all()):
        return None  # a damaged cache: recomputed (and rewritten) from the text encoder
    return t if t.ndim == 3 and t.shape[:2] == (1, 77) else None


def find_cached_prompt(root, key: str | None = None, text_encoder=None):
    """The cached empty-prompt embedding for a release (folder ``root`` or hub ``key``), or None."""
    identity = _identity(text_encoder)
    for path in _candidates(root, key):
        if path.is_file():
            t = _read_cache(path, identity)
            if t is not None:
                return t
    return None


def save_prompt_cache(tensor, path: Path, identity: str) -> None:
    """Write the embedding cache file atomically (OSError when the folder cannot take it)."""
    from safetensors.torch import save

    data = save({"prompt_embeds": tensor.detach().float().cpu().contiguous()},
                metadata={"format": FORMAT, "text": "", "text_encoder": identity})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def load_text_encoder(text_encoder, torch_dtype=None, device="cpu", config=None):
    """CLIPTextModel from a transformers folder, a .safetensors file, or an SD checkpoint
    (``cond_stage_model.transformer.*``); ``config`` (a dict, a config.json or its folder) overrides the
    config found beside the weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch_dtype = resolve_dtype(torch_dtype, device)
    p = Path(text_encoder)
    if not p.exists():
        raise R2RWeightsNotFound(
            f"Text encoder not found at {p}; expected {SD_FOLDER}/text_encoder/ "
            f"(config.json + model.safetensors) of {OFFICIAL_REPO}."
        )
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise R2RWeightsNotFound(f"{p} has no config.json; a text encoder folder needs config.json + model.safetensors.")
        cfg = read_json(p / "config.json", "text encoder config")
        file = find_weights_file(p, "text encoder")
    else:
        sib = p.parent / "config.json"
        cfg = read_json(sib, "text encoder config") if sib.is_file() else official_config("text_encoder")
        if "vocab_size" not in cfg:  # the config beside the file belongs to something else
            cfg = official_config("text_encoder")
        file = p
    state = read_state_dict(file)
    if any(k.startswith("cond_stage_model.transformer.") for k in state):
        state = text_encoder_sd_to_transformers(state)
    if isinstance(config, dict):
        cfg = dict(config)
    elif config is not None:  # a config.json, or the folder holding it
        config = Path(config)
        cfg = read_json(config / "config.json" if config.is_dir() else config, "text encoder config")
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
    try:
        model = CLIPTextModel(CLIPTextConfig(**cfg))
    except Exception as exc:
        raise R2RUserError(f"The text encoder config for {file} is invalid ({exc}); use the official config.json.") from exc
    expected = model.state_dict()
    # transformers < 5 (the official release) prefixes every key with "text_model."; 5.x does not
    model_prefixed = any(k.startswith("text_model.") for k in expected)
    state_prefixed = any(k.startswith("text_model.") for k in state)
    if state_prefixed and not model_prefixed:
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    elif model_prefixed and not state_prefixed:
        state = {f"text_model.{k}": v for k, v in state.items()}
    for k in [k for k in state if k.endswith("embeddings.position_ids")]:
        state.pop(k)
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in expected]
    bad = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        raise R2RUserError(
            f"{file} does not match the CLIP text encoder (config {cfg.get('hidden_size')} wide): missing "
            f"{missing[:4]}, unexpected {unexpected[:4]}, wrong shapes {bad[:4]}. Expected "
            f"{SD_FOLDER}/text_encoder/ of {OFFICIAL_REPO} (CLIP ViT-L/14 text tower)."
        )
    for k, v in state.items():  # NaN / integer weights would give a NaN embedding, hence a black image
        check_weight(file, k, v, expected.get(k), "text encoder")
    model.load_state_dict(state, strict=False)  # strictness checked above (position_ids is derived)
    return model.to(device=device, dtype=torch_dtype).eval()


def load_tokenizer(tokenizer):
    """CLIPTokenizer from a tokenizer folder; the official CLIP tokenizer (shipped with r2r) when the
    folder is None or absent (a release whose tokenizer/ was deleted)."""
    from transformers import CLIPTokenizer

    p = Path(tokenizer) if tokenizer is not None else None
    if p is None or not p.is_dir():
        p = OFFICIAL_CONFIGS / SD_FOLDER / "tokenizer"
    return CLIPTokenizer.from_pretrained(str(p))


def compute_prompt_embeds(text_encoder, tokenizer=None, text: str = "", device="cpu", config=None):
    """``[1, 77, D]`` float32 ``last_hidden_state`` of ``text`` (padded to 77 tokens)."""
    import torch

    if not isinstance(text, str):
        raise R2RUserError(f"prompt must be a string, got {type(text).__name__}.")
    if isinstance(text_encoder, (str, os.PathLike)):
        model = load_text_encoder(text_encoder, device=device, config=config)
    else:
        model = text_encoder
    tok = load_tokenizer(tokenizer)
    ids = tok([text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(ids.input_ids.to(model.device))[0]
    if not bool(torch.isfinite(out).all()):
        raise R2RUserError(f"The text encoder {text_encoder if isinstance(text_encoder, (str, os.PathLike)) else ''} "
                           "gives NaN or infinite values for the prompt; its weights are damaged. Download "
                           f"{SD_FOLDER}/text_encoder/ of {OFFICIAL_REPO} again.")
    return out.float()


def require_prompt_source(root, text_encoder=None, *, key: str | None = None) -> None:
    """Raise before any model loads when the empty prompt is neither cached nor computable (a text
    encoder folder's config.json is read here, so a broken one is reported first)."""
    if find_cached_prompt(root, key, text_encoder) is not None:
        return
    te = Path(text_encoder) if text_encoder is not None else None
    if te is not None and te.is_file():
        return
    if te is not None and te.is_dir():
        if not (te / "config.json").is_file():
            raise R2RWeightsNotFound(f"{te} has no config.json; a text encoder folder needs config.json + "
                                     "model.safetensors.")
        read_json(te / "config.json", "text encoder config")
        return
    where = Path(root) / CACHE_NAME if root is not None else _user_cache_file(key or "")
    raise R2RWeightsNotFound(
        f"The empty-prompt embedding is not cached ({where}) and the text encoder is missing "
        f"({text_encoder}). Put {SD_FOLDER}/text_encoder/ (config.json + model.safetensors) and tokenizer/ of "
        f"{OFFICIAL_REPO} into the release folder once; the embedding is then cached and the text encoder "
        "is no longer needed."
    )


def empty_prompt_embeds(root, text_encoder=None, tokenizer=None, *, key: str | None = None, write_to_root: bool = True,
                        config=None):
    """The cached empty-prompt embedding; computed from the text encoder and cached on first use.

    The cache goes to ``<root>/r2r_empty_prompt.safetensors`` (when ``write_to_root``), else, or when
    that folder is read-only, to the user cache (:func:`user_cache_dir`). When no location can be
    written the embedding is still returned, with a warning.
    """
    cached = find_cached_prompt(root, key, text_encoder)
    if cached is not None:
        return cached
    require_prompt_source(root, text_encoder, key=key)
    emb = compute_prompt_embeds(text_encoder, tokenizer, "", config=config)
    identity = _identity(text_encoder)
    targets = []
    if root is not None and write_to_root:
        targets.append(Path(root) / CACHE_NAME)
    targets.append(_user_cache_file(key) if key is not None else _user_cache_file(str(Path(root).resolve())))
    failures = []
    for path in targets:
        try:
            save_prompt_cache(emb, path, identity)
            return emb
        except OSError as exc:  # read-only folder (or a file where a folder should be): try the next place
            failures.append(f"{path} ({exc.strerror or exc})")
    warnings.warn(
        f"r2r could not cache the empty-prompt embedding ({'; '.join(failures)}); it will be computed again on "
        "every load. Set R2R_CACHE_DIR to a writable folder.", RuntimeWarning, stacklevel=2,
    )
    return emb


def _check_cache_values(path: Path) -> None:
    """A cache file given explicitly whose embedding is not finite floats: say so (file and tensor)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            t = f.get_tensor("prompt_embeds") if "prompt_embeds" in f.keys() else None
    except Exception:  # not a safetensors file: the caller's message covers it
        return
    if t is not None:
        check_weight(path, "prompt_embeds", t, label="empty-prompt embedding")


def no_prompt_source_error() -> R2RWeightsNotFound:
    """The error for a dict source that gives neither a text encoder nor a cached embedding."""
    return R2RWeightsNotFound(
        "The source dict needs 'text_encoder' (the text_encoder folder, a .safetensors file or an SD "
        f"checkpoint with cond_stage_model.*) or 'prompt_embeds' (a cached {CACHE_NAME})."
    )


def prompt_embeds_from_files(text_encoder=None, tokenizer=None, prompt_embeds=None, config=None):
    """Empty-prompt embedding for a dict source: a cached .safetensors, or computed (and cached by key)."""
    if prompt_embeds is not None:
        p = Path(prompt_embeds)
        if not p.is_file():
            raise R2RWeightsNotFound(f"prompt_embeds: {describe_path(p)}; expected a cached {CACHE_NAME} file.")
        t = _read_cache(p, "")
        if t is None:
            _check_cache_values(p)
            raise R2RUserError(
                f"{p} is not an r2r empty-prompt cache (expected a safetensors file with a [1,77,D] "
                f"'prompt_embeds' tensor written by r2r, e.g. <release>/{CACHE_NAME})."
            )
        return t
    if text_encoder is None:
        raise no_prompt_source_error()
    key = f"file:{Path(text_encoder).resolve()}"
    return empty_prompt_embeds(None, text_encoder, tokenizer, key=key, write_to_root=False, config=config)


def encode_prompt(source, text: str = "", *, torch_dtype=None, device="cpu"):
    """CLIP embedding ``[1,77,D]`` of ``text`` for a release folder / hub repo id / dict source.

    The empty prompt comes from the cache; other prompts load the text encoder.
    """
    if not isinstance(text, str):
        raise R2RUserError(f"prompt must be a string, got {type(text).__name__}.")
    torch_dtype = resolve_dtype(torch_dtype, device)
    if isinstance(source, dict):
        te, tok = source.get("text_encoder"), source.get("tokenizer")
        if text == "":
            return prompt_embeds_from_files(te, tok, source.get("prompt_embeds"), source.get("text_encoder_config")).to(
                device=device, dtype=torch_dtype
            )
    elif isinstance(source, (str, os.PathLike)):
        if looks_like_repo_id(source):
            key = f"hub:{source}"
            root = hub_snapshot(str(source), ["text_encoder", "tokenizer"])
        else:
            key, root = None, Path(source)
        paths = release_paths(root)
        te, tok = paths["text_encoder"], paths["tokenizer"]
        if text == "":
            return empty_prompt_embeds(root, te, tok, key=key, write_to_root=key is None).to(
                device=device, dtype=torch_dtype
            )
    else:
        raise R2RUserError(f"encode_prompt source must be a release folder, a hub repo id like {OFFICIAL_REPO!r} or "
                           f"a dict of files, got {type(source).__name__}.")
    if te is None:
        raise R2RWeightsNotFound("A custom prompt needs the text encoder; give 'text_encoder' in the source.")
    cfg = source.get("text_encoder_config") if isinstance(source, dict) else None
    return compute_prompt_embeds(te, tok, text, config=cfg).to(device=device, dtype=torch_dtype)
