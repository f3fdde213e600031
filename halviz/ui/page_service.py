"""What lives as long as the server: the comparison service plus the page's own state."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from halviz.methods.base import Method
from halviz.models import LoadedModel
from halviz.session.results import UPDATE_EVERY_S
from halviz.session.service import CompareService, ModelUnavailable
from halviz.session.runids import LatestRuns
from halviz.session.budget import MemoryBudget, budget_from_env
from halviz.session.examples import Example
from halviz.session.state import MAX_SESSION_UPLOAD_BYTES, TraceFiles
from halviz.ui.errors import ui_error


class HalvizApp(CompareService):
    """What lives as long as the server: the comparison service (model cache, examples, checks, the
    decode driver; ``session/service.py``, shared with the Python API) plus the page's own state
    (trace files for download, each session's latest run, the memory budget)."""

    def __init__(self, models: Sequence[str | tuple[str, str]], default_model: str,
                 loader: Callable[[str], LoadedModel], examples: list[Example],
                 registry: Mapping[str, type[Method]], update_every_s: float = UPDATE_EVERY_S,
                 allow_local: bool = False):
        super().__init__(models, default_model, loader, examples, registry, update_every_s, allow_local)
        self.session_upload_bytes = MAX_SESSION_UPLOAD_BYTES  # replayed traces one session keeps
        self.files = TraceFiles()
        self.latest = LatestRuns()  # each owner's latest comparison: a re-run of an older one writes nothing
        self.budget = MemoryBudget(budget_from_env())  # every session's traces and pictures, in all

    def load(self, name: str) -> LoadedModel:
        try:
            return super().load(name)
        except ModelUnavailable as exc:
            raise ui_error(str(exc), title=exc.title) from None
