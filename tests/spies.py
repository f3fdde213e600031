"""Test-only methods that observe the engine without changing anything."""

from halviz.methods.base import Method


class LogitSpy(Method):
    """Changes nothing; keeps the main row's final logits of every step, (1, vocab) each."""

    name = "spy"
    hook_points = frozenset({"logits"})

    def __init__(self):
        super().__init__()
        self.logits = []

    def edit_logits(self, p, logits):
        self.logits.append(logits[p.main:p.main + 1].clone())
        return logits
