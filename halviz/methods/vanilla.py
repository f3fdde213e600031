"""Plain greedy decoding: the baseline every method is compared with."""

from halviz.methods.base import Method


class Vanilla(Method):
    name = "vanilla"
    title = "Greedy"
    summary = "Plain greedy decoding, no intervention."
    reference = ""
