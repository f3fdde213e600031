"""The comparison service: the one code path from a request to captions, labels and traces.

The web app's ``/compare`` (``ui/controller.py``, whose ``HalvizApp`` is this class plus the page's
own state), the Python API (:func:`halviz.compare`) and the CLIs drive a comparison through
:class:`CompareService`: check the request (cheap checks first, so a bad request never waits for a
model), load the model through the cache, check the request against that model, decode every
column as rows of one batch, label the captions and annotate the traces. Nothing here imports
Gradio; failures are plain exceptions with a sentence for a person (:class:`checks.InputError`,
:class:`ModelUnavailable`), which the app turns into ``gr.Error`` at its edge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from halviz.methods.base import Method
from halviz.models import LoadedModel, ModelLoadError
from halviz.models.families.base import text_config
from halviz.models.loading import TOY_KEY, canonical_model_key
from halviz.session import checks
from halviz.session import knob_geometry as geometry
from halviz.session import resolution
from halviz.session.decoding import gpu_decoder, gpu_stack_decoder
from halviz.session.escaping import markdown_text
from halviz.session.examples import Example, ImageTruth, TruthInfo, image_truth, resolve_truth, truth_markdown
from halviz.session.model_cache import DEFAULT_MODELS, ModelCache, ModelPolicy
from halviz.session.model_defaults import ModelDefaults, model_defaults
from halviz.session.results import UPDATE_EVERY_S, ColumnResult, Progress, column_result, with_divergence
from halviz.session.state import RunEntry, Runs, display_copy, truth_to_meta
from halviz.trace import Trace
from halviz.toy.scenes import looks_like_toy_scene

log = logging.getLogger("halviz.session")


class ModelUnavailable(RuntimeError):
    """The chosen model cannot be loaded; the message says why and what to pick instead."""

    title = "Model not available"


@dataclass
class Request:
    """A checked comparison request."""

    image: checks.ImageInput
    prompt: str
    methods: list[str]
    stacks: list[list[Method]]  # built once here, so bad knob values are refused before any model work
    settings: dict  # the knob values as plain data: what crosses to a ZeroGPU worker
    max_new_tokens: int
    truth: TruthInfo
    model: str
    notice: str = ""  # shown on the status line for the whole run (e.g. a photo given to the toy model)
    image_budget: str | None = None  # the image-token budget (None: the device's default, set once loaded)


class AnyModel(ModelPolicy):
    """The library's policy: any hub id or local folder a caller names (the app's list is for a server)."""

    def check(self, name: object, default: str) -> str:
        text = str(name if name is not None else "").strip() or default
        if len(text) > checks.MAX_MODEL_NAME_CHARS or any(ord(c) < 32 or "\ud800" <= c <= "\udfff" for c in text):
            raise checks.InputError("That model name is not a hub id or a folder path.")
        return canonical_model_key(text, resolve_folders=True)


class CompareService:
    """What a comparison needs that outlives one request: the model policy and cache, the examples
    (whose ground truth a picture picks up), the methods offered and the decode driver."""

    def __init__(self, models: Sequence[str | tuple[str, str]], default_model: str,
                 loader: Callable[[str], LoadedModel], examples: list[Example],
                 registry: Mapping[str, type[Method]], update_every_s: float = UPDATE_EVERY_S,
                 allow_local: bool = False, policy: ModelPolicy | None = None):
        self.models = list(models)
        self.update_every_s = update_every_s
        self.default_model = default_model
        self.policy = policy if policy is not None else ModelPolicy.build(self.models, default_model, allow_local)
        self.cache = ModelCache(loader)
        self.examples = examples
        self.registry = dict(registry)
        self.decode = gpu_decoder(self.cache, self.registry)  # the calls that hold a GPU
        self.decode_stacks = gpu_stack_decoder(self.cache, self.registry)

    # ---- a request ---------------------------------------------------------------------------------
    def check(self, image, prompt, methods, max_new_tokens, truth_text, model, settings, *,
              own_truth: bool = False, image_budget: str | None = None) -> Request:
        """Cheap checks first, so a bad request never waits for a model. ``truth_text`` is the
        ground-truth box's text. ``own_truth`` (the API): None means the picture's own list (an
        example's, or a toy scene's read from its pixels), and a list naming the same objects as the
        picture's own keeps its source and trust. The image budget: ``image_budget``, else the settings'
        ``{"image": {"budget": ...}}`` (session/resolution.py), else the device's default."""
        model = self.policy.check(model, self.default_model)  # before the image: no file work for a refused model
        prompt = checks.check_prompt(prompt)
        tokens = checks.check_max_new_tokens(max_new_tokens)
        names = checks.check_methods(methods, self.registry, max_columns=len(self.registry))  # one card each
        checks.check_request_size(len(names), tokens)
        parsed = checks.parse_settings(settings)
        budget = resolution.budget_from_settings(parsed)
        budget = resolution.check_budget(resolution.family_for_key(model), image_budget if image_budget is not None
                                         else budget)
        knobs = model_defaults(model, self.registry).merged(parsed, names)
        stacks = checks.build_stacks(names, knobs, self.registry)
        if truth_text is not None and not isinstance(truth_text, str):
            raise checks.InputError("The ground-truth objects must be text, such as “cat, cup”.")
        checks.check_text_characters(truth_text or "", "The ground-truth box")
        picture = checks.load_image(image)
        own = image_truth(None, self.examples, picture.digest, picture.image)
        if own_truth:
            truth_text = own_list(truth_text, own)
        truth = resolve_truth(truth_text, own)
        return Request(picture, prompt, names, stacks, knobs, tokens, truth, model, self.image_notice(model, picture),
                       budget)

    def image_notice(self, model: str, picture: checks.ImageInput) -> str:
        """A warning when the toy model is given a picture that is not one of its scenes."""
        if model != TOY_KEY or looks_like_toy_scene(picture.image):
            return ""
        real = [k for k in self.policy.allowed if k != TOY_KEY] or [m for m, _ in DEFAULT_MODELS if m != TOY_KEY]
        return toy_photo_notice(real)

    def check_for_model(self, request: Request, loaded: LoadedModel) -> None:
        """The limits only the chosen model knows: its image budgets, its special tokens, its tokens, its
        context. Settles the request's image budget (the device's default when it named none)."""
        request.image_budget = resolution.resolve_budget(type(loaded.adapter), request.image_budget, loaded.device.type)
        loaded = resolution.budgeted(loaded, request.image_budget)
        processor = loaded.processor
        sequence = processor(text=loaded.adapter.chat_text(request.prompt), images=request.image.image,
                             return_tensors="np")["input_ids"]
        context = getattr(text_config(loaded.model.config), "max_position_embeddings", None)
        checks.check_prompt_tokens(request.prompt, processor.tokenizer, int(sequence.shape[-1]), context,
                                   request.max_new_tokens)
        self.check_geometry(request, loaded)

    @staticmethod
    def check_geometry(request: Request, loaded: LoadedModel) -> None:
        """Every layer, head and patch knob within the model and the image's grid (see session/knob_geometry.py)."""
        adapter = loaded.adapter
        grid = None
        if geometry.needs_grid(request.stacks):  # the grid this image makes: only the processor knows it
            import torch

            _, layout = adapter.prepare(request.image.image, request.prompt, torch.device("cpu"), torch.float32)
            grid = (int(layout.rows), int(layout.cols))
        try:
            geometry.check_stacks(request.stacks, geometry.Geometry(adapter.num_layers, adapter.num_heads, grid))
        except ValueError as exc:
            raise checks.InputError(str(exc)) from None

    # ---- the model ---------------------------------------------------------------------------------
    def load(self, name: str) -> LoadedModel:
        """The model ``name`` (a canonical key) from the cache; :class:`ModelUnavailable` if it cannot load."""
        try:
            return self.cache.get(name)
        except ModelLoadError as exc:
            if getattr(exc, "offline", False):  # the loader's advice may name a local folder this policy refuses
                folder = " or a local model folder" if self.policy.allow_local else ""
                raise ModelUnavailable(f"{name} is not cached on this server and the Hugging Face hub cannot be "
                                       f"reached; pick the toy model{folder} instead.") from None
            raise ModelUnavailable(f"Could not load the model: {exc}") from None
        except Exception:  # still the user's model choice failing, whatever the loader raised
            log.exception("loading %s failed", name)
            raise ModelUnavailable(f"Could not load the model {name!r}; the details are in the server log.") from None

    def warm(self, names: Sequence[str], decode: bool = True) -> list[str]:
        """Load ``names`` now (start-up) and, unless ``decode`` is off, run every method for two tokens
        on a grey image, so the first visitor does not pay for first-call set-up. Returns what failed:
        a model that cannot load is logged and left to load (and fail) on first use."""
        failed = []
        grey = np.full((64, 64, 3), 128, dtype=np.uint8)
        # First-call costs outside the model: labelling mentions imports inflect, which typeguard
        # instruments on import (about 10 s on the 2-core machine).
        column_result("vanilla", "", ["two cups and a fork"], 1.0, "eos", None)
        for name in names:
            try:
                key = self.policy.check(name, self.default_model)
                self.cache.get(key)
                if decode:
                    for _ in self.decode(key, grey, "Describe the image.", list(self.registry), {}, 2, 0.0):
                        pass
            except Exception:
                log.exception("warming %s failed", name)
                failed.append(name)
        return failed

    def method_defaults(self, name: object) -> ModelDefaults:
        """The knob defaults of the model ``name`` names (the papers' for a name the policy refuses)."""
        try:
            key = self.policy.check(name, self.default_model)
        except checks.InputError:
            return ModelDefaults()
        return model_defaults(key, self.registry)

    # ---- decoding and what each column shows -------------------------------------------------------
    def decode_request(self, request: Request, update_every_s: float | None = None,
                       phases: bool = False) -> Iterator[Progress]:
        """Every column of ``request`` decoded as rows of one batch (the model is loaded, and checked
        against the request, first: :meth:`load`, :meth:`check_for_model`); ``phases``: also a Progress
        as the vision tower and the prefill start (:func:`~halviz.session.results.decode_rounds`)."""
        every = self.update_every_s if update_every_s is None else update_every_s
        yield from self.decode(request.model, np.asarray(request.image.image), request.prompt, request.methods,
                               request.settings, request.max_new_tokens, every, image_budget=request.image_budget,
                               phases=phases)

    def column_results(self, request: Request, progress: Progress) -> list[ColumnResult]:
        """What each column shows so far: caption, labelled mentions, summary; each column after the
        first diffed against the first."""
        truth = request.truth.truth
        return with_divergence(
            [column_result(name, self.title(name), texts, compute, finish, truth)
             for name, texts, compute, finish in zip(request.methods, progress.texts, progress.compute_s,
                                                     progress.finish)], progress.tokens)

    def title(self, name: str) -> str:
        return checks.column_title(name, self.registry)

    def summary(self, name: str) -> str:
        """What a column does, in a sentence per method (a stack: each in stacking order)."""
        return " Then: ".join(self.registry[part].summary for part in checks.stack_parts(name))

    def entries(self, request: Request, traces: Sequence[Trace | None]) -> Runs:
        """The columns' traces with the request's ground truth and image digest written into them,
        as entries for the debugger (a column that failed before it recorded anything has none)."""
        picture = display_copy(request.image.image)
        entries: Runs = {}
        for name, trace in zip(request.methods, traces):
            if trace is None:
                continue
            trace.meta["ground_truth"] = truth_to_meta(request.truth.truth)
            trace.meta["image_digest"] = request.image.digest
            entries[name] = RunEntry(name, self.title(name), trace, picture, request.truth.truth,
                                     request.image.image, request.model)
        return entries

    # ---- ground truth ------------------------------------------------------------------------------
    def own_truth(self, image) -> ImageTruth | None:
        """The ground truth that belongs to the picture in the Image box (None: nobody knows it)."""
        return image_truth(checks.image_path(image), self.examples)

    def truth_note(self, image, truth_text) -> str:
        text = truth_text if isinstance(truth_text, str) else ""
        return truth_markdown(resolve_truth(text, self.own_truth(image) if text.strip() else None))


def own_list(truth_text: str | None, own: ImageTruth | None) -> str:
    """The ground-truth text for the API: the picture's own list for None (empty if nobody knows the
    picture); the own list's very text when ``truth_text`` names the same objects, so its source,
    trust and counts are kept; else ``truth_text`` as given."""
    from halviz.hallucination import parse_object_list

    if own is None:
        return truth_text or ""
    if truth_text is None:
        return own.objects
    given, unknown = parse_object_list(truth_text)
    mine, _ = parse_object_list(own.objects)
    return own.objects if given and not unknown and set(given) == set(mine) else truth_text


def toy_photo_notice(real_models: Sequence[str]) -> str:
    """What the status line says when a photo (not a toy scene) goes to the toy model."""
    named = " or ".join(f"**{markdown_text(m)}**" for m in real_models)
    return ("⚠ **This picture is not a toy scene.** The toy model only knows its glyph world (coloured shapes "
            "on a plain background), so its captions of a photo are noise. For photos pick a real model in "
            f"the Model box: {named}. The comparison runs anyway.")


NEVER = math.inf  # update_every_s for a caller that wants the finished comparison only
