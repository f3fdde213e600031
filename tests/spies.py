"""Test-only methods that observe the engine without changing anything."""

from halviz.methods.base import Method


class LogitSpy(Method):
    """Changes nothing; keeps the final logits of every step."""

    name = "spy"

    def __init__(self):
        super().__init__()
        self.logits = []

    def edit_logits(self, run, logits):
        self.logits.append(logits.clone())
        return logits
