"""How the toy model is made and measured: the staged training recipe (``halviz train``), its tuning of
method defaults (``halviz tune``), the probe of its claims (``halviz probe``), the toy CHAIR and
prior-pair evaluation and the example picker. The world itself (scenes, captions, the model, the
designed sink) lives one level up, in :mod:`halviz.toy`."""
